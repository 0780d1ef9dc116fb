//! Small helpers shared by the subcommands: step logging, running commands,
//! and the workspace's paths.

use std::{
    env,
    ffi::OsString,
    fmt::Display,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Announces a step: `==> installing bpf-linker …`.
pub fn step(msg: impl Display) {
    eprintln!("==> {msg}");
}

/// Reports a detail of the current step, indented under it.
pub fn note(msg: impl Display) {
    eprintln!("    {msg}");
}

/// `$CARGO_HOME/bin`, or `~/.cargo/bin`.
pub fn cargo_bin_dir() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return PathBuf::from(home).join("bin");
    }
    let home = env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cargo").join("bin")
}

/// Puts cargo's bin directory at the front of PATH, so that every child
/// process (and aya-build under `cargo build`) finds `bpf-linker`.
pub fn put_cargo_bin_on_path() {
    let bin = cargo_bin_dir();
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let mut dirs = vec![bin];
    dirs.extend(env::split_paths(&path));
    let Ok(joined) = env::join_paths(dirs) else {
        return;
    };
    // SAFETY: called first thing in main, before any thread exists.
    unsafe { env::set_var("PATH", joined) };
}

/// The workspace's root directory (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// cargo's target directory, honouring `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `cargo build --release -p PACKAGE…` in the workspace; returns the
/// directory the binaries are in.
pub fn build_release(packages: &[&str]) -> Result<PathBuf> {
    let what = packages.join(" and ");
    step(format_args!("building {what} (release)"));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["build", "--release"]);
    for package in packages {
        cmd.args(["-p", package]);
    }
    run_checked(&mut cmd).with_context(|| format!("building {what}"))?;
    Ok(target_dir().join("release"))
}

/// A command line as a person would type it, for logs and errors.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<OsString> = vec![cmd.get_program().to_owned()];
    words.extend(cmd.get_args().map(ToOwned::to_owned));
    words
        .iter()
        .map(|w| {
            let w = w.to_string_lossy();
            if w.is_empty() || w.contains(|c: char| c.is_whitespace() || "'\"$*?{}".contains(c)) {
                format!("'{}'", w.replace('\'', r"'\''"))
            } else {
                w.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio, printing it first; fails unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    note(format_args!("$ {line}"));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Whether `cmd` runs and exits 0, with its output discarded.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` and returns its trimmed stdout; fails unless it exits 0.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!("`{line}` failed ({})", out.status);
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{line}` printed non-UTF-8 output"))
        .map(|s| s.trim().to_owned())
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited within
/// `grace` (said in a note naming `what`). Reaps it either way.
pub fn terminate(child: &mut Child, what: &str, grace: std::time::Duration) {
    use std::time::{Duration, Instant};
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = libc::pid_t::try_from(child.id()).unwrap_or(libc::pid_t::MAX);
    // SAFETY: kill has no memory-safety preconditions; the pid is our own
    // child, which we have not reaped yet, so it cannot be reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                note(format_args!("{what} ignored SIGTERM; killing it"));
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A fresh directory `capprof-TAG-PID` under the temp dir for a private
/// service (dockerd, containerd, the test cluster); a stale one from an
/// earlier run of the same pid is removed first.
pub fn fresh_service_dir(tag: &str) -> Result<PathBuf> {
    let dir = env::temp_dir().join(format!("capprof-{tag}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The last `count` lines of a service's log, for a start-up that failed.
pub fn print_log_tail(path: &Path, count: usize) {
    let Ok(log) = std::fs::read_to_string(path) else {
        eprintln!("(could not read {})", path.display());
        return;
    };
    let lines: Vec<&str> = log.lines().collect();
    eprintln!("---- last lines of {} ----", path.display());
    for line in &lines[lines.len().saturating_sub(count)..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of {} ----", path.display());
}

/// Starts a private service with its stdout and stderr in `log` (created
/// anew) and no stdin, after printing the command line as a person would
/// run it.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("duplicating the handle of {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    note(format_args!("$ {} >{} 2>&1", display(cmd), log.display()));
    Ok(cmd.spawn()?)
}
