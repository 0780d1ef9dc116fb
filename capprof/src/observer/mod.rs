//! Loading, configuring and reading the kernel side.
//!
//! One `Observer` owns the loaded `Ebpf` object. It picks a backend from
//! what the running kernel offers (`COMPAT`), calibrates call-site
//! classification for the tracepoint, and exposes the aggregation maps.

pub mod btf;
pub mod calibrate;
pub mod events;
pub mod pin;
pub mod prog_stats;
pub mod reader;

use std::{
    fmt,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, FExit, KProbe, Lsm, ProgramError,
        kprobe::KProbeError,
        links::{FdLink, PinnedLink},
    },
};
use btf::KernelBtf;
use capprof_common::{
    check::{CheckKey, CheckStats, HotCache, generations, stat},
    config::{CALIB_SAMPLES, CalibSample, Config},
    names,
};

use crate::{kallsyms::Kallsyms, profile::Class};

/// The eBPF object built by build.rs through aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capprof"));

/// How capprof hooks `cap_capable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// BTF tracepoint `capability:cap_capable` (Linux 6.14+); call-site classification.
    TpBtf,
    /// fexit on `cap_capable()` (BPF trampolines); classification from `opts`.
    Fexit,
    /// kprobe + kretprobe on `cap_capable()`; classification from `opts`.
    Kprobe,
    /// BPF-LSM `capable` hook; classification from `opts`. Opt-in: it only
    /// sees checks the capability LSM granted, so `denied` stays empty.
    Lsm,
}

impl Backend {
    /// The classes of checks this backend cannot see on any kernel, which
    /// profiles report as `unobservable`. The BPF-LSM hook runs inside
    /// `security_capable()` after commoncap's `cap_capable`, and only when
    /// that granted the check; the advisory mmap probe calls `cap_capable`
    /// directly and never reaches `security_capable()` at all.
    pub fn unobservable(self) -> &'static [Class] {
        match self {
            Backend::TpBtf | Backend::Fexit | Backend::Kprobe => &[],
            Backend::Lsm => &[Class::Denied, Class::Advisory],
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Backend::TpBtf => "tp_btf",
            Backend::Fexit => "fexit",
            Backend::Kprobe => "kprobe",
            Backend::Lsm => "lsm",
        })
    }
}

/// The backends in order of preference, with what each needs
/// (after kunai's compat.rs). `lsm` comes last and is never chosen by
/// itself: it cannot see refused checks, and any kernel with the BPF LSM has
/// the trampolines fexit needs, and fexit sees everything it sees.
pub const COMPAT: &[(Backend, &str, &str)] = &[
    (
        Backend::TpBtf,
        "6.14",
        "the capability:cap_capable tracepoint in BTF",
    ),
    (
        Backend::Fexit,
        "5.5",
        "BPF trampolines and cap_capable in BTF",
    ),
    (Backend::Kprobe, "4.17", "CONFIG_KPROBES"),
    (
        Backend::Lsm,
        "5.7",
        "`bpf` in the active LSMs; only with --backend lsm, sees granted checks only",
    ),
];

/// The active LSMs, in order, from securityfs.
pub const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// Whether the BPF LSM is active: `Err` says why it cannot be used.
pub fn bpf_lsm_active() -> Result<(), String> {
    match std::fs::read_to_string(LSM_LIST) {
        Ok(list) if list.trim().split(',').any(|m| m == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "the BPF LSM is not active ({LSM_LIST} lists {}; boot with `bpf` in lsm=)",
            list.trim()
        )),
        Err(e) => Err(format!(
            "cannot read {LSM_LIST} to see whether the BPF LSM is active ({e}; is securityfs mounted?)"
        )),
    }
}

/// The first backend this kernel appears to offer. fexit and kprobe
/// support can only be known by trying, which `Observer::load` does.
/// `lsm` is only ever forced (see `COMPAT`).
pub fn choose_backend(kernel: &KernelBtf) -> (Backend, &'static str) {
    if kernel.has_cap_tracepoint {
        (Backend::TpBtf, "the cap_capable tracepoint exists")
    } else if kernel.has_cap_capable_func {
        (
            Backend::Fexit,
            "no cap_capable tracepoint (before 6.14); cap_capable is in BTF",
        )
    } else {
        (
            Backend::Kprobe,
            "neither the tracepoint nor cap_capable in BTF",
        )
    }
}

/// How checks are classified with the chosen backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// Calibrated call-site reads (tracepoint).
    CallSite { caller_slot: u32, outer_slot: u32 },
    /// The hook's `opts` argument (fexit, kprobe), with calibrated call
    /// sites to tell the advisory probes apart when they could be found.
    Opts { call_site: Option<calibrate::Slots> },
    /// Calibration failed: every check counts as audited.
    Uncalibrated(String),
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classification::CallSite { .. } => f.write_str("call-site"),
            Classification::Opts { .. } => f.write_str("opts"),
            Classification::Uncalibrated(_) => f.write_str("uncalibrated"),
        }
    }
}

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
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object lacks {0}")]
    Missing(&'static str),
    #[error("backend {backend} is not available on this kernel: {reason}")]
    BackendUnavailable { backend: Backend, reason: String },
    #[error(transparent)]
    Pin(#[from] pin::PinError),
    #[error("{0}")]
    Internal(String),
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

fn program_err(name: &'static str) -> impl FnOnce(ProgramError) -> ObserverError {
    move |source| ObserverError::Program { name, source }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> ObserverError {
    move |source| ObserverError::Map { name, source }
}

/// Health counters of the kernel side, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub ringbuf_lost: u64,
    pub counts_full: u64,
    pub unclassified: u64,
    pub cgroup_events_lost: u64,
    /// Pending checks flushed after their counter was drained (they had
    /// been read from `HOT`, so they are not lost). Should stay 0.
    pub pending_dropped: u64,
    /// Runs of capprof's programs the kernel skipped because the program
    /// was already running on that CPU (`bpf_prog_info.recursion_misses`,
    /// summed over this load's programs): checks nobody counted. None when
    /// the kernel does not say (before 5.12).
    pub recursion_misses: Option<u64>,
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
    pub pin_bpffs: Option<std::path::PathBuf>,
}

/// An attached program's link, kept to be pinned.
enum Attached {
    TpBtf(&'static str, aya::programs::tp_btf::BtfTracePointLinkId),
    Fexit(&'static str, aya::programs::fexit::FExitLinkId),
    Kprobe(&'static str),
    Lsm(&'static str, aya::programs::lsm::LsmLinkId),
}

pub struct Observer {
    ebpf: Ebpf,
    backend: Backend,
    classification: Classification,
    kallsyms: Option<Kallsyms>,
    load_time: Duration,
    attached: Vec<Attached>,
    pin_dir: Option<std::path::PathBuf>,
    /// Whether compatible pins of an earlier run were reused.
    reused_pins: bool,
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
        // Reading /proc/kallsyms costs ~50 ms of kernel time: let it run
        // while BTF is parsed and the object is loaded.
        let kallsyms = std::thread::Builder::new()
            .name("kallsyms".into())
            .spawn(|| {
                let started = Instant::now();
                let kallsyms = Kallsyms::load();
                tracing::debug!("/proc/kallsyms read in {:.1?}", started.elapsed());
                kallsyms
            })
            .map_err(|e| ObserverError::Internal(format!("cannot start a thread: {e}")))?;
        let mut reused_pins = false;
        let pin_dir = match &options.pin_bpffs {
            Some(bpffs) => {
                pin::ensure_bpffs(bpffs)?;
                let dir = pin::pin_dir(bpffs);
                let object = aya_obj::Object::parse(OBJECT).map_err(|e| {
                    ObserverError::Internal(format!("cannot parse the eBPF object: {e}"))
                })?;
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
        let map_pins: Vec<(&'static str, std::path::PathBuf)> = match &pin_dir {
            Some(dir) => pin::PINNED_MAPS
                .iter()
                .map(|n| (*n, pin::map_path(dir, n)))
                .collect(),
            None => vec![],
        };
        let mut phases = Phases::new(started);
        let btf_data = btf::read_vmlinux()?;
        let kernel = KernelBtf::parse(&btf_data)?;
        phases.mark("kernel btf");
        let backend = backend.unwrap_or_else(|| choose_backend(&kernel).0);
        if backend == Backend::TpBtf && !kernel.has_cap_tracepoint {
            return Err(ObserverError::BackendUnavailable {
                backend,
                reason: "the capability:cap_capable tracepoint needs Linux 6.14+".into(),
            });
        }
        if backend == Backend::Lsm {
            bpf_lsm_active()
                .map_err(|reason| ObserverError::BackendUnavailable { backend, reason })?;
        }
        let tgid = std::process::id();
        // Parse the kernel's BTF once for the loader and the attaches.
        let btf = aya::Btf::parse(&btf_data, aya::Endianness::default())
            .map_err(|e| btf::BtfError(e.to_string()))?;
        drop(btf_data);
        phases.mark("aya btf");
        let mut loader = EbpfLoader::new();
        phases.mark("loader"); // EbpfLoader::new parses the BTF once more.
        loader.btf(Some(&btf));
        loader
            .override_global("CAPPROF_TGID", &tgid, true)
            .override_global("CALIBRATE_TGID", &tgid, true);
        for (name, path) in &map_pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        phases.mark("object");
        let kallsyms = match kallsyms.join() {
            Ok(Ok(k)) => Some(k),
            Ok(Err(err)) => {
                tracing::warn!("{err}; call sites cannot be resolved");
                None
            }
            Err(_) => {
                tracing::warn!("reading /proc/kallsyms panicked; call sites cannot be resolved");
                None
            }
        };

        let mut config = Config::empty();
        config.syscall_nr_offset = SYSCALL_NR_OFFSET.unwrap_or(u32::MAX);
        config.task_tgid_offset = kernel.task_tgid_offset.unwrap_or(u32::MAX);
        config.binprm_filename_offset = kernel.binprm_filename_offset.unwrap_or(u32::MAX);
        config.cgroup_name = kernel
            .cgroup_name
            .unwrap_or(capprof_common::config::CgroupNameOffsets::unknown());
        config.creds = kernel.creds.unwrap_or_else(|| {
            tracing::warn!(
                "this kernel's BTF lacks task_struct.real_cred, cred.user_ns or user_namespace's \
                 level and parent: checks made with borrowed credentials (overlayfs copy-up) \
                 will count as the workload's own"
            );
            capprof_common::config::CredOffsets::unknown()
        });
        phases.mark("kallsyms");
        let ranges = kallsyms.as_ref().map(calibrate::ranges).unwrap_or_default();
        // Every backend calibrates the call-site slots: the tracepoint needs
        // them for every class, fexit and kprobe to tell advisory probes
        // from other NOAUDIT checks, and all of them to name call sites.
        let slots = match &kallsyms {
            Some(k) => calibrate_slots(&mut ebpf, &btf, k, backend),
            None => Err(CalibrateError::Failed("no /proc/kallsyms".to_owned())),
        };
        // The calibration program is the backend's own program type on the
        // same hook: when the kernel refuses it, it refuses the backend.
        let slots = match slots {
            Err(CalibrateError::Refused(reason)) => {
                return Err(ObserverError::BackendUnavailable { backend, reason });
            }
            Err(CalibrateError::Failed(reason)) => Err(reason),
            Ok(slots) => Ok(slots),
        };
        phases.mark("calibration");
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
                .ok_or(ObserverError::Missing(names::CONFIG))?,
        )
        .map_err(map_err(names::CONFIG))?;
        config_map
            .set(0, config, 0)
            .map_err(map_err(names::CONFIG))?;

        // The backend first. Calibration has just left the tracepoint, and
        // the next first attach to any tracepoint waits out an RCU grace
        // period after that (kernel/tracepoint.c, its 1->0->1 transition
        // sync): the backend's verification lets the period pass, the process
        // hooks' short one did not (a 6-19 ms wait here).
        let backend_link = attach_backend(&mut ebpf, &btf, backend)?;
        phases.mark("backend");
        let mut attached = attach_process_hooks(&mut ebpf, &btf);
        attached.push(backend_link);
        phases.mark("process hooks");
        phases.log();
        let mut observer = Self {
            ebpf,
            backend,
            classification,
            kallsyms,
            load_time: started.elapsed(),
            attached,
            pin_dir,
            reused_pins,
        };
        observer.pin_links()?;
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
            let (name, link): (&str, FdLink) = match attached {
                Attached::TpBtf(name, id) => {
                    let prog: &mut BtfTracePoint = self
                        .ebpf
                        .program_mut(name)
                        .ok_or(ObserverError::Missing(names::PROG_TP_BTF))?
                        .try_into()
                        .map_err(program_err(names::PROG_TP_BTF))?;
                    (
                        name,
                        prog.take_link(id)
                            .map_err(program_err(names::PROG_TP_BTF))?
                            .into(),
                    )
                }
                Attached::Fexit(name, id) => {
                    let prog: &mut FExit = self
                        .ebpf
                        .program_mut(name)
                        .ok_or(ObserverError::Missing(names::PROG_FEXIT))?
                        .try_into()
                        .map_err(program_err(names::PROG_FEXIT))?;
                    (
                        name,
                        prog.take_link(id)
                            .map_err(program_err(names::PROG_FEXIT))?
                            .into(),
                    )
                }
                Attached::Lsm(name, id) => {
                    let prog: &mut Lsm = self
                        .ebpf
                        .program_mut(name)
                        .ok_or(ObserverError::Missing(names::PROG_LSM))?
                        .try_into()
                        .map_err(program_err(names::PROG_LSM))?;
                    (
                        name,
                        prog.take_link(id)
                            .map_err(program_err(names::PROG_LSM))?
                            .into(),
                    )
                }
                Attached::Kprobe(name) => {
                    tracing::warn!(
                        "{name}: kprobe links are not pinned; checks made while the daemon is down are lost"
                    );
                    continue;
                }
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
            link.pin(&path).map_err(|e| {
                ObserverError::Internal(format!("cannot pin {}: {e}", path.display()))
            })?;
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether the kernel would take `backend` too: loads (without
    /// attaching) its calibration program, the same program type on the same
    /// hook, and unloads it. For `capprof doctor`; `Err` is the refusal.
    pub fn probe_backend(&mut self, backend: Backend) -> Result<(), String> {
        if backend == Backend::Lsm {
            bpf_lsm_active()?;
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let prog = self
            .ebpf
            .program_mut(calibration_program(backend))
            .ok_or("no such program")?;
        let result = match backend {
            Backend::TpBtf => <&mut BtfTracePoint>::try_from(prog).and_then(|p| {
                p.load(names::TRACEPOINT_NAME, &btf)
                    .and_then(|()| p.unload())
            }),
            Backend::Fexit => <&mut FExit>::try_from(prog)
                .and_then(|p| p.load(names::HOOK_FUNCTION, &btf).and_then(|()| p.unload())),
            Backend::Kprobe => {
                <&mut KProbe>::try_from(prog).and_then(|p| p.load().and_then(|()| p.unload()))
            }
            Backend::Lsm => <&mut Lsm>::try_from(prog)
                .and_then(|p| p.load(names::LSM_HOOK, &btf).and_then(|()| p.unload())),
        };
        result.map_err(|e| refusal(&e))
    }

    /// The classes of checks the backend cannot see (profiles' `unobservable`).
    pub fn unobservable(&self) -> Vec<Class> {
        self.backend.unobservable().to_vec()
    }

    pub fn classification(&self) -> &Classification {
        &self.classification
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    pub fn kallsyms(&self) -> Option<&Kallsyms> {
        self.kallsyms.as_ref()
    }

    /// Profiles the subtree rooted at `cgroup_id` in `mode` (`watch::*`).
    pub fn watch(&mut self, cgroup_id: u64, mode: u32) -> Result<(), ObserverError> {
        let mut roots: HashMap<_, u64, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(names::WATCH_ROOTS)
                .ok_or(ObserverError::Missing(names::WATCH_ROOTS))?,
        )
        .map_err(map_err(names::WATCH_ROOTS))?;
        roots
            .insert(cgroup_id, mode, 0)
            .map_err(map_err(names::WATCH_ROOTS))?;
        // Every decision cached so far ("unwatched" below the new root
        // included) is now stale.
        self.bump_watch_generation()
    }

    /// Stops profiling the subtree at `cgroup_id` and forgets the cached
    /// decisions for `ids`.
    pub fn unwatch(&mut self, cgroup_id: u64, ids: &[u64]) -> Result<(), ObserverError> {
        let mut roots: HashMap<_, u64, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(names::WATCH_ROOTS)
                .ok_or(ObserverError::Missing(names::WATCH_ROOTS))?,
        )
        .map_err(map_err(names::WATCH_ROOTS))?;
        let _ = roots.remove(&cgroup_id);
        self.bump_watch_generation()?;
        // aya's HashMap also opens LRU hash maps.
        let mut cache: HashMap<_, u64, u32> = HashMap::try_from(
            self.ebpf
                .map_mut(names::CGROUPS)
                .ok_or(ObserverError::Missing(names::CGROUPS))?,
        )
        .map_err(map_err(names::CGROUPS))?;
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
        let mut generations: Array<_, u32> = Array::try_from(
            self.ebpf
                .map_mut(names::GENERATION)
                .ok_or(ObserverError::Missing(names::GENERATION))?,
        )
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
            .ok_or(ObserverError::Missing(names::EVENTS))?;
        RingBuf::try_from(map).map_err(map_err(names::EVENTS))
    }

    /// Reads every counter, leaving them in place, with the checks still
    /// pending in each CPU's `HOT` entry added.
    pub fn read_counts(&self) -> Result<Vec<(CheckKey, CheckStats)>, ObserverError> {
        self.read_consistent(|_| true)
    }

    /// Reads and deletes the counters of the cgroups `wanted` selects. Every
    /// CPU flushes its pending checks first, so that none is left behind
    /// to be added to a counter that is gone.
    pub fn drain_counts(
        &mut self,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Vec<(CheckKey, CheckStats)>, ObserverError> {
        flush_pending();
        let out = self.read_consistent(&wanted)?;
        let mut counts: HashMap<_, CheckKey, CheckStats> = HashMap::try_from(
            self.ebpf
                .map_mut(names::COUNTS)
                .ok_or(ObserverError::Missing(names::COUNTS))?,
        )
        .map_err(map_err(names::COUNTS))?;
        for (key, _) in &out {
            let _ = counts.remove(key);
        }
        Ok(out)
    }

    /// `COUNTS` for the `wanted` cgroups plus what is pending in `HOT`, read
    /// so that no flush falls between the two reads: `HOT` is read before
    /// and after `COUNTS`, and the read is retried when a CPU flushed in
    /// between. A counter that keeps flushing (a live, busy one) may after
    /// three tries be off by one flush; a finished cgroup's never is.
    fn read_consistent(
        &self,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Vec<(CheckKey, CheckStats)>, ObserverError> {
        let counts: HashMap<_, CheckKey, CheckStats> = HashMap::try_from(
            self.ebpf
                .map(names::COUNTS)
                .ok_or(ObserverError::Missing(names::COUNTS))?,
        )
        .map_err(map_err(names::COUNTS))?;
        let hot: PerCpuArray<_, HotCache> = PerCpuArray::try_from(
            self.ebpf
                .map(names::HOT)
                .ok_or(ObserverError::Missing(names::HOT))?,
        )
        .map_err(map_err(names::HOT))?;
        let read_hot = || -> Result<Vec<HotCache>, ObserverError> {
            Ok(hot
                .get(&0, 0)
                .map_err(map_err(names::HOT))?
                .iter()
                .copied()
                .collect())
        };
        let mut attempt = 0;
        loop {
            let before = read_hot()?;
            let mut out: std::collections::HashMap<CheckKey, CheckStats> = counts
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, _)| wanted(k.cgroup_id))
                .collect();
            let after = read_hot()?;
            attempt += 1;
            let flushed = before
                .iter()
                .zip(&after)
                .any(|(b, a)| b.pend_seq != a.pend_seq);
            if flushed && attempt < 3 {
                continue;
            }
            let pending = after
                .iter()
                .flat_map(|h| h.pend_key.iter().zip(h.pend_count))
                .filter(|(key, n)| *n > 0 && wanted(key.cgroup_id));
            for (key, n) in pending {
                // A pending key always has its counter (it was armed by a
                // check counted there); one that is gone was drained.
                if let Some(stats) = out.get_mut(key) {
                    stats.count += n;
                }
            }
            return Ok(out.into_iter().collect());
        }
    }

    pub fn kernel_stats(&self) -> Result<KernelStats, ObserverError> {
        let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::STATS)
                .ok_or(ObserverError::Missing(names::STATS))?,
        )
        .map_err(map_err(names::STATS))?;
        let sum = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(KernelStats {
            ringbuf_lost: sum(stat::RINGBUF_LOST),
            counts_full: sum(stat::COUNTS_FULL),
            unclassified: sum(stat::UNCLASSIFIED),
            cgroup_events_lost: sum(stat::CGROUP_EVENTS_LOST),
            pending_dropped: sum(stat::PENDING_DROPPED),
            recursion_misses: self.recursion_misses(),
        })
    }

    /// `recursion_misses` summed over the programs this load keeps in the
    /// kernel (the backend's and the process hooks'); None when the kernel
    /// reports it for none of them.
    pub fn recursion_misses(&self) -> Option<u64> {
        names::ALL_PROGRAMS
            .iter()
            .filter_map(|name| self.ebpf.program(name)?.fd().ok())
            .filter_map(|fd| {
                use std::os::fd::AsFd as _;
                prog_stats::recursion_misses(fd.as_fd()).ok().flatten()
            })
            .reduce(|a, b| a + b)
    }
}

/// Makes every CPU this thread may run on flush the checks pending in its
/// `HOT` entry (of every capprof object loaded): the thread moves to each
/// CPU in turn and makes one capability check there (a `setuid` to its own
/// uid, which changes nothing). The check comes from capprof's cgroup, not
/// the one the pending checks came from, and a change of cgroup flushes.
/// CPUs this thread may not run on keep theirs; readers add those.
pub fn flush_pending() {
    // SAFETY: plain syscalls on this thread with valid cpu_set_t buffers.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let uid = libc::getuid();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if !libc::CPU_ISSET(cpu, &allowed) {
                continue;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) == 0 {
                // The raw syscall: glibc's setuid() would run it on every
                // thread of the process.
                libc::syscall(libc::SYS_setuid, uid);
            }
        }
        libc::sched_setaffinity(0, size, &allowed);
    }
}

/// Where load time goes, logged at debug level (`CAPPROF_LOG=debug`).
struct Phases {
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn new(started: Instant) -> Self {
        Self {
            last: started,
            done: vec![],
        }
    }

    /// Ends the phase called `name`, which began at the previous mark.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.done.push((name, now - self.last));
        self.last = now;
    }

    fn log(&self) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let shown: Vec<String> = self
                .done
                .iter()
                .map(|(name, d)| format!("{name} {d:.1?}"))
                .collect();
            tracing::debug!("load phases: {}", shown.join(", "));
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

/// The load-time calibration program of each backend (calibrate.rs).
fn calibration_program(backend: Backend) -> &'static str {
    match backend {
        Backend::TpBtf => names::PROG_CALIBRATE,
        Backend::Fexit => names::PROG_CALIBRATE_FEXIT,
        Backend::Kprobe => names::PROG_CALIBRATE_KPROBE,
        Backend::Lsm => names::PROG_CALIBRATE_LSM,
    }
}

/// Why calibration gave no slots.
#[derive(Debug)]
enum CalibrateError {
    /// The kernel refused to load or attach the calibration program.
    Refused(String),
    /// It ran, but the slots could not be found.
    Failed(String),
}

fn calibrate_slots(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    kallsyms: &Kallsyms,
    backend: Backend,
) -> Result<(calibrate::Slots, Option<calibrate::Slots>), CalibrateError> {
    let prog = ebpf
        .program_mut(calibration_program(backend))
        .ok_or_else(|| CalibrateError::Failed("no calibration program".to_owned()))?;
    // Loads and attaches the calibration program, triggers the known checks,
    // and detaches it.
    let ran = (|| -> Result<(), ProgramError> {
        match backend {
            // Two layouts, two passes: see calibrate_tracepoint.
            Backend::TpBtf => return Ok(()),
            Backend::Fexit => {
                let prog: &mut FExit = prog.try_into()?;
                prog.load(names::HOOK_FUNCTION, btf)?;
                let link = prog.attach()?;
                calibrate::trigger_probes();
                prog.detach(link)?;
                let _ = prog.unload();
            }
            Backend::Kprobe => {
                let prog: &mut KProbe = prog.try_into()?;
                prog.load()?;
                let link = prog.attach(names::HOOK_FUNCTION, 0)?;
                calibrate::trigger_probes();
                prog.detach(link)?;
                let _ = prog.unload();
            }
            Backend::Lsm => {
                let prog: &mut Lsm = prog.try_into()?;
                prog.load(names::LSM_HOOK, btf)?;
                let link = prog.attach()?;
                calibrate::trigger_probes();
                prog.detach(link)?;
                let _ = prog.unload();
            }
        }
        Ok(())
    })();
    ran.map_err(|e| CalibrateError::Refused(refusal(&e)))?;
    if backend == Backend::TpBtf {
        return calibrate_tracepoint(ebpf, btf, kallsyms);
    }
    let samples = calibration_samples(ebpf)?;
    log_samples(backend, &samples);
    let slots = calibrate::find_slots(&samples, kallsyms)
        .map_err(|e| CalibrateError::Failed(e.to_string()))?;
    Ok((slots, None))
}

/// The tracepoint calls a lone program directly, but two or more through an
/// iterator with a frame of its own, which moves the return addresses. Other
/// tools (another capprof, bpftrace) come and go, so both layouts are
/// calibrated: once with the calibration program as found, once with an
/// empty program attached next to it. Returns the slots as found and, when
/// they differ, the other layout's.
fn calibrate_tracepoint(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    kallsyms: &Kallsyms,
) -> Result<(calibrate::Slots, Option<calibrate::Slots>), CalibrateError> {
    fn tracepoint<'a>(
        ebpf: &'a mut Ebpf,
        name: &str,
    ) -> Result<&'a mut BtfTracePoint, CalibrateError> {
        ebpf.program_mut(name)
            .ok_or_else(|| CalibrateError::Failed(format!("no program {name}")))?
            .try_into()
            .map_err(|e: ProgramError| CalibrateError::Failed(e.to_string()))
    }
    let refused = |e: ProgramError| CalibrateError::Refused(refusal(&e));
    let prog = tracepoint(ebpf, names::PROG_CALIBRATE)?;
    prog.load(names::TRACEPOINT_NAME, btf).map_err(refused)?;
    let link = prog.attach().map_err(refused)?;
    calibrate::trigger_probes();
    let first = calibration_samples(ebpf);

    let spacer = tracepoint(ebpf, names::PROG_BENCH_EMPTY).and_then(|p| {
        p.load(names::TRACEPOINT_NAME, btf)
            .map_err(|e| CalibrateError::Failed(e.to_string()))?;
        p.attach()
            .map_err(|e| CalibrateError::Failed(e.to_string()))
    });
    let second = match &spacer {
        Ok(_) => {
            calibrate::trigger_probes();
            calibration_samples(ebpf).ok()
        }
        Err(e) => {
            tracing::debug!("no second tracepoint layout: {e:?}");
            None
        }
    };
    if let (Ok(spacer_link), Ok(p)) = (spacer, tracepoint(ebpf, names::PROG_BENCH_EMPTY)) {
        let _ = p.detach(spacer_link);
        let _ = p.unload();
    }
    if let Ok(p) = tracepoint(ebpf, names::PROG_CALIBRATE) {
        let _ = p.detach(link);
        let _ = p.unload();
    }

    let first = first?;
    log_samples(Backend::TpBtf, &first);
    let slots = calibrate::find_slots(&first, kallsyms)
        .map_err(|e| CalibrateError::Failed(e.to_string()))?;
    // The second pass's samples follow the first's in `CALIB`.
    let other = second
        .and_then(|all| all.get(first.len()..).map(<[_]>::to_vec))
        .and_then(|s| calibrate::find_slots(&s, kallsyms).ok())
        .filter(|other| *other != slots)
        // Both passes in the iterator layout: another program was already
        // attached. Work out the direct one from the iterator's frame.
        .or_else(|| calibrate::direct_layout(&first, kallsyms, slots));
    tracing::debug!("tracepoint slots {slots:?}, other layout {other:?}");
    Ok((slots, other))
}

fn calibration_samples(ebpf: &Ebpf) -> Result<Vec<CalibSample>, CalibrateError> {
    let calib: Array<_, CalibSample> = ebpf
        .map(names::CALIB)
        .ok_or_else(|| CalibrateError::Failed("no calibration map".to_owned()))
        .and_then(|m| Array::try_from(m).map_err(|e| CalibrateError::Failed(e.to_string())))?;
    // Samples are written in order, so the filled ones are a prefix.
    Ok((0..CALIB_SAMPLES)
        .filter_map(|i| calib.get(&i, 0).ok())
        .take_while(|s| s.words.iter().any(|w| *w != 0))
        .collect())
}

fn log_samples(backend: Backend, samples: &[CalibSample]) {
    tracing::debug!(
        "{backend} calibration: {} samples, {} of the audited probe, {} of the advisory one",
        samples.len(),
        samples
            .iter()
            .filter(|s| s.cap == calibrate::PROBE_CAP)
            .count(),
        samples
            .iter()
            .filter(|s| s.cap == calibrate::ADVISORY_CAP)
            .count(),
    );
}

/// Process lifecycle hooks for the runtime-setup/workload split. Without
/// them container profiles would count runtime setup as the workload's, so
/// failures are loud, but `capprof run` does not need them.
fn attach_process_hooks(ebpf: &mut Ebpf, btf: &aya::Btf) -> Vec<Attached> {
    let mut attached = vec![];
    for (name, tracepoint) in [
        (names::PROG_EXEC, "sched_process_exec"),
        (names::PROG_FORK, "sched_process_fork"),
        (names::PROG_EXIT, "sched_process_exit"),
    ] {
        let result = (|| -> Result<_, ProgramError> {
            let Some(prog) = ebpf.program_mut(name) else {
                return Err(ProgramError::NotLoaded);
            };
            let prog: &mut BtfTracePoint = prog.try_into()?;
            prog.load(tracepoint, btf)?;
            prog.attach()
        })();
        match result {
            Ok(id) => attached.push(Attached::TpBtf(name, id)),
            Err(err) => tracing::warn!(
                "cannot attach {name} to {tracepoint}: {err}; runtime setup will not be told apart"
            ),
        }
    }
    attached
}

/// Why the kernel refused a program, in one line.
fn refusal(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            match log.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
                Some(last) => format!("the verifier refused the program ({io_error}): {last}"),
                None => format!("the kernel refused to load the program: {io_error}"),
            }
        }
        ProgramError::KProbeError(KProbeError::FileError { filename, io_error }) => {
            format!(
                "kprobes are not available ({}: {io_error})",
                filename.display()
            )
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

fn attach_backend(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    backend: Backend,
) -> Result<Attached, ObserverError> {
    let unavailable = |e: ProgramError| ObserverError::BackendUnavailable {
        backend,
        reason: refusal(&e),
    };
    match backend {
        Backend::TpBtf => {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(names::PROG_TP_BTF)
                .ok_or(ObserverError::Missing(names::PROG_TP_BTF))?
                .try_into()
                .map_err(program_err(names::PROG_TP_BTF))?;
            prog.load(names::TRACEPOINT_NAME, btf)
                .map_err(program_err(names::PROG_TP_BTF))?;
            let id = prog.attach().map_err(program_err(names::PROG_TP_BTF))?;
            Ok(Attached::TpBtf(names::PROG_TP_BTF, id))
        }
        Backend::Fexit => {
            let prog: &mut FExit = ebpf
                .program_mut(names::PROG_FEXIT)
                .ok_or(ObserverError::Missing(names::PROG_FEXIT))?
                .try_into()
                .map_err(program_err(names::PROG_FEXIT))?;
            prog.load(names::HOOK_FUNCTION, btf).map_err(unavailable)?;
            let id = prog.attach().map_err(unavailable)?;
            Ok(Attached::Fexit(names::PROG_FEXIT, id))
        }
        Backend::Kprobe => {
            // The return probe first: kprobe handlers registered later run
            // first, so the entry probe reads the caller's return address
            // before the kretprobe replaces it with its trampoline.
            for (name, _) in [(names::PROG_KRETPROBE, ()), (names::PROG_KPROBE, ())] {
                let prog: &mut KProbe = ebpf
                    .program_mut(name)
                    .ok_or(ObserverError::Missing(name))?
                    .try_into()
                    .map_err(program_err(name))?;
                prog.load().map_err(unavailable)?;
                prog.attach(names::HOOK_FUNCTION, 0).map_err(unavailable)?;
            }
            Ok(Attached::Kprobe(names::PROG_KPROBE))
        }
        Backend::Lsm => {
            let prog: &mut Lsm = ebpf
                .program_mut(names::PROG_LSM)
                .ok_or(ObserverError::Missing(names::PROG_LSM))?
                .try_into()
                .map_err(program_err(names::PROG_LSM))?;
            prog.load(names::LSM_HOOK, btf).map_err(unavailable)?;
            let id = prog.attach().map_err(unavailable)?;
            Ok(Attached::Lsm(names::PROG_LSM, id))
        }
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

    #[test]
    fn backend_choice_follows_the_kernel() {
        let tp = KernelBtf {
            has_cap_tracepoint: true,
            has_cap_capable_func: true,
            ..Default::default()
        };
        assert_eq!(choose_backend(&tp).0, Backend::TpBtf);
        let old = KernelBtf {
            has_cap_tracepoint: false,
            ..tp.clone()
        };
        assert_eq!(choose_backend(&old).0, Backend::Fexit);
        let bare = KernelBtf {
            has_cap_capable_func: false,
            ..old
        };
        assert_eq!(choose_backend(&bare).0, Backend::Kprobe);
    }
}
