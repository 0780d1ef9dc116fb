//! Proof, not just observation: re-running a workload with a given
//! capability set, to show that its allowlist is sufficient
//! (`capprof verify`) and to find the smallest sufficient one
//! (`capprof minimize`).
//!
//! - [`Workload`] re-creates what a profile's `subject.run` describes: a
//!   container on its engine ([`container`]), or a command in a fresh
//!   cgroup with `capprof run --caps` semantics ([`command`]). One
//!   [`Workload::trial`] is one run with one capability set; it passes
//!   when the probe ([`probe`]) passes, or without a probe when the
//!   workload exits with status 0. Each run also samples the credentials
//!   of every process of the workload ([`creds`]), and an observer of its
//!   own reports every capset() the kernel refused in it ([`refusals`]).
//! - [`search`] decides: which capabilities each run needs, and whether a
//!   run that passed left a process more privileged than the baseline.

pub mod command;
pub mod container;
pub mod creds;
pub mod probe;
pub mod refusals;
pub mod search;
pub mod trust;

use std::time::Duration;

pub use probe::Probe;

use crate::capability::Cap;

/// Capabilities whose loss can make a workload *less safe without failing*,
/// so blind ablation would remove them. `minimize` keeps them and says so
/// when the workload was seen to use them (`untried`), unless
/// `--drop-security-relevant`.
///
/// - `AUDIT_WRITE`: sshd, login and PAM send their audit records with it.
///   Without it, logins still work (the kernel's refusal is treated like a
///   kernel without audit) and are no longer audited.
/// - `IPC_LOCK`: `mlock` beyond `RLIMIT_MEMLOCK`. Programs that keep keys
///   in locked memory (gpg-agent, vault, ssh-agent) carry on without it,
///   and their secrets can then be swapped to disk.
///
/// Capabilities whose loss makes a privilege drop fail (SETUID, SETGID,
/// SETPCAP) are not listed: that case is caught generally, by comparing
/// the credentials the workload's processes end up with ([`creds`]).
pub const SECURITY_RELEVANT: &[&str] = &["AUDIT_WRITE", "IPC_LOCK"];

pub fn is_security_relevant(cap: Cap) -> bool {
    SECURITY_RELEVANT.contains(&cap.short_name())
}

/// The capabilities of `set` that `minimize` and `verify --ablate` keep
/// without trying: the security-relevant ones the workload was seen to use
/// (`used`). One that nothing checked (a capset() kept it, or it was lost
/// at exec) is tried like any other.
pub fn untried(set: &[Cap], used: &[Cap]) -> Vec<Cap> {
    set.iter()
        .copied()
        .filter(|c| is_security_relevant(*c) && used.contains(c))
        .collect()
}

/// How one run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// Why it failed, in a few words.
    Failed(String),
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Passed => f.write_str("passed"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// One run of the workload with one capability set.
#[derive(Clone, Debug)]
pub struct Trial {
    pub outcome: Outcome,
    /// Every process seen in the workload's cgroup, each as last seen.
    pub processes: Vec<creds::ProcSample>,
    /// The capset() calls the kernel refused in it (empty when no observer
    /// watched).
    pub refused: Vec<refusals::Refusal>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("the engine refused to {what}: {source}")]
    Request {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("image {0} is no longer on the engine: pull or build it again")]
    ImageGone(String),
    #[error(
        "{profile}: nothing to re-run: the profile has no subject.run (record it again with this capprof)"
    )]
    NoRunSpec { profile: String },
    #[error(
        "{profile}: the environment values were not recorded (no --keep-env) and container {container} no longer exists to take them from; record again with --keep-env"
    )]
    EnvUnavailable { profile: String, container: String },
    #[error("probe {probe:?}: {reason}")]
    ProbeNotExecutable { probe: String, reason: String },
    #[error("bad probe: {0}")]
    BadProbe(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Limit(#[from] crate::capset::LimitError),
    #[error("the observer of refused capset() calls: {0}")]
    Observer(#[from] crate::observer::ObserverError),
    #[error("cannot start {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the workload fails with the profile's own allowlist ({reason}): nothing to minimize")]
    Baseline { reason: String },
    /// The trust model refused what the profile asks for.
    #[error(
        "{profile}: {setting}{}: refused; read the profile, then pass --trust-run to run it anyway",
        and_more(*more)
    )]
    Untrusted {
        profile: String,
        /// The first refused setting, said in full.
        setting: String,
        /// How many more were refused.
        more: usize,
    },
}

fn and_more(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    }
}

impl ProofError {
    /// Bad input or a missing prerequisite (exit status 2), rather than a
    /// failure on the way.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ProofError::Engine(_)
            | ProofError::ImageGone(_)
            | ProofError::NoRunSpec { .. }
            | ProofError::EnvUnavailable { .. }
            | ProofError::ProbeNotExecutable { .. }
            | ProofError::BadProbe(_)
            | ProofError::Unsupported(_)
            | ProofError::Untrusted { .. } => true,
            ProofError::Spawn { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ),
            ProofError::Request { .. }
            | ProofError::Cgroup(_)
            | ProofError::Limit(_)
            | ProofError::Observer(_)
            | ProofError::Baseline { .. } => false,
        }
    }
}

/// What every run shares.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub probe: Option<Probe>,
    /// How long one run may take: the probe must pass, or the workload
    /// exit, within it.
    pub timeout: Duration,
    /// The observer that reports refused capset() calls, when one loaded.
    pub refusals: Option<std::sync::Arc<refusals::RefusalWatch>>,
}

/// A workload to re-run.
pub enum Workload {
    Container(Box<container::ContainerWorkload>),
    Command(command::CommandWorkload),
}

impl Workload {
    /// One run with exactly `allowed`.
    pub async fn trial(&mut self, allowed: &[Cap]) -> Result<Trial, ProofError> {
        match self {
            Workload::Container(w) => w.trial(allowed).await,
            Workload::Command(w) => w.trial(allowed).await,
        }
    }

    /// Where it runs, for the proof: `docker 20.10.24`, or `command`.
    pub fn engine(&self) -> String {
        match self {
            Workload::Container(w) => w.engine_name(),
            Workload::Command(_) => "command".into(),
        }
    }
}
