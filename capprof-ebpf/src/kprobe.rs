//! The kprobe + kretprobe backend, the last resort (any kernel with kprobes).
//!
//! match-proto (Linux 5.19+, security/commoncap.c):
//!   int cap_capable(const struct cred *cred, struct user_namespace *targ_ns,
//!                   int cap, unsigned int opts)
//! The entry probe parks (cap, opts) by thread; the return probe joins it
//! with the verdict. `cap_capable` does not sleep or recurse, so one slot per
//! thread is enough.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};

use crate::{
    maps::INFLIGHT,
    observe::{Source, observe},
};

/// Remembers the arguments of a check in flight.
#[kprobe(function = "cap_capable")]
pub fn capprof_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cap), Some(opts)) = (ctx.arg::<u32>(2), ctx.arg::<u32>(3)) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = INFLIGHT.insert(&tid, &(((cap as u64) << 32) | opts as u64), 0);
    0
}

/// Joins the parked arguments with the verdict and counts the check.
#[kretprobe(function = "cap_capable")]
pub fn capprof_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is a plain u64.
    let Some(&packed) = (unsafe { INFLIGHT.get(&tid) }) else {
        return 0;
    };
    let _ = INFLIGHT.remove(&tid);
    let ret: i32 = ctx.ret();
    observe((packed >> 32) as u32, ret, Source::Opts(packed as u32, 0));
    0
}
