//! Process lifecycle in container cgroups, to tell the runtime's setup from
//! the workload.
//!
//! While a runtime sets a container up, its own processes (`runc:[2:INIT]`,
//! …) make many checks inside the container's cgroup with full privileges.
//! A process counts as runtime setup until its first successful exec of a
//! program that is not the runtime (`phase::after_exec`), and a child starts
//! in its parent's phase. Only cgroups watched in `CONTAINERS` mode pay
//! anything beyond the cgroup lookup.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use capprof_common::{
    check::{generations, phase, stat, watch},
    event::{EVENT_EXEC, EXEC_FILENAME_LEN, ExecEvent},
};

use crate::{
    helpers,
    maps::{CAPSET_RAISES, CONFIG, EVENTS, GENERATION, TASK_EXECS, TASKS, bump, generation},
    observe::{cgroup_mode, task_phase},
};

#[inline(always)]
fn in_containers() -> (bool, u64) {
    let cgroup_id = helpers::cgroup_id();
    (
        cgroup_mode(cgroup_id, generation(generations::WATCH)) == watch::CONTAINERS,
        cgroup_id,
    )
}

/// Tells the hot path that a phase it may have cached changed. Atomic, so
/// that two CPUs bumping at once still leave a generation no cache holds.
#[inline(always)]
fn bump_tasks_generation() {
    if let Some(value) = GENERATION.get_ptr_mut(generations::TASKS) {
        // SAFETY: a live array value, only ever updated atomically here.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(value, 1) };
    }
}

/// match-proto (Linux 3.4+, include/trace/events/sched.h):
///   TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
/// Fires after a successful exec, in the exec'ing task, with the new comm.
/// Moves the process to its new phase, and remembers which file it runs,
/// while that can still be read, in `TASK_EXECS`.
///
/// No record is sent here. A ring buffer record per exec, with the consumer
/// woken, cost about 19 µs per exec on this hook (bpf_stats; the wake-up is
/// an irq_work self-IPI that runs inside the program's time): 7% of an
/// exec-heavy container's throughput. Most processes never make a check
/// worth a record, and userspace needs the file only to name the program of
/// one: `send_exec` sends it just before the first such record.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn capprof_exec(ctx: BtfTracePointContext) -> i32 {
    let cgroup_id = helpers::cgroup_id();
    let mode = cgroup_mode(cgroup_id, generation(generations::WATCH));
    if mode == watch::UNWATCHED {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let (before, after) = if mode == watch::CONTAINERS {
        exec_phase(tgid, &comm)
    } else {
        (phase::WORKLOAD, phase::WORKLOAD)
    };
    let mut event = ExecEvent {
        event: EVENT_EXEC,
        tgid,
        cgroup_id,
        ts_ns: helpers::boot_ns(),
        comm,
        phase_before: before,
        phase_after: after,
        _pad: [0; 6],
        filename: [0; EXEC_FILENAME_LEN],
    };
    if let Some(config) = CONFIG.get(0) {
        let offset = config.binprm_filename_offset;
        if offset != u32::MAX {
            let bprm: u64 = ctx.arg(2);
            // SAFETY: kernel memory is read through checked helpers only.
            unsafe {
                let at = (bprm + (offset as u64 & 0xffff)) as *const *const u8;
                if let Ok(filename) = bpf_probe_read_kernel(at) {
                    let _ = bpf_probe_read_kernel_str_bytes(filename, &mut event.filename);
                }
            }
        }
    }
    // Replaces an exec of this process that was never sent: nothing named
    // the program it ran.
    let _ = TASK_EXECS.insert(&tgid, &event, 0);
    let _ = crate::syscalls::capset_exec(tgid, comm);
    0
}

/// The phase of a process in a container cgroup before and after its exec,
/// updated in place: the fork hook made the entry, and most execs (a shell
/// running a command) do not change it, so no insert and no cache
/// invalidation.
#[inline(always)]
fn exec_phase(tgid: u32, comm: &[u8; 16]) -> (u8, u8) {
    match TASKS.get_ptr_mut(&tgid) {
        Some(current) => {
            // SAFETY: a live map value. Only this process's own hooks write
            // it, and exec has stopped its other threads.
            let before = unsafe { *current };
            let after = phase::after_exec(before, comm);
            if after != before {
                // SAFETY: as above.
                unsafe { *current = after };
                bump_tasks_generation();
            }
            (before, after)
        }
        None => {
            let after = phase::after_exec(phase::SETUP, comm);
            let _ = TASKS.insert(&tgid, &after, 0);
            if after != phase::SETUP {
                bump_tasks_generation();
            }
            (phase::SETUP, after)
        }
    }
}

/// Sends the exec record of `tgid` that is still pending, if any, ahead of
/// a record that names the process: records of one CPU reach userspace in
/// order, so it then names the check with the program that made it. A
/// record that does not fit stays pending and is counted; the next record
/// of the process tries again.
#[inline(never)]
pub fn send_exec(tgid: u32) {
    // SAFETY: the value is plain data, only read.
    let Some(event) = (unsafe { TASK_EXECS.get(&tgid) }) else {
        return;
    };
    if EVENTS.output::<ExecEvent>(event, 0).is_err() {
        bump(stat::RINGBUF_LOST);
        return;
    }
    let _ = TASK_EXECS.remove(&tgid);
}

/// match-proto (Linux 2.6.32+, include/trace/events/sched.h):
///   TP_PROTO(struct task_struct *parent, struct task_struct *child)
/// Runs in the parent. The child's tgid is read at the offset userspace
/// resolved from the running kernel's BTF (no CO-RE in Rust eBPF).
#[btf_tracepoint(function = "sched_process_fork")]
pub fn capprof_fork(ctx: BtfTracePointContext) -> i32 {
    let (watched, _) = in_containers();
    if !watched {
        return 0;
    }
    let Some(config) = CONFIG.get(0) else {
        return 0;
    };
    if config.task_tgid_offset == u32::MAX {
        return 0;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let child: u64 = ctx.arg(1);
    let addr = child + (config.task_tgid_offset as u64 & 0xffff);
    // SAFETY: checked kernel read.
    let Ok(child_tgid) = (unsafe { bpf_probe_read_kernel(addr as *const i32) }) else {
        return 0;
    };
    let child_tgid = child_tgid as u32;
    if child_tgid != parent_tgid {
        // Always written, so a reused pid never inherits a stale phase.
        let _ = TASKS.insert(&child_tgid, &task_phase(parent_tgid), 0);
        // The child holds what capset() kept and may never exec: the raise
        // is not settled by the parent's exec, and stays kept.
        let _ = CAPSET_RAISES.remove(&parent_tgid);
    }
    0
}

/// match-proto (Linux 2.6.32+, include/trace/events/sched.h):
///   TP_PROTO(struct task_struct *p, …)
/// Runs in the exiting task; only the group leader's exit drops the entries.
/// That is done wherever the process exits (it may have left its container
/// cgroup), so that its pid, once reused, starts from a clean slate, and
/// the hot path's cached phase for it is invalidated.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn capprof_exit(_ctx: BtfTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if pid_tgid as u32 != tgid {
        return 0;
    }
    if TASKS.remove(&tgid).is_ok() {
        bump_tasks_generation();
    }
    // Its exec, never sent, must not name a later process with its pid.
    let _ = TASK_EXECS.remove(&tgid);
    let _ = CAPSET_RAISES.remove(&tgid);
    0
}
