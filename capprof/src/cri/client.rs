//! The node's CRI runtime service (runtime.v1) over its unix socket, with
//! tonic: what capprof asks is who a container is (`ContainerStatus`, the
//! pod through `ListContainers` and `PodSandboxStatus`), which containers
//! run, and when they start and stop.
//!
//! Following containers: `GetContainerEvents` (the kubelet's "evented
//! PLEG", containerd 1.7 and later, CRI-O 1.26 and later) where the runtime
//! serves it; otherwise `ListContainers` every [`POLL_INTERVAL`], compared
//! with the last answer. containerd 1.6 answers `Unimplemented`, so it is
//! polled. One poll of a runtime with a handful of containers costs well
//! under a millisecond of the runtime's time (see the book: docs/src/operations/kubernetes.md).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures_util::{Stream, StreamExt as _};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, GetEventsRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandboxState, PodSandboxStatusRequest,
    VersionRequest, runtime_service_client::RuntimeServiceClient,
};
use tokio::net::UnixStream;
use tonic::{
    Code,
    transport::{Channel, Endpoint, Uri},
};

use super::{CriError, names};
use crate::{
    engine::{ContainerEvent, ContainerInfo, is_container_id},
    profile::K8sRef,
};

/// How often containers are listed when the runtime serves no events.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Every call's deadline.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply accepted (tonic's default is 4 MiB too; said here).
const MAX_REPLY_BYTES: usize = 4 << 20;
/// Pods remembered by sandbox id (cleared when full).
const MAX_SANDBOXES: usize = 4096;

/// kubelet's labels on each container.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What is known of one pod (sandbox).
#[derive(Debug, Clone)]
struct Pod {
    namespace: String,
    name: String,
    uid: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Clone)]
pub struct CriClient {
    client: RuntimeServiceClient<Channel>,
    pub endpoint: String,
    /// `containerd`, `cri-o`, as the runtime names itself.
    pub runtime_name: String,
    pub runtime_version: String,
    pods: Arc<Mutex<HashMap<String, Pod>>>,
}

type Events = Pin<Box<dyn Stream<Item = ContainerEvent> + Send>>;

/// The socket path of `unix:///PATH` or `/PATH`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.starts_with('/').then_some(endpoint))
        .map(PathBuf::from)
        .ok_or_else(|| CriError::UnsupportedAddress(endpoint.to_owned()))
}

impl CriClient {
    /// Connects to the runtime service at `endpoint` (`unix:///PATH` or a
    /// path) and asks its version: an endpoint that does not answer the CRI
    /// is an error here, not later.
    pub async fn connect(endpoint: &str) -> Result<Self, CriError> {
        let path = socket_path(endpoint)?;
        let unreachable = |reason: String| CriError::Unreachable {
            endpoint: endpoint.to_owned(),
            reason,
        };
        match Self::connect_to(path.clone(), endpoint).await {
            Ok(client) => Ok(client),
            // tonic's own words are its internals: say what is wrong.
            Err(raw) => Err(unreachable(
                match crate::socket::diagnose(&path, crate::socket::Expected::Cri).await {
                    Some(problem) => problem.to_string(),
                    None => raw,
                },
            )),
        }
    }

    async fn connect_to(path: PathBuf, endpoint: &str) -> Result<Self, String> {
        let channel =
            Endpoint::from_static("http://cri.invalid")
                .connect_timeout(TIMEOUT)
                .timeout(TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
                .map_err(|e| error_chain(&e))?;
        let mut client =
            RuntimeServiceClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES);
        let version = tokio::time::timeout(
            TIMEOUT,
            client.version(VersionRequest {
                version: "v1".into(),
            }),
        )
        .await
        .map_err(|_| "the runtime did not answer in time".to_owned())?
        .map_err(|e| match e.code() {
            tonic::Code::Unimplemented => "this socket speaks gRPC but serves no CRI runtime \
                                           service (runtime.v1): containerd without its CRI plugin?"
                .to_owned(),
            _ => status_line(&e),
        })?
        .into_inner();
        let printable =
            |s: String| -> String { s.chars().filter(|c| !c.is_control()).take(64).collect() };
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            runtime_name: printable(version.runtime_name),
            runtime_version: printable(version.runtime_version),
            pods: Arc::default(),
        })
    }

    /// The ids of the running containers.
    pub async fn running(&self) -> Vec<String> {
        let filter = ContainerFilter {
            state: Some(k8s_cri::v1::ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        self.list(Some(filter))
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// Every container the runtime knows, with its state; None when the
    /// call failed.
    async fn list(&self, filter: Option<ContainerFilter>) -> Option<Vec<(String, i32)>> {
        let reply = self
            .client
            .clone()
            .list_containers(ListContainersRequest { filter })
            .await
            .ok()?
            .into_inner();
        Some(
            reply
                .containers
                .into_iter()
                .filter(|c| is_container_id(&c.id))
                .map(|c| (c.id, c.state))
                .collect(),
        )
    }

    /// Who a container is: its name in its pod, image, and the pod's
    /// namespace, name, uid and labels, with the owner derived from them.
    /// None when the runtime does not know it. A pod's sandbox (pause)
    /// container is named `POD`, as the kubelet's dockershim named it, and
    /// marked as a sandbox.
    pub async fn inspect(&self, id: &str) -> Option<ContainerInfo> {
        if !is_container_id(id) {
            return None;
        }
        let mut client = self.client.clone();
        let status = match client
            .container_status(ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
        {
            Ok(reply) => reply.into_inner().status?,
            Err(e) if e.code() == Code::NotFound => return self.inspect_sandbox(id).await,
            Err(e) => {
                tracing::debug!("CRI ContainerStatus {id}: {}", status_line(&e));
                return None;
            }
        };
        let listed = client
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    id: id.to_owned(),
                    ..Default::default()
                }),
            })
            .await
            .ok()?
            .into_inner();
        let sandbox_id = listed
            .containers
            .into_iter()
            .find(|c| c.id == id)
            .map(|c| c.pod_sandbox_id)?;
        let pod = self.pod(&sandbox_id).await.or_else(|| {
            // The kubelet's own labels on the container, if the sandbox
            // has gone already.
            let label = |k: &str| status.labels.get(k).cloned().unwrap_or_default();
            pod_of(
                label(POD_NAMESPACE),
                label(POD_NAME),
                label(POD_UID),
                &HashMap::new(),
            )
        })?;
        let name = status
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .or_else(|| status.labels.get(CONTAINER_NAME).cloned())
            .filter(|n| names::is_dns_label(n));
        let Some(name) = name else {
            tracing::warn!("CRI container {id}: no valid container name; left unnamed");
            return None;
        };
        let image = status
            .image
            .as_ref()
            .and_then(|i| names::image(&i.image))
            .or_else(|| names::image(&status.image_ref));
        Some(ContainerInfo {
            id: id.to_owned(),
            name: Some(name),
            image,
            started_at: nanos(status.started_at),
            running: status.state == ContainerState::ContainerRunning as i32,
            exit_code: (status.state == ContainerState::ContainerExited as i32)
                .then_some(i64::from(status.exit_code)),
            k8s: Some(pod.into_ref()),
            ..Default::default()
        })
    }

    async fn inspect_sandbox(&self, id: &str) -> Option<ContainerInfo> {
        let pod = self.pod(id).await?;
        Some(ContainerInfo {
            id: id.to_owned(),
            name: Some("POD".into()),
            k8s: Some(pod.into_ref()),
            sandbox: true,
            ..Default::default()
        })
    }

    /// A pod by its sandbox id, remembered once known.
    async fn pod(&self, sandbox_id: &str) -> Option<Pod> {
        if let Some(pod) = self.pods.lock().ok()?.get(sandbox_id) {
            return Some(pod.clone());
        }
        let status = self
            .client
            .clone()
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: sandbox_id.to_owned(),
                verbose: false,
            })
            .await
            .ok()?
            .into_inner()
            .status?;
        let meta = status.metadata?;
        let pod = pod_of(meta.namespace, meta.name, meta.uid, &status.labels)?;
        let mut pods = self.pods.lock().ok()?;
        if pods.len() >= MAX_SANDBOXES {
            pods.clear();
        }
        pods.insert(sandbox_id.to_owned(), pod.clone());
        Some(pod)
    }

    /// Container starts and exits as they happen: the runtime's event
    /// stream if it serves one, else a poll of `ListContainers`. The
    /// stream ends only when the runtime stops answering.
    pub fn events(&self) -> Events {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let client = self.clone();
        tokio::spawn(async move {
            match client
                .clone()
                .client
                .get_container_events(GetEventsRequest {})
                .await
            {
                Ok(stream) => {
                    tracing::info!("following the CRI runtime's container events");
                    let mut stream = stream.into_inner();
                    let mut first = true;
                    let mut sandboxes = std::collections::HashSet::new();
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(event) => {
                                first = false;
                                let action = match event.container_event_type {
                                    1 => "start",
                                    2 => "die",
                                    _ => continue,
                                };
                                if !is_container_id(&event.container_id) {
                                    continue;
                                }
                                // The pod's sandbox, the first time it shows.
                                if let Some(sandbox) = event
                                    .pod_sandbox_status
                                    .as_ref()
                                    .map(|s| s.id.clone())
                                    .filter(|id| is_container_id(id))
                                    && sandboxes.insert(sandbox.clone())
                                {
                                    if sandboxes.len() > MAX_SANDBOXES {
                                        sandboxes.clear();
                                    }
                                    let ev = ContainerEvent {
                                        action: "start".into(),
                                        id: sandbox,
                                        name: None,
                                        image: None,
                                    };
                                    if tx.send(ev).await.is_err() {
                                        return;
                                    }
                                }
                                let ev = ContainerEvent {
                                    action: action.into(),
                                    id: event.container_id,
                                    name: None,
                                    image: None,
                                };
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) if first && e.code() == Code::Unimplemented => break,
                            Err(e) => {
                                tracing::warn!("the CRI event stream failed: {}", status_line(&e));
                                return;
                            }
                        }
                    }
                }
                Err(e) if e.code() == Code::Unimplemented => {}
                Err(e) => tracing::debug!("CRI GetContainerEvents: {}", status_line(&e)),
            }
            tracing::info!(
                "the CRI runtime serves no container events; listing containers every {} ms",
                POLL_INTERVAL.as_millis()
            );
            client.poll(tx).await;
        });
        Box::pin(tokio_stream_from(rx))
    }

    /// Lists containers and pod sandboxes every [`POLL_INTERVAL`] and sends
    /// what changed: `start` for one newly running, `die` for one that
    /// exited or went away while it ran. A container that started and
    /// exited between two lists (new, or last seen created, and exited now)
    /// gets both.
    /// Sandboxes are followed too, so that their (pause) cgroups are known
    /// for what they are.
    async fn poll(&self, tx: tokio::sync::mpsc::Sender<ContainerEvent>) {
        let mut known: HashMap<String, Run> = HashMap::new();
        let mut first = true;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(now) = self.states().await else {
                continue;
            };
            let events = changes(&known, &now, first);
            first = false;
            known = now;
            for (action, id) in events {
                let ev = ContainerEvent {
                    action: action.into(),
                    id,
                    name: None,
                    image: None,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Every container and sandbox, and whether it runs; None when a call
    /// failed.
    async fn states(&self) -> Option<HashMap<String, Run>> {
        let containers = self.list(None).await?;
        let sandboxes = self
            .client
            .clone()
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .ok()?
            .into_inner()
            .items;
        let container_state = |state: i32| match ContainerState::try_from(state) {
            Ok(ContainerState::ContainerRunning) => Run::Running,
            Ok(ContainerState::ContainerExited) => Run::Exited,
            _ => Run::Other,
        };
        let sandbox_state = |state: i32| match PodSandboxState::try_from(state) {
            Ok(PodSandboxState::SandboxReady) => Run::Running,
            Ok(PodSandboxState::SandboxNotready) => Run::Exited,
            Err(_) => Run::Other,
        };
        Some(
            containers
                .into_iter()
                .map(|(id, state)| (id, container_state(state)))
                .chain(
                    sandboxes
                        .into_iter()
                        .filter(|s| is_container_id(&s.id))
                        .map(|s| (s.id, sandbox_state(s.state))),
                )
                .collect(),
        )
    }
}

/// The events between two lists (`first`: `known` is empty because
/// nothing was listed yet, not because nothing ran).
fn changes(
    known: &HashMap<String, Run>,
    now: &HashMap<String, Run>,
    first: bool,
) -> Vec<(&'static str, String)> {
    let mut events = vec![];
    for (id, state) in now {
        let before = known.get(id).copied();
        match (state, before) {
            (Run::Running, Some(Run::Running)) => {}
            (Run::Running, _) => events.push(("start", id.clone())),
            (_, Some(Run::Running)) => events.push(("die", id.clone())),
            // Created (or unseen) before, exited now: it ran between two
            // lists.
            (Run::Exited, Some(Run::Other)) | (Run::Exited, None) if !first || before.is_some() => {
                events.push(("start", id.clone()));
                events.push(("die", id.clone()));
            }
            _ => {}
        }
    }
    for (id, state) in known {
        if *state == Run::Running && !now.contains_key(id) {
            events.push(("die", id.clone()));
        }
    }
    events.sort();
    events
}

/// A container's or sandbox's state, as far as following it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Running,
    Exited,
    /// Created and not started, or unknown.
    Other,
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl Pod {
    fn into_ref(self) -> K8sRef {
        let owner = super::owner::derive(&self.namespace, &self.name, &self.labels);
        if let Err(e) = &owner {
            tracing::warn!("{e}");
        }
        K8sRef {
            namespace: self.namespace,
            pod: Some(self.name),
            pod_uid: self.uid,
            labels: self.labels,
            owner: owner.ok(),
        }
    }
}

/// A pod from what the runtime said, if every name is valid.
fn pod_of(
    namespace: String,
    name: String,
    uid: String,
    labels: &HashMap<String, String>,
) -> Option<Pod> {
    if !names::is_dns_label(&namespace) || !names::is_dns_subdomain(&name) {
        tracing::warn!("CRI pod {namespace:?}/{name:?}: not valid Kubernetes names; left unnamed");
        return None;
    }
    Some(Pod {
        namespace,
        name,
        uid: Some(uid).filter(|u| names::is_pod_uid(u)),
        labels: names::pod_labels(labels),
    })
}

fn nanos(ns: i64) -> Option<SystemTime> {
    u64::try_from(ns)
        .ok()
        .filter(|&n| n > 0)
        .map(|n| UNIX_EPOCH + Duration::from_nanos(n))
}

/// A gRPC status as one line.
fn status_line(status: &tonic::Status) -> String {
    let message: String = status
        .message()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    format!("{:?}: {message}", status.code())
}

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

/// Whether `path` is a unix socket.
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_become_events() {
        let map = |pairs: &[(&str, Run)]| -> HashMap<String, Run> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let ev = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            let mut v: Vec<_> = pairs.iter().map(|(a, id)| (*a, id.to_string())).collect();
            v.sort();
            v
        };
        use Run::*;
        /// Known before, listed now, first list, the events.
        type Row<'a> = (
            &'a [(&'a str, Run)],
            &'a [(&'a str, Run)],
            bool,
            &'a [(&'static str, &'a str)],
        );
        let rows: &[Row] = &[
            // The first list: what runs starts; what exited long ago is not news.
            (
                &[],
                &[("a", Running), ("b", Exited), ("c", Other)],
                true,
                &[("start", "a")],
            ),
            (&[("a", Running)], &[("a", Running)], false, &[]),
            (&[("a", Running)], &[("a", Exited)], false, &[("die", "a")]),
            (&[("a", Running)], &[], false, &[("die", "a")]),
            (&[("a", Other)], &[("a", Running)], false, &[("start", "a")]),
            // Ran between two lists: new and exited, or created and exited.
            (
                &[],
                &[("a", Exited)],
                false,
                &[("start", "a"), ("die", "a")],
            ),
            (
                &[("a", Other)],
                &[("a", Exited)],
                false,
                &[("start", "a"), ("die", "a")],
            ),
            (
                &[("a", Other)],
                &[("a", Exited)],
                true,
                &[("start", "a"), ("die", "a")],
            ),
            // Exited and still listed, or removed after it exited: nothing.
            (&[("a", Exited)], &[("a", Exited)], false, &[]),
            (&[("a", Exited)], &[], false, &[]),
            // A restart.
            (
                &[("a", Exited)],
                &[("a", Running)],
                false,
                &[("start", "a")],
            ),
        ];
        for (known, now, first, want) in rows {
            assert_eq!(
                changes(&map(known), &map(now), *first),
                ev(want),
                "{known:?} -> {now:?}"
            );
        }
    }
}
