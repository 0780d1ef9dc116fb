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
mod start;
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
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    observer::{Backend, Count, ObserverError},
    profile::Profile,
    recorder::{CountIndex, Finalized, Session, SourceError},
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
    let inputs = start::open_inputs(&config).await?;
    let mut loaded = start::load(&config, backend, &inputs)?;
    let bound = start::bind_and_drop(&config).await?;
    let mut servers = start::spawn_servers(&config, bound.listener, bound.metrics)?;
    let backend = loaded.observer.backend();
    let classification = loaded.observer.classification().to_string();
    let session =
        Session::start_with(loaded.observer, loaded.recorder, inputs.source, TICK).await?;
    loaded.pins.dir = None;

    // Before "ready": a SIGTERM sent as soon as it is said must stop the
    // daemon cleanly, not kill it with the default action.
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    start::announce_ready(&config, backend, &loaded.watched, &bound.kept);
    start::announce_shadow(&config, &inputs.candidates);

    let health = Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        backend: backend.to_string(),
        classification,
        uptime_secs: 0,
        containers: 0,
        capabilities: bound.kept,
    };
    let mut daemon = Aggregator {
        session,
        state: inputs.state,
        on_disk: loaded.on_disk,
        counters: Counters::default(),
        written: HashMap::new(),
        flushed: HashMap::new(),
        lines: view::Lines::new(config.max_containers),
        view: servers.view.clone(),
        health,
        started,
        shadow: inputs.candidates,
        shadow_logged: HashMap::new(),
        retention: retention::Retention {
            max_age: config.retain_for,
            max_count: config.retain_max,
        },
        sweeps: retention::Sweeps::default(),
        fleet: servers.fleet.as_ref().map(|(stats, _)| stats.clone()),
    };
    let mut flush = tokio::time::interval(Duration::from_secs(config.flush_interval_secs));
    daemon.publish(&CountIndex::new(
        daemon.session.observer().read_counts().unwrap_or_default(),
    ));
    loop {
        tokio::select! {
            finalized = daemon.session.next() => daemon.on_finalized(finalized),
            Some(q) = servers.queries.recv() => daemon.answer(q),
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
    servers.stop().await;
    if let Some(bound) = bound.identity {
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
