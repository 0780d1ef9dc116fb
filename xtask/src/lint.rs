//! `cargo xtask lint`: the checks a contributor gets for free, run first by
//! `cargo xtask test`. Formatting, and clippy with `-D warnings` on every
//! crate: the host crates on the default toolchain, and the eBPF crate on
//! nightly for its own target, as STYLE.md asks (two passes; a plain
//! `cargo clippy --workspace` cannot build it).
//!
//! rustfmt.toml holds only stable options, so a contributor's stable
//! `cargo fmt` leaves the tree as it is. The import grouping STYLE.md asks
//! for (`group_imports = "StdExternalCrate"`, `imports_granularity =
//! "Crate"`) is nightly-only: this check passes it on nightly's command
//! line, and `cargo xtask lint --fix` applies it.

use std::process::Command;

use anyhow::{Context as _, Result};
use clap::Args;

use crate::util::{run_checked, step};

/// rustfmt's nightly-only options, passed on its command line.
const NIGHTLY_FMT_CONFIG: &str = "group_imports=StdExternalCrate,imports_granularity=Crate";

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Format the tree (with the nightly import options) and apply
    /// clippy's machine-applicable fixes, instead of only checking.
    #[arg(long)]
    fix: bool,
}

/// `cargo xtask lint`.
pub fn run(args: &LintArgs) -> Result<()> {
    if args.fix { fix() } else { check() }
}

/// Fails on the first check that does not pass.
pub fn check() -> Result<()> {
    step("checking formatting (cargo +nightly fmt --check)");
    run_checked(&mut fmt(&["--check"])).context(
        "the tree is not formatted: run `cargo xtask lint --fix` (or `cargo +nightly fmt --all \
         -- --config group_imports=StdExternalCrate,imports_granularity=Crate`)",
    )?;
    step("clippy on the host crates (-D warnings)");
    run_checked(&mut host_clippy(&[])).context("clippy found warnings in the host crates")?;
    step("clippy on the eBPF crate (nightly, bpfel-unknown-none, -D warnings)");
    run_checked(&mut ebpf_clippy(&[])).context("clippy found warnings in capprof-ebpf")?;
    Ok(())
}

fn fix() -> Result<()> {
    step("applying clippy's fixes and formatting");
    run_checked(&mut host_clippy(&[
        "--fix",
        "--allow-dirty",
        "--allow-staged",
    ]))?;
    run_checked(&mut ebpf_clippy(&[
        "--fix",
        "--allow-dirty",
        "--allow-staged",
    ]))?;
    run_checked(&mut fmt(&[]))?;
    Ok(())
}

fn fmt(extra: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fmt", "--all"])
        .args(extra)
        .args(["--", "--config", NIGHTLY_FMT_CONFIG]);
    cmd
}

fn host_clippy(extra: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "clippy",
        "--workspace",
        "--exclude",
        "capprof-ebpf",
        "--all-targets",
    ])
    .args(extra)
    .args(["--", "-D", "warnings"]);
    cmd
}

/// The eBPF crate as aya-build compiles it (capprof/build.rs), bench
/// programs included.
fn ebpf_clippy(extra: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "clippy",
        "-p",
        "capprof-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--all-features",
    ])
    .args(extra)
    .args(["--", "-D", "warnings"])
    // What aya-build passes; without it the crate's cfg checks warn.
    .env("RUSTFLAGS", "--cfg bpf_target_arch=\"x86_64\"")
    // A target directory of its own: the RUSTFLAGS above would otherwise
    // invalidate the host build's cache at every switch.
    .env(
        "CARGO_TARGET_DIR",
        crate::util::target_dir().join("lint-ebpf"),
    );
    cmd
}
