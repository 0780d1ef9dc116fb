//! The tables: every measured row, grouped by (configuration, workload),
//! per check.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use super::{
    ATTACHMENTS, BenchArgs, Plan, TARGET_WORKLOAD, WORKLOADS,
    host::{cpu_model, cpus, kernel_release},
    rows::{MeasureRow, Row, StartupRow, StormRow},
    stats::{Summary, ratio, show_opt, show_ratio},
};

/// Everything measured, by (config, workload).
pub struct Report {
    /// (config, workload) -> rows, one per round.
    pub measure: BTreeMap<(String, String), Vec<MeasureRow>>,
    /// Checks one iteration of a workload makes (bpf_stats' minimum over
    /// every configuration that runs a program: other processes' checks
    /// only add to it).
    pub checks_per_iter: BTreeMap<String, f64>,
    pub storm: Vec<StormRow>,
    pub startup: Vec<StartupRow>,
    pub foreign: BTreeSet<String>,
}

impl Report {
    pub fn new(rows: impl IntoIterator<Item = Row>) -> Self {
        let mut measure: BTreeMap<(String, String), Vec<MeasureRow>> = BTreeMap::new();
        let mut storm = vec![];
        let mut startup = vec![];
        let mut foreign = BTreeSet::new();
        for row in rows {
            match row {
                Row::Measure(m) => {
                    foreign.extend(m.foreign().map(str::to_owned));
                    measure
                        .entry((m.config.clone(), m.workload.clone()))
                        .or_default()
                        .push(m);
                }
                Row::Storm(s) => storm.push(s),
                Row::Startup(s) => startup.push(s),
            }
        }
        let mut checks_per_iter = BTreeMap::new();
        for w in WORKLOADS {
            let nominal = measure
                .iter()
                .filter(|((_, wl), _)| wl == w)
                .flat_map(|(_, rows)| rows.iter())
                .map(|r| r.nominal_checks_per_iter)
                .next()
                .unwrap_or(1.0);
            let measured = measure
                .iter()
                .filter(|((c, wl), _)| wl == w && c != "none")
                .flat_map(|(_, rows)| rows.iter())
                .filter_map(|r| r.checks_per_iter)
                .filter(|&x| x >= nominal * 0.5)
                .fold(f64::INFINITY, f64::min);
            checks_per_iter.insert(
                (*w).to_owned(),
                if measured.is_finite() {
                    measured
                } else {
                    nominal
                },
            );
        }
        Self {
            measure,
            checks_per_iter,
            storm,
            startup,
            foreign,
        }
    }

    fn rows(&self, config: &str, workload: &str) -> &[MeasureRow] {
        self.measure
            .get(&(config.to_owned(), workload.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// End-to-end CPU ns per check with the configuration set up, one
    /// value per round (each the median over the phase's windows).
    pub fn e2e(&self, config: &str, workload: &str) -> Option<Summary> {
        Self::summary(
            self.stable_rows(config, workload),
            |r| Some(r.ns_per_iter),
            self.cpi(workload),
        )
    }

    /// The cost the configuration adds per check: its end-to-end time
    /// minus the mean of the baselines the same capprof-bench measured just
    /// before setting it up and just after tearing it down, with the same
    /// worker (paired in time, so that the machine's drift cancels).
    pub fn added(&self, config: &str, workload: &str) -> Option<Summary> {
        Self::summary(
            self.stable_rows(config, workload),
            |r| r.added_ns_per_iter,
            self.cpi(workload),
        )
    }

    /// The rounds whose end-to-end figures can be compared: those in which
    /// no other tool's tracing program came or went (`others_stable`). All
    /// rounds when there is no such round.
    pub fn stable_rows(&self, config: &str, workload: &str) -> Vec<&MeasureRow> {
        let rows = self.rows(config, workload);
        let stable: Vec<&MeasureRow> = rows.iter().filter(|r| r.others_stable).collect();
        if stable.is_empty() {
            rows.iter().collect()
        } else {
            stable
        }
    }

    pub fn cpi(&self, workload: &str) -> f64 {
        self.checks_per_iter.get(workload).copied().unwrap_or(1.0)
    }

    fn summary(
        rows: Vec<&MeasureRow>,
        value: impl Fn(&MeasureRow) -> Option<f64>,
        div: f64,
    ) -> Option<Summary> {
        let values: Vec<f64> = rows
            .into_iter()
            .filter_map(value)
            .map(|x| x / div)
            .collect();
        Summary::of(&values)
    }

    /// One field over every round, per check when `per_check`.
    pub fn field(
        &self,
        config: &str,
        workload: &str,
        value: impl Fn(&MeasureRow) -> Option<f64>,
        per_check: bool,
    ) -> Option<Summary> {
        let div = if per_check { self.cpi(workload) } else { 1.0 };
        Self::summary(self.rows(config, workload).iter().collect(), value, div)
    }

    pub fn per_run(&self, config: &str, workload: &str) -> Option<Summary> {
        self.field(config, workload, |r| r.ns_per_run, false)
    }

    pub fn render(&self, out: &mut String, plan: &Plan, args: &BenchArgs, secs: f64, load: &str) {
        self.render_header(out, plan, args, secs, load);
        for w in WORKLOADS {
            self.render_workload(out, w);
        }
        self.render_ladder(out);
        self.render_setup(out);
    }

    /// The run's conditions, what each column means, and other tools'
    /// programs that ran on every check.
    fn render_header(
        &self,
        out: &mut String,
        plan: &Plan,
        args: &BenchArgs,
        secs: f64,
        load: &str,
    ) {
        let _ = writeln!(
            out,
            "\n## capprof bench ({})\n",
            if args.quick { "quick" } else { "full" }
        );
        let _ = writeln!(
            out,
            "{} round(s), configurations interleaved; end-to-end phases {} ms, bpf_stats phases {} ms; took {:.0} s.",
            plan.rounds, plan.e2e_ms, plan.stats_ms, secs
        );
        let _ = writeln!(
            out,
            "kernel {}, {} CPUs ({})",
            kernel_release(),
            cpus(),
            cpu_model()
        );
        let _ = writeln!(out, "load average (1, 5, 15 min): {load}");
        let _ = writeln!(
            out,
            "Medians, with min–max over the rounds. \"e2e\" is the worker thread's CPU time per check \
             (each round: the median of its 25 ms windows); \"added\" is e2e minus the mean of two \
             baselines with nothing of the configuration's attached, measured by the same worker just \
             before setup and just after teardown; \"per run\" is bpf_stats run_time/run_cnt; \
             \"userspace\" is the CPU time of the configuration's reader (or bpftrace) per check; \"e2e rounds\" counts the rounds in which no other tool's tracing program \
             came or went, the only ones e2e and added use."
        );
        if !self.foreign.is_empty() {
            let _ = writeln!(
                out,
                "\nWARNING: other programs ran on every check during the run: {}. Every configuration, \
                 `none` included, paid for them; added costs stay comparable, absolute ones do not.",
                self.foreign.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }

    /// One workload's table: each configuration's cost per check.
    fn render_workload(&self, out: &mut String, w: &str) {
        let describe = |w: &str| match w {
            "kill" => "`kill(pid, 0)` to another uid: one CAP_KILL check per call",
            "mmap" => "mmap + munmap of one page: one advisory CAP_SYS_ADMIN check per iteration",
            _ => "kill, setuid, setgid, chroot, fchown, refused setrlimit, hopping over cgroups",
        };
        let cpi = self.checks_per_iter.get(w).copied().unwrap_or(1.0);
        let _ = writeln!(
            out,
            "\n### {w}: {} ({cpi:.3} checks per iteration)\n",
            describe(w)
        );
        let _ = writeln!(
            out,
            "| configuration | e2e ns/check | added ns/check | added ÷ empty | per run ns | per run ÷ empty | userspace ns/check | e2e rounds |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
        for &c in ATTACHMENTS {
            if self.rows(c, w).is_empty() {
                continue;
            }
            let added = if c == "none" { None } else { self.added(c, w) };
            let _ = writeln!(
                out,
                "| {c} | {} | {} | {} | {} | {} | {} | {}/{} |",
                show_opt(self.e2e(c, w), 0),
                show_opt(added, 0),
                if c == "none" {
                    "–".to_owned()
                } else {
                    show_ratio(ratio(added, self.added("empty", w)))
                },
                show_opt(self.per_run(c, w), 1),
                show_ratio(ratio(self.per_run(c, w), self.per_run("empty", w))),
                show_opt(self.field(c, w, |r| Some(r.consumer_ns_per_iter), true), 1),
                self.stable_rows(c, w).len(),
                self.rows(c, w).len(),
            );
        }
    }

    /// The ladder: what each step of the profiled path adds per run.
    fn render_ladder(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\n### Where the profiled path's time goes (`{TARGET_WORKLOAD}`, bpf_stats, capprof_bench_ladder)\n"
        );
        let _ = writeln!(out, "| step | per run ns | step adds ns |");
        let _ = writeln!(out, "|---|---|---|");
        let mut prev = self.per_run("empty", TARGET_WORKLOAD);
        for (c, label) in [
            ("empty", "empty program (floor)"),
            (
                "ladder1",
                "+ cgroup id, per-CPU `HOT` entry, watch generation (= unwatched path)",
            ),
            (
                "ladder2",
                "+ tgid check, jiffies, `COUNTS` lookup + atomic add (the counter)",
            ),
            (
                "ladder3",
                "+ 2 stack reads through `HOT`'s site cache (classification)",
            ),
            (
                "ladder4",
                "+ syscall nr, comm, `EVIDENCE_SEEN` lookup (evidence: now only a counter's first 32 checks)",
            ),
            (
                "profiled",
                "capprof_tp_btf, profiled: ladder 3's work, but a repeat in the same jiffy only bumps `HOT`'s pending count",
            ),
        ] {
            let cur = self.per_run(c, TARGET_WORKLOAD);
            if cur.is_none() {
                continue;
            }
            // The real program is compared with ladder 3, the same work
            // without the pending count; ladder 4 is what it no longer does.
            let base = if c == "profiled" {
                self.per_run("ladder3", TARGET_WORKLOAD)
            } else {
                prev
            };
            let step = if c == "empty" {
                None
            } else {
                cur.zip(base).map(|(a, b)| a.median - b.median)
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} |",
                show_opt(cur, 1),
                step.map_or_else(|| "–".to_owned(), |s| format!("{s:+.1}"))
            );
            prev = cur;
        }
    }

    /// How long each configuration took to set up.
    fn render_setup(&self, out: &mut String) {
        let _ = writeln!(out, "\n### Setup time per configuration (ms)\n");
        let _ = writeln!(out, "| configuration | setup ms |");
        let _ = writeln!(out, "|---|---|");
        for c in ["empty", "profiled", "unprofiled", "stream", "bpftrace"] {
            if let Some(s) = self.field(c, TARGET_WORKLOAD, |r| Some(r.setup_ms), false) {
                let _ = writeln!(out, "| {c} | {} |", s.show(0));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(config: &str, added: f64, stable: bool, cpi: f64) -> Row {
        Row::Measure(MeasureRow {
            config: config.into(),
            workload: "mixed".into(),
            setup_ms: 1.0,
            ns_per_iter: 6000.0 + added,
            added_ns_per_iter: Some(added),
            consumer_ns_per_iter: 0.0,
            ns_per_run: Some(40.0),
            checks_per_iter: Some(cpi),
            nominal_checks_per_iter: 6.0,
            foreign_progs: String::new(),
            others_stable: stable,
        })
    }

    #[test]
    fn added_cost_is_per_check_and_skips_unstable_rounds() {
        let report = Report::new([
            row("empty", 60.0, true, 6.02),
            row("empty", 600.0, false, 6.0),
            row("empty", 66.0, true, 6.01),
            row("profiled", 600.0, true, 6.5),
        ]);
        // The fewest checks any program saw per iteration: others' checks only add.
        assert_eq!(report.cpi("mixed"), 6.0);
        let empty = report.added("empty", "mixed").unwrap();
        assert_eq!((empty.n, empty.median), (2, 10.5));
        assert_eq!(report.stable_rows("empty", "mixed").len(), 2);
        let r = ratio(report.added("profiled", "mixed"), Some(empty)).unwrap();
        assert!((r - 100.0 / 10.5).abs() < 1e-9);
    }

    #[test]
    fn all_rounds_are_used_when_none_is_stable() {
        let report = Report::new([
            row("empty", 60.0, false, 6.0),
            row("empty", 66.0, false, 6.0),
        ]);
        assert_eq!(report.stable_rows("empty", "mixed").len(), 2);
    }
}
