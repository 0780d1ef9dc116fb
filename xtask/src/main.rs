//! capprof's development tasks: `cargo xtask setup|test|lint|docs|image|dist|demo|bench|fuzz|vm-test`.
//!
//! Every command prints what it does to stderr. `test` and `demo` first run
//! `setup`'s checks, which install only what is missing.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod capprof_image;
mod containerd;
mod corpus;
mod debian;
mod demo;
mod dist;
mod docs;
mod engine;
mod fuzz;
mod image;
mod kube;
mod libtest;
mod lint;
mod model;
mod nonroot;
mod setup;
mod test;
mod util;
mod vm;

/// Development tasks for capprof. Run them as root.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install and mount everything capprof's build and tests need (idempotent).
    Setup,
    /// Build the workspace and run every test layer against a real Docker engine.
    Test(test::TestArgs),
    /// Check formatting and run clippy (-D warnings) on every crate, the
    /// eBPF crate on nightly; `--fix` applies what they suggest.
    Lint(lint::LintArgs),
    /// Build the book under docs/ and check it: no broken internal link,
    /// and the command-line reference lists exactly the flags of
    /// `capprof COMMAND --help`.
    Docs,
    /// Build and test capprof-profile (the profile model) on stable Rust
    /// alone, with no nightly, bpf-linker or protoc, and check that its
    /// dependency tree holds nothing of the agent's.
    Model,
    /// Build capprof's container image (the DaemonSet's), with no registry,
    /// into the local Docker engine.
    Image(capprof_image::ImageArgs),
    /// Build what a user installs into target/dist/: the Debian package,
    /// a tarball of the same files, the container image (saved) and their
    /// SHA-256 sums. Nothing is published.
    Dist(dist::DistArgs),
    /// Profile the bundled sample workload and print the allowlist it needs.
    Demo,
    /// Measure capprof's cost per capability check against an empty program,
    /// a streaming design and bpftrace (BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Run the capability corpus: real Debian servers, each recorded,
    /// minimized, ablated and re-run with its Kubernetes export, twice;
    /// writes corpus/ and CORPUS.md.
    Corpus(corpus::CorpusArgs),
    /// Fuzz the profile parser and the daemon's HTTP handling (libFuzzer)
    /// for a bounded time each, from the seed corpus in capprof/fuzz.
    Fuzz(fuzz::FuzzArgs),
    /// Start the fleet tests' kube-apiserver (with etcd and the garbage
    /// collector) and keep it until stdin closes, for running
    /// `cargo test -p capprof --test it kube_api::` by hand with the printed
    /// CAPPROF_TEST_KUBE.
    Cluster,
    /// Boot Debian's 6.1 and 6.12 kernels under qemu and run the root
    /// integration tests there, with the fexit and kprobe backends.
    VmTest(vm::VmTestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    util::put_cargo_bin_on_path();
    let result = match cli.command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        Command::Test(args) => test::run(&args),
        Command::Lint(args) => lint::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Docs => docs::run().map(|()| ExitCode::SUCCESS),
        Command::Model => model::check().map(|()| ExitCode::SUCCESS),
        Command::Image(args) => capprof_image::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Dist(args) => dist::run(&args).map(|()| ExitCode::SUCCESS),
        Command::Demo => demo::run().map(|()| ExitCode::SUCCESS),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Corpus(args) => corpus::run(&args),
        Command::Cluster => kube::serve().map(|()| ExitCode::SUCCESS),
        Command::VmTest(args) => vm::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
