//! The container engines the container tests drive, and the harness they
//! share: the test image, the docker CLI, `capprof record` in the
//! background, and the proof that an exported profile is exact.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{CAPPROF, Scratch, capprof, echo_lines, names, output_text, require_root};

/// The busybox test image `cargo xtask test` imports.
pub fn test_image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

/// The docker CLI, pointed at the engine the harness chose.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

/// Root, and a Docker engine that answers.
pub fn require_engine() {
    require_root();
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        out.status.success(),
        "no Docker engine answers (DOCKER_HOST={:?}); run through `cargo xtask test`, which starts one: {}",
        std::env::var("DOCKER_HOST").ok(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run [ENGINE_FLAGS] --name NAME|--rm [FLAGS] IMAGE CMD…`: a named
/// container is kept for its profile, an unnamed one removed.
pub fn run_args(
    engine_flags: &[&str],
    name: Option<&str>,
    flags: &[String],
    image: &str,
    cmd: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into()];
    args.extend(engine_flags.iter().map(|s| s.to_string()));
    match name {
        Some(n) => args.extend(["--name".into(), n.into()]),
        None => args.push("--rm".into()),
    }
    args.extend(flags.iter().cloned());
    args.push(image.to_owned());
    args.extend(cmd.iter().map(|s| s.to_string()));
    args
}

/// `docker run --network none` of the test image: named and kept, or
/// `--rm`.
pub fn docker_run(name: Option<&str>, flags: &[String], cmd: &[&str]) -> Output {
    let args = run_args(&["--network", "none"], name, flags, &test_image(), cmd);
    docker(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `capprof record --out DIR/profiles EXTRA…` in the background, until
/// `stop` sends SIGINT.
pub struct Recording {
    child: Child,
    dir: Option<Scratch>,
    /// The line that said it is recording: what it attached to and watches.
    pub banner: String,
}

impl Recording {
    /// Starts it and waits for its "recording" line.
    pub fn start(tag: &str, extra: &[&str]) -> Self {
        let dir = Scratch::new(tag);
        let out = dir.path("profiles");
        let mut args = vec!["record", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let mut child = Command::new(CAPPROF)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("capprof record starts");
        let lines = echo_lines(child.stderr.take().unwrap(), "record");
        let deadline = Instant::now() + Duration::from_secs(30);
        let banner = loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("recording") => break line,
                // Warnings share the prefix; anything else before the
                // banner is the failure.
                Ok(line)
                    if line.starts_with("capprof:") && !line.starts_with("capprof: warning: ") =>
                {
                    panic!("capprof record failed: {line}")
                }
                _ if Instant::now() > deadline => panic!("capprof record did not start"),
                _ => {}
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("capprof record exited early: {status}");
            }
        };
        Self {
            child,
            dir: Some(dir),
            banner,
        }
    }

    /// SIGINT, which writes the profiles; returns the directory holding
    /// `profiles/`.
    pub fn stop(mut self) -> Scratch {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "capprof record exited with {status}");
        self.dir.take().unwrap()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Only when a test failed before stop(): never leave it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The profile `capprof record` wrote for container `name`.
pub fn profile_path(dir: &Scratch, name: &str) -> PathBuf {
    dir.path("profiles").join(format!("{name}.json"))
}

pub fn read_profile(dir: &Scratch, name: &str) -> Value {
    let path = profile_path(dir, name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no profile {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// `capprof export ARGS… PROFILE` for container `name`: its stdout.
pub fn export(dir: &Scratch, name: &str, args: &[&str]) -> String {
    let path = profile_path(dir, name);
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    all.push(path.to_str().unwrap());
    let out = capprof(&all);
    assert!(
        out.status.success(),
        "capprof {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A workload's profile holds exactly `expected`, as required and as the
/// allowlist, and the runtime's own setup checks stay apart from it.
pub fn assert_exact(profile: &Value, workload: &str, expected: &[&str]) {
    assert_eq!(
        names(profile, "required"),
        expected,
        "{workload}: {}",
        profile["capabilities"]
    );
    assert_eq!(names(profile, "allowlist"), expected, "{workload}");
    assert!(
        !profile["runtime_setup"].as_array().unwrap().is_empty(),
        "{workload}: runc's setup was seen"
    );
}

/// The exported `flags` (`--cap-drop=ALL --cap-add=…`) are sufficient: the
/// workload runs with them; and minimal: it fails without any one of the
/// `--cap-add`s. `run` runs the workload with the flags it is given.
pub fn assert_sufficient_and_minimal(
    workload: &str,
    flags: &[String],
    mut run: impl FnMut(&[String]) -> Output,
) {
    assert_eq!(flags[0], "--cap-drop=ALL", "{workload}");
    let out = run(flags);
    assert!(
        out.status.success(),
        "{workload} is not sufficient with {flags:?}: {}",
        output_text(&out)
    );
    for drop in 1..flags.len() {
        let mut fewer = flags.to_vec();
        let dropped = fewer.remove(drop);
        let out = run(&fewer);
        assert!(
            !out.status.success(),
            "{workload} still works without {dropped}: the profile is not minimal"
        );
    }
}
