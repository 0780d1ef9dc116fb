//! A daemon that runs for weeks: it leaves nothing behind when it stops
//! cleanly, notices containers whose cgroups are gone, and keeps its state
//! directory within the retention limits.

use std::time::Duration;

use crate::common::{daemon::TestDaemon, engine::*, *};

/// SIGTERM and SIGINT remove the API socket; a socket that took its place
/// meanwhile (not the daemon's) is left alone.
#[test]
#[ignore = "needs root"]
fn a_clean_stop_removes_the_socket_only_if_it_is_ours() {
    require_root();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = TestDaemon::start(Scratch::new(&format!("sock{signal}")), &[]);
        assert!(daemon.socket().exists());
        assert!(daemon.stop_with(signal).success());
        assert!(
            !daemon.socket().exists(),
            "signal {signal}: the socket was left behind"
        );
    }

    let mut daemon = TestDaemon::start(Scratch::new("sockother"), &[]);
    let socket = daemon.socket();
    // Someone else's socket now stands where the daemon's was.
    std::fs::rename(&socket, daemon.dir.path("moved.sock")).unwrap();
    let _theirs = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    assert!(daemon.stop_with(libc::SIGTERM).success());
    assert!(
        socket.exists(),
        "a socket that was not the daemon's was removed"
    );
}

/// The container's full id.
fn id_of(name: &str) -> String {
    let out = docker(&["inspect", "-f", "{{.Id}}", name]);
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The state of container `id` in `capprof ps`, if listed.
fn ps_state(daemon: &TestDaemon, id: &str) -> Option<String> {
    let out = daemon.ask(&["ps", "--format", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()?
        .iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["state"].as_str().map(str::to_owned))
}

/// Without an engine's events (none answers), a container whose cgroup
/// is gone is exited, not "running" forever.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_whose_cgroup_is_gone_is_exited_without_an_engine() {
    require_engine();
    let dir = Scratch::new("gone");
    let nowhere = format!("unix://{}", dir.path("no-engine.sock").display());
    let daemon = TestDaemon::start(dir, &["--engine", &nowhere]);
    let name = format!("capprof-gone-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let out = docker_run(
        Some(&name),
        &["-d".into()],
        &["sh", "-c", "touch /tmp/f; chown 1000 /tmp/f; sleep 3"],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let id = id_of(&name);
    wait_until("the container running", Duration::from_secs(10), || {
        ps_state(&daemon, &id).as_deref() == Some("running")
    });
    assert!(docker(&["wait", &name]).status.success());
    let _ = docker(&["rm", "-f", &name]);
    wait_until("the container exited", Duration::from_secs(10), || {
        ps_state(&daemon, &id).as_deref() == Some("exited")
    });
}

/// Exited containers' files go past the retention limits: the oldest
/// beyond --retain-max first, then every one older than --retain-for.
#[test]
#[ignore = "needs root and a Docker engine"]
fn exited_containers_files_are_removed_past_the_limits() {
    require_engine();
    let daemon = TestDaemon::start(
        Scratch::new("retain"),
        &["--retain-max", "2", "--retain-for", "6s"],
    );
    let tag = std::process::id();
    let names: Vec<String> = (0..4)
        .map(|i| format!("capprof-retain-{tag}-{i}"))
        .collect();
    let mut ids = vec![];
    for name in &names {
        let _ = docker(&["rm", "-f", name]);
        let out = docker_run(
            Some(name),
            &[],
            &["sh", "-c", "touch /tmp/f; chown 1000 /tmp/f"],
        );
        assert!(out.status.success(), "{}", output_text(&out));
        ids.push(id_of(name));
        let _ = docker(&["rm", "-f", name]);
    }
    let state = |id: &str| daemon.dir.path(&format!("state/containers/{id}.json"));
    let profile = |name: &str| daemon.dir.path(&format!("state/profiles/{name}.json"));
    // The newest stays a while; the two oldest are beyond the count.
    wait_until("the two oldest removed", Duration::from_secs(15), || {
        (0..2).all(|i| !state(&ids[i]).exists() && !profile(&names[i]).exists())
            && state(&ids[3]).exists()
            && profile(&names[3]).exists()
    });
    // Then age takes the rest.
    wait_until("the newest removed by age", Duration::from_secs(20), || {
        !state(&ids[3]).exists() && !profile(&names[3]).exists()
    });
    let out = daemon.ask(&["profile", &names[3]]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}
