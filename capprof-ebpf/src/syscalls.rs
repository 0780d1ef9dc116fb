//! Syscall hooks for what no capability check shows, in watched cgroups
//! and the workload phase only (see capprof_common::syscalls):
//! - binds below 1024 that the namespace's `ip_unprivileged_port_start`
//!   let through without a `CAP_NET_BIND_SERVICE` check;
//! - ICMP datagram sockets that `ping_group_range` allowed, where another
//!   runtime makes the program fall back to a raw socket (`CAP_NET_RAW`);
//! - capset() calls that keep a capability, which make no check for it.
//!
//! Why syscall tracepoints (`syscalls:sys_enter_*`, CONFIG_FTRACE_SYSCALLS)
//! rather than cgroup `sock_addr`/`sock_create` programs or LSM hooks:
//! fentry, kprobes and BPF-LSM do not load on every supported host (the CI
//! host refuses them), while classic tracepoints load wherever the
//! `cap_capable` hooks do. They observe and can never change a decision,
//! whereas a cgroup socket program's return value allows or refuses the
//! bind; they attach once for the whole host and reuse the watch decision
//! the `cap_capable` programs keep in `CGROUPS` (and `HOT`), whereas cgroup
//! programs would have to be attached to (and pinned for) every watched
//! root, and a hybrid cgroup layout can disable socket cgroup data
//! altogether.
//!
//! Cost, measured with bpf_stats on 200,000 socket()+bind(port 0) calls
//! from an unwatched cgroup: about 65 ns per bind (the watch decision comes
//! before the user read, which cost 90–105 ns when it came first), 35–50
//! ns per socket() entry (its arguments are enough to drop it) and about
//! 55 ns per socket() exit (one lookup in an almost empty hash map). capset
//! is rare.
//!
//! The sysctls are read in the kernel, from the calling task's network
//! namespace (`current->nsproxy->net_ns->ipv4`), when the operation is
//! made: the container's values, exact even when it is long gone. Offsets
//! come from the running kernel's BTF (`Config::syscalls`).
//!
//! Known gaps: 32-bit compat syscalls and io_uring's bind do not go through
//! these tracepoints.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_user,
    },
    macros::tracepoint,
    maps::HashMap,
    programs::TracePointContext,
};
use capprof_common::{
    cap::CAP_LAST_CAP,
    check::{generations, phase, stat, watch},
    event::{
        CapsetEvent, CapsetExecEvent, ConditionalEvent, EVENT_CAPSET, EVENT_CAPSET_EXEC,
        EVENT_CAPSET_REFUSED, EVENT_CONDITIONAL, held,
    },
    syscalls::{
        AF_INET, AF_INET6, CAPSET_VERSION_1, CAPSET_VERSION_2, CAPSET_VERSION_3, CapsetCall,
        CapsetRaise, IPPROTO_ICMP, IPPROTO_ICMPV6, OUTCOME_ALL_KEPT, OUTCOME_ALL_LOST,
        OperationKey, PROT_SOCK, PendingSocket, SOCK_DGRAM, SOCK_RAW, SOCK_TYPE_MASK,
        SyscallOffsets, operation,
    },
};

use crate::{
    helpers,
    maps::{
        CAPSET_BACKLOG, CAPSET_EXEC_BACKLOG, CAPSET_RAISES, CONDITIONAL_BACKLOG, CONFIG, EVENTS,
        HOT, OPS_SEEN, SOCKETS_PENDING, bump, generation,
    },
    observe::{CAPPROF_TGID, cgroup_mode, task_phase},
    process::send_exec,
};

/// Argument `i` of a syscall tracepoint: the record holds the syscall
/// number at 8 and six 8-byte arguments from byte 16
/// (/sys/kernel/tracing/events/syscalls/*/format).
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: a read within the tracepoint record, which the verifier bounds.
    unsafe { *(ctx.as_ptr() as *const u64).add(2 + i) }
}

/// The current task's cgroup and tgid when it is watched and runs its
/// workload: runtime setup and capprof itself are left out.
#[inline(always)]
fn watched_workload() -> Option<(u64, u32)> {
    let cgroup_id = helpers::cgroup_id();
    let watch_gen = generation(generations::WATCH);
    // The `cap_capable` program's per-CPU memory of the last cgroup it
    // decided, read only: most calls come from a cgroup that just made a
    // check on this CPU, and the decision costs two array lookups then.
    let cached = HOT.get(0).and_then(|hot| {
        (hot.cgroup_id == cgroup_id && hot.watch_gen == watch_gen).then_some(hot.mode)
    });
    let mode = match cached {
        Some(mode) => mode,
        None => cgroup_mode(cgroup_id, watch_gen),
    };
    if mode == watch::UNWATCHED {
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: read of a constant global.
    if tgid == unsafe { core::ptr::read_volatile(&CAPPROF_TGID) } {
        return None;
    }
    if mode == watch::CONTAINERS && task_phase(tgid) != phase::WORKLOAD {
        return None;
    }
    Some((cgroup_id, tgid))
}

/// A kernel pointer (or 0) read at `base + offset`; 0 when either is
/// unknown or the read fails.
#[inline(always)]
fn pointer(base: u64, offset: u32) -> u64 {
    if base == 0 || offset == u32::MAX {
        return 0;
    }
    // SAFETY: a checked kernel read; a bad address reads an error.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn read_kernel<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 || offset == u32::MAX {
        return None;
    }
    // SAFETY: as in `pointer`.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.ok()
}

/// The calling task's `struct netns_ipv4`, 0 when unknown.
#[inline(always)]
fn current_ipv4(o: &SyscallOffsets) -> u64 {
    let net = pointer(pointer(helpers::task(), o.task_nsproxy), o.nsproxy_net_ns);
    if net == 0 || o.net_ipv4 == u32::MAX {
        return 0;
    }
    net + o.net_ipv4 as u64
}

/// The calling task's effective gid, u32::MAX when unknown.
#[inline(always)]
fn current_egid(o: &SyscallOffsets) -> u32 {
    read_kernel(pointer(helpers::task(), o.task_cred), o.cred_egid).unwrap_or(u32::MAX)
}

/// The type and protocol of the socket behind `fd`:
/// `current->files->fdt->fd[fd]->private_data` is its `struct socket`.
/// (0, u16::MAX) when unknown.
#[inline(always)]
fn socket_of(fd: u64, o: &SyscallOffsets) -> (u16, u16) {
    let fdt = pointer(pointer(helpers::task(), o.task_files), o.files_fdt);
    let max_fds: u32 = read_kernel(fdt, o.fdt_max_fds).unwrap_or(0);
    if fd >= max_fds as u64 {
        return (0, u16::MAX);
    }
    let file = pointer(pointer(fdt, o.fdt_fd), (fd * 8) as u32);
    let socket = pointer(file, o.file_private_data);
    let sock_type: u16 = read_kernel::<i16>(socket, o.socket_type).unwrap_or(0) as u16;
    let protocol = read_kernel(pointer(socket, o.socket_sk), o.sock_protocol).unwrap_or(u16::MAX);
    (sock_type, protocol)
}

/// Whether `key` is seen for the first time (and now marked seen).
#[inline(always)]
fn first_sighting(key: &OperationKey) -> bool {
    // SAFETY: the value is a plain u8 we never dereference.
    if unsafe { OPS_SEEN.get(key) }.is_some() {
        return false;
    }
    OPS_SEEN.insert(key, 0, BPF_NOEXIST as u64).is_ok()
}

/// What a conditional record says besides who made it.
struct Conditional {
    operation: u32,
    /// The capability the operation needs under the kernel's default.
    capability: u32,
    detail: u64,
    family: u16,
    port: u16,
    sock_type: u16,
    protocol: u16,
    sysctl: [u32; 2],
}

#[inline(always)]
fn send_conditional(cgroup_id: u64, tgid: u32, egid: u32, c: Conditional) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let key = OperationKey {
        cgroup_id,
        detail: c.detail,
        event: EVENT_CONDITIONAL,
        _pad: 0,
        comm,
    };
    if !first_sighting(&key) {
        return;
    }
    send_exec(tgid);
    let event = ConditionalEvent {
        event: EVENT_CONDITIONAL,
        operation: c.operation,
        cgroup_id,
        ts_ns: helpers::boot_ns(),
        tgid,
        uid: bpf_get_current_uid_gid() as u32,
        egid,
        family: c.family,
        port: c.port,
        sock_type: c.sock_type,
        protocol: c.protocol,
        sysctl: c.sysctl,
        phase: phase::WORKLOAD,
        held: held_now(c.capability),
        _pad: [0; 2],
        comm,
    };
    emit(&key, &event, &CONDITIONAL_BACKLOG);
}

/// linux/capability.h.
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_RAW: u32 = 13;

/// Whether the current task holds `capability` in its effective set
/// (`held::*`). `NO` only when the runtime granted it (it is in the
/// bounding set) and it still does not reach the task, as for a non-root
/// process: then no grant can help. A capability the runtime did not grant
/// says nothing of what a grant would do (`UNKNOWN`). Read only on a first
/// sighting, never per check.
#[inline(always)]
fn held_now(capability: u32) -> u8 {
    let Some(o) = CONFIG.get(0).map(|c| &c.syscalls) else {
        return held::UNKNOWN;
    };
    let cred = pointer(helpers::task(), o.task_cred);
    let bit = 1u64 << (capability & 63);
    match (
        read_kernel::<u64>(cred, o.cred_cap_effective),
        read_kernel::<u64>(cred, o.cred_cap_bset),
    ) {
        (Some(effective), _) if effective & bit != 0 => held::YES,
        (Some(_), Some(bounding)) if bounding & bit != 0 => held::NO,
        _ => held::UNKNOWN,
    }
}

/// Sends a syscall hook's record, or keeps it in `backlog` when the ring
/// buffer has no room: such a record is sent once, and nothing else would
/// bring it back. Only when both are full is it lost (counted), and its
/// key forgotten, so that the same operation tries again.
#[inline(always)]
fn emit<T>(key: &OperationKey, event: &T, backlog: &HashMap<OperationKey, T>) {
    if EVENTS.output::<T>(event, 0).is_ok() {
        return;
    }
    if backlog.insert(key, event, 0).is_err() {
        bump(stat::RINGBUF_LOST);
        let _ = OPS_SEEN.remove(key);
    }
}

/// match-proto (Linux 2.6.37+, net/socket.c):
///   SYSCALL_DEFINE3(bind, int, fd, struct sockaddr __user *, umyaddr, int, addrlen)
/// `__inet_bind`/`__inet6_bind` (and SCTP's bind) check
/// `CAP_NET_BIND_SERVICE` only for a port below the namespace's
/// `sysctl_ip_prot_sock` (`ip_unprivileged_port_start`). A bind to a port
/// under 1024 at or above it made no check: that is recorded. Below it, the
/// check was made and the `cap_capable` hook saw it.
#[tracepoint(category = "syscalls", name = "sys_enter_bind")]
pub fn capprof_bind(ctx: TracePointContext) -> u32 {
    let _ = try_bind(&ctx);
    0
}

#[inline(always)]
fn try_bind(ctx: &TracePointContext) -> Option<()> {
    let (fd, addr, len) = (arg(ctx, 0), arg(ctx, 1), arg(ctx, 2));
    if addr == 0 || (len as u32) < 4 {
        return None;
    }
    let (cgroup_id, tgid) = watched_workload()?;
    // sockaddr_in and sockaddr_in6 both start with the family and the port
    // (network order).
    // SAFETY: a checked read of user memory.
    let head: [u8; 4] = unsafe { bpf_probe_read_user(addr as *const [u8; 4]) }.ok()?;
    let family = u16::from_ne_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    if (family != AF_INET && family != AF_INET6) || port == 0 || port >= PROT_SOCK {
        return None;
    }
    let o = &CONFIG.get(0)?.syscalls;
    let prot_sock: u32 = read_kernel(current_ipv4(o), o.ipv4_prot_sock).unwrap_or(u32::MAX);
    if prot_sock != u32::MAX && (port as u32) < prot_sock {
        return None;
    }
    let (sock_type, protocol) = socket_of(fd & 0xffff_ffff, o);
    // Raw and ping sockets bind without a port check.
    if sock_type == SOCK_RAW || protocol as u32 == IPPROTO_ICMP || protocol as u32 == IPPROTO_ICMPV6
    {
        return None;
    }
    send_conditional(
        cgroup_id,
        tgid,
        current_egid(o),
        Conditional {
            operation: operation::BIND,
            capability: CAP_NET_BIND_SERVICE,
            detail: port as u64
                | (protocol as u64) << 16
                | (family as u64) << 32
                | (prot_sock as u64 & 0xffff) << 48,
            family,
            port,
            sock_type,
            protocol,
            sysctl: [prot_sock, 0],
        },
    );
    Some(())
}

/// match-proto (Linux 2.6.37+, net/socket.c):
///   SYSCALL_DEFINE3(socket, int, family, int, type, int, protocol)
/// Only ICMP datagram sockets go on, to their exit: `ping_init_sock` makes
/// no capability check, it refuses with EACCES when the caller's groups lie
/// outside `ping_group_range`.
#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn capprof_socket(ctx: TracePointContext) -> u32 {
    let _ = try_socket(&ctx);
    0
}

#[inline(always)]
fn try_socket(ctx: &TracePointContext) -> Option<()> {
    let family = arg(ctx, 0) as u32;
    let sock_type = arg(ctx, 1) as u32 & SOCK_TYPE_MASK;
    let protocol = arg(ctx, 2) as u32;
    let icmp = (family == AF_INET as u32 && protocol == IPPROTO_ICMP)
        || (family == AF_INET6 as u32 && protocol == IPPROTO_ICMPV6);
    if sock_type != SOCK_DGRAM as u32 || !icmp {
        return None;
    }
    let (cgroup_id, _) = watched_workload()?;
    let pending = PendingSocket {
        cgroup_id,
        family: family as u16,
        sock_type: sock_type as u16,
        protocol: protocol as u16,
        phase: phase::WORKLOAD,
        _pad: 0,
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    SOCKETS_PENDING.insert(tid, pending, 0).ok()
}

/// match-proto (Linux 2.6.37+): the exit of socket(), `long ret` at 16.
/// A refused ICMP datagram socket is not recorded: the program then falls
/// back to a raw socket, whose `CAP_NET_RAW` check the `cap_capable` hook
/// sees.
#[tracepoint(category = "syscalls", name = "sys_exit_socket")]
pub fn capprof_socket_exit(ctx: TracePointContext) -> u32 {
    let _ = try_socket_exit(&ctx);
    0
}

#[inline(always)]
fn try_socket_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: a plain value copied out at once.
    let pending = unsafe { SOCKETS_PENDING.get(tid) }.copied()?;
    let _ = SOCKETS_PENDING.remove(tid);
    if (arg(ctx, 0) as i64) < 0 {
        return None;
    }
    let o = &CONFIG.get(0)?.syscalls;
    let range: [u32; 2] =
        read_kernel(current_ipv4(o), o.ipv4_ping_range).unwrap_or([u32::MAX, u32::MAX]);
    let egid = current_egid(o);
    send_conditional(
        pending.cgroup_id,
        (pid_tgid >> 32) as u32,
        egid,
        Conditional {
            operation: operation::ICMP_SOCKET,
            capability: CAP_NET_RAW,
            detail: pending.family as u64 | (egid as u64) << 16,
            family: pending.family,
            port: 0,
            sock_type: pending.sock_type,
            protocol: pending.protocol,
            sysctl: range,
        },
    );
    Some(())
}

/// match-proto (Linux 2.6.24+, kernel/capability.c):
///   SYSCALL_DEFINE2(capset, cap_user_header_t, header, const cap_user_data_t, data)
/// Makes no check for the capabilities it keeps: `cap_capset` only tests
/// that the new sets lie within the old ones (and checks CAP_SETPCAP, which
/// matters only when the inheritable set grows). The old sets come from
/// `current->cred`; a call the kernel will refuse, or that changes no set,
/// keeps nothing (`CapsetCall::kept`).
#[tracepoint(category = "syscalls", name = "sys_enter_capset")]
pub fn capprof_capset(ctx: TracePointContext) -> u32 {
    let _ = try_capset(&ctx);
    0
}

#[inline(always)]
fn try_capset(ctx: &TracePointContext) -> Option<()> {
    let (header, data) = (arg(ctx, 0), arg(ctx, 1));
    if header == 0 || data == 0 {
        return None;
    }
    let (cgroup_id, tgid) = watched_workload()?;
    // SAFETY: checked reads of user memory: `struct __user_cap_header_struct`
    // (version, pid) and one or two `__user_cap_data_struct` (effective,
    // permitted, inheritable).
    let version = unsafe { bpf_probe_read_user(header as *const u32) }.ok()?;
    let low: [u32; 3] = unsafe { bpf_probe_read_user(data as *const [u32; 3]) }.ok()?;
    let high: [u32; 3] = match version {
        CAPSET_VERSION_1 => [0; 3],
        CAPSET_VERSION_2 | CAPSET_VERSION_3 => {
            // SAFETY: as above.
            unsafe { bpf_probe_read_user((data + 12) as *const [u32; 3]) }.ok()?
        }
        _ => return None,
    };
    // The kernel ignores bits past the last capability.
    let valid: u64 = (1 << (CAP_LAST_CAP + 1)) - 1;
    let join = |i: usize| (low[i] as u64 | (high[i] as u64) << 32) & valid;
    let (new_effective, new_permitted, new_inheritable) = (join(0), join(1), join(2));
    let o = &CONFIG.get(0)?.syscalls;
    let cred = pointer(helpers::task(), o.task_cred);
    // Unknown old sets count as changed: this can only keep too much.
    let call = CapsetCall {
        old_permitted: read_kernel(cred, o.cred_cap_permitted).unwrap_or(u64::MAX),
        old_effective: read_kernel(cred, o.cred_cap_effective).unwrap_or(u64::MAX),
        old_inheritable: read_kernel(cred, o.cred_cap_inheritable).unwrap_or(0),
        new_permitted,
        new_effective,
        new_inheritable,
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // A refused call keeps nothing: it is reported for the proof only, as
    // what it asked for (a drop that fails for want of a capability).
    let (event, detail) = if call.refused() {
        (EVENT_CAPSET_REFUSED, new_permitted | new_effective)
    } else {
        let kept = call.kept();
        if kept == 0 {
            return None;
        }
        remember_raise(tgid, cgroup_id, kept, comm);
        (EVENT_CAPSET, kept)
    };
    let key = OperationKey {
        cgroup_id,
        detail,
        event,
        _pad: 0,
        comm,
    };
    if !first_sighting(&key) {
        return None;
    }
    send_exec(tgid);
    let event = CapsetEvent {
        event,
        tgid,
        cgroup_id,
        ts_ns: helpers::boot_ns(),
        uid: bpf_get_current_uid_gid() as u32,
        phase: phase::WORKLOAD,
        _pad: [0; 3],
        old_permitted: call.old_permitted,
        old_effective: call.old_effective,
        old_inheritable: call.old_inheritable,
        new_permitted,
        new_effective,
        new_inheritable,
        comm,
    };
    emit(&key, &event, &CAPSET_BACKLOG);
    Some(())
}

/// Joins what this capset() kept into the process's raise, which its next
/// exec settles (`capset_exec`).
#[inline(always)]
fn remember_raise(tgid: u32, cgroup_id: u64, kept: u64, comm: [u8; 16]) {
    if let Some(raise) = CAPSET_RAISES.get_ptr_mut(&tgid) {
        // SAFETY: a live map value; only this process's own hooks write it.
        unsafe { (*raise).raised |= kept };
        return;
    }
    let raise = CapsetRaise {
        cgroup_id,
        raised: kept,
        comm,
    };
    let _ = CAPSET_RAISES.insert(&tgid, &raise, 0);
}

/// Called by the exec hook, in the exec'ing task once its new credentials
/// are committed: reports which of what the process's capset() calls kept
/// the exec left in its permitted set (root, file capabilities and ambient
/// ones survive; a non-root program without them loses everything). Costs
/// one lookup per exec in a watched cgroup; only a process with a raise
/// goes further.
#[inline(always)]
pub fn capset_exec(tgid: u32, comm: [u8; 16]) -> Option<()> {
    // SAFETY: a plain value copied out at once.
    let raise = unsafe { CAPSET_RAISES.get(&tgid) }.copied()?;
    let _ = CAPSET_RAISES.remove(&tgid);
    let o = &CONFIG.get(0)?.syscalls;
    let cred = pointer(helpers::task(), o.task_cred);
    let permitted: u64 = read_kernel(cred, o.cred_cap_permitted).unwrap_or(u64::MAX);
    let lost = raise.raised & !permitted;
    let all = if lost == 0 {
        OUTCOME_ALL_KEPT
    } else if lost == raise.raised {
        OUTCOME_ALL_LOST
    } else {
        0
    };
    let key = OperationKey {
        cgroup_id: raise.cgroup_id,
        detail: raise.raised | all,
        event: EVENT_CAPSET_EXEC,
        _pad: 0,
        comm: raise.comm,
    };
    if all != 0 && !first_sighting(&key) {
        return None;
    }
    // Names the program it exec'd.
    send_exec(tgid);
    let event = CapsetExecEvent {
        event: EVENT_CAPSET_EXEC,
        tgid,
        cgroup_id: raise.cgroup_id,
        ts_ns: helpers::boot_ns(),
        raised: raise.raised,
        permitted,
        uid: bpf_get_current_uid_gid() as u32,
        _pad: 0,
        comm_before: raise.comm,
        comm,
    };
    emit(&key, &event, &CAPSET_EXEC_BACKLOG);
    Some(())
}
