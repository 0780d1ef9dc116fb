//! Container tests against a real engine (`cargo xtask test` starts a
//! private dockerd when none answers and builds the busybox test image).
//! Each workload is recorded, its profile checked against the expected
//! set, then proven: it runs with exactly the exported flags (sufficient)
//! and fails when any one of them is dropped (minimal).

mod common;

use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

fn image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

/// The docker CLI, pointed at the engine the harness chose.
fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn require_engine() {
    require_root();
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        out.status.success(),
        "no Docker engine answers (DOCKER_HOST={:?}); run through `cargo xtask test`, which starts one: {}",
        std::env::var("DOCKER_HOST").ok(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A workload: a name, docker run flags, a command, and the capabilities
/// it is known to need.
struct Workload {
    name: &'static str,
    flags: Vec<String>,
    cmd: Vec<&'static str>,
    expected: Vec<&'static str>,
}

fn workloads(data_dir: &Path) -> Vec<Workload> {
    let sh = |s: &'static str| vec!["sh", "-c", s];
    let vol = format!("{}:/data", data_dir.display());
    vec![
        Workload {
            name: "chown",
            flags: vec![],
            cmd: sh("touch /tmp/f && chown 1000:1000 /tmp/f"),
            expected: vec!["CAP_CHOWN"],
        },
        Workload {
            name: "ping",
            flags: vec![],
            cmd: vec!["ping", "-c1", "-W1", "127.0.0.1"],
            expected: vec!["CAP_NET_RAW"],
        },
        Workload {
            name: "mknod",
            flags: vec![],
            cmd: vec!["mknod", "/tmp/null", "c", "1", "3"],
            expected: vec!["CAP_MKNOD"],
        },
        Workload {
            name: "su",
            flags: vec![],
            cmd: vec!["su", "-s", "/bin/sh", "app", "-c", "id"],
            expected: vec!["CAP_SETGID", "CAP_SETUID"],
        },
        Workload {
            name: "kill",
            flags: vec![],
            cmd: sh("su -s /bin/sh app -c 'sleep 5' & sleep 0.5; kill $!"),
            expected: vec!["CAP_KILL", "CAP_SETGID", "CAP_SETUID"],
        },
        Workload {
            name: "chroot",
            flags: vec![],
            cmd: vec!["chroot", "/", "true"],
            expected: vec!["CAP_SYS_CHROOT"],
        },
        Workload {
            name: "dac",
            flags: vec!["-v".into(), vol],
            cmd: sh("echo x >> /data/secret"),
            expected: vec!["CAP_DAC_OVERRIDE"],
        },
        Workload {
            name: "nothing",
            flags: vec![],
            cmd: vec!["true"],
            expected: vec![],
        },
    ]
}

fn docker_run(name: Option<&str>, flags: &[String], cmd: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["run".into(), "--network".into(), "none".into()];
    match name {
        Some(n) => args.extend(["--name".into(), n.into()]),
        None => args.push("--rm".into()),
    }
    args.extend(flags.iter().cloned());
    args.push(image());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)
}

/// `capprof record` in the background until stopped with SIGINT.
struct Recording {
    child: Child,
    dir: Scratch,
}

impl Recording {
    fn start(tag: &str, extra: &[&str]) -> Self {
        let dir = Scratch::new(tag);
        let out = dir.path("profiles");
        let mut args = vec!["record", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = Command::new(CAPPROF)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("capprof record starts");
        // Wait for the "recording" line: attached and watching.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[record] {line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("recording") => break,
                Ok(line) if line.starts_with("capprof:") && !line.contains("recording") => {
                    panic!("capprof record failed: {line}")
                }
                _ if Instant::now() > deadline => panic!("capprof record did not start"),
                _ => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("capprof record exited early: {status}");
            }
        }
        Self { child, dir }
    }

    fn stop(mut self) -> Scratch {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "capprof record exited with {status}");
        self.dir
    }
}

fn read_profile(dir: &Scratch, name: &str) -> Value {
    let path = dir.path("profiles").join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no profile {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn export_flags(dir: &Scratch, name: &str) -> Vec<String> {
    let path = dir.path("profiles").join(format!("{name}.json"));
    let out = capprof(&["export", "--format", "docker", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn remove(names: &[String]) {
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let _ = docker(&args);
}

#[test]
fn docker_matrix_profiles_are_exact_sufficient_and_minimal() {
    require_engine();
    let data = Scratch::new("data");
    prove_workloads("matrix", &workloads(&data.0), &data);
}

/// Workloads that change what came with the image (`/srv/img`, see
/// xtask/src/image.rs). On overlay2, Docker's default storage driver, each
/// one copies a file or directory up from a lower layer, and overlayfs does
/// that with the mounter's (dockerd's) credentials from the container's own
/// task: checks of SYS_ADMIN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, CHOWN
/// that the workload never made. The profile must be what it is on vfs.
fn copy_up_workloads() -> Vec<Workload> {
    let sh = |s: &'static str| vec!["sh", "-c", s];
    let workload = |name, cmd, expected| Workload {
        name,
        flags: vec![],
        cmd,
        expected,
    };
    vec![
        // Writing to a file that came with the image.
        workload("img-write", sh("echo x >> /srv/img/root-file"), vec![]),
        workload(
            "img-write-other",
            sh("echo x >> /srv/img/app-file"),
            vec!["CAP_DAC_OVERRIDE"],
        ),
        // Creating a file in an image directory.
        workload("img-create", sh("touch /srv/img/new"), vec![]),
        workload(
            "img-create-other",
            sh("touch /srv/img/appdir/new"),
            vec!["CAP_DAC_OVERRIDE"],
        ),
        // mkdir under an image directory.
        workload("img-mkdir", sh("mkdir /srv/img/newdir"), vec![]),
        // chown of an image file.
        workload(
            "img-chown",
            sh("chown 1000:1000 /srv/img/root-file"),
            vec!["CAP_CHOWN"],
        ),
    ]
}

#[test]
fn copy_up_profiles_are_the_same_as_on_vfs() {
    require_engine();
    let data = Scratch::new("copyup");
    let workloads = copy_up_workloads();
    let profiles = prove_workloads("copyup", &workloads, &data);
    let driver = storage_driver();
    for (w, profile) in workloads.iter().zip(&profiles) {
        for cap in ["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"] {
            assert!(
                !names_of(profile, "allowlist").iter().any(|c| c == cap),
                "{}: {cap} on the allowlist: {profile}",
                w.name
            );
        }
        let borrowed = names_of(profile, "borrowed");
        if driver != "overlay2" {
            assert!(borrowed.is_empty(), "{}: {driver}: {profile}", w.name);
            continue;
        }
        // Seen, and reported apart, with where the kernel made them.
        assert!(
            !borrowed.is_empty(),
            "{}: no borrowed check on overlay2: {profile}",
            w.name
        );
        for usage in profile["capabilities"].as_array().unwrap() {
            if usage["class"] != "borrowed" {
                continue;
            }
            assert!(
                borrowed.iter().any(|c| usage["name"] == c.as_str()),
                "{}: {usage}",
                w.name
            );
            let evidence = usage["evidence"].as_array().unwrap();
            assert!(
                evidence
                    .iter()
                    .any(|e| e["class"] == "borrowed" && e["call_site"].is_string()),
                "{}: borrowed evidence without a call site: {usage}",
                w.name
            );
        }
    }
}

/// The engine's storage driver (`overlay2`, `vfs`, …).
fn storage_driver() -> String {
    let out = docker(&["info", "--format", "{{.Driver}}"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Records each workload in its own container under the default set, checks
/// its profile against the expected set, then proves it: the workload runs
/// with exactly the exported flags (sufficient) and fails when any one of
/// them is dropped (minimal). Returns the profiles, in order.
fn prove_workloads(tag: &str, workloads: &[Workload], data: &Scratch) -> Vec<Value> {
    let secret = data.path("secret");
    let names: Vec<String> = workloads
        .iter()
        .map(|w| format!("capprof-t-{}-{}", w.name, std::process::id()))
        .collect();
    remove(&names);

    let rec = Recording::start(tag, &[]);
    for (w, name) in workloads.iter().zip(&names) {
        fixture_file(&secret, 1000, 1000, 0o600);
        let out = docker_run(Some(name), &w.flags, &w.cmd);
        assert!(
            out.status.success(),
            "{} failed under the default set: {}",
            w.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&names);

    let mut profiles = vec![];
    for (w, name) in workloads.iter().zip(&names) {
        let profile = read_profile(&dir, name);
        assert_eq!(profile["subject"]["kind"], "container");
        assert_eq!(profile["subject"]["name"], name.as_str());
        assert_eq!(profile["subject"]["runtime"], "docker");
        assert_eq!(
            profile["subject"]["capabilities"].as_array().map(Vec::len),
            Some(14),
            "{profile}"
        );
        assert_eq!(
            names_of(&profile, "required"),
            w.expected,
            "{}: {}",
            w.name,
            profile["capabilities"]
        );
        assert_eq!(names_of(&profile, "allowlist"), w.expected, "{}", w.name);
        // The runtime's own setup checks never leak into the allowlist.
        assert!(
            !profile["runtime_setup"].as_array().unwrap().is_empty(),
            "{}: runc's setup was seen",
            w.name
        );

        let flags = export_flags(&dir, name);
        assert_eq!(flags[0], "--cap-drop=ALL");
        fixture_file(&secret, 1000, 1000, 0o600);
        let out = docker_run(None, &[flags.clone(), w.flags.clone()].concat(), &w.cmd);
        assert!(
            out.status.success(),
            "{} is not sufficient with {flags:?}: {}",
            w.name,
            String::from_utf8_lossy(&out.stderr)
        );
        for drop in 1..flags.len() {
            let mut fewer = flags.clone();
            let dropped = fewer.remove(drop);
            fixture_file(&secret, 1000, 1000, 0o600);
            let out = docker_run(None, &[fewer, w.flags.clone()].concat(), &w.cmd);
            assert!(
                !out.status.success(),
                "{} still works without {dropped}: the profile is not minimal",
                w.name
            );
        }
        profiles.push(profile);
    }
    profiles
}

fn names_of(profile: &Value, field: &str) -> Vec<String> {
    names(profile, field)
}

#[test]
fn docker_exec_setup_is_not_the_workloads() {
    require_engine();
    let name = format!("capprof-t-exec-{}", std::process::id());
    remove(std::slice::from_ref(&name));
    let rec = Recording::start("exec", &["--container", &name]);
    let out = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        &image(),
        "sleep",
        "30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = docker(&["exec", &name, "chroot", "/", "true"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let dir = rec.stop();
    remove(std::slice::from_ref(&name));
    let profile = read_profile(&dir, &name);
    // Only the exec'd chroot is the workload's; runc's exec setup is not.
    assert_eq!(
        names_of(&profile, "required"),
        ["CAP_SYS_CHROOT"],
        "{profile}"
    );
    let setup: Vec<&str> = profile["runtime_setup"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        setup.contains(&"CAP_SYS_ADMIN"),
        "runc's setup is reported apart: {setup:?}"
    );
}

#[test]
fn short_lived_containers_all_get_named_profiles() {
    require_engine();
    let rec = Recording::start("short", &[]);
    let names: Vec<String> = (0..20)
        .map(|i| format!("capprof-t-short{i}-{}", std::process::id()))
        .collect();
    for name in &names {
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            name,
            &image(),
            "true",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    for name in &names {
        let profile = read_profile(&dir, name);
        assert_eq!(profile["subject"]["name"], name.as_str());
        assert!(names_of(&profile, "allowlist").is_empty(), "{profile}");
    }
}

#[test]
fn unreachable_engine_is_a_clear_error() {
    require_root();
    let dir = Scratch::new("noengine");
    let out = Command::new(CAPPROF)
        .args([
            "record",
            "--out",
            dir.0.to_str().unwrap(),
            "--duration",
            "1",
        ])
        .env("DOCKER_HOST", "unix:///nonexistent/capprof.sock")
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "unix:///nonexistent/capprof.sock");
}
