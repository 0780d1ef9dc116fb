//! `Observer::load_with`, as the steps it takes in order.
//!
//! The order is measured start-up work (`capprof run -- true`): the
//! kallsyms and loader threads run while this thread parses BTF, and every
//! program is verified before the first attach. A step keeps its place.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Instant,
};

use aya::{Ebpf, EbpfLoader, maps::Array, programs::links::PinnedLink};
use capprof_common::{config::Config, names};

use super::{
    Backend, Classification, LoadOptions, LoadPhases, Objects, Observer, ObserverError,
    PROCESS_HOOKS, Unavailable,
    attach::{self, AttachError, Attached, Hook},
    backend_programs, bpf_lsm_active,
    btf::{self, KernelBtf},
    calibrate::{self, CalibrateError},
    choose_backend, hook_programs,
    kallsyms::Kallsyms,
    map_err, pin, preflight, symbols, syscalls,
    warm::{self, Claim, WarmSet},
};

impl Observer {
    /// Loads the object, calibrates, and attaches `options.backend` (or the
    /// best one this kernel offers), pinning under `options.pin_bpffs`.
    pub fn load_with(options: LoadOptions) -> Result<Self, ObserverError> {
        let started = Instant::now();
        preflight()?;
        bump_memlock_rlimit();
        let warm = match Self::start_warm(&options, started) {
            Ok(observer) => return Ok(observer),
            Err(set) => set,
        };
        // The functions calibration needs, from this boot's cache; without
        // one, /proc/kallsyms (~50 ms of kernel time) is read while BTF is
        // parsed and the object is loaded.
        let cache = symbols::Cache::for_this_boot();
        let cached = cache.as_ref().and_then(symbols::Cache::load);
        let kallsyms_thread = match cached {
            Some(_) => None,
            None => Some(spawn_kallsyms()?),
        };
        let pins = Pins::open(options.pin_bpffs.as_deref())?;
        // Pins this load makes are removed again if it fails.
        let mut cleanup = pin::PinGuard {
            dir: pins.dir.clone().filter(|_| !pins.reused),
        };
        let mut phases = LoadPhases::new(started);
        // aya 0.14's `EbpfLoader::new` parses the kernel's BTF by itself
        // (20-45 ms here) and has no way to be handed ours: let it do so on
        // the other core while this thread parses what it needs.
        let new_loader = std::thread::Builder::new()
            .name("loader".into())
            .spawn(EbpfLoader::new);
        let btf_data = btf::read_vmlinux()?;
        let kernel = KernelBtf::parse(&btf_data)?;
        phases.mark("kernel btf");
        let backend = options.backend.unwrap_or_else(|| choose_backend(&kernel).0);
        check_backend(backend, &kernel)?;
        // Parse the kernel's BTF once for the loader and the attaches.
        let btf =
            aya::Btf::parse(&btf_data, aya::Endianness::default()).map_err(btf::BtfError::Aya)?;
        drop(btf_data);
        phases.mark("aya btf");
        let target = Target::new(warm.as_ref(), pins.dir.as_deref(), options.sizes);
        let mut ebpf = load_object(new_loader, &btf, &target, &mut phases)?;
        let mut config = kernel_config(&kernel);
        let kallsyms = OnceLock::new();
        let symbols = Symbols {
            cached,
            thread: kallsyms_thread,
            cache,
            kallsyms: &kallsyms,
        };
        let (known, slots) = symbols.calibrate(&mut ebpf, &btf, backend, &mut phases);
        let classification = classify(backend, slots, known.as_ref(), &mut config)?;
        write_config(&mut ebpf, config)?;
        let mut attached = verify_and_attach(&mut ebpf, &btf, backend, &mut phases)?;
        let mut links = KeptLinks::default();
        if let Some(set) = &warm
            && set.keep(&mut ebpf, backend, &classification, attached.len())
        {
            links = KeptLinks::pin(set, &mut ebpf, &mut attached, backend)?;
            phases.mark("keep warm");
        }
        phases.log("load");
        let mut observer = Self {
            objects: Objects::Loaded(ebpf),
            backend,
            classification,
            kallsyms,
            known,
            load_time: started.elapsed(),
            attached,
            pin_dir: pins.dir,
            reused_pins: pins.reused,
            _pin_lock: pins.lock,
            counts_cache: std::sync::Mutex::new(None),
            warm,
            kept_links: links.pinned,
            linger: links.holder,
            recursion_misses_before: 0,
        };
        observer.pin_links()?;
        cleanup.dir = None;
        Ok(observer)
    }
}

impl Observer {
    /// Starts from the warm set under `options.warm`, when there is a
    /// complete one to reopen. Otherwise the set to make while loading
    /// cold (None: load cold and keep nothing), as `Err`.
    fn start_warm(options: &LoadOptions, started: Instant) -> Result<Self, Option<WarmSet>> {
        let root = options.warm.as_deref().ok_or(None)?;
        let (set, backend) = match WarmSet::claim(root, options.backend) {
            Ok(Claim::Reopen(set, backend)) => (set, backend),
            Ok(Claim::Create(set)) => return Err(Some(set)),
            Err(e) => {
                tracing::debug!("no warm start: {e}");
                return Err(None);
            }
        };
        match reopen(&set, backend, started) {
            Ok(Reopened {
                objects,
                classification,
                known,
                attached,
                links,
            }) => Ok(Self::started_from(Self {
                objects: Objects::Reopened(objects),
                backend,
                classification,
                kallsyms: OnceLock::new(),
                known,
                load_time: started.elapsed(),
                attached,
                pin_dir: None,
                reused_pins: false,
                _pin_lock: None,
                counts_cache: std::sync::Mutex::new(None),
                warm: Some(set),
                kept_links: links.pinned,
                linger: links.holder,
                recursion_misses_before: 0,
            })),
            Err(e) => {
                tracing::warn!("cannot start from the kept programs ({e}): loading them afresh");
                if let Err(e) = set.empty() {
                    tracing::warn!("{e}; keeping nothing");
                    return Err(None);
                }
                Err(Some(set))
            }
        }
    }

    /// A reopened observer, counting its programs' recursion misses from
    /// now on.
    fn started_from(mut self) -> Self {
        self.recursion_misses_before = self.lifetime_recursion_misses().unwrap_or(0);
        self
    }
}

/// What an observer is made of, from a warm set.
struct Reopened {
    objects: warm::Reopened,
    classification: Classification,
    known: Option<symbols::KnownFunctions>,
    attached: Vec<Attached>,
    links: KeptLinks,
}

/// A run's links pinned in its warm set, and the holder that detaches
/// them after the run (see `warm`); empty when they are not pinned.
#[derive(Default)]
struct KeptLinks {
    pinned: Vec<PinnedLink>,
    holder: Option<attach::Holder>,
}

impl KeptLinks {
    /// Pins the links just `attached`, if they all pin, and forks their
    /// holder.
    fn pin(
        set: &WarmSet,
        programs: &mut dyn attach::Programs,
        attached: &mut Vec<Attached>,
        backend: Backend,
    ) -> Result<Self, ObserverError> {
        let pinned = set.pin_links(programs, attached, backend)?;
        Ok(Self::held(set, pinned))
    }

    fn held(set: &WarmSet, pinned: Vec<(&'static str, PinnedLink)>) -> Self {
        if pinned.is_empty() {
            return Self::default();
        }
        let holder = set.hold_links(&pinned);
        Self {
            pinned: pinned.into_iter().map(|(_, link)| link).collect(),
            holder,
        }
    }
}

/// Reopens a complete warm set for `backend`, leaves its maps as a fresh
/// load's, and takes over the links the run before left attached, or
/// attaches as a cold load does, in the same order.
fn reopen(set: &WarmSet, backend: Backend, started: Instant) -> Result<Reopened, ObserverError> {
    let mut phases = LoadPhases::new(started);
    let mut objects = warm::Reopened::open(set, backend)?;
    let config = objects.config()?;
    let classification = warm::classification(&config, backend)?;
    let known = warm::confirmed_functions(&config);
    phases.mark("reopen");
    // No watched cgroup first: links taken over record nothing from here.
    objects.reset()?;
    phases.mark("reset");
    let (attached, links) = match set.adopt_links(&objects.programs, backend)? {
        Some(pinned) => {
            tracing::debug!("took over the links of the run before");
            (vec![], KeptLinks::held(set, pinned))
        }
        None => {
            let mut loaded: attach::AttachResults = objects
                .programs
                .keys()
                .map(|&name| (name, Ok(())))
                .collect();
            let mut attached = attach_backend(&mut objects, &mut loaded, backend)?;
            attached.extend(attach_process_hooks(&mut objects, &mut loaded));
            attached.extend(syscalls::attach(&mut objects, &mut loaded));
            let links = KeptLinks::pin(set, &mut objects, &mut attached, backend)?;
            (attached, links)
        }
    };
    phases.mark("attach");
    tracing::debug!("started warm from {}", set.dir().display());
    phases.log("warm load");
    Ok(Reopened {
        objects,
        classification,
        known,
        attached,
        links,
    })
}

/// The daemon's pin directory, locked, and whether an earlier run's pins
/// in it are reused; all empty when nothing is pinned.
struct Pins {
    dir: Option<PathBuf>,
    reused: bool,
    lock: Option<pin::PinLock>,
}

impl Pins {
    /// Locks and prepares the pin directory under `bpffs`, replacing pins
    /// that another capprof build left and this object cannot reuse.
    fn open(bpffs: Option<&Path>) -> Result<Self, ObserverError> {
        let Some(bpffs) = bpffs else {
            return Ok(Self {
                dir: None,
                reused: false,
                lock: None,
            });
        };
        pin::ensure_bpffs(bpffs)?;
        // Before anything is reused or replaced: another daemon's
        // pins are not ours to touch.
        let lock = pin::lock(bpffs)?;
        pin::check_other_abis(bpffs)?;
        let dir = pin::pin_dir(bpffs);
        let object = aya_obj::Object::parse(super::OBJECT).map_err(ObserverError::Object)?;
        let mut reused = false;
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
            reused = pin::map_path(&dir, names::COUNTS).exists();
        }
        pin::prepare(&dir)?;
        Ok(Self {
            dir: Some(dir),
            reused,
            lock: Some(lock),
        })
    }
}

/// Refuses a backend this kernel lacks before anything is loaded.
fn check_backend(backend: Backend, kernel: &KernelBtf) -> Result<(), ObserverError> {
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
    Ok(())
}

/// What a load makes of the object beside the kernel's BTF.
struct Target {
    /// The maps to pin (or reuse) by path.
    map_pins: Vec<(&'static str, PathBuf)>,
    /// The tgid whose checks the programs leave out (0: none).
    own_tgid: u32,
    sizes: super::MapSizes,
}

impl Target {
    /// Pins for a warm set's maps (all of them) or the daemon's.
    fn new(warm: Option<&WarmSet>, pin_dir: Option<&Path>, sizes: super::MapSizes) -> Self {
        let map_pins = match (warm, pin_dir) {
            (Some(set), _) => set.map_pins(),
            (None, Some(dir)) => pin::PINNED_MAPS
                .iter()
                .map(|n| (*n, pin::map_path(dir, n)))
                .collect(),
            (None, None) => vec![],
        };
        // A warm set's programs serve later runs, with other pids: they
        // leave out no process of their own (a run watches only its
        // command's cgroup, never its own).
        let own_tgid = match warm {
            Some(_) => 0,
            None => std::process::id(),
        };
        Self {
            map_pins,
            own_tgid,
            sizes,
        }
    }
}

/// Loads the object with the loader the `loader` thread made (or a new
/// one if it could not start), given our BTF and the `target`.
fn load_object(
    new_loader: std::io::Result<std::thread::JoinHandle<EbpfLoader<'static>>>,
    btf: &aya::Btf,
    target: &Target,
    phases: &mut LoadPhases,
) -> Result<Ebpf, ObserverError> {
    let tgid = std::process::id();
    let mut loader = match new_loader.map(std::thread::JoinHandle::join) {
        Ok(Ok(loader)) => loader,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => EbpfLoader::new(),
    };
    phases.mark("loader");
    loader.btf(Some(btf));
    loader
        .override_global("CAPPROF_TGID", &target.own_tgid, true)
        .override_global("CALIBRATE_TGID", &tgid, true);
    for (name, path) in &target.map_pins {
        loader.map_pin_path(name, path.as_path());
    }
    for &(name, entries) in target.sizes.overrides() {
        loader.map_max_entries(name, entries);
    }
    let ebpf = loader.load(super::OBJECT)?;
    phases.mark("object");
    Ok(ebpf)
}

/// The config map's kernel layout part: offsets read from this kernel's
/// BTF, `u32::MAX` (or `unknown`) where it lacks them.
fn kernel_config(kernel: &KernelBtf) -> Config {
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
    config
}

/// How checks will be classified, from calibration's outcome, with the
/// slots and function ranges it found written into `config`.
fn classify(
    backend: Backend,
    slots: Calibrated,
    known: Option<&symbols::KnownFunctions>,
    config: &mut Config,
) -> Result<Classification, ObserverError> {
    let ranges = known.map(calibrate::ranges).unwrap_or_default();
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
    Ok(match (backend, slots) {
        (Backend::TpBtf, Ok((slots, other))) => {
            calibrate::apply(config, Some(slots), &ranges);
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
            calibrate::apply(config, Some(slots), &ranges);
            Classification::Opts {
                call_site: Some(slots),
            }
        }
        (_, Err(reason)) => {
            tracing::warn!(
                "call-site calibration failed ({reason}); advisory checks will count as silent"
            );
            calibrate::apply(config, None, &ranges);
            Classification::Opts { call_site: None }
        }
    })
}

/// Writes `config` into the object's config map, before any attach.
fn write_config(ebpf: &mut Ebpf, config: Config) -> Result<(), ObserverError> {
    let mut config_map: Array<_, Config> = Array::try_from(
        ebpf.map_mut(names::CONFIG)
            .ok_or(ObserverError::MissingMap(names::CONFIG))?,
    )
    .map_err(map_err(names::CONFIG))?;
    config_map.set(0, config, 0).map_err(map_err(names::CONFIG))
}

/// Verifies every program, then attaches the backend, the process hooks
/// and the syscall hooks.
///
/// Every program is verified before the first attach. Calibration has
/// just left the tracepoint, and the next first attach to any tracepoint
/// waits out an RCU grace period after that (kernel/tracepoint.c, its
/// 1->0->1 transition sync): the verification lets the period pass (a
/// 6-19 ms wait otherwise).
fn verify_and_attach(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    backend: Backend,
    phases: &mut LoadPhases,
) -> Result<Vec<Attached>, ObserverError> {
    let hooks: Vec<_> = hook_programs().collect();
    let mut loaded = attach::load_concurrently(ebpf, btf, backend_programs(backend), &hooks);
    phases.mark("verify");
    let mut attached = attach_backend(ebpf, &mut loaded, backend)?;
    attached.extend(attach_process_hooks(ebpf, &mut loaded));
    attached.extend(syscalls::attach(ebpf, &mut loaded));
    phases.mark("attach");
    Ok(attached)
}

/// Reads /proc/kallsyms on a thread of its own, beside the rest of loading.
fn spawn_kallsyms() -> Result<std::thread::JoinHandle<Option<Kallsyms>>, ObserverError> {
    std::thread::Builder::new()
        .name("kallsyms".into())
        .spawn(read_kallsyms)
        .map_err(ObserverError::Thread)
}

/// /proc/kallsyms, or None (warned) when it cannot be read.
pub(super) fn read_kallsyms() -> Option<Kallsyms> {
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
        phases: &mut LoadPhases,
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

/// Process lifecycle hooks for the runtime-setup/workload split. Without
/// them container profiles would count runtime setup as the workload's, so
/// failures are loud, but `capprof run` does not need them.
fn attach_process_hooks(
    ebpf: &mut dyn attach::Programs,
    loaded: &mut attach::AttachResults,
) -> Vec<Attached> {
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

/// Attaches the backend's program(s). A kernel that refuses fexit, kprobe
/// or lsm lacks the backend (exit 2); the tracepoint was already checked in
/// BTF, so its refusal is a capprof bug.
fn attach_backend(
    ebpf: &mut dyn attach::Programs,
    loaded: &mut attach::AttachResults,
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
