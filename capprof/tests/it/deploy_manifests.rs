//! The deployment files in deploy/ against what the daemon expects: they
//! parse, they grant the daemon exactly the capabilities it needs (the same
//! set in both), and their settings pass the daemon's own validation.
//! Host-only: nothing here touches the kernel.

use std::{collections::BTreeSet, path::PathBuf};

use capprof::{
    capability::Cap,
    daemon::{config::DaemonConfig, metrics},
};
use serde::Deserialize as _;
use serde_json::Value;

/// What the daemon needs until it drops everything after attaching.
const NEEDED: &[&str] = &[
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_ADMIN",
    "CAP_SYS_RESOURCE",
    "CAP_SYSLOG",
    "CAP_SYS_PTRACE",
    "CAP_DAC_READ_SEARCH",
];

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn needed() -> BTreeSet<Cap> {
    NEEDED.iter().map(|c| c.parse().unwrap()).collect()
}

fn yaml_documents() -> Vec<Value> {
    let text = deploy("daemonset.yaml");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

#[test]
fn daemonset_grants_exactly_what_the_daemon_needs() {
    let docs = yaml_documents();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    for doc in &docs[1..] {
        assert_eq!(doc["metadata"]["namespace"], "capprof");
    }

    let ds = &docs[2];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(
        ds["spec"]["selector"]["matchLabels"],
        ds["spec"]["template"]["metadata"]["labels"]
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    // The image `cargo xtask image` builds and tests/it/image.rs runs.
    assert_eq!(c["image"], format!("capprof:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(
        c["command"],
        serde_json::json!(["/usr/local/bin/capprof", "daemon"])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let added: BTreeSet<Cap> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("CAP_{}", c.as_str().unwrap()).parse().unwrap())
        .collect();
    assert_eq!(added, needed());
    assert_eq!(
        sc["capabilities"]["add"].as_array().unwrap().len(),
        NEEDED.len()
    );

    // Every mount the daemon relies on, read-only where it only reads.
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no mount at {path}"))
    };
    for ro in [
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        "/host/run",
        "/etc/capprof",
    ] {
        assert_eq!(mount(ro)["readOnly"], true, "{ro}");
    }
    for rw in ["/sys/fs/bpf", "/run/capprof", "/var/lib/capprof"] {
        assert_ne!(mount(rw)["readOnly"], true, "{rw}");
    }
    assert_eq!(mount("/sys/fs/bpf")["mountPropagation"], "HostToContainer");
    let volumes = pod["volumes"].as_array().unwrap();
    for m in mounts {
        assert!(
            volumes.iter().any(|v| v["name"] == m["name"]),
            "no volume for {m}"
        );
    }

    // Settings: known variables, values the daemon accepts.
    let env = c["env"].as_array().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap()
    };
    for e in env {
        // NODE_NAME: the node the daemon names its CapabilityProfile parts
        // after, from the downward API.
        let node_name =
            e["name"] == "NODE_NAME" && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName";
        assert!(
            node_name || e["name"].as_str().unwrap().starts_with("CAPPROF_"),
            "{e}"
        );
    }
    // The fleet writer: on, with the ServiceAccount deploy/rbac.yaml binds.
    assert_eq!(var("CAPPROF_KUBE"), "true");
    assert_eq!(pod["serviceAccountName"], "capprof");
    assert!(
        deploy("rbac.yaml")
            .contains("kind: ServiceAccount\nmetadata:\n  name: capprof\n  namespace: capprof")
    );
    let addr = metrics::parse_addr(var("CAPPROF_METRICS")).unwrap();
    assert_eq!(c["ports"][0]["containerPort"], u64::from(addr.port()));
    assert_eq!(
        var("CAPPROF_SOCKET"),
        DaemonConfig::default().socket.to_str().unwrap()
    );
    assert_eq!(
        var("CAPPROF_STATE_DIR"),
        DaemonConfig::default().state_dir.to_str().unwrap()
    );
    assert_eq!(var("CAPPROF_CONFIG"), "/etc/capprof/capprof.toml");

    let toml = docs[1]["data"]["capprof.toml"].as_str().unwrap();
    let config: DaemonConfig = toml::from_str(toml).unwrap();
    config.validate().unwrap();
    assert!(config.cgroup_roots.iter().any(|r| r == "kubepods.slice"));
}

#[test]
fn systemd_unit_bounds_the_daemon_to_what_it_needs() {
    let unit = deploy("capprof.service");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("not a directive: {l}"))
        })
        .collect();
    let get = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(get("ExecStart"), ["/usr/local/bin/capprof daemon"]);
    assert_eq!(get("Restart"), ["on-failure"]);
    assert_eq!(get("StateDirectory"), ["capprof"]);
    assert_eq!(get("RuntimeDirectory"), ["capprof"]);
    let bounding = get("CapabilityBoundingSet");
    assert_eq!(bounding.len(), 1);
    let bounding: BTreeSet<Cap> = bounding[0]
        .split_whitespace()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(bounding, needed());
    // These would take away what eBPF loading needs.
    for breaking in [
        "ProtectKernelLogs",
        "ProtectKernelTunables",
        "SystemCallFilter",
        "User",
    ] {
        assert!(get(breaking).is_empty(), "{breaking}= breaks the daemon");
    }
    assert!(get("Environment").contains(&"CAPPROF_SOCKET=/run/capprof/capprof.sock"));

    // Every directive says why it is there.
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for (i, line) in lines.iter().enumerate() {
        let directive = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
        if directive {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "no comment above {line:?}"
            );
        }
    }
}
