//! capprof's profile model, as a library: what a capability profile is,
//! how one is read, built from typed observations, merged, compared,
//! reported and exported. It knows nothing of eBPF, containers or the
//! daemon: capprof (the agent and the command line) depends on it, never
//! the reverse.

pub mod capability;
pub mod fsutil;
pub mod observation;
pub mod text;
