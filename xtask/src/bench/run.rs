//! Running capprof-bench: every configuration, round after round, then the
//! storm.

use std::{path::Path, process::Command};

use anyhow::Result;

use super::{ATTACHMENTS, OTHER_CONFIGS, Plan, TARGET_WORKLOAD, WORKLOADS, rows::Line};
use crate::util::{note, stdout_of, step};

/// Every round of every configuration, then the storm. A failed
/// invocation is recorded and the run goes on.
pub fn run_all(
    plan: &Plan,
    bench: &Path,
    capprof: &Path,
    have_bpftrace: bool,
    lines: &mut Vec<Line>,
    failures: &mut Vec<String>,
) {
    let configs: Vec<&str> = ATTACHMENTS.iter().chain(OTHER_CONFIGS).copied().collect();
    for round in 0..plan.rounds {
        // Rotate, so that each configuration takes each position in turn.
        let n = configs.len();
        for i in 0..n {
            let config = configs[(i + round * 3) % n];
            if config == "bpftrace" && !have_bpftrace {
                continue;
            }
            step(format_args!(
                "round {}/{}: {config}",
                round + 1,
                plan.rounds
            ));
            let mut cmd = Command::new(bench);
            if config == "startup" {
                cmd.args(["startup", "--capprof"]).arg(capprof);
            } else {
                let workloads = if config.starts_with("ladder") {
                    TARGET_WORKLOAD.to_owned()
                } else {
                    WORKLOADS.join(",")
                };
                cmd.args(["measure", "--config", config, "--workloads", &workloads])
                    .args(["--base-ms", &plan.base_ms.to_string()])
                    .args(["--e2e-ms", &plan.e2e_ms.to_string()])
                    .args(["--stats-ms", &plan.stats_ms.to_string()])
                    .args(["--cgroups", &plan.mixed_cgroups.to_string()]);
            }
            match run_bench(&mut cmd, round) {
                Ok(mut out) => lines.append(&mut out),
                Err(err) => {
                    note(format_args!("error: {err:#}"));
                    failures.push(format!("round {}: {config}: {err:#}", round + 1));
                }
            }
        }
    }
    step(format_args!(
        "storm: 2 threads, {} profiled cgroups, {} s",
        plan.storm_cgroups, plan.storm_secs
    ));
    let mut cmd = Command::new(bench);
    cmd.args(["storm", "--threads", "2"])
        .args(["--cgroups", &plan.storm_cgroups.to_string()])
        .args(["--secs", &plan.storm_secs.to_string()]);
    match run_bench(&mut cmd, 0) {
        Ok(mut out) => lines.append(&mut out),
        Err(err) => {
            note(format_args!("error: {err:#}"));
            failures.push(format!("storm: {err:#}"));
        }
    }
}

/// Runs one capprof-bench invocation; returns its lines, tagged with the round.
pub fn run_bench(cmd: &mut Command, round: usize) -> Result<Vec<Line>> {
    stdout_of(cmd)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Line::parse(l, round))
        .collect()
}
