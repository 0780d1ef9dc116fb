//! Turning the kernel's records and the engine's events into one profile
//! per container. `Recorder` keeps what is known of each container;
//! `Session` runs the loop that feeds it. Shared by `capprof record` and
//! the daemon.

mod session;
mod source;

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

pub use session::{Finalized, Session};
pub use source::{Source, SourceError, connect as connect_source};

use crate::{
    attribution::attribute,
    conditional::{Conditional, Kept},
    engine::{ContainerEvent, ContainerInfo, safe_name, short_id},
    observer::{
        Count, Observer, ObserverError, WatchMode,
        events::{RingEvent, cstr},
        reader::Received,
    },
    profile::{self, Class, Observation, Partial, Profile, Subject, SubjectKind, rfc3339},
};

/// A cgroup seen in the kernel.
#[derive(Debug, Clone)]
struct CgroupMeta {
    path: String,
}

/// Everything known about one container so far.
#[derive(Debug, Default, Clone)]
pub struct ContainerRecord {
    pub id: String,
    pub runtime: String,
    pub cgroup: Option<String>,
    pub info: ContainerInfo,
    pub cgroup_ids: BTreeSet<u64>,
    received: Vec<Received>,
    started: Option<SystemTime>,
    died: Option<Instant>,
    /// Whether the container has exited (and its counters were drained).
    pub exited: bool,
    /// Set when the container was already running when recording began:
    /// its start was not seen.
    partial: Option<Partial>,
    /// Taken back from the daemon's state after a restart: whether its
    /// start was seen is known from there (`partial`), not from whether it
    /// runs now.
    restored: bool,
    /// What the syscall hooks saw before a restart, from the last profile
    /// on disk: unlike checks, their records are in no kernel counter, so
    /// a restart would otherwise lose them.
    carried: (Vec<Conditional>, Vec<Kept>),
    /// What earlier finalizations produced (a restarted container adds up):
    /// counts no longer in the kernel.
    profile: Option<Profile>,
    /// Bumped whenever the engine tells something about it (an event, an
    /// inspect reply): part of its digest, since the subject changes.
    revision: u64,
}

/// The kernel's counters by cgroup, built once per read.
#[derive(Debug, Default)]
pub struct CountIndex(HashMap<u64, Vec<Count>>);

impl CountIndex {
    pub fn new(counts: Vec<Count>) -> Self {
        let mut index: HashMap<u64, Vec<Count>> = HashMap::new();
        for c in counts {
            index.entry(c.cgroup_id).or_default().push(c);
        }
        Self(index)
    }
}

/// What the daemon keeps on disk for one container: enough to go on after
/// a restart without counting anything twice (`base` holds only counts
/// already drained from the kernel) and, in `current`, the whole profile as
/// of the last write, for people and tools.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PersistedContainer {
    pub schema: String,
    pub id: String,
    pub runtime: String,
    pub cgroup: Option<String>,
    pub cgroup_ids: Vec<u64>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub capabilities: Option<Vec<crate::capability::Cap>>,
    /// Its pod, when a CRI runtime named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<crate::profile::K8sRef>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
    pub exited: bool,
    /// When its observation began (RFC 3339): the first check of a
    /// container whose start was seen, else when recording began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Set when its start was not seen; a restart keeps it, and keeps a
    /// container whose start was seen complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    pub base: Option<Profile>,
    pub current: Option<Profile>,
}

pub const STATE_SCHEMA: &str = "capprof.state/v1";

impl ContainerRecord {
    /// The file name its profile is written under.
    pub fn file_stem(&self) -> String {
        self.info.name.clone().unwrap_or_else(|| short_id(&self.id))
    }

    pub fn matches(&self, wanted: &str) -> bool {
        let wanted = wanted.trim_start_matches('/');
        self.info.name.as_deref() == Some(wanted)
            || (wanted.len() >= 4 && self.id.starts_with(wanted))
    }
}

pub struct Recorder {
    mount: PathBuf,
    /// Watched roots, relative to the mount (`/docker`).
    roots: Vec<String>,
    cgroups: HashMap<u64, CgroupMeta>,
    containers: HashMap<String, ContainerRecord>,
    /// Engine names by id, learned from events (they outlive `--rm`).
    names: HashMap<String, ContainerEvent>,
    backend: String,
    classification: String,
    /// Whether profiles keep environment values (`record --keep-env`).
    keep_env: bool,
    /// Containers that died and wait to be finalized: while there are
    /// none, nothing needs looking at on a timer.
    dying: BTreeSet<String>,
    /// When this recording began: where a container that was already
    /// running is observed from.
    began: SystemTime,
    /// Where an evicted container is taken back from when it shows up
    /// again (the daemon's state directory): a restarted container's
    /// profile adds up with its earlier runs.
    archive: Option<Archive>,
}

/// Reads an evicted container's state back, by id.
pub type Archive = Box<dyn Fn(&str) -> Option<PersistedContainer> + Send + Sync>;

impl Recorder {
    /// The directory of `cgroup`, a path relative to the cgroup2 mount.
    pub fn cgroup_dir(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    pub fn new(mount: &Path, roots: Vec<String>, observer: &Observer) -> Self {
        Self::labelled(
            mount,
            roots,
            observer.backend().to_string(),
            observer.classification().to_string(),
        )
    }

    fn labelled(mount: &Path, roots: Vec<String>, backend: String, classification: String) -> Self {
        Self {
            mount: mount.to_owned(),
            roots,
            cgroups: HashMap::new(),
            containers: HashMap::new(),
            names: HashMap::new(),
            backend,
            classification,
            keep_env: false,
            dying: BTreeSet::new(),
            began: SystemTime::now(),
            archive: None,
        }
    }

    /// Takes evicted containers back from `archive` when they show up again.
    pub fn set_archive(&mut self, archive: Archive) {
        self.archive = Some(archive);
    }

    /// Keeps environment values in `subject.run` (they can hold secrets,
    /// so by default only the names are written).
    pub fn keep_env(&mut self, keep: bool) {
        self.keep_env = keep;
    }

    /// The full cgroup path of a cgroup the kernel named: under the watched
    /// root whose directory is its parent, or found on disk.
    fn cgroup_path(&self, name: &str, parent: &str) -> String {
        for root in &self.roots {
            if root.rsplit('/').next() == Some(parent) {
                return format!("{root}/{name}");
            }
        }
        for root in &self.roots {
            if let Some(found) = find_dir(&self.mount.join(root.trim_start_matches('/')), name, 4)
                && let Ok(rel) = found.strip_prefix(&self.mount)
            {
                return format!("/{}", rel.display());
            }
        }
        format!("/{parent}/{name}")
    }

    /// Takes in the container cgroups that already exist under the watched
    /// roots: after a restart, the kernel will not announce them again.
    pub fn adopt_existing(&mut self) {
        let mut found = vec![];
        for root in &self.roots {
            let dir = self.mount.join(root.trim_start_matches('/'));
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let path = format!("{root}/{name}");
                if let (Some(attr), Ok(id)) =
                    (attribute(&path), crate::cgroup::cgroup_id(&entry.path()))
                {
                    found.push((id, path, attr.id, attr.runtime.to_string()));
                }
            }
        }
        for (cgroup_id, path, id, runtime) in found {
            let rec = self.container(&id);
            rec.runtime = runtime;
            rec.cgroup_ids.insert(cgroup_id);
            rec.cgroup.get_or_insert_with(|| path.clone());
            rec.started.get_or_insert_with(SystemTime::now);
            self.cgroups.insert(cgroup_id, CgroupMeta { path });
        }
    }

    pub fn on_record(&mut self, received: Received) {
        match received.record {
            RingEvent::Cgroup(c) => {
                let path = self.cgroup_path(&cstr(&c.name), &cstr(&c.parent));
                let Some(attr) = attribute(&path) else {
                    tracing::debug!("cgroup {path} is not a container");
                    self.cgroups.insert(c.cgroup_id, CgroupMeta { path });
                    return;
                };
                let rec = self.container(&attr.id);
                rec.runtime = attr.runtime.to_string();
                rec.cgroup_ids.insert(c.cgroup_id);
                rec.cgroup.get_or_insert_with(|| path.clone());
                rec.started.get_or_insert_with(SystemTime::now);
                self.cgroups.insert(c.cgroup_id, CgroupMeta { path });
            }
            RingEvent::Evidence(_)
            | RingEvent::Conditional(_)
            | RingEvent::Capset(_)
            | RingEvent::CapsetExec(_) => {
                let cgroup_id = received.record.profiled_cgroup().unwrap_or_default();
                if let Some(id) = self.container_of(cgroup_id) {
                    self.container(&id).received.push(received);
                }
            }
            // A refused capset() keeps nothing: only the proof reads it.
            RingEvent::Exec(_) | RingEvent::CapsetRefused(_) => {}
        }
    }

    fn container_of(&self, cgroup_id: u64) -> Option<String> {
        let meta = self.cgroups.get(&cgroup_id)?;
        attribute(&meta.path).map(|a| a.id)
    }

    fn container(&mut self, id: &str) -> &mut ContainerRecord {
        if !self.containers.contains_key(id)
            && let Some(archive) = self.archive.take()
        {
            // `restore` comes back here: without the archive, it creates.
            if let Some(p) = archive(id) {
                self.restore(p);
            }
            self.archive = Some(archive);
        }
        let names = &self.names;
        self.containers.entry(id.to_owned()).or_insert_with(|| {
            let mut rec = ContainerRecord {
                id: id.to_owned(),
                ..Default::default()
            };
            rec.info.id = id.to_owned();
            if let Some(ev) = names.get(id) {
                rec.info.name = ev.name.clone();
                rec.info.image = ev.image.clone();
            }
            rec
        })
    }

    /// A lifecycle event from the engine. Returns true when the container
    /// died and should be finalized once its last records are in.
    pub fn on_engine_event(&mut self, ev: ContainerEvent) {
        let died = matches!(ev.action.as_str(), "die" | "died");
        if self.names.len() > 4096 {
            self.names.clear();
        }
        self.names.insert(ev.id.clone(), ev.clone());
        let rec = self.container(&ev.id);
        if ev.action == "start" {
            // A restarted container is running again.
            rec.exited = false;
        }
        rec.revision += 1;
        if rec.info.name.is_none() {
            rec.info.name = ev.name.clone();
        }
        if rec.info.image.is_none() {
            rec.info.image = ev.image.clone();
        }
        if died {
            rec.died = Some(Instant::now());
            self.dying.insert(ev.id);
        }
    }

    /// A container that was running before the recording began: its
    /// profile will say that it is partial, and that it is observed from
    /// when the recording began (not from its first check).
    pub fn on_preexisting(&mut self, info: ContainerInfo) {
        let started_at = info.started_at;
        let id = info.id.clone();
        let began = self.began;
        self.on_inspect(info);
        let rec = self.container(&id);
        // A container restored from the daemon's state keeps what the
        // earlier run knew: seen from its start, or not.
        if rec.restored {
            return;
        }
        rec.started = Some(rec.started.map_or(began, |s| s.min(began)));
        rec.partial = Some(Partial {
            workload_started: started_at.map(rfc3339),
            recording_started: rfc3339(began),
        });
    }

    /// The containers not known to have exited, for a check against what
    /// the engine runs now.
    pub fn live_ids(&self) -> Vec<String> {
        self.containers
            .values()
            .filter(|c| !c.exited)
            .map(|c| c.id.clone())
            .collect()
    }

    /// A container this recorder holds as running that the engine does not
    /// list as running (one restored from the daemon's state that exited,
    /// or was removed, while the daemon was down), with the engine's
    /// inspect reply if it still has one. It dies here, keeping its name,
    /// and is finalized like any other. Without a reply, its cgroup
    /// decides: an engine that did not answer says nothing about it.
    pub fn on_not_running(&mut self, id: &str, info: Option<ContainerInfo>) {
        let gone = match &info {
            Some(info) => !info.running,
            None => self.containers.get(id).is_some_and(|rec| {
                rec.cgroup
                    .as_deref()
                    .is_some_and(|cg| !self.mount.join(cg.trim_start_matches('/')).exists())
            }),
        };
        if let Some(info) = info {
            self.on_inspect(info);
        }
        if !gone {
            return;
        }
        let rec = self.container(id);
        let died = ContainerEvent {
            action: "die".into(),
            id: id.to_owned(),
            name: rec.info.name.clone(),
            image: rec.info.image.clone(),
        };
        self.on_engine_event(died);
    }

    pub fn on_inspect(&mut self, info: ContainerInfo) {
        let rec = self.container(&info.id.clone());
        rec.revision += 1;
        rec.info.name = info.name.or(rec.info.name.take());
        rec.info.image = info.image.or(rec.info.image.take());
        if info.capabilities.is_some() {
            rec.info.capabilities = info.capabilities;
        }
        if info.run.is_some() {
            rec.info.run = info.run;
        }
        if info.k8s.is_some() {
            rec.info.k8s = info.k8s;
            rec.info.sandbox = info.sandbox;
        }
    }

    /// The profile as of now, without draining: earlier finalizations plus
    /// the live counters in `counts` (one read of the kernel map, shared by
    /// every container).
    pub fn snapshot(&self, id: &str, observer: &Observer, counts: &[Count]) -> Option<Profile> {
        let rec = self.containers.get(id)?;
        let live: Vec<_> = counts
            .iter()
            .filter(|c| rec.cgroup_ids.contains(&c.cgroup_id))
            .copied()
            .collect();
        if live.is_empty() {
            return rec.profile.clone();
        }
        let observation = observation(rec, &self.backend, &self.classification, observer);
        let mut fresh = profile::from_observer(
            observer,
            live,
            &rec.received,
            subject(rec, self.keep_env),
            observation,
        );
        fresh.add_syscall_findings(&rec.carried.0, &rec.carried.1);
        Some(onto(rec.profile.clone(), fresh))
    }

    /// The live counts of container `id` out of `index`; empty for one this
    /// recorder does not hold. Pass them to [`Recorder::snapshot`] or
    /// [`Recorder::digest`] in place of all counts: a scan of every counter
    /// per container made a node's flush and `ps` quadratic.
    pub fn counts_of(&self, id: &str, index: &CountIndex) -> Vec<Count> {
        self.containers
            .get(id)
            .map(|rec| {
                rec.cgroup_ids
                    .iter()
                    .filter_map(|cg| index.0.get(cg))
                    .flatten()
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A digest of everything `snapshot` builds a container's profile from:
    /// its live counts (in any order), the records received, what the
    /// engine said of it, and whether it exited. While it stays the same,
    /// so does the profile: the daemon's flush skips the container, and
    /// `ps` reuses its line.
    pub fn digest(&self, id: &str, counts: &[Count]) -> Option<u64> {
        let rec = self.containers.get(id)?;
        let live = counts
            .iter()
            .filter(|c| rec.cgroup_ids.contains(&c.cgroup_id));
        Some(digest_of(
            live,
            (
                rec.received.len(),
                &rec.info.name,
                rec.exited,
                rec.profile.is_some(),
                rec.revision,
            ),
        ))
    }

    /// What to write to disk for a container.
    pub fn persisted(&self, id: &str, current: Option<Profile>) -> Option<PersistedContainer> {
        let rec = self.containers.get(id)?;
        Some(PersistedContainer {
            schema: STATE_SCHEMA.into(),
            id: rec.id.clone(),
            runtime: rec.runtime.clone(),
            cgroup: rec.cgroup.clone(),
            cgroup_ids: rec.cgroup_ids.iter().copied().collect(),
            name: rec.info.name.clone(),
            image: rec.info.image.clone(),
            capabilities: rec.info.capabilities.clone(),
            k8s: rec.info.k8s.clone(),
            sandbox: rec.info.sandbox,
            exited: rec.exited,
            started: rec.started.map(rfc3339),
            partial: rec.partial.clone(),
            base: rec.profile.clone(),
            current,
        })
    }

    /// Takes a container back from disk after a restart. The ids and
    /// capability names were validated when the file was parsed.
    pub fn restore(&mut self, p: PersistedContainer) {
        for id in &p.cgroup_ids {
            if let Some(path) = &p.cgroup {
                self.cgroups.insert(*id, CgroupMeta { path: path.clone() });
            }
        }
        // State written before `started` and `partial` were kept: the last
        // profile says.
        let last = p.current.as_ref().or(p.base.as_ref());
        let started = p
            .started
            .as_deref()
            .or(last.map(|c| c.observation.start.as_str()))
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let partial = p
            .partial
            .or_else(|| last.and_then(|c| c.observation.partial.clone()));
        let carried = last
            .map(|c| (c.conditional.clone(), c.kept.clone()))
            .unwrap_or_default();
        let rec = self.container(&p.id);
        rec.restored = true;
        rec.carried = carried;
        rec.partial = partial;
        rec.runtime = p.runtime;
        rec.cgroup = p.cgroup;
        rec.cgroup_ids = p.cgroup_ids.into_iter().collect();
        rec.info.name = p.name;
        rec.info.image = p.image;
        rec.info.capabilities = p.capabilities;
        rec.info.k8s = p.k8s;
        rec.info.sandbox = p.sandbox;
        rec.exited = p.exited;
        rec.profile = p.base;
        rec.started = started.or(rec.started).or(Some(SystemTime::now()));
    }

    /// Forgets a container (it is on disk); returns its cgroup ids.
    pub fn evict(&mut self, id: &str) -> Vec<u64> {
        let Some(rec) = self.containers.remove(id) else {
            return vec![];
        };
        for cg in &rec.cgroup_ids {
            self.cgroups.remove(cg);
        }
        self.names.remove(id);
        self.dying.remove(id);
        rec.cgroup_ids.into_iter().collect()
    }

    pub fn records(&self) -> impl Iterator<Item = &ContainerRecord> {
        self.containers.values()
    }

    pub fn len(&self) -> usize {
        self.containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn cgroups_tracked(&self) -> usize {
        self.cgroups.len()
    }

    /// The container a user means: exact name, or id prefix (≥ 4 chars).
    ///
    /// A name that several containers have had (one re-used it after the
    /// other exited) matches them all: the caller must not guess.
    pub fn find(&self, key: &str) -> Vec<&ContainerRecord> {
        let name = key.trim_start_matches('/');
        let by_name: Vec<_> = self
            .containers
            .values()
            .filter(|c| c.info.name.as_deref() == Some(name))
            .collect();
        if !by_name.is_empty() {
            return by_name;
        }
        self.containers
            .values()
            .filter(|c| c.matches(key))
            .collect()
    }

    /// Containers that died more than `grace` ago (their last records have
    /// had time to arrive) and are not finalized yet. A container that died
    /// without one check seen has nothing to finalize: after `give_up` it
    /// stops being waited for.
    pub fn due(&mut self, grace: Duration, give_up: Duration) -> Vec<String> {
        let containers = &self.containers;
        self.dying.retain(|id| {
            containers.get(id).is_some_and(|c| {
                c.died
                    .is_some_and(|d| !c.cgroup_ids.is_empty() || d.elapsed() < give_up)
            })
        });
        self.dying
            .iter()
            .filter_map(|id| self.containers.get(id))
            .filter(|c| c.died.is_some_and(|d| d.elapsed() >= grace) && !c.cgroup_ids.is_empty())
            .map(|c| c.id.clone())
            .collect()
    }

    /// Takes every running container whose cgroup directory is gone for
    /// dead, as if the engine had said so: without an engine (or for a
    /// container it never announced) nothing else ever would, and it would
    /// stay "running" forever. One `stat` per running container; returns
    /// how many were found gone.
    pub fn mark_gone(&mut self) -> usize {
        let mut gone = 0;
        for rec in self.containers.values_mut() {
            if rec.exited || rec.died.is_some() || rec.cgroup_ids.is_empty() {
                continue;
            }
            let Some(path) = &rec.cgroup else { continue };
            // Only "no such directory" says gone; the daemon holds no
            // capability, and a refused stat must not end a container.
            let dir = self.mount.join(path.trim_start_matches('/'));
            if !matches!(std::fs::metadata(dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
            {
                continue;
            }
            rec.died = Some(Instant::now());
            self.dying.insert(rec.id.clone());
            gone += 1;
        }
        gone
    }

    /// Whether a container died and waits to be finalized.
    pub fn has_dying(&self) -> bool {
        !self.dying.is_empty()
    }

    pub fn ids(&self) -> Vec<String> {
        self.containers
            .values()
            .filter(|c| !c.cgroup_ids.is_empty())
            .map(|c| c.id.clone())
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<&ContainerRecord> {
        self.containers.get(id)
    }

    /// Drains the container's counters from the kernel and builds its
    /// profile (merged with any earlier one of the same container). None
    /// when nothing is new since the last time.
    pub fn finalize(
        &mut self,
        id: &str,
        observer: &mut Observer,
    ) -> Result<Option<Profile>, ObserverError> {
        self.dying.remove(id);
        let Some(rec) = self.containers.get_mut(id) else {
            return Ok(None);
        };
        rec.died = None;
        rec.exited = true;
        let ids = rec.cgroup_ids.clone();
        let counts = observer.drain_counts(|cg| ids.contains(&cg))?;
        let received = std::mem::take(&mut rec.received);
        if counts.is_empty() && rec.profile.is_some() {
            // Nothing new since the last finalization.
            return Ok(None);
        }
        let observation = observation(rec, &self.backend, &self.classification, observer);
        let mut fresh = profile::from_observer(
            observer,
            counts,
            &received,
            subject(rec, self.keep_env),
            observation,
        );
        // From now on in `profile`.
        let (conditional, kept) = std::mem::take(&mut rec.carried);
        fresh.add_syscall_findings(&conditional, &kept);
        let profile = onto(rec.profile.take(), fresh);
        rec.profile = Some(profile.clone());
        Ok(Some(profile))
    }
}

fn find_dir(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    if depth == 0 {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name().to_str() == Some(name) {
            return Some(entry.path());
        }
        if let Some(found) = find_dir(&entry.path(), name, depth - 1) {
            return Some(found);
        }
    }
    None
}

/// The counts, in any order, and `rest`, hashed with fixed keys: digests
/// of two flushes must compare.
fn digest_of<'a>(counts: impl Iterator<Item = &'a Count>, rest: impl std::hash::Hash) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher as _};
    fn hash_of(value: impl Hash) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }
    let live = counts.fold(0u64, |sum, c| sum.wrapping_add(hash_of(c)));
    hash_of((live, rest))
}

fn subject(rec: &ContainerRecord, keep_env: bool) -> Subject {
    Subject {
        // A container the CRI named is a pod's.
        kind: if rec.info.k8s.is_some() {
            SubjectKind::PodContainer
        } else {
            SubjectKind::Container
        },
        runtime: Some(rec.runtime.clone()),
        id: Some(rec.id.clone()),
        name: rec.info.name.clone(),
        image: rec.info.image.clone(),
        cgroup: rec.cgroup.clone(),
        command: None,
        capabilities: rec.info.capabilities.clone(),
        run: rec.info.run.as_ref().map(|run| {
            if keep_env {
                run.clone()
            } else {
                run.without_env_values()
            }
        }),
        k8s: rec.info.k8s.clone(),
    }
}

fn observation(
    rec: &ContainerRecord,
    backend: &str,
    classification: &str,
    observer: &Observer,
) -> Observation {
    let stats = observer.kernel_stats().unwrap_or_default();
    Observation {
        start: rec.started.map(rfc3339).unwrap_or_default(),
        end: rfc3339(SystemTime::now()),
        backend: backend.to_owned(),
        classification: classification.to_owned(),
        lost_records: stats.ringbuf_lost,
        // Counted from the container's own counters by the builder.
        unclassified_checks: 0,
        recursion_misses: stats.recursion_misses,
        unobservable: Class::unobservable_on(observer.backend()),
        partial: rec.partial.clone(),
    }
}

/// `fresh` added onto what earlier finalizations drained, under the
/// freshest subject.
fn onto(earlier: Option<Profile>, fresh: Profile) -> Profile {
    match earlier {
        Some(mut earlier) => {
            earlier.merge(&fresh);
            earlier.subject = fresh.subject;
            earlier
        }
        None => fresh,
    }
}

/// Watches, in container mode, the engine's cgroup parents and `extra`
/// subtrees (relative to the mount). Parents may not exist before the first
/// container, so they are created, and its very first check is seen.
/// Returns the roots that are watched.
pub fn watch_container_roots(
    observer: &mut Observer,
    mount: &Path,
    parents: &[&str],
    extra: &[String],
) -> Result<Vec<String>, ObserverError> {
    let mut roots: Vec<String> = parents.iter().map(|s| s.to_string()).collect();
    roots.extend(extra.iter().map(|r| format!("/{}", r.trim_matches('/'))));
    roots.sort();
    roots.dedup();
    let mut watched = vec![];
    for root in roots {
        let dir = mount.join(root.trim_start_matches('/'));
        if root == "/system.slice" && !dir.exists() {
            continue;
        }
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!("cannot create {}: {e}", dir.display());
            continue;
        }
        let Ok(id) = crate::cgroup::cgroup_id(&dir) else {
            continue;
        };
        observer.watch(id, WatchMode::Containers)?;
        watched.push(root);
    }
    Ok(watched)
}

/// Where a container's profile goes.
///
/// `NAME.json`, unless that file holds the profile of another container
/// (a name re-used while recording, or by an earlier recording): then
/// `NAME-<short id>.json`, so that no container's profile is ever
/// overwritten by another's.
///
/// A pod's container goes to `<namespace>/<pod>/<container>.json` under
/// `dir`, by the same rule (`<container>-<short id>.json` when the kubelet
/// restarted it, so that it has a new id).
pub fn profile_path(dir: &Path, rec: &ContainerRecord) -> PathBuf {
    if let Some((k8s, name)) = rec.info.k8s.as_ref().zip(rec.info.name.as_deref())
        && let Some(path) = crate::cri::profile_path(dir, k8s, name)
        && let Some(pod_dir) = path.parent()
    {
        return free_path(pod_dir, name, rec);
    }
    let stem = safe_name(&rec.file_stem()).unwrap_or_else(|| short_id(&rec.id));
    free_path(dir, &stem, rec)
}

/// `dir/<stem>.json`, or `dir/<stem>-<short id>.json` when the first holds
/// another container's profile.
fn free_path(dir: &Path, stem: &str, rec: &ContainerRecord) -> PathBuf {
    let path = dir.join(format!("{stem}.json"));
    let taken = path.exists()
        && crate::load::load_one(&path.to_string_lossy()).map_or(true, |p| {
            p.profile.subject.id.as_deref() != Some(rec.id.as_str())
        });
    if taken {
        dir.join(format!("{stem}-{}.json", short_id(&rec.id)))
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::observer::{Kind, Phase, UserNs, Verdict};

    fn count(cap: &str, n: u64) -> Count {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + n);
        Count {
            cgroup_id: 7,
            cap: cap.parse().unwrap(),
            verdict: Verdict::Granted,
            kind: Kind::Audit,
            phase: Phase::Workload,
            user_ns: UserNs::Own,
            count: n,
            first_seen: t,
            last_seen: t,
        }
    }

    #[test]
    fn a_digest_ignores_order_and_sees_every_change() {
        let a = [count("CHOWN", 3), count("KILL", 1)];
        let b = [count("KILL", 1), count("CHOWN", 3)];
        let digest = |counts: &[Count], received: usize| digest_of(counts.iter(), received);
        assert_eq!(digest(&a, 2), digest(&b, 2), "the kernel map's order");
        assert_eq!(digest(&a, 2), digest(&a, 2), "fixed keys");
        assert_ne!(
            digest(&a, 2),
            digest(&[count("CHOWN", 4), count("KILL", 1)], 2)
        );
        assert_ne!(digest(&a, 2), digest(&a[..1], 2));
        assert_ne!(digest(&a, 2), digest(&a, 3), "a new evidence record");
    }

    /// The session's timer runs only while a container is dying: one that
    /// was finalized, evicted, or died unseen (after the give-up time)
    /// stops it.
    #[test]
    fn only_a_dying_container_arms_the_timer() {
        let mut r = Recorder::labelled(
            Path::new("/sys/fs/cgroup"),
            vec![],
            "tp_btf".into(),
            "calibrated".into(),
        );
        let event = |action: &str, id: &str| ContainerEvent {
            action: action.into(),
            id: id.into(),
            name: Some(id.into()),
            image: None,
        };
        r.on_engine_event(event("start", "seen"));
        r.on_engine_event(event("start", "unseen"));
        assert!(!r.has_dying(), "running containers need no timer");
        r.container("seen").cgroup_ids.insert(7);
        r.on_engine_event(event("die", "seen"));
        r.on_engine_event(event("die", "unseen"));
        assert!(r.has_dying());
        let long = Duration::from_secs(60);
        assert!(r.due(long, long).is_empty(), "within the grace period");
        assert!(r.has_dying());
        // After the grace: the seen one is due; the unseen one, with no
        // check to finalize, is given up on.
        assert_eq!(r.due(Duration::ZERO, Duration::ZERO), ["seen"]);
        r.evict("seen");
        assert!(!r.has_dying(), "{:?}", r.dying);
        assert!(r.due(Duration::ZERO, Duration::ZERO).is_empty());
    }
}

#[cfg(test)]
mod archive_tests {
    use super::*;
    use crate::engine::ContainerEvent;

    /// An evicted container that starts again is taken back from the
    /// archive: running, with what its earlier runs drained.
    #[test]
    fn an_evicted_container_that_starts_again_is_taken_back() {
        let mut recorder = Recorder::labelled(
            Path::new("/nonexistent"),
            vec![],
            "tp_btf".into(),
            "call-site".into(),
        );
        let id = "a".repeat(64);
        let earlier = crate::profile::with_allowlist(
            &["CAP_CHOWN"],
            Subject {
                kind: "container".into(),
                id: Some(id.clone()),
                name: Some("web".into()),
                ..Default::default()
            },
        );
        let filed = PersistedContainer {
            schema: STATE_SCHEMA.into(),
            id: id.clone(),
            runtime: "docker".into(),
            cgroup: Some(format!("/docker/{id}")),
            cgroup_ids: vec![7],
            name: Some("web".into()),
            image: None,
            capabilities: None,
            k8s: None,
            sandbox: false,
            exited: true,
            started: None,
            partial: None,
            base: Some(earlier.clone()),
            current: Some(earlier.clone()),
        };
        recorder.set_archive(Box::new(move |wanted| {
            (wanted == filed.id).then(|| filed.clone())
        }));
        recorder.on_engine_event(ContainerEvent {
            action: "start".into(),
            id: id.clone(),
            name: Some("web".into()),
            image: None,
        });
        let rec = recorder.get(&id).expect("taken back");
        assert!(!rec.exited, "it runs again");
        assert_eq!(rec.profile.as_ref(), Some(&earlier));
        // One nobody archived is new.
        let other = "b".repeat(64);
        recorder.on_engine_event(ContainerEvent {
            action: "start".into(),
            id: other.clone(),
            name: None,
            image: None,
        });
        assert!(recorder.get(&other).unwrap().profile.is_none());
    }
}
