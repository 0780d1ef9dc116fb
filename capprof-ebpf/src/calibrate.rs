//! Load-time calibration of the call-site slots, one program per backend.
//!
//! Attached only while userspace triggers known checks from its own process
//! (an audited CAP_SYS_NICE via `capable()` and the advisory CAP_SYS_ADMIN of
//! an mmap). Each copies the words above its frame (the tracepoint's or a
//! trampoline's context, or the kprobe's entry stack pointer); userspace
//! finds the slots whose values resolve to the known callers in
//! /proc/kallsyms. Slot positions differ between kernel builds and hooks, so
//! they are found on the running kernel rather than assumed.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, fexit, kprobe, lsm},
    programs::{BtfTracePointContext, FExitContext, LsmContext, ProbeContext},
};
use capprof_common::config::{CALIB_SAMPLES, CALIB_WORDS};

use crate::{kprobe::entry_sp, maps::CALIB};

/// The tgid whose checks are sampled (capprof itself), set at load time.
#[unsafe(no_mangle)]
static CALIBRATE_TGID: u32 = 0;

/// Next free sample; userspace reads `CALIB` after detaching.
#[unsafe(no_mangle)]
static mut CALIB_NEXT: u32 = 0;

#[inline(always)]
fn sample(frame: u64, cap: u32, ret: i32) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read of a constant global.
    if tgid != unsafe { core::ptr::read_volatile(&CALIBRATE_TGID) } {
        return;
    }
    // SAFETY: racy increments only cost a sample.
    let index = unsafe {
        let next = &raw mut CALIB_NEXT;
        let index = core::ptr::read_volatile(next);
        core::ptr::write_volatile(next, index + 1);
        index
    };
    if index >= CALIB_SAMPLES {
        return;
    }
    let Some(slot) = CALIB.get_ptr_mut(index) else {
        return;
    };
    // SAFETY: `slot` points into a live array entry; every stack read goes
    // through bpf_probe_read_kernel.
    unsafe {
        (*slot).cap = cap;
        (*slot).ret = ret;
        for i in 0..CALIB_WORDS {
            (*slot).words[i] =
                bpf_probe_read_kernel((frame + 8 * i as u64) as *const u64).unwrap_or(0);
        }
    }
}

/// Samples the stack above the tracepoint context.
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_calibrate(ctx: BtfTracePointContext) -> i32 {
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    sample(ctx.as_ptr() as u64, cap as u32, ret);
    0
}

/// Does nothing. Attached next to `capprof_calibrate` for a moment, it makes
/// the tracepoint call its programs through `__traceiter_cap_capable`, whose
/// frame moves the return addresses, so that calibration finds the slots of
/// that layout too (`calibrate_tracepoint` in userspace).
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_calibrate_spacer(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Samples the stack above the fexit trampoline's context.
#[fexit(function = "cap_capable")]
pub fn capprof_calibrate_fexit(ctx: FExitContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    let ret: i32 = ctx.arg(4);
    sample(ctx.as_ptr() as u64, cap as u32, ret);
    0
}

/// Samples the stack from the kprobe's entry stack pointer.
#[kprobe(function = "cap_capable")]
pub fn capprof_calibrate_kprobe(ctx: ProbeContext) -> u32 {
    let cap = ctx.arg::<u32>(2).unwrap_or(u32::MAX);
    sample(entry_sp(&ctx), cap, 0);
    0
}

/// Samples the stack above the BPF-LSM trampoline's context. The hook is
/// called from `security_capable()` itself (after `cap_capable` granted the
/// check), through another trampoline than fexit's, so its slots are found
/// separately (on Debian's 6.1 and 6.12 they match fexit's). Returns 0: it
/// changes no decision.
#[lsm(hook = "capable")]
pub fn capprof_calibrate_lsm(ctx: LsmContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    sample(ctx.as_ptr() as u64, cap as u32, 0);
    0
}
