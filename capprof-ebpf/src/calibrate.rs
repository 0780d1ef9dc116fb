//! Load-time calibration of the call-site slots (tracepoint backend).
//!
//! Attached only while userspace triggers known checks from its own process
//! (an audited CAP_SYS_NICE via `capable()` and the advisory CAP_SYS_ADMIN of
//! an mmap). It copies the words above the tracepoint context; userspace
//! finds the slots whose values resolve to the known callers in
//! /proc/kallsyms. Slot positions differ between kernel builds, so they are
//! found on the running kernel rather than assumed.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use capprof_common::config::{CALIB_SAMPLES, CALIB_WORDS};

use crate::maps::CALIB;

/// The tgid whose checks are sampled (capprof itself), set at load time.
#[unsafe(no_mangle)]
static CALIBRATE_TGID: u32 = 0;

/// Next free sample; userspace reads `CALIB` after detaching.
#[unsafe(no_mangle)]
static mut CALIB_NEXT: u32 = 0;

/// Samples the stack above the context for capprof's own checks.
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_calibrate(ctx: BtfTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read of a constant global.
    if tgid != unsafe { core::ptr::read_volatile(&CALIBRATE_TGID) } {
        return 0;
    }
    // SAFETY: racy increments only cost a sample.
    let index = unsafe {
        let next = &raw mut CALIB_NEXT;
        let index = core::ptr::read_volatile(next);
        core::ptr::write_volatile(next, index + 1);
        index
    };
    if index >= CALIB_SAMPLES {
        return 0;
    }
    let Some(sample) = CALIB.get_ptr_mut(index) else {
        return 0;
    };
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    let base = ctx.as_ptr() as u64;
    // SAFETY: `sample` points into a live array slot; every stack read goes
    // through bpf_probe_read_kernel.
    unsafe {
        (*sample).cap = cap as u32;
        (*sample).ret = ret;
        for i in 0..CALIB_WORDS {
            (*sample).words[i] =
                bpf_probe_read_kernel((base + 8 * i as u64) as *const u64).unwrap_or(0);
        }
    }
    0
}
