//! Which hook on `cap_capable` capprof uses, and how it is chosen: a small
//! compatibility table of backends with the kernels each needs (after
//! kunai's compat.rs).

use std::fmt;

pub use capprof_profile::observation::Backend;
use capprof_profile::profile::ClassificationMethod;

use super::{btf::KernelBtf, calibrate::Slots};

/// The backends in order of preference, with what each needs. `lsm` comes
/// last and is never chosen by itself: it cannot see refused checks, and
/// any kernel with the BPF LSM has the trampolines fexit needs, and fexit
/// sees everything it sees.
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

/// Why the BPF LSM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LsmUnavailable {
    #[error("the BPF LSM is not active ({LSM_LIST} lists {0}; boot with `bpf` in lsm=)")]
    NotActive(String),
    #[error(
        "cannot read {LSM_LIST} to see whether the BPF LSM is active ({0}; is securityfs mounted?)"
    )]
    Unreadable(#[source] std::io::Error),
}

/// Whether the BPF LSM is active.
pub fn bpf_lsm_active() -> Result<(), LsmUnavailable> {
    match std::fs::read_to_string(LSM_LIST) {
        Ok(list) if list.trim().split(',').any(|m| m == "bpf") => Ok(()),
        Ok(list) => Err(LsmUnavailable::NotActive(list.trim().to_owned())),
        Err(e) => Err(LsmUnavailable::Unreadable(e)),
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
    /// The hook's `opts` argument (fexit, kprobe, lsm), with calibrated call
    /// sites to tell the advisory probes apart when they could be found.
    Opts { call_site: Option<Slots> },
    /// Calibration failed: every check counts as audited.
    Uncalibrated(String),
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classification::CallSite { .. } => ClassificationMethod::CallSite.fmt(f),
            Classification::Opts { .. } => ClassificationMethod::Opts.fmt(f),
            Classification::Uncalibrated(_) => ClassificationMethod::Uncalibrated.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_lsm_is_blind() {
        for b in [Backend::TpBtf, Backend::Fexit, Backend::Kprobe] {
            assert!(b.sees_refusals() && b.sees_advisory(), "{b}");
        }
        assert!(!Backend::Lsm.sees_refusals() && !Backend::Lsm.sees_advisory());
    }
}
