//! The CRI path on a real containerd 1.6 with its CRI plugin (the private
//! one `cargo xtask test` starts, at `CAPPROF_TEST_CRI`), driven from here
//! the way the kubelet drives it: `RunPodSandbox` (host network, no
//! hostname, cgroup parent `/kubepods/burstable/pod<uid>`, the kubelet's
//! labels), `CreateContainer`, `StartContainer`.
//!
//! Pods: two replicas of a Deployment-like `web` (labels
//! `pod-template-hash`), a StatefulSet-like `db-0`, and a bare pod. Each
//! container makes real capability checks (chown to another uid; a bind of
//! port 80, which containerd 1.6 does not make unprivileged; mknod).
//!
//! The systemd-slice cgroup parent (`kubepods-burstable-pod<uid>.slice`)
//! needs containerd's `SystemdCgroup`, which needs systemd as init; this
//! machine has none, so that layout is tested on paths only (attribution
//! and cri unit tests).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_cri::v1::{GetEventsRequest, ListContainersRequest, ListPodSandboxRequest};
use serde_json::Value;

use crate::common::{cri::*, daemon::TestDaemon, *};

/// chown to another uid: CAP_CHOWN.
const CHOWN: &str = "touch /tmp/f && chown 1000 /tmp/f";

fn web_labels() -> Vec<(&'static str, &'static str)> {
    vec![("app", "web"), ("pod-template-hash", "7d9f8c6b5")]
}

/// Asks the daemon with `--format json`, which must succeed.
fn json(daemon: &TestDaemon, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let out = daemon.ask(&all);
    assert!(out.status.success(), "{args:?}: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn caps(profile: &Value, field: &str) -> Vec<String> {
    names(profile, field)
}

/// Waits until `f` returns Some, for at most `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
#[ignore = "needs root"]
fn pods_are_named_and_replicas_merge_into_a_workload() {
    require_root();
    let cri = endpoint();
    let daemon = TestDaemon::start(Scratch::new("cri-daemon"), &["--cri", &cri]);
    let pods = Pods::run(&[
        PodSpec {
            namespace: "shop",
            name: "web-7d9f8c6b5-abcde",
            uid: uid(1),
            labels: web_labels(),
            container: "app",
            // chown (CHOWN), then a bind of port 80 on the host's network
            // (NET_BIND_SERVICE: checked before the port is looked up, so a
            // busy port is checked too).
            script: "touch /tmp/f && chown 1000 /tmp/f; timeout 1 nc -l -p 80; sleep 3600",
        },
        PodSpec {
            namespace: "shop",
            name: "web-7d9f8c6b5-fghij",
            uid: uid(2),
            labels: web_labels(),
            container: "app",
            // The same workload; this replica never binds.
            script: "touch /tmp/f && chown 1000 /tmp/f; sleep 3600",
        },
        PodSpec {
            namespace: "shop",
            name: "db-0",
            uid: uid(3),
            labels: vec![
                ("app", "db"),
                ("controller-revision-hash", "db-5c4d7b8f9"),
                ("statefulset.kubernetes.io/pod-name", "db-0"),
            ],
            container: "db",
            script: "mknod /tmp/null c 1 3; sleep 3600",
        },
        PodSpec {
            namespace: "default",
            name: "debug",
            uid: uid(4),
            labels: vec![],
            container: "shell",
            script: "touch /tmp/f && chown 1000 /tmp/f; sleep 3600",
        },
    ]);

    // Every pod's container, named by the CRI.
    eventually(20, "both web replicas' CHOWN in the daemon", || {
        let out = daemon.ask(&[
            "profile",
            "--workload",
            "shop/Deployment/web/app",
            "--format",
            "json",
        ]);
        let web: Value = serde_json::from_slice(&out.stdout).ok()?;
        let seen = web["coverage"]["capabilities"]["CAP_CHOWN"]["seen_in"].as_u64();
        let bound = web["coverage"]["capabilities"]["CAP_NET_BIND_SERVICE"]["seen_in"].as_u64();
        (seen == Some(2) && bound == Some(1)).then_some(())
    });

    let web = json(
        &daemon,
        &["profile", "--workload", "shop/Deployment/web/app"],
    );
    eprintln!(
        "[test] workload: {}",
        serde_json::to_string_pretty(&web["subject"]).unwrap()
    );
    assert_eq!(web["subject"]["kind"], "workload");
    assert_eq!(web["subject"]["name"], "app");
    assert_eq!(
        web["subject"]["image"],
        "docker.io/library/capprof-busybox:test"
    );
    let k8s = &web["subject"]["k8s"];
    assert_eq!(k8s["namespace"], "shop");
    assert!(k8s.get("pod").is_none(), "{k8s}");
    assert_eq!(k8s["owner"]["kind"], "Deployment");
    assert_eq!(k8s["owner"]["name"], "web");
    assert_eq!(k8s["labels"]["pod-template-hash"], "7d9f8c6b5");
    let coverage = &web["coverage"];
    assert_eq!(coverage["profiles"], 2, "{coverage}");
    assert_eq!(
        coverage["capabilities"]["CAP_CHOWN"]["seen_in"], 2,
        "{coverage}"
    );
    assert_eq!(
        coverage["capabilities"]["CAP_NET_BIND_SERVICE"]["seen_in"], 1,
        "{coverage}"
    );
    let allowlist = caps(&web, "allowlist");
    assert!(allowlist.contains(&"CAP_CHOWN".to_owned()), "{allowlist:?}");
    assert!(
        allowlist.contains(&"CAP_NET_BIND_SERVICE".to_owned()),
        "{allowlist:?}"
    );
    assert!(
        !allowlist.contains(&"CAP_MKNOD".to_owned()),
        "{allowlist:?}"
    );

    // The container name may be left out when the pods have one.
    let same = json(&daemon, &["profile", "--workload", "shop/deployment/web"]);
    assert_eq!(same["coverage"]["profiles"], 2);

    // The table says it is a workload, and how many pods saw each.
    let out = daemon.ask(&["profile", "--workload", "shop/Deployment/web/app"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.starts_with("workload shop/Deployment/web/app (2 pods)"),
        "{table}"
    );
    assert!(table.contains("seen in 2 of 2 pods"), "{table}");
    assert!(table.contains("seen in 1 of 2 pods"), "{table}");

    let db = eventually(10, "the StatefulSet's profile", || {
        let out = daemon.ask(&[
            "profile",
            "--workload",
            "shop/StatefulSet/db/db",
            "--format",
            "json",
        ]);
        let db: Value = serde_json::from_slice(&out.stdout).ok()?;
        caps(&db, "allowlist")
            .contains(&"CAP_MKNOD".to_owned())
            .then_some(db)
    });
    assert_eq!(db["subject"]["k8s"]["owner"]["name"], "db");
    assert_eq!(db["coverage"]["profiles"], 1);
    let debug = eventually(10, "the bare pod's profile", || {
        let out = daemon.ask(&[
            "profile",
            "--workload",
            "default/Pod/debug/shell",
            "--format",
            "json",
        ]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    });
    assert_eq!(debug["subject"]["k8s"]["owner"]["kind"], "Pod");
    assert_eq!(
        debug["subject"]["k8s"]["owner"]["derived_from"],
        "no-controller-labels"
    );
    assert_eq!(caps(&debug, "allowlist"), ["CAP_CHOWN"]);

    // Every workload is listed; the sandboxes are not workloads.
    let list = runtime().block_on(async {
        capprof::daemon::client::get(&daemon.socket(), "/v1/workloads")
            .await
            .unwrap()
    });
    let list: Vec<String> = serde_json::from_slice(&list.1).unwrap();
    assert_eq!(
        list,
        [
            "default/Pod/debug/shell",
            "shop/Deployment/web/app",
            "shop/StatefulSet/db/db",
        ]
    );

    // One pod's container, by the daemon's state layout.
    let state = daemon.dir.path("state/profiles");
    let one = eventually(10, "the state file of a pod's container", || {
        std::fs::read_to_string(state.join("shop/web-7d9f8c6b5-abcde/app.json")).ok()
    });
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["subject"]["kind"], "pod-container");
    assert_eq!(one["subject"]["runtime"], "containerd");
    assert_eq!(one["subject"]["k8s"]["pod"], "web-7d9f8c6b5-abcde");
    assert_eq!(one["subject"]["k8s"]["pod_uid"], uid(1));
    let cgroup = one["subject"]["cgroup"].as_str().unwrap();
    assert!(
        cgroup.starts_with(&format!("/kubepods/burstable/pod{}/", uid(1))),
        "{cgroup}"
    );
    assert!(
        cgroup.ends_with(one["subject"]["id"].as_str().unwrap()),
        "{cgroup}"
    );

    // Bad input: one line, exit 2.
    let out = daemon.ask(&["profile", "--workload", "shop/Deployment/nope/app"]);
    assert_one_line_error(&out, 2, "no workload shop/Deployment/nope/app");
    let out = daemon.ask(&["profile", "--workload", "shop/Frobnicator/web"]);
    assert_one_line_error(&out, 2, "is not a workload");
    drop(pods);
}

/// The daemon's metrics for pods' containers: labelled by namespace,
/// workload and container, never by pod, so a Deployment's two replicas
/// make one series; with room for one workload, the bare pod's are folded
/// into `workload="_other"` and counted.
#[test]
#[ignore = "needs root"]
fn metrics_are_labelled_by_workload_not_by_pod() {
    require_root();
    let cri = endpoint();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let daemon = TestDaemon::start(
        Scratch::new("cri-metrics"),
        &[
            "--cri",
            &cri,
            "--metrics",
            &metrics,
            "--metrics-max-workloads",
            "1",
        ],
    );
    let replica = |name: &'static str, n: u32| PodSpec {
        namespace: "fleet",
        name,
        uid: uid(n),
        labels: vec![("app", "api"), ("pod-template-hash", "5f6d7c8b9")],
        container: "app",
        script: "touch /tmp/f && chown 1000 /tmp/f; sleep 3600",
    };
    let pods = Pods::run(&[
        replica("api-5f6d7c8b9-aaaaa", 11),
        replica("api-5f6d7c8b9-bbbbb", 12),
        PodSpec {
            namespace: "fleet",
            name: "solo",
            uid: uid(13),
            labels: vec![],
            container: "shell",
            script: CHOWN,
        },
    ]);
    // Both workloads are profiled before the first scrape, which then
    // places them in name order: Deployment/api before Pod/solo.
    eventually(20, "both workloads' CHOWN in the daemon", || {
        let api = daemon.ask(&[
            "profile",
            "--workload",
            "fleet/Deployment/api/app",
            "--format",
            "json",
        ]);
        let solo = daemon.ask(&[
            "profile",
            "--workload",
            "fleet/Pod/solo/shell",
            "--format",
            "json",
        ]);
        let api: Value = serde_json::from_slice(&api.stdout).ok()?;
        let solo: Value = serde_json::from_slice(&solo.stdout).ok()?;
        let both = api["coverage"]["capabilities"]["CAP_CHOWN"]["seen_in"] == 2
            && caps(&solo, "allowlist").contains(&"CAP_CHOWN".to_owned());
        both.then_some(())
    });
    let scraped = scrape(&metrics);
    eprintln!("[test] /metrics:\n{scraped}");
    let chown = |labels: &str| -> Vec<&str> {
        scraped
            .lines()
            .filter(|l| l.starts_with(&format!("capprof_checks{{{labels}")))
            .filter(|l| l.contains(r#"capability="CAP_CHOWN",class="required",phase="workload"}"#))
            .collect()
    };
    // One series for both replicas, whose count is both pods' checks.
    let api = chown(r#"namespace="fleet",workload="Deployment/api",container="app","#);
    assert_eq!(api.len(), 1, "{scraped}");
    let count: u64 = api[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 2, "{}", api[0]);
    assert_eq!(
        chown(r#"namespace="",workload="_other",container="","#).len(),
        1,
        "{scraped}"
    );
    assert!(
        scraped.contains("\ncapprof_metrics_workloads_folded_total 1\n"),
        "{scraped}"
    );
    // Nothing names a pod, a pod's uid or a container id.
    for pod in [
        "api-5f6d7c8b9-aaaaa",
        "api-5f6d7c8b9-bbbbb",
        "solo",
        &uid(11),
    ] {
        assert!(!scraped.contains(pod), "{pod} in\n{scraped}");
    }
    assert!(!scraped.contains("pod="), "{scraped}");
    drop(pods);
}

/// `GET /metrics` over plain HTTP/1.0: the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: capprof\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

#[test]
#[ignore = "needs root"]
fn record_writes_namespace_pod_container_files() {
    require_root();
    let cri = endpoint();
    let dir = Scratch::new("cri-record");
    let out_dir = dir.path("profiles");
    let mut child = Command::new(CAPPROF)
        .args(["record", "--cri", &cri, "--out", out_dir.to_str().unwrap()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = echo_lines(child.stderr.take().unwrap(), "record");
    let mut child = KillOnDrop(child);
    let banner = eventually(30, "record to start", || {
        lines
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|l| l.contains("recording"))
    });
    assert!(banner.contains("containerd"), "{banner}");
    assert!(banner.contains("/kubepods"), "{banner}");

    let pods = Pods::run(&[PodSpec {
        namespace: "jobs",
        name: "migrate-x7k2p",
        uid: uid(5),
        labels: vec![
            ("batch.kubernetes.io/job-name", "migrate"),
            ("job-name", "migrate"),
        ],
        container: "migrate",
        // Exits at once: its profile is written while recording goes on.
        script: CHOWN,
    }]);
    let file = out_dir.join("jobs/migrate-x7k2p/migrate.json");
    // The exit is seen by listing containers (containerd 1.6 has no
    // events), then the profile is written at once.
    let started = Instant::now();
    eventually(15, "the exited container's profile", || {
        file.exists().then_some(())
    });
    eprintln!(
        "[test] profile written {:?} after the pod started",
        started.elapsed()
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    assert!(child.0.wait().unwrap().success());
    drop(pods);

    let profile: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(profile["subject"]["kind"], "pod-container");
    assert_eq!(profile["subject"]["name"], "migrate");
    let k8s = &profile["subject"]["k8s"];
    assert_eq!(k8s["namespace"], "jobs");
    assert_eq!(k8s["pod"], "migrate-x7k2p");
    assert_eq!(k8s["labels"]["job-name"], "migrate");
    assert!(
        k8s["labels"].get("io.kubernetes.pod.name").is_none(),
        "{k8s}"
    );
    assert_eq!(k8s["owner"]["kind"], "Job");
    assert_eq!(k8s["owner"]["name"], "migrate");
    assert_eq!(caps(&profile, "allowlist"), ["CAP_CHOWN"]);
    // No profile for the sandbox (pause) container, nor any file elsewhere.
    let all: Vec<PathBuf> = walk(&out_dir);
    assert_eq!(all, std::slice::from_ref(&file), "{all:?}");
}

#[test]
#[ignore = "needs root"]
fn cri_bad_input_is_one_line() {
    require_root();
    let dir = Scratch::new("cri-bad");
    let out_dir = dir.path("out");
    let out = capprof(&[
        "record",
        "--cri",
        "unix:///nonexistent/cri.sock",
        "--out",
        out_dir.to_str().unwrap(),
        "--duration",
        "1",
    ]);
    assert_one_line_error(
        &out,
        2,
        "no CRI runtime answers at unix:///nonexistent/cri.sock",
    );
    // A socket that answers, but not the CRI: a plain listener.
    let sock = dir.path("not-cri.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let out = capprof(&[
        "record",
        "--cri",
        sock.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--duration",
        "1",
    ]);
    assert_one_line_error(&out, 2, "no CRI runtime answers at");
    let out = capprof(&[
        "daemon",
        "--cri",
        "tcp://10.0.0.1:1234",
        "--state-dir",
        dir.path("state").to_str().unwrap(),
        "--socket",
        dir.path("capprof.sock").to_str().unwrap(),
        "--bpffs",
        dir.path("bpffs").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 2, "unsupported CRI address");
    let out = capprof(&["profile", "--workload", "shop/web"]);
    assert_one_line_error(&out, 2, "is not a workload");
}

/// The runtime's own cost of what capprof does to follow containers:
/// containerd 1.6 has no container events, so capprof lists containers.
#[test]
#[ignore = "needs root"]
fn measure_events_and_polling() {
    runtime().block_on(async {
        let mut client = connect(&endpoint()).await;
        let events = client.get_container_events(GetEventsRequest {}).await;
        let code = match events {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                    Ok(Err(status)) => format!("{:?}", status.code()),
                    Ok(Ok(_)) => "an event".to_owned(),
                    Err(_) => "a stream (no event within 500 ms)".to_owned(),
                }
            }
            Err(status) => format!("{:?}", status.code()),
        };
        eprintln!("[measure] GetContainerEvents answered: {code}");
        const N: u32 = 200;
        let pid = containerd_pid();
        let cpu_before = cpu_ticks(pid);
        let started = Instant::now();
        // One poll: the containers, then the sandboxes.
        for _ in 0..N {
            client
                .list_containers(ListContainersRequest { filter: None })
                .await
                .unwrap();
            client
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
                .unwrap();
        }
        let each = started.elapsed() / N;
        // Clock ticks are 1/100 s.
        let cpu_each = Duration::from_millis((cpu_ticks(pid) - cpu_before) * 10) / N;
        let poll = capprof::cri::client::POLL_INTERVAL;
        eprintln!(
            "[measure] one poll (ListContainers + ListPodSandbox): {each:?}, containerd's CPU {cpu_each:?}; every {poll:?}: {:.2}% of one core in containerd",
            cpu_each.as_secs_f64() * 100.0 / poll.as_secs_f64()
        );
        assert!(each < Duration::from_millis(50), "{each:?}");
    });
}

/// A child that a failing test must not leave running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The private containerd's pid: the process started with the config
/// beside its socket.
fn containerd_pid() -> u32 {
    let endpoint = endpoint();
    let dir = Path::new(endpoint.strip_prefix("unix://").unwrap())
        .parent()
        .unwrap();
    let config = dir.join("config.toml").display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&config))
        })
        .expect("the private containerd's process")
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of stat; 12 and 13 after the command.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
