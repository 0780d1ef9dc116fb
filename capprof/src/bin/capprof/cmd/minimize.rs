//! `capprof minimize`: the smallest allowlist the workload still works
//! with, found by re-running it, and written as a proven profile.

use std::{path::PathBuf, process::ExitCode};

use capprof::{
    capability::{Cap, display_list},
    fsutil,
    profile::{KeptIdentity, MAX_PROOF_ENTRIES, Profile, Proof},
    proof::{
        self, Workload,
        search::{self, Ablation, Minimized},
    },
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::{
    rerun::{self, Progress, RerunArgs},
    write_stdout,
};
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof minimize --out web.min.json --probe-exec 'wget -q -O- http://127.0.0.1/' web.json
  capprof minimize --runs 5 --out job.min.json job.json   success: exit status 0
  capprof export web.min.json                               the proven flags";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MinimizeFormat {
    /// One row per capability.
    Table,
    /// The proof, as JSON.
    Json,
}

/// Find the smallest set of capabilities the workload still works with:
/// take each capability of the allowlist away in turn, for good when every
/// one of --runs runs passes without it and leaves no process more
/// privileged than with the whole allowlist. Writes a profile whose
/// allowlist is the result, with a `proof`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct MinimizeArgs {
    /// Where to write the minimized profile (atomically).
    #[arg(long, short, value_name = "FILE")]
    pub out: PathBuf,
    /// Try security-relevant capabilities (AUDIT_WRITE, IPC_LOCK) the
    /// workload was seen to use too: their loss can leave a workload
    /// running but less safe. Ones it never used are always tried.
    #[arg(long)]
    pub drop_security_relevant: bool,
    /// Output format of the summary on stdout.
    #[arg(short, long, value_enum, default_value_t = MinimizeFormat::Table, env = "CAPPROF_MINIMIZE_FORMAT")]
    pub format: MinimizeFormat,
    #[command(flatten)]
    pub rerun: RerunArgs,
    /// The profile to minimize.
    #[arg(value_name = "PROFILE.json")]
    pub profile: String,
}

pub fn main(args: MinimizeArgs) -> Result<ExitCode, Error> {
    let profile = capprof::load::load_one(&args.profile)?.profile;
    fsutil::check_writable(&args.out)
        .map_err(|e| Error::usage(format!("cannot write {}: {e}", args.out.display())))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(minimize(args, profile))
}

async fn minimize(args: MinimizeArgs, profile: Profile) -> Result<ExitCode, Error> {
    // The transient capabilities too: observation says nothing used
    // them, a run says whether the workload fails without them.
    let allowlist = profile.candidates();
    let mut prepared =
        rerun::prepare("minimize", &args.profile, &profile, &allowlist, &args.rerun).await?;
    let runs = args.rerun.runs;
    let engine = prepared.workload.engine();
    let steps = u64::from(runs) * (1 + allowlist.len() as u64);
    let untried = if args.drop_security_relevant {
        vec![]
    } else {
        proof::untried(&allowlist, &profile.used())
    };
    let minimized = prepared
        .search(
            "minimize",
            steps,
            &allowlist,
            async |workload: &mut Workload, progress: &Progress| {
                search::minimize(
                    &allowlist,
                    runs,
                    &untried,
                    async |set: &[Cap]| workload.trial(set).await,
                    |e| progress.event(e),
                )
                .await
            },
        )
        .await?;

    let proof = proof_of(&minimized, &allowlist, runs, engine, &prepared);
    let mut out = profile.clone();
    out.allowlist = minimized.result.clone();
    out.proof = Some(proof.clone());
    let json = out.to_json();
    // What is written must read back as a valid profile.
    Profile::from_json(&args.out.display().to_string(), json.as_bytes())?;
    fsutil::write_atomic(&args.out, json.as_bytes())
        .map_err(|e| Error::usage(format!("cannot write {}: {e}", args.out.display())))?;
    eprintln!(
        "capprof: minimize: wrote {} (allowlist: {})",
        args.out.display(),
        display_list(&minimized.result)
    );
    let text = match args.format {
        MinimizeFormat::Json => {
            let mut json = serde_json::to_string_pretty(&proof)
                .map_err(|e| Error::internal(format!("cannot render the proof: {e}")))?;
            json.push('\n');
            json
        }
        MinimizeFormat::Table => table(&minimized, &allowlist),
    };
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn proof_of(
    m: &Minimized,
    observed: &[Cap],
    runs: u32,
    engine: String,
    prepared: &rerun::Prepared,
) -> Proof {
    let with = |want: fn(&Ablation) -> bool| -> Vec<Cap> {
        m.verdicts
            .iter()
            .filter(|(_, v)| want(v))
            .map(|(c, _)| *c)
            .collect()
    };
    let kept_identity: Vec<KeptIdentity> = m
        .verdicts
        .iter()
        .filter_map(|(cap, v)| match v {
            Ablation::Identity(drifts) => Some((cap, drifts)),
            _ => None,
        })
        .flat_map(|(cap, drifts)| {
            drifts.iter().take(MAX_PROOF_ENTRIES).map(|d| KeptIdentity {
                capability: *cap,
                process: d.process.clone(),
                pid: d.pid,
                drift: d.gained.iter().take(MAX_PROOF_ENTRIES).cloned().collect(),
            })
        })
        .take(MAX_PROOF_ENTRIES)
        .collect();
    Proof {
        method: "minimize".into(),
        sufficient: true,
        runs,
        engine,
        at: rerun::now(),
        probe: prepared.probe.as_ref().map(|p| p.describe()),
        observed: observed.to_vec(),
        needed: with(|v| matches!(v, Ablation::Needed(_))),
        unneeded: with(|v| matches!(v, Ablation::Unneeded)),
        kept_security_relevant: with(|v| matches!(v, Ablation::SecurityRelevant)),
        kept_identity,
        kept_inconclusive: with(|v| matches!(v, Ablation::Inconclusive(_))),
    }
}

fn table(m: &Minimized, observed: &[Cap]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["CAPABILITY", "VERDICT", "WHY"]);
    for (cap, verdict) in &m.verdicts {
        table.add_row([
            cap.to_string(),
            verdict.label().to_owned(),
            verdict.reason(),
        ]);
    }
    format!(
        "{table}\nallowlist: {} (observed: {})\n",
        display_list(&m.result),
        display_list(observed)
    )
}
