//! The machine around a run: what is installed, the bpf_stats switch and
//! leftover cgroups, and the facts the report's header names.

use std::{
    fs,
    path::{Path, PathBuf},
};

use crate::util::note;

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

pub fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

pub fn read_sysctl() -> Option<String> {
    fs::read_to_string(BPF_STATS_SYSCTL)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Sets `kernel.bpf_stats_enabled` (the workload bench's hook pass; the
/// caller restores the value it read).
pub fn set_sysctl(value: &str) {
    if let Err(err) = fs::write(BPF_STATS_SYSCTL, value) {
        note(format_args!(
            "could not set kernel.bpf_stats_enabled: {err}"
        ));
    }
}

/// Leaves the machine as it was: bpf_stats as before, and no benchmark
/// cgroup of a capprof-bench that is gone. (capprof-bench enables bpf_stats
/// through BPF_ENABLE_STATS, which the kernel undoes when it exits, and its
/// workers and bpftrace die with it; this is the belt to those braces.)
pub fn cleanup(stats_before: Option<&str>) {
    if let (Some(before), Some(now)) = (stats_before, read_sysctl())
        && before != now
    {
        note(format_args!(
            "kernel.bpf_stats_enabled is {now}, was {before}: restoring it"
        ));
        let _ = fs::write(BPF_STATS_SYSCTL, before);
    }
    let Some(mount) = cgroup2_mount() else { return };
    let Ok(entries) = fs::read_dir(mount.join("capprof")) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("bench-")
            .map(|r| r.trim_start_matches("storm-"))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        note(format_args!(
            "removing leftover cgroup {}",
            entry.path().display()
        ));
        let _ = fs::write(entry.path().join("cgroup.kill"), "1");
        remove_tree(&entry.path());
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_owned())
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
