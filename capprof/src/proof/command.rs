//! Re-running a `capprof run` profile's command with exactly one
//! capability set, with `capprof run --caps` semantics: in a fresh cgroup,
//! with its bounding, permitted, effective, inheritable and ambient sets
//! cut down to the set ([`CapLimit`]) before it starts.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use super::{
    Outcome, Probe, ProofError, RunOptions, Trial,
    creds::{self, CredLog},
    probe,
};
use crate::{capability::Cap, capset::CapLimit, cgroup::OwnedCgroup};

const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const SETTLE: Duration = Duration::from_millis(300);
const PROBE_RETRY: Duration = Duration::from_millis(250);

pub struct CommandWorkload {
    argv: Vec<String>,
    workdir: Option<PathBuf>,
    options: RunOptions,
    mount: PathBuf,
    runs: u32,
}

impl CommandWorkload {
    /// Refuses an in-container probe, and a program that is not there.
    pub fn new(
        argv: Vec<String>,
        workdir: Option<PathBuf>,
        options: RunOptions,
        mount: PathBuf,
    ) -> Result<Self, ProofError> {
        if matches!(options.probe, Some(Probe::Exec(_))) {
            return Err(ProofError::Unsupported(
                "--probe-exec runs inside a container; this profile is of a command (use --probe)"
                    .into(),
            ));
        }
        let program = argv.first().ok_or_else(|| ProofError::NoRunSpec {
            profile: "the profile".into(),
        })?;
        probe::resolve(program).map_err(|reason| ProofError::Spawn {
            command: program.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, reason),
        })?;
        Ok(Self {
            argv,
            workdir,
            options,
            mount,
            runs: 0,
        })
    }

    pub async fn trial(&mut self, allowed: &[Cap]) -> Result<Trial, ProofError> {
        self.runs += 1;
        let cgroup = OwnedCgroup::create(
            &self.mount,
            &format!("proof-{}-{}", std::process::id(), self.runs),
        )?;
        let limit = CapLimit::new(allowed)?;
        let watch = self.options.refusals.clone();
        if let Some(w) = &watch {
            w.watch_command(cgroup.id())?;
        }
        let mut result = self.observe(&cgroup, limit).await;
        let ids = cgroup.subtree_ids();
        cgroup.kill_all();
        let gone = Instant::now() + Duration::from_secs(2);
        while cgroup.populated() && Instant::now() < gone {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(w) = &watch {
            if let Ok(trial) = &mut result {
                trial.refused = w.take(&ids, None).await;
            }
            w.unwatch_command(cgroup.id(), &ids);
        }
        result
    }

    async fn observe(&self, cgroup: &OwnedCgroup, limit: CapLimit) -> Result<Trial, ProofError> {
        let shown = self.argv.join(" ");
        let spawn_err = |source| ProofError::Spawn {
            command: shown.clone(),
            source,
        };
        let mut cmd = self.command(cgroup, limit).map_err(spawn_err)?;
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(spawn_err)?;
        let stderr = tokio::spawn(probe::tail(child.stderr.take()));
        let env = vec![(
            "CAPPROF_PID".to_owned(),
            child.id().unwrap_or_default().to_string(),
        )];
        let deadline = started + self.options.timeout;
        let mut log = CredLog::default();
        log.add(creds::sample_cgroup(cgroup.path()));
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        let probe_loop = self.probe_until_pass(&env, deadline);
        tokio::pin!(probe_loop);
        let has_probe = self.options.probe.is_some();
        // With a probe, its own give-up (at the deadline, with the last
        // attempt's story) comes first; this one is a backstop.
        let hard_deadline = if has_probe {
            deadline + self.options.timeout.min(Duration::from_secs(10)) + Duration::from_secs(1)
        } else {
            deadline
        };
        let outcome = loop {
            tokio::select! {
                status = child.wait() => break exit_outcome(has_probe, status.map_err(spawn_err)?),
                result = &mut probe_loop, if has_probe => {
                    match result? {
                        Ok(()) => {
                            let settle = tokio::time::sleep(SETTLE);
                            tokio::pin!(settle);
                            loop {
                                tokio::select! {
                                    _ = &mut settle => break,
                                    _ = tick.tick() => log.add(creds::sample_cgroup(cgroup.path())),
                                }
                            }
                            break Outcome::Passed;
                        }
                        Err(why) => break Outcome::Failed(why),
                    }
                }
                _ = tick.tick() => {
                    log.add(creds::sample_cgroup(cgroup.path()));
                    if Instant::now() >= hard_deadline {
                        break Outcome::Failed(format!(
                            "still running after {}s",
                            self.options.timeout.as_secs()
                        ));
                    }
                }
            }
        };
        log.add(creds::sample_cgroup(cgroup.path()));
        Ok(Trial {
            outcome: in_its_words(outcome, stderr).await,
            refused: vec![],
            processes: log.processes(&[]),
        })
    }

    /// The command, set to join `cgroup` and take on `limit` between fork
    /// and exec, so that its first instruction already runs there.
    fn command(
        &self,
        cgroup: &OwnedCgroup,
        limit: CapLimit,
    ) -> Result<tokio::process::Command, std::io::Error> {
        let procs = CString::new(cgroup.procs_path().as_os_str().as_bytes()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the cgroup path holds a NUL byte",
            )
        })?;
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        // SAFETY: only async-signal-safe calls (open, write, close, prctl,
        // capget, capset) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
                limit.apply()
            });
        }
        Ok(cmd)
    }

    /// Runs the host probe until it passes (`Ok(Ok)`), or says why it gave
    /// up at `deadline`; never ends without a probe.
    async fn probe_until_pass(
        &self,
        env: &[(String, String)],
        deadline: Instant,
    ) -> Result<Result<(), String>, ProofError> {
        let Some(Probe::Host(argv)) = &self.options.probe else {
            return std::future::pending().await;
        };
        let mut last = String::from("the probe never ran");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Err(format!(
                    "the probe did not pass within {}s: {last}",
                    self.options.timeout.as_secs()
                )));
            }
            match probe::run_host(argv, env, left).await? {
                (Some(0), _) => return Ok(Ok(())),
                (Some(code), out) => last = format!("exit status {code} ({out})"),
                (None, _) => last = "timed out".into(),
            }
            tokio::time::sleep(PROBE_RETRY).await;
        }
    }
}

/// How a run ended when the command exited first: without a probe its
/// exit status says; with one, it exited too soon.
fn exit_outcome(has_probe: bool, status: std::process::ExitStatus) -> Outcome {
    match (has_probe, status.code()) {
        (false, Some(0)) => Outcome::Passed,
        (false, Some(code)) => Outcome::Failed(format!("exit status {code}")),
        (false, None) => Outcome::Failed(format!("killed ({status})")),
        (true, _) => Outcome::Failed(format!("it exited ({status}) before the probe passed")),
    }
}

/// A failed run says why in its last word on stderr, when it had one.
async fn in_its_words(outcome: Outcome, stderr: tokio::task::JoinHandle<Vec<u8>>) -> Outcome {
    match outcome {
        Outcome::Failed(why) => {
            let said = match tokio::time::timeout(Duration::from_millis(200), stderr).await {
                Ok(Ok(bytes)) => probe::last_line(&String::from_utf8_lossy(&bytes)),
                _ => String::new(),
            };
            Outcome::Failed(if said.is_empty() {
                why
            } else {
                format!("{why} ({said})")
            })
        }
        passed => {
            stderr.abort();
            passed
        }
    }
}
