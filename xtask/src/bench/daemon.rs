//! A capprof daemon for the workload and node-scale benches: the release
//! build, with its own state directory, API socket and bpffs mount under a
//! temp dir, so that it shares nothing with a daemon the machine may run.
//! Stopping it unmounts that bpffs, which drops its pinned programs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{succeeds, terminate};

const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    capprof: PathBuf,
}

impl Daemon {
    /// Starts `capprof daemon` against `engine` (`unix://…`) and waits until
    /// its API answers.
    pub fn start(capprof: &Path, engine: &str, tag: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("capprof-bench-daemon-{}-{tag}", std::process::id()));
        if dir.exists() {
            let _ = Command::new("umount").arg(dir.join("bpffs")).status();
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(dir.join("bpffs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let log = fs::File::create(dir.join("daemon.log")).context("creating the daemon log")?;
        let child = Command::new(capprof)
            .arg("daemon")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("capprof.sock"))
            .arg("--bpffs")
            .arg(dir.join("bpffs"))
            .args(["--engine", engine])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} daemon", capprof.display()))?;
        let mut daemon = Self {
            child: Some(child),
            dir,
            capprof: capprof.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = daemon.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "capprof daemon exited during start-up ({status}): {}",
                    daemon.log_tail()
                );
            }
            if daemon.socket().exists() && succeeds(&mut daemon.client("ps")) {
                return Ok(daemon);
            }
            if Instant::now() > deadline {
                bail!(
                    "capprof daemon did not answer within 60 s: {}",
                    daemon.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("capprof.sock")
    }

    /// `capprof SUBCOMMAND --socket …` (more arguments to be added).
    pub fn client(&self, subcommand: &str) -> Command {
        let mut cmd = Command::new(&self.capprof);
        cmd.arg(subcommand).arg("--socket").arg(self.socket());
        cmd.stdin(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    /// The links the daemon pinned: `<bpffs>/capprof/v*/links/*`.
    pub fn pinned_links(&self) -> Vec<PathBuf> {
        let root = self.dir.join("bpffs").join("capprof");
        let mut links = vec![];
        for version in fs::read_dir(root).into_iter().flatten().flatten() {
            for link in fs::read_dir(version.path().join("links"))
                .into_iter()
                .flatten()
                .flatten()
            {
                links.push(link.path());
            }
        }
        links
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Stops the daemon (SIGTERM), drops its pins and removes its files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, "capprof daemon", Duration::from_secs(20));
        }
        // The pinned links hold the programs on the hooks until their bpffs
        // goes away.
        let bpffs = self.dir.join("bpffs");
        let _ = Command::new("umount")
            .arg(&bpffs)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}
