//! Unit tests of conditional.rs: records to entries, targets, merges.

use capprof_common::event::{EVENT_CAPSET, EVENT_CAPSET_EXEC, EVENT_CONDITIONAL, held};

use super::*;

fn comm(s: &str) -> [u8; 16] {
    let mut c = [0; 16];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

fn bind(port: u16, start: u32, name: &str) -> Received {
    Received {
        record: RingEvent::Conditional(ConditionalEvent {
            event: EVENT_CONDITIONAL,
            operation: operation::BIND,
            cgroup_id: 7,
            ts_ns: 1,
            tgid: 42,
            uid: 0,
            egid: 0,
            family: 2,
            port,
            sock_type: SOCK_STREAM,
            protocol: 6,
            sysctl: [start, 0],
            phase: 0,
            held: held::YES,
            _pad: [0; 2],
            comm: comm(name),
        }),
        exe: Some("/bin/busybox".into()),
    }
}

fn ping(family: u16, egid: u32, range: [u32; 2]) -> Received {
    Received {
        record: RingEvent::Conditional(ConditionalEvent {
            event: EVENT_CONDITIONAL,
            operation: operation::ICMP_SOCKET,
            cgroup_id: 7,
            ts_ns: 1,
            tgid: 43,
            uid: egid,
            egid,
            family,
            port: 0,
            sock_type: SOCK_DGRAM,
            protocol: if family == AF_INET6 { 58 } else { 1 },
            sysctl: range,
            phase: 0,
            held: held::YES,
            _pad: [0; 2],
            comm: comm("ping"),
        }),
        exe: None,
    }
}

fn capset(old: (u64, u64), new: (u64, u64)) -> Received {
    Received {
        record: RingEvent::Capset(CapsetEvent {
            event: EVENT_CAPSET,
            tgid: 44,
            cgroup_id: 7,
            ts_ns: 1,
            uid: 65534,
            phase: 0,
            _pad: [0; 3],
            old_permitted: old.0,
            old_effective: old.1,
            old_inheritable: 0,
            new_permitted: new.0,
            new_effective: new.1,
            new_inheritable: 0,
            comm: comm("capsh"),
        }),
        exe: Some("/usr/sbin/capsh".into()),
    }
}

/// Process `tgid`'s exec, which left it `permitted` of `raised`.
fn exec_of(tgid: u32, raised: u64, permitted: u64, ts_ns: u64) -> Received {
    Received {
        record: RingEvent::CapsetExec(CapsetExecEvent {
            event: EVENT_CAPSET_EXEC,
            tgid,
            cgroup_id: 7,
            ts_ns,
            raised,
            permitted,
            uid: 1000,
            _pad: 0,
            comm_before: comm("setpriv"),
            comm: comm("id"),
        }),
        exe: Some("/usr/bin/id".into()),
    }
}

fn cap(name: &str) -> Cap {
    name.parse().unwrap()
}

#[test]
fn records_become_entries() {
    let received = [
        bind(80, 0, "httpd"),
        bind(80, 0, "httpd2"),
        bind(443, 0, "httpd"),
        ping(2, 0, [0, 2_147_483_647]),
        ping(10, 0, [0, 2_147_483_647]),
    ];
    let Findings {
        conditional, kept, ..
    } = from_records(&received);
    assert!(kept.is_empty());
    let ops: Vec<&str> = conditional.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        ops,
        [
            "bind tcp port 80",
            "bind tcp port 443",
            "icmp datagram socket",
            "icmpv6 datagram socket"
        ]
    );
    assert_eq!(conditional[0].capability, cap("NET_BIND_SERVICE"));
    assert_eq!(conditional[0].value, "0");
    assert_eq!(conditional[0].evidence.len(), 2, "two programs");
    assert_eq!(conditional[2].capability, cap("NET_RAW"));
    assert_eq!(conditional[2].value, "0 2147483647");
    let json = serde_json::to_value(&conditional[0]).unwrap();
    assert_eq!(json["sysctl"], "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(json["port"], 80);
    assert_eq!(json["evidence"][0]["exe"], "/bin/busybox");
}

#[test]
fn capset_keeps_what_it_leaves_in_changed_sets() {
    let full = (1u64 << 41) - 1;
    let nbs = 1 << 10;
    let received = [
        // Unchanged: nothing.
        capset((full, full), (full, full)),
        // Effective dropped: nothing.
        capset((full, full), (full, 0)),
        capset((full, 0), (nbs, nbs)),
    ];
    let Findings { kept, .. } = from_records(&received);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].capability, cap("NET_BIND_SERVICE"));
    assert_eq!(
        kept[0].sets,
        BTreeSet::from([CapSet::Permitted, CapSet::Effective])
    );
    assert_eq!(kept[0].evidence[0].comm, "capsh");
}

#[test]
fn targets_decide_per_operation() {
    let Findings { conditional, .. } =
        from_records(&[bind(80, 0, "httpd"), ping(2, 0, [0, 2_147_483_647])]);
    let nbs = cap("NET_BIND_SERVICE");
    let raw = cap("NET_RAW");

    let docker = decide(&conditional, &[], &TargetSysctls::DOCKER);
    assert!(docker.added.is_empty(), "{docker:?}");
    assert_eq!(docker.left_out.len(), 2);

    let kernel = decide(&conditional, &[], &TargetSysctls::KERNEL);
    assert_eq!(kernel.added_caps(), [nbs, raw]);
    assert!(
        kernel.added[0].1.starts_with("bind tcp port 80")
            && kernel.added[0].1.contains("ip_unprivileged_port_start=0")
            && kernel.added[0].1.contains("=1024"),
        "{kernel:?}"
    );

    // Podman keeps 1024 but lets gid 0 open ping sockets.
    let podman = decide(&conditional, &[], &TargetSysctls::PODMAN);
    assert_eq!(podman.added_caps(), [nbs]);
    let Findings {
        conditional: as_app,
        ..
    } = from_records(&[ping(2, 1000, [0, 2_147_483_647])]);
    assert_eq!(
        decide(&as_app, &[], &TargetSysctls::PODMAN).added_caps(),
        [raw]
    );

    // Already on the allowlist: nothing to add or to say.
    let listed = decide(&conditional, &[nbs, raw], &TargetSysctls::KERNEL);
    assert_eq!(listed, Decision::default());
}

#[test]
fn a_port_at_the_targets_start_needs_nothing() {
    let Findings { conditional, .. } = from_records(&[bind(1000, 0, "srv")]);
    let target = TargetSysctls {
        source: "test",
        ip_unprivileged_port_start: 1000,
        ping_group_range: [1, 0],
        grants_ambient: false,
    };
    assert!(decide(&conditional, &[], &target).added.is_empty());
    let stricter = TargetSysctls {
        ip_unprivileged_port_start: 1001,
        ..target
    };
    assert_eq!(decide(&conditional, &[], &stricter).added.len(), 1);
}

#[test]
fn merging_is_idempotent() {
    let Findings {
        conditional, kept, ..
    } = from_records(&[
        bind(80, 0, "httpd"),
        capset(((1 << 41) - 1, 0), (1 << 10, 0)),
    ]);
    assert_eq!(merge_conditional(&conditional, &conditional), conditional);
    assert_eq!(merge_kept(&kept, &kept), kept);
}

/// setpriv: setresuid() with KEEPCAPS left permitted and cleared
/// effective; capset() raises effective again (all of it kept), and the
/// exec of a non-root program loses everything.
#[test]
fn what_the_next_exec_loses_is_transient() {
    let docker = 0xa80425fb_u64;
    let nbs = 1 << 10;
    let names = |caps: Vec<Cap>| caps.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let raise = capset((docker, 0), (docker, docker));
    // No exec seen after it: kept (a daemon that runs on).
    let alone = from_records(std::slice::from_ref(&raise));
    assert_eq!(alone.kept.len(), 14, "{alone:?}");
    assert!(alone.transient.is_empty());
    // The exec lost all of it: transient, none kept.
    let lost = from_records(&[raise.clone(), exec_of(44, docker, 0, 2)]);
    assert!(lost.kept.is_empty(), "{lost:?}");
    assert_eq!(lost.transient.len(), 14);
    assert_eq!(lost.transient[0].evidence[0].comm, "capsh");
    assert_eq!(lost.transient[0].lost_at_exec_of, ["id"]);
    // Ambient NET_BIND_SERVICE survived the exec: kept; the rest is not.
    let ambient = from_records(&[raise.clone(), exec_of(44, docker, nbs, 2)]);
    assert_eq!(
        names(ambient.kept.iter().map(|k| k.capability).collect()),
        ["CAP_NET_BIND_SERVICE"]
    );
    assert_eq!(ambient.transient.len(), 13);
    // An exec of another process, or one before the call, settles nothing.
    let other = from_records(&[raise.clone(), exec_of(45, docker, 0, 2)]);
    assert_eq!(other.kept.len(), 14);
    let before = from_records(&[exec_of(44, docker, 0, 0), raise.clone()]);
    assert_eq!(before.kept.len(), 14);
    // Another process of the profile kept it across its exec (root, file
    // capabilities): kept for all.
    let root = from_records(&[raise, exec_of(44, docker, 0, 2), exec_of(46, nbs, nbs, 3)]);
    assert_eq!(
        names(root.kept.iter().map(|k| k.capability).collect()),
        ["CAP_NET_BIND_SERVICE"]
    );
    // Kept in one profile wins over transient in another.
    let merged = merge_transient(&lost.transient, &[], &ambient.kept);
    assert_eq!(merged.len(), 13);
}

/// A caller that did not hold the capability is marked, and the mark
/// survives a merge with a caller that did: one such caller is enough to
/// need the sysctl.
#[test]
fn a_bind_without_the_capability_is_marked() {
    let mut lacking = bind(53, 0, "pdns_server");
    if let RingEvent::Conditional(e) = &mut lacking.record {
        e.held = held::NO;
        e.uid = 106;
    }
    let marked = conditional_of_received(&lacking);
    assert!(marked.without_capability, "{marked:?}");
    let holding = conditional_of_received(&bind(53, 0, "pdns_server"));
    assert!(!holding.without_capability);
    let mut unknown = bind(53, 0, "pdns_server");
    if let RingEvent::Conditional(e) = &mut unknown.record {
        e.held = held::UNKNOWN;
    }
    assert!(
        !conditional_of_received(&unknown).without_capability,
        "unknown is not lacking"
    );
    let merged = merge_conditional(&[holding], &[marked]);
    assert_eq!(merged.len(), 1);
    assert!(merged[0].without_capability);
}

fn conditional_of_received(r: &Received) -> Conditional {
    match &r.record {
        RingEvent::Conditional(e) => conditional_of(e, r.exe.clone()).expect("a known operation"),
        _ => unreachable!("a conditional record"),
    }
}
