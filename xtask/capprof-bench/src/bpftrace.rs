//! The bpftrace configuration.

use std::{
    collections::HashSet,
    io::Read as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::sys::{Stats, enable_stats};
use capprof_common::names;

use crate::{progs::prog_snapshot, util::die_with_parent};

/// The bpftrace one-liner the issue compares against.
pub const BPFTRACE_SCRIPT: &str =
    "tracepoint:capability:cap_capable { @[cgroup, args->cap] = count(); }";

/// A bpftrace process running the one-liner; interrupted on drop.
pub struct Bpftrace {
    pub child: Child,
}

impl Bpftrace {
    pub fn start() -> Result<Self> {
        if !Path::new("/sys/kernel/tracing/events/capability").exists() {
            bail!("bpftrace needs tracefs at /sys/kernel/tracing (run `cargo xtask setup`)");
        }
        let before: HashSet<u32> = prog_snapshot().into_keys().collect();
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd, libc::SIGINT);
        let child = cmd
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let mut this = Self { child };
        // Attached once its program runs on a check of ours.
        let _stats = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = this.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = this.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!("bpftrace exited ({status}): {}", err.trim());
            }
            // SAFETY: as root, setuid(0) changes nothing and makes one CAP_SETUID check.
            unsafe { libc::setuid(0) };
            let attached = prog_snapshot().into_iter().any(|(id, p)| {
                !before.contains(&id) && p.name == names::TRACEPOINT_NAME && p.run_cnt > 0
            });
            if attached {
                return Ok(this);
            }
            if Instant::now() > deadline {
                bail!("bpftrace did not attach within 30 s");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
