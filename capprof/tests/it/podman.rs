//! Podman as a second real engine. Each test starts `podman system service`
//! on a private socket, over a private store, and points `capprof record
//! --engine unix://SOCK` at its Docker-compatible API. Workloads from the
//! docker matrix run under Podman; their profiles must be exact, and the
//! exported `--format podman` flags sufficient and minimal, as in
//! containers.rs.
//!
//! How Podman runs here (ENVIRONMENT.md): cgroupfs (so a container's cgroup
//! is `/libpod_parent/libpod-<id>`), runc (crun refuses hybrid cgroups), and
//! explicit ulimits (root lacks CAP_SYS_RESOURCE, so podman could not raise
//! them). The CLI and the service share every global flag, so they share one
//! store and one events log: with `--events-backend=file` the service's
//! compat `/events` stream carries the CLI's `start`/`die` with the name.
//!
//! The private store uses the vfs driver. With overlay, a write that copies
//! a lower directory up (`touch /tmp/f`) makes overlayfs check
//! DAC_OVERRIDE, DAC_READ_SEARCH and SYS_ADMIN with the mounter's
//! credentials from the container's task; capprof reports those as
//! `borrowed`, which containers.rs tests on Docker's overlay2.
//!
//! The image is the docker tests' `CAPPROF_TEST_IMAGE`, moved over with
//! `docker save | podman load`, so both engines run the same busybox.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use capprof::capability::Cap;
use serde_json::Value;

use crate::common::{engine::*, *};

/// How long the service gets to answer on its socket.
const SERVICE_START: Duration = Duration::from_secs(30);
/// How long it gets to exit after SIGTERM before SIGKILL.
const SERVICE_STOP: Duration = Duration::from_secs(10);

/// `podman run` flags every container here needs.
const RUN_FLAGS: &[&str] = &[
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// Podman 4's default capabilities (containers.conf `default_capabilities`).
const PODMAN_DEFAULTS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_SETFCAP",
];

/// A private Podman: its store, its events log and its compat API service,
/// all under one directory. Drop removes the containers, stops the service
/// and removes the directory.
struct Podman {
    dir: PathBuf,
    service: Child,
    image: String,
}

impl Podman {
    fn start(tag: &str) -> Self {
        require_root();
        let version = Command::new("podman").arg("--version").output();
        match &version {
            Ok(out) if out.status.success() => {}
            _ => panic!(
                "podman is not installed or does not run ({version:?}); \
                 `cargo xtask setup` installs it (apt-get install podman)"
            ),
        }
        let dir = std::env::temp_dir().join(format!("capprof-podman-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("podman.sock");
        let log = std::fs::File::create(dir.join("service.log")).unwrap();
        let mut cmd = Command::new("podman");
        cmd.args(global_flags(&dir))
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let service = cmd.spawn().expect("podman system service starts");
        // From here on, Drop cleans up.
        let mut podman = Self {
            dir,
            service,
            image: String::new(),
        };
        podman.wait_until_ready();
        podman.image = podman.load_image();
        podman
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    /// `--engine` for capprof record.
    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + SERVICE_START;
        loop {
            if let Some(status) = self.service.try_wait().unwrap() {
                panic!(
                    "podman system service exited ({status}): {}",
                    self.service_log()
                );
            }
            if ping(&self.socket()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "podman system service did not answer at {} within {SERVICE_START:?}: {}",
                self.endpoint(),
                self.service_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("service.log")).unwrap_or_default()
    }

    /// `docker save IMAGE | podman load`; returns the name Podman gives it.
    fn load_image(&self) -> String {
        let image = test_image();
        let mut save = Command::new("docker")
            .args(["save", &image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the docker CLI runs");
        let load = Command::new("podman")
            .args(global_flags(&self.dir))
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        let saved = save.wait().unwrap();
        assert!(
            saved.success(),
            "docker save {image} failed ({saved}); run through `cargo xtask test`, which builds it"
        );
        assert!(
            load.status.success(),
            "podman load failed: {}",
            output_text(&load)
        );
        let local = format!("localhost/{image}");
        assert!(
            self.podman(&["image", "exists", &local]).status.success(),
            "podman load did not give {local}: {}",
            output_text(&load)
        );
        local
    }

    /// The podman CLI on this private store.
    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(global_flags(&self.dir))
            .args(args)
            .output()
            .expect("podman runs")
    }

    /// `podman run` of the test image: named and kept, or `--rm`.
    fn run(&self, name: Option<&str>, flags: &[String], cmd: &[&str]) -> Output {
        let args = run_args(RUN_FLAGS, name, flags, &self.image, cmd);
        self.podman(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "--all", "--force", "--time", "0"]);
        stop_child(&mut self.service, SERVICE_STOP);
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("could not remove {}: {e}", self.dir.display());
        }
    }
}

/// The global flags the CLI and the service share: one store, one events
/// log, cgroupfs and runc.
fn global_flags(dir: &Path) -> Vec<String> {
    vec![
        "--cgroup-manager=cgroupfs".into(),
        "--events-backend=file".into(),
        "--runtime=runc".into(),
        "--storage-driver=vfs".into(),
        format!("--root={}", dir.join("root").display()),
        format!("--runroot={}", dir.join("runroot").display()),
        format!("--tmpdir={}", dir.join("tmp").display()),
    ]
}

/// Whether the compat API answers `GET /_ping` with 200 on `sock`.
fn ping(sock: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200")
}

/// `capprof record --engine unix://SOCK` in the background, on `podman`.
fn record(tag: &str, podman: &Podman, extra: &[&str]) -> Recording {
    let endpoint = podman.endpoint();
    let mut args = vec!["--engine", &endpoint];
    args.extend_from_slice(extra);
    let rec = Recording::start(tag, &args);
    assert!(
        rec.banner.contains("podman"),
        "capprof took the engine for another: {}",
        rec.banner
    );
    assert!(
        rec.banner.contains("/libpod_parent"),
        "capprof does not watch Podman's cgroups: {}",
        rec.banner
    );
    rec
}

fn subject_caps(profile: &Value) -> Option<Vec<String>> {
    profile["subject"]["capabilities"].as_array().map(|caps| {
        caps.iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    })
}

/// A workload: capabilities to add to Podman's defaults while recording
/// (Podman 4 grants no NET_RAW), a command, and what it is known to need.
struct Workload {
    name: &'static str,
    record_caps: &'static [&'static str],
    cmd: Vec<&'static str>,
    expected: Vec<&'static str>,
}

fn workloads() -> Vec<Workload> {
    let sh = |s: &'static str| vec!["sh", "-c", s];
    vec![
        Workload {
            name: "chown",
            record_caps: &[],
            cmd: sh("touch /tmp/f && chown 1000:1000 /tmp/f"),
            expected: vec!["CAP_CHOWN"],
        },
        Workload {
            name: "su",
            record_caps: &[],
            cmd: vec!["su", "-s", "/bin/sh", "app", "-c", "id"],
            expected: vec!["CAP_SETGID", "CAP_SETUID"],
        },
        Workload {
            name: "kill",
            record_caps: &[],
            cmd: sh("su -s /bin/sh app -c 'sleep 5' & sleep 0.5; kill $!"),
            expected: vec!["CAP_KILL", "CAP_SETGID", "CAP_SETUID"],
        },
        Workload {
            name: "chroot",
            record_caps: &[],
            cmd: vec!["chroot", "/", "true"],
            expected: vec!["CAP_SYS_CHROOT"],
        },
        Workload {
            name: "ping",
            record_caps: &["NET_RAW"],
            cmd: vec!["ping", "-c1", "-W1", "127.0.0.1"],
            expected: vec!["CAP_NET_RAW"],
        },
        Workload {
            name: "nothing",
            record_caps: &[],
            cmd: vec!["true"],
            expected: vec![],
        },
    ]
}

fn cap_add_flags(caps: &[&str]) -> Vec<String> {
    caps.iter().map(|c| format!("--cap-add={c}")).collect()
}

#[test]
#[ignore = "needs root and podman"]
fn podman_matrix_profiles_are_exact_sufficient_and_minimal() {
    let podman = Podman::start("matrix");
    let ctr_names: Vec<String> = workloads()
        .iter()
        .map(|w| format!("capprof-pt-{}-{}", w.name, std::process::id()))
        .collect();

    let rec = record("podman-matrix", &podman, &[]);
    for (w, name) in workloads().iter().zip(&ctr_names) {
        let out = podman.run(Some(name), &cap_add_flags(w.record_caps), &w.cmd);
        assert!(
            out.status.success(),
            "{} failed under Podman's default set: {}",
            w.name,
            output_text(&out)
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();

    for (w, name) in workloads().iter().zip(&ctr_names) {
        let profile = read_profile(&dir, name);
        let subject = &profile["subject"];
        assert_eq!(subject["kind"], "container", "{profile}");
        assert_eq!(subject["runtime"], "podman", "{profile}");
        assert_eq!(
            subject["name"],
            name.as_str(),
            "the name comes from Podman's compat API: {profile}"
        );
        assert!(
            subject["cgroup"]
                .as_str()
                .is_some_and(|c| c.starts_with("/libpod_parent/libpod-")),
            "{profile}"
        );
        assert_exact(&profile, w.name, &w.expected);

        let flags: Vec<String> = export(&dir, name, &["--format", "podman"])
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_sufficient_and_minimal(w.name, &flags, |flags| podman.run(None, flags, &w.cmd));
    }

    // The comparison with Podman's defaults, for the workload that needs
    // one of them and the one that needs one Podman does not grant.
    let chown = export(&dir, &ctr_names[0], &["--against", "podman"]);
    assert!(
        chown.contains("podman grants 11 by default: drop 10, keep 1, add 0"),
        "{chown}"
    );
    let ping = export(&dir, &ctr_names[4], &["--against", "podman"]);
    assert!(
        ping.contains("podman grants 11 by default: drop 11, keep 0, add 1"),
        "{ping}"
    );
}

#[test]
#[ignore = "needs root and podman"]
fn podman_default_set_is_capprofs() {
    let podman = Podman::start("defaults");
    let out = podman.run(None, &[], &["grep", "CapBnd", "/proc/self/status"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no CapBnd in {text:?}"));
    let mask = u64::from_str_radix(hex, 16).unwrap();
    let mut real: Vec<String> = (0..64)
        .filter(|bit| mask & (1 << bit) != 0)
        .map(|bit| Cap::from_number(bit).unwrap().name())
        .collect();
    real.sort();

    // capprof's idea of them: the defaults of `--against podman`, which
    // do not depend on the profile.
    let out = capprof(&[
        "export",
        "--against",
        "podman",
        "--format",
        "json",
        SAMPLE_PROFILE,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let comparison: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut defaults: Vec<String> = comparison["defaults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    defaults.sort();
    assert_eq!(
        defaults, real,
        "Runtime::Podman.default_caps() differs from what Podman {hex} really grants"
    );
}

#[test]
#[ignore = "needs root and podman"]
fn podman_container_filter_resolves_names() {
    let podman = Podman::start("filter");
    let name = format!("capprof-pt-wanted-{}", std::process::id());
    let rec = record("podman-filter", &podman, &["--container", &name]);
    let out = podman.run(Some(&name), &[], &["chroot", "/", "true"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = podman.run(
        Some(&format!("capprof-pt-other-{}", std::process::id())),
        &[],
        &["chroot", "/", "true"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();

    // The name comes from Podman's events and inspect replies; only the
    // wanted container is written.
    let written: Vec<String> = std::fs::read_dir(dir.path("profiles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert_eq!(
        written,
        [format!("{name}.json")],
        "--container {name} keeps only that container"
    );
    let profile = read_profile(&dir, &name);
    assert_eq!(profile["subject"]["name"], name.as_str(), "{profile}");
    assert_eq!(profile["subject"]["runtime"], "podman", "{profile}");
    assert_eq!(
        names(&profile, "allowlist"),
        ["CAP_SYS_CHROOT"],
        "{profile}"
    );
}

/// Each profile's subject lists the capabilities its container really ran
/// with, as `podman inspect` reports them (EffectiveCaps). Short-lived
/// containers are the hard case: capprof asks the compat API after Podman's
/// delayed events, while the container is `stopped`.
#[test]
#[ignore = "needs root and podman"]
fn podman_subjects_carry_the_containers_capabilities() {
    let podman = Podman::start("subject");
    let pid = std::process::id();
    let mut runs: Vec<(String, Vec<String>)> = (0..5)
        .map(|i| (format!("capprof-pt-default{i}-{pid}"), vec![]))
        .collect();
    // Podman's compat inspect reports CapAdd/CapDrop against the OCI default
    // bounding set (Docker's 14), not Podman's own 11: `--cap-add=NET_RAW`
    // shows as `CapAdd: []`, `CapDrop: [AUDIT_WRITE, MKNOD]`.
    runs.push((
        format!("capprof-pt-netraw-{pid}"),
        vec!["--cap-add=NET_RAW".into()],
    ));
    runs.push((
        format!("capprof-pt-mknod-{pid}"),
        vec!["--cap-add=MKNOD".into()],
    ));
    runs.push((
        format!("capprof-pt-chownonly-{pid}"),
        vec!["--cap-drop=ALL".into(), "--cap-add=CHOWN".into()],
    ));

    let rec = record("podman-subject", &podman, &[]);
    for (name, flags) in &runs {
        let out = podman.run(Some(name), flags, &["true"]);
        assert!(out.status.success(), "{name}: {}", output_text(&out));
    }
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();

    let mut wrong = vec![];
    for (name, flags) in &runs {
        let inspected = podman.podman(&["inspect", "--format", "{{.EffectiveCaps}}", name]);
        assert!(inspected.status.success(), "{}", output_text(&inspected));
        let mut real: Vec<String> = String::from_utf8_lossy(&inspected.stdout)
            .trim()
            .trim_matches(['[', ']'])
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        real.sort();
        if flags.is_empty() {
            let mut defaults: Vec<String> = PODMAN_DEFAULTS.iter().map(|s| s.to_string()).collect();
            defaults.sort();
            assert_eq!(real, defaults, "Podman's own default set changed");
        }
        let profile = read_profile(&dir, name);
        let mut caps = subject_caps(&profile);
        if let Some(caps) = caps.as_mut() {
            caps.sort();
        }
        if caps.as_ref() != Some(&real) {
            wrong.push(format!(
                "{name} {flags:?}: subject {caps:?}, podman inspect {real:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "subjects that do not match the container:\n{}",
        wrong.join("\n")
    );
}
