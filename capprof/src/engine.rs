//! The container engine, through its API (bollard): Docker, or Podman's
//! Docker-compatible service. Replies are validated, never trusted blindly:
//! ids must be hex, names become safe file names, capability names must be
//! known.

use std::{collections::HashMap, time::Duration};

use bollard::{API_DEFAULT_VERSION, Docker, query_parameters::EventsOptionsBuilder};
use futures_util::{Stream, StreamExt as _};

use crate::capability::Cap;

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
    pub started_at: Option<std::time::SystemTime>,
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
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectState {
    started_at: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectConfig {
    image: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct InspectHostConfig {
    privileged: Option<bool>,
    cap_add: Option<Vec<String>>,
    cap_drop: Option<Vec<String>>,
}

/// A container id as the engines' own tables show it: its first 12
/// characters.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

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
        if !std::path::Path::new(path).exists() {
            return Err(unreachable("no such socket".into()));
        }
        let docker = Docker::connect_with_unix(path, TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let version = docker
            .version()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let is_podman = version.components.as_ref().is_some_and(|c| {
            c.iter()
                .any(|c| c.name.to_ascii_lowercase().contains("podman"))
        });
        let info = docker
            .info()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
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
        let capabilities = effective_caps(
            self.flavor,
            host.privileged.unwrap_or(false),
            host.cap_add.as_deref().unwrap_or(&[]),
            host.cap_drop.as_deref().unwrap_or(&[]),
        );
        Some(ContainerInfo {
            id,
            name: reply.name.as_deref().and_then(safe_name),
            image: reply.config.and_then(|c| c.image),
            capabilities,
            started_at: reply
                .state
                .and_then(|s| s.started_at)
                .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
                // Docker says 0001-01-01 for a container that never ran.
                .filter(|t| *t > std::time::UNIX_EPOCH),
        })
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

    /// Container start/die/exec events, as they happen.
    pub fn events(&self) -> impl Stream<Item = ContainerEvent> + use<> {
        let mut filters = HashMap::new();
        filters.insert("type", vec!["container"]);
        let opts = EventsOptionsBuilder::default().filters(&filters).build();
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
}
