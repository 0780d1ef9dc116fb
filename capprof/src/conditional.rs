//! What the syscall hooks' records (capprof-ebpf/src/syscalls.rs) tell a
//! profile: conditional, kept and transient capabilities. The types and what
//! each export target makes of them are the model's
//! ([`capprof_profile::conditional`], re-exported here); decoding the raw
//! records is the agent's, and stays here.

use std::collections::BTreeSet;

use capprof_common::{
    event::{CapsetEvent, CapsetExecEvent, ConditionalEvent, held},
    syscalls::{AF_INET6, SETPCAP_BIT, SOCK_DGRAM, SOCK_SEQPACKET, SOCK_STREAM, operation},
};
pub use capprof_profile::conditional::*;

use crate::{
    capability::Cap,
    observer::{
        events::{RingEvent, comm_str},
        reader::Received,
    },
};

/// What a profile learns from the syscall records among `received`.
pub fn from_records(received: &[Received]) -> Findings {
    let mut conditional = vec![];
    let mut capsets = vec![];
    let mut outcomes = vec![];
    for r in received {
        match r.record {
            RingEvent::Conditional(e) => conditional.extend(conditional_of(&e, r.exe.clone())),
            RingEvent::Capset(e) => capsets.push((e, r.exe.clone())),
            RingEvent::CapsetExec(e) => outcomes.push(e),
            _ => {}
        }
    }
    let (kept, transient) = settle_capsets(&capsets, &outcomes);
    Findings {
        conditional: merge_conditional(&[], &conditional),
        transient: merge_transient(&[], &transient, &kept),
        kept: merge_kept(&[], &kept),
    }
}

/// Splits what capset() calls kept into what stayed kept and what the
/// process lost at its next exec. A capability is transient only when the
/// exec that followed the very call that kept it (same process) lost it,
/// and no exec of any process of the profile kept it: a capset() record
/// with no exec after it (a daemon that drops root and runs on, or whose
/// exec was not seen) stays kept. The kernel reports each exec once per
/// (raised set, program, all lost or all kept), so other processes of the
/// same program are settled by the first.
fn settle_capsets(
    capsets: &[(CapsetEvent, Option<String>)],
    outcomes: &[CapsetExecEvent],
) -> (Vec<Kept>, Vec<Transient>) {
    let survived = outcomes
        .iter()
        .fold(0u64, |acc, o| acc | (o.raised & o.permitted));
    let (mut kept, mut transient) = (vec![], vec![]);
    for (e, exe) in capsets {
        let next_exec = outcomes
            .iter()
            .filter(|o| o.tgid == e.tgid && o.cgroup_id == e.cgroup_id && o.ts_ns >= e.ts_ns)
            .min_by_key(|o| o.ts_ns);
        let lost = next_exec.map_or(0, |o| o.raised & !o.permitted & !survived);
        for k in kept_of(e, exe.clone()) {
            let bit = 1u64 << k.capability.number();
            // CAP_SETPCAP to grow the inheritable set is what the call
            // itself needed, whatever the exec did.
            match next_exec {
                Some(o) if lost & bit != 0 && !k.sets.contains(&CapSet::Inheritable) => {
                    transient.push(Transient {
                        capability: k.capability,
                        evidence: k.evidence,
                        lost_at_exec_of: vec![comm_str(&o.comm)],
                    });
                }
                _ => kept.push(k),
            }
        }
    }
    (kept, transient)
}

fn conditional_of(e: &ConditionalEvent, exe: Option<String>) -> Option<Conditional> {
    let known = |v: u32| v != u32::MAX;
    let evidence = OperationEvidence {
        comm: comm_str(&e.comm),
        exe,
        pid: e.tgid,
        uid: e.uid,
        gid: known(e.egid).then_some(e.egid),
    };
    let (sysctl, operation, value, port) = match e.operation {
        operation::BIND => {
            let value = match e.sysctl[0] {
                v if known(v) => v.to_string(),
                _ => "unknown".to_owned(),
            };
            let op = format!("bind {} port {}", transport(e), e.port);
            (Sysctl::UnprivilegedPortStart, op, value, Some(e.port))
        }
        operation::ICMP_SOCKET => {
            let value = match e.sysctl {
                [low, high] if known(low) && known(high) => format!("{low} {high}"),
                _ => "unknown".to_owned(),
            };
            let op = if e.family == AF_INET6 {
                "icmpv6 datagram socket"
            } else {
                "icmp datagram socket"
            };
            (Sysctl::PingGroupRange, op.to_owned(), value, None)
        }
        _ => return None,
    };
    Some(Conditional {
        capability: sysctl.capability(),
        operation,
        sysctl,
        value,
        port,
        evidence: vec![evidence],
        without_capability: e.held == held::NO,
    })
}

/// `tcp`, `udp6`, … for a bind's socket, from its protocol, else its type.
fn transport(e: &ConditionalEvent) -> String {
    let name = match (e.protocol, e.sock_type) {
        (6, _) => "tcp",
        (17, _) => "udp",
        (132, _) => "sctp",
        (136, _) => "udplite",
        (262, _) => "mptcp",
        (_, SOCK_STREAM) => "stream",
        (_, SOCK_DGRAM) => "datagram",
        (_, SOCK_SEQPACKET) => "seqpacket",
        _ => "inet",
    };
    let v6 = if e.family == AF_INET6 { "6" } else { "" };
    format!("{name}{v6}")
}

fn kept_of(e: &CapsetEvent, exe: Option<String>) -> Vec<Kept> {
    let evidence = OperationEvidence {
        comm: comm_str(&e.comm),
        exe,
        pid: e.tgid,
        uid: e.uid,
        gid: None,
    };
    let call = e.call();
    Cap::in_mask(call.kept())
        .map(|capability| {
            let bit = 1 << capability.number();
            let mut sets = BTreeSet::new();
            if e.new_permitted != e.old_permitted && e.new_permitted & bit != 0 {
                sets.insert(CapSet::Permitted);
            }
            if e.new_effective != e.old_effective && e.new_effective & bit != 0 {
                sets.insert(CapSet::Effective);
            }
            if bit == SETPCAP_BIT && call.grows_inheritable() {
                sets.insert(CapSet::Inheritable);
            }
            Kept {
                capability,
                sets,
                evidence: vec![evidence.clone()],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
