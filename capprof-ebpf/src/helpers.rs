//! Safe wrappers for the BPF helpers that take no arguments.
//!
//! SAFETY (for every function here): these helpers take no pointer and no
//! argument the kernel could misuse; they read the current task or a clock
//! and cannot fault. aya-ebpf declares every generated helper `unsafe`
//! only because it is an FFI call. A helper the program type does not
//! allow is refused by the verifier at load, not misused at run time.

use aya_ebpf::helpers::generated;

/// The current task's cgroup v2 id (the inode number of its directory).
#[inline(always)]
pub fn cgroup_id() -> u64 {
    // SAFETY: see the module's note.
    unsafe { generated::bpf_get_current_cgroup_id() }
}

/// CLOCK_BOOTTIME in nanoseconds.
#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: see the module's note.
    unsafe { generated::bpf_ktime_get_boot_ns() }
}

/// The kernel's tick counter.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: see the module's note.
    unsafe { generated::bpf_jiffies64() }
}

/// The current `struct task_struct *` as a BTF pointer (tracing programs),
/// as a number: only ever read through checked helpers.
#[inline(always)]
pub fn task_btf() -> u64 {
    // SAFETY: see the module's note.
    unsafe { generated::bpf_get_current_task_btf() as u64 }
}

/// The current `struct task_struct *` (any program type), as a number:
/// only ever read through checked helpers.
#[inline(always)]
pub fn task() -> u64 {
    // SAFETY: see the module's note.
    unsafe { generated::bpf_get_current_task() }
}
