//! `capprof daemon`: always-on per-container profiling.
//!
//! One task (the aggregator, below) owns the `Observer` and every profile;
//! the ring buffer reader, the engine's event stream, the API and the
//! metrics endpoint talk to it through bounded channels. Maps and links are
//! pinned, so the kernel keeps counting while the daemon is down; restarts
//! reuse the pins and the state directory, and count nothing twice.

pub mod api;
pub mod client;
pub mod config;
pub mod metrics;
pub mod privileges;
pub mod query;
pub mod state;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use config::DaemonConfig;
use futures_util::StreamExt as _;
use query::{CheckSample, ContainerSummary, Group, Health, MetricsSnapshot, Query};
use state::StateDir;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot, watch as tokio_watch},
};

use crate::{
    cgroup,
    engine::{self, ContainerInfo, Engine},
    observer::{Backend, LoadOptions, Observer, ObserverError, reader::read_events},
    profile::Profile,
    recorder::{Recorder, watch_container_roots},
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Observer(#[from] ObserverError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Privileges(#[from] privileges::DropError),
    #[error("{0}")]
    Setup(String),
}

impl DaemonError {
    pub fn is_prerequisite(&self) -> bool {
        match self {
            DaemonError::Observer(e) => e.is_prerequisite(),
            DaemonError::Api(_) | DaemonError::Setup(_) => true,
            _ => false,
        }
    }
}

/// Removes the daemon's pins (`capprof daemon --reset`).
pub fn reset(config: &DaemonConfig) -> Result<bool, DaemonError> {
    let dir = crate::observer::pin::pin_dir(&config.bpffs);
    crate::observer::pin::reset(&dir)
        .map_err(|e| DaemonError::Setup(format!("cannot remove {}: {e}", dir.display())))
}

/// Counters the metrics endpoint reports.
#[derive(Debug, Default)]
struct Counters {
    profiles_written: u64,
    evictions: u64,
}

/// Runs the daemon until SIGTERM or SIGINT. Must run on a current-thread
/// runtime: capabilities are per thread, and the daemon drops them on the
/// one thread it has.
pub async fn run(config: DaemonConfig, backend: Option<Backend>) -> Result<(), DaemonError> {
    let started = Instant::now();
    let mount = cgroup::cgroup2_mount().map_err(|e| DaemonError::Setup(e.to_string()))?;
    let state = StateDir::open(&config.state_dir)?;
    let endpoint = config
        .engine
        .clone()
        .unwrap_or_else(engine::endpoint_from_env);
    let engine = match Engine::connect(&endpoint).await {
        Ok(engine) => Some(engine),
        Err(e) => {
            tracing::warn!("{e}; containers are profiled by cgroup, unnamed");
            None
        }
    };
    let mut observer = Observer::load_with(LoadOptions {
        backend,
        pin_bpffs: Some(config.bpffs.clone()),
    })?;
    if observer.reused_pins() {
        eprintln!(
            "capprof: reusing pinned maps and programs: checks made while the daemon was down are kept"
        );
    }

    let parents = match &engine {
        Some(engine) => engine.cgroup_parents(),
        None => vec!["/docker", "/libpod_parent"],
    };
    let watched = watch_container_roots(&mut observer, &mount, &parents, &config.cgroup_roots)?;

    let mut recorder = Recorder::new(&mount, watched.clone(), &observer);
    let (restored, corrupt) = state.load_all();
    for p in restored {
        recorder.restore(p);
    }
    if corrupt > 0 {
        eprintln!("capprof: {corrupt} corrupt state file(s) moved aside");
    }
    recorder.adopt_existing();

    // Everything privileged is done: bind, then drop every capability.
    let listener = api::bind(&config.socket)?;
    let metrics_listener =
        match &config.metrics {
            Some(addr) => {
                let addr = metrics::parse_addr(addr)
                    .map_err(|e| DaemonError::Setup(format!("metrics: {e}")))?;
                Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    DaemonError::Setup(format!("cannot bind metrics on {addr}: {e}"))
                })?)
            }
            None => None,
        };
    let kept = privileges::drop_all()?;

    let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
    let shutdown = |mut rx: tokio_watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (query_tx, mut query_rx) = mpsc::channel::<Query>(64);
    let api_task = tokio::spawn(api::serve(
        listener,
        query_tx.clone(),
        shutdown(shutdown_rx.clone()),
    ));
    let metrics_task = metrics_listener.map(|l| {
        tokio::spawn(metrics::serve_listener(
            l,
            query_tx.clone(),
            shutdown(shutdown_rx.clone()),
        ))
    });

    let ring = observer.take_events()?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (rec_tx, mut rec_rx) = mpsc::channel(4096);
    let reader = tokio::spawn(read_events(ring, rec_tx, stop_rx));

    let engine = engine.map(std::sync::Arc::new);
    let mut engine_events = engine.as_ref().map(|e| Box::pin(e.events()));
    let (info_tx, mut info_rx) = mpsc::channel::<ContainerInfo>(256);
    if let Some(engine) = &engine {
        for id in engine.running().await {
            if let Some(info) = engine.inspect(&id).await {
                recorder.on_inspect(info);
            }
        }
    }

    eprintln!(
        "capprof: daemon ready: {} backend, watching {}, api {}, {} capabilities kept{}",
        observer.backend(),
        watched.join(", "),
        config.socket.display(),
        if kept.is_empty() {
            "no".to_owned()
        } else {
            kept.join(",")
        },
        config
            .metrics
            .as_deref()
            .map(|m| format!(", metrics {m}"))
            .unwrap_or_default(),
    );

    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let mut flush = tokio::time::interval(Duration::from_secs(config.flush_interval_secs));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut counters = Counters::default();
    let mut written: HashMap<String, String> = HashMap::new();
    let ctx = Ctx {
        backend: observer.backend().to_string(),
        classification: observer.classification().to_string(),
        kept,
        started,
    };

    loop {
        tokio::select! {
            Some(r) = rec_rx.recv() => recorder.on_record(r),
            ev = async { engine_events.as_mut().unwrap().next().await }, if engine_events.is_some() => match ev {
                Some(ev) => {
                    if ev.action == "start" {
                        if let Some(engine) = engine.clone() {
                            let (info_tx, id) = (info_tx.clone(), ev.id.clone());
                            tokio::spawn(async move {
                                if let Some(info) = engine.inspect(&id).await {
                                    let _ = info_tx.send(info).await;
                                }
                            });
                        }
                    }
                    recorder.on_engine_event(ev);
                }
                None => {
                    tracing::warn!("the engine's event stream ended");
                    engine_events = None;
                }
            },
            Some(info) = info_rx.recv() => recorder.on_inspect(info),
            Some(q) = query_rx.recv() => answer(q, &recorder, &observer, &state, &config, &counters, &ctx),
            _ = tick.tick() => {
                for id in recorder.due(Duration::from_millis(300)) {
                    if let Err(e) = recorder.finalize(&id, &mut observer) {
                        tracing::warn!("finalizing {id}: {e}");
                    }
                    persist(&id, &recorder, &observer, &state, &mut written, &mut counters);
                }
                evict(&mut recorder, &mut observer, config.max_containers, &mut counters);
            }
            _ = flush.tick() => flush_all(&recorder, &observer, &state, &mut written, &mut counters),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Flush everything, without draining the kernel: the counts stay in the
    // pinned maps for the next run, and `base` on disk holds only drained
    // counts, so nothing is counted twice.
    let _ = stop_tx.send(());
    let _ = reader.await;
    while let Ok(r) = rec_rx.try_recv() {
        recorder.on_record(r);
    }
    flush_all(&recorder, &observer, &state, &mut written, &mut counters);
    let _ = shutdown_tx.send(true);
    let _ = api_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    eprintln!(
        "capprof: daemon stopped; {} profile(s) in {}",
        recorder.len(),
        config.state_dir.display()
    );
    Ok(())
}

struct Ctx {
    backend: String,
    classification: String,
    kept: Vec<String>,
    started: Instant,
}

fn persist(
    id: &str,
    recorder: &Recorder,
    observer: &Observer,
    state: &StateDir,
    written: &mut HashMap<String, String>,
    counters: &mut Counters,
) {
    let counts = observer.read_counts().unwrap_or_default();
    persist_with(id, recorder, observer, &counts, state, written, counters);
}

fn persist_with(
    id: &str,
    recorder: &Recorder,
    observer: &Observer,
    counts: &[(
        capprof_common::check::CheckKey,
        capprof_common::check::CheckStats,
    )],
    state: &StateDir,
    written: &mut HashMap<String, String>,
    counters: &mut Counters,
) {
    let current = recorder.snapshot(id, observer, counts);
    let Some(p) = recorder.persisted(id, current) else {
        return;
    };
    // Skip unchanged containers (the end time always moves; compare the rest).
    let fingerprint = serde_json::to_string(&(
        &p.base.as_ref().map(|b| &b.capabilities),
        p.current.as_ref().map(|c| &c.capabilities),
        &p.name,
        p.exited,
    ))
    .unwrap_or_default();
    if written.get(id) == Some(&fingerprint) {
        return;
    }
    match state.write(&p) {
        Ok(()) => {
            counters.profiles_written += 1;
            written.insert(id.to_owned(), fingerprint);
        }
        Err(e) => tracing::warn!("{e}"),
    }
}

fn flush_all(
    recorder: &Recorder,
    observer: &Observer,
    state: &StateDir,
    written: &mut HashMap<String, String>,
    counters: &mut Counters,
) {
    let counts = observer.read_counts().unwrap_or_default();
    let ids: Vec<String> = recorder.records().map(|r| r.id.clone()).collect();
    for id in ids {
        persist_with(&id, recorder, observer, &counts, state, written, counters);
    }
}

/// Keeps memory bounded: exited containers beyond `max` are dropped from
/// memory (they are on disk, and the API reads them back from there).
fn evict(recorder: &mut Recorder, observer: &mut Observer, max: usize, counters: &mut Counters) {
    if recorder.len() <= max {
        return;
    }
    let mut exited: Vec<String> = recorder
        .records()
        .filter(|r| r.exited)
        .map(|r| r.id.clone())
        .collect();
    exited.sort();
    for id in exited.into_iter().take(recorder.len() - max) {
        let ids = recorder.evict(&id);
        let _ = observer.unwatch(0, &ids);
        counters.evictions += 1;
    }
}

fn summary(recorder: &Recorder, id: &str, profile: Option<&Profile>) -> Option<ContainerSummary> {
    let rec = recorder.records().find(|r| r.id == id)?;
    Some(ContainerSummary {
        id: rec.id.clone(),
        name: rec.info.name.clone(),
        image: rec.info.image.clone(),
        runtime: rec.runtime.clone(),
        state: if rec.exited { "exited" } else { "running" }.into(),
        required: profile.map(|p| p.required.clone()).unwrap_or_default(),
        allowlist: profile.map(|p| p.allowlist.clone()).unwrap_or_default(),
        first_seen: profile
            .map(|p| p.observation.start.clone())
            .unwrap_or_default(),
        last_seen: profile
            .and_then(|p| p.capabilities.iter().map(|c| c.last_seen.clone()).max())
            .unwrap_or_default(),
    })
}

fn answer(
    q: Query,
    recorder: &Recorder,
    observer: &Observer,
    state: &StateDir,
    config: &DaemonConfig,
    counters: &Counters,
    ctx: &Ctx,
) {
    match q {
        Query::Health { reply } => {
            let _ = reply.send(Health {
                status: "ok".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                backend: ctx.backend.clone(),
                classification: ctx.classification.clone(),
                uptime_secs: ctx.started.elapsed().as_secs(),
                containers: recorder.len(),
                capabilities: ctx.kept.clone(),
            });
        }
        Query::List { reply } => {
            let counts = observer.read_counts().unwrap_or_default();
            let mut list: Vec<ContainerSummary> = recorder
                .records()
                .filter(|r| !r.cgroup_ids.is_empty())
                .filter_map(|r| {
                    summary(
                        recorder,
                        &r.id,
                        recorder.snapshot(&r.id, observer, &counts).as_ref(),
                    )
                })
                .collect();
            list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            let _ = reply.send(list);
        }
        Query::Profile {
            group: Group::Container,
            key,
            reply,
        } => {
            let counts = observer.read_counts().unwrap_or_default();
            let profile = match recorder.find(&key) {
                Some(rec) => recorder.snapshot(&rec.id, observer, &counts),
                // Evicted: from disk.
                None => state
                    .ids()
                    .into_iter()
                    .filter_map(|id| state.read(&id))
                    .find(|p| {
                        p.name.as_deref() == Some(key.as_str())
                            || (key.len() >= 4 && p.id.starts_with(&key))
                    })
                    .and_then(|p| p.current),
            };
            let _ = reply.send(profile);
        }
        Query::Profile {
            group: Group::Image,
            key,
            reply,
        } => {
            let counts = observer.read_counts().unwrap_or_default();
            let mut merged: Option<Profile> = None;
            for rec in recorder
                .records()
                .filter(|r| r.info.image.as_deref() == Some(key.as_str()))
            {
                if let Some(p) = recorder.snapshot(&rec.id, observer, &counts) {
                    match &mut merged {
                        Some(m) => m.merge(&p),
                        None => {
                            let mut first = p;
                            first.subject.id = None;
                            first.subject.name = None;
                            first.subject.cgroup = None;
                            merged = Some(first);
                        }
                    }
                }
            }
            let _ = config.group_by;
            let _ = reply.send(merged);
        }
        Query::Metrics { reply } => {
            let counts = observer.read_counts().unwrap_or_default();
            let stats = observer.kernel_stats().unwrap_or_default();
            let mut checks: BTreeMap<(String, String, String), u64> = BTreeMap::new();
            for rec in recorder.records() {
                let Some(p) = recorder.snapshot(&rec.id, observer, &counts) else {
                    continue;
                };
                let container = rec
                    .info
                    .name
                    .clone()
                    .unwrap_or_else(|| rec.id.chars().take(12).collect());
                for u in p.capabilities.iter().chain(&p.runtime_setup) {
                    for (class, n) in &u.by_class {
                        *checks
                            .entry((
                                container.clone(),
                                u.name.to_string(),
                                class.name().to_owned(),
                            ))
                            .or_default() += n;
                    }
                }
            }
            let _ = reply.send(MetricsSnapshot {
                checks: checks
                    .into_iter()
                    .map(|((container, capability, class), count)| CheckSample {
                        container,
                        capability,
                        class,
                        count,
                    })
                    .collect(),
                ringbuf_lost: stats.ringbuf_lost,
                counts_full: stats.counts_full,
                recursion_misses: stats.recursion_misses.unwrap_or(0),
                cgroups_tracked: recorder.cgroups_tracked() as u64,
                containers_tracked: recorder.len() as u64,
                profiles_written: counters.profiles_written,
                evictions: counters.evictions,
            });
        }
    }
}

/// Where the state dir is when nothing says otherwise.
pub fn default_state_dir() -> PathBuf {
    DaemonConfig::default().state_dir
}
