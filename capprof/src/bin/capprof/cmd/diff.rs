//! `capprof diff`: a new observation against a committed profile, as a CI
//! gate.

use std::process::ExitCode;

use capprof::{
    diff::{self, Diff},
    load,
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::output;
use crate::error::Error;

/// The exit status when NEW needs a capability BASELINE does not grant.
pub const REGRESSION: u8 = 3;

const EXAMPLES: &str = "\
Exit status: 0 when NEW needs nothing beyond BASELINE's allowlist, 3 when it
needs more (a regression), 2 on bad input.

Examples:
  capprof run --quiet --out new.json -- make test
  capprof diff caps.json new.json               fails (3) on a new need
  capprof diff -f json caps.json new.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

/// Compare a new profile with a baseline: list each capability NEW needs
/// that BASELINE does not grant (a regression, with its evidence), and each
/// one BASELINE grants that NEW no longer used ("could drop", which does not
/// fail). Rows are keyed by capability and class, never by pid or time.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct DiffArgs {
    #[arg(
        short,
        long,
        value_enum,
        default_value_t = DiffFormat::Table,
        env = "CAPPROF_DIFF_FORMAT"
    )]
    pub format: DiffFormat,

    /// The committed profile: what the workload is allowed.
    #[arg(value_name = "BASELINE")]
    pub baseline: String,

    /// The new observation (`-` reads it from stdin).
    #[arg(value_name = "NEW")]
    pub new: String,
}

pub fn main(args: DiffArgs) -> Result<ExitCode, Error> {
    if args.baseline == "-" && args.new == "-" {
        return Err(Error::usage(
            "only one of BASELINE and NEW can be `-` (stdin)",
        ));
    }
    let baseline = load::load_one(&args.baseline)?;
    let new = load::load_one(&args.new)?;
    let d = diff::diff(
        &baseline.source,
        &baseline.profile,
        &new.source,
        &new.profile,
    );
    let text = match args.format {
        DiffFormat::Table => table(&d),
        DiffFormat::Json => {
            let mut json = serde_json::to_string_pretty(&d)
                .map_err(|e| Error::internal(format!("cannot render the diff: {e}")))?;
            json.push('\n');
            json
        }
    };
    output::write_stdout(&text)?;
    for note in &d.notes {
        tracing::warn!("{note}");
    }
    Ok(if d.is_regression() {
        ExitCode::from(REGRESSION)
    } else {
        ExitCode::SUCCESS
    })
}

fn table(d: &Diff) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["CAPABILITY", "BASELINE", "NEW", "CHANGE", "EVIDENCE"]);
    for row in &d.rows {
        let change = match row.reason {
            Some(reason) => format!("{} ({reason})", row.change.label()),
            None => row.change.label().to_owned(),
        };
        let evidence: Vec<String> = row
            .evidence
            .iter()
            .map(|e| {
                let mut s = e.exe.clone().unwrap_or_else(|| e.comm.clone());
                for part in [&e.syscall, &e.call_site].into_iter().flatten() {
                    s.push_str(" · ");
                    s.push_str(part);
                }
                s.push_str(&format!(" · uid {}", e.uid));
                capprof::text::visible(&s)
            })
            .collect();
        table.add_row([
            row.capability.to_string(),
            row.baseline.clone().unwrap_or_else(|| "-".into()),
            row.new.clone().unwrap_or_else(|| "-".into()),
            change,
            evidence.join("\n"),
        ]);
    }
    format!("{table}\n{}\n", d.summary())
}
