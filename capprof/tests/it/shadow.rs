//! Shadow mode on the real engine: the daemon compares a container with a
//! candidate allowlist, says it is safe to enforce while it is, and
//! reports the check enforcing would refuse once the container starts
//! needing a capability the candidate lacks: in `capprof ps`, the API, the
//! metrics and the log.

use std::{
    io::{Read as _, Write as _},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{daemon::TestDaemon, *};

fn image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

/// `capprof ps --format FORMAT`, which must succeed.
fn ps(daemon: &TestDaemon, format: &str) -> String {
    let out = daemon.ask(&["ps", "--format", format]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// GET `path` from the daemon's socket: the status line and the body.
fn get(daemon: &TestDaemon, path: &str) -> (String, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(daemon.socket()).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: capprof\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: capprof\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

fn container<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

#[test]
#[ignore = "needs root"]
fn shadow_mode_reports_a_capability_needed_mid_run() {
    require_root();
    let out = docker(&["version"]);
    assert!(out.status.success(), "no Docker engine answers");
    let dir = Scratch::new("shadow");
    let name = format!("capprof-shadow-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    // The candidate: this container needs no capability at all.
    let candidate = serde_json::json!({
        "schema": "capprof.profile/v1",
        "generator": "capprof test",
        "subject": {"kind": "container", "name": name},
        "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
        "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
        "capabilities": []
    });
    std::fs::create_dir_all(dir.path("candidates")).unwrap();
    std::fs::write(dir.path("candidates/web.json"), candidate.to_string()).unwrap();
    let candidates = dir.path("candidates").display().to_string();
    let metrics = format!("127.0.0.1:{}", 20000 + std::process::id() % 20000);
    let daemon = TestDaemon::start(dir, &["--shadow", &candidates, "--metrics", &metrics]);
    // Quiet for three seconds, then a chown: on a tmpfs, so that no
    // overlay copy-up makes checks of its own.
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--tmpfs",
        "/w",
        &image(),
        "sh",
        "-c",
        "sleep 3; touch /w/f && chown 1000:1000 /w/f; exec sleep 30",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // First: matched by name, no violation, safe to enforce.
    let mut safe = Value::Null;
    wait_until(
        "the container to be shadowed",
        Duration::from_secs(3),
        || {
            let list: Value = serde_json::from_str(&ps(&daemon, "json")).unwrap();
            safe = container(&list, &name).cloned().unwrap_or_default();
            !safe["shadow"].is_null()
        },
    );
    let shadow = &safe["shadow"];
    assert_eq!(shadow["matched_by"], "name", "{safe}");
    assert_eq!(shadow["violations"], serde_json::json!([]), "{safe}");
    assert!(shadow["safe_since"].is_string(), "{safe}");
    // The table fits 100 columns, so a long cell may wrap: look for its
    // words, not the whole phrase.
    let table = ps(&daemon, "table");
    assert!(
        table.contains("safe to") && table.contains("enforce"),
        "{table}"
    );

    // Then the chown: a violation, everywhere.
    wait_until("the violation", Duration::from_secs(15), || {
        let list: Value = serde_json::from_str(&ps(&daemon, "json")).unwrap();
        container(&list, &name).is_some_and(|c| {
            c["shadow"]["violations"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["capability"] == "CAP_CHOWN"))
        })
    });
    let table = ps(&daemon, "table");
    assert!(
        table.contains("NOT safe") && table.contains("CHOWN"),
        "{table}"
    );
    let (status, body) = get(&daemon, &format!("/v1/containers/{name}/shadow"));
    assert!(status.contains("200"), "{status} {body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        report["violations"][0]["capability"], "CAP_CHOWN",
        "{report}"
    );
    assert!(report["violations"][0]["checks"].as_u64().unwrap() >= 1);
    assert!(report["safe_since"].is_null(), "{report}");
    let (status, _) = get(&daemon, "/v1/containers/capprof-no-such-container/shadow");
    assert!(status.contains("404"), "{status}");

    let scraped = http_get(&metrics, "/metrics");
    assert!(
        scraped.contains("# HELP capprof_shadow_violations_total Capability checks that enforcing"),
        "{scraped}"
    );
    assert!(
        scraped.lines().any(|l| l.starts_with(&format!(
            "capprof_shadow_violations_total{{namespace=\"\",workload=\"\",container=\"{name}\",capability=\"CAP_CHOWN\"}} "
        ))),
        "{scraped}"
    );
    let mut logged = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !logged && Instant::now() < deadline {
        if let Ok(line) = daemon.lines.recv_timeout(Duration::from_millis(200)) {
            logged = line.contains("shadow: container")
                && line.contains(&name)
                && line.contains("CAP_CHOWN");
        }
    }
    assert!(logged, "no log line for the violation");
    let _ = docker(&["rm", "-f", &name]);
}

/// A candidate that names neither container nor image, or a directory
/// without profiles, stops the daemon at startup with one line.
#[test]
#[ignore = "needs root"]
fn bad_shadow_profiles_are_one_line_and_status_2() {
    require_root();
    let dir = Scratch::new("shadow-bad");
    std::fs::create_dir_all(dir.path("empty")).unwrap();
    std::fs::create_dir_all(dir.path("bpffs")).unwrap();
    let out = capprof(&[
        "daemon",
        "--state-dir",
        dir.path("state").to_str().unwrap(),
        "--socket",
        dir.path("run/s.sock").to_str().unwrap(),
        "--bpffs",
        dir.path("bpffs").to_str().unwrap(),
        "--shadow",
        dir.path("empty").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 2, "no shadow profile (*.json)");
    let _ = Command::new("umount").arg(dir.path("bpffs")).output();
}

/// Two candidate profiles for one container: the daemon refuses to start,
/// in one line naming both, rather than let the last one loaded win.
#[test]
#[ignore = "needs root"]
fn two_candidates_for_one_container_refuse_the_start() {
    require_root();
    let dir = Scratch::new("shadow-twice");
    std::fs::create_dir_all(dir.path("candidates")).unwrap();
    std::fs::create_dir_all(dir.path("bpffs")).unwrap();
    for (file, image) in [("old.json", "nginx:1"), ("new.json", "nginx:2")] {
        let candidate = serde_json::json!({
            "schema": "capprof.profile/v1",
            "generator": "capprof test",
            "subject": {"kind": "container", "name": "web", "image": image},
            "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
            "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
            "capabilities": []
        });
        std::fs::write(
            dir.path(&format!("candidates/{file}")),
            candidate.to_string(),
        )
        .unwrap();
    }
    let out = capprof(&[
        "daemon",
        "--state-dir",
        dir.path("state").to_str().unwrap(),
        "--socket",
        dir.path("run/s.sock").to_str().unwrap(),
        "--bpffs",
        dir.path("bpffs").to_str().unwrap(),
        "--shadow",
        dir.path("candidates").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 2, "both candidates for container \"web\"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("new.json") && stderr.contains("old.json"),
        "{stderr}"
    );
    let _ = Command::new("umount").arg(dir.path("bpffs")).output();
}
