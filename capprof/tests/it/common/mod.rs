//! Shared helpers for the root integration tests.

pub mod cri;
pub mod daemon;
pub mod engine;
pub mod kube;

use std::{
    io::BufRead as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, Output},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const CAPPROF: &str = env!("CARGO_BIN_EXE_capprof");
/// The sample profile the unit tests share too (`daemon::api::testing`).
pub const SAMPLE_PROFILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/web-profile.json"
);
pub const ACTION: &str = env!("CARGO_BIN_EXE_capprof-test-action");

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "these tests load eBPF and must run as root (cargo xtask test does)"
    );
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("capprof-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A file owned by `uid`:`gid` with `mode`.
pub fn fixture_file(path: &Path, uid: u32, gid: u32, mode: u32) {
    std::fs::write(path, b"fixture\n").unwrap();
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A command's stdout and stderr, for failure messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn capprof(args: &[&str]) -> Output {
    Command::new(CAPPROF)
        .args(args)
        .output()
        .expect("capprof runs")
}

/// `capprof run --out FILE -q -- CMD…`: the exit status and the profile.
pub fn profile_of(cmd: &[&str]) -> (Output, Value) {
    let dir = Scratch::new("profile");
    let file = dir.path("profile.json");
    let mut args = vec!["run", "--quiet", "--out", file.to_str().unwrap(), "--"];
    args.extend_from_slice(cmd);
    let out = capprof(&args);
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let profile: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "no JSON profile for {cmd:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, profile)
}

pub fn names(profile: &Value, field: &str) -> Vec<String> {
    profile[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is not an array in {profile}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The record of capability `name` in a profile's `capabilities`.
pub fn capability<'a>(profile: &'a Value, name: &str) -> &'a Value {
    profile["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {profile}"))
}

/// Asserts a user-facing failure: the given exit status and exactly one
/// line on stderr, no panic, no backtrace.
pub fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    count_bad_input_case(code, &stderr);
}

/// Appends the case to `$CAPPROF_BAD_INPUT_LOG` (set by `cargo xtask
/// test`, which reports how many bad-input cases the suite checked).
fn count_bad_input_case(code: i32, stderr: &str) {
    log_line(
        "CAPPROF_BAD_INPUT_LOG",
        &format!("{code}\t{}", stderr.trim()),
    );
}

/// For a test that cannot run on this machine because the kernel lacks a
/// feature: says why on stderr and appends the test's name and the reason
/// to `$CAPPROF_SKIP_LOG`. libtest has no skip at run time, so the test
/// still returns and libtest counts it passed; `cargo xtask test` sets the
/// log and counts each test in it as skipped instead, naming it.
pub fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
    log_line("CAPPROF_SKIP_LOG", reason);
}

/// Appends `test name\tline` to the file named by `$var`, when it is set.
fn log_line(var: &str, line: &str) {
    use std::io::Write as _;
    let Some(log) = std::env::var_os(var) else {
        return;
    };
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(file, "{test}\t{line}");
    }
}

/// Echoes a child's stderr to ours, each line marked `[tag]`, and hands
/// the lines over.
pub fn echo_lines(stderr: ChildStderr, tag: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[{tag}] {line}");
            let _ = tx.send(line);
        }
    });
    rx
}

/// Echoes the child's stderr (`echo_lines`) and waits for a line holding
/// `needle`; panics if the child exits first or `within` passes. The rest
/// of stderr keeps coming on the receiver.
pub fn wait_for_line(
    child: &mut Child,
    tag: &'static str,
    needle: &str,
    within: Duration,
) -> mpsc::Receiver<String> {
    let rx = echo_lines(child.stderr.take().expect("stderr piped"), tag);
    let deadline = Instant::now() + within;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) if line.contains(needle) => return rx,
            _ if Instant::now() > deadline => panic!("[{tag}] no line with {needle:?} in time"),
            _ => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("[{tag}] exited early ({status}) before {needle:?}");
        }
    }
}

/// Every line still to come, once the child has exited: the reader hangs
/// up at end of file (bounded, should a stray process hold the pipe).
pub fn drain_lines(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = vec![];
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

/// SIGTERM, then SIGKILL if the child has not exited within `grace`.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(None) = child.try_wait() {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while let Ok(None) = child.try_wait() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls `ok` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
