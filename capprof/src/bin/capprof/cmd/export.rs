//! `capprof export`: a profile's allowlist as runtime settings, or compared
//! with a runtime's defaults.

use std::{path::PathBuf, process::ExitCode};

use capprof::{
    capability::Cap,
    caveat::Caveat,
    conditional::SysctlsChoice,
    export::{self, Comparison, ExportError, Format, Runtime},
    fsutil, k8s_patch,
    profile::Profile,
};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use super::write_stdout;
use crate::error::Error;

const EXAMPLES: &str = "\
Examples:
  capprof export profile.json                   docker run flags
  capprof export -f k8s -o caps.yaml profile.json
  capprof export --against docker profile.json  what to drop and add
  capprof export --against crio -f json -       the comparison as JSON
  capprof export -f k8s --target-sysctls relaxed profile.json
                                                nodes that lower the sysctls as Docker does
  capprof export -f k8s-patch nginx.json sidecar.json | \
    kubectl -n shop patch deployment web --type strategic --patch-file /dev/stdin
  capprof export -f k8s-patch --out-dir patches/ profiles/*.json
                                                one NAMESPACE.KIND.NAME.yaml per owner";

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

    /// What the target runtime sets in the container's network namespace,
    /// when you know better than capprof.
    ///
    /// Where the profile was recorded, a bind below 1024 or an ICMP
    /// datagram socket may have needed no capability only because the
    /// runtime relaxed net.ipv4.ip_unprivileged_port_start or
    /// net.ipv4.ping_group_range (the profile's `conditional` list).
    /// `relaxed`: the target lowers them as Docker does (0, and all
    /// groups), so those capabilities stay out. `kernel`: it keeps the
    /// kernel's defaults (1024, and no group), so they are added. Default:
    /// what the target is known to do: docker and compose relaxed (not
    /// with --network host), podman 1024 and gid 0 only, k8s, oci,
    /// systemd, crio, containerd and runc the kernel's defaults.
    #[arg(
        long,
        value_enum,
        value_name = "relaxed|kernel",
        env = "CAPPROF_EXPORT_TARGET_SYSCTLS"
    )]
    pub target_sysctls: Option<SysctlsChoice>,

    /// Write to FILE instead of stdout, replacing it atomically (`-` is
    /// stdout).
    #[arg(short, long, value_name = "FILE", env = "CAPPROF_EXPORT_OUT")]
    pub out: Option<PathBuf>,

    /// With --format k8s-patch: write one patch per owning object into DIR
    /// (created if missing), as NAMESPACE.KIND.NAME.yaml, instead of
    /// refusing profiles of different owners.
    #[arg(
        long,
        value_name = "DIR",
        env = "CAPPROF_EXPORT_OUT_DIR",
        conflicts_with = "out"
    )]
    pub out_dir: Option<PathBuf>,

    /// Refuse (exit 2) a profile whose recording began after the workload
    /// had started, instead of only warning: its start-up needs were not
    /// seen.
    #[arg(long, env = "CAPPROF_REQUIRE_COMPLETE")]
    pub require_complete: bool,

    /// The profile written by `capprof run` or `record` (`-` reads stdin).
    /// --format k8s-patch takes several: the containers of one owner make
    /// one patch.
    #[arg(value_name = "PROFILE.json", required = true, num_args = 1..)]
    pub profiles: Vec<String>,
}

pub fn main(args: ExportArgs) -> Result<ExitCode, Error> {
    if args.format == Some(Format::K8sPatch) && args.against.is_none() {
        return k8s_patch(&args);
    }
    if args.out_dir.is_some() {
        return Err(Error::usage("--out-dir is for --format k8s-patch"));
    }
    let [path] = args.profiles.as_slice() else {
        return Err(Error::usage(
            "only --format k8s-patch takes several profiles (capprof merge combines them)",
        ));
    };
    let profile = checked_profile(path, args.require_complete)?;
    let chosen = args.target_sysctls.map(SysctlsChoice::sysctls);
    let compare = |runtime: Runtime| {
        export::compare_under(&profile, runtime, chosen.unwrap_or(runtime.sysctls()))
    };
    let text = match (args.against, args.format) {
        (None, Some(Format::Json)) if chosen.is_some() => {
            return Err(Error::usage(
                "--target-sysctls decides what settings and --against grant; \
                 --format json prints the profile itself",
            ));
        }
        (None, format) => {
            let format = format.unwrap_or(Format::Docker);
            let target = chosen.unwrap_or(format.sysctls());
            if matches!(format, Format::Docker | Format::Podman) {
                // Flags carry no comments: say on stderr what the other
                // formats say in theirs.
                let decision = export::decide(&profile, &target);
                for note in export::notes(&profile, &decision) {
                    tracing::warn!("{note}");
                }
            }
            export::render_under(&profile, format, target)?
        }
        (Some(runtime), None) => comparison_table(&compare(runtime), &profile),
        (Some(runtime), Some(Format::Json)) => {
            let comparison = compare(runtime);
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
    write_out(args.out.as_deref(), &text)?;
    Ok(ExitCode::SUCCESS)
}

/// `--format k8s-patch`: one patch for the owner of every profile, or with
/// --out-dir one file per owner.
fn k8s_patch(args: &ExportArgs) -> Result<ExitCode, Error> {
    let sysctls = args
        .target_sysctls
        .map(SysctlsChoice::sysctls)
        .unwrap_or(Format::K8sPatch.sysctls());
    let mut inputs = Vec::with_capacity(args.profiles.len());
    for path in &args.profiles {
        let profile = checked_profile(path, args.require_complete)?;
        let name = if path == "-" { "<stdin>" } else { path };
        inputs.push(k8s_patch::Input::new(name, profile, sysctls).map_err(ExportError::from)?);
    }
    let Some(dir) = &args.out_dir else {
        let patch = k8s_patch::Patch::of(inputs).map_err(ExportError::from)?;
        let text = k8s_patch::render(&patch).map_err(ExportError::from)?;
        write_out(args.out.as_deref(), &text)?;
        return Ok(ExitCode::SUCCESS);
    };
    let patches = k8s_patch::Patch::group(inputs).map_err(ExportError::from)?;
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", dir.display())))?;
    for patch in &patches {
        let path = dir.join(patch.file_name());
        let text = k8s_patch::render(patch).map_err(ExportError::from)?;
        fsutil::write_atomic(&path, text.as_bytes())
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
        eprintln!(
            "capprof: {} ({} container(s)): {}",
            patch.target,
            patch.inputs.len(),
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `path`, refusing a partial recording under --require-complete and
/// warning about one, and about what else the allowlist may lack.
fn checked_profile(path: &str, require_complete: bool) -> Result<Profile, Error> {
    let profile = read_profile(path)?;
    if let Some(warning) = Caveat::partial(&profile).map(|c| c.to_string()) {
        if require_complete {
            return Err(Error::usage(format!(
                "{path}: {warning} (--require-complete)"
            )));
        }
        crate::log::warn(warning);
    }
    warn_about(&profile);
    Ok(profile)
}

fn write_out(out: Option<&std::path::Path>, text: &str) -> Result<(), Error> {
    match out {
        Some(path) if path.as_os_str() != "-" => fsutil::write_atomic(path, text.as_bytes())
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display()))),
        _ => write_stdout(text),
    }
}

fn read_profile(path: &str) -> Result<Profile, Error> {
    Ok(capprof::load::load_one(path)?.profile)
}

/// What the allowlist may lack: capabilities that were refused, or an
/// observation that could not classify every check.
fn warn_about(profile: &Profile) {
    match &profile.proof {
        Some(proof) if proof.sufficient => eprintln!("capprof: {}", proof.summary()),
        Some(proof) => tracing::warn!("{}", proof.summary()),
        None => {}
    }
    for caveat in Caveat::of(profile) {
        match caveat {
            // Said above, before the checks of --require-complete.
            Caveat::Partial { .. } => {}
            Caveat::Refused(_) | Caveat::NoChecks | Caveat::Unobservable { .. } => {
                tracing::warn!("{caveat}")
            }
            // Loud, and whatever CAPPROF_LOG says: these settings cannot
            // give the workload what it asked for.
            Caveat::Ungrantable(_) => crate::log::warn(caveat),
            // The export's own header comments and notes say the rest.
            _ => {}
        }
    }
}

/// One row per capability with its action; a conditional capability (one
/// the runtime needs although no check was seen where it was recorded) is
/// `keep (conditional)` or `add (conditional)`, and the reasons follow the
/// table.
fn comparison_table(c: &Comparison, profile: &Profile) -> String {
    // A refusal is not non-use: the workload asked and went without.
    let used = |cap: &Cap| {
        if c.refused.contains(cap) {
            "refused"
        } else {
            "-"
        }
    };
    let mut rows: Vec<_> = c
        .keep
        .iter()
        .map(|cap| (*cap, "yes", "yes", "keep"))
        .chain(c.drop.iter().map(|cap| {
            let action = if c.refused.contains(cap) {
                "drop (refused when recorded)"
            } else {
                "drop"
            };
            (*cap, "yes", used(cap), action)
        }))
        .chain(c.add.iter().map(|cap| (*cap, "-", "yes", "add")))
        .chain(
            c.keep_conditional
                .iter()
                .map(|cap| (*cap, "yes", "conditional", "keep (conditional)")),
        )
        .chain(
            c.add_conditional
                .iter()
                .map(|cap| (*cap, "-", "conditional", "add (conditional)")),
        )
        .chain(
            c.refused
                .iter()
                .filter(|cap| !c.defaults.contains(cap))
                .map(|cap| (*cap, "-", "refused", "leave out (refused when recorded)")),
        )
        .collect();
    rows.sort_by_key(|row| row.0);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["CAPABILITY", "DEFAULT", "USED", "ACTION"]);
    for (cap, default, used, action) in rows {
        table.add_row([cap.to_string(), default.into(), used.into(), action.into()]);
    }
    let mut out = format!("{table}\n");
    for (cap, why) in export::decide(profile, &c.sysctls).added {
        out.push_str(&format!("{cap}: {why}\n"));
    }
    for s in &c.set_sysctls {
        out.push_str(&format!(
            "set {}={}: {}\n",
            s.sysctl().name(),
            s.value,
            s.why
        ));
    }
    if !c.refused.is_empty() {
        let names: Vec<String> = c.refused.iter().map(Cap::to_string).collect();
        out.push_str(&format!(
            "refused when recorded: {}; the workload ran without them. Add one only if \
             the workload failed for want of it (capprof verify shows whether it runs).\n",
            names.join(" ")
        ));
    }
    out.push_str(&c.summary());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use capprof::daemon::api::testing::sample_profile;
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
        assert_eq!(args.profiles, ["-"]);
        assert!(parse(&["--format", "helm", "p.json"]).is_err());
        assert!(parse(&["--against", "lxd", "p.json"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn table_lists_every_capability_once() {
        // runc grants AUDIT_WRITE, KILL and NET_BIND_SERVICE: the sample
        // keeps one, drops two and adds CHOWN.
        let c = export::compare(&sample_profile(), Runtime::Runc);
        let out = comparison_table(&c, &sample_profile());
        assert!(
            out.ends_with("runc grants 3 by default: drop 2, keep 1, add 1\n"),
            "{out}"
        );
        assert_eq!(out.matches("CAP_CHOWN").count(), 1, "{out}");
        assert_eq!(out.matches("CAP_NET_BIND_SERVICE").count(), 1, "{out}");
        let rows = |action: &str| {
            out.lines()
                .filter(|l| l.contains(&format!("┆ {action} ")))
                .count()
        };
        assert_eq!(rows("drop"), 2, "{out}");
        assert_eq!(rows("keep"), 1, "{out}");
        assert_eq!(rows("add"), 1, "{out}");
    }

    #[test]
    fn refused_rows_say_refused_not_unused() {
        // KILL is a runc default and SYS_ADMIN is not; both were refused.
        let mut profile = sample_profile();
        profile.denied = ["CAP_KILL", "CAP_SYS_ADMIN"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let c = export::compare(&profile, Runtime::Runc);
        let out = comparison_table(&c, &profile);
        let row = |cap: &str| out.lines().find(|l| l.contains(cap)).unwrap().to_owned();
        assert!(
            row("CAP_KILL").contains("┆ refused ┆ drop (refused when recorded)"),
            "{out}"
        );
        assert!(
            row("CAP_SYS_ADMIN").contains("┆ refused ┆ leave out (refused when recorded)"),
            "{out}"
        );
        assert!(
            out.contains("refused when recorded: CAP_KILL CAP_SYS_ADMIN"),
            "{out}"
        );
        assert_eq!(
            out.matches("CAP_SYS_ADMIN").count(),
            2,
            "row and note: {out}"
        );
    }

    #[test]
    fn target_sysctls_parse_and_refuse_what_they_cannot_change() {
        let args = parse(&["--target-sysctls", "kernel", "p.json"]).unwrap();
        assert_eq!(args.target_sysctls, Some(SysctlsChoice::Kernel));
        assert!(parse(&["--target-sysctls", "maybe", "p.json"]).is_err());
        let dir = scratch_dir("sysctls");
        let input = dir.join("p.json");
        std::fs::write(&input, sample_profile().to_json()).unwrap();
        let input = input.to_str().unwrap();
        let args = parse(&["-f", "json", "--target-sysctls", "relaxed", input]).unwrap();
        let err = main(args).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        assert!(err.to_string().contains("--target-sysctls"), "{err}");
        // A conditional entry with an unknown sysctl is not a profile.
        let bad = sample_profile().to_json().replacen(
            "\"runtime_setup\": []",
            r#""runtime_setup": [], "conditional": [{"capability": "CAP_NET_RAW",
                  "operation": "x", "sysctl": "net.ipv4.tcp_fastopen", "value": "1",
                  "evidence": []}]"#,
            1,
        );
        assert!(bad.contains("tcp_fastopen"), "{bad}");
        let bad_path = dir.join("bad.json");
        std::fs::write(&bad_path, bad).unwrap();
        let args = parse(&[bad_path.to_str().unwrap()]).unwrap();
        assert_eq!(main(args).unwrap_err().exit_code(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_out_file_and_refuses_bad_combinations() {
        let dir = scratch_dir("out");
        let input = dir.join("p.json");
        std::fs::write(&input, sample_profile().to_json()).unwrap();
        let input = input.to_str().unwrap();
        let out = dir.join("flags.txt");
        let args = parse(&["-o", out.to_str().unwrap(), input]).unwrap();
        main(args).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_BIND_SERVICE\n"
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
        assert_eq!(json["drop"].as_array().unwrap().len(), 2);

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
