//! A container in a user namespace, on a real engine: a private `dockerd
//! --userns-remap=default` that this test starts beside the one `cargo xtask
//! test` provides, on its own data root and socket, with the same busybox
//! image (`docker save | docker load`). dockerd creates the `dockremap` user
//! and its /etc/subuid and /etc/subgid ranges the first time.
//!
//! In such a container root holds its capabilities in the container's user
//! namespace only. A check that targets the host's namespace (`capable()`,
//! as `mknod` of a device makes) is refused whatever the container holds:
//! the profile must call it `ungrantable`, and `export` must say so loudly.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::*;

/// How long the private dockerd gets to answer.
const START: Duration = Duration::from_secs(60);
/// How long it gets to exit after SIGTERM before SIGKILL.
const STOP: Duration = Duration::from_secs(20);

fn image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A private dockerd with user namespace remapping, stopped and removed on
/// drop.
struct RemappedDockerd {
    dir: PathBuf,
    child: Child,
}

impl RemappedDockerd {
    fn start() -> Self {
        require_root();
        let dir = std::env::temp_dir().join(format!("capprof-userns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--storage-driver=overlay2", "--userns-remap=default"])
            .arg(format!("--data-root={}", dir.join("root").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd starts (apt-get install docker.io)");
        // From here on, Drop cleans up.
        let mut engine = Self { dir, child };
        let deadline = Instant::now() + START;
        while !engine.docker(&["version"]).status.success() {
            if let Some(status) = engine.child.try_wait().unwrap() {
                panic!("dockerd exited ({status}): {}", engine.log());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd --userns-remap did not answer within {START:?}: {}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        engine.load_image();
        engine
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI, on this engine.
    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.endpoint())
            .args(args)
            .output()
            .expect("the docker CLI runs")
    }

    /// `docker save` from the harness's engine, `docker load` into this one.
    fn load_image(&self) {
        let mut save = Command::new("docker")
            .args(["save", &image()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the docker CLI runs");
        let load = Command::new("docker")
            .env("DOCKER_HOST", self.endpoint())
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        let saved = save.wait().unwrap();
        assert!(
            saved.success(),
            "docker save {} failed; run through `cargo xtask test`, which builds it",
            image()
        );
        assert!(load.status.success(), "docker load: {}", text(&load));
    }

    /// `docker run --network none [FLAGS] IMAGE sh -c SCRIPT`.
    fn run(&self, name: Option<&str>, flags: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--network", "none"];
        match name {
            Some(name) => args.extend(["--name", name]),
            None => args.push("--rm"),
        }
        args.extend_from_slice(flags);
        let image = image();
        args.extend([image.as_str(), "sh", "-c", script]);
        self.docker(&args)
    }
}

impl Drop for RemappedDockerd {
    fn drop(&mut self) {
        stop_child(&mut self.child, STOP);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `capprof record --engine ENGINE --container NAME` until SIGINT.
fn record(engine: &RemappedDockerd, name: &str, out: &std::path::Path) -> Child {
    let mut child = Command::new(CAPPROF)
        .args(["record", "--out", out.to_str().unwrap()])
        .args(["--engine", &engine.endpoint(), "--container", name])
        .stderr(Stdio::piped())
        .spawn()
        .expect("capprof record starts");
    wait_for_line(&mut child, "record", "recording", Duration::from_secs(30));
    child
}

fn usage<'a>(profile: &'a Value, cap: &str) -> &'a Value {
    profile["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == cap)
        .unwrap_or_else(|| panic!("no {cap} in {profile}"))
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn host_namespace_checks_in_a_remapped_container_are_ungrantable() {
    let engine = RemappedDockerd::start();
    let info = engine.docker(&["info", "--format", "{{.SecurityOptions}}"]);
    assert!(
        text(&info).contains("name=userns"),
        "user namespaces are not on: {}",
        text(&info)
    );
    let dir = Scratch::new("userns");
    let profiles = dir.path("profiles");
    let name = format!("capprof-t-userns-{}", std::process::id());
    // chown is checked in the container's own namespace (root there holds
    // CHOWN); mknod of a device checks MKNOD in the host's, and is refused.
    let chown = "touch /tmp/f && chown 1000:1000 /tmp/f";
    let script = format!("{chown} && ! mknod /tmp/null c 1 3");

    let mut recording = record(&engine, &name, &profiles);
    let out = engine.run(Some(&name), &[], &script);
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(800));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(recording.id() as i32, libc::SIGINT) };
    assert!(recording.wait().unwrap().success());
    let _ = engine.docker(&["rm", "-f", &name]);

    let path = profiles.join(format!("{name}.json"));
    let profile: Value = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("no profile {}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(names(&profile, "required"), ["CAP_CHOWN"], "{profile}");
    assert_eq!(names(&profile, "allowlist"), ["CAP_CHOWN"], "{profile}");
    assert_eq!(names(&profile, "denied"), ["CAP_MKNOD"], "{profile}");
    assert_eq!(names(&profile, "ungrantable"), ["CAP_MKNOD"], "{profile}");
    let mknod = usage(&profile, "CAP_MKNOD");
    assert!(mknod["ungrantable"].as_u64() >= Some(1), "{mknod}");
    assert!(
        mknod["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["user_ns"] == "ancestor"
                && e["verdict"] == "denied"
                && e["comm"] == "mknod"),
        "{mknod}"
    );
    let chown_usage = usage(&profile, "CAP_CHOWN");
    assert!(chown_usage.get("ungrantable").is_none(), "{chown_usage}");
    assert!(
        chown_usage["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["user_ns"] == "own" && e["class"] == "required"),
        "{chown_usage}"
    );

    // The export grants what can be granted, and says loudly what cannot.
    let out = capprof(&["export", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let flags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(flags, ["--cap-drop=ALL", "--cap-add=CHOWN"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capprof: warning: ")
            && stderr.contains("CAP_MKNOD")
            && stderr.contains("no --cap-add can grant it"),
        "{stderr}"
    );

    // Sufficient and minimal on the same engine, for what can be granted.
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = engine.run(None, &flags, chown);
    assert!(out.status.success(), "not sufficient: {}", text(&out));
    let out = engine.run(None, &flags[..1], chown);
    assert!(!out.status.success(), "works without CHOWN");
    // And MKNOD is refused even when granted: ungrantable indeed.
    let out = engine.run(None, &["--cap-add=MKNOD"], "mknod /tmp/null c 1 3");
    assert!(!out.status.success(), "mknod worked: {}", text(&out));
}
