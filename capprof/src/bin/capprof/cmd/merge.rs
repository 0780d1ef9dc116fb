//! `capprof merge`: many observations of one workload as one profile.

use std::{path::PathBuf, process::ExitCode};

use capprof::{load, merge};

use super::output;
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof merge -o web.json replica-1.json replica-2.json replica-3.json
  capprof merge -o web.json profiles/        every *.json under profiles/";

/// Merge profiles of one workload (replicas, test runs, nodes) into one: the
/// union of what each saw, with coverage: how many were merged
/// (`coverage.profiles`), and per capability in how many it was seen
/// (`seen_in`) and by which executables. Refuses profiles whose backends
/// see different classes of checks.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct MergeArgs {
    /// The merged profile, replaced atomically (`-` is stdout).
    #[arg(short, long, value_name = "FILE", env = "CAPPROF_MERGE_OUT")]
    pub out: PathBuf,

    /// Profiles, or directories searched for `*.json` profiles (`-` reads
    /// one from stdin).
    #[arg(value_name = "PROFILE_OR_DIR", required = true)]
    pub inputs: Vec<String>,
}

pub fn main(args: MergeArgs) -> Result<ExitCode, Error> {
    let inputs = load::load(&args.inputs)?;
    for input in inputs.iter().filter(|i| !i.unknown_fields.is_empty()) {
        tracing::warn!(
            "{}: written by a newer capprof; {} not carried into the merge",
            input.source,
            input.unknown_fields.join(", ")
        );
    }
    let merge::Merged {
        profile: merged,
        skipped,
    } = merge::merge(&inputs)?;
    for skipped in &skipped {
        crate::log::warn(skipped);
    }
    output::write(Some(&args.out), &merged.to_json())?;
    eprintln!("capprof: {}", merge::summary(&merged));
    Ok(ExitCode::SUCCESS)
}
