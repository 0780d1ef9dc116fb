//! capprof-bench: the measuring half of `cargo xtask bench` (see
//! BENCHMARKS.md). Run as root.
//!
//! Each subcommand sets up one configuration, runs workloads in worker
//! processes (each pinned to a CPU, inside a cgroup of its own), and prints
//! one JSON object per line on stdout. xtask runs it once per configuration
//! per round, interleaved, and turns the lines into the table.
//!
//! - `measure`: per workload, a baseline phase, then with the configuration
//!   set up an end-to-end phase (the worker's own CPU time per iteration,
//!   bpf_stats off) and a bpf_stats phase (run_time / run_cnt of the
//!   configuration's programs, enabled with BPF_ENABLE_STATS, which the
//!   kernel turns off again when the fd closes, even on a crash), then a
//!   second baseline after teardown.
//! - `storm`: two workers hammer 100 profiled cgroups; every (cgroup, cap)
//!   pair they exercised must be in the drained counts. Then an overflow
//!   phase fills the ring buffer: every record must be read or counted lost.
//! - `startup`: wall time of `capprof run -- true`, and `Observer::load_time()`.
//! - `churn`: mmap/munmap in a loop, for the workload bench's containers.

mod bpftrace;
mod churn;
mod measure;
mod progs;
mod reader;
mod startup;
mod storm;
mod util;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{
    churn::ChurnArgs, measure::MeasureArgs, startup::StartupArgs, storm::StormArgs,
    worker::WorkerArgs,
};

/// Measures capprof's cost per capability check (run as root).
#[derive(Debug, Parser)]
#[command(name = "capprof-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Set one configuration up and time each workload under it.
    Measure(MeasureArgs),
    /// Two workers, many profiled cgroups, as fast as they can: nothing missed.
    Storm(StormArgs),
    /// Time `capprof run -- true` and `Observer::load`.
    Startup(StartupArgs),
    /// mmap/munmap churn for the workload bench, run inside a container.
    Churn(ChurnArgs),
    /// Internal: one workload loop in a worker process.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAPPROF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let result = match cli.command {
        Cmd::Measure(args) => measure::measure(&args),
        Cmd::Storm(args) => storm::storm(&args),
        Cmd::Startup(args) => startup::startup(&args),
        Cmd::Churn(args) => churn::churn(&args),
        Cmd::Worker(args) => worker::worker(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("capprof-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
