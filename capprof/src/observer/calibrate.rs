//! Finding, on the running kernel, where the callers' return addresses lie
//! above the hook's context: the analysis of the samples, and the
//! load-time run that takes them.
//!
//! Why: the `cap_capable` tracepoint has no `opts`, so it cannot say whether
//! a check is audited, NOAUDIT or an advisory probe. The call site can. A
//! stack walk per check (`bpf_get_stack`) costs ~1.9 µs, and every mmap makes
//! such a check; two 8-byte reads at known slots cost ~70 ns. The slots
//! depend on the kernel build's frame layout, so they are found here, at
//! load time, by triggering checks whose callers we know and looking for the
//! words that resolve to those callers in /proc/kallsyms. When this fails,
//! the kernel side counts every check as audited: profiles may over-grant
//! (SYS_ADMIN from mmap), never under-grant, and say so.

use aya::{Ebpf, maps::Array};
use capprof_common::{
    check::kind,
    config::{CALIB_SAMPLES, CalibSample, Config, FuncRange, MAX_FUNC_RANGES},
    names,
};

use super::{
    attach::{self, AttachError, Hook},
    backend::Backend,
    symbols::{KnownFunctions, Resolver},
};

/// The function whose call to `cap_capable` every ordinary check goes
/// through; the kind is decided one frame further out.
pub const VIA_SECURITY_CAPABLE: &[&str] = &["security_capable"];

/// Callers of `cap_capable` that only probe (NOAUDIT, no permission
/// decision): the mmap/brk/execve memory accounting check.
pub const ADVISORY: &[&str] = &[
    "security_vm_enough_memory_mm",
    "cap_vm_enough_memory",
    "__vm_enough_memory",
];

/// Callers of `cap_capable` in capset(): its CAP_SETPCAP check on every
/// call, which decides only when the inheritable set grows (`kind::CAPSET`;
/// the capset hook records that case).
pub const CAPSET: &[&str] = &["cap_capset", "cap_inh_is_capped"];

/// Callers of `security_capable` that pass CAP_OPT_NOAUDIT.
pub const NOAUDIT: &[&str] = &[
    "ns_capable_noaudit",
    "has_ns_capability_noaudit",
    "has_capability_noaudit",
    "ptracer_capable",
    "kallsyms_show_value",
];

/// Callers of `security_capable` that audit (CAP_OPT_NONE / INSETID).
pub const AUDIT: &[&str] = &[
    "capable",
    "ns_capable",
    "ns_capable_setid",
    "has_capability",
    "has_ns_capability",
    "file_ns_capable",
    "capable_wrt_inode_uidgid",
    "bpf_token_capable",
    "sk_ns_capable",
    "netlink_ns_capable",
];

/// The capability and trigger of the audited calibration check:
/// lowering a nice value goes `can_nice()` → `capable(CAP_SYS_NICE)`.
pub const PROBE_CAP: u32 = capprof_common::cap::CAP_SYS_NICE;
/// The advisory check: a private writable mmap's memory accounting.
pub const ADVISORY_CAP: u32 = capprof_common::cap::CAP_SYS_ADMIN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CalibrationError {
    #[error("no sample of the CAP_SYS_NICE probe was recorded")]
    NoProbe,
    #[error("no word of the probe's stack resolves to security_capable")]
    NoCallerSlot,
    #[error("the advisory CAP_SYS_ADMIN check's caller is not at slot {0}")]
    NoAdvisory(u32),
    #[error("no word above slot {0} resolves to an audited caller")]
    NoOuterSlot(u32),
}

/// Where the return addresses are, as words above the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    pub caller: u32,
    pub outer: u32,
}

fn resolves_to(kallsyms: &impl Resolver, addr: u64, names: &[&str]) -> bool {
    kallsyms
        .name_at(addr)
        .is_some_and(|name| names.contains(&name))
}

/// Every function calibration and the kernel side look for by name.
pub fn known() -> impl Iterator<Item = &'static str> {
    [VIA_SECURITY_CAPABLE, ADVISORY, CAPSET, NOAUDIT, AUDIT]
        .into_iter()
        .flatten()
        .copied()
        .chain([TRACEPOINT_ITERATOR, capprof_common::names::HOOK_FUNCTION])
}

/// Finds the slots in the samples taken while the probes ran.
pub fn find_slots(
    samples: &[CalibSample],
    kallsyms: &impl Resolver,
) -> Result<Slots, CalibrationError> {
    let probes: Vec<&CalibSample> = samples.iter().filter(|s| s.cap == PROBE_CAP).collect();
    if probes.is_empty() {
        return Err(CalibrationError::NoProbe);
    }
    let n = samples[0].words.len();
    // Slot 0 is a real candidate for the kprobe (its frame is the entry
    // stack pointer, which points at the return address).
    let caller = (0..n)
        .find(|&i| {
            probes
                .iter()
                .any(|s| resolves_to(kallsyms, s.words[i], VIA_SECURITY_CAPABLE))
        })
        .ok_or(CalibrationError::NoCallerSlot)?;
    // The advisory path must put its caller at the same slot, or its checks
    // would be misread. Some builds (Debian's 6.1 and 6.12) inline
    // cap_capable into cap_vm_enough_memory: then no hook sees that probe,
    // and there is nothing to misread.
    let advisory: Vec<&CalibSample> = samples
        .iter()
        .filter(|s| {
            s.cap == ADVISORY_CAP && s.words.iter().any(|w| resolves_to(kallsyms, *w, ADVISORY))
        })
        .collect();
    if !advisory.is_empty()
        && !advisory
            .iter()
            .any(|s| resolves_to(kallsyms, s.words[caller], ADVISORY))
    {
        return Err(CalibrationError::NoAdvisory(caller as u32));
    }
    let outer = (caller + 1..n)
        .find(|&i| {
            probes
                .iter()
                .any(|s| resolves_to(kallsyms, s.words[i], AUDIT))
        })
        .ok_or(CalibrationError::NoOuterSlot(caller as u32))?;
    Ok(Slots {
        caller: caller as u32,
        outer: outer as u32,
    })
    // Note: `caller` may be 0 (kprobe); `Config::calibrated()` then relies
    // on `outer`, which is always above it and so never 0.
}

/// The tracepoint's iterator, which is on the stack only while two or more
/// programs are attached.
pub const TRACEPOINT_ITERATOR: &str = "__traceiter_cap_capable";

/// The slots of the direct layout (one program on the tracepoint), from
/// samples taken in the iterator layout (two or more), for when capprof
/// loads while another tool is attached and that tool later goes away.
/// Between the return address into the iterator and the one into
/// `cap_capable` lies the iterator's frame; without the iterator, the
/// return address into `cap_capable` sits where the one into the iterator
/// was, and everything above moves down by as much.
pub fn direct_layout(
    samples: &[CalibSample],
    kallsyms: &impl Resolver,
    slots: Slots,
) -> Option<Slots> {
    let probe = samples.iter().find(|s| s.cap == PROBE_CAP)?;
    let at = |name: &str, from: usize| {
        (from..probe.words.len())
            .find(|&i| kallsyms.name_at(probe.words[i]).is_some_and(|n| n == name))
    };
    let iterator = at(TRACEPOINT_ITERATOR, 0)?;
    let hook = at(capprof_common::names::HOOK_FUNCTION, iterator + 1)?;
    let shift = (hook - iterator) as u32;
    Some(Slots {
        caller: slots.caller.checked_sub(shift)?,
        outer: slots.outer.checked_sub(shift)?,
    })
}

/// The function ranges the kernel side resolves new return addresses with.
pub fn ranges(kallsyms: &KnownFunctions) -> Vec<FuncRange> {
    let groups: [(&[&str], u8); 5] = [
        (VIA_SECURITY_CAPABLE, kind::VIA_SECURITY_CAPABLE),
        (ADVISORY, kind::ADVISORY),
        (CAPSET, kind::CAPSET),
        (NOAUDIT, kind::NOAUDIT),
        (AUDIT, kind::AUDIT),
    ];
    let mut out = vec![];
    for (names, k) in groups {
        for name in names {
            if let Some((start, end)) = kallsyms.range(name) {
                out.push(FuncRange {
                    start,
                    end,
                    kind: k as u32,
                    _pad: 0,
                });
            }
        }
    }
    out.truncate(MAX_FUNC_RANGES);
    out
}

pub fn apply(config: &mut Config, slots: Option<Slots>, ranges: &[FuncRange]) {
    if let Some(slots) = slots {
        config.slot_caller = slots.caller;
        config.slot_outer = slots.outer;
    }
    config.nr_ranges = ranges.len() as u32;
    for (dst, src) in config.ranges.iter_mut().zip(ranges) {
        *dst = *src;
    }
}

/// Makes the checks the calibration looks for, from a thread of this
/// process: an audited CAP_SYS_NICE (lowering the thread's nice value from
/// 19 to 18) and an advisory CAP_SYS_ADMIN (a private writable mmap).
pub fn trigger_probes() {
    let handle = std::thread::spawn(|| {
        // SAFETY: plain syscalls on this thread only.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 19);
            libc::setpriority(libc::PRIO_PROCESS, tid, 18);
            let len = 1 << 16;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p != libc::MAP_FAILED {
                libc::munmap(p, len);
            }
        }
    });
    let _ = handle.join();
}

/// The calibration program of each backend: the backend's own program type
/// on the same hook, so that a kernel that refuses it refuses the backend.
pub fn program(backend: Backend) -> (&'static str, Hook) {
    match backend {
        Backend::TpBtf => (names::PROG_CALIBRATE, Hook::TpBtf(names::TRACEPOINT_NAME)),
        Backend::Fexit => (
            names::PROG_CALIBRATE_FEXIT,
            Hook::Fexit(names::HOOK_FUNCTION),
        ),
        Backend::Kprobe => (
            names::PROG_CALIBRATE_KPROBE,
            Hook::Kprobe(names::HOOK_FUNCTION),
        ),
        Backend::Lsm => (names::PROG_CALIBRATE_LSM, Hook::Lsm(names::LSM_HOOK)),
    }
}

/// Why calibration gave no slots.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The kernel refused to load or attach the calibration program, and
    /// so the backend: the same program type on the same hook.
    #[error("{}", .0.refusal())]
    Refused(#[source] AttachError),
    /// It ran, but the slots could not be found in its samples.
    #[error(transparent)]
    NoSlots(#[from] CalibrationError),
    #[error("the calibration map: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error("the eBPF object lacks the calibration map")]
    MissingMap,
    #[error("/proc/kallsyms is unreadable")]
    NoKallsyms,
}

/// Loads and attaches `backend`'s calibration program, triggers the known
/// checks, detaches it, and finds the slots in what it sampled. Returns the
/// slots as found and, for the tracepoint, the other frame layout's when
/// it differs.
pub fn calibrate(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    kallsyms: &KnownFunctions,
    backend: Backend,
) -> Result<(Slots, Option<Slots>), CalibrateError> {
    if backend == Backend::TpBtf {
        return calibrate_tracepoint(ebpf, btf, kallsyms);
    }
    let (name, hook) = program(backend);
    let refused = CalibrateError::Refused;
    let attached = attach::load_and_attach(ebpf, btf, name, hook).map_err(refused)?;
    trigger_probes();
    attached.detach(ebpf).map_err(refused)?;
    let _ = attach::unload(ebpf, name, hook);
    let samples = samples(ebpf)?;
    log_samples(backend, &samples);
    let slots = find_slots(&samples, kallsyms)?;
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
    kallsyms: &KnownFunctions,
) -> Result<(Slots, Option<Slots>), CalibrateError> {
    let (name, hook) = program(Backend::TpBtf);
    let refused = CalibrateError::Refused;
    let attached = attach::load_and_attach(ebpf, btf, name, hook).map_err(refused)?;
    trigger_probes();
    let first = samples(ebpf);

    let spacer_hook = Hook::TpBtf(names::TRACEPOINT_NAME);
    let spacer = attach::load_and_attach(ebpf, btf, names::PROG_CALIBRATE_SPACER, spacer_hook);
    let second = match &spacer {
        Ok(_) => {
            trigger_probes();
            samples(ebpf).ok()
        }
        Err(e) => {
            tracing::debug!("no second tracepoint layout: {e}");
            None
        }
    };
    if let Ok(spacer) = spacer {
        let _ = spacer.detach(ebpf);
        let _ = attach::unload(ebpf, names::PROG_CALIBRATE_SPACER, spacer_hook);
    }
    let _ = attached.detach(ebpf);
    let _ = attach::unload(ebpf, name, hook);

    let first = first?;
    log_samples(Backend::TpBtf, &first);
    let slots = find_slots(&first, kallsyms)?;
    // The second pass's samples follow the first's in `CALIB`.
    let other = second
        .and_then(|all| all.get(first.len()..).map(<[_]>::to_vec))
        .and_then(|s| find_slots(&s, kallsyms).ok())
        .filter(|other| *other != slots)
        // Both passes in the iterator layout: another program was already
        // attached. Work out the direct one from the iterator's frame.
        .or_else(|| direct_layout(&first, kallsyms, slots));
    tracing::debug!("tracepoint slots {slots:?}, other layout {other:?}");
    Ok((slots, other))
}

/// The samples the calibration programs wrote to `CALIB`.
fn samples(ebpf: &Ebpf) -> Result<Vec<CalibSample>, CalibrateError> {
    let calib: Array<_, CalibSample> = ebpf
        .map(names::CALIB)
        .ok_or(CalibrateError::MissingMap)
        .and_then(|m| Array::try_from(m).map_err(CalibrateError::Map))?;
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
        samples.iter().filter(|s| s.cap == PROBE_CAP).count(),
        samples.iter().filter(|s| s.cap == ADVISORY_CAP).count(),
    );
}

#[cfg(test)]
mod tests {
    use capprof_common::config::CALIB_WORDS;

    use super::*;
    use crate::observer::kallsyms::Kallsyms;

    const SYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 T security_capable
ffffffff81100080 T security_vm_enough_memory_mm
ffffffff81100100 T capable
ffffffff81100200 T ns_capable
ffffffff81100300 T ns_capable_noaudit
ffffffff81100400 T can_nice
ffffffff81100600 T cap_capable
ffffffff81100700 T __traceiter_cap_capable
ffffffff81100800 T zzz_end
";

    fn sample(cap: u32, words: &[(usize, u64)]) -> CalibSample {
        let mut s = CalibSample {
            cap,
            ret: 0,
            words: [0xffff_8880_0000_1000; CALIB_WORDS],
        };
        for (i, w) in words {
            s.words[*i] = *w;
        }
        s
    }

    #[test]
    fn finds_slots_as_seen_on_6_18() {
        let k = Kallsyms::parse(SYMS).unwrap();
        let samples = [
            sample(ADVISORY_CAP, &[(12, 0xffffffff811000b6)]),
            sample(
                PROBE_CAP,
                &[
                    (10, 0xffffffff81000010),
                    (12, 0xffffffff8110003b),
                    (17, 0xffffffff8110012e),
                    (20, 0xffffffff81100410),
                ],
            ),
        ];
        assert_eq!(
            find_slots(&samples, &k),
            Ok(Slots {
                caller: 12,
                outer: 17
            })
        );
    }

    #[test]
    fn derives_the_direct_tracepoint_layout_from_the_iterator_one() {
        let k = Kallsyms::parse(SYMS).unwrap();
        // As sampled on 6.18 with a second program attached: the iterator's
        // return address at 5, cap_capable's at 12, callers at 19 and 24.
        let iterator = [sample(
            PROBE_CAP,
            &[
                (5, 0xffffffff81100720),
                (12, 0xffffffff81100640),
                (19, 0xffffffff8110003b),
                (24, 0xffffffff8110012e),
            ],
        )];
        let slots = find_slots(&iterator, &k).unwrap();
        assert_eq!(
            slots,
            Slots {
                caller: 19,
                outer: 24
            }
        );
        assert_eq!(
            direct_layout(&iterator, &k, slots),
            Some(Slots {
                caller: 12,
                outer: 17
            })
        );
        // Alone on the tracepoint there is no iterator frame to measure.
        let direct = [sample(
            PROBE_CAP,
            &[
                (5, 0xffffffff81100640),
                (12, 0xffffffff8110003b),
                (17, 0xffffffff8110012e),
            ],
        )];
        assert_eq!(
            direct_layout(&direct, &k, find_slots(&direct, &k).unwrap()),
            None
        );
    }

    #[test]
    fn refuses_inconsistent_layouts() {
        let k = Kallsyms::parse(SYMS).unwrap();
        let no_probe = [sample(ADVISORY_CAP, &[(12, 0xffffffff811000b6)])];
        assert_eq!(find_slots(&no_probe, &k), Err(CalibrationError::NoProbe));
        // The advisory caller sits at another slot: its checks would be misread.
        let moved = [
            sample(ADVISORY_CAP, &[(13, 0xffffffff811000b6)]),
            sample(
                PROBE_CAP,
                &[(12, 0xffffffff8110003b), (17, 0xffffffff8110012e)],
            ),
        ];
        assert_eq!(
            find_slots(&moved, &k),
            Err(CalibrationError::NoAdvisory(12))
        );
        // No advisory sample at all (cap_capable inlined into
        // cap_vm_enough_memory): the slots still hold.
        let inlined = [sample(
            PROBE_CAP,
            &[(12, 0xffffffff8110003b), (17, 0xffffffff8110012e)],
        )];
        assert_eq!(
            find_slots(&inlined, &k),
            Ok(Slots {
                caller: 12,
                outer: 17
            })
        );
        let no_outer = [
            sample(ADVISORY_CAP, &[(12, 0xffffffff811000b6)]),
            sample(PROBE_CAP, &[(12, 0xffffffff8110003b)]),
        ];
        assert_eq!(
            find_slots(&no_outer, &k),
            Err(CalibrationError::NoOuterSlot(12))
        );
    }

    #[test]
    fn ranges_cover_known_functions() {
        let k = Kallsyms::parse(SYMS).unwrap();
        let r = ranges(&KnownFunctions::from_kallsyms(&k));
        let find = |addr: u64| {
            r.iter()
                .find(|f| addr >= f.start && addr < f.end)
                .map(|f| f.kind as u8)
        };
        assert_eq!(find(0xffffffff8110003b), Some(kind::VIA_SECURITY_CAPABLE));
        assert_eq!(find(0xffffffff811000b6), Some(kind::ADVISORY));
        assert_eq!(find(0xffffffff8110012e), Some(kind::AUDIT));
        assert_eq!(find(0xffffffff81100310), Some(kind::NOAUDIT));
        assert_eq!(find(0xffffffff81100410), None);
    }
}
