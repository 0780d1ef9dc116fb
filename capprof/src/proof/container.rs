//! Re-running a container on its engine with exactly one capability set:
//! `--cap-drop=ALL` plus `--cap-add` for each capability, never
//! privileged, and everything else as the profile's `subject.run` says.
//!
//! Every container capprof creates carries the label [`LABEL`], whose
//! value names the capprof process that made it. [`ContainerCleanup`] removes them
//! after each run, and once more on every way out (a failed probe, an
//! engine error, Ctrl-C), by the label, so that a create whose reply was
//! lost is not left behind either.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use bollard::{
    exec::{CreateExecOptions, StartExecResults},
    models::{ContainerCreateBody, DeviceMapping, HostConfig, Mount, ResourcesUlimits},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
        RemoveContainerOptionsBuilder,
    },
};
use futures_util::StreamExt as _;

use super::{
    Outcome, Probe, ProofError, RunOptions, Trial,
    creds::{self, CredLog},
    probe,
};
use crate::{
    capability::Cap,
    engine::{Engine, is_container_id},
    profile::RunSpec,
};

/// The label on every container capprof creates to prove a profile.
pub const LABEL: &str = "io.capprof.proof";

/// How often a run samples its processes' credentials.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// How long after a passing probe the credentials are sampled again, for
/// a privilege drop that comes just after the workload starts answering.
const SETTLE: Duration = Duration::from_millis(300);
/// Pause between two probe attempts.
const PROBE_RETRY: Duration = Duration::from_millis(250);
/// Longest one probe attempt may take.
const PROBE_ATTEMPT: Duration = Duration::from_secs(10);

/// Removes what this capprof created, on every way out.
#[derive(Clone)]
pub struct ContainerCleanup {
    engine: Arc<Engine>,
    owner: String,
}

impl ContainerCleanup {
    pub fn new(engine: Arc<Engine>) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Self {
            engine,
            owner: format!("{}-{nanos}", std::process::id()),
        }
    }

    /// Force-removes every container labelled as this capprof's; returns
    /// how many there were.
    pub async fn remove_all(&self) -> usize {
        let mut filters = HashMap::new();
        filters.insert("label", vec![format!("{LABEL}={}", self.owner)]);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let docker = self.engine.docker();
        let ids: Vec<String> = docker
            .list_containers(Some(opts))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.id)
            .collect();
        for id in &ids {
            remove(&self.engine, id).await;
        }
        ids.len()
    }
}

async fn remove(engine: &Engine, id: &str) {
    let opts = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = engine.docker().remove_container(id, Some(opts)).await {
        tracing::debug!("removing {id}: {e}");
    }
}

pub struct ContainerWorkload {
    engine: Arc<Engine>,
    spec: RunSpec,
    options: RunOptions,
    mount: PathBuf,
    cleanup: ContainerCleanup,
    runs: u32,
}

impl ContainerWorkload {
    /// `spec` must carry the environment values (taken from the profile or
    /// from the original container).
    pub fn new(
        engine: Arc<Engine>,
        spec: RunSpec,
        options: RunOptions,
        mount: PathBuf,
        cleanup: ContainerCleanup,
    ) -> Self {
        Self {
            engine,
            spec,
            options,
            mount,
            cleanup,
            runs: 0,
        }
    }

    pub fn engine_name(&self) -> String {
        format!(
            "{} {}",
            self.engine.flavor.runtime_name(),
            self.engine.version
        )
    }

    fn create_body(&self, allowed: &[Cap]) -> ContainerCreateBody {
        let spec = &self.spec;
        let none_if_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        let mounts: Vec<Mount> = spec
            .mounts
            .iter()
            .filter_map(|m| {
                serde_json::from_value(serde_json::json!({
                    "Type": m.kind,
                    "Source": m.source,
                    "Target": m.target,
                    "ReadOnly": m.read_only,
                }))
                .ok()
            })
            .collect();
        let host = HostConfig {
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(allowed.iter().map(|c| c.short_name().to_owned()).collect()),
            privileged: Some(false),
            network_mode: spec.network_mode.clone(),
            binds: none_if_empty(&spec.binds),
            mounts: (!mounts.is_empty()).then_some(mounts),
            tmpfs: (!spec.tmpfs.is_empty())
                .then(|| spec.tmpfs.clone().into_iter().collect::<HashMap<_, _>>()),
            sysctls: (!spec.sysctls.is_empty())
                .then(|| spec.sysctls.clone().into_iter().collect::<HashMap<_, _>>()),
            devices: (!spec.devices.is_empty()).then(|| {
                spec.devices
                    .iter()
                    .map(|d| DeviceMapping {
                        path_on_host: Some(d.path_on_host.clone()),
                        path_in_container: Some(d.path_in_container.clone()),
                        cgroup_permissions: Some(d.cgroup_permissions.clone()),
                    })
                    .collect()
            }),
            security_opt: none_if_empty(&spec.security_opt),
            readonly_rootfs: Some(spec.read_only),
            group_add: none_if_empty(&spec.group_add),
            pid_mode: spec.pid_mode.clone(),
            ipc_mode: spec.ipc_mode.clone(),
            uts_mode: spec.uts_mode.clone(),
            userns_mode: spec.userns_mode.clone(),
            cgroupns_mode: spec.cgroupns_mode.as_deref().and_then(|m| m.parse().ok()),
            init: spec.init,
            ulimits: (!spec.ulimits.is_empty()).then(|| {
                spec.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits {
                        name: Some(u.name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            shm_size: spec.shm_size,
            runtime: spec.runtime.clone(),
            ..Default::default()
        };
        ContainerCreateBody {
            image: spec.image.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            user: spec.user.clone(),
            working_dir: spec.workdir.clone(),
            hostname: spec.hostname.clone(),
            env: spec.env.clone(),
            tty: Some(spec.tty),
            open_stdin: Some(spec.open_stdin),
            stop_signal: spec.stop_signal.clone(),
            labels: Some(HashMap::from([(
                LABEL.to_owned(),
                self.cleanup.owner.clone(),
            )])),
            host_config: Some(host),
            ..Default::default()
        }
    }

    /// One run: create, start, probe or wait, sample, remove.
    pub async fn trial(&mut self, allowed: &[Cap]) -> Result<Trial, ProofError> {
        self.runs += 1;
        let name = format!("capprof-proof-{}-{}", self.cleanup.owner, self.runs);
        let opts = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .engine
            .docker()
            .create_container(Some(opts), self.create_body(allowed))
            .await
            .map_err(|source| ProofError::Request {
                what: format!("create container {name}"),
                source,
            })?;
        if !is_container_id(&created.id) {
            // Not an id: remove it by name, and stop trusting the engine.
            remove(&self.engine, &name).await;
            return Err(ProofError::Unsupported(format!(
                "the engine answered a create with a malformed id {:?}",
                created.id
            )));
        }
        let id = created.id;
        let result = self.observe(&id, &name).await;
        remove(&self.engine, &id).await;
        result
    }

    async fn observe(&self, id: &str, name: &str) -> Result<Trial, ProofError> {
        let docker = self.engine.docker();
        let started = Instant::now();
        if let Err(e) = docker.start_container(id, None).await {
            return Ok(Trial {
                outcome: Outcome::Failed(format!("the engine could not start it: {e}")),
                refused: vec![],
                processes: vec![],
            });
        }
        let running = self.running(id, name).await;
        let mut log = CredLog::default();
        let sample = |log: &mut CredLog| {
            if let Some(dir) = &running.cgroup {
                log.add(creds::sample_cgroup(dir));
            }
        };
        sample(&mut log);
        let deadline = started + self.options.timeout;
        // With a probe, its own give-up (at the deadline, with the last
        // attempt's story) comes first; this one is a backstop.
        let hard_deadline = match self.options.probe {
            Some(_) => deadline + PROBE_ATTEMPT + Duration::from_secs(1),
            None => deadline,
        };
        let mut wait = docker.wait_container(id, None);
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        // The probe's exec sessions: their processes are not the workload's.
        let sessions = std::cell::RefCell::new(vec![]);
        let probe_loop = self.probe_until_pass(id, &running.env, deadline, &sessions);
        tokio::pin!(probe_loop);
        let outcome = loop {
            tokio::select! {
                exited = wait.next() => break self.exit_outcome(exit_status(exited)),
                result = &mut probe_loop, if self.options.probe.is_some() => {
                    match result {
                        Ok(ProbeEnd::Passed) => {
                            let settle = tokio::time::sleep(SETTLE);
                            tokio::pin!(settle);
                            loop {
                                tokio::select! {
                                    _ = &mut settle => break,
                                    _ = tick.tick() => sample(&mut log),
                                }
                            }
                            break Outcome::Passed;
                        }
                        Ok(ProbeEnd::GaveUp(why)) => break Outcome::Failed(why),
                        Err(e) => return Err(e),
                    }
                }
                _ = tick.tick() => {
                    sample(&mut log);
                    if Instant::now() >= hard_deadline {
                        break Outcome::Failed(format!(
                            "still running after {}s",
                            self.options.timeout.as_secs()
                        ));
                    }
                }
            }
        };
        sample(&mut log);
        let outcome = self.in_its_words(id, outcome).await;
        let refused = match &self.options.refusals {
            Some(watch) => watch.take(&running.cgroup_ids, Some(id)).await,
            None => vec![],
        };
        Ok(Trial {
            outcome,
            refused,
            processes: log.processes(&sessions.borrow()),
        })
    }

    /// What a started container is, for the rest of its run: its cgroup
    /// (to sample), that cgroup's id while it exists (refused capset()
    /// calls are reported by it; once it is gone they are found by the
    /// container's id), and the probe's environment.
    async fn running(&self, id: &str, name: &str) -> Running {
        let info = self.engine.inspect(id).await;
        let cgroup = info
            .as_ref()
            .and_then(|i| i.pid)
            .and_then(|pid| cgroup_of(&self.mount, pid))
            .or_else(|| {
                self.engine
                    .cgroup_parents()
                    .first()
                    .map(|p| self.mount.join(p.trim_start_matches('/')).join(id))
            });
        let cgroup_ids = cgroup
            .as_deref()
            .and_then(|dir| crate::cgroup::cgroup_id(dir).ok())
            .into_iter()
            .collect();
        let mut env = vec![
            ("CAPPROF_CONTAINER_NAME".to_owned(), name.to_owned()),
            ("CAPPROF_CONTAINER_ID".to_owned(), id.to_owned()),
        ];
        if let Some(pid) = info.as_ref().and_then(|i| i.pid) {
            env.push(("CAPPROF_CONTAINER_PID".into(), pid.to_string()));
        }
        let address = match self.spec.network_mode.as_deref() {
            Some("host") => Some("127.0.0.1".to_owned()),
            _ => info.as_ref().and_then(|i| i.address.clone()),
        };
        if let Some(a) = address {
            env.push(("CAPPROF_CONTAINER_ADDRESS".into(), a));
        }
        Running {
            cgroup,
            cgroup_ids,
            env,
        }
    }

    /// How a run ended when the container exited first: without a probe
    /// its exit status says; with one, it exited too soon.
    fn exit_outcome(&self, status: Option<i64>) -> Outcome {
        match (&self.options.probe, status) {
            (None, Some(0)) => Outcome::Passed,
            (None, Some(code)) => Outcome::Failed(format!("exit status {code}")),
            (None, None) => Outcome::Failed("the engine lost track of it".into()),
            (Some(_), code) => Outcome::Failed(format!(
                "it exited ({}) before the probe passed",
                code.map_or("status unknown".to_owned(), |c| format!("status {c}"))
            )),
        }
    }

    /// A failed run says why in its own words, when it said any.
    async fn in_its_words(&self, id: &str, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Failed(why) => match self.last_log_line(id).await {
                Some(said) => Outcome::Failed(format!("{why}: {said}")),
                None => Outcome::Failed(why),
            },
            passed => passed,
        }
    }

    /// The container's last line of output.
    async fn last_log_line(&self, id: &str) -> Option<String> {
        let opts = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("5")
            .build();
        let mut logs = self.engine.docker().logs(id, Some(opts));
        let mut text = String::new();
        let read = async {
            while let Some(Ok(chunk)) = logs.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
        Some(probe::last_line(&text)).filter(|l| !l.is_empty())
    }

    /// Retries the probe until it passes or the deadline.
    async fn probe_until_pass(
        &self,
        id: &str,
        env: &[(String, String)],
        deadline: Instant,
        sessions: &std::cell::RefCell<Vec<u32>>,
    ) -> Result<ProbeEnd, ProofError> {
        let Some(probe) = &self.options.probe else {
            return std::future::pending().await;
        };
        let mut last = String::from("the probe never ran");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(ProbeEnd::GaveUp(format!(
                    "the probe did not pass within {}s: {last}",
                    self.options.timeout.as_secs()
                )));
            }
            let limit = left.min(PROBE_ATTEMPT);
            let attempt = match probe {
                Probe::Host(argv) => probe::run_host(argv, env, limit).await?,
                Probe::Exec(argv) => self.run_exec(id, argv, limit, sessions).await?,
            };
            match attempt {
                (Some(0), _) => return Ok(ProbeEnd::Passed),
                (Some(code), output) => {
                    last = format!("exit status {code}");
                    if !output.is_empty() {
                        last.push_str(&format!(" ({output})"));
                    }
                }
                (None, _) => last = format!("timed out after {}s", limit.as_secs()),
            }
            tokio::time::sleep(PROBE_RETRY).await;
        }
    }

    /// Whether the engine says the container is running (true when it
    /// cannot say: the probe's failure is then reported as it is).
    async fn still_running(&self, id: &str) -> bool {
        match self.engine.docker().inspect_container(id, None).await {
            Ok(c) => c.state.and_then(|s| s.running).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Runs the probe inside the container; its exit status and output.
    async fn run_exec(
        &self,
        id: &str,
        argv: &[String],
        limit: Duration,
        sessions: &std::cell::RefCell<Vec<u32>>,
    ) -> Result<(Option<i32>, String), ProofError> {
        let docker = self.engine.docker();
        let exec = match docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(argv.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(exec) => exec,
            // Not running (yet, or any more): a failed attempt.
            Err(e) => return Ok((Some(126), e.to_string())),
        };
        let run = async {
            let mut output = String::new();
            if let Ok(StartExecResults::Attached {
                output: mut out, ..
            }) = docker.start_exec(&exec.id, None).await
            {
                while let Some(Ok(chunk)) = out.next().await {
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    if output.len() > 8192 {
                        output.drain(..output.len() - 4096);
                    }
                }
            }
            output
        };
        let finished = tokio::time::timeout(limit, run).await;
        let inspected = docker.inspect_exec(&exec.id).await.ok();
        // The engine keeps the session's host pid after it ends.
        if let Some(pid) = inspected
            .as_ref()
            .and_then(|i| i.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|&p| p > 0)
        {
            sessions.borrow_mut().push(pid);
        }
        let Ok(output) = finished else {
            return Ok((None, String::new()));
        };
        let code = inspected
            .and_then(|i| i.exit_code)
            .and_then(|c| i32::try_from(c).ok());
        // runc could not exec the probe at all: bad input, not a failed run.
        // Unless the container is no longer running: then runc found its
        // namespaces gone (`lstat /proc/PID/ns/ipc: no such file …`), and the
        // run failed, as a workload that dies without a capability does.
        if matches!(code, Some(126 | 127))
            && output.contains("OCI runtime exec failed")
            && (output.contains("not found")
                || output.contains("no such file")
                || output.contains("permission denied"))
            && self.still_running(id).await
        {
            return Err(ProofError::ProbeNotExecutable {
                probe: argv.join(" "),
                reason: format!("cannot run in the container: {}", probe::last_line(&output)),
            });
        }
        Ok((code, probe::last_line(&output)))
    }
}

/// How a run's probing ended.
pub(super) enum ProbeEnd {
    Passed,
    /// The deadline came first; the last attempt's story.
    GaveUp(String),
}

/// The exit status from the engine's wait stream, when it said.
/// A started container, as its run needs it (`ContainerWorkload::running`).
struct Running {
    cgroup: Option<std::path::PathBuf>,
    cgroup_ids: Vec<u64>,
    env: Vec<(String, String)>,
}

fn exit_status(
    item: Option<Result<bollard::models::ContainerWaitResponse, bollard::errors::Error>>,
) -> Option<i64> {
    match item? {
        Ok(r) => Some(r.status_code),
        Err(bollard::errors::Error::DockerContainerWaitError { code, .. }) => Some(code),
        Err(_) => None,
    }
}

/// The cgroup v2 directory of a process, from `/proc/PID/cgroup`.
pub fn cgroup_of(mount: &Path, pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    Some(mount.join(rel.trim_start_matches('/')))
}
