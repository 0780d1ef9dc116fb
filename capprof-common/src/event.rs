//! Records sent to userspace through the `EVENTS` ring buffer.
//!
//! Every record starts with a `u32` kind; the ids are stable and never
//! reused.

use core::mem::size_of;

/// First check of a new (cgroup, capability, syscall, comm, verdict, kind).
pub const EVENT_EVIDENCE: u32 = 1;
/// First check seen from a cgroup inside a watched subtree.
pub const EVENT_CGROUP: u32 = 2;
/// A process in a watched cgroup exec'd (and, in container cgroups, maybe
/// moved from runtime setup to workload). Sent lazily: just before the
/// first record that names the process after that exec, so an exec that is
/// never named sends nothing.
pub const EVENT_EXEC: u32 = 3;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvidenceEvent {
    /// `EVENT_EVIDENCE`.
    pub event: u32,
    pub cap: u32,
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Syscall number or `check::SYSCALL_UNKNOWN`.
    pub syscall: u32,
    /// `cap_capable`'s return value: 0 or -EPERM.
    pub ret: i32,
    pub verdict: u8,
    pub kind: u8,
    pub phase: u8,
    /// `check::userns::*`.
    pub userns: u8,
    pub _pad: [u8; 4],
    pub comm: [u8; 16],
    /// Return address into `cap_capable`'s caller, 0 if unknown.
    pub site: u64,
    /// Return address into `security_capable`'s caller, 0 if unknown.
    pub outer_site: u64,
}
const _: () = assert!(size_of::<EvidenceEvent>() == 88);

pub const CGROUP_NAME_LEN: usize = 96;

/// Sent once per watched cgroup, with its name read in the kernel, so that
/// a container that lives 50 ms is still named after it is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    /// `EVENT_CGROUP`.
    pub event: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub comm: [u8; 16],
    /// The cgroup directory's name (`<id>`, `docker-<id>.scope`, …),
    /// NUL-terminated; empty when it could not be read.
    pub name: [u8; CGROUP_NAME_LEN],
    /// Its parent directory's name (`docker`, `kubepods-…-pod<uid>.slice`).
    pub parent: [u8; CGROUP_NAME_LEN],
}
const _: () = assert!(size_of::<CgroupEvent>() == 40 + 2 * CGROUP_NAME_LEN);

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// `EVENT_EXEC`.
    pub event: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    /// The comm the exec left.
    pub comm: [u8; 16],
    /// `phase::*` before and after the exec.
    pub phase_before: u8,
    pub phase_after: u8,
    pub _pad: [u8; 6],
    /// `bprm->filename`: the path as exec'd, NUL-terminated, truncated.
    pub filename: [u8; EXEC_FILENAME_LEN],
}
pub const EXEC_FILENAME_LEN: usize = 128;
const _: () = assert!(size_of::<ExecEvent>() == 48 + EXEC_FILENAME_LEN);

/// An operation that made no capability check only because a sysctl of the
/// container's network namespace allowed it (`syscalls::operation`).
pub const EVENT_CONDITIONAL: u32 = 4;
/// A capset() in the workload that changed its permitted or effective set.
pub const EVENT_CAPSET: u32 = 5;
/// A capset() in the workload that the kernel will refuse: it asked for a
/// capability its permitted set lacks (`syscalls::CapsetCall::refused`).
/// Sent as a `CapsetEvent`. A refused call keeps nothing, so profiles leave
/// it out; the proof reads it, since a privilege drop that fails this way
/// can leave a server running with more than it meant to keep.
pub const EVENT_CAPSET_REFUSED: u32 = 7;

/// Sent once per (cgroup, operation, port or family, program): see
/// `syscalls::operation`. The sysctl is read in the kernel, in the calling
/// task's network namespace, when the operation is made.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConditionalEvent {
    /// `EVENT_CONDITIONAL`.
    pub event: u32,
    /// `syscalls::operation::*`.
    pub operation: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub tgid: u32,
    pub uid: u32,
    /// The effective gid, which `ping_group_range` is compared with.
    pub egid: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Bind: the port; 0 for sockets.
    pub port: u16,
    /// `SOCK_STREAM`, `SOCK_DGRAM`, …; 0 when unknown.
    pub sock_type: u16,
    /// `IPPROTO_*`; u16::MAX when unknown.
    pub protocol: u16,
    /// Bind: `[ip_unprivileged_port_start, 0]`; ICMP socket: the
    /// `ping_group_range` bounds (kgid_t, as the initial namespace sees
    /// them). u32::MAX when unreadable.
    pub sysctl: [u32; 2],
    pub phase: u8,
    /// Whether the caller held the capability the operation needs under
    /// the kernel's default sysctl in its effective set: `held::*`.
    pub held: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<ConditionalEvent>() == 72);

/// Values of `ConditionalEvent::held`.
pub mod held {
    /// Granted to the task's bounding set, and not effective: no grant
    /// reaches the task.
    pub const NO: u8 = 0;
    pub const YES: u8 = 1;
    /// Not in the bounding set (the runtime did not grant it), or the
    /// credentials could not be read.
    pub const UNKNOWN: u8 = 2;
}

/// Sent once per (cgroup, capabilities kept, program) for a capset() that
/// keeps a capability (`syscalls::CapsetCall::kept`), in the workload
/// phase only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CapsetEvent {
    /// `EVENT_CAPSET` or `EVENT_CAPSET_REFUSED`.
    pub event: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub uid: u32,
    pub phase: u8,
    pub _pad: [u8; 3],
    /// The sets before the call (from the task's cred) and the ones asked
    /// for, as 64-bit masks.
    pub old_permitted: u64,
    pub old_effective: u64,
    pub old_inheritable: u64,
    pub new_permitted: u64,
    pub new_effective: u64,
    pub new_inheritable: u64,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<CapsetEvent>() == 96);

impl CapsetEvent {
    /// The call's sets, to ask what it kept or lacked.
    pub const fn call(&self) -> crate::syscalls::CapsetCall {
        crate::syscalls::CapsetCall {
            old_permitted: self.old_permitted,
            old_effective: self.old_effective,
            old_inheritable: self.old_inheritable,
            new_permitted: self.new_permitted,
            new_effective: self.new_effective,
            new_inheritable: self.new_inheritable,
        }
    }
}

/// A process whose capset() calls kept capabilities exec'd: what the exec
/// left of them.
pub const EVENT_CAPSET_EXEC: u32 = 6;

/// Sent at the exec that follows a capset() which kept capabilities, in
/// the same process (`CAPSET_RAISES`). A capability kept by capset() and
/// not in the permitted set the exec left was lost there: unless the
/// process checked it in between (which the `cap_capable` hook records as
/// a need of its own), nothing needed it. One record per (cgroup, raised
/// set, program, whether all or none survived); partial outcomes always.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CapsetExecEvent {
    /// `EVENT_CAPSET_EXEC`.
    pub event: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    /// Every capability the process's capset() calls kept since its last
    /// exec (`syscalls::CapsetCall::kept`, joined).
    pub raised: u64,
    /// The permitted set the exec left it; u64::MAX when unreadable (then
    /// everything counts as kept).
    pub permitted: u64,
    /// The real uid after the exec.
    pub uid: u32,
    pub _pad: u32,
    /// The program that called capset(), and the one it exec'd.
    pub comm_before: [u8; 16],
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<CapsetExecEvent>() == 80);
