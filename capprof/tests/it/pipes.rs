//! Output that cannot be written: a closed pipe ends quietly, a full disk
//! gives one line and exit 1, and never a panic or a backtrace. With
//! `run -f json`, stdout holds the profile alone.

use std::{
    io::Read as _,
    process::{Command, Stdio},
};

const CAPPROF: &str = env!("CARGO_BIN_EXE_capprof");

fn no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "a panic: {stderr}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_full_disk_is_one_line_and_exit_1() {
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(CAPPROF)
        .args(["doctor", "--no-load"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    no_panic(&stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("No space left"), "{stderr}");
}

#[test]
#[ignore = "needs root"]
fn a_closed_pipe_ends_quietly() {
    // The reader goes away after one byte, before the profile is written.
    let mut child = Command::new(CAPPROF)
        .args(["run", "-q", "-f", "json", "--", "/bin/sh", "-c", "exit 0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    no_panic(&stderr);
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
#[ignore = "needs root"]
fn run_json_keeps_the_commands_stdout_apart() {
    let out = Command::new(CAPPROF)
        .args([
            "run",
            "-q",
            "-f",
            "json",
            "--",
            "/bin/echo",
            "from the command",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let profile: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"));
    assert_eq!(profile["schema"], "capprof.profile/v1");
    assert!(stderr.contains("from the command"), "{stderr}");
}
