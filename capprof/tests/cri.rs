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

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{daemon::TestDaemon, *};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, GetEventsRequest, ImageSpec,
    KeyValue, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
    runtime_service_client::RuntimeServiceClient,
};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

/// The image the CRI runs (imported into containerd by xtask).
const IMAGE: &str = "capprof-busybox:test";
const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

fn endpoint() -> String {
    std::env::var("CAPPROF_TEST_CRI")
        .expect("CAPPROF_TEST_CRI is not set: run these tests through `cargo xtask test`, which starts a private containerd")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect() -> RuntimeServiceClient<Channel> {
    let path = endpoint().strip_prefix("unix://").unwrap().to_owned();
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// A pod as the kubelet describes it to the runtime.
struct PodSpec {
    namespace: &'static str,
    name: &'static str,
    uid: String,
    labels: Vec<(&'static str, &'static str)>,
    container: &'static str,
    script: &'static str,
}

fn uid(n: u32) -> String {
    format!("{n:08x}-d113-4ec5-a9f4-{:012x}", std::process::id())
}

impl PodSpec {
    fn sandbox_config(&self) -> PodSandboxConfig {
        let mut labels: HashMap<String, String> = self
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert("io.kubernetes.pod.name".into(), self.name.into());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.into());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.clone());
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_owned(), "api".to_owned()),
            (
                "kubernetes.io/config.seen".to_owned(),
                "2026-01-01T00:00:00Z".to_owned(),
            ),
        ]);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.into(),
                uid: self.uid.clone(),
                namespace: self.namespace.into(),
                attempt: 0,
            }),
            // Host network: runc refuses a hostname without a UTS namespace.
            hostname: String::new(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/burstable/pod{}", self.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self) -> ContainerConfig {
        let labels = HashMap::from([
            (
                "io.kubernetes.container.name".to_owned(),
                self.container.to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), self.name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                self.namespace.to_owned(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), self.uid.clone()),
        ]);
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: self.container.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), self.script.into()],
            envs: vec![KeyValue {
                key: "PATH".into(),
                value: PATH_ENV.into(),
            }],
            labels,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pods started through the CRI, stopped and removed on drop.
struct Pods {
    sandboxes: Vec<(String, String)>,
}

impl Pods {
    fn run(specs: &[PodSpec]) -> Self {
        runtime().block_on(async {
            let mut client = connect().await;
            let mut sandboxes = vec![];
            for spec in specs {
                let config = spec.sandbox_config();
                let sandbox = client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name))
                    .into_inner()
                    .pod_sandbox_id;
                sandboxes.push((sandbox.clone(), spec.uid.clone()));
                let id = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox.clone(),
                        config: Some(spec.container_config()),
                        sandbox_config: Some(config),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", spec.name))
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("StartContainer {}: {e}", spec.name));
                eprintln!(
                    "[cri] pod {}/{} container {} {id}",
                    spec.namespace, spec.name, spec.container
                );
            }
            Self { sandboxes }
        })
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        runtime().block_on(async {
            let mut client = connect().await;
            for (sandbox, _) in &self.sandboxes {
                let _ = client
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: sandbox.clone(),
                    })
                    .await;
                let _ = client
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: sandbox.clone(),
                    })
                    .await;
            }
        });
        // The kubelet removes a pod's cgroup; here, the test does.
        for (_, uid) in &self.sandboxes {
            if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
                for hierarchy in entries.flatten() {
                    let _ = std::fs::remove_dir(
                        hierarchy
                            .path()
                            .join(format!("kubepods/burstable/pod{uid}")),
                    );
                }
            }
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/kubepods/burstable/pod{uid}"));
        }
    }
}

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
        let mut client = connect().await;
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
