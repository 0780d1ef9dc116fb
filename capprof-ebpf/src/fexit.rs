//! The fexit backend, for kernels without the tracepoint (before 6.14).
//!
//! match-proto (Linux 5.19+, security/commoncap.c):
//!   int cap_capable(const struct cred *cred, struct user_namespace *targ_ns,
//!                   int cap, unsigned int opts)
//! fexit gives the real `opts`, so NOAUDIT is known exactly.

use aya_ebpf::{macros::fexit, programs::FExitContext};

use crate::observe::{Source, observe};

/// Counts every capability check made from a watched cgroup.
#[fexit(function = "cap_capable")]
pub fn capprof_fexit(ctx: FExitContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    let opts: u32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    observe(cap as u32, ret, Source::Opts(opts, 0));
    0
}
