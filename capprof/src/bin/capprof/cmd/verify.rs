//! `capprof verify`: re-create a profile's workload with exactly its
//! allowlist, and show that it works; with `--ablate`, also which of the
//! capabilities it needs.

use std::process::ExitCode;

use capprof::{
    capability::{Cap, display_list},
    profile::Profile,
    proof::{
        self, Workload,
        search::{self, Ablation, Verification},
    },
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

use super::{
    rerun::{self, Progress, RerunArgs},
    write_stdout,
};
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof verify --runs 2 profiles/batch.json            success: exit status 0
  capprof verify --probe-exec 'wget -q -O- http://127.0.0.1/' profiles/web.json
  capprof verify --ablate -f json profiles/web.json     which capabilities it needs

Exit status: 0 when the allowlist is sufficient, 1 when the workload failed
with it, 2 for bad input.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyFormat {
    Table,
    Json,
}

/// Re-create the workload of a profile on its engine (or a `run` profile's
/// command) with exactly the profile's allowlist: drop ALL, then add each
/// capability. The workload passes when the probe passes, or without a
/// probe when it exits with status 0.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct VerifyArgs {
    /// Also take each capability away in turn and say which are needed.
    #[arg(long)]
    pub ablate: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = VerifyFormat::Table, env = "CAPPROF_VERIFY_FORMAT")]
    pub format: VerifyFormat,
    #[command(flatten)]
    pub rerun: RerunArgs,
    /// The profile (from `capprof record`, `run` or `minimize`).
    #[arg(value_name = "PROFILE.json")]
    pub profile: String,
}

#[derive(Serialize)]
struct Report<'a> {
    profile: &'a str,
    subject: &'a str,
    engine: String,
    allowlist: &'a [Cap],
    runs: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe: Option<String>,
    sufficient: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<String>,
    /// With `--ablate`, once the allowlist proved sufficient: one entry per
    /// capability (an empty list for an empty allowlist).
    #[serde(skip_serializing_if = "Option::is_none")]
    ablation: Option<Vec<Ablated>>,
}

#[derive(Serialize)]
struct Ablated {
    capability: Cap,
    verdict: &'static str,
    reason: String,
}

pub fn main(args: VerifyArgs) -> Result<ExitCode, Error> {
    let profile = capprof::load::load_one(&args.profile)?.profile;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(verify(args, profile))
}

async fn verify(args: VerifyArgs, profile: Profile) -> Result<ExitCode, Error> {
    let allowlist = profile.allowlist.clone();
    let mut prepared =
        rerun::prepare("verify", &args.profile, &profile, &allowlist, &args.rerun).await?;
    let runs = args.rerun.runs;
    let steps = u64::from(runs)
        * (1 + if args.ablate {
            allowlist.len() as u64
        } else {
            0
        });
    let engine = prepared.workload.engine();
    let ablate = args.ablate;
    let untried = proof::untried(&allowlist, &profile.used());
    let verification = prepared
        .search(
            "verify",
            steps,
            &allowlist,
            async |workload: &mut Workload, progress: &Progress| {
                search::verify(
                    &allowlist,
                    runs,
                    ablate,
                    &untried,
                    async |set: &[Cap]| workload.trial(set).await,
                    |e| progress.event(e),
                )
                .await
            },
        )
        .await?;
    let report = Report {
        profile: &args.profile,
        subject: &prepared.label,
        engine,
        allowlist: &allowlist,
        runs,
        probe: prepared.probe.as_ref().map(|p| p.describe()),
        sufficient: verification.sufficient(),
        failure: verification.failure.clone(),
        ablation: (ablate && verification.sufficient()).then(|| {
            verification
                .ablation
                .iter()
                .map(|(cap, v)| Ablated {
                    capability: *cap,
                    verdict: v.label(),
                    reason: v.reason(),
                })
                .collect()
        }),
    };
    let text = match args.format {
        VerifyFormat::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| Error::internal(format!("cannot render the result: {e}")))?;
            json.push('\n');
            json
        }
        VerifyFormat::Table => table(&report, &verification),
    };
    write_stdout(&text)?;
    Ok(if report.sufficient {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn table(report: &Report, v: &Verification) -> String {
    let caps = display_list(report.allowlist);
    let mut out = format!(
        "{}: {caps}\n{}\n",
        report.subject,
        match &v.failure {
            None => format!(
                "sufficient: all {} run(s) passed with exactly this allowlist",
                report.runs
            ),
            Some(why) => format!("NOT sufficient: {why}"),
        }
    );
    if !v.ablation.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(["CAPABILITY", "WITHOUT IT", "WHY"]);
        for (cap, verdict) in &v.ablation {
            table.add_row([
                cap.to_string(),
                verdict.label().to_owned(),
                verdict.reason(),
            ]);
        }
        out.push_str(&format!("{table}\n"));
        let unneeded: Vec<Cap> = v
            .ablation
            .iter()
            .filter(|(_, verdict)| *verdict == Ablation::Unneeded)
            .map(|(c, _)| *c)
            .collect();
        if !unneeded.is_empty() {
            out.push_str(&format!(
                "each of these could go on its own: {} (capprof minimize finds the smallest set)\n",
                display_list(&unneeded)
            ));
        }
    }
    out
}
