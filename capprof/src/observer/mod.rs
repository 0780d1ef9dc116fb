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
pub mod pin;
pub mod prog_stats;
pub mod reader;
pub mod symbols;
pub mod syscalls;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use attach::{AttachError, Attached, Hook};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, RingBuf},
    programs::links::PinnedLink,
};
pub use backend::{
    Backend, COMPAT, Classification, LSM_LIST, LsmUnavailable, bpf_lsm_active, choose_backend,
};
use btf::KernelBtf;
use calibrate::CalibrateError;
use capprof_common::{check::generations, config::Config, names};
pub use counts::{
    Clock, Count, KernelStats, Kind, Phase, Sighting, UserNs, Verdict, flush_pending,
};
use kallsyms::Kallsyms;

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
}

pub struct Observer {
    ebpf: Ebpf,
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
            pin_bpffs: None,
        })
    }

    pub fn load_with(options: LoadOptions) -> Result<Self, ObserverError> {
        let backend = options.backend;
        let started = Instant::now();
        preflight()?;
        bump_memlock_rlimit();
        // The functions calibration needs, from this boot's cache; without
        // one, /proc/kallsyms (~50 ms of kernel time) is read while BTF is
        // parsed and the object is loaded.
        let cache = symbols::Cache::for_this_boot();
        let cached = cache.as_ref().and_then(symbols::Cache::load);
        let kallsyms_thread = match cached {
            Some(_) => None,
            None => Some(spawn_kallsyms()?),
        };
        let mut reused_pins = false;
        let mut pin_lock = None;
        let pin_dir = match &options.pin_bpffs {
            Some(bpffs) => {
                pin::ensure_bpffs(bpffs)?;
                // Before anything is reused or replaced: another daemon's
                // pins are not ours to touch.
                pin_lock = Some(pin::lock(bpffs)?);
                pin::check_other_abis(bpffs)?;
                let dir = pin::pin_dir(bpffs);
                let object = aya_obj::Object::parse(OBJECT).map_err(ObserverError::Object)?;
                if let Some(reason) = pin::incompatibility(&dir, &object) {
                    tracing::warn!(
                        "incompatible pins in {} ({reason}), left by another capprof build: replacing them",
                        dir.display()
                    );
                    pin::reset(&dir).map_err(|source| pin::PinError::Dir {
                        path: dir.clone(),
                        source,
                    })?;
                } else {
                    reused_pins = pin::map_path(&dir, names::COUNTS).exists();
                }
                pin::prepare(&dir)?;
                Some(dir)
            }
            None => None,
        };
        // Pins this load makes are removed again if it fails.
        let mut cleanup = pin::PinGuard {
            dir: pin_dir.clone().filter(|_| !reused_pins),
        };
        let map_pins: Vec<(&'static str, std::path::PathBuf)> = match &pin_dir {
            Some(dir) => pin::PINNED_MAPS
                .iter()
                .map(|n| (*n, pin::map_path(dir, n)))
                .collect(),
            None => vec![],
        };
        let mut phases = Phases::new(started);
        // aya 0.14's `EbpfLoader::new` parses the kernel's BTF by itself
        // (20-45 ms here) and has no way to be handed ours: let it do so on
        // the other core while this thread parses what it needs.
        let new_loader = std::thread::Builder::new()
            .name("loader".into())
            .spawn(EbpfLoader::new);
        let btf_data = btf::read_vmlinux()?;
        let kernel = KernelBtf::parse(&btf_data)?;
        phases.mark("kernel btf");
        let backend = backend.unwrap_or_else(|| choose_backend(&kernel).0);
        if backend == Backend::TpBtf && !kernel.has_cap_tracepoint {
            return Err(ObserverError::BackendUnavailable {
                backend,
                reason: Unavailable::NoTracepoint,
            });
        }
        if backend == Backend::Lsm {
            bpf_lsm_active().map_err(|reason| ObserverError::BackendUnavailable {
                backend,
                reason: reason.into(),
            })?;
        }
        let tgid = std::process::id();
        // Parse the kernel's BTF once for the loader and the attaches.
        let btf =
            aya::Btf::parse(&btf_data, aya::Endianness::default()).map_err(btf::BtfError::Aya)?;
        drop(btf_data);
        phases.mark("aya btf");
        let mut loader = match new_loader.map(std::thread::JoinHandle::join) {
            Ok(Ok(loader)) => loader,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => EbpfLoader::new(),
        };
        phases.mark("loader");
        loader.btf(Some(&btf));
        loader
            .override_global("CAPPROF_TGID", &tgid, true)
            .override_global("CALIBRATE_TGID", &tgid, true);
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        phases.mark("object");
        let mut config = Config::empty();
        config.syscall_nr_offset = SYSCALL_NR_OFFSET.unwrap_or(u32::MAX);
        config.task_tgid_offset = kernel.task_tgid_offset.unwrap_or(u32::MAX);
        config.binprm_filename_offset = kernel.binprm_filename_offset.unwrap_or(u32::MAX);
        config.cgroup_name = kernel
            .cgroup_name
            .unwrap_or(capprof_common::config::CgroupNameOffsets::unknown());
        config.syscalls = kernel.syscalls;
        config.creds = kernel.creds.unwrap_or_else(|| {
            tracing::warn!(
                "this kernel's BTF lacks task_struct.real_cred, cred.user_ns or user_namespace's \
                 level and parent: checks made with borrowed credentials (overlayfs copy-up) \
                 will count as the workload's own"
            );
            capprof_common::config::CredOffsets::unknown()
        });
        let kallsyms = std::sync::OnceLock::new();
        let symbols = Symbols {
            cached,
            thread: kallsyms_thread,
            cache,
            kallsyms: &kallsyms,
        };
        let (known, slots) = symbols.calibrate(&mut ebpf, &btf, backend, &mut phases);
        let ranges = known.as_ref().map(calibrate::ranges).unwrap_or_default();
        // The calibration program is the backend's own program type on the
        // same hook: when the kernel refuses it, it refuses the backend.
        let slots = match slots {
            Err(CalibrateError::Refused(refusal)) => {
                return Err(ObserverError::BackendUnavailable {
                    backend,
                    reason: Unavailable::Refused(refusal),
                });
            }
            Err(other) => Err(other.to_string()),
            Ok(slots) => Ok(slots),
        };
        let classification = match (backend, slots) {
            (Backend::TpBtf, Ok((slots, other))) => {
                calibrate::apply(&mut config, Some(slots), &ranges);
                if let Some(other) = other {
                    config.slot_caller_alt = other.caller;
                    config.slot_outer_alt = other.outer;
                }
                Classification::CallSite {
                    caller_slot: slots.caller,
                    outer_slot: slots.outer,
                }
            }
            (Backend::TpBtf, Err(reason)) => {
                tracing::warn!(
                    "call-site calibration failed ({reason}); every check will count as audited"
                );
                Classification::Uncalibrated(reason)
            }
            (_, Ok((slots, _))) => {
                calibrate::apply(&mut config, Some(slots), &ranges);
                Classification::Opts {
                    call_site: Some(slots),
                }
            }
            (_, Err(reason)) => {
                tracing::warn!(
                    "call-site calibration failed ({reason}); advisory checks will count as silent"
                );
                calibrate::apply(&mut config, None, &ranges);
                Classification::Opts { call_site: None }
            }
        };
        let mut config_map: Array<_, Config> = Array::try_from(
            ebpf.map_mut(names::CONFIG)
                .ok_or(ObserverError::MissingMap(names::CONFIG))?,
        )
        .map_err(map_err(names::CONFIG))?;
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;

        // Every program is verified before the first attach. Calibration
        // has just left the tracepoint, and the next first attach to any
        // tracepoint waits out an RCU grace period after that
        // (kernel/tracepoint.c, its 1->0->1 transition sync): the
        // verification lets the period pass (a 6-19 ms wait otherwise).
        let hooks: Vec<_> = PROCESS_HOOKS
            .iter()
            .map(|&(name, tp)| (name, Hook::TpBtf(tp)))
            .chain(syscalls::programs())
            .collect();
        let mut loaded =
            attach::load_concurrently(&mut ebpf, &btf, backend_programs(backend), &hooks);
        phases.mark("verify");
        let mut attached = attach_backend(&mut ebpf, &mut loaded, backend)?;
        attached.extend(attach_process_hooks(&mut ebpf, &mut loaded));
        attached.extend(syscalls::attach(&mut ebpf, &mut loaded));
        phases.mark("attach");
        phases.log("load");
        let mut observer = Self {
            ebpf,
            backend,
            classification,
            kallsyms,
            known,
            load_time: started.elapsed(),
            attached,
            pin_dir,
            reused_pins,
            _pin_lock: pin_lock,
            counts_cache: std::sync::Mutex::new(None),
        };
        observer.pin_links()?;
        cleanup.dir = None;
        Ok(observer)
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
            let Some(link) = attached.into_fd_link(&mut self.ebpf)? else {
                tracing::warn!(
                    "{name}: this link cannot be pinned (a kprobe, or a tracepoint on a kernel \
                     before 5.15); what it sees while the daemon is down is lost"
                );
                continue;
            };
            let path = pin::link_path(&dir, name);
            if path.exists() {
                match PinnedLink::from_pin(&path) {
                    // Dropping the unpinned old link detaches the old program.
                    Ok(old) => drop(old.unpin()),
                    Err(e) => {
                        tracing::warn!("cannot reopen {}: {e}; removing it", path.display());
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
            link.pin(&path)
                .map_err(|source| ObserverError::PinLink { path, source })?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
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
        let tried = attach::load_and_attach(&mut self.ebpf, &btf, name, hook)
            .and_then(|attached| attached.detach(&mut self.ebpf));
        let unloaded = attach::unload(&mut self.ebpf, name, hook);
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
        self.ebpf.map(name).ok_or(ObserverError::MissingMap(name))
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, ObserverError> {
        self.ebpf
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
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(ObserverError::MissingMap(names::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(names::EVENTS))
    }

    /// Takes the syscall hooks' backlogs (records the ring buffer had no
    /// room for), for the reader task to drain after the ring buffer.
    pub fn take_backlogs(&mut self) -> Result<reader::Backlogs, ObserverError> {
        let mut take = |name: &'static str| {
            self.ebpf
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

/// Where load time goes, logged at debug level (`CAPPROF_LOG=debug`).
fn spawn_kallsyms() -> Result<std::thread::JoinHandle<Option<Kallsyms>>, ObserverError> {
    std::thread::Builder::new()
        .name("kallsyms".into())
        .spawn(read_kallsyms)
        .map_err(ObserverError::Thread)
}

/// /proc/kallsyms, or None (warned) when it cannot be read.
fn read_kallsyms() -> Option<Kallsyms> {
    let started = Instant::now();
    let kallsyms = Kallsyms::load();
    tracing::debug!("/proc/kallsyms read in {:.1?}", started.elapsed());
    kallsyms
        .inspect_err(|err| tracing::warn!("{err}; call sites cannot be resolved"))
        .ok()
}

/// Where calibration's function addresses come from at load.
struct Symbols<'a> {
    /// This boot's cached functions, unverified.
    cached: Option<symbols::KnownFunctions>,
    /// Reading /proc/kallsyms, when nothing was cached.
    thread: Option<std::thread::JoinHandle<Option<Kallsyms>>>,
    cache: Option<symbols::Cache>,
    /// Where a full read is kept for naming call sites later.
    kallsyms: &'a std::sync::OnceLock<Option<Kallsyms>>,
}

type Calibrated = Result<(calibrate::Slots, Option<calibrate::Slots>), CalibrateError>;

impl Symbols<'_> {
    /// Calibrates with the cached functions; when they find no slots (a
    /// stale or wrong cache), or nothing was cached, with /proc/kallsyms,
    /// whose functions are then cached once calibration has confirmed them.
    fn calibrate(
        mut self,
        ebpf: &mut Ebpf,
        btf: &aya::Btf,
        backend: Backend,
        phases: &mut Phases,
    ) -> (Option<symbols::KnownFunctions>, Calibrated) {
        if let Some(known) = self.cached.take() {
            phases.mark("cached functions");
            let slots = calibrate::calibrate(ebpf, btf, &known, backend);
            phases.mark("calibration");
            if !matches!(slots, Err(CalibrateError::NoSlots(_))) {
                return (Some(known), slots);
            }
            tracing::debug!(
                "the cached kernel functions did not calibrate: reading /proc/kallsyms"
            );
        }
        let read = match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                tracing::warn!("reading /proc/kallsyms panicked; call sites cannot be resolved");
                None
            }),
            None => read_kallsyms(),
        };
        phases.mark("kallsyms");
        let known = read.as_ref().map(symbols::KnownFunctions::from_kallsyms);
        let _ = self.kallsyms.set(read);
        let Some(known) = known else {
            return (None, Err(CalibrateError::NoKallsyms));
        };
        let slots = calibrate::calibrate(ebpf, btf, &known, backend);
        phases.mark("calibration");
        if slots.is_ok()
            && let Some(cache) = &self.cache
        {
            cache.store(&known);
        }
        (Some(known), slots)
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
    pub fn drop_in_background(mut self) {
        let holder = attach::Holder::fork(&|_, target| attach::is_link(target));
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
        attach::detach_concurrently(&mut self.ebpf, attached);
    }
}

/// How long each phase of something took, logged at debug level.
pub struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
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

/// Offset of the syscall number in `struct pt_regs` (arch ABI, not a kernel
/// struct layout that changes between builds).
#[cfg(target_arch = "x86_64")]
const SYSCALL_NR_OFFSET: Option<u32> = Some(15 * 8); // orig_ax
#[cfg(target_arch = "aarch64")]
const SYSCALL_NR_OFFSET: Option<u32> = Some(35 * 8); // syscallno
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYSCALL_NR_OFFSET: Option<u32> = None;

/// Kernels from 5.11 account BPF memory to the memory cgroup; older ones
/// need RLIMIT_MEMLOCK raised. Root here lacks CAP_SYS_RESOURCE, so failure
/// is expected and harmless on new kernels.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The process lifecycle hooks, by program and tracepoint.
const PROCESS_HOOKS: [(&str, &str); 3] = [
    (names::PROG_EXEC, "sched_process_exec"),
    (names::PROG_FORK, "sched_process_fork"),
    (names::PROG_EXIT, "sched_process_exit"),
];

/// Process lifecycle hooks for the runtime-setup/workload split. Without
/// them container profiles would count runtime setup as the workload's, so
/// failures are loud, but `capprof run` does not need them.
fn attach_process_hooks(ebpf: &mut Ebpf, loaded: &mut attach::Loaded) -> Vec<Attached> {
    let mut attached = vec![];
    for (name, tracepoint) in PROCESS_HOOKS {
        match attach::attach_loaded(ebpf, loaded, name, Hook::TpBtf(tracepoint)) {
            Ok(link) => attached.push(link),
            Err(err) => tracing::warn!(
                "cannot attach {name} to {tracepoint}: {err}; runtime setup will not be told apart"
            ),
        }
    }
    attached
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

/// Attaches the backend's program(s). A kernel that refuses fexit, kprobe
/// or lsm lacks the backend (exit 2); the tracepoint was already checked in
/// BTF, so its refusal is a capprof bug.
fn attach_backend(
    ebpf: &mut Ebpf,
    loaded: &mut attach::Loaded,
    backend: Backend,
) -> Result<Vec<Attached>, ObserverError> {
    let unavailable = |e: AttachError| match e {
        AttachError::Program { .. } if backend != Backend::TpBtf => {
            ObserverError::BackendUnavailable {
                backend,
                reason: Unavailable::Refused(e),
            }
        }
        e => ObserverError::Attach(e),
    };
    backend_programs(backend)
        .iter()
        .map(|&(name, hook)| attach::attach_loaded(ebpf, loaded, name, hook).map_err(unavailable))
        .collect()
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
