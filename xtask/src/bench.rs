//! `cargo xtask bench`: what capprof costs per capability check, next to an
//! empty program, a per-event streaming design and bpftrace (BENCHMARKS.md).
//!
//! The measuring is done by `target/release/capprof-bench`, which prints one
//! JSON object per line; this module builds it, runs it once per
//! configuration per round with the order rotated each round (so that slow
//! drifts of a noisy machine spread over every configuration), and turns the
//! lines into tables of medians and min–max, ratios to the floor, and the
//! issue's targets.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::Value;

use crate::{
    setup,
    util::{display, note, run_checked, step, target_dir, workspace_root},
};

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

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

/// The configurations of one round, in their base order. `ladder*` and
/// `startup` are not attachments of the end-to-end table but run in the same
/// rotation.
const CONFIGS: &[&str] = &[
    "none",
    "empty",
    "profiled",
    "unprofiled",
    "stream",
    "bpftrace",
    "ladder1",
    "ladder2",
    "ladder3",
    "ladder4",
    "startup",
];
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
    step("building capprof and capprof-bench (release)");
    run_checked(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "capprof",
        "-p",
        "capprof-bench",
    ]))
    .context("building capprof and capprof-bench")?;
    let release = target_dir().join("release");
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
    let mut lines: Vec<Value> = Vec::new();
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
        let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let report = Report::new(&lines);
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

/// Every round of every configuration, then the storm. A failed
/// invocation is recorded and the run goes on.
fn run_all(
    plan: &Plan,
    bench: &Path,
    capprof: &Path,
    have_bpftrace: bool,
    lines: &mut Vec<Value>,
    failures: &mut Vec<String>,
) {
    for round in 0..plan.rounds {
        // Rotate, so that each configuration takes each position in turn.
        let n = CONFIGS.len();
        for i in 0..n {
            let config = CONFIGS[(i + round * 3) % n];
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

/// Runs one capprof-bench invocation; returns its JSON lines, tagged with the round.
fn run_bench(cmd: &mut Command, round: usize) -> Result<Vec<Value>> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut values = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut v: Value =
            serde_json::from_str(l).with_context(|| format!("bad line from capprof-bench: {l}"))?;
        if let Value::Object(map) = &mut v {
            map.insert("round".into(), Value::from(round));
        }
        values.push(v);
    }
    Ok(values)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn read_sysctl() -> Option<String> {
    fs::read_to_string(BPF_STATS_SYSCTL)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Leaves the machine as it was: bpf_stats as before, and no benchmark
/// cgroup of a capprof-bench that is gone. (capprof-bench enables bpf_stats
/// through BPF_ENABLE_STATS, which the kernel undoes when it exits, and its
/// workers and bpftrace die with it; this is the belt to those braces.)
fn cleanup(stats_before: Option<&str>) {
    if let (Some(before), Some(now)) = (stats_before, read_sysctl())
        && before != now
    {
        note(format_args!(
            "kernel.bpf_stats_enabled is {now}, was {before}: restoring it"
        ));
        let _ = fs::write(BPF_STATS_SYSCTL, before);
    }
    let Some(mount) = cgroup2_mount() else { return };
    let Ok(entries) = fs::read_dir(mount.join("capprof")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("bench-")
            .map(|r| r.trim_start_matches("storm-"))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        note(format_args!(
            "removing leftover cgroup {}",
            entry.path().display()
        ));
        let _ = fs::write(entry.path().join("cgroup.kill"), "1");
        remove_tree(&entry.path());
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

// ---------------------------------------------------------------------------
// statistics

/// Median, min and max of a sample.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        })
    }

    /// `412 (398–455)`.
    fn show(&self, decimals: usize) -> String {
        if self.n == 1 {
            return format!("{:.*}", decimals, self.median);
        }
        format!(
            "{:.*} ({:.*}–{:.*})",
            decimals, self.median, decimals, self.min, decimals, self.max
        )
    }
}

fn show_opt(s: Option<Summary>, decimals: usize) -> String {
    s.map_or_else(|| "–".to_owned(), |s| s.show(decimals))
}

fn ratio(a: Option<Summary>, b: Option<Summary>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"))
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Everything measured, by (config, workload).
struct Report {
    /// (config, workload) -> rows, one per round.
    measure: BTreeMap<(String, String), Vec<Value>>,
    /// Checks one iteration of a workload makes (bpf_stats' minimum over
    /// every configuration that runs a program: other processes' checks
    /// only add to it).
    checks_per_iter: BTreeMap<String, f64>,
    storm: Vec<Value>,
    startup: Vec<Value>,
    foreign: BTreeSet<String>,
}

impl Report {
    fn new(lines: &[Value]) -> Self {
        let mut measure: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        let mut storm = vec![];
        let mut startup = vec![];
        let mut foreign = BTreeSet::new();
        for v in lines {
            match text(v, "kind") {
                "measure" => {
                    for f in text(v, "foreign_progs")
                        .split(',')
                        .filter(|s| !s.is_empty())
                    {
                        foreign.insert(f.to_owned());
                    }
                    measure
                        .entry((text(v, "config").to_owned(), text(v, "workload").to_owned()))
                        .or_default()
                        .push(v.clone());
                }
                "storm" => storm.push(v.clone()),
                "startup" => startup.push(v.clone()),
                _ => {}
            }
        }
        let mut checks_per_iter = BTreeMap::new();
        for w in WORKLOADS {
            let nominal = measure
                .iter()
                .filter(|((_, wl), _)| wl == w)
                .flat_map(|(_, rows)| rows.iter())
                .find_map(|r| num(r, "nominal_checks_per_iter"))
                .unwrap_or(1.0);
            let measured = measure
                .iter()
                .filter(|((c, wl), _)| wl == w && c != "none")
                .flat_map(|(_, rows)| rows.iter())
                .filter_map(|r| num(r, "checks_per_iter"))
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

    fn rows(&self, config: &str, workload: &str) -> &[Value] {
        self.measure
            .get(&(config.to_owned(), workload.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// End-to-end CPU ns per check with the configuration set up, one
    /// value per round (each the median over the phase's windows).
    fn e2e(&self, config: &str, workload: &str) -> Option<Summary> {
        Self::summary(
            self.stable_rows(config, workload),
            "ns_per_iter",
            self.cpi(workload),
        )
    }

    /// The cost the configuration adds per check: its end-to-end time
    /// minus the mean of the baselines the same capprof-bench measured just
    /// before setting it up and just after tearing it down, with the same
    /// worker (paired in time, so that the machine's drift cancels).
    fn added(&self, config: &str, workload: &str) -> Option<Summary> {
        Self::summary(
            self.stable_rows(config, workload),
            "added_ns_per_iter",
            self.cpi(workload),
        )
    }

    /// The rounds whose end-to-end figures can be compared: those in which
    /// no other tool's tracing program came or went (`others_stable`). All
    /// rounds when there is no such round.
    fn stable_rows(&self, config: &str, workload: &str) -> Vec<&Value> {
        let rows = self.rows(config, workload);
        let stable: Vec<&Value> = rows
            .iter()
            .filter(|r| r.get("others_stable").and_then(Value::as_bool) != Some(false))
            .collect();
        if stable.is_empty() {
            rows.iter().collect()
        } else {
            stable
        }
    }

    fn cpi(&self, workload: &str) -> f64 {
        self.checks_per_iter.get(workload).copied().unwrap_or(1.0)
    }

    fn summary(rows: Vec<&Value>, key: &str, div: f64) -> Option<Summary> {
        let values: Vec<f64> = rows
            .iter()
            .filter_map(|r| num(r, key))
            .map(|x| x / div)
            .collect();
        Summary::of(&values)
    }

    fn field(&self, config: &str, workload: &str, key: &str, per_check: bool) -> Option<Summary> {
        let div = if per_check { self.cpi(workload) } else { 1.0 };
        Self::summary(self.rows(config, workload).iter().collect(), key, div)
    }

    fn per_run(&self, config: &str, workload: &str) -> Option<Summary> {
        self.field(config, workload, "ns_per_run", false)
    }

    fn render(&self, out: &mut String, plan: &Plan, args: &BenchArgs, secs: f64, load: &str) {
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
        let describe = |w: &str| match w {
            "kill" => "`kill(pid, 0)` to another uid: one CAP_KILL check per call",
            "mmap" => "mmap + munmap of one page: one advisory CAP_SYS_ADMIN check per iteration",
            _ => "kill, setuid, setgid, chroot, fchown, refused setrlimit, hopping over cgroups",
        };
        for w in WORKLOADS {
            let cpi = self.checks_per_iter.get(*w).copied().unwrap_or(1.0);
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
            for c in [
                "none",
                "empty",
                "profiled",
                "unprofiled",
                "stream",
                "bpftrace",
            ] {
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
                    show_opt(self.field(c, w, "consumer_ns_per_iter", true), 1),
                    self.stable_rows(c, w).len(),
                    self.rows(c, w).len(),
                );
            }
        }

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

        let _ = writeln!(out, "\n### Setup time per configuration (ms)\n");
        let _ = writeln!(out, "| configuration | setup ms |");
        let _ = writeln!(out, "|---|---|");
        for c in ["empty", "profiled", "unprofiled", "stream", "bpftrace"] {
            if let Some(s) = self.field(c, TARGET_WORKLOAD, "setup_ms", false) {
                let _ = writeln!(out, "| {c} | {} |", s.show(0));
            }
        }
    }

    /// Every target of issue 5, measured; which are enforced depends on --quick.
    fn targets(&self, quick: bool, have_bpftrace: bool) -> Vec<Verdict> {
        let w = TARGET_WORKLOAD;
        let timing = !quick;
        let mut v = vec![];
        let empty_added = self.added("empty", w);
        let empty_run = self.per_run("empty", w);
        for (config, limit) in [("profiled", 1.25), ("unprofiled", 1.1)] {
            let r = ratio(self.added(config, w), empty_added);
            v.push(Verdict::ratio(
                format!("{config}: added e2e cost per check ≤ {limit}× the empty program's"),
                r,
                limit,
                timing,
            ));
            v.push(Verdict::ratio(
                format!("{config}: per-run cost (bpf_stats) ≤ {limit}× the empty program's"),
                ratio(self.per_run(config, w), empty_run),
                limit,
                false,
            ));
        }
        if have_bpftrace {
            v.push(Verdict::ratio(
                "profiled cheaper per check than bpftrace (added e2e cost)".into(),
                ratio(self.added("profiled", w), self.added("bpftrace", w)),
                1.0,
                timing,
            ));
            v.push(Verdict::ratio(
                "profiled cheaper per check than bpftrace (per run, bpf_stats)".into(),
                ratio(self.per_run("profiled", w), self.per_run("bpftrace", w)),
                1.0,
                false,
            ));
        } else {
            v.push(Verdict {
                name: "profiled cheaper per check than bpftrace".into(),
                shown: "not measured (no bpftrace)".into(),
                pass: false,
                enforced: timing,
            });
        }
        match self.storm.first() {
            Some(s) => {
                let rate = num(s, "checks_per_s").unwrap_or(0.0);
                v.push(Verdict {
                    name: format!(
                        "storm: every (cgroup, cap) pair counted, nothing lost silently ({} threads, {} cgroups, {} s)",
                        num(s, "threads").unwrap_or(0.0),
                        num(s, "cgroups").unwrap_or(0.0),
                        num(s, "secs").unwrap_or(0.0)
                    ),
                    shown: format!(
                        "{} checks into {} pairs: {} missing, {} undercounted, {} without evidence; \
                         ringbuf_lost {}, counts_full {}. Overflow phase (no reader): {} checks, \
                         {} evidence attempts = {} records read + {} counted lost, {} counted",
                        num(s, "made_total").unwrap_or(0.0),
                        num(s, "pairs_exercised").unwrap_or(0.0),
                        num(s, "pairs_missing").unwrap_or(0.0),
                        num(s, "pairs_undercounted").unwrap_or(0.0),
                        num(s, "pairs_without_evidence").unwrap_or(0.0),
                        num(s, "ringbuf_lost").unwrap_or(0.0),
                        num(s, "counts_full").unwrap_or(0.0),
                        num(s, "overflow_checks").unwrap_or(0.0),
                        num(s, "overflow_attempts").unwrap_or(0.0),
                        num(s, "overflow_records").unwrap_or(0.0),
                        num(s, "overflow_lost").unwrap_or(0.0),
                        num(s, "overflow_counted").unwrap_or(0.0),
                    ),
                    pass: s.get("no_loss").and_then(Value::as_bool) == Some(true),
                    enforced: true,
                });
                v.push(Verdict {
                    name: "storm: ≥ 1M checks/s in total".into(),
                    shown: format!(
                        "{:.2}M checks/s; the workers got {:.0}% of their CPUs",
                        rate / 1e6,
                        num(s, "worker_cpu_share").unwrap_or(0.0) * 100.0
                    ),
                    pass: rate >= 1e6,
                    enforced: timing,
                });
            }
            None => v.push(Verdict {
                name: "storm".into(),
                shown: "did not run".into(),
                pass: false,
                enforced: true,
            }),
        }
        let run_true = Summary::of(
            &self
                .startup
                .iter()
                .filter_map(|s| num(s, "run_true_ms"))
                .collect::<Vec<_>>(),
        );
        let load = Summary::of(
            &self
                .startup
                .iter()
                .filter_map(|s| num(s, "load_ms"))
                .collect::<Vec<_>>(),
        );
        v.push(Verdict {
            name: "`capprof run -- true` under 300 ms wall (median)".into(),
            shown: format!(
                "{} ms; Observer::load_time() alone {} ms",
                show_opt(run_true, 0),
                show_opt(load, 0)
            ),
            pass: run_true.is_some_and(|s| s.median < 300.0),
            enforced: timing,
        });
        v
    }
}

struct Verdict {
    name: String,
    shown: String,
    pass: bool,
    enforced: bool,
}

impl Verdict {
    fn ratio(name: String, r: Option<f64>, limit: f64, enforced: bool) -> Self {
        Self {
            name,
            shown: r.map_or_else(
                || "not measured".to_owned(),
                |r| format!("{r:.2}× (limit {limit}×)"),
            ),
            pass: r.is_some_and(|r| r <= limit),
            enforced,
        }
    }
}

fn render_targets(out: &mut String, verdicts: &[Verdict], quick: bool) {
    let _ = writeln!(
        out,
        "\n### Targets (judged on `{TARGET_WORKLOAD}`){}\n",
        if quick {
            "; --quick enforces only the storm's no-loss result"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "| target | measured | result |");
    let _ = writeln!(out, "|---|---|---|");
    for v in verdicts {
        let result = match (v.pass, v.enforced) {
            (true, true) => "PASS",
            (false, true) => "FAIL",
            (true, false) => "pass (informational)",
            (false, false) => "miss (informational)",
        };
        let _ = writeln!(out, "| {} | {} | {result} |", v.name, v.shown);
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn summary_gives_median_min_and_max() {
        let s = Summary::of(&[5.0, 1.0, 3.0, f64::NAN, 4.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (3.0, 1.0, 5.0, 5));
        let even = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Summary::of(&[]).is_none());
        assert_eq!(Summary::of(&[7.0]).unwrap().show(0), "7");
        assert_eq!(even.show(1), "2.5 (1.0–4.0)");
    }

    fn row(config: &str, round: u64, added: f64, stable: bool, cpi: f64) -> Value {
        json!({
            "kind": "measure", "config": config, "workload": "mixed", "round": round,
            "ns_per_iter": 6000.0 + added, "added_ns_per_iter": added,
            "ns_per_run": 40.0, "checks_per_iter": cpi, "nominal_checks_per_iter": 6.0,
            "others_stable": stable, "foreign_progs": "",
        })
    }

    #[test]
    fn added_cost_is_per_check_and_skips_unstable_rounds() {
        let lines = vec![
            row("empty", 0, 60.0, true, 6.02),
            row("empty", 1, 600.0, false, 6.0),
            row("empty", 2, 66.0, true, 6.01),
            row("profiled", 0, 600.0, true, 6.5),
        ];
        let report = Report::new(&lines);
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
        let lines = vec![
            row("empty", 0, 60.0, false, 6.0),
            row("empty", 1, 66.0, false, 6.0),
        ];
        let report = Report::new(&lines);
        assert_eq!(report.stable_rows("empty", "mixed").len(), 2);
    }

    #[test]
    fn ratios_need_a_positive_floor() {
        let floor = Summary::of(&[-5.0]);
        assert_eq!(ratio(Summary::of(&[10.0]), floor), None);
        assert_eq!(show_ratio(None), "–");
    }
}
