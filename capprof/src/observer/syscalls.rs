//! Attaching the syscall hooks (capprof-ebpf/src/syscalls.rs): binds and
//! ICMP datagram sockets that a relaxed sysctl let through without a
//! capability check, and capset() calls that keep a capability.
//!
//! They need CONFIG_FTRACE_SYSCALLS and tracefs. A hook that cannot attach
//! costs that part of the profile only, so it is a warning, never a failed
//! load. The daemon pins their links like the `cap_capable` ones: while it
//! is down they keep recording into the pinned ring buffer, which the next
//! run reads from where this one stopped.

use aya::Ebpf;
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

/// Loads and attaches every syscall hook it can, and returns their links
/// (to pin, or to drop with `ebpf`). A hook that cannot attach is warned
/// about and left out.
pub fn attach(ebpf: &mut Ebpf, btf: &aya::Btf) -> Vec<Attached> {
    let mut attached = vec![];
    for &(program, tracepoint) in names::SYSCALL_HOOKS {
        let hook = Hook::TracePoint(names::SYSCALLS_CATEGORY, tracepoint);
        match attach::load_and_attach(ebpf, btf, program, hook) {
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
