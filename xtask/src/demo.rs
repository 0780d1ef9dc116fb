//! `cargo xtask demo`: capprof's main job on a bundled sample. It profiles
//! `demo/sample.sh` on the host and prints the allowlist as `docker run`
//! flags. Each step is a function, so that a container step can join later.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    setup,
    util::{run_checked, stdout_of, step, target_dir, workspace_root},
};

/// The sample workload, relative to the workspace root.
const SAMPLE: &str = "demo/sample.sh";

/// `cargo xtask demo`.
pub fn run() -> Result<()> {
    setup::ensure()?;
    let capprof = build_capprof()?;
    let profile = profile_sample(&capprof)?;
    print_docker_flags(&capprof, &profile)?;
    Ok(())
}

/// `cargo build --release -p capprof`; returns the binary's path.
fn build_capprof() -> Result<PathBuf> {
    step("building capprof (release)");
    run_checked(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "capprof",
    ]))
    .context("building capprof")?;
    Ok(target_dir().join("release").join("capprof"))
}

/// Profiles the sample on the host; capprof prints its table to stderr.
/// Returns the profile's path.
fn profile_sample(capprof: &PathBuf) -> Result<PathBuf> {
    let out_dir = target_dir().join("demo");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let profile = out_dir.join("profile.json");
    step(format_args!("profiling {SAMPLE} with capprof run"));
    run_checked(
        Command::new(capprof)
            .current_dir(workspace_root())
            .arg("run")
            .arg("--out")
            .arg(&profile)
            .args(["--", "/bin/sh", SAMPLE]),
    )
    .context("profiling the sample workload")?;
    step(format_args!("profile written to {}", profile.display()));
    Ok(profile)
}

/// Exports the profile for Docker and prints it as a `docker run` line.
fn print_docker_flags(capprof: &PathBuf, profile: &PathBuf) -> Result<()> {
    step("exporting the allowlist for docker");
    let flags = stdout_of(
        Command::new(capprof)
            .current_dir(workspace_root())
            .args(["export", "--format", "docker"])
            .arg(profile),
    )
    .context("exporting the profile for docker")?;
    let flags = flags.split_whitespace().collect::<Vec<_>>().join(" ");
    if flags.starts_with("docker ") {
        println!("{flags}");
    } else {
        println!("docker run {flags} …");
    }
    Ok(())
}
