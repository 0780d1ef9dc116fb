//! Recording that begins late, and a daemon that restarts, on the real
//! engine: a container already running when `record` or the daemon starts
//! gets what it does afterwards on its allowlist, with a warning in every
//! output; a restart keeps a complete profile complete, its times in
//! order, a container removed meanwhile named and exited, and what the
//! syscall hooks saw while the daemon was down.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::common::{daemon::TestDaemon, engine::*, *};

fn name(tag: &str) -> String {
    format!("capprof-t-{tag}-{}", std::process::id())
}

/// Sleeps through the start of recording, then needs CHOWN and MKNOD.
const LATE: &str = "sleep 8; touch /tmp/a; chown 1 /tmp/a; mknod /tmp/n c 1 3; sleep 30";

/// `docker run -d --network none --name NAME IMAGE sh -c SCRIPT`.
fn run_detached(name: &str, script: &str) {
    let _ = docker(&["rm", "-f", name]);
    let out = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        &test_image(),
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
}

fn time(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"));
    humantime::parse_rfc3339_weak(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The daemon's profile of `ctr`, if it has one yet.
fn daemon_profile(d: &TestDaemon, ctr: &str) -> Option<Value> {
    let out = d.ask(&["profile", ctr, "--format", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn allows(profile: &Option<Value>, caps: &[&str]) -> bool {
    profile.as_ref().is_some_and(|p| {
        let allowlist = names(p, "allowlist");
        caps.iter().all(|c| allowlist.iter().any(|a| a == c))
    })
}

/// The daemon's `ps` line of `ctr`.
fn ps_line(d: &TestDaemon, ctr: &str) -> Option<Value> {
    let out = d.ask(&["ps", "--format", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == ctr)
        .cloned()
}

/// The raw HTTP answer of the daemon's API to `GET path`, lower-cased.
fn api_get(socket: &Path, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.to_lowercase()
}

/// The ports of the profile's conditional binds.
fn conditional_ports(profile: &Option<Value>) -> Vec<u64> {
    let Some(list) = profile.as_ref().and_then(|p| p["conditional"].as_array()) else {
        return vec![];
    };
    let mut ports: Vec<u64> = list.iter().filter_map(|c| c["port"].as_u64()).collect();
    ports.sort();
    ports.dedup();
    ports
}

/// `record` started 3 s after the container: what the container does once
/// recording runs is the workload's, the profile is partial from when the
/// recording began, and every output of it says so.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_running_before_record_gets_what_it_does_afterwards() {
    require_engine();
    let ctr = name("late-rec");
    run_detached(&ctr, LATE);
    std::thread::sleep(Duration::from_secs(3));
    let before = SystemTime::now();
    let rec = Recording::start("late-rec", &["--container", &ctr]);
    let after = SystemTime::now();
    // The chown and mknod come 8 s after the container's start.
    std::thread::sleep(Duration::from_secs(8));
    let dir = rec.stop();
    let _ = docker(&["rm", "-f", &ctr]);

    let profile = read_profile(&dir, &ctr);
    let allowlist = names(&profile, "allowlist");
    assert_eq!(allowlist, ["CAP_CHOWN", "CAP_MKNOD"], "{profile}");
    let partial = &profile["observation"]["partial"];
    assert!(partial.is_object(), "not marked partial: {profile}");
    let began = time(&partial["recording_started"]);
    assert!(
        began >= before - Duration::from_secs(1) && began <= after,
        "recording_started is not when recording began: {partial}"
    );

    let path = profile_path(&dir, &ctr);
    let path = path.to_str().unwrap();
    let warns = |args: &[&str], on_stdout: bool| {
        let out = capprof(args);
        assert!(out.status.success(), "{args:?}: {}", output_text(&out));
        let text = if on_stdout { &out.stdout } else { &out.stderr };
        let text = String::from_utf8_lossy(text);
        assert!(text.contains("already running"), "{args:?}: {text}");
    };
    warns(&["export", "-f", "docker", path], false);
    warns(&["export", "-f", "k8s", path], true);
    warns(&["export", "-f", "oci", path], true);
    warns(&["diff", path, path], false);
    warns(&["report", "-f", "markdown", path], true);
    warns(&["report", "-f", "html", path], true);
}

/// A daemon started while the container runs (a first install on a busy
/// node): the same allowlist, and its table, exports and API routes warn.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_daemon_started_while_a_container_runs_profiles_it_and_warns() {
    require_engine();
    let ctr = name("late-daemon");
    run_detached(&ctr, LATE);
    std::thread::sleep(Duration::from_secs(3));
    let d = TestDaemon::start(Scratch::new("late-daemon"), &[]);
    wait_until("CHOWN and MKNOD", Duration::from_secs(20), || {
        allows(&daemon_profile(&d, &ctr), &["CAP_CHOWN", "CAP_MKNOD"])
    });
    let profile = daemon_profile(&d, &ctr).unwrap();
    assert!(
        profile["observation"]["partial"].is_object(),
        "not marked partial: {profile}"
    );

    let out = d.ask(&["profile", &ctr, "-f", "docker"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already running"), "{stderr}");
    for format in ["table", "k8s", "compose", "systemd"] {
        let out = d.ask(&["profile", &ctr, "-f", format]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("already running"), "{format}: {stdout}");
    }
    for route in ["/export?format=docker", "/export?format=k8s", ""] {
        let answer = api_get(&d.socket(), &format!("/v1/containers/{ctr}{route}"));
        assert!(
            answer.contains("\r\nwarning: 199 capprof") && answer.contains("already running"),
            "{route}: {answer}"
        );
    }
    let _ = docker(&["rm", "-f", &ctr]);
}

/// A container seen from its start stays complete across a routine
/// restart, and its observation starts before its last check.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_restart_keeps_a_complete_profile_complete() {
    require_engine();
    let ctr = name("late-restart");
    let mut d = TestDaemon::start(Scratch::new("late-restart"), &[]);
    run_detached(&ctr, "touch /tmp/f; chown 1000 /tmp/f; sleep 120");
    wait_until("CHOWN", Duration::from_secs(15), || {
        allows(&daemon_profile(&d, &ctr), &["CAP_CHOWN"])
    });
    d.start_again();
    // A flush after the restart.
    std::thread::sleep(Duration::from_millis(2500));
    let profile = daemon_profile(&d, &ctr).unwrap();
    assert_eq!(names(&profile, "allowlist"), ["CAP_CHOWN"], "{profile}");
    assert!(
        profile["observation"]["partial"].is_null(),
        "partial after a restart: {profile}"
    );
    let file = d.dir.path(&format!("state/profiles/{ctr}.json"));
    let out = capprof(&["export", "--require-complete", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let line = ps_line(&d, &ctr).expect("in ps");
    assert!(
        time(&line["first_seen"]) <= time(&line["last_seen"]),
        "first_seen after last_seen: {line}"
    );
    let _ = docker(&["rm", "-f", &ctr]);
}

/// A container removed while the daemon was down comes back under its
/// name, as exited, with its profile.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_removed_while_the_daemon_was_down_comes_back_exited() {
    require_engine();
    let ctr = name("late-gone");
    let mut d = TestDaemon::start(Scratch::new("late-gone"), &[]);
    run_detached(&ctr, "touch /tmp/f; chown 1000 /tmp/f; sleep 120");
    wait_until("CHOWN", Duration::from_secs(15), || {
        allows(&daemon_profile(&d, &ctr), &["CAP_CHOWN"])
    });
    d.stop();
    let _ = docker(&["rm", "-f", &ctr]);
    d.start_again();
    wait_until("exited, by name", Duration::from_secs(10), || {
        ps_line(&d, &ctr).is_some_and(|line| line["state"] == "exited")
    });
    assert!(allows(&daemon_profile(&d, &ctr), &["CAP_CHOWN"]));
}

/// Binds the syscall hooks see, before the restart and while the daemon is
/// down, are both in the profile after it.
#[test]
#[ignore = "needs root and a Docker engine"]
fn binds_made_while_the_daemon_is_down_are_kept() {
    require_engine();
    let ctr = name("late-bind");
    let mut d = TestDaemon::start(Scratch::new("late-bind"), &[]);
    run_detached(&ctr, "sleep 120");
    let httpd = |port: &str| {
        let out = docker(&["exec", &ctr, "httpd", "-p", port, "-h", "/tmp"]);
        assert!(out.status.success(), "{}", output_text(&out));
    };
    httpd("81");
    wait_until("the bind of port 81", Duration::from_secs(15), || {
        conditional_ports(&daemon_profile(&d, &ctr)) == [81]
    });
    d.stop();
    httpd("80");
    std::thread::sleep(Duration::from_millis(500));
    d.start_again();
    wait_until(
        "the binds of ports 80 and 81",
        Duration::from_secs(15),
        || conditional_ports(&daemon_profile(&d, &ctr)) == [80, 81],
    );
    let _ = docker(&["rm", "-f", &ctr]);
}

/// Fills the ring buffer: busybox's httpd binding port 81 under 4,500
/// names (`exec -a` picks the applet, the link's name is the comm), each a
/// first sighting with its own conditional and exec record. (Checks do not
/// fill it: each counter sends evidence for its first few checks only.)
const FILL: &str = "i=0; while [ $i -lt 4500 ]; do ln -s /usr/bin/busybox /tmp/s$i; \
    (exec -a httpd /tmp/s$i -p 81 -h /tmp) 2>/dev/null; i=$((i+1)); done; true";

/// A bind made while the daemon is down and the ring buffer is full (a long
/// downtime on a busy node) is still in the profile after the restart: the
/// record waits in the pinned backlog.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_bind_made_while_the_ring_buffer_is_full_is_kept() {
    require_engine();
    let ctr = name("late-full");
    let mut d = TestDaemon::start(Scratch::new("late-full"), &[]);
    run_detached(&ctr, "sleep 300");
    wait_until("the container's profile", Duration::from_secs(15), || {
        daemon_profile(&d, &ctr).is_some()
    });
    d.stop();
    let out = docker(&["exec", &ctr, "sh", "-c", FILL]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = docker(&["exec", &ctr, "httpd", "-p", "80", "-h", "/tmp"]);
    assert!(out.status.success(), "{}", output_text(&out));
    d.start_again();
    wait_until("the bind of port 80", Duration::from_secs(30), || {
        conditional_ports(&daemon_profile(&d, &ctr)).contains(&80)
    });
    let profile = daemon_profile(&d, &ctr).unwrap();
    assert!(
        profile["observation"]["lost_records"].as_u64() > Some(0),
        "the ring buffer was never full: {}",
        profile["observation"]
    );
    let _ = docker(&["rm", "-f", &ctr]);
}

/// setpriv run while the daemon is down: its capset() and the exec that
/// loses what it raised are both seen, and after the restart the profile
/// has them as transient, off the allowlist, not kept.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_capset_lost_at_exec_while_the_daemon_is_down_is_transient() {
    require_engine();
    let ctr = name("late-setpriv");
    let tools =
        std::env::var("CAPPROF_TOOLS_IMAGE").unwrap_or_else(|_| "capprof-tools:test".into());
    let mut d = TestDaemon::start(Scratch::new("late-setpriv"), &[]);
    let _ = docker(&["rm", "-f", &ctr]);
    let out = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        &tools,
        "sleep",
        "120",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_until("the container's profile", Duration::from_secs(15), || {
        daemon_profile(&d, &ctr).is_some()
    });
    d.stop();
    let out = docker(&[
        "exec",
        &ctr,
        "/usr/bin/setpriv",
        "--reuid=1000",
        "--regid=1000",
        "--clear-groups",
        "id",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    d.start_again();
    let transient = |p: &Option<Value>| {
        p.as_ref()
            .and_then(|p| p["transient"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    wait_until(
        "setpriv's transient capabilities",
        Duration::from_secs(15),
        || transient(&daemon_profile(&d, &ctr)) == 14,
    );
    let profile = daemon_profile(&d, &ctr).unwrap();
    assert!(
        profile["kept"].as_array().is_none_or(Vec::is_empty),
        "{profile}"
    );
    assert!(
        !names(&profile, "allowlist").contains(&"CAP_AUDIT_WRITE".to_owned()),
        "{profile}"
    );
    let _ = docker(&["rm", "-f", &ctr]);
}
