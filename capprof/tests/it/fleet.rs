//! The fleet end to end, on a real kube-apiserver and two nodes: each node
//! is a `capprof daemon --kube` with its own bpffs, state directory, node
//! name and private containerd (`CAPPROF_TEST_CRI`, `CAPPROF_TEST_CRI_B`),
//! writing with the ServiceAccount token deploy/rbac.yaml binds.
//!
//! One Deployment runs a pod on each node. The test checks that the
//! cluster ends with one CapabilityProfile for it (seen in 2 pods on 2
//! nodes, the union allowlist, an ownerReference to the Deployment), that
//! `capprof profile --kube` reads it back as a profile, that its k8s-patch
//! export is accepted by `kubectl apply --server-side`, that a node gone
//! quiet expires, and that deleting the Deployment deletes the profile
//! (kube-controller-manager's garbage collector).

use std::time::Duration;

use serde_json::Value;

use crate::common::{
    self, Scratch,
    cri::{PodSpec, Pods, endpoint, endpoint_b, uid},
    daemon::TestDaemon,
    kube::{As, get_json, install, kubeconfig, kubectl, kubectl_ok},
    output_text, require_root, wait_until,
};

const NS: &str = "fleet-shop";

/// A measurement for BENCHMARKS.md: on stderr, and appended to
/// `target/tmp/fleet-measurements.txt`, which a passing run keeps (libtest
/// hides a passing test's stderr).
fn measured(line: String) {
    use std::io::Write as _;
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-measurements.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}
const OBJECT: &str = "deployment.web.app";

fn deployment() -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {NS}\n\
         spec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    \
         metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: app\n        \
         image: capprof-busybox:test\n"
    )
}

/// A node: `capprof daemon --kube` named `name`, naming pods through the
/// containerd at `cri`, writing with the ServiceAccount's token, with
/// `settings` (interval, stale time, rate, metrics) on top.
fn node(name: &str, cri: &str, settings: &[&str]) -> TestDaemon {
    let kc = kubeconfig(As::Node);
    let mut args = vec![
        "--cri",
        cri,
        "--kube",
        "--kube-node",
        name,
        "--kubeconfig",
        kc.to_str().unwrap(),
    ];
    args.extend_from_slice(settings);
    TestDaemon::start(Scratch::new(&format!("fleet-{name}")), &args)
}

/// The two nodes of the Deployment test: parts written every 2 s, stale
/// after 20 s.
const TWO_NODE_SETTINGS: &[&str] = &[
    "--kube-interval",
    "2s",
    "--kube-stale-after",
    "20s",
    "--kube-max-rate",
    "50",
];

fn web_pod(name: &'static str, n: u32, script: &'static str) -> PodSpec {
    PodSpec {
        namespace: NS,
        name,
        uid: uid(n),
        labels: vec![("app", "web"), ("pod-template-hash", "7d9f8c6b5")],
        container: "app",
        script,
    }
}

fn object() -> Option<Value> {
    let out = kubectl(
        As::Admin,
        &["get", "capabilityprofile", "-n", NS, OBJECT, "-o", "json"],
        None,
    );
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn coverage(obj: &Value, cap: &str) -> (u64, u64) {
    let c = obj["status"]["coverage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["capability"] == cap)
        .unwrap_or_else(|| panic!("no coverage of {cap}: {obj:#}"));
    (c["pods"].as_u64().unwrap(), c["nodes"].as_u64().unwrap())
}

#[test]
#[ignore = "needs root, two private containerds and the kube-apiserver that cargo xtask test starts"]
fn a_deployment_on_two_nodes_is_one_profile_in_the_cluster() {
    require_root();
    install(NS);
    kubectl_ok(As::Admin, &["apply", "-f", "-"], Some(&deployment()));
    let deploy_uid =
        get_json(As::Admin, &["get", "deployment", "-n", NS, "web"])["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_owned();

    let node_a = node("node-a", &endpoint(), TWO_NODE_SETTINGS);
    let mut node_b = node("node-b", &endpoint_b(), TWO_NODE_SETTINGS);
    // The same Deployment's pods: chown (CHOWN) on both nodes, and mknod
    // (MKNOD) on node-b only.
    let _pods_a = Pods::run_on(
        &endpoint(),
        &[web_pod(
            "web-7d9f8c6b5-aaaaa",
            201,
            "touch /tmp/f && chown 1000 /tmp/f && sleep 3600",
        )],
    );
    let pods_b = Pods::run_on(
        &endpoint_b(),
        &[web_pod(
            "web-7d9f8c6b5-bbbbb",
            202,
            "touch /tmp/f && chown 1000 /tmp/f && mknod /tmp/null c 1 3 && sleep 3600",
        )],
    );

    let mut last = Value::Null;
    wait_until(
        "one CapabilityProfile with both nodes' parts",
        Duration::from_secs(90),
        || {
            let Some(obj) = object() else { return false };
            last = obj.clone();
            let s = &obj["status"];
            s["nodesSeen"] == 2
                && s["podsSeen"] == 2
                && strings(&s["allowlist"]).contains(&"MKNOD".to_owned())
        },
    );
    let obj = last;
    let allowlist = strings(&obj["status"]["allowlist"]);
    assert!(allowlist.contains(&"CHOWN".to_owned()), "{obj:#}");
    assert_eq!(coverage(&obj, "CHOWN"), (2, 2), "{obj:#}");
    assert_eq!(coverage(&obj, "MKNOD"), (1, 1), "{obj:#}");
    let owner = &obj["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment", "{obj:#}");
    assert_eq!(owner["uid"], deploy_uid.as_str(), "{obj:#}");
    // Each part was written by its own node's field manager.
    let managed = get_json(
        As::Admin,
        &[
            "get",
            "capabilityprofile",
            "-n",
            NS,
            OBJECT,
            "--show-managed-fields",
        ],
    );
    let managers: Vec<String> = managed["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap().to_owned())
        .collect();
    for node in ["node-a", "node-b"] {
        assert!(
            managers.contains(&format!("capprof-node-{node}")),
            "{managers:?}"
        );
    }

    // The cluster's view, as a profile every command takes.
    let dir = Scratch::new("fleet-read");
    let admin = kubeconfig(As::Admin);
    let key = format!("{NS}/Deployment/web/app");
    let out = common::capprof(&[
        "profile",
        "--kube",
        "--workload",
        &key,
        "--kubeconfig",
        admin.to_str().unwrap(),
        "-f",
        "json",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let profile: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        strings(&profile["allowlist"]).len(),
        allowlist.len(),
        "{profile:#}"
    );
    assert_eq!(profile["coverage"]["profiles"], 2);
    let shown = common::capprof(&[
        "profile",
        "--kube",
        "--workload",
        &key,
        "--kubeconfig",
        admin.to_str().unwrap(),
    ]);
    let table = output_text(&shown);
    assert!(shown.status.success(), "{table}");
    assert!(
        table.contains("(2 pods on 2 nodes: node-a, node-b)"),
        "{table}"
    );
    let file = dir.path("fleet.json");
    std::fs::write(&file, &out.stdout).unwrap();
    let out = common::capprof(&["export", "--format", "k8s-patch", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let patch = String::from_utf8(out.stdout).unwrap();
    // Client-side validation would ask for the whole Deployment (its
    // selector); a server-side apply of some of its fields is the point.
    kubectl_ok(
        As::Admin,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "--field-manager=capprof",
            "-f",
            "-",
        ],
        Some(&patch),
    );
    let patched = get_json(As::Admin, &["get", "deployment", "-n", NS, "web"]);
    let caps =
        &patched["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"];
    assert_eq!(strings(&caps["drop"]), ["ALL"], "{patched:#}");
    let mut added = strings(&caps["add"]);
    added.sort();
    let mut want = allowlist.clone();
    want.sort();
    assert_eq!(added, want, "{patch}");
    let out = common::capprof(&[
        "report",
        "--kube",
        "-n",
        NS,
        "--kubeconfig",
        admin.to_str().unwrap(),
        "-o",
        dir.path("report.html").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let html = std::fs::read_to_string(dir.path("report.html")).unwrap();
    assert!(html.contains("MKNOD") && html.contains("web"), "report");

    // node-b goes away for good: its part expires, and node-a's next
    // write drops it.
    node_b.stop();
    drop(pods_b);
    wait_until("node-b's part to expire", Duration::from_secs(90), || {
        object().is_some_and(|o| {
            o["status"]["nodesSeen"] == 1
                && o["status"]["nodes"]
                    .as_array()
                    .is_some_and(|n| n.len() == 1)
        })
    });
    let obj = object().unwrap();
    assert_eq!(obj["status"]["nodes"][0]["node"], "node-a");
    assert!(
        !strings(&obj["status"]["allowlist"]).contains(&"MKNOD".to_owned()),
        "{obj:#}"
    );

    // Deleting the workload deletes its profile (garbage collector).
    kubectl_ok(As::Admin, &["delete", "deployment", "-n", NS, "web"], None);
    wait_until(
        "the profile to go with its Deployment",
        Duration::from_secs(60),
        || object().is_none(),
    );
    drop(node_a);
}

#[test]
#[ignore = "needs the kube-apiserver that cargo xtask test starts"]
fn reading_the_cluster_says_what_is_wrong_in_one_line() {
    install("fleet-errors");
    let admin = kubeconfig(As::Admin);
    let ask = |kc: &std::path::Path, key: &str| {
        common::capprof(&[
            "profile",
            "--kube",
            "--workload",
            key,
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
    };
    // No such profile.
    let out = ask(&admin, "fleet-errors/Deployment/none/app");
    common::assert_one_line_error(
        &out,
        2,
        "no CapabilityProfile for fleet-errors/Deployment/none/app",
    );
    // Nothing listens there.
    let dir = Scratch::new("fleet-errors");
    let text = std::fs::read_to_string(&admin).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_owned();
    let dead = dir.path("dead.kubeconfig");
    std::fs::write(&dead, text.replace(&server, "https://127.0.0.1:1")).unwrap();
    let out = ask(&dead, "fleet-errors/Deployment/web/app");
    common::assert_one_line_error(&out, 2, "no Kubernetes API server reachable");
    // Not a kubeconfig.
    let bogus = dir.path("bogus.kubeconfig");
    std::fs::write(&bogus, "{{{ not yaml").unwrap();
    let out = ask(&bogus, "fleet-errors/Deployment/web/app");
    common::assert_one_line_error(&out, 2, "kubeconfig");
    // An object edited by hand into a shape the schema admits but no node
    // could write: a capability seen in more pods than the part has.
    kubectl_ok(
        As::Admin,
        &["apply", "-f", "-"],
        Some(
            "apiVersion: capprof.dev/v1alpha1\nkind: CapabilityProfile\nmetadata:\n  \
             name: deployment.edited.app\n  namespace: fleet-errors\nspec:\n  \
             workload: {kind: Deployment, name: edited}\n  container: app\n",
        ),
    );
    let part = "apiVersion: capprof.dev/v1alpha1\nkind: CapabilityProfile\nmetadata:\n  \
                name: deployment.edited.app\n  namespace: fleet-errors\nstatus:\n  nodes:\n  \
                - node: node-x\n    firstObserved: \"2026-12-06T14:00:00Z\"\n    \
                lastObserved: \"2099-12-06T15:00:00Z\"\n    pods: 1\n    complete: true\n    \
                backend: tp_btf\n    classification: call-site\n    capabilities:\n    \
                - {capability: CHOWN, granted: 1, denied: 0, byClass: {required: 1}, pods: 5}\n";
    kubectl_ok(
        As::Admin,
        &[
            "apply",
            "--server-side",
            "--validate=false",
            "--subresource=status",
            "--field-manager=hand",
            "-f",
            "-",
        ],
        Some(part),
    );
    let out = ask(&admin, "fleet-errors/Deployment/edited/app");
    common::assert_one_line_error(&out, 2, "seen in 5 of 1 pods");
}

/// Many writers at once stand in for many nodes: none loses another's
/// part, the last summary counts them all, and the cost of a write is
/// measured (BENCHMARKS.md scales it to 1,000 nodes).
#[test]
#[ignore = "needs the kube-apiserver that cargo xtask test starts"]
fn concurrent_writers_never_lose_a_part() {
    use capprof::{
        daemon::api::testing::sample_profile,
        fleet::{
            Fleet,
            writer::{Stats, Writer, WriterConfig},
        },
    };
    const WRITERS: usize = 40;
    const NS: &str = "fleet-many";
    install(NS);
    let key: capprof::cri::workload::WorkloadKey =
        format!("{NS}/DaemonSet/agent/agent").parse().unwrap();
    let profile = sample_profile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node_kc = kubeconfig(As::Node);
    let (elapsed, stats) = runtime.block_on(async {
        let fleet = Fleet::connect(Some(&node_kc)).await.unwrap();
        let stats = std::sync::Arc::new(Stats::default());
        let started = std::time::Instant::now();
        let mut tasks = vec![];
        for i in 0..WRITERS {
            let mut writer = Writer::new(
                WriterConfig {
                    node: format!("node-{i:03}"),
                    kubeconfig: None,
                    interval: Duration::from_secs(30),
                    stale_after: Duration::from_secs(7 * 24 * 3600),
                    max_rate: 1000.0,
                },
                stats.clone(),
            );
            let (fleet, key, profile) = (fleet.clone(), key.clone(), profile.clone());
            tasks.push(tokio::spawn(async move {
                writer.round(&fleet, &[(key, profile)]).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        (started.elapsed(), stats)
    });
    let obj = get_json(
        As::Admin,
        &[
            "get",
            "capabilityprofile",
            "-n",
            NS,
            "daemonset.agent.agent",
        ],
    );
    let nodes = obj["status"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), WRITERS, "every writer's part is kept");
    assert_eq!(
        obj["status"]["nodesSeen"], WRITERS as u64,
        "the last summary counts every part"
    );
    // What etcd stores per part, managedFields included.
    let stored = kubectl_ok(
        As::Admin,
        &[
            "get",
            "capabilityprofile",
            "-n",
            NS,
            "daemonset.agent.agent",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    );
    measured(format!(
        "[fleet] one object with {WRITERS} parts: {} bytes stored, {} per part",
        stored.len(),
        stored.len() / WRITERS
    ));
    let writes = stats.writes.load(std::sync::atomic::Ordering::Relaxed);
    let conflicts = stats.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    measured(format!(
        "[fleet] {WRITERS} concurrent writers: {writes} writes ({conflicts} summary conflicts) in {:.2} s: {:.1} ms per write, {:.0} writes/s",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / writes as f64,
        writes as f64 / elapsed.as_secs_f64()
    ));
}

/// The test cluster's kube-apiserver, stopped for `outage` and then
/// started again with the arguments xtask started it with
/// (`apiserver.cmd`); its new pid goes to `apiserver.pid`, where xtask finds
/// it to stop it at the end.
fn restart_apiserver_after(outage: Duration, during: impl FnOnce()) {
    let dir = common::kube::cluster_dir();
    let pid: i32 = std::fs::read_to_string(dir.join("apiserver.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let cmd = std::fs::read_to_string(dir.join("apiserver.cmd")).unwrap();
    let argv: Vec<&str> = cmd.lines().collect();
    let stopped = std::time::Instant::now();
    // Gone, or a zombie its parent (xtask) has not reaped yet.
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
        })
    };
    // SAFETY: signals to the API server's pid, which xtask wrote. On
    // SIGTERM it drains its watches for up to a minute; after 5 s the
    // outage is made certain with SIGKILL.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gone() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if !gone() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_until("the API server to stop", Duration::from_secs(30), gone);
    // Whatever `during` finds, the server comes back for the tests after
    // this one.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(during));
    if let Some(left) = outage.checked_sub(stopped.elapsed()) {
        std::thread::sleep(left);
    }
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(dir.join("kube-apiserver.log"))
        .unwrap();
    #[expect(
        clippy::zombie_processes,
        reason = "the API server outlives this test; xtask stops it by the pid written below"
    )]
    let child = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    std::fs::write(dir.join("apiserver.pid"), child.id().to_string()).unwrap();
    wait_until(
        "the API server to be ready again",
        Duration::from_secs(90),
        || {
            kubectl(As::Admin, &["get", "--raw", "/readyz"], None)
                .status
                .success()
        },
    );
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

#[test]
#[ignore = "needs root, a private containerd and the kube-apiserver that cargo xtask test starts"]
fn thirty_seconds_without_the_api_server_lose_nothing() {
    require_root();
    const NS: &str = "fleet-outage";
    install(NS);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let daemon = node(
        "node-o",
        &endpoint(),
        &["--kube-interval", "1s", "--metrics", &metrics],
    );
    let get = || {
        let out = kubectl(
            As::Admin,
            &[
                "get",
                "capabilityprofile",
                "-n",
                NS,
                "statefulset.db.app",
                "-o",
                "json",
            ],
            None,
        );
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    let db = |n: u32, name: &'static str, script: &'static str| PodSpec {
        namespace: NS,
        name,
        uid: uid(n),
        labels: vec![
            ("controller-revision-hash", "db-5c8f7"),
            ("statefulset.kubernetes.io/pod-name", name),
        ],
        container: "app",
        script,
    };
    let _first = Pods::run(&[db(
        301,
        "db-0",
        "touch /tmp/f && chown 1000 /tmp/f && sleep 3600",
    )]);
    wait_until("the first part", Duration::from_secs(60), || {
        get().is_some_and(|o| strings(&o["status"]["allowlist"]).contains(&"CHOWN".to_owned()))
    });

    // The API server stops for 30 s; the node keeps profiling: a second
    // replica starts and makes a check the first did not.
    let mut second = None;
    restart_apiserver_after(Duration::from_secs(30), || {
        second = Some(Pods::run(&[db(
            302,
            "db-1",
            "mknod /tmp/null c 1 3 && sleep 3600",
        )]));
        std::thread::sleep(Duration::from_secs(10));
        let lines = common::drain_lines(&daemon.lines);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("kube:") && l.contains("pending")),
            "the daemon says its writes are pending: {lines:#?}"
        );
    });

    // Back: the node catches up, nothing lost.
    wait_until("the node to catch up", Duration::from_secs(120), || {
        get().is_some_and(|o| {
            strings(&o["status"]["allowlist"]).contains(&"MKNOD".to_owned())
                && o["status"]["podsSeen"] == 2
        })
    });
    let after = get().unwrap();
    assert!(
        strings(&after["status"]["allowlist"]).contains(&"CHOWN".to_owned()),
        "{after:#}"
    );
    // The metrics say what happened: failures during the outage, nothing
    // pending after it.
    assert!(metric(port, "capprof_kube_failures_total") > 0);
    wait_until("nothing pending", Duration::from_secs(30), || {
        metric(port, "capprof_kube_pending_parts") == 0
    });
    drop(second);
}

#[test]
#[ignore = "needs the kube-apiserver that cargo xtask test starts"]
fn forbidden_and_missing_crd_are_one_line() {
    install("fleet-rbac");
    let dir = Scratch::new("fleet-rbac");
    // The admin's token, impersonating a user with no role at all.
    let admin = std::fs::read_to_string(kubeconfig(As::Admin)).unwrap();
    let nobody = dir.path("nobody.kubeconfig");
    std::fs::write(
        &nobody,
        admin.replace("  user:\n", "  user:\n    as: capprof-test-nobody\n"),
    )
    .unwrap();
    let out = common::capprof(&[
        "profile",
        "--kube",
        "--workload",
        "fleet-rbac/Deployment/web/app",
        "--kubeconfig",
        nobody.to_str().unwrap(),
    ]);
    common::assert_one_line_error(&out, 2, "forbidden by RBAC");
    let text = output_text(&out);
    assert!(text.contains("get"), "names the verb: {text}");

    // Without the CRD: how to install it. (Last: the CRD is put back.)
    kubectl_ok(
        As::Admin,
        &[
            "delete",
            "crd",
            "capabilityprofiles.capprof.dev",
            "--wait=true",
        ],
        None,
    );
    let out = common::capprof(&[
        "report",
        "--kube",
        "--kubeconfig",
        kubeconfig(As::Admin).to_str().unwrap(),
        "-o",
        dir.path("r.html").to_str().unwrap(),
    ]);
    common::assert_one_line_error(&out, 2, "kubectl apply -f deploy/crd.yaml");
    assert!(!dir.path("r.html").exists(), "no half-written report");
    install("fleet-rbac");
}

/// A sample of the daemon's metrics endpoint, by its full name.
fn metric(port: u16, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn kube_writes(port: u16) -> u64 {
    metric(port, "capprof_kube_writes_total")
}

/// A port nothing listens on, for a daemon's metrics.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The daemon's resident memory (kB) and CPU time (clock ticks) so far.
fn rss_and_cpu(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let cpu = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, cpu)
}

/// Writes are coalesced: an idle node makes no request at all, and a
/// churning one at most one write per object per interval. The rates per
/// hour, and the daemon's memory and CPU with --kube, are printed for
/// BENCHMARKS.md (measured, never asserted against a time).
#[test]
#[ignore = "needs root, a private containerd and the kube-apiserver that cargo xtask test starts"]
fn idle_nodes_make_no_request_and_churn_is_bounded() {
    require_root();
    const NS: &str = "fleet-cost";
    const WORKLOADS: u32 = 40;
    const INTERVAL: u64 = 2;
    install(NS);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let interval = format!("{INTERVAL}s");
    let daemon = node(
        "node-c",
        &endpoint(),
        &[
            "--kube-interval",
            &interval,
            "--kube-max-rate",
            "100",
            "--metrics",
            &metrics,
        ],
    );
    // One pod in each of WORKLOADS Deployments: one object each.
    let names: Vec<&'static str> = (0..WORKLOADS)
        .map(|i| &*Box::leak(format!("w{i}-7d9f8c6b5-aaaaa").into_boxed_str()))
        .collect();
    let pod = |i: usize, attempt: u32| PodSpec {
        namespace: NS,
        name: names[i],
        uid: uid(1000 + attempt * 100 + i as u32),
        labels: vec![("pod-template-hash", "7d9f8c6b5")],
        container: "app",
        script: "touch /tmp/f && chown 1000 /tmp/f && sleep 3600",
    };
    let pods: Vec<PodSpec> = (0..WORKLOADS as usize).map(|i| pod(i, 0)).collect();
    let running = Pods::run(&pods);
    wait_until(
        "a CapabilityProfile per workload",
        Duration::from_secs(180),
        || {
            let list = get_json(As::Admin, &["get", "capabilityprofiles", "-n", NS]);
            list["items"].as_array().is_some_and(|i| {
                i.len() == WORKLOADS as usize && i.iter().all(|o| o["status"]["podsSeen"] == 1)
            })
        },
    );
    // Settle: a round after the last change.
    std::thread::sleep(Duration::from_secs(3 * INTERVAL));

    let (before, cpu0) = (kube_writes(port), rss_and_cpu(daemon.pid()).1);
    let idle = Duration::from_secs(30 * INTERVAL);
    std::thread::sleep(idle);
    let (after, (rss, cpu1)) = (kube_writes(port), rss_and_cpu(daemon.pid()));
    assert_eq!(after, before, "an idle node wrote to the API server");
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    measured(format!(
        "[fleet-cost] idle: {WORKLOADS} workloads, {} s: {} writes; daemon RSS {} kB, CPU {:.2}% of a core",
        idle.as_secs(),
        after - before,
        rss,
        (cpu1 - cpu0) as f64 / ticks / idle.as_secs_f64() * 100.0
    ));

    // Churn: every pod replaced, again and again, for 30 intervals.
    let churn = std::time::Instant::now();
    let mut generation = vec![running];
    let mut attempt = 1;
    while churn.elapsed() < Duration::from_secs(30 * INTERVAL) {
        let next: Vec<PodSpec> = (0..WORKLOADS as usize).map(|i| pod(i, attempt)).collect();
        generation.push(Pods::run(&next));
        generation.remove(0);
        attempt += 1;
    }
    let elapsed = churn.elapsed();
    std::thread::sleep(Duration::from_secs(2 * INTERVAL));
    let churned = kube_writes(port) - after;
    let rounds = elapsed.as_secs() / INTERVAL + 3;
    // Each object, per round: its part and at most SUMMARY_ATTEMPTS
    // summary writes; one node never conflicts with itself.
    assert!(
        churned <= u64::from(WORKLOADS) * 2 * rounds,
        "{churned} writes for {WORKLOADS} objects over {rounds} rounds"
    );
    measured(format!(
        "[fleet-cost] churn: {WORKLOADS} workloads, {attempt} generations of pods in {:.0} s: {churned} writes = {:.0} per hour at a {INTERVAL} s interval ({:.0} per hour at 30 s)",
        elapsed.as_secs_f64(),
        churned as f64 * 3600.0 / elapsed.as_secs_f64(),
        churned as f64 * 3600.0 / elapsed.as_secs_f64() * INTERVAL as f64 / 30.0
    ));
}
