//! The lines capprof-bench prints, as the report reads them.
//!
//! Each row mirrors a line type of capprof-bench (`MeasureLine` in
//! measure.rs, `StormLine` in storm.rs, `StartupLine` in startup.rs) with
//! the fields the report uses; serde skips the others. xtask does not link
//! capprof-bench (that would build capprof and the eBPF object into it), so
//! the two sides meet only in these names.

use anyhow::{Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

/// One line capprof-bench printed, with the round it came from.
pub struct Line {
    /// As printed, with `round` added: what `--raw` keeps.
    pub json: Value,
    /// As the report reads it.
    pub row: Row,
}

impl Line {
    /// Reads one line of capprof-bench's output from `round`.
    pub fn parse(text: &str, round: usize) -> Result<Self> {
        let mut json: Value = serde_json::from_str(text)
            .with_context(|| format!("bad line from capprof-bench: {text}"))?;
        let row = Row::deserialize(&json)
            .with_context(|| format!("unexpected line from capprof-bench: {text}"))?;
        if let Value::Object(map) = &mut json {
            map.insert("round".into(), Value::from(round));
        }
        Ok(Self { json, row })
    }
}

/// One line of capprof-bench's output, by its `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Row {
    Measure(MeasureRow),
    Storm(StormRow),
    Startup(StartupRow),
}

/// `capprof-bench measure`: one configuration and one workload, one round.
#[derive(Debug, Clone, Deserialize)]
pub struct MeasureRow {
    pub config: String,
    pub workload: String,
    /// Setting the configuration up, ms.
    pub setup_ms: f64,
    /// End-to-end CPU ns per iteration (the median of the phase's windows).
    pub ns_per_iter: f64,
    /// `ns_per_iter` minus the mean of the baselines before and after
    /// (None for `none`).
    pub added_ns_per_iter: Option<f64>,
    /// CPU time of the configuration's userspace per iteration.
    pub consumer_ns_per_iter: f64,
    /// bpf_stats run_time / run_cnt (None when no program of ours ran).
    pub ns_per_run: Option<f64>,
    /// bpf_stats runs per iteration (None when no program of ours ran).
    pub checks_per_iter: Option<f64>,
    /// Checks per iteration by construction.
    pub nominal_checks_per_iter: f64,
    /// Other programs that ran on every iteration, `name#id`, comma-separated.
    pub foreign_progs: String,
    /// Whether no other tool's tracing program came or went in the round.
    pub others_stable: bool,
}

impl MeasureRow {
    /// The other programs that ran on every iteration.
    pub fn foreign(&self) -> impl Iterator<Item = &str> {
        self.foreign_progs.split(',').filter(|s| !s.is_empty())
    }
}

/// `capprof-bench storm`: many profiled cgroups, nothing may be missed.
#[derive(Debug, Clone, Deserialize)]
pub struct StormRow {
    pub secs: f64,
    pub cgroups: usize,
    pub threads: usize,
    pub checks_per_s: f64,
    pub made_total: u64,
    pub pairs_exercised: usize,
    pub pairs_missing: usize,
    pub pairs_undercounted: usize,
    pub pairs_without_evidence: usize,
    pub ringbuf_lost: u64,
    pub counts_full: u64,
    /// The workers' share of their CPUs.
    pub worker_cpu_share: f64,
    pub overflow_checks: u64,
    pub overflow_attempts: u64,
    pub overflow_records: u64,
    pub overflow_lost: u64,
    pub overflow_counted: u64,
    pub no_loss: bool,
}

/// `capprof-bench startup`.
#[derive(Debug, Clone, Deserialize)]
pub struct StartupRow {
    /// Wall time of `capprof run --quiet -- true`, started warm.
    pub run_true_ms: f64,
    /// The same, right after another (taking over its links).
    pub run_again_ms: f64,
    /// The same with `--cold`.
    pub run_cold_ms: f64,
    /// `Observer::load_time()`, cold.
    pub load_ms: f64,
    /// `bpftrace -e 'BEGIN { exit(); }'`, in the same round.
    pub bpftrace_ms: Option<f64>,
    /// The 1-minute load average when the round's start-ups ran.
    pub load_avg: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as capprof-bench prints it reads back as the row it is, and
    /// keeps its round for --raw; a line missing a field is an error, not a
    /// blank in the report.
    #[test]
    fn lines_read_as_typed_rows() {
        let line = Line::parse(
            r#"{"kind":"startup","run_true_ms":20.5,"run_again_ms":90.0,"run_cold_ms":300.0,"load_ms":80.0,"bpftrace_ms":250.0,"load_avg":2.5}"#,
            3,
        )
        .unwrap();
        assert_eq!(line.json["round"], 3);
        let Row::Startup(startup) = line.row else {
            panic!("not a startup row: {:?}", line.row);
        };
        assert_eq!((startup.run_true_ms, startup.load_ms), (20.5, 80.0));
        assert_eq!((startup.run_again_ms, startup.run_cold_ms), (90.0, 300.0));
        assert_eq!((startup.bpftrace_ms, startup.load_avg), (Some(250.0), 2.5));
        assert!(Line::parse(r#"{"kind":"startup","load_ms":80.0}"#, 0).is_err());
        assert!(Line::parse(r#"{"kind":"unknown"}"#, 0).is_err());
    }
}
