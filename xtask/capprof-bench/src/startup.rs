//! `capprof-bench startup`: `capprof run -- true`, and load + attach alone.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use capprof::observer::Observer;
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
    /// Wall time of `capprof run --quiet -- true`, load and attach included.
    pub run_true_ms: f64,
    /// `Observer::load_time()`: load, calibrate and attach alone.
    pub load_ms: f64,
}

pub fn startup(args: &StartupArgs) -> Result<()> {
    let started = Instant::now();
    let out = Command::new(&args.capprof)
        .args(["run", "--quiet", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", args.capprof.display()))?;
    let run_true_ms = started.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "`capprof run -- true` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let observer = Observer::load(None).context("loading capprof")?;
    let load_ms = observer.load_time().as_secs_f64() * 1e3;
    drop(observer);
    emit(&StartupLine {
        kind: "startup",
        run_true_ms,
        load_ms,
    })
}
