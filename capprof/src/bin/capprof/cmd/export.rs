//! `capprof export`: a profile's allowlist as runtime settings, or compared
//! with a runtime's defaults.

use std::{
    io::{self, Read as _},
    path::PathBuf,
    process::ExitCode,
};

use capprof::{
    export::{self, Comparison, Format, Runtime},
    fsutil,
    profile::{Profile, ProfileError},
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::write_stdout;
use crate::error::Error;

/// How much of stdin a profile may take: far more than any real profile, and
/// a bound on what an untrusted pipe can make capprof hold.
const MAX_STDIN_BYTES: u64 = 64 << 20;

const EXAMPLES: &str = "\
Examples:
  capprof export profile.json                   docker run flags
  capprof export -f k8s -o caps.yaml profile.json
  capprof export --against docker profile.json  what to drop and add
  capprof export --against crio -f json -       the comparison as JSON";

/// Turn a profile into runtime settings that grant only the capabilities it
/// used, or compare it with a runtime's defaults.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct ExportArgs {
    /// Output format [default: docker].
    ///
    /// With --against, only `json` may be given: it prints the comparison as
    /// JSON instead of a table.
    #[arg(
        short,
        long,
        value_enum,
        value_name = "FORMAT",
        env = "CAPPROF_EXPORT_FORMAT"
    )]
    pub format: Option<Format>,

    /// Instead of exporting, compare the allowlist with RUNTIME's default
    /// capabilities and show what to keep, drop and add.
    #[arg(
        short,
        long,
        value_enum,
        value_name = "RUNTIME",
        env = "CAPPROF_EXPORT_AGAINST"
    )]
    pub against: Option<Runtime>,

    /// Write to FILE instead of stdout, replacing it atomically (`-` is
    /// stdout).
    #[arg(short, long, value_name = "FILE", env = "CAPPROF_EXPORT_OUT")]
    pub out: Option<PathBuf>,

    /// The profile written by `capprof run` (`-` reads stdin).
    #[arg(value_name = "PROFILE.json")]
    pub profile: String,
}

pub fn main(args: ExportArgs) -> Result<ExitCode, Error> {
    let profile = read_profile(&args.profile)?;
    warn_about(&profile);
    let text = match (args.against, args.format) {
        (None, format) => export::render(&profile, format.unwrap_or(Format::Docker))?,
        (Some(runtime), None) => comparison_table(&export::compare(&profile, runtime)),
        (Some(runtime), Some(Format::Json)) => {
            let comparison = export::compare(&profile, runtime);
            let mut json = serde_json::to_string_pretty(&comparison)
                .map_err(|e| Error::internal(format!("cannot render the comparison: {e}")))?;
            json.push('\n');
            json
        }
        (Some(_), Some(format)) => {
            return Err(Error::usage(format!(
                "--against prints a comparison, not {format} settings: \
                 drop --format, or use --format json"
            )));
        }
    };
    match args.out.as_deref() {
        Some(path) if path.as_os_str() != "-" => fsutil::write_atomic(path, text.as_bytes())
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?,
        _ => write_stdout(&text)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn read_profile(path: &str) -> Result<Profile, Error> {
    if path != "-" {
        return Ok(Profile::read(path)?);
    }
    const STDIN: &str = "<stdin>";
    let mut bytes = vec![];
    io::stdin()
        .lock()
        .take(MAX_STDIN_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ProfileError::Read {
            path: STDIN.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > MAX_STDIN_BYTES {
        return Err(Error::usage(format!(
            "{STDIN}: larger than {} MiB, not a capprof profile",
            MAX_STDIN_BYTES >> 20
        )));
    }
    Ok(Profile::from_json(STDIN, &bytes)?)
}

/// What the allowlist may lack: capabilities that were refused, or an
/// observation that could not classify every check.
fn warn_about(profile: &Profile) {
    match &profile.proof {
        Some(proof) if proof.sufficient => eprintln!("capprof: {}", proof.summary()),
        Some(proof) => tracing::warn!("{}", proof.summary()),
        None => {}
    }
    if !profile.denied.is_empty() {
        let denied: Vec<String> = profile.denied.iter().map(|c| c.to_string()).collect();
        tracing::warn!(
            "the workload was refused {}; they are not in the allowlist",
            denied.join(" ")
        );
    }
    if profile.capabilities.is_empty() {
        tracing::warn!("the profile saw no capability checks: the allowlist is empty");
    }
    if let Some(blind) = capprof::table::unobservable_note(&profile.observation) {
        tracing::warn!("{blind}");
    }
}

fn comparison_table(c: &Comparison) -> String {
    let mut rows: Vec<_> = c
        .keep
        .iter()
        .map(|cap| (*cap, true, true, "keep"))
        .chain(c.drop.iter().map(|cap| (*cap, true, false, "drop")))
        .chain(c.add.iter().map(|cap| (*cap, false, true, "add")))
        .collect();
    rows.sort_by_key(|row| row.0);
    let yes = |b: bool| if b { "yes" } else { "-" };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["CAPABILITY", "DEFAULT", "USED", "ACTION"]);
    for (cap, default, used, action) in rows {
        table.add_row([
            cap.to_string(),
            yes(default).to_owned(),
            yes(used).to_owned(),
            action.to_owned(),
        ]);
    }
    format!("{table}\n{}\n", c.summary())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExportArgs,
    }

    fn parse(argv: &[&str]) -> Result<ExportArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("export").chain(argv.iter().copied())).map(|c| c.args)
    }

    fn sample() -> Profile {
        let json = r#"{
          "schema": "capprof.profile/v1",
          "generator": "capprof test",
          "subject": {"kind": "container", "name": "web"},
          "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
          "allowlist": ["CAP_CHOWN", "CAP_SYS_ADMIN"],
          "required": ["CAP_CHOWN", "CAP_SYS_ADMIN"],
          "denied": [], "advisory": [], "silent": [],
          "capabilities": [
            {"name": "CAP_CHOWN", "number": 0, "class": "required", "granted": 1, "denied": 0,
             "first_seen": "", "last_seen": ""},
            {"name": "CAP_SYS_ADMIN", "number": 21, "class": "required", "granted": 1, "denied": 0,
             "first_seen": "", "last_seen": ""}
          ]
        }"#;
        Profile::from_json("sample.json", json.as_bytes()).unwrap()
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("capprof-export-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn flags_parse() {
        let args = parse(&["p.json"]).unwrap();
        assert_eq!(args.format, None);
        assert_eq!(args.against, None);
        let args = parse(&["-f", "k8s", "--against", "cri-o", "-o", "x.yaml", "-"]).unwrap();
        assert_eq!(args.format, Some(Format::K8s));
        assert_eq!(args.against, Some(Runtime::Crio));
        assert_eq!(args.out.as_deref(), Some(std::path::Path::new("x.yaml")));
        assert_eq!(args.profile, "-");
        assert!(parse(&["--format", "helm", "p.json"]).is_err());
        assert!(parse(&["--against", "lxd", "p.json"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn table_lists_every_capability_once() {
        let c = export::compare(&sample(), Runtime::Docker);
        let out = comparison_table(&c);
        assert!(
            out.ends_with("docker grants 14 by default: drop 13, keep 1, add 1\n"),
            "{out}"
        );
        assert_eq!(out.matches("CAP_CHOWN").count(), 1, "{out}");
        assert_eq!(out.matches("CAP_SYS_ADMIN").count(), 1, "{out}");
        let rows = |action: &str| {
            out.lines()
                .filter(|l| l.contains(&format!("┆ {action} ")))
                .count()
        };
        assert_eq!(rows("drop"), 13, "{out}");
        assert_eq!(rows("keep"), 1, "{out}");
        assert_eq!(rows("add"), 1, "{out}");
    }

    #[test]
    fn writes_out_file_and_refuses_bad_combinations() {
        let dir = scratch_dir("out");
        let input = dir.join("p.json");
        std::fs::write(&input, sample().to_json()).unwrap();
        let input = input.to_str().unwrap();
        let out = dir.join("flags.txt");
        let args = parse(&["-o", out.to_str().unwrap(), input]).unwrap();
        main(args).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "--cap-drop=ALL --cap-add=CHOWN --cap-add=SYS_ADMIN\n"
        );

        let out = dir.join("cmp.json");
        let args = parse(&[
            "-a",
            "runc",
            "-f",
            "json",
            "-o",
            out.to_str().unwrap(),
            input,
        ])
        .unwrap();
        main(args).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(json["runtime"], "runc");
        assert_eq!(json["drop"].as_array().unwrap().len(), 3);

        let args = parse(&["-a", "docker", "-f", "k8s", input]).unwrap();
        let err = main(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");

        let missing = dir.join("missing/flags.txt");
        let args = parse(&["-o", missing.to_str().unwrap(), input]).unwrap();
        let err = main(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().starts_with("cannot write "), "{err}");

        let args = parse(&[dir.join("nope.json").to_str().unwrap()]).unwrap();
        assert_eq!(main(args).unwrap_err().exit_code(), 2);

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
