//! `capprof-bench startup`: `capprof run -- true` warm (from the verified
//! programs an earlier run kept, once its links are gone), again right
//! after (taking over the first one's links), and cold (`--cold`); a cold
//! load + attach alone; and bpftrace's own start-up (`bpftrace -e 'BEGIN {
//! exit(); }'`) in the same round, with the machine's load average: on a
//! shared machine, the numbers mean something only next to each other.
//! It returns only once no run's links linger, so that what is measured
//! next pays for none.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use capprof::observer::{Observer, warm};
use clap::Args;
use serde::Serialize;

use crate::util::emit;

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The capprof binary to time.
    #[arg(long)]
    pub capprof: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct StartupLine {
    pub kind: &'static str,
    /// Wall time of `capprof run --quiet -- true`, load and attach
    /// included, started warm (a run before it kept the programs, and its
    /// links are gone).
    pub run_true_ms: f64,
    /// The same, started at once after another: it takes over the links
    /// of the one before.
    pub run_again_ms: f64,
    /// The same with `--cold`: BTF, verifier and calibration.
    pub run_cold_ms: f64,
    /// `Observer::load_time()`, cold: load, calibrate and attach alone.
    pub load_ms: f64,
    /// Wall time of `bpftrace -e 'BEGIN { exit(); }'`; None without bpftrace.
    pub bpftrace_ms: Option<f64>,
    /// The 1-minute load average, from /proc/loadavg, before the runs.
    pub load_avg: f64,
}

/// Wall time of one command, which must succeed, in ms.
fn time_ms(cmd: &mut Command, shown: &str) -> Result<f64> {
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {shown}"))?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}

fn load_avg() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("/proc/loadavg: {text:?}"))
}

/// Whether `program` is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

pub fn startup(args: &StartupArgs) -> Result<()> {
    let load_avg = load_avg()?;
    let run = |extra: &[&str]| {
        time_ms(
            Command::new(&args.capprof)
                .args(["run", "--quiet"])
                .args(extra)
                .args(["--", "true"]),
            &format!("capprof run --quiet {} -- true", extra.join(" ")),
        )
    };
    // Waits until no run's links linger (they go `warm::LINGER` after it).
    let settle = || {
        let root = std::path::Path::new(warm::DEFAULT_ROOT);
        match warm::wait_settled(root, warm::LINGER * 4) {
            true => Ok(()),
            false => Err(anyhow::anyhow!(
                "a capprof run's links were still attached {:?} after it",
                warm::LINGER * 4
            )),
        }
    };
    // Keeps the programs, if no run has yet.
    run(&[])?;
    let bpftrace_ms = match on_path("bpftrace") {
        true => Some(time_ms(
            Command::new("bpftrace").args(["-e", "BEGIN { exit(); }"]),
            "bpftrace -e 'BEGIN { exit(); }'",
        )?),
        false => None,
    };
    settle()?;
    let run_true_ms = run(&[])?;
    let run_again_ms = run(&[])?;
    let run_cold_ms = run(&["--cold"])?;
    let observer = Observer::load(None).context("loading capprof")?;
    let load_ms = observer.load_time().as_secs_f64() * 1e3;
    drop(observer);
    settle()?;
    emit(&StartupLine {
        kind: "startup",
        run_true_ms,
        run_again_ms,
        run_cold_ms,
        load_ms,
        bpftrace_ms,
        load_avg,
    })
}
