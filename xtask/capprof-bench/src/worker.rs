//! Worker processes: the workload loops, run inside the benchmark's
//! cgroups, pinned to a CPU, timed with their own thread CPU clock.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::util::{die_with_parent, pin_to, thread_cpu_ns};

/// Capability numbers (include/uapi/linux/capability.h).
pub const CAP_CHOWN: u32 = 0;
pub const CAP_KILL: u32 = 5;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_CHROOT: u32 = 18;
pub const CAP_SYS_RESOURCE: u32 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// `kill(pid, 0)` to a process of another uid: one CAP_KILL check a call.
    Kill,
    /// mmap + munmap of one private writable page: one advisory CAP_SYS_ADMIN check.
    Mmap,
    /// kill, setuid(0), setgid(0), chroot("/"), fchown, and a refused
    /// setrlimit, hopping over many cgroups: six capabilities.
    Mixed,
    /// The storm's loop: eight kills, then one of the other five.
    Storm,
    /// The storm's overflow phase: each kill from a new comm (PR_SET_NAME),
    /// so that every check is a first sighting with a ring buffer record.
    Overflow,
}

impl Workload {
    /// Capability checks one iteration makes, by construction. bpf_stats'
    /// run counts check it (`checks_per_iter` in the output).
    pub fn nominal_checks(self) -> f64 {
        match self {
            Workload::Kill | Workload::Mmap => 1.0,
            Workload::Mixed => 6.0,
            Workload::Storm => 9.0,
            Workload::Overflow => 1.0,
        }
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// cgroup directories to run in, in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub cgroups: Vec<PathBuf>,
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// How to start a worker.
pub struct WorkerSpec {
    pub workload: Workload,
    pub cgroups: Vec<PathBuf>,
    pub cpu: Option<usize>,
}

/// What a worker reports for one phase.
#[derive(Debug, Default, Serialize, serde::Deserialize)]
pub struct WorkerResult {
    pub iters: u64,
    /// Thread CPU time inside the loop (cgroup moves excluded).
    pub cpu_ns: u64,
    pub wall_ns: u64,
    /// (index into --cgroups, cap, checks made): storm only.
    pub made: Vec<(usize, u32, u64)>,
    /// (iterations, thread CPU ns) of each window of the loop, so that the
    /// caller can take a robust statistic over a noisy machine.
    pub windows: Vec<(u64, u64)>,
}

impl WorkerResult {
    /// Median ns per iteration over the windows.
    pub fn median(&self) -> f64 {
        window_stat(&self.windows, 0.5)
    }
}

/// A running worker: it says `ready` once set up in its first cgroup, runs
/// one phase per `go <ms> <visit_ms>` line and prints its result, and exits
/// when its stdin closes; so neither its start nor its exit lands inside a
/// measured window.
pub struct Worker {
    pub workload: Workload,
    pub cgroups: usize,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: BufReader<ChildStdout>,
}

impl WorkerSpec {
    pub fn spawn(&self) -> Result<Worker> {
        let exe = std::env::current_exe().context("finding our own binary")?;
        let joined = self
            .cgroups
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new(exe);
        cmd.arg("worker")
            .arg("--workload")
            .arg(
                self.workload
                    .to_possible_value()
                    .map_or_else(String::new, |v| v.get_name().to_owned()),
            )
            .args(["--cgroups", &joined]);
        if let Some(cpu) = self.cpu {
            cmd.args(["--cpu", &cpu.to_string()]);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn().context("starting a worker")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker has no stdout"))?,
        );
        Ok(Worker {
            workload: self.workload,
            cgroups: self.cgroups.len(),
            child,
            stdin,
            stdout,
        })
    }
}

impl Worker {
    pub fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            bail!("worker exited early ({status})");
        }
        Ok(line.trim().to_owned())
    }

    pub fn wait_ready(&mut self) -> Result<()> {
        let line = self.line()?;
        if line != "ready" {
            bail!("worker said {line:?}, not ready");
        }
        Ok(())
    }

    pub fn go(&mut self, ms: u64, visit_ms: u64) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("worker stdin closed"))?;
        writeln!(stdin, "go {ms} {visit_ms}")?;
        stdin.flush()?;
        Ok(())
    }

    pub fn result(&mut self) -> Result<WorkerResult> {
        let line = self.line()?;
        serde_json::from_str(&line).with_context(|| format!("worker result {line:?}"))
    }

    /// One phase of `ms`; the hopping workload visits each cgroup once.
    pub fn run(&mut self, ms: u64) -> Result<WorkerResult> {
        let visit = if self.workload == Workload::Mixed {
            (ms / self.cgroups.max(1) as u64).max(1)
        } else {
            0
        };
        self.go(ms, visit)?;
        self.result()
    }

    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            bail!("worker failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The fixtures and syscalls the loops use. Each call makes one check.
pub struct Ops {
    /// A process of another uid, for `kill(pid, 0)`.
    pub target: Child,
    /// A file owned by uid 1000, for `fchown(fd, 1000, -1)` as root.
    pub file: File,
    pub file_path: PathBuf,
    pub root: CString,
    /// RLIMIT_MSGQUEUE with the hard limit one above the current one:
    /// raising it needs CAP_SYS_RESOURCE, which root lacks here (refused).
    pub raise: libc::rlimit,
}

impl Ops {
    pub fn new() -> Result<Self> {
        let mut cmd = Command::new("sleep");
        cmd.arg("infinity")
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null());
        die_with_parent(&mut cmd, libc::SIGKILL);
        let target = cmd
            .spawn()
            .context("starting a process of another uid (sleep)")?;
        let file_path = std::env::temp_dir().join(format!("capprof-bench-{}", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&file_path)?;
        std::os::unix::fs::fchown(&file, Some(1000), Some(1000))?;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid pointer; lowering a hard limit needs no capability.
        unsafe {
            libc::getrlimit(libc::RLIMIT_MSGQUEUE, &mut lim);
            lim.rlim_max = lim.rlim_cur;
            libc::setrlimit(libc::RLIMIT_MSGQUEUE, &lim);
        }
        let raise = libc::rlimit {
            rlim_cur: lim.rlim_cur,
            rlim_max: lim.rlim_cur.saturating_add(1),
        };
        Ok(Self {
            target,
            file,
            file_path,
            root: CString::new("/")?,
            raise,
        })
    }

    // SAFETY (all below): plain syscalls on values we own; their results
    // do not matter, only the check each makes.
    #[inline(always)]
    pub fn kill(&self) {
        unsafe { libc::kill(self.target.id() as i32, 0) };
    }
    #[inline(always)]
    pub fn setuid(&self) {
        unsafe { libc::setuid(0) };
    }
    #[inline(always)]
    pub fn setgid(&self) {
        unsafe { libc::setgid(0) };
    }
    #[inline(always)]
    pub fn chroot(&self) {
        unsafe { libc::chroot(self.root.as_ptr()) };
    }
    #[inline(always)]
    pub fn fchown(&self) {
        unsafe { libc::fchown(self.file.as_raw_fd(), 1000, u32::MAX) };
    }
    #[inline(always)]
    pub fn setrlimit(&self) {
        unsafe { libc::setrlimit(libc::RLIMIT_MSGQUEUE, &self.raise) };
    }
    #[inline(always)]
    pub fn mmap(&self) {
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p != libc::MAP_FAILED {
                libc::munmap(p, 4096);
            }
        }
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        let _ = self.target.kill();
        let _ = self.target.wait();
        let _ = fs::remove_file(&self.file_path);
    }
}

pub fn worker(args: &WorkerArgs) -> Result<()> {
    // SAFETY: prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let ops = Ops::new()?;
    if let Some(cpu) = args.cpu {
        pin_to(cpu);
    }
    let procs: Vec<File> = args
        .cgroups
        .iter()
        .map(|c| {
            OpenOptions::new()
                .write(true)
                .open(c.join("cgroup.procs"))
                .with_context(|| format!("opening {}/cgroup.procs", c.display()))
        })
        .collect::<Result<_>>()?;
    enter(&procs[0])?;
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line)? == 0 {
            break;
        }
        let mut words = line.split_whitespace().skip(1).map(str::parse::<u64>);
        let (Some(Ok(ms)), Some(Ok(visit))) = (words.next(), words.next()) else {
            bail!("worker: expected `go <ms> <visit_ms>`, got {line:?}");
        };
        let total = Duration::from_millis(ms);
        let visit_ms = (visit > 0).then_some(visit);
        let result = match args.workload {
            Workload::Kill => timed_loop(total, WINDOW.min(total), || ops.kill()),
            Workload::Mmap => timed_loop(total, WINDOW.min(total), || ops.mmap()),
            Workload::Mixed => hopping(&procs, total, |_| {
                timed_loop_visit(visit_ms, total, || {
                    ops.kill();
                    ops.setuid();
                    ops.setgid();
                    ops.chroot();
                    ops.fchown();
                    ops.setrlimit();
                })
            })?,
            Workload::Storm => storm_loop(&ops, &procs, total, visit_ms)?,
            Workload::Overflow => overflow_loop(&ops, &procs)?,
        };
        writeln!(out, "{}", serde_json::to_string(&result)?)?;
        out.flush()?;
    }
    drop(ops);
    Ok(())
}

/// Checks per cgroup visit of the overflow loop: more than a counter's
/// evidence budget, so that the budget, not the visit, bounds the records.
const OVERFLOW_VISIT: u64 = 64;

/// The storm's overflow phase: one visit to each cgroup, each check from a
/// new comm (`PR_SET_NAME`), so each of a counter's first checks is a new
/// evidence key. Not timed: it makes a fixed number of checks.
fn overflow_loop(ops: &Ops, procs: &[File]) -> Result<WorkerResult> {
    let mut r = WorkerResult::default();
    let mut name = [0u8; 16];
    let pid = std::process::id() % 10_000;
    let start = Instant::now();
    for (pos, procs) in procs.iter().enumerate() {
        if pos > 0 {
            enter(procs)?;
        }
        for _ in 0..OVERFLOW_VISIT {
            name.fill(0);
            let mut cursor = std::io::Cursor::new(&mut name[..15]);
            let _ = write!(cursor, "o{pid}-{:x}", r.iters);
            // SAFETY: a NUL-terminated name of at most 15 bytes.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
            ops.kill();
            r.iters += 1;
        }
    }
    r.wall_ns = start.elapsed().as_nanos() as u64;
    Ok(r)
}

/// The `q` quantile (0: minimum, 0.5: median) of ns per iteration over windows.
pub fn window_stat(windows: &[(u64, u64)], q: f64) -> f64 {
    let mut v: Vec<f64> = windows
        .iter()
        .filter(|(i, _)| *i > 0)
        .map(|&(i, c)| c as f64 / i as f64)
        .collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Writes our pid to a cgroup.procs.
pub fn enter(procs: &File) -> Result<()> {
    let mut f = procs;
    f.write_all(std::process::id().to_string().as_bytes())
        .context("moving into a cgroup")?;
    Ok(())
}

pub const CHUNK: u64 = 64;

/// Windows of the single-cgroup loops.
pub const WINDOW: Duration = Duration::from_millis(25);

/// Runs `body` in chunks until `total` wall time has passed, timing each
/// `window` of it.
pub fn timed_loop(total: Duration, window: Duration, mut body: impl FnMut()) -> WorkerResult {
    let w0 = Instant::now();
    let mut r = WorkerResult::default();
    loop {
        let (start, c0) = (Instant::now(), thread_cpu_ns());
        let mut iters = 0;
        loop {
            for _ in 0..CHUNK {
                body();
            }
            iters += CHUNK;
            if start.elapsed() >= window {
                break;
            }
        }
        let cpu = thread_cpu_ns() - c0;
        r.iters += iters;
        r.cpu_ns += cpu;
        r.windows.push((iters, cpu));
        if w0.elapsed() >= total {
            break;
        }
    }
    r.wall_ns = w0.elapsed().as_nanos() as u64;
    r
}

/// One visit of a hopping loop: a single window.
pub fn timed_loop_visit(
    visit_ms: Option<u64>,
    total: Duration,
    body: impl FnMut(),
) -> WorkerResult {
    let visit = visit_ms.map_or(total, Duration::from_millis);
    timed_loop(visit, visit, body)
}

/// Visits the cgroups in turn, running `visit` in each, until `total` has
/// passed and every cgroup was visited; adds the visits up.
pub fn hopping(
    procs: &[File],
    total: Duration,
    mut visit: impl FnMut(usize) -> WorkerResult,
) -> Result<WorkerResult> {
    let started = Instant::now();
    let mut sum = WorkerResult::default();
    let mut i = 0;
    loop {
        let pos = i % procs.len();
        if i > 0 {
            enter(&procs[pos])?;
        }
        let r = visit(pos);
        sum.iters += r.iters;
        sum.cpu_ns += r.cpu_ns;
        sum.wall_ns += r.wall_ns;
        sum.made.extend(r.made);
        sum.windows.extend(r.windows);
        i += 1;
        if i >= procs.len() && started.elapsed() >= total {
            return Ok(sum);
        }
    }
}

/// A capability and the call that makes one check of it.
type CapOp = (u32, fn(&Ops));

/// The storm: in each cgroup, iterations of eight kills and one of the other
/// five checks in turn. Reports what it made per (cgroup, cap).
pub fn storm_loop(
    ops: &Ops,
    procs: &[File],
    total: Duration,
    visit_ms: Option<u64>,
) -> Result<WorkerResult> {
    let others: [CapOp; 5] = [
        (CAP_SETUID, Ops::setuid),
        (CAP_SETGID, Ops::setgid),
        (CAP_SYS_CHROOT, Ops::chroot),
        (CAP_CHOWN, Ops::fchown),
        (CAP_SYS_RESOURCE, Ops::setrlimit),
    ];
    let mut r = hopping(procs, total, |pos| {
        let mut k = 0usize;
        let mut r = timed_loop_visit(visit_ms, total, || {
            for _ in 0..8 {
                ops.kill();
            }
            (others[k % 5].1)(ops);
            k += 1;
        });
        debug_assert_eq!(k as u64, r.iters);
        r.made.push((pos, CAP_KILL, 8 * r.iters));
        for (j, (cap, _)) in others.iter().enumerate() {
            let n = (r.iters / 5) + u64::from((j as u64) < r.iters % 5);
            r.made.push((pos, *cap, n));
        }
        r
    })?;
    // One entry per (cgroup, cap).
    let mut merged: BTreeMap<(usize, u32), u64> = BTreeMap::new();
    for (pos, cap, n) in r.made.drain(..) {
        *merged.entry((pos, cap)).or_default() += n;
    }
    r.made = merged
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|((p, c), n)| (p, c, n))
        .collect();
    Ok(r)
}
