//! `capprof report`: profiles as a report people read: one HTML page, or
//! Markdown for a pull-request comment, or the worked-out report as JSON.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use capprof::{
    export::Runtime,
    load,
    report::{Options, Report, html, markdown},
};

use super::output;
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof report -o report.html profiles/           every profile in a directory
  capprof report -f markdown web.json > comment.md  for a pull-request comment
  capprof report --runtime crio -o r.html a.json b.json
  capprof report --kube -n shop -o shop.html        every workload of a namespace, across the cluster";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// One self-contained HTML page (no scripts, styles or fonts from
    /// elsewhere; works offline).
    Html,
    /// GitHub-flavoured Markdown, for a pull-request comment.
    Markdown,
    /// The worked-out report as JSON.
    Json,
}

/// Write a report of one or more profiles: a containers × capabilities
/// matrix, each one's runtime defaults against use with the evidence, the
/// exposure score and Pod Security level before and after, what was used
/// only at start-up, how to deliver capabilities to a non-root workload,
/// and a catalogue of capabilities.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ReportArgs {
    #[arg(
        short,
        long,
        value_enum,
        default_value_t = ReportFormat::Html,
        env = "CAPPROF_REPORT_FORMAT"
    )]
    pub format: ReportFormat,

    /// Write to FILE instead of stdout, replacing it atomically (`-` is
    /// stdout).
    #[arg(short, long, value_name = "FILE", env = "CAPPROF_REPORT_OUT")]
    pub out: Option<PathBuf>,

    /// Compare every profile with RUNTIME's default set [default: each
    /// profile's own runtime, else docker].
    #[arg(
        long,
        value_enum,
        value_name = "RUNTIME",
        env = "CAPPROF_REPORT_RUNTIME"
    )]
    pub runtime: Option<Runtime>,

    /// A capability whose every check came within this many seconds of the
    /// observation's start, in an observation at least twice as long, is
    /// reported as used only at start-up.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 10,
        value_parser = clap::value_parser!(u64).range(1..=86_400),
        env = "CAPPROF_STARTUP_WINDOW"
    )]
    pub startup_window: u64,

    /// Read the profiles from the cluster's CapabilityProfiles (every node's
    /// part, merged per workload container) instead of files.
    #[arg(long, env = "CAPPROF_REPORT_KUBE", conflicts_with = "inputs")]
    pub kube: bool,

    /// With --kube: only this namespace [default: every namespace].
    #[arg(short = 'n', long, value_name = "NAMESPACE", requires = "kube")]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub cluster: super::kube::KubeReadArgs,

    /// Profiles, or directories searched for `*.json` profiles (`-` reads
    /// one from stdin).
    #[arg(value_name = "PROFILE_OR_DIR", required_unless_present = "kube")]
    pub inputs: Vec<String>,
}

pub fn main(args: ReportArgs) -> Result<ExitCode, Error> {
    let inputs = if args.kube {
        if let Some(ns) = &args.namespace
            && !capprof::cri::names::is_dns_label(ns)
        {
            return Err(Error::usage(format!(
                "{:?} is not a namespace name",
                capprof::text::visible(ns)
            )));
        }
        let options = args.cluster.options();
        let found = capprof::fleet::read::profiles(args.namespace.as_deref(), &options)
            .map_err(|e| Error::usage(e.to_string()))?;
        if found.is_empty() {
            return Err(Error::usage(format!(
                "no CapabilityProfile {} yet: is `capprof daemon --kube` running on the nodes?",
                args.namespace
                    .as_deref()
                    .map_or("in the cluster".into(), |ns| format!("in namespace {ns}"))
            )));
        }
        found
    } else {
        load::load(&args.inputs)?
    };
    let report = Report::build(
        &inputs,
        Options {
            runtime: args.runtime,
            startup_window: Duration::from_secs(args.startup_window),
        },
    );
    let text = match args.format {
        ReportFormat::Html => html::render(&report),
        ReportFormat::Markdown => {
            let text = markdown::render(&report);
            if text.len() > markdown::GITHUB_COMMENT_LIMIT {
                tracing::warn!(
                    "the Markdown report is {} characters, more than a GitHub comment takes ({}); \
                     report fewer profiles at a time",
                    text.len(),
                    markdown::GITHUB_COMMENT_LIMIT
                );
            }
            text
        }
        ReportFormat::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| Error::internal(format!("cannot render the report: {e}")))?;
            json.push('\n');
            json
        }
    };
    output::write(args.out.as_deref(), &text)?;
    if let Some(out) = args.out.as_deref().filter(|p| p.as_os_str() != "-") {
        eprintln!(
            "capprof: wrote the report of {} profile{} to {}",
            inputs.len(),
            if inputs.len() == 1 { "" } else { "s" },
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
