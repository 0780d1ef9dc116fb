//! The BPF-LSM backend, opt-in (`--backend lsm`): exact `opts`, granted
//! checks only.
//!
//! match-proto (Linux 5.7+, include/linux/lsm_hook_defs.h):
//!   LSM_HOOK(int, 0, capable, const struct cred *cred,
//!            struct user_namespace *ns, int cap, unsigned int opts)
//! followed by the BPF-only `int ret`, the previous BPF-LSM program's
//! verdict. `security_capable()` runs the capability LSM (commoncap's
//! `cap_capable`) first and stops at the first hook that refuses, so this
//! hook only ever sees checks `cap_capable` granted; and
//! `cap_vm_enough_memory` calls `cap_capable` directly, so the advisory
//! mmap probes never reach it. The profile says so (`unobservable`).
//!
//! Observation only: it returns 0, which changes no decision. The BPF
//! trampoline runs an int hook's programs in turn and stops at the first
//! that returns non-zero, so this one only runs when every earlier BPF-LSM
//! program allowed the check, and 0 is then the verdict it was handed.
//! (It returns the constant rather than `ret`: 6.10+ verifiers must prove
//! the return value lies in [-MAX_ERRNO, 0].)

use aya_ebpf::{EbpfContext as _, macros::lsm, programs::LsmContext};

use crate::observe::{CallSite, Creds, observe};

/// Counts every granted capability check made from a watched cgroup.
#[lsm(hook = "capable")]
pub fn capprof_lsm(ctx: LsmContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    let opts: u32 = ctx.arg(3);
    let creds = Creds {
        cred: ctx.arg(0),
        target_ns: ctx.arg(1),
    };
    // Reached only after cap_capable granted the check; the decision is not
    // known to be final yet, but a refusal by a later LSM is not the
    // capability's absence, so it counts as granted (ret 0). The return
    // addresses lie above the trampoline's context, at slots calibrated for
    // this hook (calibrate.rs).
    observe(
        cap as u32,
        0,
        Some(opts),
        CallSite::Frame(ctx.as_ptr() as u64),
        creds,
    );
    0
}
