//! `cargo xtask fuzz`: the libFuzzer targets (`cargo fuzz`), each run for a
//! bounded time from the seed corpus kept in the repository. The profile
//! parser's target lives in capprof-profile/fuzz and builds on the model
//! alone; the daemon's lives in capprof/fuzz and needs capprof, so its
//! build reuses the eBPF object a workspace build left behind.
//! `cargo xtask test` runs every target briefly; run longer by hand.
//!
//! The targets build on nightly with coverage instrumentation and no
//! sanitizer (the code under test is safe Rust, where a sanitizer adds
//! build time and finds little). New inputs go to a corpus under target/, so
//! the repository's seeds stay as committed; a crash is kept under
//! target/fuzz/artifacts and named, with the command that replays it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::util::{display, note, run_checked, step, target_dir, workspace_root};

/// Every fuzz target, by its name in its fuzz directory's Cargo.toml.
pub const TARGETS: &[&str] = &["profile", "daemon_http"];

/// The fuzz directory (a `cargo fuzz` package) that holds `target`, from
/// the workspace root.
fn fuzz_dir_of(target: &str) -> &'static str {
    match target {
        "profile" => "capprof-profile/fuzz",
        _ => "capprof/fuzz",
    }
}

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    seconds: u64,
    /// The targets to fuzz (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

/// `cargo xtask fuzz`.
pub fn run(args: &FuzzArgs) -> Result<std::process::ExitCode> {
    crate::setup::ensure_cargo_fuzz()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    Ok(if fuzz(&targets, args.seconds)? {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Builds the targets and runs each for `seconds`. `Ok(false)` when a
/// target found a crash, a hang or nothing to run.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<bool> {
    let mut dirs: Vec<&str> = targets.iter().map(|t| fuzz_dir_of(t)).collect();
    dirs.dedup();
    for dir in dirs {
        build(dir)?;
    }
    let mut ok = true;
    for target in targets {
        ok &= run_target(target, seconds)?;
    }
    Ok(ok)
}

fn fuzz_dir(target: &str) -> PathBuf {
    workspace_root().join(fuzz_dir_of(target))
}

fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

fn build(dir: &str) -> Result<()> {
    step(format_args!(
        "building the fuzz targets in {dir} (cargo +nightly fuzz build)"
    ));
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "fuzz",
        "build",
        "--sanitizer",
        "none",
        "--fuzz-dir",
    ])
    .arg(workspace_root().join(dir))
    .arg("--target-dir")
    .arg(fuzz_target_dir());
    // The workspace's own eBPF object, when it was built: not again. The
    // model's targets never need it.
    if dir != "capprof-profile/fuzz"
        && let Some(object) = built_ebpf_object()
    {
        note(format_args!("CAPPROF_EBPF_OBJECT={}", object.display()));
        cmd.env("CAPPROF_EBPF_OBJECT", object);
    }
    run_checked(&mut cmd).context("building the fuzz targets")
}

/// The newest eBPF object a build of capprof left in target/.
fn built_ebpf_object() -> Option<PathBuf> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for profile in ["debug", "release"] {
        let Ok(entries) = fs::read_dir(target_dir().join(profile).join("build")) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("capprof-") {
                continue;
            }
            let object = entry.path().join("out/capprof");
            if let Ok(modified) = fs::metadata(&object).and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(t, _)| modified > *t)
            {
                newest = Some((modified, object));
            }
        }
    }
    newest.map(|(_, object)| object)
}

fn run_target(target: &str, seconds: u64) -> Result<bool> {
    let binary = fuzz_target_dir()
        .join("x86_64-unknown-linux-gnu/release")
        .join(target);
    let corpus = fuzz_target_dir().join("corpus").join(target);
    let artifacts = fuzz_target_dir().join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let seeds = fuzz_dir(target).join("corpus").join(target);
    step(format_args!("fuzzing {target} for {seconds} s"));
    let mut cmd = Command::new(&binary);
    cmd.arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&corpus)
        .arg(&seeds);
    note(format_args!("$ {}", display(&cmd)));
    let output = cmd
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let runs = executed_units(&stderr);
    if !output.status.success() {
        eprintln!("{}", tail(&stderr, 40));
        let crash = newest_file(&artifacts);
        step(format_args!(
            "fuzz target {target} FAILED ({}){}",
            output.status,
            crash
                .map(|c| format!("; replay with: {} {}", binary.display(), c.display()))
                .unwrap_or_default()
        ));
        return Ok(false);
    }
    match runs {
        Some(runs) if runs > 0 => {
            note(format_args!(
                "{target}: {runs} inputs in {seconds} s, no failure"
            ));
            Ok(true)
        }
        _ => {
            eprintln!("{}", tail(&stderr, 20));
            bail!("fuzz target {target} ran no input");
        }
    }
}

/// libFuzzer's `stat::number_of_executed_units: N`.
fn executed_units(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn newest_file(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_stats_give_the_run_count() {
        let stderr = "Done 661290 runs in 21 second(s)\n\
                      stat::number_of_executed_units: 661290\n\
                      stat::average_exec_per_sec:     31490\n";
        assert_eq!(executed_units(stderr), Some(661290));
        assert_eq!(executed_units("INFO: Seed: 1\n"), None);
    }

    #[test]
    fn every_target_has_a_source_and_seeds() {
        for target in TARGETS {
            let manifest = fs::read_to_string(fuzz_dir(target).join("Cargo.toml")).unwrap();
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target}"
            );
            let seeds = fs::read_dir(fuzz_dir(target).join("corpus").join(target)).unwrap();
            assert!(seeds.count() > 0, "{target} has no seeds");
        }
    }
}
