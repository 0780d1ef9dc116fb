//! How the daemon comes up and goes down, step by step: what [`super::run`]
//! lists. The order matters and is the reason for this file: the user's
//! paths are checked before anything is loaded, everything privileged
//! (loading, pinning, reading kallsyms, binding) happens before the
//! capabilities are dropped, and the API's thread is made after that drop,
//! so it holds none.

use std::{collections::HashMap, path::PathBuf, sync::Arc, thread::JoinHandle};

use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinHandle as TaskHandle,
};

use super::{
    DaemonError, Filed, api, config::DaemonConfig, metrics, privileges, query::Query,
    shadow::Candidates, state::StateDir, view,
};
use crate::{
    cgroup,
    fleet::writer::{Stats as FleetStats, Writer},
    observer::{
        Backend, LoadOptions, Observer,
        pin::{PinGuard, pin_dir},
    },
    recorder::{Recorder, Source, SourceError, connect_source, watch_container_roots},
};

/// What the daemon reads before it loads anything: a bad path or a bad
/// candidate file fails here, with nothing attached yet.
pub(super) struct Inputs {
    pub mount: PathBuf,
    pub state: Arc<StateDir>,
    pub candidates: Candidates,
    pub source: Option<Source>,
}

pub(super) async fn open_inputs(config: &DaemonConfig) -> Result<Inputs, DaemonError> {
    let mount = cgroup::cgroup2_mount()?;
    api::check_path(&config.socket)?;
    let state = Arc::new(StateDir::open(&config.state_dir)?);
    let candidates = Candidates::load(&config.shadow)?;
    let source = match connect_source(config.engine.as_deref(), config.cri.as_deref()).await {
        Ok(source) => Some(source),
        // A CRI socket named on purpose must answer.
        Err(e @ SourceError::Cri(_)) => return Err(e.into()),
        Err(e) => {
            tracing::warn!("{e}; containers are profiled by cgroup, unnamed");
            None
        }
    };
    Ok(Inputs {
        mount,
        state,
        candidates,
        source,
    })
}

/// The observer, loaded and pinned, watching the container roots, and the
/// recorder with every container the state directory holds.
pub(super) struct Loaded {
    pub observer: Observer,
    pub recorder: Recorder,
    pub watched: Vec<String>,
    pub on_disk: HashMap<String, Filed>,
    /// Removes the pins this run made if the daemon fails before it is up.
    pub pins: PinGuard,
}

pub(super) fn load(
    config: &DaemonConfig,
    backend: Option<Backend>,
    inputs: &Inputs,
) -> Result<Loaded, DaemonError> {
    let mut observer = Observer::load_with(LoadOptions {
        backend,
        pin_bpffs: Some(config.bpffs.clone()),
        ..LoadOptions::default()
    })?;
    // Call sites outside the functions calibration knows are named from
    // /proc/kallsyms, which shows addresses only while privileged (with
    // kptr_restrict set): read it now, before the daemon drops them.
    let _ = observer.kallsyms();
    if observer.reused_pins() {
        eprintln!(
            "capprof: reusing pinned maps and programs: checks made while the daemon was down are kept"
        );
    }
    // Until the daemon is up, a failure removes the pins this run made:
    // nothing is left attached behind a daemon that never started.
    let pins = PinGuard {
        dir: (!observer.reused_pins()).then(|| pin_dir(&config.bpffs)),
    };
    let parents = match &inputs.source {
        Some(source) => source.cgroup_parents(&inputs.mount),
        None => vec!["/docker", "/libpod_parent"],
    };
    let watched =
        watch_container_roots(&mut observer, &inputs.mount, &parents, &config.cgroup_roots)?;
    let (recorder, on_disk) = restore(&inputs.mount, &watched, &observer, &inputs.state);
    // Loading parsed the kernel's BTF (aya twice) and /proc/kallsyms, on two
    // threads: ~20 MB that is free again by now but that glibc's arenas
    // keep unless asked. The daemon's RSS is what a node pays for it.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    Ok(Loaded {
        observer,
        recorder,
        watched,
        on_disk,
        pins,
    })
}

/// A recorder holding every container of the state directory, taking
/// evicted ones back from it when they start again, and the containers
/// already running.
fn restore(
    mount: &std::path::Path,
    watched: &[String],
    observer: &Observer,
    state: &Arc<StateDir>,
) -> (Recorder, HashMap<String, Filed>) {
    let mut recorder = Recorder::new(mount, watched.to_vec(), observer);
    let (restored, corrupt) = state.load_all();
    let on_disk = restored.iter().map(Filed::of).collect();
    for p in restored {
        recorder.restore(p);
    }
    if corrupt > 0 {
        eprintln!("capprof: {corrupt} corrupt state file(s) moved aside");
    }
    let archive = state.clone();
    recorder.set_archive(Box::new(move |id| archive.read(id)));
    recorder.adopt_existing();
    (recorder, on_disk)
}

/// The sockets, bound while privileged, and the capabilities kept after
/// the drop.
pub(super) struct Bound {
    pub listener: tokio::net::UnixListener,
    pub metrics: Option<TcpListener>,
    /// The socket as bound: removed at exit only if it is still ours.
    pub identity: Option<api::SocketIdentity>,
    pub kept: Vec<String>,
}

/// Binds, then drops every capability. The metrics port first: its
/// failure then leaves no socket behind.
pub(super) async fn bind_and_drop(config: &DaemonConfig) -> Result<Bound, DaemonError> {
    let metrics = match &config.metrics {
        Some(addr) => {
            let addr = metrics::parse_addr(addr)?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::MetricsBind { addr, source })?,
            )
        }
        None => None,
    };
    let listener = api::bind(&config.socket)?;
    let identity = api::SocketIdentity::of(&config.socket);
    let kept = match privileges::drop_all() {
        Ok(kept) => kept,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
    };
    Ok(Bound {
        listener,
        metrics,
        identity,
        kept,
    })
}

/// What talks to the aggregator: the API on its own thread, the metrics
/// endpoint and the fleet writer as tasks, all stopped by `shutdown`.
pub(super) struct Servers {
    pub queries: mpsc::Receiver<Query>,
    pub view: view::ViewTx,
    shutdown: watch::Sender<bool>,
    api: JoinHandle<Result<(), api::ApiError>>,
    metrics: Option<TaskHandle<Result<(), metrics::MetricsError>>>,
    pub fleet: Option<(Arc<FleetStats>, TaskHandle<()>)>,
}

pub(super) fn spawn_servers(
    config: &DaemonConfig,
    listener: tokio::net::UnixListener,
    metrics_listener: Option<TcpListener>,
) -> Result<Servers, DaemonError> {
    let (shutdown, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let (query_tx, queries) = mpsc::channel::<Query>(64);
    let (view, view_rx) = watch::channel(Arc::new(view::View::default()));
    // On a thread of its own (made after the capabilities were dropped, so
    // it holds none): `ps` and `profile` answer while the aggregator
    // flushes.
    let api = api::serve_on_thread(
        listener,
        query_tx.clone(),
        view_rx,
        stopped(stop_rx.clone()),
    )
    .map_err(api::ApiError::Serve)?;
    let metrics = metrics_listener.map(|l| {
        tokio::spawn(metrics::serve_listener(
            l,
            query_tx.clone(),
            metrics::SeriesState::new(config.metrics_max_workloads),
            stopped(stop_rx.clone()),
        ))
    });
    let fleet = config.writer().map(|w| {
        eprintln!(
            "capprof: writing node {}'s parts of the cluster's CapabilityProfiles every {}",
            w.node,
            humantime::format_duration(w.interval)
        );
        let stats = Arc::new(FleetStats::default());
        let writer = Writer::new(w, stats.clone());
        let task = tokio::spawn(writer.run(query_tx.clone(), stopped(stop_rx.clone())));
        (stats, task)
    });
    Ok(Servers {
        queries,
        view,
        shutdown,
        api,
        metrics,
        fleet,
    })
}

impl Servers {
    /// Tells every server to stop, and waits for each.
    pub(super) async fn stop(self) {
        let _ = self.shutdown.send(true);
        let api = self.api;
        let _ = tokio::task::spawn_blocking(move || api.join()).await;
        if let Some(t) = self.metrics {
            let _ = t.await;
        }
        if let Some((_, t)) = self.fleet {
            let _ = t.await;
        }
    }
}

/// The line that says the daemon is up.
pub(super) fn announce_ready(
    config: &DaemonConfig,
    backend: Backend,
    watched: &[String],
    kept: &[String],
) {
    eprintln!(
        "capprof: daemon ready: {} backend, watching {}, api {}, {} capabilities kept{}",
        backend,
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
}

/// What `--shadow` compares against, said once at start.
pub(super) fn announce_shadow(config: &DaemonConfig, candidates: &Candidates) {
    if candidates.is_empty() {
        return;
    }
    eprintln!(
        "capprof: shadow mode: {} candidate allowlist(s) from {}",
        candidates.len(),
        config
            .shadow
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for note in candidates.notes() {
        eprintln!("capprof: shadow mode: {note}");
    }
}
