//! What the syscall hooks share with userspace: operations that need a
//! capability somewhere else although no capability check was made here.
//!
//! - **Conditional capabilities.** Docker lowers
//!   `net.ipv4.ip_unprivileged_port_start` to 0 and opens
//!   `net.ipv4.ping_group_range` in every container network namespace it
//!   creates. A bind to port 80 then makes no `CAP_NET_BIND_SERVICE` check,
//!   and an ICMP datagram socket needs no `CAP_NET_RAW` fallback, although
//!   both are needed under a runtime that leaves the kernel's defaults.
//! - **Capabilities kept through capset().** `capset()` makes no check for
//!   the capabilities it keeps (the kernel only tests that the new sets are
//!   a subset of the old), so a daemon that drops root and keeps one for
//!   later shows no check for it, and fails at start without it.

use core::mem::size_of;

/// The kernel's default `net.ipv4.ip_unprivileged_port_start` (`PROT_SOCK`):
/// a bind to a lower port needs `CAP_NET_BIND_SERVICE` unless the namespace
/// lowered it.
pub const PROT_SOCK: u16 = 1024;

/// `AF_INET` and `AF_INET6` (include/linux/socket.h).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `SOCK_STREAM`, `SOCK_DGRAM`, `SOCK_RAW`, `SOCK_SEQPACKET`, and the mask
/// that strips `SOCK_NONBLOCK`/`SOCK_CLOEXEC` from socket()'s type.
pub const SOCK_STREAM: u16 = 1;
pub const SOCK_DGRAM: u16 = 2;
pub const SOCK_RAW: u16 = 3;
pub const SOCK_SEQPACKET: u16 = 5;
pub const SOCK_TYPE_MASK: u32 = 0xf;
/// `IPPROTO_ICMP` and `IPPROTO_ICMPV6`: with `SOCK_DGRAM`, a ping socket.
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;

/// capset()'s header versions (include/uapi/linux/capability.h). Version 1
/// carries one 32-bit data element, versions 2 and 3 two.
pub const CAPSET_VERSION_1: u32 = 0x1998_0330;
pub const CAPSET_VERSION_2: u32 = 0x2007_1026;
pub const CAPSET_VERSION_3: u32 = 0x2008_0522;

/// Kinds of conditional operations (`ConditionalEvent::operation`). Stable
/// ids, never reused.
pub mod operation {
    /// A bind to a port the kernel's default would have checked, which the
    /// namespace's `ip_unprivileged_port_start` let through unchecked.
    pub const BIND: u32 = 1;
    /// A successful ICMP datagram ("ping") socket, which only
    /// `ping_group_range` allows; elsewhere the program needs a raw socket.
    pub const ICMP_SOCKET: u32 = 2;
}

/// `CAP_SETPCAP`'s bit: capset() needs it to add to the inheritable set a
/// capability that is in neither the old inheritable nor the old permitted
/// set (cap_inh_is_capped in security/commoncap.c).
pub const SETPCAP_BIT: u64 = 1 << 8;

/// The sets of a capset() call, as 64-bit masks: the task's before, and the
/// ones asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapsetCall {
    pub old_permitted: u64,
    pub old_effective: u64,
    pub old_inheritable: u64,
    pub new_permitted: u64,
    pub new_effective: u64,
    pub new_inheritable: u64,
}

impl CapsetCall {
    /// Whether the call adds to the inheritable set beyond what the old
    /// inheritable and permitted sets allow: then it needs `CAP_SETPCAP`.
    pub const fn grows_inheritable(&self) -> bool {
        self.new_inheritable & !(self.old_inheritable | self.old_permitted) != 0
    }

    /// Whether the kernel refuses the call (security/commoncap.c,
    /// cap_capset): the new permitted set must lie within the old one, the
    /// new effective set within the new permitted one, and growing the
    /// inheritable set takes `CAP_SETPCAP` in effect. Such a call keeps
    /// nothing. (The bounding set's limit on inheritable is not checked:
    /// at worst a refused call keeps too much.)
    pub const fn refused(&self) -> bool {
        self.lacking() != 0
    }

    /// Why the kernel refuses the call, as the capabilities it lacked: those
    /// asked for in the new permitted set beyond the old one, those asked
    /// for in the new effective set beyond the new permitted one, and
    /// `CAP_SETPCAP` when it grows the inheritable set without it. Empty
    /// exactly when the call is not `refused`.
    pub const fn lacking(&self) -> u64 {
        let mut lacking =
            self.new_permitted & !self.old_permitted | self.new_effective & !self.new_permitted;
        if self.grows_inheritable() && self.old_effective & SETPCAP_BIT == 0 {
            lacking |= SETPCAP_BIT;
        }
        lacking
    }

    /// The capabilities the call asks to keep, as a mask: every capability
    /// it leaves in a set (permitted or effective) that it changes, and
    /// `CAP_SETPCAP` when it grows the inheritable set. A call that re-sets
    /// unchanged sets keeps nothing, and one that only drops (clears
    /// effective, or empties both) keeps nothing new.
    pub const fn kept(&self) -> u64 {
        let mut kept = 0;
        if self.new_permitted != self.old_permitted {
            kept |= self.new_permitted;
        }
        if self.new_effective != self.old_effective {
            kept |= self.new_effective;
        }
        if self.grows_inheritable() {
            kept |= SETPCAP_BIT;
        }
        kept
    }
}

/// Offsets from the running kernel's BTF of the fields the syscall hooks
/// read, each u32::MAX when unknown (the hook then leaves that part out).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallOffsets {
    /// `task_struct.nsproxy`, `nsproxy.net_ns`, and `net.ipv4`.
    pub task_nsproxy: u32,
    pub nsproxy_net_ns: u32,
    pub net_ipv4: u32,
    /// Within `struct netns_ipv4`: `sysctl_ip_prot_sock`, and
    /// `ping_group_range.range` (two `kgid_t`).
    pub ipv4_prot_sock: u32,
    pub ipv4_ping_range: u32,
    /// `task_struct.cred`, and in `struct cred`: `cap_permitted`,
    /// `cap_effective` (8 bytes each on every kernel), `egid`.
    pub task_cred: u32,
    pub cred_cap_permitted: u32,
    pub cred_cap_effective: u32,
    pub cred_egid: u32,
    /// From a file descriptor to its socket's type and protocol:
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.max_fds`,
    /// `fdtable.fd`, `file.private_data` (the `struct socket`),
    /// `socket.type`, `socket.sk`, `sock.sk_protocol` (a u16 from 5.6).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sock_protocol: u32,
    /// `cred.cap_inheritable`.
    pub cred_cap_inheritable: u32,
    /// `cred.cap_bset`: whether the runtime granted a capability at all.
    pub cred_cap_bset: u32,
    /// Keeps `Config`'s u64 fields aligned with no hidden padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<SyscallOffsets>() == 20 * 4);

impl SyscallOffsets {
    pub const fn unknown() -> Self {
        Self {
            task_nsproxy: u32::MAX,
            nsproxy_net_ns: u32::MAX,
            net_ipv4: u32::MAX,
            ipv4_prot_sock: u32::MAX,
            ipv4_ping_range: u32::MAX,
            task_cred: u32::MAX,
            cred_cap_permitted: u32::MAX,
            cred_cap_effective: u32::MAX,
            cred_egid: u32::MAX,
            task_files: u32::MAX,
            files_fdt: u32::MAX,
            fdt_max_fds: u32::MAX,
            fdt_fd: u32::MAX,
            file_private_data: u32::MAX,
            socket_type: u32::MAX,
            socket_sk: u32::MAX,
            sock_protocol: u32::MAX,
            cred_cap_inheritable: u32::MAX,
            cred_cap_bset: u32::MAX,
            _pad: 0,
        }
    }
}

impl Default for SyscallOffsets {
    /// Nothing known.
    fn default() -> Self {
        Self::unknown()
    }
}

/// Key of `OPS_SEEN`, the in-kernel dedup of syscall records: one record
/// per (cgroup, event kind, detail, program).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OperationKey {
    pub cgroup_id: u64,
    /// Bind: port, protocol, family and the sysctl's value; ICMP socket:
    /// family and egid; capset: the mask of capabilities kept (refused:
    /// the permitted and effective sets asked for); exec
    /// outcome: the raised mask and `OUTCOME_ALL_*`.
    pub detail: u64,
    /// `event::EVENT_CONDITIONAL`, `event::EVENT_CAPSET`,
    /// `event::EVENT_CAPSET_REFUSED` or `event::EVENT_CAPSET_EXEC`.
    pub event: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<OperationKey>() == 40);

/// Value of `CAPSET_RAISES`: what a process's capset() calls kept since its
/// last exec, until that exec says which of it survived.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapsetRaise {
    pub cgroup_id: u64,
    /// `CapsetCall::kept` of every call, joined.
    pub raised: u64,
    /// The program that made the calls.
    pub comm: [u8; 16],
}
const _: () = assert!(size_of::<CapsetRaise>() == 32);

/// `OperationKey::detail` bits of an exec outcome (`EVENT_CAPSET_EXEC`)
/// beside the raised set (capabilities end at bit 40): all of it lost, or
/// all of it kept. Outcomes that are neither are not deduplicated.
pub const OUTCOME_ALL_LOST: u64 = 1 << 62;
pub const OUTCOME_ALL_KEPT: u64 = 1 << 63;

/// Value of `SOCKETS_PENDING`: an ICMP datagram socket() between its entry
/// and its exit, where its result is known.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingSocket {
    pub cgroup_id: u64,
    pub family: u16,
    pub sock_type: u16,
    pub protocol: u16,
    pub phase: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<PendingSocket>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    const NBS: u64 = 1 << 10;
    const RAW: u64 = 1 << 13;
    const ADMIN: u64 = 1 << 12;

    fn call(old: (u64, u64), new: (u64, u64)) -> CapsetCall {
        CapsetCall {
            old_permitted: old.0,
            old_effective: old.1,
            new_permitted: new.0,
            new_effective: new.1,
            ..CapsetCall::default()
        }
    }

    #[test]
    fn kept_counts_only_the_sets_a_call_changes() {
        let full = (1 << 41) - 1;
        // Re-setting unchanged sets keeps nothing.
        assert_eq!(call((full, full), (full, full)).kept(), 0);
        // Dropping the effective set keeps nothing.
        assert_eq!(call((full, full), (full, 0)).kept(), 0);
        // Reducing permitted keeps what is left.
        assert_eq!(call((full, full), (NBS, NBS)).kept(), NBS);
        assert_eq!(call((full, full), (RAW | ADMIN, 0)).kept(), RAW | ADMIN);
        // Raising into effective keeps what is raised.
        assert_eq!(call((RAW, 0), (RAW, RAW)).kept(), RAW);
        // Emptying both keeps nothing.
        assert_eq!(call((NBS, NBS), (0, 0)).kept(), 0);
    }

    #[test]
    fn growing_inheritable_needs_setpcap() {
        let full = (1 << 41) - 1;
        // Within the old permitted set: no CAP_SETPCAP needed.
        let within = CapsetCall {
            new_inheritable: NBS,
            ..call((full, 0), (NBS, NBS))
        };
        assert!(!within.grows_inheritable() && !within.refused());
        assert_eq!(within.kept(), NBS);
        // Beyond it: needed, and refused without it in effect.
        let beyond = CapsetCall {
            new_inheritable: RAW,
            ..call((NBS, NBS), (NBS, NBS))
        };
        assert!(beyond.grows_inheritable() && beyond.refused());
        assert_eq!(beyond.lacking(), SETPCAP_BIT);
        let with_setpcap = CapsetCall {
            old_effective: NBS | SETPCAP_BIT,
            old_permitted: NBS | SETPCAP_BIT,
            ..beyond
        };
        assert!(!with_setpcap.refused());
        assert_eq!(with_setpcap.kept() & SETPCAP_BIT, SETPCAP_BIT);
    }

    #[test]
    fn refused_calls_are_recognised() {
        assert!(!call((NBS | RAW, 0), (NBS, NBS)).refused());
        assert_eq!(call((NBS | RAW, 0), (NBS, NBS)).lacking(), 0);
        assert_eq!(call((NBS, 0), (NBS | RAW, 0)).lacking(), RAW);
        assert_eq!(call((NBS | RAW, 0), (NBS, RAW)).lacking(), RAW);
        assert!(call((NBS, 0), (NBS | RAW, 0)).refused());
        assert!(call((NBS | RAW, 0), (NBS, RAW)).refused());
    }
}
