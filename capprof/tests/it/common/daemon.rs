//! A capprof daemon of a test's own: its own state directory, socket and
//! bpffs in a scratch directory, stopped and reset on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use super::{CAPPROF, Scratch, capprof, stop_child, wait_for_line};

pub struct TestDaemon {
    pub dir: Scratch,
    child: Child,
    /// Its stderr, line by line, after the ready line.
    pub lines: mpsc::Receiver<String>,
    /// What it was started with, to start it again.
    args: Vec<String>,
}

impl TestDaemon {
    /// Starts `capprof daemon` in `dir`, flushing every second, with
    /// `extra` flags, and waits for its ready line.
    pub fn start(dir: Scratch, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir.path("bpffs")).unwrap();
        let mut args: Vec<String> = vec!["daemon".into()];
        for (flag, path) in [
            ("--state-dir", "state"),
            ("--socket", "run/capprof.sock"),
            ("--bpffs", "bpffs"),
        ] {
            args.push(flag.into());
            args.push(dir.path(path).display().to_string());
        }
        args.extend(["--flush-interval".into(), "1".into()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, lines) = spawn(&args);
        Self {
            dir,
            child,
            lines,
            args,
        }
    }

    /// Stops it with SIGTERM, as a routine restart does, leaving its pins
    /// and state for [`TestDaemon::start_again`].
    pub fn stop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
    }

    /// Starts it again, with the same flags, on the same state and pins.
    pub fn start_again(&mut self) {
        self.stop();
        (self.child, self.lines) = spawn(&self.args);
    }

    /// Sends `signal` and waits for the daemon to exit; its exit status.
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop on signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path("run/capprof.sock")
    }

    /// `capprof ARGS --socket SOCKET`.
    pub fn ask(&self, args: &[&str]) -> Output {
        let socket = self.socket();
        let mut all = args.to_vec();
        all.extend(["--socket", socket.to_str().unwrap()]);
        capprof(&all)
    }
}

/// `capprof ARGS`, once its ready line is out.
fn spawn(args: &[String]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(CAPPROF)
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = wait_for_line(
        &mut child,
        "daemon",
        "daemon ready",
        Duration::from_secs(30),
    );
    (child, lines)
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(30));
        let bpffs = self.dir.path("bpffs");
        let _ = Command::new(CAPPROF)
            .args(["daemon", "--reset", "--bpffs", bpffs.to_str().unwrap()])
            .output();
        let _ = Command::new("umount").arg(&bpffs).output();
    }
}
