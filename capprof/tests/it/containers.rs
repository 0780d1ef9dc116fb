//! Container tests against a real engine (`cargo xtask test` starts a
//! private dockerd when none answers and builds the busybox test image).
//! Each workload is recorded, its profile checked against the expected
//! set, then proven: it runs with exactly the exported flags (sufficient)
//! and fails when any one of them is dropped (minimal).

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::common::{engine::*, *};

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

fn remove(names: &[String]) {
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let _ = docker(&args);
}

#[test]
#[ignore = "needs root and a Docker engine"]
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
#[ignore = "needs root and a Docker engine"]
fn copy_up_profiles_are_the_same_as_on_vfs() {
    require_engine();
    let data = Scratch::new("copyup");
    let workloads = copy_up_workloads();
    let profiles = prove_workloads("copyup", &workloads, &data);
    let driver = storage_driver();
    for (w, profile) in workloads.iter().zip(&profiles) {
        for cap in ["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"] {
            assert!(
                !names(profile, "allowlist").iter().any(|c| c == cap),
                "{}: {cap} on the allowlist: {profile}",
                w.name
            );
        }
        let borrowed = names(profile, "borrowed");
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
    let ctr_names: Vec<String> = workloads
        .iter()
        .map(|w| format!("capprof-t-{}-{}", w.name, std::process::id()))
        .collect();
    remove(&ctr_names);

    let rec = Recording::start(tag, &[]);
    for (w, name) in workloads.iter().zip(&ctr_names) {
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
    remove(&ctr_names);

    let mut profiles = vec![];
    for (w, name) in workloads.iter().zip(&ctr_names) {
        let profile = read_profile(&dir, name);
        assert_eq!(profile["subject"]["kind"], "container");
        assert_eq!(profile["subject"]["name"], name.as_str());
        assert_eq!(profile["subject"]["runtime"], "docker");
        assert_eq!(
            profile["subject"]["capabilities"].as_array().map(Vec::len),
            Some(14),
            "{profile}"
        );
        assert_exact(&profile, w.name, &w.expected);

        let flags: Vec<String> = export(&dir, name, &["--format", "docker"])
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_sufficient_and_minimal(w.name, &flags, |flags| {
            fixture_file(&secret, 1000, 1000, 0o600);
            docker_run(None, &[flags, w.flags.as_slice()].concat(), &w.cmd)
        });
        profiles.push(profile);
    }
    profiles
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn docker_exec_setup_is_not_the_workloads() {
    require_engine();
    let name = format!("capprof-t-exec-{}", std::process::id());
    remove(std::slice::from_ref(&name));
    let rec = Recording::start("exec", &["--container", &name]);
    let out = docker_run(Some(&name), &["-d".into()], &["sleep", "30"]);
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
    assert_eq!(names(&profile, "required"), ["CAP_SYS_CHROOT"], "{profile}");
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
#[ignore = "needs root and a Docker engine"]
fn short_lived_containers_all_get_named_profiles() {
    require_engine();
    let rec = Recording::start("short", &[]);
    let ctr_names: Vec<String> = (0..20)
        .map(|i| format!("capprof-t-short{i}-{}", std::process::id()))
        .collect();
    for name in &ctr_names {
        let out = docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            name,
            &test_image(),
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
    for name in &ctr_names {
        let profile = read_profile(&dir, name);
        assert_eq!(profile["subject"]["name"], name.as_str());
        assert!(names(&profile, "allowlist").is_empty(), "{profile}");
    }
}

#[test]
#[ignore = "needs root and a Docker engine"]
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
