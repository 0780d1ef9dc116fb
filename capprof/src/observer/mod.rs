//! Loading, configuring and reading the kernel side.
//!
//! One `Observer` owns the loaded `Ebpf` object. Loading picks a backend
//! from what the running kernel offers (`backend`), calibrates call-site
//! classification (`calibrate`), attaches (`attach`) and, for the daemon,
//! pins (`pin`). What it reads back (`counts`, `reader`, `events`) leaves
//! here as typed values: raw kernel codes stop at this module.

mod attach;
pub mod backend;
pub mod btf;
pub mod calibrate;
pub mod counts;
pub mod events;
pub mod kallsyms;
mod load;
pub mod pin;
pub mod prog_stats;
pub mod reader;
pub mod symbols;
pub mod syscalls;
pub mod warm;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use attach::{AttachError, Attached, Hook};
use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, RingBuf},
    programs::links::PinnedLink,
};
pub use backend::{
    Backend, COMPAT, Classification, LSM_LIST, LsmUnavailable, bpf_lsm_active, choose_backend,
};
use capprof_common::{check::generations, names};
pub use counts::{
    Clock, Count, KernelStats, Kind, Phase, Sighting, UserNs, Verdict, flush_pending,
};
use kallsyms::Kallsyms;
use load::read_kallsyms;

/// The eBPF object built by build.rs through aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capprof"));

#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    #[error("capprof must run as root (it loads eBPF programs and creates cgroups)")]
    NotRoot,
    #[error(
        "this kernel has no BTF ({}): capprof needs CONFIG_DEBUG_INFO_BTF",
        btf::VMLINUX_BTF
    )]
    NoBtf,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("cannot parse the eBPF object: {0}")]
    Object(#[source] aya_obj::ParseError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("the eBPF object lacks map {0}")]
    MissingMap(&'static str),
    #[error("backend {backend} is not available on this kernel: {reason}")]
    BackendUnavailable {
        backend: Backend,
        #[source]
        reason: Unavailable,
    },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("cannot pin {}: {source}", path.display())]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Warm(#[from] warm::WarmError),
}

impl ObserverError {
    /// Errors that mean "this machine lacks something", not a capprof bug.
    pub fn is_prerequisite(&self) -> bool {
        matches!(
            self,
            ObserverError::NotRoot
                | ObserverError::NoBtf
                | ObserverError::BackendUnavailable { .. }
                | ObserverError::Pin(_)
        )
    }
}

/// Why a backend cannot be used here.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("the capability:cap_capable tracepoint needs Linux 6.14+")]
    NoTracepoint,
    #[error(transparent)]
    Lsm(#[from] LsmUnavailable),
    /// The kernel refused its program (the calibration program: the same
    /// program type on the same hook).
    #[error("{}", .0.refusal())]
    Refused(#[source] AttachError),
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ObserverError {
    move |source| ObserverError::Map { name, source }
}

/// Checks that we are root and that the kernel has BTF.
pub fn preflight() -> Result<(), ObserverError> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ObserverError::NotRoot);
    }
    if !btf::btf_present() {
        return Err(ObserverError::NoBtf);
    }
    Ok(())
}

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Force a backend instead of the best one the kernel offers.
    pub backend: Option<Backend>,
    /// Pin maps and links under this bpffs mount (the daemon), reusing
    /// compatible pins from an earlier run.
    pub pin_bpffs: Option<PathBuf>,
    /// Start warm from this executable's verified programs kept under this
    /// directory of a bpffs mount, or keep them there for the next run
    /// (`capprof run`, see `warm`). Not with `pin_bpffs`.
    pub warm: Option<PathBuf>,
    /// How big the tables are.
    pub sizes: MapSizes,
}

/// How many entries the largest tables hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MapSizes {
    /// The object's own: every container of a node (the daemon, `record`).
    #[default]
    Node,
    /// One command's tree (`capprof run`): 8.8 MiB of kernel memory in all
    /// rather than 30.6 MiB, which matters for a set kept warm between
    /// runs. A command's counters are at most a few hundred keys per
    /// cgroup; the caches (LRU) only evict sooner.
    Command,
}

impl MapSizes {
    /// The tables whose size differs from the object's, by name.
    fn overrides(self) -> &'static [(&'static str, u32)] {
        match self {
            MapSizes::Node => &[],
            MapSizes::Command => &[
                (names::COUNTS, 8192),
                (names::EVIDENCE_SEEN, 8192),
                (names::TASKS, 8192),
                (names::TASK_EXECS, 4096),
                (names::CGROUPS, 4096),
                (names::INFLIGHT, 4096),
            ],
        }
    }
}

/// The kernel objects an observer reads and attaches.
enum Objects {
    /// The embedded object, loaded now.
    Loaded(Ebpf),
    /// A warm set's maps and programs, reopened from bpffs.
    Reopened(warm::Reopened),
}

impl Objects {
    fn map(&self, name: &str) -> Option<&Map> {
        match self {
            Objects::Loaded(ebpf) => ebpf.map(name),
            Objects::Reopened(set) => set.maps.get(name),
        }
    }

    fn map_mut(&mut self, name: &str) -> Option<&mut Map> {
        match self {
            Objects::Loaded(ebpf) => ebpf.map_mut(name),
            Objects::Reopened(set) => set.maps.get_mut(name),
        }
    }

    fn take_map(&mut self, name: &str) -> Option<Map> {
        match self {
            Objects::Loaded(ebpf) => ebpf.take_map(name),
            Objects::Reopened(set) => set.maps.remove(name),
        }
    }

    fn program(&self, name: &str) -> Option<&aya::programs::Program> {
        match self {
            Objects::Loaded(ebpf) => ebpf.program(name),
            Objects::Reopened(set) => set.programs.get(name),
        }
    }
}

impl attach::Programs for Objects {
    fn program_mut(&mut self, name: &str) -> Option<&mut aya::programs::Program> {
        match self {
            Objects::Loaded(ebpf) => ebpf.program_mut(name),
            Objects::Reopened(set) => set.programs.get_mut(name),
        }
    }
}

pub struct Observer {
    objects: Objects,
    backend: Backend,
    classification: Classification,
    /// Read on first use: most runs never need a call site's name.
    kallsyms: std::sync::OnceLock<Option<Kallsyms>>,
    /// The functions calibration found, to name most call sites without
    /// /proc/kallsyms.
    known: Option<symbols::KnownFunctions>,
    load_time: Duration,
    /// Links to pin (the daemon) or to drop with the object.
    attached: Vec<Attached>,
    pin_dir: Option<PathBuf>,
    /// Whether compatible pins of an earlier run were reused.
    reused_pins: bool,
    /// Held while this observer owns pins.
    _pin_lock: Option<pin::PinLock>,
    /// The last `read_counts`, with the `HOT` signature it was read at.
    counts_cache: std::sync::Mutex<Option<(u64, Vec<counts::Count>)>>,
    /// The warm set this run reopened or made, held until it is done.
    warm: Option<warm::WarmSet>,
    /// This run's links, pinned in the warm set for the next run to take
    /// over, and the holder that detaches them if none does (`warm`).
    kept_links: Vec<PinnedLink>,
    linger: Option<attach::Holder>,
    /// The programs' `recursion_misses` when this observer started: a
    /// warm set's count earlier runs' too.
    recursion_misses_before: u64,
}

/// How a watched cgroup subtree's checks are told apart; the kernel reads
/// it from `WATCH_ROOTS` as capprof-common's `check::watch` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchMode {
    /// A command's cgroup (`capprof run`): every check is the workload's.
    Command,
    /// Container cgroups: a process is runtime setup until it execs the
    /// workload.
    Containers,
}

impl WatchMode {
    /// The number the eBPF programs compare against.
    pub fn raw(self) -> u32 {
        use capprof_common::check::watch;
        match self {
            WatchMode::Command => watch::COMMAND,
            WatchMode::Containers => watch::CONTAINERS,
        }
    }
}

impl Observer {
    /// Loads the object, calibrates, and attaches `backend` (or the best one
    /// this kernel offers).
    pub fn load(backend: Option<Backend>) -> Result<Self, ObserverError> {
        Self::load_with(LoadOptions {
            backend,
            ..LoadOptions::default()
        })
    }

    /// Whether an earlier run's pins (and the counts in them) were reused.
    pub fn reused_pins(&self) -> bool {
        self.reused_pins
    }

    /// Pins each attached link, replacing an earlier run's: the new program
    /// is attached before the old one is detached, so no check goes
    /// uncounted across a restart (a few may be counted twice).
    fn pin_links(&mut self) -> Result<(), ObserverError> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(());
        };
        // The old programs keep checks pending in their own `HOT`, which
        // goes away with them: have every CPU flush into the shared
        // `COUNTS` first.
        flush_pending();
        for attached in std::mem::take(&mut self.attached) {
            let name = attached.name;
            let Some(link) = attached.into_fd_link(&mut self.objects)? else {
                tracing::warn!(
                    "{name}: this link cannot be pinned (a kprobe, or a tracepoint on a kernel \
                     before 5.15); what it sees while the daemon is down is lost"
                );
                continue;
            };
            let path = pin::link_path(&dir, name);
            if path.exists()
                && let Err(e) = pin::detach_pinned_link(&path)
            {
                tracing::warn!("cannot reopen {}: {e}; removed it", path.display());
            }
            link.pin(&path)
                .map_err(|source| ObserverError::PinLink { path, source })?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether this observer reopened a warm set rather than loading.
    pub fn started_warm(&self) -> bool {
        matches!(self.objects, Objects::Reopened(_))
    }

    /// Whether the kernel would take `backend` too: loads its calibration
    /// program (the same program type on the same hook), attaches it for a
    /// moment, and unloads it. Attaching is part of the question: a kernel
    /// without kprobes loads a kprobe program and only refuses to attach it.
    /// For `capprof doctor`.
    pub fn probe_backend(&mut self, backend: Backend) -> Result<(), ObserverError> {
        let unavailable = |reason| ObserverError::BackendUnavailable { backend, reason };
        if backend == Backend::Lsm {
            bpf_lsm_active().map_err(|e| unavailable(e.into()))?;
        }
        let btf = aya::Btf::from_sys_fs().map_err(btf::BtfError::Aya)?;
        let (name, hook) = calibrate::program(backend);
        let tried = attach::load_and_attach(&mut self.objects, &btf, name, hook)
            .and_then(|attached| attached.detach(&mut self.objects));
        let unloaded = attach::unload(&mut self.objects, name, hook);
        tried.map_err(|e| unavailable(Unavailable::Refused(e)))?;
        unloaded.map_err(ObserverError::from)
    }

    pub fn classification(&self) -> &Classification {
        &self.classification
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn kallsyms(&self) -> Option<&Kallsyms> {
        self.kallsyms.get_or_init(read_kallsyms).as_ref()
    }

    /// Names a call site: from the functions calibration knew when it lies
    /// in one (nearly every site does), else from /proc/kallsyms, read then.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.known
            .as_ref()
            .and_then(|k| k.symbolize(addr))
            .or_else(|| self.kallsyms().and_then(|k| k.symbolize(addr)))
    }

    fn map(&self, name: &'static str) -> Result<&Map, ObserverError> {
        self.objects
            .map(name)
            .ok_or(ObserverError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, ObserverError> {
        self.objects
            .map_mut(name)
            .ok_or(ObserverError::MissingMap(name))
    }

    /// Profiles the subtree rooted at `cgroup_id` in `mode`.
    pub fn watch(&mut self, cgroup_id: u64, mode: WatchMode) -> Result<(), ObserverError> {
        let mut roots: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(names::WATCH_ROOTS)?)
            .map_err(map_err(names::WATCH_ROOTS))?;
        roots
            .insert(cgroup_id, mode.raw(), 0)
            .map_err(map_err(names::WATCH_ROOTS))?;
        // Every decision cached so far ("unwatched" below the new root
        // included) is now stale.
        self.bump_watch_generation()
    }

    /// Stops profiling the subtree at `cgroup_id` and forgets the cached
    /// decisions for `ids`.
    pub fn unwatch(&mut self, cgroup_id: u64, ids: &[u64]) -> Result<(), ObserverError> {
        let mut roots: HashMap<_, u64, u32> = HashMap::try_from(self.map_mut(names::WATCH_ROOTS)?)
            .map_err(map_err(names::WATCH_ROOTS))?;
        let _ = roots.remove(&cgroup_id);
        self.bump_watch_generation()?;
        // aya's HashMap also opens LRU hash maps.
        let mut cache: HashMap<_, u64, u32> =
            HashMap::try_from(self.map_mut(names::CGROUPS)?).map_err(map_err(names::CGROUPS))?;
        for id in ids {
            let _ = cache.remove(id);
        }
        Ok(())
    }

    /// Invalidates every watch decision the kernel side has cached (in
    /// `CGROUPS` and in each CPU's `HOT` entry) after `WATCH_ROOTS` changed.
    /// Only userspace writes this generation, and only one capprof owns a
    /// set of maps, so read-modify-write is safe.
    fn bump_watch_generation(&mut self) -> Result<(), ObserverError> {
        let mut generations: Array<_, u32> = Array::try_from(self.map_mut(names::GENERATION)?)
            .map_err(map_err(names::GENERATION))?;
        let current = generations
            .get(&generations::WATCH, 0)
            .map_err(map_err(names::GENERATION))?;
        generations
            .set(generations::WATCH, current.wrapping_add(1), 0)
            .map_err(map_err(names::GENERATION))
    }

    /// Takes the ring buffer, for a reader task to own.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ObserverError> {
        let map = self
            .objects
            .take_map(names::EVENTS)
            .ok_or(ObserverError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(names::EVENTS))
    }

    /// Takes the syscall hooks' backlogs (records the ring buffer had no
    /// room for), for the reader task to drain after the ring buffer.
    pub fn take_backlogs(&mut self) -> Result<reader::Backlogs, ObserverError> {
        let mut take = |name: &'static str| {
            self.objects
                .take_map(name)
                .ok_or(ObserverError::MissingMap(name))
        };
        let conditional = take(names::CONDITIONAL_BACKLOG)?;
        let capset = take(names::CAPSET_BACKLOG)?;
        let capset_exec = take(names::CAPSET_EXEC_BACKLOG)?;
        Ok(reader::Backlogs {
            conditional: HashMap::try_from(conditional)
                .map_err(map_err(names::CONDITIONAL_BACKLOG))?,
            capset: HashMap::try_from(capset).map_err(map_err(names::CAPSET_BACKLOG))?,
            capset_exec: HashMap::try_from(capset_exec)
                .map_err(map_err(names::CAPSET_EXEC_BACKLOG))?,
        })
    }
}

impl Observer {
    /// Drops the observer without waiting for its links to detach.
    ///
    /// Closing a classic tracepoint's perf event, the last on its event,
    /// waits out RCU grace periods, and the kernel serializes those closes
    /// on its `event_mutex`: `capprof run` waited 130-215 ms at exit for
    /// its four syscall hooks (`strace -f -T`: 53, 77, 109 and 132 ms for
    /// the four closes, started together). A forked `attach::Holder` keeps
    /// a copy of every link's fd until this observer is gone and exits: the
    /// last closes, and their waits, are its. The programs go on running
    /// on maps nobody reads for that long after `capprof run` has returned,
    /// as they would have while it waited.
    ///
    /// A warm set's attached-lock goes with the links: the next run
    /// attaches its programs only once these links are gone. Links pinned
    /// in a warm set are not closed at all: they stay for the next run.
    pub fn drop_in_background(mut self) {
        if self.linger.is_some() {
            // Pinned, the links stay for the next run; the holder forked
            // as they were pinned detaches them later if none takes them.
            return;
        }
        let warm_lock = self.warm.as_ref().map(warm::WarmSet::attached_fd);
        let holder =
            attach::Holder::fork(&|fd, target| attach::is_link(target) || Some(fd) == warm_lock);
        match holder {
            // Each close is now only ours: no need for `Drop`'s threads,
            // the object closes its links in turn.
            Some(_) => self.attached.clear(),
            None => tracing::debug!("cannot fork a process to detach in: detaching here"),
        }
        drop(self);
        drop(holder);
    }
}

impl Drop for Observer {
    /// Links that were not pinned go now, all at once rather than one by
    /// one as the object drops them (see `attach::detach_concurrently`).
    fn drop(&mut self) {
        let attached = std::mem::take(&mut self.attached);
        attach::detach_concurrently(&mut self.objects, attached);
        // Pinned links without a holder would stay attached: they go now.
        if self.linger.is_none() {
            for link in std::mem::take(&mut self.kept_links) {
                drop(link.unpin());
            }
        }
    }
}

/// How long each phase of something took, logged at debug level.
pub struct LoadPhases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl LoadPhases {
    pub fn new(started: Instant) -> Self {
        Self {
            last: started,
            done: vec![],
        }
    }

    /// Ends the phase called `name`, which began at the previous mark.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    /// Logs the phases of `what`.
    pub fn log(&self, what: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let shown: Vec<String> = self
                .done
                .iter()
                .map(|(name, d)| format!("{name} {d:.1?}"))
                .collect();
            tracing::debug!("{what} phases: {}", shown.join(", "));
        }
    }
}

/// The process lifecycle hooks, by program and tracepoint.
const PROCESS_HOOKS: [(&str, &str); 3] = [
    (names::PROG_EXEC, "sched_process_exec"),
    (names::PROG_FORK, "sched_process_fork"),
    (names::PROG_EXIT, "sched_process_exit"),
];

/// Every hook's program beside the backend's: the process hooks, then the
/// syscall hooks, in the order they load and attach.
fn hook_programs() -> impl Iterator<Item = (&'static str, Hook)> {
    PROCESS_HOOKS
        .iter()
        .map(|&(name, tp)| (name, Hook::TpBtf(tp)))
        .chain(syscalls::programs())
}

/// The backend's program(s), in the order they attach.
fn backend_programs(backend: Backend) -> &'static [(&'static str, Hook)] {
    match backend {
        Backend::TpBtf => &[(names::PROG_TP_BTF, Hook::TpBtf(names::TRACEPOINT_NAME))],
        Backend::Fexit => &[(names::PROG_FEXIT, Hook::Fexit(names::HOOK_FUNCTION))],
        // The return probe first: kprobe handlers registered later run
        // first, so the entry probe reads the caller's return address
        // before the kretprobe replaces it with its trampoline.
        Backend::Kprobe => &[
            (names::PROG_KRETPROBE, Hook::Kprobe(names::HOOK_FUNCTION)),
            (names::PROG_KPROBE, Hook::Kprobe(names::HOOK_FUNCTION)),
        ],
        Backend::Lsm => &[(names::PROG_LSM, Hook::Lsm(names::LSM_HOOK))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every map and program userspace names exists in the built object.
    #[test]
    fn object_has_every_named_map_and_program() {
        let obj = aya_obj::Object::parse(OBJECT).unwrap();
        for name in names::ALL_MAPS {
            assert!(
                obj.maps.contains_key(*name),
                "map {name} missing from the object"
            );
        }
        for name in names::ALL_PROGRAMS {
            assert!(
                obj.programs.contains_key(*name),
                "program {name} missing from the object"
            );
        }
    }

    /// The benchmark's programs stay out of the object capprof embeds.
    #[test]
    fn object_has_no_bench_program() {
        let obj = aya_obj::Object::parse(OBJECT).unwrap();
        for name in names::bench::ALL_PROGRAMS {
            assert!(
                !obj.programs.contains_key(*name),
                "benchmark program {name} in capprof's object"
            );
        }
    }
}
