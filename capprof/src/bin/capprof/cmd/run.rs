//! `capprof run`: profile one command and all its descendants in a fresh
//! cgroup.

use std::{
    collections::BTreeSet,
    ffi::{CString, OsString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use capprof::{
    capability::Cap,
    capset::{self, CapLimit},
    cgroup::{self, OwnedCgroup},
    fsutil,
    observer::{
        Backend, Classification, Count, KernelStats, LoadOptions, LoadPhases, MapSizes, Observer,
        WatchMode,
        events::RingEvent,
        preflight,
        reader::{EventReader, Received},
        warm,
    },
    profile::{self, Class, Observation, Profile, RunSpec, Subject, SubjectKind, rfc3339},
    table,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table on stderr.
    Table,
    /// The table on stderr and, without --out, the JSON profile on stdout.
    Json,
}

/// Run CMD in a fresh cgroup v2 and profile the capability checks of CMD
/// and all its descendants until the last of them exits. Exits with CMD's
/// exit status.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  capprof run --out ping.json -- ping -c1 127.0.0.1\n  capprof export --format docker ping.json"
)]
pub struct RunArgs {
    /// Write the JSON profile to FILE (atomically).
    #[arg(long, short, value_name = "FILE", env = "CAPPROF_RUN_OUT")]
    pub out: Option<PathBuf>,
    /// Output format; `json` prints the profile on stdout when --out is not given.
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table, env = "CAPPROF_RUN_FORMAT")]
    pub format: OutputFormat,
    /// Use this backend instead of the best one the kernel offers.
    #[arg(long, value_enum, env = "CAPPROF_BACKEND")]
    pub backend: Option<Backend>,
    /// Do not print the table.
    #[arg(long, short)]
    pub quiet: bool,
    /// Run CMD with only these capabilities (comma-separated, `none` for
    /// none): its bounding, permitted, effective, inheritable and ambient
    /// sets are all cut down to LIST before it starts.
    #[arg(long, value_name = "LIST", env = "CAPPROF_CAPS")]
    pub caps: Option<String>,
    /// Load and verify the eBPF programs afresh, and keep none loaded
    /// afterwards. By default a run keeps this build's verified programs
    /// and their maps under /sys/fs/bpf/capprof-run (their links stay
    /// attached, watching nothing, for 2 s after a run, for the next run to
    /// take over; then the programs are idle), and the next run starts from
    /// them without the verifier; removing that directory frees them.
    #[arg(long)]
    pub cold: bool,
    /// The command to run, after `--`.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

pub fn main(args: RunArgs) -> Result<ExitCode, Error> {
    preflight()?;
    let mount = cgroup::cgroup2_mount().map_err(|e| Error::usage(e.to_string()))?;
    let program = resolve_program(&args.command[0])?;
    let limit = match &args.caps {
        Some(list) => {
            let caps = capset::parse_list(list)
                .map_err(|e| Error::usage(format!("--caps {list:?}: {e}")))?;
            Some((
                caps.clone(),
                CapLimit::new(&caps).map_err(|e| Error::internal(e.to_string()))?,
            ))
        }
        None => None,
    };
    if let Some(out) = &args.out {
        fsutil::check_writable(out)
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", out.display())))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(run(args, program, mount, limit))
}

/// Finds the program as the shell would, so that a missing command is one
/// clear error before anything is loaded.
fn resolve_program(cmd: &OsString) -> Result<PathBuf, Error> {
    let shown = cmd.to_string_lossy();
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
    };
    if cmd.as_bytes().contains(&b'/') {
        let path = PathBuf::from(cmd);
        return if is_exec(&path) {
            Ok(path)
        } else if path.exists() {
            Err(Error::usage(format!("{shown}: not an executable file")))
        } else {
            Err(Error::usage(format!("command not found: {shown}")))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(cmd))
        .find(|p| is_exec(p))
        .ok_or_else(|| Error::usage(format!("command not found: {shown}")))
}

async fn run(
    args: RunArgs,
    program: PathBuf,
    mount: PathBuf,
    limit: Option<(Vec<Cap>, CapLimit)>,
) -> Result<ExitCode, Error> {
    // Where the time goes, for CAPPROF_LOG=debug (BENCHMARKS.md's table).
    let mut phases = LoadPhases::new(Instant::now());
    let (cgroup, held) = start_held(&args, &program, &mount, limit.as_ref())?;
    phases.mark("cgroup and CMD");
    let mut observer = Observer::load_with(LoadOptions {
        backend: args.backend,
        warm: (!args.cold).then(|| PathBuf::from(warm::DEFAULT_ROOT)),
        sizes: MapSizes::Command,
        ..LoadOptions::default()
    })?;
    phases.mark("load");
    tracing::info!(
        "loaded {} backend ({} classification) in {:?}{}",
        observer.backend(),
        observer.classification(),
        observer.load_time(),
        if observer.started_warm() {
            ", warm"
        } else {
            ""
        }
    );
    // Start the reader before anything can happen in the cgroup.
    let (reader, mut rx) = EventReader::spawn(&mut observer)?;
    let collector = tokio::spawn(async move {
        let mut all = vec![];
        while let Some(r) = rx.recv().await {
            all.push(r);
        }
        all
    });
    observer.watch(cgroup.id(), WatchMode::Command)?;

    let start = SystemTime::now();
    let status = wait_child(held.release().await?, &args.command[0]).await?;
    wait_for_descendants(&cgroup).await;
    let end = SystemTime::now();
    phases.mark("CMD");

    let seen = collect(&mut observer, reader, collector, &cgroup).await?;
    let subject = subject(&args.command, &cgroup, limit.map(|(caps, _)| caps));
    drop(cgroup);
    let profile = build_profile(&observer, seen, subject, (start, end));
    write_profile(&args, &profile)?;
    phases.mark("profile");
    observer.drop_in_background();
    phases.mark("detach");
    phases.log("run");
    Ok(exit_code(status))
}

/// Creates CMD's cgroup and starts CMD in it, held before its exec.
///
/// CMD's process moves into the cgroup now and waits there, before its
/// exec, until capprof watches: moving a process waits for an RCU grace
/// period (10-20 ms here), which then passes while capprof loads.
fn start_held(
    args: &RunArgs,
    program: &Path,
    mount: &Path,
    limit: Option<&(Vec<Cap>, CapLimit)>,
) -> Result<(OwnedCgroup, HeldChild), Error> {
    let name = format!("run-{}-{}", std::process::id(), nanos());
    let cgroup = OwnedCgroup::create(mount, &name).map_err(|e| Error::internal(e.to_string()))?;
    // With the profile on stdout, CMD's own output goes to stderr, so that
    // stdout is the JSON alone.
    let json_on_stdout = args.out.is_none() && args.format == OutputFormat::Json;
    let held = HeldChild::start(
        &args.command,
        program,
        &cgroup,
        json_on_stdout,
        limit.map(|(_, l)| *l),
    )?;
    Ok((cgroup, held))
}

/// What the kernel saw of the command: its counts, the records the reader
/// received and the kernel's own losses.
struct Seen {
    counts: Vec<Count>,
    received: Vec<Received>,
    stats: KernelStats,
}

/// Stops the reader, then drains the counts of the cgroup's subtree (and
/// of any cgroup a record named) and stops watching them.
async fn collect(
    observer: &mut Observer,
    reader: EventReader,
    collector: tokio::task::JoinHandle<Vec<Received>>,
    cgroup: &OwnedCgroup,
) -> Result<Seen, Error> {
    reader
        .stop()
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    let received = collector
        .await
        .map_err(|e| Error::internal(format!("event reader failed: {e}")))?;
    let mut ids: BTreeSet<u64> = cgroup.subtree_ids().into_iter().collect();
    ids.extend(received.iter().filter_map(|r| match r.record {
        RingEvent::Cgroup(c) => Some(c.cgroup_id),
        _ => None,
    }));
    let counts = observer.drain_counts(|id| ids.contains(&id))?;
    let stats = observer.kernel_stats()?;
    let ids: Vec<u64> = ids.into_iter().collect();
    observer.unwatch(cgroup.id(), &ids)?;
    Ok(Seen {
        counts,
        received,
        stats,
    })
}

/// The profile's subject: CMD, its cgroup, and the capabilities it was
/// limited to.
fn subject(command: &[OsString], cgroup: &OwnedCgroup, caps: Option<Vec<Cap>>) -> Subject {
    Subject {
        kind: SubjectKind::Command,
        cgroup: Some(cgroup.relative().to_owned()),
        command: Some(
            command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ),
        capabilities: caps,
        run: Some(RunSpec::for_command(command)),
        ..Default::default()
    }
}

/// Builds the profile of what was `seen` between `start` and `end`.
fn build_profile(
    observer: &Observer,
    seen: Seen,
    subject: Subject,
    (start, end): (SystemTime, SystemTime),
) -> Profile {
    let observation = Observation {
        start: rfc3339(start),
        end: rfc3339(end),
        backend: observer.backend().to_string(),
        classification: observer.classification().to_string(),
        lost_records: seen.stats.ringbuf_lost,
        // Counted from this command's own counters by the builder.
        unclassified_checks: 0,
        recursion_misses: seen.stats.recursion_misses,
        unobservable: Class::unobservable_on(observer.backend()),
        partial: None,
    };
    if let Classification::Uncalibrated(reason) = observer.classification() {
        tracing::warn!("classification uncalibrated: {reason}");
    }
    if seen.stats.counts_full > 0 {
        tracing::warn!(
            "{} checks were not counted: the counters' table was full",
            seen.stats.counts_full
        );
    }
    profile::from_observer(observer, seen.counts, &seen.received, subject, observation)
}

/// Prints the table (unless --quiet) and writes the JSON profile to
/// --out, or to stdout with --format json.
fn write_profile(args: &RunArgs, profile: &Profile) -> Result<(), Error> {
    if !args.quiet {
        // Nothing is left to tell if stderr cannot be written to.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            table::render_profile(profile).as_bytes(),
        );
    }
    let json = profile.to_json();
    match (&args.out, args.format) {
        (Some(out), _) => fsutil::write_atomic(out, json.as_bytes())
            .map_err(|e| Error::usage(format!("cannot write {}: {e}", out.display())))?,
        (None, OutputFormat::Json) => super::write_stdout(&json)?,
        (None, OutputFormat::Table) => {}
    }
    Ok(())
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}

/// CMD, started in the cgroup and held before its exec until `release`.
/// Dropped unreleased, it closes the gate and CMD's process exits without
/// running CMD.
struct HeldChild {
    spawned: tokio::task::JoinHandle<std::io::Result<tokio::process::Child>>,
    gate: OwnedFd,
    shown: String,
}

impl HeldChild {
    /// Forks CMD's process, which moves itself into the cgroup (so CMD's
    /// very first check is seen) and then waits on the gate.
    fn start(
        command: &[OsString],
        program: &Path,
        cgroup: &OwnedCgroup,
        stdout_to_stderr: bool,
        limit: Option<CapLimit>,
    ) -> Result<Self, Error> {
        let procs = CString::new(cgroup.procs_path().as_os_str().as_bytes())
            .map_err(|_| Error::internal("cgroup path holds a NUL byte"))?;
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::internal(format!(
                "cannot make a pipe: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: pipe2 just opened both, and nothing else owns them.
        let (wait_end, gate) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let (wait_fd, gate_fd) = (wait_end.as_raw_fd(), gate.as_raw_fd());
        // The forking thread's name is CMD's comm until its exec completes,
        // and shows in evidence of the exec's own checks: keep capprof's,
        // not the blocking thread's.
        let comm = std::fs::read("/proc/self/comm")
            .ok()
            .and_then(|c| CString::new(c.trim_ascii_end()).ok());
        let mut cmd = tokio::process::Command::new(program);
        cmd.arg0(&command[0]).args(&command[1..]);
        if stdout_to_stderr {
            let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr())
                .try_clone_to_owned()
                .map_err(|e| Error::internal(format!("cannot duplicate stderr: {e}")))?;
            cmd.stdout(std::process::Stdio::from(stderr));
        }
        // SAFETY: only async-signal-safe calls (open, write, close, prctl,
        // capget, capset, read) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Before the move into the watched cgroup: capset's own
                // CAP_SETPCAP check is capprof's, not CMD's.
                if let Some(limit) = &limit {
                    limit.apply()?;
                }
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
                if let Some(comm) = &comm {
                    libc::prctl(libc::PR_SET_NAME, comm.as_ptr());
                }
                // Our copy of the gate would keep the pipe from ever
                // reading EOF when capprof drops its own.
                libc::close(gate_fd);
                let mut byte = 0u8;
                loop {
                    match libc::read(wait_fd, (&raw mut byte).cast(), 1) {
                        1 => return Ok(()),
                        0 => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
                        _ if std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::Interrupted => {}
                        _ => return Err(std::io::Error::last_os_error()),
                    }
                }
            });
        }
        // spawn returns only once CMD has exec'd (or failed to), which is
        // after the gate opens: run it on a blocking thread.
        let spawned = tokio::task::spawn_blocking(move || {
            let child = cmd.spawn();
            drop(wait_end);
            child
        });
        Ok(Self {
            spawned,
            gate,
            shown: command[0].to_string_lossy().into_owned(),
        })
    }

    /// Lets CMD exec, and returns it once it has.
    async fn release(self) -> Result<tokio::process::Child, Error> {
        // SAFETY: writing one byte from a valid buffer to our pipe.
        let written = unsafe { libc::write(self.gate.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        if written != 1 {
            return Err(Error::internal(format!(
                "cannot start CMD: {}",
                std::io::Error::last_os_error()
            )));
        }
        drop(self.gate);
        let shown = self.shown;
        let spawned = self
            .spawned
            .await
            .map_err(|e| Error::internal(format!("cannot start {shown}: {e}")))?;
        spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::usage(format!("command not found: {shown}")),
            std::io::ErrorKind::PermissionDenied => {
                Error::usage(format!("{shown}: permission denied"))
            }
            _ => Error::internal(format!("cannot start {shown}: {e}")),
        })
    }
}

/// Waits for CMD, forwarding SIGTERM.
async fn wait_child(
    mut child: tokio::process::Child,
    cmd: &OsString,
) -> Result<std::process::ExitStatus, Error> {
    let shown = cmd.to_string_lossy();
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::internal(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::internal(e.to_string()))?;
    loop {
        tokio::select! {
            status = child.wait() => {
                return status.map_err(|e| Error::internal(format!("waiting for {shown}: {e}")));
            }
            // The terminal sends SIGINT to the whole foreground group, CMD
            // included: let CMD decide, then profile what it did.
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {
                if let Some(pid) = child.id() {
                    // SAFETY: signalling our own child.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        }
    }
}

/// Waits until no process is left in the cgroup: daemons CMD started are
/// part of its profile.
async fn wait_for_descendants(cgroup: &OwnedCgroup) {
    let started = Instant::now();
    let mut announced = false;
    let Ok(mut sigint) = signal(SignalKind::interrupt()) else {
        return;
    };
    while cgroup.populated() {
        if !announced && started.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "capprof: waiting for the processes CMD left in {} (Ctrl-C stops them)",
                cgroup.relative()
            );
            announced = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = sigint.recv() => cgroup.kill_all(),
        }
    }
}
