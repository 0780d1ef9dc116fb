//! Boots one kernel under qemu's TCG with the serial console on a pipe,
//! saves everything it prints, and stops a guest that panics, goes quiet or
//! runs too long.

use std::{
    fmt,
    fs::File,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::util::{display, note};

/// What the kernel prints when it panics.
const PANIC: &str = "Kernel panic - not syncing";
/// Output kept after a panic, for its trace, before the guest is killed
/// (panic=-1 with -no-reboot normally ends it sooner).
const PANIC_GRACE: Duration = Duration::from_secs(5);
/// The emulator, from Debian's qemu-system-x86.
pub const QEMU: &str = "qemu-system-x86_64";
/// The init script's last marker.
pub const DONE_MARKER: &str = "CAPPROF-VM-DONE";

/// How to boot a guest.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Short name for prefixes: `6.1`.
    pub name: String,
    /// The emulator: [`QEMU`], or a stand-in in tests.
    pub qemu: PathBuf,
    pub vmlinuz: PathBuf,
    pub initramfs: PathBuf,
    /// Appended to the fixed kernel command line.
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    /// The whole guest's deadline.
    pub timeout: Duration,
    /// How long the guest may print nothing.
    pub idle_timeout: Duration,
    /// Where the console log goes.
    pub log: PathBuf,
    /// Copy the console to stderr, each line prefixed with `[name]`.
    pub echo: bool,
}

/// How a guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It printed the last marker and powered off.
    Finished,
    /// The kernel panicked.
    Panicked,
    /// Nothing was printed for the idle timeout; killed.
    Hung { quiet_for: Duration },
    /// Still running at the deadline; killed.
    TimedOut { after: Duration },
    /// qemu exited before the last marker.
    Stopped { status: String },
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::Finished => f.write_str("finished and powered off"),
            Ending::Panicked => f.write_str("kernel panic (guest killed)"),
            Ending::Hung { quiet_for } => {
                write!(
                    f,
                    "hung: no output for {} s (guest killed)",
                    quiet_for.as_secs()
                )
            }
            Ending::TimedOut { after } => {
                write!(f, "timed out after {} s (guest killed)", after.as_secs())
            }
            Ending::Stopped { status } => {
                write!(f, "qemu exited ({status}) before the guest finished")
            }
        }
    }
}

/// A console line and when it came, from qemu's start.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// What a boot gave.
#[derive(Debug)]
pub struct Outcome {
    pub ending: Ending,
    pub lines: Vec<Line>,
    pub elapsed: Duration,
}

/// Kills and reaps qemu when dropped, whatever happened.
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Boots `boot` and watches it to the end.
pub fn run(boot: &Boot) -> Result<Outcome> {
    let mut cmd = command(boot);
    note(format_args!("[{}] $ {}", boot.name, display(&cmd)));
    let log =
        File::create(&boot.log).with_context(|| format!("creating {}", boot.log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (apt-get install qemu-system-x86)",
                boot.qemu.display()
            )
        })?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu has no stdout")?;
    let stderr = child.stderr.take().context("qemu has no stderr")?;
    let mut guest = Guest(child);
    let readers = [
        spawn_reader(stdout, "", tx.clone()),
        spawn_reader(stderr, "qemu: ", tx),
    ];

    let mut console = Console::new(boot, start, log);
    let ending = console.watch(&mut guest, &rx)?;
    let elapsed = start.elapsed();
    drop(guest); // kills qemu if it still runs, which ends the readers
    for reader in readers {
        let _ = reader.join();
    }
    // Lines that raced the kill still belong in the log.
    for text in rx.try_iter() {
        console.keep(elapsed, text);
    }
    let _ = writeln!(
        console.log,
        "[xtask] {}: {ending} after {:.1} s",
        boot.name,
        elapsed.as_secs_f64()
    );
    Ok(Outcome {
        ending,
        lines: console.lines,
        elapsed,
    })
}

/// A running guest's console as it is watched: the log, the lines so far
/// and what they told (a panic, the last marker, when the last one came).
struct Console<'a> {
    boot: &'a Boot,
    start: Instant,
    log: File,
    lines: Vec<Line>,
    last_output: Instant,
    panicked_at: Option<Instant>,
    finished: bool,
}

impl<'a> Console<'a> {
    fn new(boot: &'a Boot, start: Instant, log: File) -> Self {
        Console {
            boot,
            start,
            log,
            lines: Vec::new(),
            last_output: Instant::now(),
            panicked_at: None,
            finished: false,
        }
    }

    /// Takes the guest's lines until qemu exits, or until the guest
    /// panicked, hung or ran out of time.
    fn watch(&mut self, guest: &mut Guest, rx: &mpsc::Receiver<String>) -> Result<Ending> {
        loop {
            match rx.recv_timeout(self.wake().saturating_duration_since(Instant::now())) {
                Ok(text) => self.record(text),
                Err(RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: qemu has exited.
                    let status = guest.0.wait().context("waiting for qemu")?;
                    return Ok(if self.panicked_at.is_some() {
                        Ending::Panicked
                    } else if self.finished && status.success() {
                        Ending::Finished
                    } else {
                        Ending::Stopped {
                            status: status.to_string(),
                        }
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(ending) = self.overdue(Instant::now()) {
                        return Ok(ending);
                    }
                }
            }
        }
    }

    /// When to stop waiting for the next line: the deadline, the idle
    /// timeout, or the grace after a panic, whichever comes first.
    fn wake(&self) -> Instant {
        let mut wake =
            (self.start + self.boot.timeout).min(self.last_output + self.boot.idle_timeout);
        if let Some(at) = self.panicked_at {
            wake = wake.min(at + PANIC_GRACE);
        }
        wake
    }

    /// A line as it comes: logged, echoed, and looked at for a panic or
    /// the last marker.
    fn record(&mut self, text: String) {
        self.last_output = Instant::now();
        let _ = writeln!(self.log, "{text}");
        if self.boot.echo {
            eprintln!("[{}] {text}", self.boot.name);
        }
        if text.contains(PANIC) && self.panicked_at.is_none() {
            self.panicked_at = Some(self.last_output);
        }
        if text.starts_with(DONE_MARKER) {
            self.finished = true;
        }
        self.lines.push(Line {
            at: self.start.elapsed(),
            text,
        });
    }

    /// Logs a line that came after the guest was stopped, at `at`.
    fn keep(&mut self, at: Duration, text: String) {
        let _ = writeln!(self.log, "{text}");
        self.lines.push(Line { at, text });
    }

    /// How the guest ends when nothing came by [`Self::wake`]; None if
    /// that was early (the wait returned before its time).
    fn overdue(&self, now: Instant) -> Option<Ending> {
        if self.panicked_at.is_some_and(|at| now >= at + PANIC_GRACE) {
            Some(Ending::Panicked)
        } else if now >= self.start + self.boot.timeout {
            Some(Ending::TimedOut {
                after: self.start.elapsed(),
            })
        } else if now >= self.last_output + self.boot.idle_timeout {
            Some(Ending::Hung {
                quiet_for: now - self.last_output,
            })
        } else {
            None
        }
    }
}

/// The qemu command line: TCG (nested KVM crashes here), no devices but the
/// serial console, and a kernel that reboots at once on panic, which
/// -no-reboot turns into qemu exiting.
fn command(boot: &Boot) -> Command {
    let mut cmd = Command::new(&boot.qemu);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-machine", "pc"])
        .args([
            "-smp",
            &boot.cpus.to_string(),
            "-m",
            &format!("{}M", boot.memory_mib),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio", "-monitor", "none"])
        .arg("-kernel")
        .arg(&boot.vmlinuz)
        .arg("-initrd")
        .arg(&boot.initramfs)
        .arg("-append")
        .arg(format!(
            // mitigations=off: no page-table isolation, whose TLB flushes on
            // every syscall cost a lot under TCG; nothing here tests them.
            "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=4 \
             mitigations=off {}",
            boot.cmdline
        ));
    cmd
}

/// Reads lines from a pipe (console lines end in CR LF) into `tx`.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    let text = text.trim_end_matches(['\r', '\n']).replace('\r', "");
                    if tx.send(format!("{prefix}{text}")).is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// `path` for messages, relative to the workspace when it is inside it.
pub fn shown(path: &Path) -> String {
    let root = crate::util::workspace_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt as _};

    use super::*;

    /// Runs a shell script in qemu's place and returns how it ended.
    fn watch(name: &str, script: &str, timeout: u64, idle: u64) -> Outcome {
        let dir =
            std::env::temp_dir().join(format!("capprof-qemu-test-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("fake-qemu");
        fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let boot = Boot {
            name: name.to_owned(),
            qemu: fake,
            vmlinuz: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs"),
            cmdline: String::new(),
            memory_mib: 64,
            cpus: 1,
            timeout: Duration::from_secs(timeout),
            idle_timeout: Duration::from_secs(idle),
            log: dir.join("console.log"),
            echo: false,
        };
        let outcome = run_fresh_script(&boot);
        let log = fs::read_to_string(&boot.log).unwrap();
        assert!(log.contains(&format!("[xtask] {name}: ")), "{log}");
        fs::remove_dir_all(&dir).unwrap();
        outcome
    }

    /// `run(boot)`, whose qemu is a script this process has just written.
    /// A child that another test thread forked while the script was open
    /// for writing holds its descriptor until it execs, and the kernel
    /// refuses to execute a file open for writing (ETXTBSY): try again
    /// while that lasts. CI's run as `nobody`, with parallel test threads,
    /// met it.
    fn run_fresh_script(boot: &Boot) -> Outcome {
        for _ in 0..100 {
            match run(boot) {
                Ok(outcome) => return outcome,
                Err(err)
                    if err.chain().any(|e| {
                        e.downcast_ref::<std::io::Error>()
                            .is_some_and(|e| e.kind() == std::io::ErrorKind::ExecutableFileBusy)
                    }) =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => panic!("{err:#}"),
            }
        }
        panic!("{} stayed busy (ETXTBSY) for 2 s", boot.qemu.display());
    }

    #[test]
    fn a_guest_that_prints_done_and_exits_finished() {
        let out = watch(
            "done",
            "printf 'booting\\r\\nCAPPROF-VM-DONE: uptime 1s\\r\\n'",
            10,
            10,
        );
        assert_eq!(out.ending, Ending::Finished);
        let texts: Vec<&str> = out.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            ["booting", "CAPPROF-VM-DONE: uptime 1s"],
            "CR LF is trimmed"
        );
    }

    #[test]
    fn a_guest_that_exits_early_stopped() {
        let out = watch("early", "echo booting; exit 3", 10, 10);
        assert!(
            matches!(out.ending, Ending::Stopped { .. }),
            "{:?}",
            out.ending
        );
    }

    #[test]
    fn a_kernel_panic_is_reported_as_such() {
        let out = watch(
            "panic",
            "echo '[    1.0] Kernel panic - not syncing: Attempted to kill init!'; exit 0",
            10,
            10,
        );
        assert_eq!(out.ending, Ending::Panicked);
    }

    #[test]
    fn a_silent_guest_is_killed_as_hung() {
        let started = Instant::now();
        let out = watch("hung", "echo booting; exec sleep 30", 20, 1);
        assert!(
            matches!(out.ending, Ending::Hung { .. }),
            "{:?}",
            out.ending
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn a_busy_guest_is_killed_at_the_deadline() {
        let started = Instant::now();
        let out = watch("busy", "while :; do echo tick; sleep 0.2; done", 2, 1);
        assert!(
            matches!(out.ending, Ending::TimedOut { .. }),
            "{:?}",
            out.ending
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
