//! `capprof record`: profile every container (or the named ones) on this
//! host until stopped, one profile per container.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use capprof::{
    cgroup, fsutil,
    observer::{Backend, Observer, preflight},
    profile::Profile,
    recorder::{Finalized, Recorder, Session, connect_source, profile_path, watch_container_roots},
};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// Record the capabilities every container uses, until Ctrl-C, SIGTERM or
/// --duration; write DIR/<container-name>.json for each. A container that
/// exits while recording is written at once.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  capprof record --out profiles --duration 60 &\n  docker run --name web … ; capprof export --format docker profiles/web.json"
)]
pub struct RecordArgs {
    /// Directory for the profiles (created if missing).
    #[arg(long, short, value_name = "DIR", env = "CAPPROF_RECORD_OUT")]
    pub out: PathBuf,
    /// Only these containers (name or id prefix); repeatable. Default: all.
    #[arg(long = "container", short = 'c', value_name = "NAME_OR_ID")]
    pub containers: Vec<String>,
    /// Stop after this many seconds.
    #[arg(long, short, value_name = "SECONDS", env = "CAPPROF_DURATION")]
    pub duration: Option<u64>,
    /// The engine's API socket (default: $DOCKER_HOST, else /var/run/docker.sock).
    #[arg(
        long,
        value_name = "unix://PATH",
        env = "CAPPROF_ENGINE",
        conflicts_with = "cri"
    )]
    pub engine: Option<String>,
    /// Name containers through this CRI runtime socket (containerd,
    /// CRI-O): profiles go to DIR/<namespace>/<pod>/<container>.json.
    /// Without --cri or --engine, the CRI runtime at
    /// /run/containerd/containerd.sock or /var/run/crio/crio.sock is used
    /// when no Docker engine answers.
    #[arg(long, value_name = "unix://PATH", env = "CAPPROF_CRI")]
    pub cri: Option<String>,
    /// Also watch this cgroup v2 subtree (relative to the mount) for containers.
    #[arg(long = "cgroup-root", value_name = "PATH")]
    pub cgroup_roots: Vec<String>,
    /// Use this backend instead of the best one the kernel offers.
    #[arg(long, value_enum, env = "CAPPROF_BACKEND")]
    pub backend: Option<Backend>,
    /// Write environment values into `subject.run` (they can hold secrets;
    /// by default only the names are kept, and `capprof verify` takes the
    /// values from the container while it still exists).
    #[arg(long)]
    pub keep_env: bool,
}

/// How often exited containers are looked for.
const TICK: Duration = Duration::from_millis(100);

pub fn main(args: RecordArgs) -> Result<ExitCode, Error> {
    if args.duration == Some(0) {
        return Err(Error::usage(
            "--duration 0 would record nothing: give a number of seconds, or leave it out to record until Ctrl-C",
        ));
    }
    preflight()?;
    let mount = cgroup::cgroup2_mount().map_err(|e| Error::usage(e.to_string()))?;
    for root in &args.cgroup_roots {
        let dir = mount.join(root.trim_start_matches('/'));
        if !dir.is_dir() {
            return Err(Error::usage(format!(
                "--cgroup-root {root}: no such cgroup v2 directory ({} does not exist)",
                dir.display()
            )));
        }
    }
    if args.out.exists() && !args.out.is_dir() {
        return Err(Error::usage(format!(
            "--out {}: not a directory (record writes one profile per container into a directory)",
            args.out.display()
        )));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(record(args, mount))
}

async fn record(args: RecordArgs, mount: PathBuf) -> Result<ExitCode, Error> {
    let source = connect_source(args.engine.as_deref(), args.cri.as_deref())
        .await
        .map_err(|e| Error::usage(e.to_string()))?;
    // Only once the engine answered: a failed start leaves nothing behind.
    prepare_out(&args.out)?;
    let mut observer = Observer::load(args.backend)?;

    let watched = watch_container_roots(
        &mut observer,
        &mount,
        &source.cgroup_parents(&mount),
        &args.cgroup_roots,
    )?;
    if watched.is_empty() {
        return Err(Error::usage(
            "no container cgroup subtree to watch (try --cgroup-root)",
        ));
    }

    let mut recorder = Recorder::new(&mount, watched.clone(), &observer);
    recorder.keep_env(args.keep_env);
    let backend = observer.backend();
    let described = source.describe();
    let mut session = Session::start_with(observer, recorder, Some(source), TICK).await?;
    let until = match args.duration {
        Some(secs) => format!("for {secs} s (Ctrl-C stops sooner)"),
        None => "until Ctrl-C".to_owned(),
    };
    eprintln!(
        "capprof: recording containers of {} under {} ({} backend) {until}",
        described,
        watched.join(", "),
        backend
    );

    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::internal(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::internal(e.to_string()))?;
    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut written = BTreeSet::new();
    loop {
        tokio::select! {
            finalized = session.next() => {
                for Finalized { id, profile } in finalized {
                    write(&session, &id, profile?, &args, &mut written)?;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    session
        .stop()
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    for id in session.recorder().ids() {
        let profile = session.finalize(&id)?;
        write(&session, &id, profile, &args, &mut written)?;
    }
    let why = match written.len() {
        0 => format!(": {}", why_none(&session, &args.containers)),
        _ => String::new(),
    };
    eprintln!(
        "capprof: wrote {} profile(s) to {}{why}",
        written.len(),
        args.out.display()
    );
    for wanted in &args.containers {
        let seen = session.recorder().records().any(|r| r.matches(wanted));
        if !seen {
            crate::log::warn(format_args!(
                "--container {wanted} matched no container that made a capability check while recording"
            ));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates `--out` and checks that it takes files.
fn prepare_out(out: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", out.display())))?;
    fsutil::check_writable(&out.join(".capprof-probe"))
        .map_err(|e| Error::usage(format!("cannot write in {}: {e}", out.display())))
}

/// Why a recording wrote no profile, in the user's terms.
fn why_none(session: &Session, wanted: &[String]) -> String {
    let seen: Vec<_> = session
        .recorder()
        .records()
        .filter(|r| !r.info.sandbox)
        .collect();
    if seen.is_empty() {
        return "no container made a capability check while recording (none started, or none \
                ran under the watched cgroups)"
            .to_owned();
    }
    if !wanted.is_empty() && !seen.iter().any(|r| wanted.iter().any(|w| r.matches(w))) {
        return format!(
            "none of the {} container(s) seen matched --container {}",
            seen.len(),
            wanted.join(", ")
        );
    }
    "no container seen had checks to write".to_owned()
}

/// Writes a finalized container's profile, if it is one of the wanted.
fn write(
    session: &Session,
    id: &str,
    profile: Option<Profile>,
    args: &RecordArgs,
    written: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let Some(rec) = session.recorder().get(id) else {
        return Ok(());
    };
    // Containers that are not wanted are finalized all the same, so that
    // the kernel's map stays small.
    if !args.containers.is_empty() && !args.containers.iter().any(|w| rec.matches(w)) {
        return Ok(());
    }
    let Some(profile) = profile else {
        return Ok(());
    };
    // A pod's sandbox (pause) container is the runtime's, not a workload.
    if rec.info.sandbox {
        return Ok(());
    }
    let path = profile_path(&args.out, rec);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    write_profile(&path, &profile.to_json())?;
    written.insert(path.display().to_string());
    eprintln!(
        "capprof: {} -> {} (allowlist: {})",
        capprof::text::visible(&match (&profile.subject.k8s, &profile.subject.name) {
            (Some(k8s), Some(name)) => format!(
                "{}/{}/{name}",
                k8s.namespace,
                k8s.pod.as_deref().unwrap_or("-")
            ),
            (None, Some(name)) => name.clone(),
            (_, None) => id.to_owned(),
        }),
        path.display(),
        capprof::capability::display_list(&profile.allowlist)
    );
    Ok(())
}

fn write_profile(path: &Path, json: &str) -> Result<(), Error> {
    fsutil::write_atomic(path, json.as_bytes())
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
}
