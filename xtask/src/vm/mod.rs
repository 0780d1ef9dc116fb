//! `cargo xtask vm-test`: capprof's root integration tests on other kernels.
//!
//! Debian's 6.1 and 6.12 cloud kernels have no cap_capable tracepoint, so
//! they exercise the fexit and kprobe backends, and the opt-in BPF-LSM one,
//! which CI's own kernel refuses. Each kernel boots under qemu's TCG (nested KVM crashes here) from
//! one initramfs holding busybox, the test executable and the two binaries
//! it spawns, at their host paths. The guest's init mounts what capprof
//! needs, prints `capprof doctor`'s verdict, runs the tests once per backend
//! and powers off; the host saves the console to target/vm-test/<kernel>.log
//! and prints a summary per kernel.

mod initramfs;
mod kernel;
mod qemu;
mod report;

use std::{
    collections::VecDeque,
    io::BufReader,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use cargo_metadata::Message;
use clap::{Args, ValueEnum};

use self::{
    kernel::{Kernel, Series},
    qemu::{Boot, Ending, Outcome},
};
use crate::{
    setup,
    util::{display, note, step, target_dir},
};

#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Which kernels to boot.
    #[arg(long, value_enum, default_value_t = KernelChoice::All)]
    kernel: KernelChoice,
    /// Kill a guest still running after this many seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    timeout: u64,
    /// Kill a guest that prints nothing for this many seconds.
    #[arg(long, default_value_t = 180, value_name = "SECONDS")]
    idle_timeout: u64,
    /// Guests booted at once (TCG runs a 1-CPU guest on one host CPU).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// Guest memory.
    #[arg(long, default_value_t = 2048, value_name = "MIB")]
    memory: u32,
    /// Only run tests whose name contains this (one word, no spaces).
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Don't copy the guests' consoles to stderr (the logs keep them).
    #[arg(long)]
    quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelChoice {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

impl KernelChoice {
    fn series(self) -> Vec<Series> {
        match self {
            KernelChoice::V6_1 => vec![kernel::LINUX_6_1],
            KernelChoice::V6_12 => vec![kernel::LINUX_6_12],
            KernelChoice::All => kernel::ALL.to_vec(),
        }
    }
}

/// `cargo xtask vm-test`.
pub fn run(args: &VmTestArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if let Some(filter) = &args.filter
        && (filter.is_empty() || filter.contains(char::is_whitespace))
    {
        bail!("--filter takes one word, for the guest's kernel command line");
    }
    setup::ensure()?;

    let mut payload = build_payload()?;
    let kernels = args
        .kernel
        .series()
        .into_iter()
        .map(kernel::ensure)
        .collect::<Result<Vec<Kernel>>>()?;
    for kernel in &kernels {
        match kernel.overlay_module()? {
            Some(module) => payload.modules.push(module),
            None => note(format_args!(
                "{} has no overlay module: overlayfs must be built in",
                kernel.package
            )),
        }
    }

    let out_dir = target_dir().join("vm-test");
    let initramfs = out_dir.join("initramfs.cpio");
    // One archive for every kernel: the init script reads what differs
    // (the backends) from the kernel command line.
    initramfs::build(&payload, &initramfs)?;

    let boots: Vec<(Kernel, Boot)> = kernels
        .into_iter()
        .map(|k| {
            let mut cmdline = format!("capprof.backends={}", k.series.backends.join(","));
            if let Some(filter) = &args.filter {
                cmdline.push_str(&format!(" capprof.filter={filter}"));
            }
            let boot = Boot {
                name: k.series.name.to_owned(),
                qemu: PathBuf::from(qemu::QEMU),
                vmlinuz: k.vmlinuz.clone(),
                initramfs: initramfs.clone(),
                cmdline,
                memory_mib: args.memory,
                cpus: 1,
                timeout: Duration::from_secs(args.timeout),
                idle_timeout: Duration::from_secs(args.idle_timeout),
                log: out_dir.join(format!("{}.log", k.series.name)),
                echo: !args.quiet,
            };
            (k, boot)
        })
        .collect();

    let jobs = args.jobs.unwrap_or_else(|| {
        thread::available_parallelism()
            .map_or(1, usize::from)
            .min(boots.len())
    });
    step(format_args!(
        "booting {} kernel(s), {} at a time, under TCG",
        boots.len(),
        jobs.max(1)
    ));
    let outcomes = run_all(&boots, jobs.max(1));

    let mut all_ok = true;
    for ((kernel, boot), outcome) in boots.iter().zip(outcomes) {
        all_ok &= summarize(kernel, boot, outcome);
    }
    let verdict = if all_ok { "PASS" } else { "FAIL" };
    println!(
        "vm-test: {verdict} ({} kernel(s) in {:.0} s)",
        boots.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Boots every guest, `jobs` at a time, and returns their outcomes in order.
fn run_all(boots: &[(Kernel, Boot)], jobs: usize) -> Vec<Result<Outcome>> {
    let queue = Mutex::new(boots.iter().enumerate().collect::<VecDeque<_>>());
    let results = Mutex::new(boots.iter().map(|_| None).collect::<Vec<_>>());
    thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let Some((i, (_, boot))) =
                        queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front()
                    else {
                        return;
                    };
                    let outcome = qemu::run(boot);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(outcome);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow::anyhow!("the guest was never booted"))))
        .collect()
}

/// Prints one kernel's summary; returns whether it passed.
fn summarize(kernel: &Kernel, boot: &Boot, outcome: Result<Outcome>) -> bool {
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            println!(
                "==> {} ({}): FAIL: {err:#}",
                kernel.series.name, kernel.package
            );
            return false;
        }
    };
    let report = report::parse(&outcome.lines);
    let expected: Vec<&str> = kernel.series.backends.to_vec();
    let ran: Vec<&str> = report.passes.iter().map(|p| p.backend.as_str()).collect();
    let ok = outcome.ending == Ending::Finished
        && ran == expected
        && report.passes.iter().all(report::Pass::ok);

    println!(
        "==> {} {}: {} in {:.0} s ({}{})",
        kernel.series.name,
        report.release.as_deref().unwrap_or(&kernel.package),
        if ok { "PASS" } else { "FAIL" },
        outcome.elapsed.as_secs_f64(),
        outcome.ending,
        report
            .booted_at
            .map(|t| format!(", init after {:.1} s", t.as_secs_f64()))
            .unwrap_or_default(),
    );
    match &report.doctor {
        Some(d) if d.unreadable.is_none() => println!(
            "    doctor: backend {} ({}); classification {}; load {}{}",
            d.backend.as_deref().unwrap_or("none"),
            d.reason.as_deref().unwrap_or("no reason given"),
            d.classification.as_deref().unwrap_or("none"),
            d.load_ms
                .map_or("failed".to_owned(), |ms| format!("{ms} ms")),
            if d.missing.is_empty() {
                String::new()
            } else {
                format!("; missing: {}", d.missing.join("; "))
            },
        ),
        Some(d) => println!(
            "    doctor: unreadable output: {}",
            d.unreadable
                .as_deref()
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or("")
        ),
        None => println!("    doctor: never ran"),
    }
    if let Some(Some((ok, detail))) = report.doctor.as_ref().map(|d| d.bpf_lsm.as_ref()) {
        println!(
            "    doctor: bpf lsm {}: {detail}",
            if *ok { "available" } else { "unavailable" }
        );
    }
    for backend in &expected {
        let Some(pass) = report.passes.iter().find(|p| p.backend == *backend) else {
            println!("    {backend}: FAIL: never ran");
            continue;
        };
        let c = pass.counts;
        let verdict = match pass.passed {
            Some(_) if pass.ok() => "PASS",
            Some(_) => "FAIL",
            None => "FAIL (unfinished)",
        };
        let took = pass
            .ended
            .map(|end| format!(" in {:.0} s", (end - pass.started).as_secs_f64()))
            .unwrap_or_default();
        println!(
            "    {backend}: {verdict}: {} passed, {} failed, {} ignored, {} filtered out{took}",
            c.passed, c.failed, c.ignored, c.filtered
        );
        for failure in &pass.failures {
            println!("      {}", failure.test);
            for line in failure.message.lines() {
                println!("        {line}");
            }
        }
    }
    if !report.kernel_trouble.is_empty() {
        println!(
            "    kernel reported {} problem line(s), first: {}",
            report.kernel_trouble.len(),
            report.kernel_trouble[0]
        );
    }
    println!("    log: {}", qemu::shown(&boot.log));
    ok
}

/// Builds the integration-test executable (capprof/tests/it, whose
/// run_actions module the guest runs) and the binaries it spawns, and
/// returns their paths, which the test executable has baked in.
fn build_payload() -> Result<initramfs::Payload> {
    step("building capprof and its root integration tests (release)");
    let mut cmd = Command::new("cargo");
    // Release: a debug capprof spends about 20 s of TCG time per start
    // parsing BTF and kallsyms, which would make the run take half an hour.
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "-p",
        "capprof",
        "--test",
        "it",
    ])
    .arg("--message-format=json-render-diagnostics");
    let line = display(&cmd);
    note(format_args!("$ {line}"));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let stdout = child.stdout.take().context("cargo has no stdout")?;
    let (mut test_exe, mut capprof, mut action) = (None, None, None);
    for message in Message::parse_stream(BufReader::new(stdout)) {
        let Message::CompilerArtifact(artifact) = message.context("reading cargo's messages")?
        else {
            continue;
        };
        let Some(exe) = artifact.executable else {
            continue;
        };
        let exe = PathBuf::from(exe);
        let target = &artifact.target;
        match target.name.as_str() {
            "it" if target.is_test() => test_exe = Some(exe),
            "capprof" if target.is_bin() => capprof = Some(exe),
            "capprof-test-action" if target.is_bin() => action = Some(exe),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    let payload = initramfs::Payload {
        test_exe: test_exe.context("cargo built no integration-test executable (it)")?,
        capprof: capprof.context("cargo built no capprof binary")?,
        helpers: vec![action.context("cargo built no capprof-test-action binary")?],
        modules: vec![],
    };
    note(format_args!("tests: {}", payload.test_exe.display()));
    Ok(payload)
}
