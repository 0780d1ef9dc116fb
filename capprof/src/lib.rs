//! capprof as a library: the observer (eBPF loading, calibration, maps),
//! the profile model, container attribution, engines and exports. The
//! `capprof` binary is a thin CLI over it; benchmarks and the daemon use it
//! too.

pub mod attribution;
pub mod caps;
pub mod cgroup;
pub mod cmd;
pub mod conditional;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod kallsyms;
pub mod observer;
pub mod profile;
pub mod recorder;
pub mod table;
