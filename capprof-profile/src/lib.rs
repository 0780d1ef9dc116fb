//! capprof's profile model, as a library: what a capability profile is,
//! how one is read, built from typed observations, merged, compared,
//! reported and exported. It knows nothing of eBPF, containers or the
//! daemon: capprof (the agent and the command line) depends on it, never
//! the reverse.

pub mod capability;
pub mod conditional;
pub mod diff;
pub mod export;
pub mod fsutil;
pub mod k8s_patch;
pub mod load;
pub mod merge;
pub mod observation;
pub mod profile;
pub mod report;
pub mod table;
pub mod text;

/// How many distinct evidence entries a capability (or a conditional or
/// kept capability) keeps. At the root because both `profile` and
/// `conditional` bound their evidence with it, and `conditional` must not
/// depend on `profile`, which is built from it.
pub const MAX_EVIDENCE: usize = 16;
