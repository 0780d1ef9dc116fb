//! capprof's image (`cargo xtask image`) run exactly as
//! deploy/daemonset.yaml runs it: the `run` flags are derived from the
//! manifest itself (pid namespace, user, capabilities, read-only root,
//! security options, environment, mounts with their propagation, memory
//! limit, command), so the manifest and this test cannot drift; a field the
//! test does not know how to reproduce fails it. Through that container
//! the test profiles a busybox container of the test engine and reads the
//! profile from the node's socket with the host's `capprof profile`.
//!
//! The DaemonSet's container runs under Podman (runc, a private store),
//! not on the Docker engine: Docker 20.10 predates CAP_BPF and CAP_PERFMON
//! (Linux 5.8) and refuses `--cap-add BPF` ("unknown capability"), while
//! containerd's CRI, which the kubelet drives, and Podman 4 grant them. The
//! profiled workload runs on the Docker engine, whose socket the daemon
//! uses to name it, as on a node with Docker.
//!
//! One capability cannot be granted here: root on this machine lacks
//! CAP_SYS_RESOURCE in its bounding set (ENVIRONMENT.md), so no runtime can
//! give it to a container (runc: "unable to apply caps: operation not
//! permitted"). When the host lacks a capability the manifest adds, the
//! test says so and leaves it out; the daemon needs SYS_RESOURCE only to
//! raise RLIMIT_MEMLOCK on kernels before 5.11.
//!
//! Host paths that would touch state other runs share are replaced, each
//! with what stands for it here (`host_source`): the node's bpffs by a
//! bpffs of the test's own, `/run` by the directory of the test engine's
//! docker.sock, and the DirectoryOrCreate paths by scratch directories.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde::Deserialize as _;
use serde_json::Value;

use crate::common::{engine::*, *};

fn capprof_image() -> String {
    std::env::var("CAPPROF_IMAGE")
        .unwrap_or_else(|_| format!("capprof:{}", env!("CARGO_PKG_VERSION")))
}

fn daemonset() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "DaemonSet")
        .expect("deploy/daemonset.yaml holds a DaemonSet")
}

/// Whether this process's bounding set holds capability number `cap`.
fn host_has(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim();
    u64::from_str_radix(bnd, 16).unwrap() & (1 << cap) != 0
}

/// A Podman store of the test's own (as tests/it/podman.rs keeps).
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args([
                "--cgroup-manager=cgroupfs",
                "--events-backend=file",
                "--runtime=runc",
                "--storage-driver=vfs",
            ])
            .arg(format!("--root={}", self.dir.join("root").display()))
            .arg(format!("--runroot={}", self.dir.join("runroot").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .args(args)
            .output()
            .expect("podman runs")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.cmd(&["system", "reset", "--force"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

/// Where this test takes a hostPath volume from.
struct Node {
    dir: Scratch,
    /// The directory holding the test engine's docker.sock.
    engine_run: PathBuf,
}

impl Node {
    fn new() -> Self {
        let dir = Scratch::new("image");
        let engine_run = match std::env::var("DOCKER_HOST") {
            Ok(host) => {
                let sock = host
                    .strip_prefix("unix://")
                    .unwrap_or_else(|| panic!("DOCKER_HOST={host} is not a unix socket"));
                assert!(sock.ends_with("/docker.sock"), "{sock}");
                Path::new(sock).parent().unwrap().to_owned()
            }
            Err(_) => PathBuf::from("/run"),
        };
        let bpffs = dir.path("bpffs");
        std::fs::create_dir_all(&bpffs).unwrap();
        let out = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount bpffs: {}", output_text(&out));
        Self { dir, engine_run }
    }

    /// The host path that stands for the manifest's hostPath `path`.
    fn host_source(&self, path: &str, kind: &str) -> PathBuf {
        let source = match path {
            // The node's bpffs, where systemd mounts it: here a bpffs of the
            // test's own, so that pins never meet another run's.
            "/sys/fs/bpf" => self.dir.path("bpffs"),
            // The node's /run holds its docker.sock; here the test engine's
            // socket directory does.
            "/run" => self.engine_run.clone(),
            "/sys/kernel/btf" | "/sys/kernel/tracing" | "/sys/fs/cgroup" => PathBuf::from(path),
            other if kind == "DirectoryOrCreate" => {
                self.dir.path(&format!("host{}", other.replace('/', "_")))
            }
            other => panic!("no stand-in for hostPath {other} ({kind})"),
        };
        match kind {
            "DirectoryOrCreate" => std::fs::create_dir_all(&source).unwrap(),
            "Directory" => assert!(source.is_dir(), "{}", source.display()),
            other => panic!("hostPath type {other} is not reproduced here"),
        }
        source
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let bpffs = self.dir.path("bpffs");
        let _ = Command::new(CAPPROF)
            .args(["daemon", "--reset", "--bpffs"])
            .arg(&bpffs)
            .output();
        let _ = Command::new("umount").arg(&bpffs).output();
    }
}

/// `docker run` flags for the DaemonSet's (only) container, from the
/// manifest, and the host directory of each of its mounts.
fn run_flags(ds: &Value, node: &Node) -> (Vec<String>, BTreeMap<String, PathBuf>) {
    let pod = &ds["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let mut flags: Vec<String> = vec![];

    if pod["hostPID"] == true {
        push(&mut flags, "--pid", "host".into());
    }
    assert_ne!(pod["hostNetwork"], true, "hostNetwork is not reproduced");
    // A pod's own network namespace; the test engine has no bridge.
    push(&mut flags, "--network", "none".into());
    // Not Podman's defaults: no tmpfs over /run and /tmp of a read-only
    // root (the kubelet mounts none), and no raising of the ulimits, which
    // needs the CAP_SYS_RESOURCE root lacks here.
    flags.push("--read-only-tmpfs=false".to_owned());
    push(&mut flags, "--ulimit", "nofile=1024:1024".into());
    push(&mut flags, "--ulimit", "nproc=1024:1024".into());

    let sc = &c["securityContext"];
    for (key, value) in sc.as_object().unwrap() {
        match key.as_str() {
            "privileged" if value == true => flags.push("--privileged".to_owned()),
            "privileged" => {}
            "runAsUser" => {}
            "runAsGroup" => {}
            "readOnlyRootFilesystem" if value == true => flags.push("--read-only".to_owned()),
            "readOnlyRootFilesystem" => {}
            "allowPrivilegeEscalation" if value == false => {
                push(&mut flags, "--security-opt", "no-new-privileges".into());
            }
            "capabilities" => {
                for cap in value["drop"].as_array().into_iter().flatten() {
                    push(&mut flags, "--cap-drop", str_of(cap).into());
                }
                for cap in value["add"].as_array().into_iter().flatten() {
                    let name = str_of(cap);
                    let number = format!("CAP_{name}")
                        .parse::<capprof::capability::Cap>()
                        .unwrap()
                        .number();
                    if host_has(number) {
                        push(&mut flags, "--cap-add", name.into());
                    } else {
                        eprintln!("left out CAP_{name}: this machine's root lacks it");
                    }
                }
            }
            // Docker's default seccomp profile is the runtime's default.
            "seccompProfile" => assert_eq!(value["type"], "RuntimeDefault"),
            "appArmorProfile" => {
                assert_eq!(value["type"], "Unconfined");
                push(&mut flags, "--security-opt", "apparmor=unconfined".into());
            }
            other => panic!("securityContext.{other} is not reproduced by this test"),
        }
    }
    let user = sc["runAsUser"].as_u64().unwrap();
    let group = sc["runAsGroup"].as_u64().unwrap();
    push(&mut flags, "--user", format!("{user}:{group}"));

    for e in c["env"].as_array().unwrap() {
        // What the kubelet fills in from the downward API.
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => "image-test-node".to_owned(),
            Some(other) => panic!("env from {other} is not reproduced by this test"),
            None => str_of(&e["value"]).to_owned(),
        };
        push(
            &mut flags,
            "--env",
            format!("{}={value}", str_of(&e["name"])),
        );
    }
    if let Some(memory) = c["resources"]["limits"]["memory"].as_str() {
        let mib = memory.strip_suffix("Mi").expect("a limit in Mi");
        push(&mut flags, "--memory", format!("{mib}m"));
    }

    let volumes = pod["volumes"].as_array().unwrap();
    let mut sources = BTreeMap::new();
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = str_of(&m["name"]);
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"));
        let source = if let Some(host) = volume.get("hostPath") {
            node.host_source(str_of(&host["path"]), str_of(&host["type"]))
        } else if let Some(cm) = volume.get("configMap") {
            config_map(&node.dir, str_of(&cm["name"]))
        } else {
            panic!("volume {volume} is not reproduced by this test")
        };
        let target = str_of(&m["mountPath"]);
        let mut spec = format!("type=bind,src={},dst={target}", source.display());
        if m["readOnly"] == true {
            spec.push_str(",ro=true");
        }
        match m.get("mountPropagation").and_then(Value::as_str) {
            Some("HostToContainer") => spec.push_str(",bind-propagation=rslave"),
            None | Some("None") => {}
            Some(other) => panic!("mountPropagation {other} is not reproduced"),
        }
        push(&mut flags, "--mount", spec);
        sources.insert(target.to_owned(), source);
    }

    let command = c["command"].as_array().unwrap();
    push(&mut flags, "--entrypoint", str_of(&command[0]).into());
    flags.push(str_of(&c["image"]).into());
    flags.extend(command[1..].iter().map(|a| str_of(a).to_owned()));
    flags.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| str_of(a).to_owned()),
    );
    (flags, sources)
}

fn push(flags: &mut Vec<String>, flag: &str, value: String) {
    flags.extend([flag.to_owned(), value]);
}

/// The manifest's ConfigMap `name`, written out as its files.
fn config_map(dir: &Scratch, name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cm = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap" && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"));
    let out = dir.path(&format!("configmap-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    for (file, content) in cm["data"].as_object().unwrap() {
        std::fs::write(out.join(file), str_of(content)).unwrap();
    }
    out
}

/// Removes the named container of the Docker engine, whatever its state.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

#[test]
#[ignore = "needs root"]
fn daemonset_image_profiles_another_container() {
    require_engine();
    let ds = daemonset();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    // The manifest runs the image `cargo xtask image` builds.
    assert_eq!(str_of(&c["image"]), capprof_image());
    let inspect = docker(&["image", "inspect", &capprof_image()]);
    assert!(
        inspect.status.success(),
        "no {} image: cargo xtask test builds it ({})",
        capprof_image(),
        output_text(&inspect)
    );

    let node = Node::new();
    let (mut flags, sources) = run_flags(&ds, &node);
    assert!(!flags.contains(&"--privileged".to_owned()), "{flags:?}");
    let pid = std::process::id();

    // The image, from the engine `cargo xtask image` imported it into.
    let podman = Podman {
        dir: node.dir.path("podman"),
    };
    let tar = node.dir.path("capprof-image.tar");
    let out = docker(&["save", "-o", tar.to_str().unwrap(), &capprof_image()]);
    assert!(out.status.success(), "docker save: {}", output_text(&out));
    let out = podman.cmd(&["load", "-i", tar.to_str().unwrap()]);
    assert!(out.status.success(), "podman load: {}", output_text(&out));
    std::fs::remove_file(&tar).unwrap();
    let image = flags.iter().position(|f| *f == capprof_image()).unwrap();
    flags[image] = format!("localhost/{}", capprof_image());

    let daemon = format!("capprof-ds-{pid}");
    let mut args = vec!["run", "--detach", "--name", &daemon];
    args.extend(flags.iter().map(String::as_str));
    eprintln!("podman run {}", args[1..].join(" "));
    let out = podman.cmd(&args);
    assert!(out.status.success(), "podman run: {}", output_text(&out));
    let logs = |name: &str| output_text(&podman.cmd(&["logs", name]));

    // Ready, and holding no capability after attaching.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let text = logs(&daemon);
        if let Some(line) = text.lines().find(|l| l.contains("daemon ready")) {
            break line.to_owned();
        }
        let state = podman.cmd(&["inspect", "--format", "{{.State.Status}}", &daemon]);
        assert_eq!(
            String::from_utf8_lossy(&state.stdout).trim(),
            "running",
            "the DaemonSet's container stopped: {text}"
        );
        assert!(Instant::now() < deadline, "not ready in 60 s: {text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("{ready}");
    assert!(ready.contains("no capabilities kept"), "{ready}");
    let host_pid = podman.cmd(&["inspect", "--format", "{{.State.Pid}}", &daemon]);
    let host_pid = String::from_utf8_lossy(&host_pid.stdout).trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap();
    // No capability left, and none to regain: the bounding set stays as the
    // runtime made it, since the manifest grants no SETPCAP.
    for set in ["CapPrm", "CapEff", "CapInh", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // Everything attached: no tracepoint left out for want of a mount.
    let early = logs(&daemon);
    assert!(!early.contains("cannot attach"), "{early}");

    // The kubelet's probes: an HTTP GET of the probe's path and port in the
    // pod's network namespace, with busybox wget from the host.
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        let port = match &get["port"] {
            Value::String(name) => c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == *name)
                .unwrap_or_else(|| panic!("{probe}: no port named {name}"))["containerPort"]
                .as_u64()
                .unwrap(),
            number => number.as_u64().unwrap(),
        };
        let url = format!("http://127.0.0.1:{port}{}", str_of(&get["path"]));
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{host_pid}/ns/net"))
            .args(["/bin/busybox", "wget", "-q", "-O", "-", &url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{probe} {url}: {}", output_text(&out));
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("capprof_"), "{probe} {url}: {body}");
    }

    // Another container, profiled through the DaemonSet's container.
    let target = Container(format!("capprof-ds-target-{pid}"));
    let out = docker_run(
        Some(&target.0),
        &[],
        &[
            "sh",
            "-c",
            "sleep 1; touch /tmp/f; chown 1000:1000 /tmp/f; sleep 1",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));

    // Read from the node's socket, the host path the manifest shares.
    let socket = sources["/run/capprof"].join("capprof.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let profile: Value = loop {
        let out = capprof(&[
            "profile",
            &target.0,
            "--format",
            "json",
            "--socket",
            socket.to_str().unwrap(),
        ]);
        if out.status.success() {
            let p: Value = serde_json::from_slice(&out.stdout).unwrap();
            if names(&p, "allowlist").contains(&"CAP_CHOWN".to_owned()) {
                break p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no CHOWN profile for {} from the DaemonSet's socket: {}\n{}",
            target.0,
            output_text(&out),
            logs(&daemon)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(profile["subject"]["name"], target.0.as_str(), "{profile}");
    assert_exact(&profile, "chown in busybox", &["CAP_CHOWN"]);
    // Calibrated: the daemon read /proc/kallsyms and told NOAUDIT checks
    // from audited ones, as it does on the host.
    assert_eq!(
        profile["observation"]["classification"], "call-site",
        "{profile}"
    );

    // SIGTERM, as the kubelet stops a pod: the profile is on the node.
    let out = podman.cmd(&["stop", "--time", "30", &daemon]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = logs(&daemon);
    let state = &sources["/var/lib/capprof"];
    let files: Vec<String> = walk(state)
        .into_iter()
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(target.0.as_str())))
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        !files.is_empty(),
        "no profile of {} under the state hostPath {}: {text}",
        target.0,
        state.display()
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
