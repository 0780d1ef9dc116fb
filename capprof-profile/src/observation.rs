//! What a profile is built from: the observer's counts and sightings, as
//! typed values. The observer (in capprof) decodes the kernel's raw records
//! into these; the model never sees a raw record. The `from_raw`
//! conversions read capprof-common's ABI constants, which carry no aya.

use std::{fmt, time::SystemTime};

use capprof_common::check;
use serde::{Deserialize, Serialize};

use crate::capability::Cap;

/// Whether the kernel granted a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Granted,
    Denied,
}

impl Verdict {
    pub fn from_raw(verdict: u8) -> Self {
        if verdict == check::VERDICT_DENIED {
            Verdict::Denied
        } else {
            Verdict::Granted
        }
    }
}

/// How a check was made, as far as the kernel side could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Not classified (the call site was unknown, or calibration failed).
    /// Counted like `Audit`, so that nothing needed is ever dropped.
    Unknown,
    /// Audited: the operation needs the capability.
    Audit,
    /// CAP_OPT_NOAUDIT, and it can still gate an operation.
    NoAudit,
    /// CAP_OPT_NOAUDIT, a probe that changes no permission decision.
    Advisory,
    /// capset()'s own CAP_SETPCAP check, which decides nothing unless the
    /// call grows the inheritable set (the capset hook records that).
    Capset,
    /// Made with credentials that are not the task's own (overlayfs copy-up
    /// checks the mounter's): says nothing about what the workload needs.
    Borrowed,
}

impl Kind {
    pub fn from_raw(kind: u8) -> Self {
        match kind {
            check::kind::AUDIT => Kind::Audit,
            check::kind::NOAUDIT => Kind::NoAudit,
            check::kind::ADVISORY => Kind::Advisory,
            check::kind::CAPSET => Kind::Capset,
            check::kind::BORROWED => Kind::Borrowed,
            // UNKNOWN, and any id this build does not know.
            _ => Kind::Unknown,
        }
    }
}

/// Which user namespace a check targeted, relative to the checking
/// credentials' own.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UserNs {
    /// Their own: what `--cap-add` grants.
    #[default]
    Own,
    /// One below it, decided by the same capabilities.
    Descendant,
    /// An ancestor such as the host's (or another branch): refused whatever
    /// the container holds, so no `--cap-add` can grant it.
    Ancestor,
}

impl UserNs {
    pub fn from_raw(id: u8) -> Self {
        match id {
            check::userns::DESCENDANT => UserNs::Descendant,
            check::userns::ANCESTOR => UserNs::Ancestor,
            _ => UserNs::Own,
        }
    }
}

/// Whose check it was in a container cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The workload (every check of a `capprof run` command).
    Workload,
    /// The container runtime, before it exec'd the workload.
    Setup,
}

impl Phase {
    pub fn from_raw(phase: u8) -> Self {
        if phase == check::phase::SETUP {
            Phase::Setup
        } else {
            Phase::Workload
        }
    }
}

/// One kernel counter: the checks of one cgroup for one capability, verdict,
/// kind and phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Count {
    pub cgroup_id: u64,
    pub cap: Cap,
    pub verdict: Verdict,
    pub kind: Kind,
    pub phase: Phase,
    pub user_ns: UserNs,
    pub count: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

/// One evidence record: who made a check, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    pub cgroup_id: u64,
    pub cap: Cap,
    pub verdict: Verdict,
    pub kind: Kind,
    pub phase: Phase,
    pub comm: String,
    pub exe: Option<String>,
    /// The syscall's name, when known.
    pub syscall: Option<String>,
    pub pid: u32,
    pub uid: u32,
    /// The kernel function that asked, as `symbol+0xoff`, when known.
    pub call_site: Option<String>,
    pub user_ns: UserNs,
}

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
    /// Whether the hook runs for checks that were refused. The BPF-LSM hook
    /// runs inside `security_capable()` after commoncap's `cap_capable`,
    /// and only when that granted the check.
    pub fn sees_refusals(self) -> bool {
        self != Backend::Lsm
    }

    /// Whether the hook can see the advisory mmap probe, which calls
    /// `cap_capable` directly and never reaches `security_capable()` (so
    /// never the BPF-LSM hook).
    pub fn sees_advisory(self) -> bool {
        self != Backend::Lsm
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
