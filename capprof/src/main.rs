//! capprof: observe which Linux capabilities a workload really uses, and
//! turn that into a least-privilege allowlist.

use std::process::ExitCode;

use capprof::cmd;
use clap::{Parser, Subcommand};

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
    /// Turn a profile into docker, compose, k8s, podman, OCI or systemd settings.
    Export(cmd::export::ExportArgs),
    /// Profile every container, always on, with a local API and metrics.
    Daemon(cmd::daemon::DaemonArgs),
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

    /// Check what this kernel offers capprof and which backend it would use.
    Doctor(cmd::doctor::DoctorArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version are not errors.
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    init_tracing();
    let result = match cli.command {
        Command::Run(args) => cmd::run::main(args),
        Command::Record(args) => cmd::record::main(args),
        Command::Export(args) => cmd::export::main(args),
        Command::Daemon(args) => cmd::daemon::main(args),
        Command::Ps(args) => cmd::ps::main(args),
        Command::Profile(args) => cmd::profile::main(args),
        Command::Report(args) => cmd::report::main(args),
        Command::Merge(args) => cmd::merge::main(args),
        Command::Diff(args) => cmd::diff::main(args),

        Command::Doctor(args) => cmd::doctor::main(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("capprof: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CAPPROF_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
}
