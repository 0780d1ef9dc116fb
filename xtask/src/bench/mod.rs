//! `cargo xtask bench`: what capprof costs per capability check, next to an
//! empty program, a per-event streaming design and bpftrace (BENCHMARKS.md).
//!
//! The measuring is done by `target/release/capprof-bench` (the
//! `capprof-bench` crate), which prints one JSON object per line. This
//! module builds it; `run` runs it once per configuration per round with the
//! order rotated each round (so that slow drifts of a noisy machine spread
//! over every configuration); `rows` reads its lines into typed rows;
//! `report` turns them into tables of medians and min–max (`stats`) and
//! ratios to the floor; `targets` judges them against the targets.
//! `host` reads and restores the machine around the run.

mod host;
mod report;
mod rows;
mod run;
mod stats;
mod targets;

use std::{fmt::Write as _, fs, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result};
use clap::Args;

use self::{
    host::{cleanup, loadavg, read_sysctl, which},
    report::Report,
    rows::Line,
    run::run_all,
    targets::{Verdict, render_targets},
};
use crate::{
    setup,
    util::{build_release, note, step},
};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A smoke test: one short round and a 2 s storm over 20 cgroups.
    /// Timing targets are printed but not enforced.
    #[arg(long)]
    pub quick: bool,
    /// Exit non-zero when an enforced target is missed (with --quick, only
    /// the storm's no-loss result is enforced).
    #[arg(long)]
    pub check: bool,
    /// Rounds of every configuration (default 5; 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Also write every raw JSON line capprof-bench printed to FILE.
    #[arg(long, value_name = "FILE")]
    pub raw: Option<PathBuf>,
}

/// `bench --quick --check`, as `cargo xtask test` runs it: whether it passed.
pub fn smoke() -> Result<bool> {
    step("benchmark smoke test (cargo xtask bench --quick --check)");
    measure(&BenchArgs {
        quick: true,
        check: true,
        rounds: None,
        raw: None,
    })
}

/// What can be attached to the hook: the configurations of the end-to-end
/// tables, in their order.
const ATTACHMENTS: &[&str] = &[
    "none",
    "empty",
    "profiled",
    "unprofiled",
    "stream",
    "bpftrace",
];
/// Not attachments of the end-to-end tables, but run in the same rotation:
/// the ladder's steps and the startup timing.
const OTHER_CONFIGS: &[&str] = &["ladder1", "ladder2", "ladder3", "ladder4", "startup"];
const WORKLOADS: &[&str] = &["kill", "mmap", "mixed"];
/// The workload the targets are judged on: exactly one check per call.
const TARGET_WORKLOAD: &str = "kill";

/// Run lengths.
struct Plan {
    rounds: usize,
    base_ms: u64,
    e2e_ms: u64,
    stats_ms: u64,
    mixed_cgroups: usize,
    storm_secs: f64,
    storm_cgroups: usize,
}

impl Plan {
    fn new(args: &BenchArgs) -> Self {
        if args.quick {
            Self {
                rounds: args.rounds.unwrap_or(1),
                base_ms: 100,
                e2e_ms: 200,
                stats_ms: 100,
                mixed_cgroups: 10,
                storm_secs: 2.0,
                storm_cgroups: 20,
            }
        } else {
            Self {
                rounds: args.rounds.unwrap_or(5),
                base_ms: 300,
                e2e_ms: 600,
                stats_ms: 300,
                mixed_cgroups: 50,
                storm_secs: 10.0,
                storm_cgroups: 100,
            }
        }
    }
}

/// `cargo xtask bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    Ok(if measure(args)? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs everything and prints the report; false when --check found a
/// missed target or a run failed.
fn measure(args: &BenchArgs) -> Result<bool> {
    setup::ensure()?;
    let release = build_release(&["capprof", "capprof-bench"])?;
    let bench = release.join("capprof-bench");
    let capprof = release.join("capprof");

    let plan = Plan::new(args);
    let stats_before = read_sysctl();
    let have_bpftrace = which("bpftrace");
    if !have_bpftrace {
        note("bpftrace is not installed: its configuration is skipped");
    }
    let started = Instant::now();
    let load_before = loadavg();
    let mut lines: Vec<Line> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    run_all(
        &plan,
        &bench,
        &capprof,
        have_bpftrace,
        &mut lines,
        &mut failures,
    );
    cleanup(stats_before.as_deref());
    let elapsed = started.elapsed();
    let load = format!("{load_before} at the start, {} at the end", loadavg());

    if let Some(path) = &args.raw {
        let text: String = lines.iter().map(|l| format!("{}\n", l.json)).collect();
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let report = Report::new(lines.into_iter().map(|l| l.row));
    let mut out = String::new();
    report.render(&mut out, &plan, args, elapsed.as_secs_f64(), &load);
    let verdicts = report.targets(args.quick, have_bpftrace);
    render_targets(&mut out, &verdicts, args.quick);
    for f in &failures {
        let _ = writeln!(out, "\nrun failed: {f}");
    }
    println!("{out}");

    let missed: Vec<&Verdict> = verdicts.iter().filter(|v| v.enforced && !v.pass).collect();
    if args.check && (!missed.is_empty() || !failures.is_empty()) {
        step(format_args!(
            "bench --check: {} enforced target(s) missed, {} run(s) failed",
            missed.len(),
            failures.len()
        ));
        return Ok(false);
    }
    Ok(true)
}
