//! The promise that a plain `cargo test` passes for a normal user, as in
//! aya: every test that needs root, an engine or a tool from `cargo xtask
//! setup` is `#[ignore]`d with a reason. `cargo xtask test` checks it by
//! running every test binary it built as `nobody`, without
//! `--include-ignored`.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{
    libtest::Counts,
    util::{note, step},
};

/// `nobody`'s uid and gid on Debian.
const NOBODY: u32 = 65534;

/// Runs every test binary of the workspace as `nobody`; `Ok(false)` when
/// one of them fails.
pub fn check(exclude: &[&str]) -> Result<bool> {
    step("checking that a plain cargo test passes for a normal user (as nobody)");
    let binaries = test_binaries(exclude)?;
    let mut total = Counts::default();
    let mut ok = true;
    for binary in &binaries {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(binary)
            .arg("--test-threads=2")
            // Somewhere nobody may write, whatever the caller's directory,
            // and a home of nobody's own, as a normal user has.
            .current_dir(std::env::temp_dir())
            .env("HOME", "/nonexistent")
            .output()
            .with_context(|| format!("running {binary} as nobody"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for counts in stdout.lines().filter_map(Counts::parse) {
            total += counts;
        }
        if !out.status.success() {
            ok = false;
            eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            note(format_args!("FAILED as nobody: {binary}"));
        }
    }
    note(format_args!(
        "{} test binaries as nobody: {} passed, {} failed, {} ignored (they need root)",
        binaries.len(),
        total.passed,
        total.failed,
        total.ignored
    ));
    Ok(ok && total.passed > 0)
}

/// The test executables `cargo test --no-run` builds (already built).
fn test_binaries(exclude: &[&str]) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .args(["test", "--workspace", "--no-run", "--message-format=json"])
        .args(exclude)
        .output()
        .context("cargo test --no-run")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().filter_map(executable).collect())
}

/// The executable of one `compiler-artifact` message of a test target.
fn executable(line: &str) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
        return None;
    }
    message["executable"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_artifacts_give_their_executables() {
        let test = r#"{"reason":"compiler-artifact","profile":{"test":true},"executable":"/t/deps/run-1"}"#;
        let lib = r#"{"reason":"compiler-artifact","profile":{"test":false},"executable":null}"#;
        assert_eq!(executable(test).as_deref(), Some("/t/deps/run-1"));
        assert_eq!(executable(lib), None);
        assert_eq!(
            executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
        assert_eq!(executable("not json"), None);
    }
}
