use std::collections::BTreeSet;

use super::*;
use crate::{
    conditional::{Conditional, OperationEvidence, Sysctl, SysctlsChoice},
    profile::Subject,
};

fn cap(name: &str) -> Cap {
    name.parse().unwrap()
}

fn caps(names: &[&str]) -> Vec<Cap> {
    names.iter().map(|n| cap(n)).collect()
}

/// A profile whose allowlist is exactly `names`.
fn profile(names: &[&str]) -> Profile {
    let subject = Subject {
        kind: "container".into(),
        name: Some("web".into()),
        ..Default::default()
    };
    let p = crate::profile::with_allowlist(names, subject);
    assert_eq!(p.allowlist, caps(names), "test profile");
    p
}

const EMPTY: &[&str] = &[];
const TWO: &[&str] = &["CAP_CHOWN", "CAP_NET_RAW"];

fn yaml_value(text: &str) -> serde_norway::Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
}

fn strings(value: &serde_norway::Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn docker_and_podman_flags() {
    for format in [Format::Docker, Format::Podman] {
        assert_eq!(render(&profile(EMPTY), format).unwrap(), "--cap-drop=ALL\n");
        assert_eq!(
            render(&profile(TWO), format).unwrap(),
            "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_RAW\n"
        );
    }
}

#[test]
fn compose_snippet_parses_back() {
    for (names, add) in [(EMPTY, vec![]), (TWO, vec!["CHOWN", "NET_RAW"])] {
        let out = render(&profile(names), Format::Compose).unwrap();
        assert!(out.starts_with("# capprof: "), "{out}");
        assert!(out.ends_with('\n'));
        let doc = yaml_value(&out);
        let map = doc.as_mapping().unwrap();
        assert_eq!(map.len(), 2, "{out}");
        assert_eq!(strings(&doc["cap_drop"]), ["ALL"]);
        assert_eq!(strings(&doc["cap_add"]), add, "{out}");
    }
}

#[test]
fn k8s_snippet_parses_back() {
    for (names, add) in [(EMPTY, vec![]), (TWO, vec!["CHOWN", "NET_RAW"])] {
        let out = render(&profile(names), Format::K8s).unwrap();
        assert!(out.starts_with("# capprof: "), "{out}");
        assert!(out.ends_with('\n'));
        let doc = yaml_value(&out);
        assert_eq!(doc.as_mapping().unwrap().len(), 1, "{out}");
        let caps = &doc["securityContext"]["capabilities"];
        assert_eq!(caps.as_mapping().unwrap().len(), 2, "{out}");
        assert_eq!(strings(&caps["drop"]), ["ALL"]);
        assert_eq!(strings(&caps["add"]), add, "{out}");
        assert!(!out.contains("CAP_"), "{out}");
    }
}

#[test]
fn oci_fragment_has_all_five_sets() {
    for (names, granted) in [(EMPTY, vec![]), (TWO, vec!["CAP_CHOWN", "CAP_NET_RAW"])] {
        let out = render(&profile(names), Format::Oci).unwrap();
        assert!(out.ends_with('\n'));
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        let sets = doc["process"]["capabilities"].as_object().unwrap();
        assert_eq!(sets.len(), 5, "{out}");
        let set = |name: &str| -> Vec<String> {
            sets[name]
                .as_array()
                .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        for name in ["bounding", "effective", "permitted"] {
            assert_eq!(set(name), granted, "{name}");
        }
        for name in ["inheritable", "ambient"] {
            assert!(set(name).is_empty(), "{name}");
        }
    }
}

#[test]
fn systemd_drop_in() {
    let out = render(&profile(TWO), Format::Systemd).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("# capprof: 2 capabilities observed in use by web"));
    assert_eq!(
        &lines[1..],
        [
            "[Service]",
            "CapabilityBoundingSet=",
            "CapabilityBoundingSet=CAP_CHOWN CAP_NET_RAW",
            "AmbientCapabilities=",
            "AmbientCapabilities=CAP_CHOWN CAP_NET_RAW",
        ]
    );
    assert!(out.ends_with('\n'));

    let out = render(&profile(EMPTY), Format::Systemd).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[1..],
        [
            "[Service]",
            "CapabilityBoundingSet=",
            "AmbientCapabilities="
        ]
    );
}

/// systemd.exec(5)'s rules for a capability setting assigned more than
/// once across a unit and its drop-ins: assignments are merged (OR), a
/// `~` prefix removes instead (AND NOT), and an empty assignment resets
/// to the empty set.
fn systemd_merge(assignments: &[&str]) -> BTreeSet<String> {
    let mut set = BTreeSet::new();
    for value in assignments {
        if value.is_empty() {
            set.clear();
        } else if let Some(removed) = value.strip_prefix('~') {
            for cap in removed.split_whitespace() {
                set.remove(cap);
            }
        } else {
            set.extend(value.split_whitespace().map(str::to_owned));
        }
    }
    set
}

#[test]
fn systemd_drop_in_overrides_a_units_own_capabilities() {
    // The unit as shipped, then the drop-in, in the order systemd reads
    // them.
    let unit = "[Service]\nExecStart=/usr/bin/web\nCapabilityBoundingSet=CAP_SYS_ADMIN CAP_CHOWN\nAmbientCapabilities=CAP_SYS_ADMIN\n";
    for names in [TWO, EMPTY] {
        let drop_in = render(&profile(names), Format::Systemd).unwrap();
        for setting in ["CapabilityBoundingSet", "AmbientCapabilities"] {
            let assignments: Vec<&str> = unit
                .lines()
                .chain(drop_in.lines())
                .filter_map(|l| l.strip_prefix(setting)?.strip_prefix('='))
                .collect();
            let merged = systemd_merge(&assignments);
            let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            assert_eq!(merged, want, "{setting} after the drop-in:\n{drop_in}");
        }
    }
    // Without the reset line the unit's CAP_SYS_ADMIN would survive.
    assert!(systemd_merge(&["CAP_SYS_ADMIN", "CAP_CHOWN"]).contains("CAP_SYS_ADMIN"));
}

#[test]
fn json_is_the_profile() {
    for names in [EMPTY, TWO] {
        let p = profile(names);
        let out = render(&p, Format::Json).unwrap();
        assert_eq!(out, p.to_json());
        assert_eq!(Profile::from_json("out.json", out.as_bytes()).unwrap(), p);
    }
}

#[test]
fn header_cannot_inject_configuration() {
    let mut p = profile(TWO);
    p.subject.name = Some("evil\ncap_add: [SYS_ADMIN]\r\n".into());
    let out = render(&p, Format::Compose).unwrap();
    assert_eq!(
        strings(&yaml_value(&out)["cap_add"]),
        ["CHOWN", "NET_RAW"],
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with('#')).count(),
        1,
        "{out}"
    );

    p.subject.name = None;
    p.subject.command = Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]);
    let out = render(&p, Format::Systemd).unwrap();
    assert!(out.starts_with("# capprof: 2 capabilities observed in use by nginx -g daemon off;\n"));

    p.subject.command = Some(vec!["x".repeat(500)]);
    let out = render(&p, Format::K8s).unwrap();
    assert!(out.lines().next().unwrap().chars().count() < 200, "{out}");
    yaml_value(&out);
}

#[test]
fn runtime_default_counts() {
    assert_eq!(Runtime::Docker.default_caps().len(), 14);
    assert_eq!(Runtime::Containerd.default_caps().len(), 14);
    assert_eq!(Runtime::Crio.default_caps().len(), 9);
    assert_eq!(Runtime::Podman.default_caps().len(), 11);
    assert_eq!(Runtime::Runc.default_caps().len(), 3);
    assert_eq!(
        Runtime::Docker.default_caps(),
        Runtime::Containerd.default_caps()
    );
    assert_eq!(
        Runtime::Runc.default_caps(),
        caps(&["KILL", "NET_BIND_SERVICE", "AUDIT_WRITE"]), // by number
    );
    // No name in the tables is misspelled or repeated.
    for names in [
        DOCKER_DEFAULTS,
        CRIO_DEFAULTS,
        PODMAN_DEFAULTS,
        RUNC_DEFAULTS,
    ] {
        let mut parsed = caps(names);
        parsed.sort();
        parsed.dedup();
        assert_eq!(parsed.len(), names.len());
    }
    // Each smaller default is a subset of Docker's.
    let docker = Runtime::Docker.default_caps();
    for runtime in [Runtime::Crio, Runtime::Podman, Runtime::Runc] {
        for cap in runtime.default_caps() {
            assert!(docker.contains(&cap), "{runtime}: {cap}");
        }
    }
}

#[test]
fn refused_capabilities_are_not_called_unused() {
    let mut p = profile(&["CAP_CHOWN"]);
    p.denied = caps(&["NET_RAW", "SYS_ADMIN"]);
    let c = compare(&p, Runtime::Docker);
    assert_eq!(c.refused, caps(&["NET_RAW", "SYS_ADMIN"]));
    // NET_RAW is a default the recording ran without: still dropped.
    assert!(c.drop.contains(&cap("NET_RAW")));
    assert!(!c.add.contains(&cap("SYS_ADMIN")));
    assert_eq!(
        c.summary(),
        "docker grants 14 by default: drop 13, keep 1, add 0; 2 refused where it was recorded"
    );
}

#[test]
fn compare_splits_keep_drop_add() {
    let p = profile(&["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]);
    let c = compare(&p, Runtime::Docker);
    assert_eq!(c.keep, caps(&["CHOWN", "NET_RAW"]));
    assert_eq!(c.add, caps(&["SYS_ADMIN"]));
    assert_eq!(c.drop.len(), 12);
    assert!(!c.drop.contains(&cap("CHOWN")));
    assert!(c.drop.contains(&cap("MKNOD")));
    assert_eq!(
        c.summary(),
        "docker grants 14 by default: drop 12, keep 2, add 1"
    );

    let c = compare(&p, Runtime::Crio);
    assert_eq!(c.keep, caps(&["CHOWN"]));
    assert_eq!(c.add, caps(&["NET_RAW", "SYS_ADMIN"]));
    assert_eq!(c.drop.len(), 8);
    assert_eq!(
        c.summary(),
        "crio grants 9 by default: drop 8, keep 1, add 2"
    );

    let c = compare(&profile(EMPTY), Runtime::Runc);
    assert!(c.keep.is_empty() && c.add.is_empty());
    assert_eq!(c.drop, c.defaults);

    let json = serde_json::to_value(compare(&p, Runtime::Podman)).unwrap();
    assert_eq!(json["runtime"], "podman");
    assert_eq!(
        json["add"],
        serde_json::json!(["CAP_NET_RAW", "CAP_SYS_ADMIN"])
    );
    assert_eq!(json["keep"], serde_json::json!(["CAP_CHOWN"]));
    assert_eq!(json["defaults"].as_array().unwrap().len(), 11);
}

fn conditional(capability: &str, operation: &str, port: Option<u16>) -> Conditional {
    let sysctl = if port.is_some() {
        Sysctl::UnprivilegedPortStart
    } else {
        Sysctl::PingGroupRange
    };
    Conditional {
        capability: cap(capability),
        operation: operation.into(),
        sysctl,
        value: if port.is_some() { "0" } else { "0 2147483647" }.into(),
        port,
        evidence: vec![OperationEvidence {
            comm: "srv".into(),
            exe: None,
            pid: 1,
            uid: 0,
            gid: Some(0),
        }],
        without_capability: false,
    }
}

/// A profile that needs CHOWN, and bound port 80 with no check.
fn bound_port_80() -> Profile {
    let mut p = profile(&["CAP_CHOWN"]);
    p.add_syscall_findings(
        &[conditional(
            "NET_BIND_SERVICE",
            "bind tcp port 80",
            Some(80),
        )],
        &[],
    );
    assert_eq!(p.allowlist, caps(&["CHOWN"]), "not on the allowlist");
    p
}

#[test]
fn conditional_capabilities_follow_the_target() {
    let p = bound_port_80();
    // Docker lowers the sysctl: nothing to add.
    assert_eq!(
        render(&p, Format::Docker).unwrap(),
        "--cap-drop=ALL --cap-add=CHOWN\n"
    );
    let out = render(&p, Format::Compose).unwrap();
    assert_eq!(strings(&yaml_value(&out)["cap_add"]), ["CHOWN"], "{out}");
    assert!(
        out.contains("# capprof: CAP_NET_BIND_SERVICE left out: bind tcp port 80"),
        "{out}"
    );
    // Podman keeps 1024.
    assert_eq!(
        render(&p, Format::Podman).unwrap(),
        "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_BIND_SERVICE\n"
    );
    // Kubernetes, OCI and systemd keep the kernel's default: added,
    // with why.
    let out = render(&p, Format::K8s).unwrap();
    let doc = yaml_value(&out);
    assert_eq!(
        strings(&doc["securityContext"]["capabilities"]["add"]),
        ["CHOWN", "NET_BIND_SERVICE"],
        "{out}"
    );
    let why = out
        .lines()
        .find(|l| l.starts_with("# capprof: CAP_NET_BIND_SERVICE added"))
        .unwrap_or_else(|| panic!("no comment on the addition:\n{out}"));
    assert!(
        why.contains("bind tcp port 80")
            && why.contains("net.ipv4.ip_unprivileged_port_start=0 there")
            && why.contains("net.ipv4.ip_unprivileged_port_start=1024"),
        "{why}"
    );
    let out = render(&p, Format::Oci).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        doc["process"]["capabilities"]["bounding"],
        serde_json::json!(["CAP_CHOWN", "CAP_NET_BIND_SERVICE"])
    );
    assert!(
        doc["annotations"]["org.capprof.conditional.NET_BIND_SERVICE"]
            .as_str()
            .unwrap()
            .contains("bind tcp port 80"),
        "{out}"
    );
    let out = render(&p, Format::Systemd).unwrap();
    assert!(
        out.contains("CapabilityBoundingSet=CAP_CHOWN CAP_NET_BIND_SERVICE\n"),
        "{out}"
    );
    assert!(
        out.contains("# capprof: CAP_NET_BIND_SERVICE added"),
        "{out}"
    );
    // The user knows better, either way.
    let relaxed = SysctlsChoice::Relaxed.sysctls();
    let out = render_under(&p, Format::K8s, relaxed).unwrap();
    assert_eq!(
        strings(&yaml_value(&out)["securityContext"]["capabilities"]["add"]),
        ["CHOWN"]
    );
    assert_eq!(
        render_under(&p, Format::Docker, SysctlsChoice::Kernel.sysctls()).unwrap(),
        "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_BIND_SERVICE\n"
    );
    // JSON is the profile, whatever the target.
    assert_eq!(render(&p, Format::Json).unwrap(), p.to_json());
}

#[test]
fn notes_cannot_inject_configuration() {
    let mut p = profile(TWO);
    let mut c = conditional(
        "NET_BIND_SERVICE",
        "bind tcp port 80\ncap_add: [SYS_ADMIN]",
        Some(80),
    );
    c.evidence[0].comm = "x\ny".into();
    p.add_syscall_findings(&[c], &[]);
    let out = render(&p, Format::Compose).unwrap();
    assert_eq!(
        strings(&yaml_value(&out)["cap_add"]),
        ["CHOWN", "NET_RAW"],
        "{out}"
    );
    let out = render(&p, Format::K8s).unwrap();
    assert_eq!(
        strings(&yaml_value(&out)["securityContext"]["capabilities"]["add"]),
        ["CHOWN", "NET_BIND_SERVICE", "NET_RAW"],
        "{out}"
    );
}

#[test]
fn against_shows_conditional_actions() {
    let mut p = bound_port_80();
    p.add_syscall_findings(&[conditional("NET_RAW", "icmp datagram socket", None)], &[]);
    // Docker relaxes both: NET_BIND_SERVICE and NET_RAW are dropped.
    let c = compare(&p, Runtime::Docker);
    assert!(c.keep_conditional.is_empty() && c.add_conditional.is_empty());
    assert!(c.drop.contains(&cap("NET_BIND_SERVICE")));
    assert!(!c.summary().contains("conditional"), "{}", c.summary());
    // CRI-O grants NET_BIND_SERVICE but not NET_RAW.
    let c = compare(&p, Runtime::Crio);
    assert_eq!(c.keep_conditional, caps(&["NET_BIND_SERVICE"]));
    assert_eq!(c.add_conditional, caps(&["NET_RAW"]));
    assert!(!c.drop.contains(&cap("NET_BIND_SERVICE")));
    assert_eq!(
        c.summary(),
        "crio grants 9 by default: drop 7, keep 1, add 0; conditional: keep 1, add 1"
    );
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["add_conditional"], serde_json::json!(["CAP_NET_RAW"]));
    assert_eq!(
        json["keep_conditional"],
        serde_json::json!(["CAP_NET_BIND_SERVICE"])
    );
    assert_eq!(json["sysctls"]["ip_unprivileged_port_start"], 1024);
    // Told that the runtime relaxes them, nothing is conditional.
    let c = compare_under(&p, Runtime::Crio, SysctlsChoice::Relaxed.sysctls());
    assert!(c.keep_conditional.is_empty() && c.add_conditional.is_empty());
}

#[test]
fn value_names() {
    use clap::ValueEnum as _;
    assert_eq!(Format::K8s.to_string(), "k8s");
    assert_eq!(Runtime::Crio.to_string(), "crio");
    assert_eq!(Runtime::from_str("cri-o", true).unwrap(), Runtime::Crio);
    assert_eq!(Format::from_str("oci", true).unwrap(), Format::Oci);
    assert!(Format::from_str("helm", true).is_err());
}

/// pdns in the corpus: it runs as its own user, binds port 53, and holds
/// no capability. Granting NET_BIND_SERVICE cannot reach it: where the
/// sysctl keeps the kernel's default, only relaxing it lets the bind
/// through, and the container exports say so in their own fields.
#[test]
fn a_caller_without_the_capability_gets_the_sysctl_instead() {
    let mut p = profile(&["CAP_SETUID"]);
    let mut c = conditional("NET_BIND_SERVICE", "bind udp port 53", Some(53));
    c.evidence[0].uid = 106;
    c.without_capability = true;
    let mut higher = conditional("NET_BIND_SERVICE", "bind tcp port 853", Some(853));
    higher.without_capability = true;
    p.add_syscall_findings(&[c, higher], &[]);

    let k8s = yaml_value(&render(&p, Format::K8s).unwrap());
    assert_eq!(
        strings(&k8s["securityContext"]["capabilities"]["add"]),
        ["SETUID"],
        "no capability reaches the caller"
    );
    let sysctls = &k8s["podSecurityContext"]["sysctls"];
    assert_eq!(
        sysctls[0]["name"].as_str(),
        Some("net.ipv4.ip_unprivileged_port_start")
    );
    assert_eq!(
        sysctls[0]["value"].as_str(),
        Some("53"),
        "the lowest port bound"
    );
    assert_eq!(sysctls.as_sequence().map(|s| s.len()), Some(1));

    let oci: serde_json::Value = serde_json::from_str(&render(&p, Format::Oci).unwrap()).unwrap();
    assert_eq!(
        oci["linux"]["sysctl"]["net.ipv4.ip_unprivileged_port_start"],
        "53"
    );
    assert!(
        !oci["process"]["capabilities"]["bounding"]
            .to_string()
            .contains("NET_BIND_SERVICE")
    );

    // `export --against` says the same: no capability to add, one sysctl
    // to set, and only where the runtime leaves the kernel's default.
    let under_kernel = compare_under(&p, Runtime::Crio, SysctlsChoice::Kernel.sysctls());
    assert!(under_kernel.add_conditional.is_empty(), "{under_kernel:?}");
    assert_eq!(under_kernel.set_sysctls.len(), 1, "{under_kernel:?}");
    assert_eq!(under_kernel.set_sysctls[0].value.to_string(), "53");
    assert!(under_kernel.summary().ends_with("; set 1 sysctl(s)"));
    let json = serde_json::to_value(&under_kernel).unwrap();
    assert_eq!(
        json["set_sysctls"][0]["sysctl"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    assert!(
        compare(&p, Runtime::Docker).set_sysctls.is_empty(),
        "docker relaxes it already"
    );

    // Docker relaxes it already; systemd's AmbientCapabilities= reaches a
    // non-root process, so the capability is what it needs.
    let docker = render(&p, Format::Docker).unwrap();
    assert!(
        !docker.contains("--sysctl") && !docker.contains("NET_BIND"),
        "{docker}"
    );
    let kernel = render_under(&p, Format::Docker, SysctlsChoice::Kernel.sysctls()).unwrap();
    assert_eq!(
        kernel,
        "--cap-drop=ALL --cap-add=SETUID --sysctl net.ipv4.ip_unprivileged_port_start=53\n"
    );
    let systemd = render(&p, Format::Systemd).unwrap();
    assert!(
        systemd.contains("AmbientCapabilities=CAP_SETUID CAP_NET_BIND_SERVICE"),
        "{systemd}"
    );
    assert!(
        !systemd.contains("ip_unprivileged_port_start=53"),
        "{systemd}"
    );

    // A caller that held it is still served by the capability.
    let mut held = profile(&["CAP_SETUID"]);
    held.add_syscall_findings(
        &[conditional(
            "NET_BIND_SERVICE",
            "bind tcp port 80",
            Some(80),
        )],
        &[],
    );
    let k8s = yaml_value(&render(&held, Format::K8s).unwrap());
    assert!(k8s.get("podSecurityContext").is_none());
    assert_eq!(
        strings(&k8s["securityContext"]["capabilities"]["add"]),
        ["SETUID", "NET_BIND_SERVICE"]
    );
}
