//! `capprof daemon`: always-on per-container profiling.
//!
//! One task (the aggregator, below) owns the `Observer` and every profile;
//! the ring buffer reader, the engine's event stream, the API and the
//! metrics endpoint talk to it through bounded channels. `ps` and
//! `profile` read the [`view`] it publishes instead, on the API's own
//! thread, so that they never wait behind a flush. Maps and links are
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
pub mod view;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use config::DaemonConfig;
use query::{ContainerSummary, Health, Lookup, Query};
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
    let on_disk: HashMap<String, Filed> = restored.iter().map(Filed::of).collect();
    for p in restored {
        recorder.restore(p);
    }
    if corrupt > 0 {
        eprintln!("capprof: {corrupt} corrupt state file(s) moved aside");
    }
    let archive = state.clone();
    recorder.set_archive(Box::new(move |id| archive.read(id)));
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
    let (view_tx, view_rx) = tokio_watch::channel(Arc::new(view::View::default()));
    // On a thread of its own (made after the capabilities were dropped, so
    // it holds none): `ps` and `profile` answer while this one flushes.
    let api_thread = api::serve_on_thread(
        listener,
        query_tx.clone(),
        view_rx,
        shutdown(shutdown_rx.clone()),
    )
    .map_err(api::ApiError::Serve)?;
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
        counters: Counters::default(),
        written: HashMap::new(),
        flushed: HashMap::new(),
        lines: view::Lines::new(config.max_containers),
        view: view_tx,
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

    daemon.publish(&CountIndex::new(
        daemon.session.observer().read_counts().unwrap_or_default(),
    ));
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
    let _ = tokio::task::spawn_blocking(move || api_thread.join()).await;
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
    state: Arc<StateDir>,
    /// Every container the state directory holds, so that a profile query
    /// finds evicted ones without reading every file: with 1,200
    /// containers that read made each `capprof profile` take ~1 s.
    on_disk: HashMap<String, Filed>,
    counters: Counters,
    /// A hash of what was last written per container, to skip unchanged
    /// ones (a hash: the JSON it is made of weighed kilobytes each).
    written: HashMap<String, u64>,
    /// What each container's profile was built from at the last flush
    /// (`Recorder::digest`): an idle container is not rebuilt every flush.
    flushed: HashMap<String, u64>,
    /// Each container's published `ps` line and profile, with the digest
    /// they were built at: only containers that changed are rebuilt.
    lines: view::Lines,
    /// Where the view `ps` and `profile` read is published.
    view: view::ViewTx,
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
        // Most turns of the session take in a record or an event and
        // finalize nothing: nothing to write or publish then.
        if finalized.is_empty() {
            return;
        }
        let index = CountIndex::new(self.session.observer().read_counts().unwrap_or_default());
        for Finalized { id, profile } in finalized {
            if let Err(e) = profile {
                tracing::warn!("finalizing {id}: {e}");
            }
            self.flush_one(&id, &index);
            self.sweeps.exited();
        }
        self.evict(&index);
        self.publish(&index);
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
        let fingerprint = fingerprint(
            &serde_json::to_string(&(
                &p.base.as_ref().map(|b| &b.capabilities),
                p.current.as_ref().map(|c| &c.capabilities),
                &p.name,
                p.exited,
            ))
            .unwrap_or_default(),
        );
        if self.written.get(id) == Some(&fingerprint) {
            return true;
        }
        match self.state.write(&p) {
            Ok(()) => {
                let (filed_id, filed) = Filed::of(&p);
                self.on_disk.insert(filed_id, filed);
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
            self.flush_one(id, &index);
        }
        self.log_shadow(&ids, &index);
        self.keep_bounded();
        self.evict(&index);
        self.publish(&index);
    }

    /// Writes container `id`'s state unless it is unchanged since the last
    /// write. A failed write is tried again at the next flush.
    fn flush_one(&mut self, id: &str, index: &CountIndex) {
        let counts = self.session.recorder().counts_of(id, index);
        let digest = self.session.recorder().digest(id, &counts);
        if digest.is_some() && self.flushed.get(id) == digest.as_ref() {
            return;
        }
        if self.persist_with(id, &counts)
            && let Some(digest) = digest
        {
            self.flushed.insert(id.to_owned(), digest);
        }
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

    /// Keeps memory bounded by the containers that run, not by those a
    /// node has seen: an exited container whose state on disk is current
    /// leaves memory at once, keeping only its `ps` line (at most
    /// `max_containers` of those). The API reads its profile back from
    /// disk, and the recorder takes it back from there if it starts again.
    fn evict(&mut self, index: &CountIndex) {
        let recorder = self.session.recorder();
        let done: Vec<String> = recorder
            .records()
            .filter(|r| r.exited)
            .filter(|r| {
                let counts = recorder.counts_of(&r.id, index);
                self.written.contains_key(&r.id)
                    && recorder.digest(&r.id, &counts) == self.flushed.get(&r.id).copied()
            })
            .map(|r| r.id.clone())
            .collect();
        if done.is_empty() {
            return;
        }
        // Their last violations are logged before they go.
        self.log_shadow(&done, index);
        for id in &done {
            self.line_evicted(id, index);
            let (observer, recorder) = self.session.parts_mut();
            let cgroups = recorder.evict(id);
            let _ = observer.unwatch(0, &cgroups);
            self.written.remove(id);
            self.flushed.remove(id);
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

    /// One container's profile, by name or id prefix, in memory or evicted
    /// to disk: what the view could not answer.
    fn container_profile(&self, key: &str) -> Result<Profile, Lookup> {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        let mut ids: Vec<String> = recorder.find(key).iter().map(|r| r.id.clone()).collect();
        let name = key.trim_start_matches('/');
        for (id, filed) in &self.on_disk {
            let by_name = filed.name.as_deref() == Some(name);
            if (by_name || (key.len() >= 4 && id.starts_with(key))) && !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        match ids.as_slice() {
            [] => Err(Lookup::NotFound),
            [id] => match recorder.get(id) {
                Some(_) => {
                    let index = CountIndex::new(observer.read_counts().unwrap_or_default());
                    recorder.snapshot(id, observer, &recorder.counts_of(id, &index))
                }
                None => self.state.read(id).and_then(|p| p.current),
            }
            .ok_or(Lookup::NotFound),
            _ => {
                ids.sort();
                Err(Lookup::Ambiguous(ids))
            }
        }
    }

    /// The profile merged over every container of `image`, in memory or
    /// evicted to disk.
    fn image_profile(&self, image: &str) -> Option<Profile> {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        let index = CountIndex::new(observer.read_counts().unwrap_or_default());
        let in_memory = recorder
            .records()
            .filter(|r| r.info.image.as_deref() == Some(image))
            .filter_map(|r| recorder.snapshot(&r.id, observer, &recorder.counts_of(&r.id, &index)));
        let on_disk = self
            .on_disk
            .iter()
            .filter(|(id, f)| f.image.as_deref() == Some(image) && recorder.get(id).is_none())
            .filter_map(|(id, _)| self.state.read(id).and_then(|p| p.current));
        let mut merged: Option<Profile> = None;
        for p in in_memory.chain(on_disk) {
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
        merged
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
            Query::Container { key, reply } => {
                let _ = reply.send(self.container_profile(&key));
            }
            Query::Image { image, reply } => {
                let _ = reply.send(self.image_profile(&image).ok_or(Lookup::NotFound));
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

/// What the state directory holds of a container, kept in memory to find
/// it by name or image without reading every file.
#[derive(Debug, Clone)]
struct Filed {
    name: Option<String>,
    image: Option<String>,
}

impl Filed {
    fn of(p: &crate::recorder::PersistedContainer) -> (String, Self) {
        (
            p.id.clone(),
            Self {
                name: p.name.clone(),
                image: p.image.clone(),
            },
        )
    }
}

/// A hash of `value`, with fixed keys: two flushes' hashes compare.
fn fingerprint(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{DefaultHasher, Hasher as _};
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Where the state dir is when nothing says otherwise.
pub fn default_state_dir() -> PathBuf {
    DaemonConfig::default().state_dir
}
