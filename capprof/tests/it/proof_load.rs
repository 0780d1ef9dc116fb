//! `minimize` gives one answer however busy the machine is. Its runs sample
//! each process's credentials every 50 ms, and under load a short-lived
//! process is caught at different moments of its life in different runs
//! (issue 23: the same setpriv recording minimized three times gave three
//! allowlists). Each profile here is minimized three times while a busy
//! loop spins on every core, and must come out the same, and right, each
//! time: setpriv, whose processes live for milliseconds and drop from root
//! to uid 1000 by exec, and Debian's nginx, whose workers drop to their own
//! user (www-data) in place.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::*;

/// How many times each profile is minimized.
const TIMES: usize = 3;
/// The busy loops stop by themselves after this, whatever happens.
const LOAD_AT_MOST: Duration = Duration::from_secs(30 * 60);

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn image_var(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.into())
}

/// One busy thread per core until dropped (or `LOAD_AT_MOST`).
struct CpuLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl CpuLoad {
    fn start() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let until = Instant::now() + LOAD_AT_MOST;
                    let mut spins = 0u64;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        spins = std::hint::black_box(spins.wrapping_add(1));
                    }
                    spins
                })
            })
            .collect();
        Self { stop, threads }
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Records container `name` running `cmd` (detached and stopped after
/// `serve` when a server) and returns its profile.
fn record(
    dir: &Scratch,
    name: &str,
    image: &str,
    cmd: &[&str],
    serve: Option<Duration>,
) -> PathBuf {
    let _ = docker(&["rm", "-f", name]);
    let out_dir = dir.path("profiles");
    let mut child = Command::new(CAPPROF)
        .args([
            "record",
            "--out",
            out_dir.to_str().unwrap(),
            "--container",
            name,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("capprof record starts");
    wait_for_line(&mut child, "record", "recording", Duration::from_secs(30));
    let mut args = vec!["run", "--name", name, "--network", "none"];
    if serve.is_some() {
        args.push("-d");
    }
    args.push(image);
    args.extend_from_slice(cmd);
    let out = docker(&args);
    assert!(
        out.status.success(),
        "{name} fails under Docker's defaults: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(serving) = serve {
        std::thread::sleep(serving);
        let _ = docker(&["stop", "-t", "1", name]);
    }
    let profile = out_dir.join(format!("{name}.json"));
    wait_until("the profile", Duration::from_secs(15), || profile.exists());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success(), "capprof record failed");
    let _ = docker(&["rm", "-f", name]);
    profile
}

/// `capprof minimize` once: the profile it wrote, and what it said.
fn minimize(profile: &Path, out: &Path, probe: &[&str]) -> (Value, String) {
    let mut args = vec![
        "minimize",
        "--out",
        out.to_str().unwrap(),
        "--runs",
        "1",
        "--timeout",
        "30",
    ];
    args.extend_from_slice(probe);
    args.push(profile.to_str().unwrap());
    let result = capprof(&args);
    let said = output_text(&result);
    assert!(result.status.success(), "minimize failed:\n{said}");
    let text = std::fs::read_to_string(out).unwrap();
    (serde_json::from_str(&text).unwrap(), said)
}

/// Minimizes `profile` TIMES under load: each answer must be `expected`.
/// The last minimized profile.
fn same_answer_each_time(
    dir: &Scratch,
    profile: &Path,
    probe: &[&str],
    expected: &[&str],
) -> Value {
    let _load = CpuLoad::start();
    let mut last = Value::Null;
    for time in 1..=TIMES {
        let out = dir.path(&format!("min-{time}.json"));
        let (min, said) = minimize(profile, &out, probe);
        let allowlist = names(&min, "allowlist");
        eprintln!("minimize {time}/{TIMES}: {allowlist:?}\n{said}");
        assert_eq!(allowlist, expected, "minimize {time} of {TIMES}:\n{said}");
        assert!(
            !said.contains("needed (identity)"),
            "no process drops less than in the baseline here:\n{said}"
        );
        last = min;
    }
    last
}

fn recorded_allowlist(profile: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(profile).unwrap();
    names(&serde_json::from_str(&text).unwrap(), "allowlist")
}

#[test]
#[ignore = "needs root"]
fn minimize_gives_one_answer_under_load() {
    require_root();
    let tools = image_var("CAPPROF_TOOLS_IMAGE", "capprof-tools:test");
    let nginx = image_var("CAPPROF_NGINX_IMAGE", "capprof-nginx:test");
    let dir = Scratch::new("proof-load");
    let tag = std::process::id();

    // setpriv: SETUID and SETGID (it fails without them); what its
    // capset() raised and its exec lost is transient, and tried: AUDIT_WRITE
    // among them, which nothing used, goes.
    let setpriv = record(
        &dir,
        &format!("capprof-load-setpriv-{tag}"),
        &tools,
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5; do /usr/bin/setpriv --reuid=1000 --regid=1000 \
             --clear-groups id || exit 1; done; sleep 0.3",
        ],
        None,
    );
    let min = same_answer_each_time(&dir, &setpriv, &[], &["CAP_SETGID", "CAP_SETUID"]);
    let proof = &min["proof"];
    assert!(
        names(proof, "unneeded").contains(&"CAP_AUDIT_WRITE".to_owned()),
        "{proof}"
    );
    assert!(names(proof, "kept_security_relevant").is_empty(), "{proof}");

    // nginx: its master opens its logs and makes its temporary
    // directories, its workers drop to www-data. Best-effort steps before
    // it (a device node, a chmod of another user's file) put MKNOD, FOWNER
    // and FSETID on the allowlist, so that runs without them pass and
    // their processes are compared with the baseline's.
    let nginx_profile = record(
        &dir,
        &format!("capprof-load-nginx-{tag}"),
        &nginx,
        &[
            "sh",
            "-c",
            "mknod /tmp/null c 1 3 || true; touch /tmp/f && chown 33 /tmp/f && \
             chmod 600 /tmp/f || true; exec /usr/sbin/nginx -g 'daemon off;'",
        ],
        Some(Duration::from_millis(1500)),
    );
    let recorded = recorded_allowlist(&nginx_profile);
    assert!(
        recorded.contains(&"CAP_MKNOD".to_owned()) && recorded.contains(&"CAP_FOWNER".to_owned()),
        "{recorded:?}"
    );
    same_answer_each_time(
        &dir,
        &nginx_profile,
        &["--probe-exec", "wget -q -O- http://127.0.0.1/"],
        &["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID"],
    );
}
