//! Attaching the syscall hooks (capprof-ebpf/src/syscalls.rs): binds and
//! ICMP datagram sockets that a relaxed sysctl let through without a
//! capability check, and capset() calls that keep a capability.
//!
//! They need CONFIG_FTRACE_SYSCALLS and tracefs. A hook that cannot attach
//! costs that part of the profile only, so it is a warning, never a failed
//! load.

use aya::{
    Ebpf,
    programs::{ProgramError, TracePoint},
};
use capprof_common::names;

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

/// Loads and attaches every syscall hook it can; returns the programs
/// that could not be attached. The links live as long as `ebpf`.
pub fn attach(ebpf: &mut Ebpf) -> Vec<&'static str> {
    let mut missing = vec![];
    for &(program, tracepoint) in names::SYSCALL_HOOKS {
        let result = (|| -> Result<(), ProgramError> {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .ok_or(ProgramError::NotLoaded)?
                .try_into()?;
            prog.load()?;
            prog.attach(names::SYSCALLS_CATEGORY, tracepoint)?;
            Ok(())
        })();
        if let Err(err) = result {
            tracing::warn!(
                "cannot attach {program} to {}:{tracepoint} ({}); {} will not be seen",
                names::SYSCALLS_CATEGORY,
                super::attach::refusal(&err),
                unseen(program)
            );
            missing.push(program);
        }
    }
    missing
}
