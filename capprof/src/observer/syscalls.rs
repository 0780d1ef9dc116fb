//! Attaching the syscall hooks (capprof-ebpf/src/syscalls.rs): binds and
//! ICMP datagram sockets that a relaxed sysctl let through without a
//! capability check, and capset() calls that keep a capability.
//!
//! They need CONFIG_FTRACE_SYSCALLS and tracefs. A hook that cannot attach
//! costs that part of the profile only, so it is a warning, never a failed
//! load. The daemon pins their links like the `cap_capable` ones: while it
//! is down they keep recording into the pinned ring buffer, which the next
//! run reads from where this one stopped.

use capprof_common::names;

use super::attach::{self, Attached, Hook};

/// What a missing hook leaves unseen, for the warning.
fn unseen(program: &str) -> &'static str {
    match program {
        names::PROG_BIND => {
            "binds below 1024 that a lowered net.ipv4.ip_unprivileged_port_start allowed"
        }
        names::PROG_SOCKET | names::PROG_SOCKET_EXIT => {
            "ICMP datagram sockets that net.ipv4.ping_group_range allowed"
        }
        _ => "capabilities kept through capset()",
    }
}

/// The hook of the syscall tracepoint `tracepoint`.
fn hook(tracepoint: &'static str) -> Hook {
    Hook::TracePoint(names::SYSCALLS_CATEGORY, tracepoint)
}

/// Every syscall hook's program and hook, to load.
pub fn programs() -> impl Iterator<Item = (&'static str, Hook)> {
    names::SYSCALL_HOOKS
        .iter()
        .map(|&(program, tracepoint)| (program, hook(tracepoint)))
}

/// Attaches every syscall hook that loaded, and returns their links (to
/// pin, or to drop with their programs). A hook that cannot load or attach is
/// warned about and left out.
pub fn attach(
    ebpf: &mut dyn attach::Programs,
    loaded: &mut attach::AttachResults,
) -> Vec<Attached> {
    let mut attached = vec![];
    for &(program, tracepoint) in names::SYSCALL_HOOKS {
        match attach::attach_loaded(ebpf, loaded, program, hook(tracepoint)) {
            Ok(link) => attached.push(link),
            Err(err) => tracing::warn!(
                "cannot attach {program} to {}:{tracepoint} ({}); {} will not be seen",
                names::SYSCALLS_CATEGORY,
                err.refusal(),
                unseen(program)
            ),
        }
    }
    attached
}
