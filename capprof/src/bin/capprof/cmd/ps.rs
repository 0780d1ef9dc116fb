//! `capprof ps`: the containers a running daemon profiles.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use capprof::daemon::{
    client::{self, ClientError, DEFAULT_SOCKET},
    query::ContainerSummary,
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use hyper::{StatusCode, body::Bytes};

use super::write_stdout;
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof ps                                   every profiled container
  capprof ps --format json | jq '.[].name'
  capprof profile web                          one container's profile";

/// List the containers a running `capprof daemon` profiles, with their
/// allowlists so far.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct PsArgs {
    /// The daemon's API socket.
    #[arg(long, value_name = "PATH", env = "CAPPROF_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Output format.
    #[arg(short, long, value_enum, value_name = "FORMAT", env = "CAPPROF_PS_FORMAT", default_value_t = PsFormat::Table)]
    pub format: PsFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PsFormat {
    /// One row per container.
    Table,
    /// The daemon's list, as JSON.
    Json,
}

pub fn main(args: PsArgs) -> Result<ExitCode, Error> {
    let text = run(&args)?;
    write_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn run(args: &PsArgs) -> Result<String, Error> {
    let body = fetch(&args.socket, "/v1/containers")?.ok_or_else(|| {
        Error::internal(format!(
            "the daemon at {} has no container list: is it a capprof daemon?",
            args.socket.display()
        ))
    })?;
    // Validate what the daemon sent, rather than pass it on blindly.
    let list: Vec<ContainerSummary> = serde_json::from_slice(&body).map_err(|e| {
        Error::internal(format!(
            "the daemon at {} sent a malformed container list: {e}",
            args.socket.display()
        ))
    })?;
    match args.format {
        PsFormat::Json => {
            let mut json = serde_json::to_string_pretty(&list)
                .map_err(|e| Error::internal(format!("cannot render the list: {e}")))?;
            json.push('\n');
            Ok(json)
        }
        PsFormat::Table if list.is_empty() => Ok("no containers profiled yet\n".to_owned()),
        PsFormat::Table => Ok(format!("{}\n", table(&list))),
    }
}

/// The widest `ps` table, so that it fits a terminal of 100 columns.
const TABLE_WIDTH: u16 = 100;

/// The shadow column: how the container fares against its candidate
/// allowlist (`capprof daemon --shadow`).
fn shadow(c: &ContainerSummary) -> String {
    let Some(status) = &c.shadow else {
        return "-".to_owned();
    };
    if status.violations.is_empty() {
        return match &status.safe_since {
            Some(t) => format!("safe to enforce since {t}"),
            None => "safe to enforce (nothing seen yet)".to_owned(),
        };
    }
    let refused: Vec<String> = status
        .violations
        .iter()
        .map(|v| format!("{} ({})", v.capability, v.checks))
        .collect();
    format!("NOT safe: would refuse {}", refused.join(", "))
}

fn table(list: &[ContainerSummary]) -> Table {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            capprof::text::visible(s)
        }
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    // Fits 100 columns: long images and allowlists wrap. The runtime and
    // first-seen time are in --format json.
    table.set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
    table.set_width(TABLE_WIDTH);
    table.set_header([
        "ID",
        "NAME",
        "IMAGE",
        "STATE",
        "ALLOWLIST",
        "LAST SEEN",
        "SHADOW",
    ]);
    for c in list {
        let allowlist = if c.allowlist.is_empty() {
            "(none)".to_owned()
        } else {
            c.allowlist
                .iter()
                .map(|cap| cap.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        table.add_row([
            capprof::engine::short_id(&c.id),
            dash(c.name.as_deref().unwrap_or_default()),
            dash(c.image.as_deref().unwrap_or_default()),
            dash(&c.state),
            allowlist,
            // Seconds are enough to tell apart; the JSON has the rest.
            dash(c.last_seen.get(..19).unwrap_or(&c.last_seen)),
            shadow(c),
        ]);
    }
    table
}

/// GETs `path` from the daemon: the body on 200, None on 404, an error
/// with the daemon's own message otherwise.
pub(crate) fn fetch(socket: &Path, path: &str) -> Result<Option<Bytes>, Error> {
    let (status, body) = client::get_blocking(socket, path).map_err(client_error)?;
    let message = || client::error_message(&body);
    match status {
        StatusCode::OK => Ok(Some(body)),
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT => Err(Error::usage(message())),
        StatusCode::SERVICE_UNAVAILABLE => Err(Error::usage(format!(
            "the capprof daemon at {}: {}",
            socket.display(),
            message()
        ))),
        status => Err(Error::internal(format!(
            "the capprof daemon at {} answered {status}: {}",
            socket.display(),
            message()
        ))),
    }
}

pub(crate) fn client_error(err: ClientError) -> Error {
    if err.is_prerequisite() {
        Error::usage(err.to_string())
    } else {
        Error::internal(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use capprof::daemon::api::testing::{ThreadServer, sample_list};
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PsArgs,
    }

    fn parse(argv: &[&str]) -> Result<PsArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("ps").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("capprof-ps-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_parse() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.format, PsFormat::Table);
        let args = parse(&["--socket", "/tmp/x.sock", "-f", "json"]).unwrap();
        assert_eq!(args.socket, Path::new("/tmp/x.sock"));
        assert_eq!(args.format, PsFormat::Json);
        assert!(parse(&["--format", "yaml"]).is_err());
        assert!(parse(&["web"]).is_err());
    }

    #[test]
    fn lists_containers_as_a_table_and_as_json() {
        let dir = scratch("list");
        let server = ThreadServer::start(dir.join("capprof.sock"));
        let socket = server.socket.to_str().unwrap();

        let out = run(&parse(&["--socket", socket]).unwrap()).unwrap();
        let header = out.lines().nth(1).unwrap();
        for column in ["ID", "NAME", "IMAGE", "STATE", "ALLOWLIST", "LAST SEEN"] {
            assert!(header.contains(column), "{out}");
        }
        for line in out.lines() {
            assert!(
                line.chars().count() <= 100,
                "wider than 100 columns: {line}"
            );
        }
        let web = out.lines().find(|l| l.contains(" web ")).unwrap();
        assert!(web.starts_with("│ 0123456789ab "), "{out}");
        assert!(web.contains("CAP_CHOWN,"), "{out}");
        assert!(web.contains(" running "), "{out}");
        // Only the short id; nothing known: a dash.
        let other = out.lines().find(|l| l.contains("fedcba987654")).unwrap();
        assert!(!other.contains("fedcba9876543210"), "{out}");
        assert!(
            other.contains(" (none) ") && other.contains(" exited "),
            "{out}"
        );

        let out = run(&parse(&["--socket", socket, "--format", "json"]).unwrap()).unwrap();
        let list: Vec<ContainerSummary> = serde_json::from_str(&out).unwrap();
        assert_eq!(list, sample_list());

        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_daemon_is_a_one_line_usage_error() {
        let dir = scratch("none");
        let socket = dir.join("capprof.sock");
        let err = run(&parse(&["--socket", socket.to_str().unwrap()]).unwrap()).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "no capprof daemon answers at {}: no such socket (start one with `capprof daemon`)",
                socket.display()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
