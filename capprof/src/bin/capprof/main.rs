//! capprof: observe which Linux capabilities a workload really uses, and
//! turn that into a least-privilege allowlist.
//!
//! The command line lives in this binary, not in the library, so that the
//! compiler keeps the layering: commands use the library, never the other
//! way round.

use std::{process::ExitCode, sync::LazyLock};

use clap::{Args as _, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

mod cmd;
mod error;
mod log;

use error::Error;

/// Observe the Linux capabilities a workload really uses and emit a
/// least-privilege allowlist.
#[derive(Debug, Parser)]
#[command(name = "capprof", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command in a fresh cgroup and profile it and all its descendants.
    Run(cmd::run::RunArgs),
    /// Record every container (or the named ones) until stopped; one profile each.
    Record(cmd::record::RecordArgs),
    /// Turn a profile into docker, compose, k8s, podman, OCI or systemd settings, or a
    /// Kubernetes patch.
    Export(cmd::export::ExportArgs),
    /// Profile every container, always on, with a local API and metrics.
    Daemon(Box<cmd::daemon::DaemonArgs>),
    /// List the containers the daemon has profiled.
    Ps(cmd::ps::PsArgs),
    /// Print one container's profile (or an export of it) from the daemon.
    Profile(cmd::profile::ProfileArgs),
    /// Write an HTML or Markdown report of profiles: matrix, evidence, scores.
    Report(cmd::report::ReportArgs),
    /// Merge profiles of one workload into one, with coverage.
    Merge(cmd::merge::MergeArgs),
    /// Compare a new profile with a baseline; exit 3 when it needs more.
    Diff(cmd::diff::DiffArgs),
    /// Re-run a profile's workload with exactly its allowlist, to prove it.
    Verify(cmd::verify::VerifyArgs),
    /// Find the smallest allowlist the workload works with; write it, proven.
    Minimize(cmd::minimize::MinimizeArgs),

    /// Check what this kernel offers capprof and which backend it would use.
    Doctor(cmd::doctor::DoctorArgs),
}

/// The command line with its version line: the version, the commit and
/// the map ABI (build_info), which clap's derive cannot compute.
fn cli_command() -> clap::Command {
    static VERSION: LazyLock<String> = LazyLock::new(capprof::build_info::version_line);
    Cli::command().version(VERSION.as_str())
}

/// What `capprof` parses: [`cli_command`] and the hidden `dist-files`,
/// which is kept out of [`Cli`] so that the man pages and completions it
/// writes from [`cli_command`] do not offer it.
fn full_command() -> clap::Command {
    cli_command().subcommand(cmd::dist_files::DistFilesArgs::augment_args(
        clap::Command::new(cmd::dist_files::NAME).hide(true),
    ))
}

/// What the command line asks for.
enum Invocation {
    Command(Box<Command>),
    DistFiles(cmd::dist_files::DistFilesArgs),
}

fn parse() -> Result<Invocation, clap::Error> {
    let matches = full_command().try_get_matches()?;
    if let Some((cmd::dist_files::NAME, sub)) = matches.subcommand() {
        return cmd::dist_files::DistFilesArgs::from_arg_matches(sub).map(Invocation::DistFiles);
    }
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Invocation::Command(Box::new(cli.command)))
}

fn main() -> ExitCode {
    let command = match parse() {
        Ok(Invocation::Command(command)) => command,
        Ok(Invocation::DistFiles(args)) => {
            return finish(cmd::dist_files::main(&args, cli_command()));
        }
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    install_panic_hook();
    log::init();
    let result = match *command {
        Command::Run(args) => cmd::run::main(args),
        Command::Record(args) => cmd::record::main(args),
        Command::Export(args) => cmd::export::main(args),
        Command::Daemon(args) => cmd::daemon::main(*args),
        Command::Ps(args) => cmd::ps::main(args),
        Command::Profile(args) => cmd::profile::main(args),
        Command::Report(args) => cmd::report::main(args),
        Command::Merge(args) => cmd::merge::main(args),
        Command::Diff(args) => cmd::diff::main(args),
        Command::Verify(args) => cmd::verify::main(args),
        Command::Minimize(args) => cmd::minimize::main(args),

        Command::Doctor(args) => cmd::doctor::main(args),
    };
    finish(result)
}

/// The exit status of a command, and its error in one line.
fn finish(result: Result<ExitCode, Error>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("capprof: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// A panic is a capprof bug, but the user still gets one line and no
/// backtrace (set RUST_BACKTRACE=1 to see one, for a bug report). A write
/// to a closed pipe (`| head`) that got past `write_stdout` ends quietly,
/// and one to a full disk says so in one line.
fn install_panic_hook() {
    use std::io::Write as _;
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let mut stderr = std::io::stderr();
        if msg.starts_with("failed printing to") {
            if msg.contains("Broken pipe") {
                std::process::exit(0);
            }
            let _ = writeln!(stderr, "capprof: cannot write output: {msg}");
            std::process::exit(1);
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            stderr,
            "capprof: internal error{at}: {msg} (a bug; please report it)"
        );
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
            let _ = writeln!(stderr, "{}", std::backtrace::Backtrace::force_capture());
        }
        std::process::exit(101);
    }));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory as _;

    use super::Cli;

    /// A `CAPPROF_*` variable means one thing: the commands that share one
    /// read it for the same flag, with the same kind of value (a `record`
    /// directory is not a `run` file).
    #[test]
    fn a_shared_variable_means_the_same_in_every_command() {
        let mut uses: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for cmd in Cli::command().get_subcommands() {
            for arg in cmd.get_arguments() {
                let Some(env) = arg.get_env() else { continue };
                let values: Vec<String> = arg
                    .get_possible_values()
                    .iter()
                    .map(|v| format!("{}={:?}", v.get_name(), v.get_help().map(|h| h.to_string())))
                    .collect();
                let meaning = format!(
                    "--{} {:?} {values:?}",
                    arg.get_long().unwrap_or_default(),
                    arg.get_value_names()
                );
                uses.entry(env.to_string_lossy().into_owned())
                    .or_default()
                    .push((cmd.get_name().to_owned(), meaning));
            }
        }
        for (env, uses) in &uses {
            let (first_cmd, first) = &uses[0];
            for (cmd, meaning) in &uses[1..] {
                assert_eq!(
                    meaning, first,
                    "{env} means {first} to {first_cmd} but {meaning} to {cmd}"
                );
            }
        }
    }
}
