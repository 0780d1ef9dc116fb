//! The fexit backend, for kernels without the tracepoint (before 6.14).
//!
//! match-proto (Linux 5.19+, security/commoncap.c):
//!   int cap_capable(const struct cred *cred, struct user_namespace *targ_ns,
//!                   int cap, unsigned int opts)
//! fexit gives the real `opts`, so NOAUDIT is known exactly; the call site
//! still tells the advisory probes from the NOAUDIT checks that gate.

use aya_ebpf::{EbpfContext as _, macros::fexit, programs::FExitContext};

use crate::observe::{CallSite, Creds, observe};

/// Counts every capability check made from a watched cgroup.
#[fexit(function = "cap_capable")]
pub fn capprof_fexit(ctx: FExitContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    let opts: u32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    let creds = Creds {
        cred: ctx.arg(0),
        target_ns: ctx.arg(1),
    };
    // The return addresses lie above the trampoline's context, at slots
    // calibrated at load time like the tracepoint's.
    observe(
        cap as u32,
        ret,
        Some(opts),
        CallSite::Frame(ctx.as_ptr() as u64),
        creds,
    );
    0
}
