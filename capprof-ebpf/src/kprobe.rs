//! The kprobe + kretprobe backend, the last resort (any kernel with kprobes).
//!
//! match-proto (Linux 5.19+, security/commoncap.c):
//!   int cap_capable(const struct cred *cred, struct user_namespace *targ_ns,
//!                   int cap, unsigned int opts)
//! The entry probe parks (cap, opts, cred, targ_ns) and the callers' return addresses
//! (read above the entry stack pointer, at calibrated slots) by thread; the
//! return probe joins them with the verdict. `cap_capable` does not sleep
//! or recurse, so one slot per thread is enough.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use capprof_common::check::Inflight;

use crate::{
    maps::{CONFIG, INFLIGHT},
    observe::{CallSite, Creds, observe, read_sites},
};

/// The stack pointer at function entry: it points at the return address
/// into the caller.
#[inline(always)]
pub fn entry_sp(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: `regs` is the kprobe's pt_regs context.
        unsafe { (*ctx.regs).rsp }
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = ctx;
        0
    }
}

/// Remembers what a check in flight needs counted at return.
#[kprobe(function = "cap_capable")]
pub fn capprof_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(cap), Some(opts)) = (ctx.arg::<u32>(2), ctx.arg::<u32>(3)) else {
        return 0;
    };
    let cred = ctx.arg::<u64>(0).unwrap_or(0);
    let target_ns = ctx.arg::<u64>(1).unwrap_or(0);
    let (site, outer) = match CONFIG.get(0) {
        Some(config) => read_sites(config, entry_sp(&ctx)),
        None => (0, 0),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = INFLIGHT.insert(
        &tid,
        &Inflight {
            cap,
            opts,
            site,
            outer,
            cred,
            target_ns,
        },
        0,
    );
    0
}

/// Joins the parked entry with the verdict and counts the check.
#[kretprobe(function = "cap_capable")]
pub fn capprof_kretprobe(ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is plain data, copied out before the remove.
    let Some(inflight) = (unsafe { INFLIGHT.get(&tid) }).copied() else {
        return 0;
    };
    let _ = INFLIGHT.remove(&tid);
    let ret: i32 = ctx.ret();
    observe(
        inflight.cap,
        ret,
        Some(inflight.opts),
        CallSite::Read(inflight.site, inflight.outer),
        Creds {
            cred: inflight.cred,
            target_ns: inflight.target_ns,
        },
    );
    0
}
