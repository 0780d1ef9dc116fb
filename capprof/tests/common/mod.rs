//! Shared helpers for the root integration tests.
#![allow(dead_code, reason = "each test crate uses a different subset")]

pub mod engine;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
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
}
