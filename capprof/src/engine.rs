//! The container engine, through its API (bollard): Docker, or Podman's
//! Docker-compatible service. Replies are validated, never trusted blindly:
//! ids must be hex, names become safe file names, capability names must be
//! known.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use bollard::{API_DEFAULT_VERSION, Docker, query_parameters::EventsOptionsBuilder};
use futures_util::{Stream, StreamExt as _};

use crate::{
    capability::Cap,
    profile::{DeviceSpec, MountSpec, RunSpec, UlimitSpec},
    socket::Expected,
};

const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
const TIMEOUT_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no container engine answers at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("unsupported engine address {0:?} (capprof talks to local engines: unix://PATH)")]
    UnsupportedHost(String),
}

/// Which engine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Podman,
}

impl Flavor {
    pub fn runtime_name(self) -> &'static str {
        match self {
            Flavor::Docker => "docker",
            Flavor::Podman => "podman",
        }
    }
}

pub struct Engine {
    docker: Docker,
    /// The socket's path, for the requests capprof makes itself.
    socket: std::path::PathBuf,
    /// The negotiated API version (`1.41`).
    api_version: String,
    pub endpoint: String,
    pub flavor: Flavor,
    pub cgroup_driver: String,
    pub version: String,
}

/// What the engine says about one container.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// The capabilities it was started with, if the engine said enough to
    /// know.
    pub capabilities: Option<Vec<Cap>>,
    /// When it (last) started, if the engine gave a valid time.
    pub started_at: Option<SystemTime>,
    /// How to create it again, environment values included (profiles
    /// leave them out unless asked); None if the reply did not validate.
    pub run: Option<RunSpec>,
    /// Its first process on the host, while it runs.
    pub pid: Option<u32>,
    pub running: bool,
    pub exit_code: Option<i64>,
    /// Its IP address, on a network that gives it one.
    pub address: Option<String>,
    /// Its pod, when a CRI runtime named it.
    pub k8s: Option<crate::profile::K8sRef>,
    /// Whether it is a pod's sandbox (pause) container: the runtime's
    /// plumbing, not a workload.
    pub sandbox: bool,
}

/// A container lifecycle event.
#[derive(Debug, Clone)]
pub struct ContainerEvent {
    pub action: String,
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
}

/// More than any inspect reply.
const MAX_REPLY_BYTES: u64 = 4 << 20;

/// The parts of an inspect reply capprof uses (Docker's and Podman's alike).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectReply {
    id: Option<String>,
    name: Option<String>,
    config: Option<InspectConfig>,
    host_config: Option<InspectHostConfig>,
    state: Option<InspectState>,
    network_settings: Option<InspectNetworkSettings>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectConfig {
    image: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
    hostname: Option<String>,
    env: Option<Vec<String>>,
    tty: Option<bool>,
    open_stdin: Option<bool>,
    stop_signal: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectHostConfig {
    privileged: Option<bool>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
    network_mode: Option<String>,
    binds: Option<Vec<String>>,
    mounts: Option<Vec<InspectMount>>,
    tmpfs: Option<std::collections::BTreeMap<String, String>>,
    sysctls: Option<std::collections::BTreeMap<String, String>>,
    devices: Option<Vec<InspectDevice>>,
    security_opt: Option<Vec<String>>,
    readonly_rootfs: Option<bool>,
    group_add: Option<Vec<String>>,
    pid_mode: Option<String>,
    ipc_mode: Option<String>,
    #[serde(rename = "UTSMode")]
    uts_mode: Option<String>,
    userns_mode: Option<String>,
    cgroupns_mode: Option<String>,
    init: Option<bool>,
    ulimits: Option<Vec<InspectUlimit>>,
    shm_size: Option<i64>,
    runtime: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectMount {
    #[serde(rename = "Type")]
    kind: Option<String>,
    source: Option<String>,
    target: Option<String>,
    read_only: Option<bool>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectDevice {
    path_on_host: Option<String>,
    path_in_container: Option<String>,
    cgroup_permissions: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectUlimit {
    name: Option<String>,
    soft: Option<i64>,
    hard: Option<i64>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectState {
    running: Option<bool>,
    pid: Option<i64>,
    exit_code: Option<i64>,
    started_at: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectNetworkSettings {
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
    networks: Option<std::collections::BTreeMap<String, InspectNetwork>>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectNetwork {
    #[serde(rename = "IPAddress")]
    ip_address: Option<String>,
}

/// The parts of an image's inspect reply capprof uses.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ImageReply {
    id: Option<String>,
    config: Option<ImageConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ImageConfig {
    env: Option<Vec<String>>,
}

/// The run spec of an inspect reply. Environment variables that the image
/// sets to the same value are the image's, not the container's, and are
/// left out. None when the reply does not validate.
fn run_spec(
    id: &str,
    config: &InspectConfig,
    host: &InspectHostConfig,
    image_env: &[String],
) -> Option<RunSpec> {
    let some = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    let list = |l: &Option<Vec<String>>| l.clone().unwrap_or_default();
    let env = container_env(id, config, image_env);
    let spec = RunSpec {
        command: None,
        image: some(&config.image),
        entrypoint: config.entrypoint.clone(),
        cmd: config.cmd.clone(),
        user: some(&config.user),
        workdir: some(&config.working_dir),
        // The engine names a container's host after its id unless told.
        hostname: some(&config.hostname).filter(|h| !id.starts_with(h.as_str())),
        env_names: env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k).to_owned())
            .collect(),
        env: Some(env),
        tty: config.tty.unwrap_or(false),
        open_stdin: config.open_stdin.unwrap_or(false),
        stop_signal: some(&config.stop_signal),
        network_mode: some(&host.network_mode),
        binds: list(&host.binds),
        mounts: mounts(host),
        tmpfs: host.tmpfs.clone().unwrap_or_default(),
        sysctls: host.sysctls.clone().unwrap_or_default(),
        devices: devices(host),
        privileged: host.privileged.unwrap_or(false),
        cap_add: list(&host.cap_add),
        cap_drop: list(&host.cap_drop),
        security_opt: list(&host.security_opt),
        read_only: host.readonly_rootfs.unwrap_or(false),
        group_add: list(&host.group_add),
        pid_mode: some(&host.pid_mode),
        ipc_mode: some(&host.ipc_mode),
        uts_mode: some(&host.uts_mode),
        userns_mode: some(&host.userns_mode),
        cgroupns_mode: some(&host.cgroupns_mode),
        init: host.init,
        ulimits: ulimits(host),
        shm_size: host.shm_size,
        runtime: some(&host.runtime),
    };
    match spec.validate() {
        Ok(()) => Some(spec),
        Err(e) => {
            tracing::warn!("container {}: not keeping how it runs: {e}", short_id(id));
            None
        }
    }
}

/// The container's environment as the run spec keeps it: without what
/// the image sets to the same value, and without a variable that cannot
/// be passed again (warned).
fn container_env(id: &str, config: &InspectConfig, image_env: &[String]) -> Vec<String> {
    config
        .env
        .iter()
        .flatten()
        .filter(|e| !image_env.contains(e))
        .filter(|e| match crate::profile::env_entry_problem(e) {
            None => true,
            // Only this variable is left out: the rest of how the
            // container runs is still worth keeping, to verify it.
            Some(why) => {
                tracing::warn!(
                    "container {}: leaving one variable out of how it runs: {why}",
                    short_id(id)
                );
                false
            }
        })
        .cloned()
        .collect()
}

/// The container's mounts, as `--mount` would give them again.
fn mounts(host: &InspectHostConfig) -> Vec<MountSpec> {
    host.mounts
        .iter()
        .flatten()
        .map(|m| MountSpec {
            kind: m.kind.clone().unwrap_or_default(),
            source: m.source.clone().filter(|s| !s.is_empty()),
            target: m.target.clone().unwrap_or_default(),
            read_only: m.read_only.unwrap_or(false),
        })
        .collect()
}

/// The host devices the container was given.
fn devices(host: &InspectHostConfig) -> Vec<DeviceSpec> {
    host.devices
        .iter()
        .flatten()
        .map(|d| DeviceSpec {
            path_on_host: d.path_on_host.clone().unwrap_or_default(),
            path_in_container: d.path_in_container.clone().unwrap_or_default(),
            cgroup_permissions: d.cgroup_permissions.clone().unwrap_or_default(),
        })
        .collect()
}

/// The container's resource limits.
fn ulimits(host: &InspectHostConfig) -> Vec<UlimitSpec> {
    host.ulimits
        .iter()
        .flatten()
        .map(|u| UlimitSpec {
            name: u.name.clone().unwrap_or_default(),
            soft: u.soft.unwrap_or_default(),
            hard: u.hard.unwrap_or_default(),
        })
        .collect()
}

/// What the engine said when it refused a request: its own message (an
/// API version it does not take says which it does), else bollard's.
fn refusal(e: &bollard::errors::Error) -> String {
    use bollard::errors::Error;
    match e {
        Error::DockerResponseServerError {
            status_code,
            message,
        } => {
            let message = crate::text::line(message, 200);
            if message.to_ascii_lowercase().contains("version") {
                format!("the engine refused capprof's API version: {message}")
            } else {
                format!("the engine answered {status_code}: {message}")
            }
        }
        Error::RequestTimeoutError => "the engine did not answer in time".to_owned(),
        other => other.to_string(),
    }
}

pub use capprof_profile::profile::short_id;

/// The endpoint the docker CLI would use: `DOCKER_HOST` or the default socket.
pub fn endpoint_from_env() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_HOST.to_owned())
}

pub fn is_container_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A container name as a file name: the engine's name without its leading
/// `/`, with anything outside `[A-Za-z0-9_.-]` replaced, never `.` or `..`.
pub fn safe_name(name: &str) -> Option<String> {
    let trimmed = name.trim_start_matches('/');
    let cleaned: String = trimmed
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
}

impl Engine {
    /// Connects to `endpoint`, negotiating the API version down to the
    /// engine's (Debian's dockerd 20.10 speaks 1.41).
    pub async fn connect(endpoint: &str) -> Result<Self, EngineError> {
        let unreachable = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let Some(path) = endpoint
            .strip_prefix("unix://")
            .or_else(|| endpoint.starts_with('/').then_some(endpoint))
        else {
            return Err(EngineError::UnsupportedHost(endpoint.to_owned()));
        };
        match Self::connect_to(path, endpoint).await {
            Ok(engine) => Ok(engine),
            // bollard's own words are its internals: say what is wrong.
            Err(raw) => Err(unreachable(
                match crate::socket::diagnose(Path::new(path), Expected::Engine).await {
                    Some(problem) => problem.to_string(),
                    None => raw,
                },
            )),
        }
    }

    async fn connect_to(path: &str, endpoint: &str) -> Result<Self, String> {
        let docker = Docker::connect_with_unix(path, TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| refusal(&e))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| "the engine did not answer within 10 s".to_owned())?
            .map_err(|e| refusal(&e))?;
        let version = docker.version().await.map_err(|e| refusal(&e))?;
        let is_podman = version.components.as_ref().is_some_and(|c| {
            c.iter()
                .any(|c| c.name.to_ascii_lowercase().contains("podman"))
        });
        let info = docker.info().await.map_err(|e| refusal(&e))?;
        Ok(Self {
            api_version: docker.client_version().to_string(),
            socket: path.into(),
            docker,
            endpoint: endpoint.to_owned(),
            flavor: if is_podman {
                Flavor::Podman
            } else {
                Flavor::Docker
            },
            cgroup_driver: info
                .cgroup_driver
                .map(|d| format!("{d:?}").to_ascii_lowercase())
                .unwrap_or_default(),
            version: version.version.unwrap_or_default(),
        })
    }

    /// The cgroup v2 directories (relative to the mount) under which this
    /// engine puts containers.
    pub fn cgroup_parents(&self) -> Vec<&'static str> {
        match (self.flavor, self.cgroup_driver.contains("systemd")) {
            (Flavor::Docker, false) => vec!["/docker"],
            (Flavor::Podman, false) => vec!["/libpod_parent"],
            (_, true) => vec!["/system.slice", "/machine.slice"],
        }
    }

    /// Inspects a container; None when the engine no longer knows it.
    ///
    /// The reply is parsed here, keeping only the fields capprof uses, and
    /// not by bollard: bollard's typed reply rejects Podman's
    /// `State.Status` values that Docker lacks (`stopped`, `configured`,
    /// `initialized`), and a short-lived Podman container shows `stopped`
    /// from its `die` until Podman's cleanup, exactly when capprof asks.
    pub async fn inspect(&self, id_or_name: &str) -> Option<ContainerInfo> {
        let path = format!(
            "/containers/{}/json",
            crate::urlpath::encode_segment(id_or_name)
        );
        let body = tokio::time::timeout(Duration::from_secs(TIMEOUT_SECS), self.get(&path))
            .await
            .ok()??;
        let reply: InspectReply = serde_json::from_slice(&body).ok()?;
        let id = reply.id.filter(|id| is_container_id(id))?;
        let host = reply.host_config.unwrap_or_default();
        let config = reply.config.unwrap_or_default();
        let capabilities = effective_caps(
            self.flavor,
            host.privileged.unwrap_or(false),
            host.cap_add.as_deref().unwrap_or(&[]),
            host.cap_drop.as_deref().unwrap_or(&[]),
        );
        let image_env = match &config.image {
            Some(image) => self.image_env(image).await.unwrap_or_default(),
            None => vec![],
        };
        let state = reply.state.unwrap_or_default();
        let net = reply.network_settings.unwrap_or_default();
        let address = net
            .ip_address
            .into_iter()
            .chain(
                net.networks
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, n)| n.ip_address),
            )
            .find(|a| a.parse::<std::net::IpAddr>().is_ok());
        Some(ContainerInfo {
            run: run_spec(&id, &config, &host, &image_env),
            name: reply.name.as_deref().and_then(safe_name),
            image: config.image,
            capabilities,
            started_at: state
                .started_at
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                // Docker says 0001-01-01 for a container that never ran.
                .filter(|t| *t > std::time::UNIX_EPOCH),
            pid: state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|&p| p > 0),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            address,
            id,
            k8s: None,
            sandbox: false,
        })
    }

    /// The environment an image gives its containers; None when the engine
    /// does not know the image.
    pub async fn image_env(&self, image: &str) -> Option<Vec<String>> {
        let reply = self.inspect_image(image).await?;
        Some(reply.config.and_then(|c| c.env).unwrap_or_default())
    }

    /// Whether the engine has the image (by name or id).
    pub async fn image_exists(&self, image: &str) -> bool {
        self.inspect_image(image)
            .await
            .is_some_and(|r| r.id.is_some())
    }

    async fn inspect_image(&self, image: &str) -> Option<ImageReply> {
        let path = format!("/images/{}/json", crate::urlpath::encode_segment(image));
        let body = tokio::time::timeout(Duration::from_secs(TIMEOUT_SECS), self.get(&path))
            .await
            .ok()??;
        serde_json::from_slice(&body).ok()
    }

    /// The bollard client, for the requests that create and run containers
    /// (`proof`).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// `GET path` on the engine's socket with HTTP/1.0 (no chunking, the
    /// engine closes when done); the body of a 200 reply.
    async fn get(&self, path: &str) -> Option<Vec<u8>> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::UnixStream::connect(&self.socket).await.ok()?;
        let request = format!(
            "GET /v{}{path} HTTP/1.0\r\nHost: capprof\r\n\r\n",
            self.api_version
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = vec![];
        stream
            .take(MAX_REPLY_BYTES)
            .read_to_end(&mut reply)
            .await
            .ok()?;
        let end = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
        let status = reply[..end].split(|&b| b == b'\n').next()?;
        let ok = status.starts_with(b"HTTP/1.1 200 ") || status.starts_with(b"HTTP/1.0 200 ");
        ok.then(|| reply.split_off(end + 4))
    }

    /// The ids of the running containers.
    pub async fn running(&self) -> Vec<String> {
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::default().build();
        self.docker
            .list_containers(Some(opts))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .filter(|id| is_container_id(id))
            .collect()
    }

    /// Container start/die/exec events since `since`, then as they happen.
    ///
    /// The stream connects when it is first polled, which can be a while
    /// after a caller listed what runs (a busy machine): without `since`,
    /// a container started in between would never be named.
    pub fn events(&self, since: SystemTime) -> impl Stream<Item = ContainerEvent> + use<> {
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_else(|_| "0".into());
        let opts = EventsOptionsBuilder::default()
            .filters(&filters)
            .since(&since)
            .build();
        self.docker
            .events(Some(opts))
            .filter_map(|event| async move {
                let event = event.ok()?;
                let actor = event.actor?;
                let id = actor.id.filter(|id| is_container_id(id))?;
                let attrs = actor.attributes.unwrap_or_default();
                Some(ContainerEvent {
                    action: event.action.unwrap_or_default(),
                    id,
                    name: attrs.get("name").and_then(|n| safe_name(n)),
                    image: attrs.get("image").cloned(),
                })
            })
    }
}

/// The capabilities a container runs with: the engine's defaults, plus
/// --cap-add, minus --cap-drop (`ALL` as either). Unknown names in the
/// engine's reply make the answer unknown rather than wrong.
pub fn effective_caps(
    flavor: Flavor,
    privileged: bool,
    add: &[String],
    drop: &[String],
) -> Option<Vec<Cap>> {
    if privileged {
        return Some(Cap::all().collect());
    }
    // Both engines report CapAdd/CapDrop against the same base: Docker's
    // defaults, and for Podman the OCI default bounding set of
    // runtime-tools' `generate.New("linux")` (libpod/container_inspect.go),
    // which is the same 14 — not Podman's own 11 defaults.
    let _ = flavor;
    let runtime = crate::export::Runtime::Docker;
    let is_all = |s: &String| s.eq_ignore_ascii_case("ALL");
    let parse = |list: &[String]| -> Option<Vec<Cap>> {
        list.iter()
            .filter(|s| !is_all(s))
            .map(|s| s.parse::<Cap>().ok())
            .collect()
    };
    let mut set: std::collections::BTreeSet<Cap> = if drop.iter().any(is_all) {
        Default::default()
    } else {
        runtime.default_caps().into_iter().collect()
    };
    if add.iter().any(is_all) {
        set.extend(Cap::all());
    }
    set.extend(parse(add)?);
    for cap in parse(drop)? {
        set.remove(&cap);
    }
    Some(set.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(safe_name("/web-1").as_deref(), Some("web-1"));
        assert_eq!(
            safe_name("/../etc/passwd").as_deref(),
            Some(".._etc_passwd")
        );
        assert_eq!(safe_name("/.."), None);
        assert_eq!(safe_name("/"), None);
        assert_eq!(safe_name("a b/c").as_deref(), Some("a_b_c"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(is_container_id(&"ab".repeat(32)));
        assert!(!is_container_id(&"AB".repeat(32)));
        assert!(!is_container_id("abc"));
        assert!(!is_container_id(&format!("{}/x", "a".repeat(62))));
    }

    #[test]
    fn effective_caps_follow_add_and_drop() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let names = |caps: Vec<Cap>| caps.into_iter().map(|c| c.short_name()).collect::<Vec<_>>();
        let default = effective_caps(Flavor::Docker, false, &[], &[]).unwrap();
        assert_eq!(default.len(), 14);
        let only = effective_caps(
            Flavor::Docker,
            false,
            &s(&["CHOWN", "CAP_NET_RAW"]),
            &s(&["ALL"]),
        )
        .unwrap();
        assert_eq!(names(only), ["CHOWN", "NET_RAW"]);
        let minus = effective_caps(Flavor::Docker, false, &[], &s(&["NET_RAW"])).unwrap();
        assert_eq!(minus.len(), 13);
        assert_eq!(
            effective_caps(Flavor::Docker, true, &[], &[])
                .unwrap()
                .len(),
            41
        );
        assert_eq!(
            effective_caps(Flavor::Docker, false, &s(&["FLY"]), &[]),
            None
        );
        // Podman 4.3, a default container: CapAdd [], CapDrop these three.
        let podman = effective_caps(
            Flavor::Podman,
            false,
            &[],
            &s(&["AUDIT_WRITE", "MKNOD", "NET_RAW"]),
        )
        .unwrap();
        assert_eq!(podman, crate::export::Runtime::Podman.default_caps());
        // `--cap-add=NET_RAW`: CapAdd [], CapDrop [AUDIT_WRITE, MKNOD].
        let net_raw =
            effective_caps(Flavor::Podman, false, &[], &s(&["AUDIT_WRITE", "MKNOD"])).unwrap();
        assert_eq!(net_raw.len(), 12);
    }

    /// A container that starts and exits before anyone reads the event
    /// stream is still in it: the stream replays what happened since the
    /// time it was asked for (a session lists what runs, then polls the
    /// stream later; a busy machine widens that gap).
    #[tokio::test]
    #[ignore = "needs a Docker engine (DOCKER_HOST) and CAPPROF_TEST_IMAGE"]
    async fn events_since_replay_a_container_that_came_and_went() {
        use futures_util::StreamExt as _;
        let engine = Engine::connect(&endpoint_from_env())
            .await
            .expect("a Docker engine at DOCKER_HOST");
        let image = std::env::var("CAPPROF_TEST_IMAGE").expect("CAPPROF_TEST_IMAGE");
        let since = SystemTime::now();
        let name = format!("capprof-engine-since-{}", std::process::id());
        let docker = engine.docker();
        let body = bollard::models::ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["true".into()]),
            ..Default::default()
        };
        let opts = bollard::query_parameters::CreateContainerOptionsBuilder::default()
            .name(&name)
            .build();
        let id = docker.create_container(Some(opts), body).await.unwrap().id;
        docker.start_container(&id, None).await.unwrap();
        let _ = docker.wait_container(&id, None).next().await;
        // Only now is the stream asked for, and first polled.
        let events = engine.events(since);
        let seen: Vec<String> = tokio::time::timeout(
            Duration::from_secs(10),
            events
                .filter(|e| {
                    std::future::ready(e.id == id && matches!(e.action.as_str(), "start" | "die"))
                })
                .map(|e| e.action)
                .take(2)
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap_or_default();
        let _ = docker
            .remove_container(
                &id,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .build(),
                ),
            )
            .await;
        assert_eq!(seen, ["start", "die"], "the events of {name}");
    }
}
