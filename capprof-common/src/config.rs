//! Runtime configuration written by userspace into the `CONFIG` array.

use core::mem::size_of;

use crate::syscalls::SyscallOffsets;

/// A kernel function's text range and the kind of check made from it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuncRange {
    pub start: u64,
    pub end: u64,
    /// `check::kind::*`.
    pub kind: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<FuncRange>() == 24);

pub const MAX_FUNC_RANGES: usize = 32;

/// How deep below a watched root a cgroup may be and still be found.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// The single value of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// 8-byte word, counted up from the hook's frame (tracepoint or
    /// trampoline context, kprobe entry stack pointer), holding the return
    /// address into `cap_capable`'s caller. See `calibrated()`.
    pub slot_caller: u32,
    /// Word holding the return address into `security_capable`'s caller.
    pub slot_outer: u32,
    /// Offset of `orig_ax` (the syscall number) in `struct pt_regs` of this
    /// architecture, or u32::MAX when unknown.
    pub syscall_nr_offset: u32,
    /// Number of valid entries in `ranges`.
    pub nr_ranges: u32,
    /// Offset of `tgid` in `struct task_struct`, from the running kernel's
    /// BTF, or u32::MAX when unknown (then forks are not followed).
    pub task_tgid_offset: u32,
    /// Offset of `filename` in `struct linux_binprm`, or u32::MAX.
    pub binprm_filename_offset: u32,
    /// The tracepoint's other frame layout, 0 when unknown. With a single
    /// program attached, the tracepoint calls it directly; with two or more
    /// (another capprof, bpftrace) it goes through an iterator with a frame
    /// of its own, and the return addresses lie further up. Both layouts are
    /// calibrated at load, and a caller slot that does not resolve is tried
    /// in the other one.
    pub slot_caller_alt: u32,
    pub slot_outer_alt: u32,
    /// How to read the current cgroup's name, or all u32::MAX.
    pub cgroup_name: CgroupNameOffsets,
    pub ranges: [FuncRange; MAX_FUNC_RANGES],
    /// What the syscall hooks read (bind, socket, capset).
    pub syscalls: SyscallOffsets,
    /// How to tell borrowed credentials and the target user namespace, or
    /// all u32::MAX.
    pub creds: CredOffsets,
}
const _: () = assert!(
    size_of::<Config>() == 32 + 24 + 24 * MAX_FUNC_RANGES + size_of::<SyscallOffsets>() + 16
);

impl Config {
    /// Whether the call-site slots were found at load time.
    pub const fn calibrated(&self) -> bool {
        self.slot_caller != 0 || self.slot_outer != 0
    }

    pub const fn empty() -> Self {
        Self {
            slot_caller: 0,
            slot_outer: 0,
            syscall_nr_offset: u32::MAX,
            nr_ranges: 0,
            task_tgid_offset: u32::MAX,
            binprm_filename_offset: u32::MAX,
            slot_caller_alt: 0,
            slot_outer_alt: 0,
            cgroup_name: CgroupNameOffsets::unknown(),
            ranges: [FuncRange {
                start: 0,
                end: 0,
                kind: 0,
                _pad: 0,
            }; MAX_FUNC_RANGES],
            syscalls: SyscallOffsets::unknown(),
            creds: CredOffsets::unknown(),
        }
    }
}

/// Offsets, from the running kernel's BTF, of the fields that tell whose
/// credentials a check used and which user namespace it targeted:
/// `task_struct.real_cred` (the task's own, objective credentials, which
/// `override_creds` leaves alone), `cred.user_ns`, and
/// `user_namespace.level` and `.parent`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredOffsets {
    pub task_real_cred: u32,
    pub cred_user_ns: u32,
    pub user_ns_level: u32,
    pub user_ns_parent: u32,
}
const _: () = assert!(size_of::<CredOffsets>() == 16);

impl CredOffsets {
    pub const fn unknown() -> Self {
        Self {
            task_real_cred: u32::MAX,
            cred_user_ns: u32::MAX,
            user_ns_level: u32::MAX,
            user_ns_parent: u32::MAX,
        }
    }
}

/// Offsets, from the running kernel's BTF, of the fields on the path from
/// the current task to its cgroup v2 directory's name:
/// `task->cgroups->dfl_cgrp->kn->name`, and `kn->parent` (`__parent` from
/// 6.15) for the parent directory's name.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupNameOffsets {
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_name: u32,
    pub kernfs_node_parent: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<CgroupNameOffsets>() == 24);

impl CgroupNameOffsets {
    pub const fn unknown() -> Self {
        Self {
            task_cgroups: u32::MAX,
            css_set_dfl_cgrp: u32::MAX,
            cgroup_kn: u32::MAX,
            kernfs_node_name: u32::MAX,
            kernfs_node_parent: u32::MAX,
            _pad: 0,
        }
    }
}

/// How many stack words the calibration program copies per sample.
pub const CALIB_WORDS: usize = 48;
/// How many samples `CALIB` holds.
pub const CALIB_SAMPLES: u32 = 64;

/// One calibration sample: the words above the tracepoint context.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CalibSample {
    pub cap: u32,
    pub ret: i32,
    pub words: [u64; CALIB_WORDS],
}
const _: () = assert!(size_of::<CalibSample>() == 8 + 8 * CALIB_WORDS);
