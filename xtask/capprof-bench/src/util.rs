//! Small helpers shared by the subcommands.

use std::{
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

pub fn emit(value: &impl Serialize) -> Result<()> {
    let line = serde_json::to_string(value)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

pub fn make_dir(parent: &Path, name: &str) -> Result<PathBuf> {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    Ok(dir)
}

pub fn cpu_count() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

/// Workers run on the last CPU; readers and bpftrace get the others.
pub fn worker_cpu() -> Option<usize> {
    let n = cpu_count();
    (n > 1).then_some(n - 1)
}

pub fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET bounds-checks.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!(
                "capprof-bench: cannot pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Makes `cmd`'s process get `signal` when we die, so that no worker or
/// bpftrace outlives an interrupted bench.
pub fn die_with_parent(cmd: &mut Command, signal: i32) {
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, signal);
            Ok(())
        });
    }
}

pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of process `pid` (0: ourselves), all threads.
pub fn cpu_ns_of(pid: u32) -> u64 {
    if pid == 0 {
        return clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    }
    let mut clock: libc::clockid_t = 0;
    // SAFETY: valid out pointer.
    if unsafe { libc::clock_getcpuclockid(pid as i32, &mut clock) } != 0 {
        return 0;
    }
    clock_ns(clock)
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
