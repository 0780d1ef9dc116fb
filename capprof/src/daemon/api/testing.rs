//! Fixtures for the tests of the API and of the commands that use it.

use std::{
    path::PathBuf,
    sync::{Arc, mpsc as std_mpsc},
    thread,
};

use tokio::sync::{mpsc, oneshot};

use super::{Query, QueryTx, bind, serve};
use crate::{
    capability::Cap,
    daemon::{
        query::{ContainerSummary, Health, Lookup, MetricsSnapshot},
        view::{View, ViewEntry, ViewRx},
    },
    profile::Profile,
};

pub const IMAGE: &str = "docker.io/library/nginx:1.27";
pub const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The sample profile every test shares (tests/fixtures/web-profile.json):
/// container `web` of nginx, needing CHOWN and NET_BIND_SERVICE.
pub fn sample_profile() -> Profile {
    let json = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/web-profile.json"
    ));
    Profile::from_json("web-profile.json", json).unwrap()
}

pub fn sample_list() -> Vec<ContainerSummary> {
    vec![
        ContainerSummary {
            id: ID.into(),
            name: Some("web".into()),
            image: Some(IMAGE.into()),
            runtime: "docker".into(),
            state: "running".into(),
            required: vec![Cap::from_number(0).unwrap()],
            allowlist: vec![Cap::from_number(0).unwrap(), Cap::from_number(10).unwrap()],
            first_seen: "2025-01-01T00:00:00Z".into(),
            last_seen: "2025-01-01T00:00:02Z".into(),
            shadow: None,
        },
        ContainerSummary {
            id: "fedcba9876543210".into(),
            name: None,
            image: None,
            runtime: "podman".into(),
            state: "exited".into(),
            required: vec![],
            allowlist: vec![],
            first_seen: String::new(),
            last_seen: String::new(),
            shadow: None,
        },
    ]
}

pub fn sample_health() -> Health {
    Health {
        status: "ok".into(),
        version: "0.1.0".into(),
        backend: "tp_btf".into(),
        classification: "call-site".into(),
        uptime_secs: 7,
        containers: 2,
        capabilities: vec![],
    }
}

/// The view of [`sample_list`]: `web`'s profile is [`sample_profile`], the
/// other container has none.
pub fn fake_view() -> ViewRx {
    let entries = sample_list()
        .into_iter()
        .map(|line| ViewEntry {
            profile: (line.id == ID).then(|| Arc::new(sample_profile())),
            id: line.id,
            name: line.name,
            cgroup: None,
        })
        .collect();
    let lines = sample_list().into_iter().map(Arc::new).collect();
    let (_, rx) = tokio::sync::watch::channel(Arc::new(View::new(lines, entries, None)));
    rx
}

/// An aggregator with fixed answers.
pub fn fake_aggregator() -> QueryTx {
    let (tx, mut rx) = mpsc::channel::<Query>(8);
    tokio::spawn(async move {
        while let Some(q) = rx.recv().await {
            match q {
                Query::Health { reply } => {
                    let _ = reply.send(sample_health());
                }
                Query::Metrics { reply } => {
                    let _ = reply.send(MetricsSnapshot::default());
                }
                // `web`, by name or id prefix, as the view has it.
                Query::Container { key, reply } => {
                    let known = key == "web" || (key.len() >= 4 && ID.starts_with(&key));
                    let _ = reply.send(known.then(sample_profile).ok_or(Lookup::NotFound));
                }
                Query::Image { image, reply } => {
                    let known = image == IMAGE || image == "acme/export";
                    let _ = reply.send(known.then(sample_profile).ok_or(Lookup::NotFound));
                }
                // No pod was profiled.
                Query::Workload { key, reply } => {
                    let _ = reply.send(Err(crate::cri::workload::WorkloadError::NotFound {
                        key: key.to_string(),
                    }));
                }
                Query::Workloads { reply } => {
                    let _ = reply.send(vec![]);
                }
                // "web" is known and has no candidate allowlist.
                Query::Shadow { key, reply } => {
                    let _ = reply.send((key == "web").then_some(None));
                }
            }
        }
    });
    tx
}

/// The API with the fake aggregator, on a thread and runtime of its own,
/// for callers that run their own runtime (the CLI commands).
pub struct ThreadServer {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ThreadServer {
    pub fn start(socket: PathBuf) -> Self {
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let path = socket.clone();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = bind(&path).unwrap();
                ready_tx.send(()).unwrap();
                serve(listener, fake_aggregator(), fake_view(), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        ready_rx.recv().unwrap();
        ThreadServer {
            socket,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for ThreadServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            // Do not panic while already panicking: that would abort.
            if !thread::panicking() {
                joined.unwrap();
            }
        }
        super::unlink(&self.socket);
    }
}
