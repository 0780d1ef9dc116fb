//! `cargo xtask demo`: capprof's main job, end to end, on a container,
//! done by capprof's own commands so that a newcomer sees the product:
//!
//! 1. builds capprof (release) and the busybox image, with a private
//!    dockerd when no engine answers;
//! 2. starts `capprof record --container capprof-demo` in the background;
//! 3. runs `demo/sample.sh` in a container named `capprof-demo`, then stops
//!    the recorder with SIGINT; the exited container is kept until the end,
//!    so that the trust model accepts its bind of the sample (`verify` and
//!    `minimize` trust what the original container was given);
//! 4. prints Docker's default set against what the container used
//!    (`capprof export --against docker`);
//! 5. proves the allowlist: `capprof minimize` re-runs the container
//!    without each capability in turn and writes the smallest sufficient
//!    profile with its `proof`, and `capprof verify --ablate` re-runs it with
//!    exactly that allowlist and without each capability;
//! 6. prints the `docker run` flags of the proven profile (`capprof export`);
//! 7. writes its HTML report (`capprof report`), and fails unless the
//!    report calls the profile proven.
//!
//! Any step that fails makes the demo fail; the container, the private
//! engine and the recorder are removed or stopped either way.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    engine::Engine,
    image::{self, TEST_IMAGE},
    setup,
    util::{
        build_release, display, note, run_checked, stdout_of, step, target_dir, workspace_root,
    },
};

/// The sample workload, relative to the workspace root.
const SAMPLE: &str = "demo/sample.sh";
/// Where the container sees it.
const SAMPLE_IN_CONTAINER: &str = "/sample.sh";
/// The demo container's name, and so its profile's file name.
const CONTAINER: &str = "capprof-demo";
/// How long `capprof record` gets to load and attach.
const RECORD_START: Duration = Duration::from_secs(60);
/// Runs per capability set `capprof minimize` tries: two, so that one
/// lucky run cannot drop a capability, and the demo stays under a minute.
const PROOF_RUNS: &str = "2";
/// How long the last records of an exited container get to arrive.
const SETTLE: Duration = Duration::from_millis(800);

/// `cargo xtask demo`.
pub fn run() -> Result<()> {
    setup::ensure()?;
    let capprof = build_capprof()?;
    let engine = Engine::ensure()?;
    let outcome = demo(&engine, capprof);
    // Stop the private engine before the verdict, so the verdict stays last.
    engine.stop();
    let (profile, flags, report) = outcome?;
    step(format_args!(
        "done: {CONTAINER} needs only `{}`, proven; its profile is {}",
        flags.join(" "),
        profile.display()
    ));
    step(format_args!("report: {}", report.display()));
    Ok(())
}

/// Steps 2 to 7; returns the proven profile, its flags and the report.
fn demo(engine: &Engine, capprof: PathBuf) -> Result<(PathBuf, Vec<String>, PathBuf)> {
    image::ensure_test_image(engine)?;
    let demo = Demo::new(engine, capprof);
    let outcome = demo.record().and_then(|recorded| {
        demo.compare_with_defaults(&recorded)?;
        let proven = demo.minimize(&recorded)?;
        demo.verify(&proven)?;
        let flags = demo.docker_flags(&proven)?;
        let report = demo.report(&proven)?;
        Ok((proven, flags, report))
    });
    demo.remove_container();
    outcome
}

/// `cargo build --release -p capprof`; returns the binary's path.
fn build_capprof() -> Result<PathBuf> {
    Ok(build_release(&["capprof"])?.join("capprof"))
}

struct Demo<'a> {
    engine: &'a Engine,
    capprof: PathBuf,
    /// `-v HOST:CONTAINER:ro` for the sample.
    volume: String,
}

impl<'a> Demo<'a> {
    fn new(engine: &'a Engine, capprof: PathBuf) -> Self {
        let sample = workspace_root().join(SAMPLE);
        let volume = format!("{}:{SAMPLE_IN_CONTAINER}:ro", sample.display());
        Self {
            engine,
            capprof,
            volume,
        }
    }

    /// A `capprof` command that talks to the demo's engine.
    fn capprof(&self) -> Command {
        let mut cmd = Command::new(&self.capprof);
        cmd.current_dir(workspace_root());
        if let Some(host) = self.engine.host() {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// `docker run --network none --name capprof-demo -v … IMAGE sh
    /// /sample.sh`, printed first; its output is returned, not shown.
    fn run_sample(&self) -> Result<Output> {
        let mut cmd = self.engine.docker();
        cmd.args(["run", "--network", "none", "--name", CONTAINER])
            .args(["-v", &self.volume, TEST_IMAGE, "sh", SAMPLE_IN_CONTAINER]);
        note(format_args!("$ {}", display(&cmd)));
        cmd.stdin(Stdio::null())
            .output()
            .context("could not start docker")
    }

    fn remove_container(&self) {
        let _ = self
            .engine
            .docker()
            .args(["rm", "-f", CONTAINER])
            .stdin(Stdio::null())
            .output();
    }

    /// Steps 2 and 3: records the sample container; returns its profile.
    fn record(&self) -> Result<PathBuf> {
        let out_dir = target_dir().join("demo").join("profiles");
        let profile = out_dir.join(format!("{CONTAINER}.json"));
        if out_dir.exists() {
            std::fs::remove_dir_all(&out_dir)
                .with_context(|| format!("removing the old {}", out_dir.display()))?;
        }
        self.remove_container();

        step(format_args!(
            "starting capprof record for the container {CONTAINER}"
        ));
        let mut cmd = self.capprof();
        cmd.arg("record")
            .arg("--out")
            .arg(&out_dir)
            .args(["--container", CONTAINER]);
        let recorder = Recorder::start(cmd)?;

        step(format_args!(
            "running {SAMPLE} in the container {CONTAINER}"
        ));
        // The exited container stays until the demo ends: see step 3 above.
        let out = self.run_sample()?;
        show_output(&out);
        if !out.status.success() {
            bail!(
                "the sample failed under Docker's default capabilities ({})",
                out.status
            );
        }
        note(format_args!("the sample exited 0"));
        thread::sleep(SETTLE);

        step("stopping capprof record (SIGINT)");
        recorder.stop()?;
        if !profile.exists() {
            bail!(
                "capprof record wrote no profile for {CONTAINER} ({} is missing)",
                profile.display()
            );
        }
        note(format_args!("profile written to {}", profile.display()));
        Ok(profile)
    }

    /// Step 4: the default set against what the container used.
    fn compare_with_defaults(&self, profile: &Path) -> Result<()> {
        step("Docker's default capabilities against what the container used");
        let mut cmd = self.capprof();
        cmd.args(["export", "--against", "docker"]).arg(profile);
        note(format_args!("$ {}", display(&cmd)));
        let table = stdout_of(&mut cmd).context("comparing the profile with Docker's defaults")?;
        println!("{table}");
        Ok(())
    }

    /// Step 5, first half: `capprof minimize` finds the smallest allowlist
    /// the sample works with (its exit status 0 decides, no probe needed)
    /// and writes it, with its `proof`, beside the recorded profile.
    fn minimize(&self, recorded: &Path) -> Result<PathBuf> {
        let proven = target_dir()
            .join("demo")
            .join(format!("{CONTAINER}.min.json"));
        step("proving it: capprof minimize re-runs the container without each capability");
        let mut cmd = self.capprof();
        cmd.args(["minimize", "--runs", PROOF_RUNS, "--out"])
            .arg(&proven)
            .arg(recorded);
        run_checked(&mut cmd).context("capprof minimize could not prove the profile")?;
        Ok(proven)
    }

    /// Step 5, second half: `capprof verify --ablate` runs the proven
    /// allowlist as it is (it must pass) and without each capability (each
    /// must be needed).
    fn verify(&self, proven: &Path) -> Result<()> {
        step("checking the proof: capprof verify --ablate");
        let mut cmd = self.capprof();
        cmd.args(["verify", "--ablate", "--runs", "1"]).arg(proven);
        run_checked(&mut cmd).context("capprof verify found the proven allowlist insufficient")
    }

    /// Step 6: the `docker run` flags of the proven profile.
    fn docker_flags(&self, profile: &Path) -> Result<Vec<String>> {
        step("the docker run flags that grant only what it needs");
        let mut cmd = self.capprof();
        cmd.args(["export", "--format", "docker"]).arg(profile);
        note(format_args!("$ {}", display(&cmd)));
        let text = stdout_of(&mut cmd).context("exporting the profile for docker")?;
        let flags: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        if flags.first().map(String::as_str) != Some("--cap-drop=ALL") {
            bail!("unexpected docker flags from capprof export: {text:?}");
        }
        println!("docker run {} …", flags.join(" "));
        Ok(flags)
    }

    /// Step 7: the HTML report of the proven profile; fails unless the
    /// report (asked again as JSON) calls every profile in it proven.
    fn report(&self, profile: &Path) -> Result<PathBuf> {
        step("writing the HTML report of the proven profile");
        let report = target_dir().join("demo").join("report.html");
        let mut cmd = self.capprof();
        cmd.args(["report", "--out"]).arg(&report).arg(profile);
        note(format_args!("$ {}", display(&cmd)));
        stdout_of(&mut cmd).context("writing the report")?;
        let mut cmd = self.capprof();
        cmd.args(["report", "--format", "json"]).arg(profile);
        let json = stdout_of(&mut cmd).context("writing the report as JSON")?;
        let statuses = report_statuses(&json)?;
        if statuses.is_empty() || statuses.iter().any(|s| s != "proven") {
            bail!("the report calls the demo's profile {statuses:?}, not proven");
        }
        note("the report says: proven");
        Ok(report)
    }
}

/// The `status` of each container of a JSON report (`proven`, `observed`
/// or `proof-failed`).
fn report_statuses(json: &str) -> Result<Vec<String>> {
    let report: serde_json::Value =
        serde_json::from_str(json).context("capprof report --format json printed no JSON")?;
    let containers = report["containers"]
        .as_array()
        .context("the JSON report has no `containers` list")?;
    containers
        .iter()
        .map(|c| {
            c["status"]
                .as_str()
                .map(str::to_owned)
                .context("a container of the JSON report has no `status`")
        })
        .collect()
}

/// Shows a container's output, indented.
fn show_output(out: &Output) {
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        note(format_args!("| {line}"));
    }
}

/// `capprof record` in the background. Its stderr is shown as it comes;
/// dropping it without `stop` kills it.
struct Recorder {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Recorder {
    /// Starts `cmd` and waits for its "recording" line (attached and
    /// watching).
    fn start(mut cmd: Command) -> Result<Self> {
        note(format_args!("$ {} &", display(&cmd)));
        let mut child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not start capprof record")?;
        let stderr = child
            .stderr
            .take()
            .context("capprof record has no stderr")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                note(format_args!("[record] {line}"));
                let _ = tx.send(line);
            }
        });
        // From here on, Drop stops it.
        let mut recorder = Self { child, lines };
        let deadline = Instant::now() + RECORD_START;
        loop {
            match recorder.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("recording") => return Ok(recorder),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = recorder
                        .child
                        .wait()
                        .context("waiting for capprof record")?;
                    bail!("capprof record exited before it was recording ({status})");
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "capprof record did not start recording within {} s",
                    RECORD_START.as_secs()
                );
            }
        }
    }

    /// SIGINT, as Ctrl-C would: it writes the profiles and exits 0.
    fn stop(mut self) -> Result<()> {
        interrupt(&self.child);
        let status = self.child.wait().context("waiting for capprof record")?;
        if !status.success() {
            bail!("capprof record failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            interrupt(&self.child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn interrupt(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child, not yet reaped, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGINT) };
}
