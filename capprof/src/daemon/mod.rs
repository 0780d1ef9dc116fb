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
pub mod retention;
pub mod series;
pub mod shadow;
mod snapshot;
pub mod state;

use std::{
    cell::RefCell,
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use config::DaemonConfig;
use query::{ContainerSummary, Group, Health, Lookup, Query};
use shadow::Candidates;
use state::StateDir;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch as tokio_watch},
};

use crate::{
    cgroup,
    observer::{Backend, Count, LoadOptions, Observer, ObserverError},
    profile::Profile,
    recorder::{
        CountIndex, Finalized, Recorder, Session, SourceError, connect_source,
        watch_container_roots,
    },
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
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("metrics: {0}")]
    MetricsAddr(#[from] metrics::MetricsError),
    #[error("cannot bind metrics on {addr}: {source}")]
    MetricsBind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove {}: {source}", path.display())]
    Reset {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot handle signals: {0}")]
    Signal(#[source] std::io::Error),
    #[error(transparent)]
    Reader(#[from] crate::observer::reader::ReaderError),
    #[error(transparent)]
    Shadow(#[from] shadow::ShadowError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl DaemonError {
    pub fn is_prerequisite(&self) -> bool {
        match self {
            DaemonError::Observer(e) => e.is_prerequisite(),
            DaemonError::State(e) => e.is_bad_input(),
            DaemonError::Api(_)
            | DaemonError::Cgroup(_)
            | DaemonError::MetricsAddr(_)
            | DaemonError::MetricsBind { .. }
            | DaemonError::Reset { .. }
            | DaemonError::Shadow(_)
            | DaemonError::Source(_) => true,
            DaemonError::Privileges(_) | DaemonError::Signal(_) | DaemonError::Reader(_) => false,
        }
    }
}

/// Removes the daemon's pins (`capprof daemon --reset`): this build's, and
/// those another map ABI left (an older capprof's, which block an upgrade
/// across ABIs).
pub fn reset(config: &DaemonConfig) -> Result<bool, DaemonError> {
    use crate::observer::pin;
    // Never under a running daemon's feet.
    let _lock = pin::lock(&config.bpffs).map_err(ObserverError::from)?;
    let mut removed = false;
    for (_, dir) in pin::all_pin_dirs(&config.bpffs) {
        removed |= pin::reset(&dir).map_err(|source| DaemonError::Reset { path: dir, source })?;
    }
    Ok(removed)
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
    let mount = cgroup::cgroup2_mount()?;
    // The user's paths first, before anything is loaded or connected.
    api::check_path(&config.socket)?;
    let state = StateDir::open(&config.state_dir)?;
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
    let mut observer = Observer::load_with(LoadOptions {
        backend,
        pin_bpffs: Some(config.bpffs.clone()),
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
    let mut pins = crate::observer::pin::PinGuard {
        dir: (!observer.reused_pins()).then(|| crate::observer::pin::pin_dir(&config.bpffs)),
    };

    let parents = match &source {
        Some(source) => source.cgroup_parents(&mount),
        None => vec!["/docker", "/libpod_parent"],
    };
    let watched = watch_container_roots(&mut observer, &mount, &parents, &config.cgroup_roots)?;

    let mut recorder = Recorder::new(&mount, watched.clone(), &observer);
    let (restored, corrupt) = state.load_all();
    let on_disk: HashMap<String, Option<String>> = restored
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    for p in restored {
        recorder.restore(p);
    }
    if corrupt > 0 {
        eprintln!("capprof: {corrupt} corrupt state file(s) moved aside");
    }
    recorder.adopt_existing();
    // Loading parsed the kernel's BTF (aya twice) and /proc/kallsyms, on two
    // threads: ~20 MB that is free again by now but that glibc's arenas
    // keep unless asked. The daemon's RSS is what a node pays for it.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only hands free heap pages back to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }

    // Everything privileged is done: bind, then drop every capability. The
    // metrics port first: its failure then leaves no socket behind.
    let metrics_listener = match &config.metrics {
        Some(addr) => {
            let addr = metrics::parse_addr(addr)?;
            Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| DaemonError::MetricsBind { addr, source })?,
            )
        }
        None => None,
    };
    let listener = api::bind(&config.socket)?;
    let bound = api::SocketIdentity::of(&config.socket);
    let kept = match privileges::drop_all() {
        Ok(kept) => kept,
        Err(e) => {
            let _ = std::fs::remove_file(&config.socket);
            return Err(e.into());
        }
    };

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
            metrics::SeriesState::new(config.metrics_max_workloads),
            shutdown(shutdown_rx.clone()),
        ))
    });

    let fleet_stats = std::sync::Arc::new(crate::fleet::writer::Stats::default());
    let fleet_task = config.writer().map(|w| {
        eprintln!(
            "capprof: writing node {}'s parts of the cluster's CapabilityProfiles every {}",
            w.node,
            humantime::format_duration(w.interval)
        );
        let writer = crate::fleet::writer::Writer::new(w, fleet_stats.clone());
        tokio::spawn(writer.run(query_tx.clone(), shutdown(shutdown_rx.clone())))
    });

    let backend = observer.backend();
    let classification = observer.classification().to_string();
    let session = Session::start_with(observer, recorder, source, TICK).await?;
    pins.dir = None;

    // Before "ready": a SIGTERM sent as soon as it is said must stop the
    // daemon cleanly, not kill it with the default action.
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
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

    let mut flush = tokio::time::interval(Duration::from_secs(config.flush_interval_secs));
    let mut daemon = Aggregator {
        session,
        state,
        on_disk,
        max_containers: config.max_containers,
        counters: Counters::default(),
        written: HashMap::new(),
        flushed: HashMap::new(),
        summaries: RefCell::default(),
        health: Health {
            status: "ok".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            backend: backend.to_string(),
            classification,
            uptime_secs: 0,
            containers: 0,
            capabilities: kept,
        },
        started,
        shadow: candidates,
        shadow_logged: HashMap::new(),
        retention: retention::Retention {
            max_age: config.retain_for,
            max_count: config.retain_max,
        },
        sweeps: retention::Sweeps::default(),
        fleet: fleet_task.as_ref().map(|_| fleet_stats.clone()),
    };
    if !daemon.shadow.is_empty() {
        eprintln!(
            "capprof: shadow mode: {} candidate allowlist(s) from {}",
            daemon.shadow.len(),
            config
                .shadow
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for note in daemon.shadow.notes() {
            eprintln!("capprof: shadow mode: {note}");
        }
    }

    loop {
        tokio::select! {
            finalized = daemon.session.next() => daemon.on_finalized(finalized),
            Some(q) = query_rx.recv() => daemon.answer(q),
            _ = flush.tick() => daemon.flush_all(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Flush everything, without draining the kernel: the counts stay in the
    // pinned maps for the next run, and `base` on disk holds only drained
    // counts, so nothing is counted twice.
    if let Err(e) = daemon.session.stop().await {
        tracing::warn!("{e}");
    }
    daemon.flush_all();
    let _ = shutdown_tx.send(true);
    let _ = api_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = fleet_task {
        let _ = t.await;
    }
    if let Some(bound) = bound {
        bound.remove_if_still(&config.socket);
    }
    eprintln!(
        "capprof: daemon stopped; {} profile(s) in {}",
        daemon.session.recorder().len(),
        config.state_dir.display()
    );
    Ok(())
}

/// How often exited containers are looked for.
const TICK: Duration = Duration::from_millis(200);

/// The one task that owns the session (and so the observer) and every
/// profile: it finalizes, persists, evicts, and answers queries.
struct Aggregator {
    session: Session,
    state: StateDir,
    /// Every container the state directory holds (id -> name), so that a
    /// profile query finds evicted ones without reading every file: with
    /// 1,200 containers that read made each `capprof profile` take ~1 s.
    on_disk: HashMap<String, Option<String>>,
    max_containers: usize,
    counters: Counters,
    /// A fingerprint of what was last written per container, to skip
    /// unchanged ones.
    written: HashMap<String, String>,
    /// What each container's profile was built from at the last flush
    /// (`Recorder::digest`): an idle container is not rebuilt every flush.
    flushed: HashMap<String, u64>,
    /// Each container's `ps` line with the digest it was built at: `ps`
    /// rebuilds the profile only of containers that changed.
    summaries: RefCell<HashMap<String, (u64, Option<ContainerSummary>)>>,
    /// What `GET /health` says, less the live fields.
    health: Health,
    started: Instant,
    /// Candidate allowlists (`--shadow`), and the violations already
    /// logged, by container id and capability.
    shadow: Candidates,
    shadow_logged: HashMap<(String, crate::capability::Cap), u64>,
    /// How long and how many exited containers stay on disk.
    retention: retention::Retention,
    sweeps: retention::Sweeps,
    /// The fleet writer's counters, for the metrics (`--kube`).
    fleet: Option<std::sync::Arc<crate::fleet::writer::Stats>>,
}

impl Aggregator {
    fn on_finalized(&mut self, finalized: Vec<Finalized>) {
        for Finalized { id, profile } in finalized {
            if let Err(e) = profile {
                tracing::warn!("finalizing {id}: {e}");
            }
            self.persist(&id);
            self.sweeps.exited();
        }
        self.evict();
    }

    fn persist(&mut self, id: &str) {
        let counts = self.session.observer().read_counts().unwrap_or_default();
        self.persist_with(id, &counts);
    }

    /// Writes the container's state if it changed; whether the state on
    /// disk is now current.
    fn persist_with(&mut self, id: &str, counts: &[Count]) -> bool {
        let recorder = self.session.recorder();
        let current = recorder.snapshot(id, self.session.observer(), counts);
        let Some(p) = recorder.persisted(id, current) else {
            return false;
        };
        // Skip unchanged containers (the end time always moves; compare the rest).
        let fingerprint = serde_json::to_string(&(
            &p.base.as_ref().map(|b| &b.capabilities),
            p.current.as_ref().map(|c| &c.capabilities),
            &p.name,
            p.exited,
        ))
        .unwrap_or_default();
        if self.written.get(id) == Some(&fingerprint) {
            return true;
        }
        match self.state.write(&p) {
            Ok(()) => {
                self.on_disk.insert(p.id.clone(), p.name.clone());
                self.counters.profiles_written += 1;
                self.written.insert(id.to_owned(), fingerprint);
                true
            }
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
    }

    fn flush_all(&mut self) {
        let ids: Vec<String> = self
            .session
            .recorder()
            .records()
            .map(|r| r.id.clone())
            .collect();
        // Only a running container has counters left in the kernel (an
        // exited one's were drained): with none, the map walk is skipped.
        let live = self.session.recorder().records().any(|r| !r.exited);
        let index = CountIndex::new(if live {
            self.session.observer().read_counts().unwrap_or_default()
        } else {
            vec![]
        });
        for id in &ids {
            let counts = self.session.recorder().counts_of(id, &index);
            let digest = self.session.recorder().digest(id, &counts);
            if digest.is_some() && self.flushed.get(id) == digest.as_ref() {
                continue;
            }
            // A failed write is tried again at the next flush.
            if self.persist_with(id, &counts)
                && let Some(digest) = digest
            {
                self.flushed.insert(id.clone(), digest);
            }
        }
        self.log_shadow(&ids, &index);
        self.keep_bounded();
    }

    /// Logs each new violation of a candidate allowlist, and each time a
    /// known one was seen again.
    fn log_shadow(&mut self, ids: &[String], index: &CountIndex) {
        if self.shadow.is_empty() {
            return;
        }
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        for id in ids {
            let Some(rec) = recorder.get(id) else {
                continue;
            };
            let profile = recorder.snapshot(id, observer, &recorder.counts_of(id, index));
            let Some(status) = self.shadow.status(
                rec.info.name.as_deref(),
                rec.info.image.as_deref(),
                profile.as_ref(),
            ) else {
                continue;
            };
            for v in status.violations {
                let key = (id.clone(), v.capability);
                let logged = self.shadow_logged.get(&key).copied().unwrap_or(0);
                if v.checks <= logged {
                    continue;
                }
                eprintln!(
                    "capprof: shadow: container {} ({}): enforcing {} would have refused {} {} more time(s) ({} in all, first at {}, last at {})",
                    rec.file_stem(),
                    rec.info.image.as_deref().unwrap_or("-"),
                    status.candidate,
                    v.capability,
                    v.checks - logged,
                    v.checks,
                    v.first_seen,
                    v.last_seen,
                );
                self.shadow_logged.insert(key, v.checks);
            }
        }
    }

    /// Keeps memory bounded: exited containers beyond the maximum are
    /// dropped from memory (they are on disk, and the API reads them back
    /// from there).
    fn evict(&mut self) {
        let (observer, recorder) = self.session.parts_mut();
        if recorder.len() <= self.max_containers {
            return;
        }
        let mut exited: Vec<String> = recorder
            .records()
            .filter(|r| r.exited)
            .map(|r| r.id.clone())
            .collect();
        exited.sort();
        let excess = recorder.len() - self.max_containers;
        for id in exited.into_iter().take(excess) {
            let ids = recorder.evict(&id);
            let _ = observer.unwatch(0, &ids);
            self.written.remove(&id);
            self.flushed.remove(&id);
            self.counters.evictions += 1;
        }
    }

    fn summary(&self, id: &str, profile: Option<&Profile>) -> Option<ContainerSummary> {
        let rec = self.session.recorder().get(id)?;
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
            shadow: self.shadow.status(
                rec.info.name.as_deref(),
                rec.info.image.as_deref(),
                profile,
            ),
        })
    }

    /// The current profile of every pod's container (sandboxes left out),
    /// in memory or evicted to disk.
    fn pod_profiles(&self) -> Vec<Profile> {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        let index = CountIndex::new(observer.read_counts().unwrap_or_default());
        let mut profiles: Vec<Profile> = recorder
            .records()
            .filter(|r| r.info.k8s.is_some() && !r.info.sandbox)
            .filter_map(|r| recorder.snapshot(&r.id, observer, &recorder.counts_of(&r.id, &index)))
            .collect();
        for id in self.state.ids() {
            if recorder.get(&id).is_some() {
                continue;
            }
            if let Some(p) = self
                .state
                .read(&id)
                .filter(|p| p.k8s.is_some() && !p.sandbox)
            {
                profiles.extend(p.current);
            }
        }
        profiles
    }

    fn answer(&self, q: Query) {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        match q {
            Query::Health { reply } => {
                let _ = reply.send(Health {
                    uptime_secs: self.started.elapsed().as_secs(),
                    containers: recorder.len(),
                    ..self.health.clone()
                });
            }
            Query::Shadow { key, reply } => {
                let counts = observer.read_counts().unwrap_or_default();
                // A name several containers had is not guessed at.
                let found = recorder.find(&key);
                let status = (found.len() == 1).then(|| found[0]).map(|rec| {
                    let profile = recorder.snapshot(&rec.id, observer, &counts);
                    self.shadow.status(
                        rec.info.name.as_deref(),
                        rec.info.image.as_deref(),
                        profile.as_ref(),
                    )
                });
                let _ = reply.send(status);
            }
            Query::List { reply } => {
                let index = CountIndex::new(observer.read_counts().unwrap_or_default());
                let mut cache = self.summaries.borrow_mut();
                cache.retain(|id, _| recorder.get(id).is_some());
                let mut list: Vec<ContainerSummary> = recorder
                    .records()
                    .filter(|r| !r.cgroup_ids.is_empty())
                    .filter_map(|r| {
                        let counts = recorder.counts_of(&r.id, &index);
                        let digest = recorder.digest(&r.id, &counts)?;
                        if let Some((seen, line)) = cache.get(&r.id)
                            && *seen == digest
                        {
                            return line.clone();
                        }
                        let profile = recorder.snapshot(&r.id, observer, &counts);
                        let line = self.summary(&r.id, profile.as_ref());
                        cache.insert(r.id.clone(), (digest, line.clone()));
                        line
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
                let mut ids: Vec<String> =
                    recorder.find(&key).iter().map(|r| r.id.clone()).collect();
                // Evicted ones are on disk only.
                for (id, name) in &self.on_disk {
                    let by_name = name.as_deref() == Some(key.as_str());
                    if (by_name || (key.len() >= 4 && id.starts_with(&key))) && !ids.contains(id) {
                        ids.push(id.clone());
                    }
                }
                let answer = match ids.as_slice() {
                    [] => Err(Lookup::NotFound),
                    [id] => match recorder.get(id) {
                        Some(_) => recorder.snapshot(id, observer, &counts),
                        None => self.state.read(id).and_then(|p| p.current),
                    }
                    .ok_or(Lookup::NotFound),
                    _ => {
                        ids.sort();
                        Err(Lookup::Ambiguous(ids))
                    }
                };
                let _ = reply.send(answer);
            }
            Query::Profile {
                group: Group::Image,
                key,
                reply,
            } => {
                let index = CountIndex::new(observer.read_counts().unwrap_or_default());
                let mut merged: Option<Profile> = None;
                for rec in recorder
                    .records()
                    .filter(|r| r.info.image.as_deref() == Some(key.as_str()))
                {
                    let counts = recorder.counts_of(&rec.id, &index);
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
                let _ = reply.send(merged.ok_or(Lookup::NotFound));
            }
            Query::Workload { key, reply } => {
                let profiles = self.pod_profiles();
                let _ = reply.send(crate::cri::workload::workload_profile(&key, &profiles));
            }
            Query::Workloads { reply } => {
                let keys = crate::cri::workload::workloads(&self.pod_profiles());
                let _ = reply.send(keys.iter().map(ToString::to_string).collect());
            }
            Query::Metrics { reply } => {
                let _ = reply.send(self.metrics_snapshot());
            }
        }
    }
}

/// Where the state dir is when nothing says otherwise.
pub fn default_state_dir() -> PathBuf {
    DaemonConfig::default().state_dir
}
