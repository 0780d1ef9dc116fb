//! The daemon against a real engine: restarts (even `kill -9`) lose
//! nothing, churn keeps memory bounded, the API is consistent under
//! concurrency and root-only, corrupt state does not stop it, and SIGTERM
//! leaves complete profiles on disk.
//!
//! Each test mounts its own bpffs, so pins never leak between tests.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::{engine::*, *};

/// A daemon's private world: state dir, socket, and its own bpffs.
struct World {
    dir: Scratch,
}

impl World {
    fn new(tag: &str) -> Self {
        let dir = Scratch::new(tag);
        std::fs::create_dir_all(dir.path("bpffs")).unwrap();
        Self { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.path("state")
    }
    fn socket(&self) -> PathBuf {
        self.dir.path("run/capprof.sock")
    }
    fn bpffs(&self) -> PathBuf {
        self.dir.path("bpffs")
    }
    fn args(&self) -> Vec<String> {
        vec![
            "--state-dir".into(),
            self.state().display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
            "--bpffs".into(),
            self.bpffs().display().to_string(),
        ]
    }

    fn start(&self, extra: &[&str]) -> Daemon {
        let mut args = vec!["daemon".to_owned()];
        args.extend(self.args());
        if !extra.contains(&"--flush-interval") {
            args.extend(["--flush-interval".to_owned(), "1".to_owned()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(CAPPROF)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = echo_lines(child.stderr.take().unwrap(), "daemon");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut lines = vec![];
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                let ready = line.contains("daemon ready");
                lines.push(line);
                if ready {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited early ({status}): {lines:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not get ready: {lines:?}"
            );
        }
        Daemon {
            child,
            lines: rx,
            early: lines,
        }
    }

    fn ps(&self) -> Value {
        self.ask(&["ps"])
    }

    fn profile(&self, name: &str) -> Value {
        self.ask(&["profile", name])
    }

    /// `capprof ARGS… --format json --socket SOCK`: the daemon's answer.
    fn ask(&self, args: &[&str]) -> Value {
        let socket = self.socket();
        let mut all = args.to_vec();
        all.extend(["--format", "json", "--socket", socket.to_str().unwrap()]);
        let out = capprof(&all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = Command::new(CAPPROF)
            .args([
                "daemon",
                "--reset",
                "--bpffs",
                self.bpffs().to_str().unwrap(),
            ])
            .output();
        let _ = Command::new("umount").arg(self.bpffs()).output();
    }
}

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    early: Vec<String>,
}

impl Daemon {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }
    fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = self.child.wait().unwrap();
        let mut lines = std::mem::take(&mut self.early);
        lines.extend(drain_lines(&self.lines));
        (status, lines)
    }
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

/// A test that failed before stopping its daemon does not leave it
/// running: it would hold the World's pins (their programs attached on
/// every check of the machine, and `--reset` refused) and the test
/// runner's output.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn allowlist(profile: &Value) -> Vec<String> {
    names(profile, "allowlist")
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn restart_after_kill_9_loses_nothing() {
    require_engine();
    let world = World::new("d-restart");
    let name = format!("capprof-d-restart-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let daemon = world.start(&[]);
    assert!(
        docker_run(Some(&name), &["-d".into()], &["sleep", "60"])
            .status
            .success()
    );
    assert!(
        docker(&[
            "exec",
            &name,
            "sh",
            "-c",
            "touch /tmp/f && chown 1000 /tmp/f"
        ])
        .status
        .success()
    );
    wait_until("CHOWN in the daemon", Duration::from_secs(10), || {
        allowlist(&world.profile(&name)).contains(&"CAP_CHOWN".to_owned())
    });

    daemon.signal(libc::SIGKILL);
    let _ = daemon.wait();
    // While the daemon is down, the same container uses NET_RAW.
    assert!(
        docker(&["exec", &name, "ping", "-c1", "-W1", "127.0.0.1"])
            .status
            .success()
    );

    let daemon = world.start(&[]);
    wait_until(
        "CHOWN and NET_RAW after the restart",
        Duration::from_secs(10),
        || {
            let a = allowlist(&world.profile(&name));
            a == ["CAP_CHOWN", "CAP_NET_RAW"]
        },
    );
    let profile = world.profile(&name);
    let chown = capability(&profile, "CAP_CHOWN");
    assert_eq!(
        chown["by_class"]["required"], 1,
        "counted once, not twice, across the restart: {chown}"
    );
    daemon.signal(libc::SIGTERM);
    let (status, _) = daemon.wait();
    assert!(status.success());
    let _ = docker(&["rm", "-f", &name]);
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn sigterm_flushes_complete_profiles_and_exits_0() {
    require_engine();
    let world = World::new("d-term");
    let name = format!("capprof-d-term-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let daemon = world.start(&["--flush-interval", "3600"]);
    assert!(
        docker_run(Some(&name), &["-d".into()], &["sleep", "60"])
            .status
            .success()
    );
    assert!(
        docker(&["exec", &name, "chroot", "/", "true"])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    daemon.signal(libc::SIGTERM);
    let (status, _) = daemon.wait();
    assert!(status.success(), "{status}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    let path = world.state().join("profiles").join(format!("{name}.json"));
    let profile: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(allowlist(&profile), ["CAP_SYS_CHROOT"]);
    let _ = docker(&["rm", "-f", &name]);
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn corrupt_state_does_not_stop_startup() {
    require_engine();
    let world = World::new("d-corrupt");
    let containers = world.state().join("containers");
    std::fs::create_dir_all(&containers).unwrap();
    let bad = containers.join(format!("{}.json", "c".repeat(64)));
    std::fs::write(&bad, b"{\"schema\": \"capprof.state/v1\", \"id\": \"ccc").unwrap();
    let daemon = world.start(&[]);
    assert!(!bad.exists(), "the corrupt file was moved aside");
    let aside = std::fs::read_dir(&containers)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".corrupt-"));
    assert!(aside);
    assert!(
        daemon.early.iter().any(|l| l.contains("corrupt")),
        "{:?}",
        daemon.early
    );
    world.ps();
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn socket_is_root_only_and_capabilities_are_dropped() {
    require_engine();
    let world = World::new("d-sock");
    let daemon = world.start(&[]);
    let meta = std::fs::metadata(world.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    // A non-root client is refused.
    std::fs::set_permissions(world.dir.0.clone(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        world.dir.path("run"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new(CAPPROF)
        .args(["ps", "--socket", world.socket().to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("permission denied")
    );
    // After attaching, the daemon holds no capability on any thread.
    for task in std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let line = status.lines().find(|l| l.starts_with(set)).unwrap();
            assert!(line.ends_with("0000000000000000"), "{line}");
        }
    }
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
}

#[test]
#[ignore = "needs root and a Docker engine"]
fn concurrent_clients_get_consistent_answers() {
    require_engine();
    let world = World::new("d-conc");
    let name = format!("capprof-d-conc-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let daemon = world.start(&[]);
    assert!(
        docker_run(Some(&name), &[], &["chroot", "/", "true"])
            .status
            .success()
    );
    wait_until("the profile", Duration::from_secs(10), || {
        allowlist(&world.profile(&name)) == ["CAP_SYS_CHROOT"]
    });
    let socket = world.socket();
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let socket = socket.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                let out = Command::new(CAPPROF)
                    .args([
                        "profile",
                        &name,
                        "--format",
                        "docker",
                        "--socket",
                        socket.to_str().unwrap(),
                    ])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap()
            })
        })
        .collect();
    let answers: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        answers
            .iter()
            .all(|a| a.trim() == "--cap-drop=ALL --cap-add=SYS_CHROOT"),
        "{answers:?}"
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
    let _ = docker(&["rm", "-f", &name]);
}

/// A container is answered for as soon as the daemon has a profile for it,
/// though the view `ps` and `profile` read is published only at a flush
/// (here every 60 s) or a finalization: the first answer comes within
/// seconds, and from then on `capprof profile` never says "no container".
/// With the view alone it did, until the next publication.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_is_answered_for_as_soon_as_the_daemon_knows_it() {
    require_engine();
    let world = World::new("d-fresh");
    let name = format!("capprof-d-fresh-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let daemon = world.start(&["--flush-interval", "60"]);
    assert!(
        docker_run(Some(&name), &["-d".into()], &["sleep", "60"])
            .status
            .success()
    );
    let socket = world.socket();
    let profile = || {
        capprof(&[
            "profile",
            &name,
            "--format",
            "json",
            "--socket",
            socket.to_str().unwrap(),
        ])
    };
    wait_until("its first profile", Duration::from_secs(10), || {
        profile().status.success()
    });
    for _ in 0..10 {
        let out = profile();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
    let _ = docker(&["rm", "-f", &name]);
}

/// `docker stop` and at once `capprof profile`: the answer has what the
/// container did while it stopped. The daemon publishes its view at each
/// flush (here every second) and finalizes a container 300 ms after its
/// `die` event; in between, the published profile lacked the container's
/// last checks (the corpus found snmpd's unlink at exit missing). A
/// container whose cgroup has emptied is now answered from the kernel's
/// counters as they are. (A flush between the stop and the query would
/// publish them too: the query comes within milliseconds of the stop.)
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_stopped_a_moment_ago_is_answered_with_what_it_did_while_stopping() {
    require_engine();
    let world = World::new("d-stopped");
    let name = format!("capprof-d-stopped-{}", std::process::id());
    let _ = docker(&["rm", "-f", &name]);
    let daemon = world.start(&["--flush-interval", "1"]);
    // CAP_CHOWN only on SIGTERM, as it stops.
    let script = "touch /tmp/f && trap 'chown 1 /tmp/f; exit 0' TERM; \
                  while true; do sleep 0.1; done";
    assert!(
        docker_run(Some(&name), &["-d".into()], &["sh", "-c", script])
            .status
            .success()
    );
    // In the published view (`ps` reads only that), then one flush more.
    wait_until("its line in ps", Duration::from_secs(10), || {
        world
            .ps()
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == name)
    });
    std::thread::sleep(Duration::from_millis(1500));
    let before = world.profile(&name);
    assert!(!names(&before, "allowlist").contains(&"CAP_CHOWN".to_owned()));
    assert!(docker(&["stop", "-t", "10", &name]).status.success());
    let after = world.profile(&name);
    assert!(
        names(&after, "required").contains(&"CAP_CHOWN".to_owned()),
        "the chown made while it stopped is missing: {after}"
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
    let _ = docker(&["rm", "-f", &name]);
}

/// The stated bounds for the daemon's resident memory under churn (debug
/// build): in all, and grown over the churn. Most of the resident set is
/// the kernel BTF and symbols parsed at startup.
const RSS_BOUND_KB: u64 = 96 * 1024;
const RSS_GROWTH_BOUND_KB: u64 = 16 * 1024;

#[test]
#[ignore = "needs root and a Docker engine"]
fn churn_of_300_containers_stays_bounded_and_all_are_on_disk() {
    require_engine();
    let world = World::new("d-churn");
    let daemon = world.start(&["--max-containers", "50"]);
    let rss_at_start = daemon.rss_kb();
    let prefix = format!("capprof-d-churn-{}", std::process::id());
    let started = Instant::now();
    // Six at a time, 300 in all, each gone as soon as it exits.
    let names: Vec<String> = (0..300).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in names.chunks(6) {
        let children: Vec<Child> = chunk
            .iter()
            .map(|n| {
                Command::new("docker")
                    .args([
                        "run",
                        "--rm",
                        "--network",
                        "none",
                        "--name",
                        n,
                        &test_image(),
                        "true",
                    ])
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
    }
    eprintln!("300 containers in {:?}", started.elapsed());
    let on_disk = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                    .count()
            })
            .unwrap_or(0)
    };
    let profiles = world.state().join("profiles");
    wait_until("300 profiles on disk", Duration::from_secs(30), || {
        on_disk(&profiles) == 300
    });
    let rss = daemon.rss_kb();
    eprintln!(
        "daemon RSS: {rss_at_start} kB at start, {rss} kB after churn (bounds {RSS_BOUND_KB} kB, growth {RSS_GROWTH_BOUND_KB} kB)"
    );
    assert!(rss < RSS_BOUND_KB, "RSS {rss} kB over the bound");
    assert!(
        rss.saturating_sub(rss_at_start) < RSS_GROWTH_BOUND_KB,
        "RSS grew from {rss_at_start} to {rss} kB"
    );
    let health = capprof(&[
        "ps",
        "--format",
        "json",
        "--socket",
        world.socket().to_str().unwrap(),
    ]);
    let list: Value = serde_json::from_slice(&health.stdout).unwrap();
    assert!(
        list.as_array().unwrap().len() <= 60,
        "evicted down to about --max-containers"
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().0.success());
}

/// Two daemons on one bpffs would drain each other's counts: the second
/// refuses in one line that names the first. A daemon that fails to start
/// leaves no pin behind.
#[test]
#[ignore = "needs root"]
fn one_daemon_per_bpffs_and_a_failed_start_leaves_no_pin() {
    require_root();
    let world = World::new("pinlock");
    let first = world.start(&[]);
    let pins = world.bpffs().join("capprof");
    assert!(pins.exists(), "the first daemon pinned nothing");

    // Same pins, another socket and state dir.
    let other = Scratch::new("pinlock2");
    let out = Command::new(CAPPROF)
        .args([
            "daemon",
            "--bpffs",
            world.bpffs().to_str().unwrap(),
            "--socket",
            other.path("d.sock").to_str().unwrap(),
            "--state-dir",
            other.path("state").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, &format!("pid {}", first.pid()));
    first.signal(libc::SIGTERM);
    let (status, _) = first.wait();
    assert!(status.success());

    // A daemon that fails after loading (its metrics port is taken) removes
    // the pins it made.
    let world = World::new("pinfail");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut args = vec!["daemon".to_owned()];
    args.extend(world.args());
    args.extend(["--metrics".to_owned(), format!("127.0.0.1:{port}")]);
    let out = Command::new(CAPPROF).args(&args).output().unwrap();
    assert_one_line_error(&out, 2, "cannot bind metrics");
    // bpffs's own entries (maps.debug, progs.debug) are the kernel's.
    let left: Vec<_> = walk(&world.bpffs().join("capprof"));
    assert!(
        left.iter().all(|p| p.is_dir()),
        "pins left behind: {left:?}"
    );
    assert!(!world.socket().exists(), "the API socket was left behind");
}

fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
