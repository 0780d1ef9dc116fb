//! The BTF tracepoint backend, preferred wherever it exists.
//!
//! match-proto (Linux 6.14+, include/trace/events/capability.h):
//!   TRACE_EVENT(cap_capable, TP_PROTO(const struct cred *cred,
//!       struct user_namespace *target_ns, const struct user_namespace *capable_ns,
//!       int cap, int ret))
//! Fires at the end of every `cap_capable()`, with the verdict, but without
//! `opts`: the kind of check comes from the call site (see observe.rs).

use aya_ebpf::{EbpfContext as _, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::observe::{CallSite, Creds, observe};

/// Counts every capability check made from a watched cgroup.
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_tp_btf(ctx: BtfTracePointContext) -> i32 {
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    let creds = Creds {
        cred: ctx.arg(0),
        target_ns: ctx.arg(1),
    };
    // The context points at the argument array bpf_trace_run5() keeps on the
    // kernel stack; the callers' return addresses lie above it.
    observe(
        cap as u32,
        ret,
        None,
        CallSite::Frame(ctx.as_ptr() as u64),
        creds,
    );
    0
}
