//! `cargo xtask test`: the README's test command. Builds the workspace,
//! provides a Docker engine and the test image, runs every test with one
//! thread, and refuses a run in which no test passed.
//!
//! Tests that need root (and an engine) are `#[ignore = "needs root"]`, so
//! that a plain `cargo test` as a normal user passes; this command runs them
//! too (`--include-ignored`), so they count as passed or failed, never as
//! skipped.

use std::{
    io::{self, Read as _, Write as _},
    path::PathBuf,
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    containerd::Containerd,
    engine::Engine,
    image::{self, TEST_IMAGE, TOOLS_IMAGE},
    kube,
    libtest::Counts,
    setup,
    util::{display, note, run_checked, step},
};

/// The eBPF crate builds only for bpfel-unknown-none (capprof's build.rs does
/// that through aya-build), so host builds of the workspace leave it out.
const EXCLUDE: &[&str] = &["--exclude", "capprof-ebpf"];

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test`, placed before its `--`
    /// (a test name filter, `-p capprof`, `--test it daemon::` …).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CARGO_TEST_ARGS"
    )]
    cargo_args: Vec<String>,
}

/// How long `cargo xtask test` fuzzes each target.
const FUZZ_SECONDS: u64 = 30;

/// `cargo xtask test`.
pub fn run(args: &TestArgs) -> Result<ExitCode> {
    check_and_build()?;
    let services = Services::start()?;
    let logs = RunLogs::fresh();
    let mut cmd = test_command(args, &services, &logs);
    step(format_args!(
        "running the tests (CAPPROF_TEST_IMAGE={TEST_IMAGE}{})",
        services
            .engine
            .host()
            .map(|h| format!(", DOCKER_HOST={h}"))
            .unwrap_or_default()
    ));
    let outcome = run_and_count(&mut cmd);
    // A filtered run (`cargo xtask test -p capprof --test it proof::`) is
    // for one layer: the whole-suite checks below are left to the full run.
    let whole = args.cargo_args.is_empty();
    // Today's corpus entries against their committed results, on the
    // same engine.
    let capprof = crate::util::target_dir().join("debug").join("capprof");
    let corpus_ok = !whole
        || crate::corpus::subset::check(&services.engine, &capprof, &[]).unwrap_or_else(|e| {
            note(format_args!(
                "error: the corpus subset could not run: {e:#}"
            ));
            false
        });
    // Stop the private engines before the summary, so the summary stays last.
    services.stop();
    let (status, mut counts) = outcome?;
    logs.report(&mut counts);
    let checks = if whole {
        Checks::run(corpus_ok)?
    } else {
        note(
            "a filtered run: the corpus subset, the benchmark smoke test, the fuzz \
             targets and the normal-user check were not run",
        );
        Checks::skipped()
    };
    let code = exit_code(status, &counts, &checks);
    println!("{counts}");
    Ok(code)
}

/// The steps before any engine: set-up, the lints, the model crate on
/// stable, the workspace build and the book.
fn check_and_build() -> Result<()> {
    setup::ensure()?;
    // Formatting and clippy first: cheap, and a contributor's first signal.
    crate::lint::check()?;
    // The profile model as a library user builds it: stable Rust alone.
    crate::model::check()?;

    step("building the workspace");
    run_checked(
        Command::new("cargo")
            .args(["build", "--workspace"])
            .args(EXCLUDE),
    )
    .context("building the workspace")?;
    // The book, checked against the capprof just built: seconds, and a
    // contributor's next signal after the lints.
    crate::docs::check(&crate::util::target_dir().join("debug").join("capprof"))
}

/// What the tests run against: the engine with its images, the installable
/// packages, two private containerds and a kube-apiserver.
struct Services {
    engine: Engine,
    containerd: Containerd,
    containerd_b: Containerd,
    cluster: kube::Cluster,
}

impl Services {
    fn start() -> Result<Self> {
        let engine = Engine::ensure()?;
        image::ensure_test_image(&engine)?;
        image::ensure_tools_image(&engine)?;
        image::ensure_nginx_image(&engine)?;
        // The DaemonSet's image, for the `image` tests (a release build,
        // which the benchmark's smoke test below needs anyway).
        crate::capprof_image::ensure_capprof_image(&engine)?;
        // What a user installs, for the `install` tests: the .deb, the
        // tarball, the saved image and their sums, and a clean Debian 12 to
        // install in.
        crate::dist::build(&engine)?;
        crate::debian::ensure_debian_image(&engine)?;
        // A private containerd for the CRI tests (`cri`), and a second one
        // for the fleet tests' second node (`fleet`).
        let containerd = Containerd::start(&engine, "containerd")?;
        let containerd_b = Containerd::start(&engine, "containerd-b")?;
        // A real kube-apiserver for the fleet tests (`kube_api`, `fleet`).
        kube::ensure_built()?;
        let cluster = kube::Cluster::start()?;
        Ok(Services {
            engine,
            containerd,
            containerd_b,
            cluster,
        })
    }

    /// Stops the cluster, the containerds, then the engine.
    fn stop(self) {
        drop(self.cluster);
        drop(self.containerd);
        drop(self.containerd_b);
        self.engine.stop();
    }
}

/// The files the tests append to, through their environment.
struct RunLogs {
    /// Each bad-input case the tests check (one line, its exit status) is
    /// logged here by their shared assertion, and counted below.
    bad_input: PathBuf,
    /// Tests that found the kernel lacking a feature log themselves here
    /// (tests/it/common's `skip`); they count as skipped, never as passed.
    skip: PathBuf,
}

impl RunLogs {
    /// The logs' paths, with what a previous run left removed.
    fn fresh() -> Self {
        let logs = RunLogs {
            bad_input: crate::util::target_dir().join("bad-input-cases.tsv"),
            skip: crate::util::target_dir().join("skipped-tests.tsv"),
        };
        let _ = std::fs::remove_file(&logs.bad_input);
        let _ = std::fs::remove_file(&logs.skip);
        logs
    }

    /// Moves the skipped tests from passed to skipped and names them, and
    /// counts the bad-input cases.
    fn report(&self, counts: &mut Counts) {
        if let Ok(log) = std::fs::read_to_string(&self.skip) {
            let n = counts.skipped_at_run_time(&log);
            for line in log.lines() {
                note(format_args!("skipped: {}", line.replace('\t', ": ")));
            }
            note(format_args!(
                "{n} test(s) skipped at run time ({})",
                self.skip.display()
            ));
        }
        if let Ok(log) = std::fs::read_to_string(&self.bad_input) {
            note(format_args!(
                "{} bad-input cases checked for one line and their exit status ({})",
                log.lines().count(),
                self.bad_input.display()
            ));
        }
    }
}

/// `cargo test` over the workspace, one thread, the ignored tests too, with
/// the images, endpoints and logs in its environment.
fn test_command(args: &TestArgs, services: &Services, logs: &RunLogs) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(EXCLUDE)
        .args(&args.cargo_args)
        .args(["--", "--test-threads=1", "--include-ignored"])
        .env("CAPPROF_TEST_IMAGE", TEST_IMAGE)
        .env("CAPPROF_TOOLS_IMAGE", TOOLS_IMAGE)
        .env("CAPPROF_NGINX_IMAGE", image::NGINX_IMAGE)
        .env("CAPPROF_IMAGE", crate::capprof_image::CAPPROF_IMAGE)
        .env("CAPPROF_TEST_DIST", crate::dist::dist_dir())
        .env("CAPPROF_DEBIAN_IMAGE", crate::debian::DEBIAN_IMAGE)
        .env("CAPPROF_BAD_INPUT_LOG", &logs.bad_input)
        .env("CAPPROF_SKIP_LOG", &logs.skip)
        .env("CAPPROF_TEST_CRI", services.containerd.endpoint())
        .env("CAPPROF_TEST_CRI_B", services.containerd_b.endpoint())
        .env("CAPPROF_TEST_KUBE", services.cluster.dir());
    if let Some(host) = services.engine.host() {
        cmd.env("DOCKER_HOST", host);
    }
    cmd
}

/// The whole-suite checks after the tests; each is true when it passed or
/// did not run.
struct Checks {
    corpus_ok: bool,
    bench_ok: bool,
    fuzz_ok: bool,
    nonroot_ok: bool,
}

impl Checks {
    /// The checks after `cargo test`, in order, after the corpus subset's
    /// result (it ran before the engines stopped).
    fn run(corpus_ok: bool) -> Result<Self> {
        // The benchmark's smoke test: it fails only on the storm's no-loss
        // result, never on a timing.
        let bench_ok = crate::bench::smoke()?;
        // Each fuzz target for a bounded time, from the repository's seeds.
        let fuzz_ok = crate::fuzz::fuzz(crate::fuzz::TARGETS, FUZZ_SECONDS)?;
        // README's promise: a plain `cargo test` passes for a normal user.
        let nonroot_ok = crate::nonroot::check(EXCLUDE)?;
        Ok(Checks {
            corpus_ok,
            bench_ok,
            fuzz_ok,
            nonroot_ok,
        })
    }

    /// A filtered run's: none ran.
    fn skipped() -> Self {
        Checks {
            corpus_ok: true,
            bench_ok: true,
            fuzz_ok: true,
            nonroot_ok: true,
        }
    }
}

/// The run's exit status: cargo test's own failure first, then a run that
/// tested nothing, then each whole-suite check.
fn exit_code(status: ExitStatus, counts: &Counts, checks: &Checks) -> ExitCode {
    if !status.success() {
        step(format_args!("cargo test failed ({status})"));
        ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .filter(|&c| c != 0)
                .unwrap_or(1),
        )
    } else if counts.passed == 0 {
        step("error: cargo test succeeded but no test passed; refusing a run that tested nothing");
        ExitCode::FAILURE
    } else if !checks.corpus_ok {
        step("error: a corpus entry differs from its committed result (see above)");
        ExitCode::FAILURE
    } else if !checks.bench_ok {
        step("error: the benchmark smoke test (bench --quick --check) failed");
        ExitCode::FAILURE
    } else if !checks.fuzz_ok {
        step("error: a fuzz target failed (see its crash above)");
        ExitCode::FAILURE
    } else if !checks.nonroot_ok {
        step("error: a test fails for a normal user: mark it #[ignore = \"needs root\"]");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs `cmd`, copying its stdout to ours as it comes, and adds up the
/// `test result:` lines it prints.
fn run_and_count(cmd: &mut Command) -> Result<(ExitStatus, Counts)> {
    let line = display(cmd);
    note(format_args!("$ {line}"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut out = child.stdout.take().context("cargo test has no stdout")?;
    let mut counts = Counts::default();
    let mut pending = Vec::new();
    let mut buf = [0_u8; 8192];
    let stdout = io::stdout();
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("reading cargo test's output"),
        };
        // Echo at once (a hanging test must show its name), parse by line.
        let mut lock = stdout.lock();
        let _ = lock.write_all(&buf[..n]);
        let _ = lock.flush();
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            counts += Counts::parse(&String::from_utf8_lossy(&line)).unwrap_or_default();
        }
    }
    counts += Counts::parse(&String::from_utf8_lossy(&pending)).unwrap_or_default();
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, counts))
}
