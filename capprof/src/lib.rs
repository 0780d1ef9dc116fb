//! capprof as a library: the observer (eBPF loading, calibration, maps),
//! the profile model, container attribution, engines, exports, the
//! recorder and the daemon. The `capprof` binary (src/bin/capprof) is the
//! command line over it; the benchmark uses it too. Nothing here imports
//! the command line.

pub mod attribution;
pub mod build_info;
pub mod capset;
pub mod cgroup;
pub mod conditional;
pub mod cri;
pub mod daemon;
pub mod engine;
pub mod fleet;
pub mod observer;
pub mod profile;
pub mod proof;
pub mod recorder;
pub mod socket;
pub mod urlpath;

// The model lives in capprof-profile; these keep `capprof::…` paths working.
pub use capprof_profile::{
    capability, caveat, diff, export, fsutil, k8s_patch, load, merge, report, table, text,
};
