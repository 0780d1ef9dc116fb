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

mod daemon;
mod host;
mod report;
mod rows;
mod run;
mod scale;
mod stats;
mod targets;
mod workload;
mod workload_image;
mod workload_report;

use std::{fmt::Write as _, fs, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};

use self::{
    host::{cleanup, loadavg, read_sysctl, which},
    report::Report,
    rows::Line,
    run::run_all,
    scale::ScalePlan,
    targets::{Verdict, render_targets},
    workload::WorkloadPlan,
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
    /// Run only these parts (repeatable). By default: per-check and
    /// workload (per-check only with --quick), and scale with --scale.
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Vec<Part>,
    /// Also run the node-scale part (minutes: containers are started one
    /// by one).
    #[arg(long)]
    pub scale: bool,
    /// Node scale: long-running containers the daemon watches.
    #[arg(long, default_value_t = 200)]
    pub scale_long: usize,
    /// Node scale: short-lived containers that come and go meanwhile.
    #[arg(long, default_value_t = 1000)]
    pub scale_short: usize,
    /// Node scale: seconds over which the daemon's idle CPU is measured.
    #[arg(long, default_value_t = 60)]
    pub scale_idle_secs: u64,
}

/// The parts of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// Cost per capability check, the ladder, the storm and startup.
    PerCheck,
    /// nginx under wrk, an exec loop and mmap churn in containers: nothing
    /// attached, the capprof daemon, bpftrace.
    Workload,
    /// The daemon watching many containers while others come and go.
    Scale,
}

impl BenchArgs {
    fn runs(&self, part: Part) -> bool {
        if !self.only.is_empty() {
            return self.only.contains(&part);
        }
        match part {
            Part::PerCheck => true,
            Part::Workload => !self.quick,
            Part::Scale => self.scale,
        }
    }
}

/// `bench --quick --check`, as `cargo xtask test` runs it: whether it passed.
pub fn smoke() -> Result<bool> {
    step("benchmark smoke test (cargo xtask bench --quick --check)");
    measure(&BenchArgs {
        quick: true,
        check: true,
        rounds: None,
        raw: None,
        only: vec![],
        scale: false,
        scale_long: 0,
        scale_short: 0,
        scale_idle_secs: 0,
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
    let mut out = String::new();
    let mut verdicts: Vec<Verdict> = vec![];
    let mut failures: Vec<String> = Vec::new();
    if args.runs(Part::PerCheck) {
        let started = Instant::now();
        let load_before = loadavg();
        let mut lines: Vec<Line> = Vec::new();
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
        report.render(&mut out, &plan, args, elapsed.as_secs_f64(), &load);
        verdicts.extend(report.targets(args.quick, have_bpftrace));
    }
    if args.runs(Part::Workload) {
        let wplan = WorkloadPlan {
            rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 5 }),
            wrk_secs: if args.quick { 2 } else { 5 },
            execs: 3_000,
            churn_iters: 300_000,
        };
        let load_before = loadavg();
        let results = workload::run(&wplan, &capprof, &bench, have_bpftrace)?;
        cleanup(stats_before.as_deref());
        let _ = writeln!(
            out,
            "\nload average (1, 5, 15 min) around the workload bench: {load_before} at the start, {} at the end",
            loadavg()
        );
        results.render(&mut out, &wplan);
        verdicts.extend(results.targets());
        failures.extend(results.failures);
    }
    if args.runs(Part::Scale) {
        let splan = ScalePlan {
            long: args.scale_long,
            short: args.scale_short,
            idle_secs: args.scale_idle_secs,
        };
        let load_before = loadavg();
        match scale::run(&splan, &capprof, &bench) {
            Ok(results) => {
                let _ = writeln!(
                    out,
                    "\nload average (1, 5, 15 min) around the node-scale bench: {load_before} at the start, {} at the end",
                    loadavg()
                );
                results.render(&mut out);
                verdicts.extend(results.targets());
            }
            Err(err) => failures.push(format!("scale: {err:#}")),
        }
    }
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
