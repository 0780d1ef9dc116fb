//! `capprof record`: profile every container (or the named ones) on this
//! host until stopped, one profile per container.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use futures_util::StreamExt as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    cgroup,
    engine::{self, Engine},
    error::Error,
    fsutil,
    observer::{Backend, Observer, preflight, reader::read_events},
    recorder::{Recorder, profile_path, watch_container_roots},
};

/// Record the capabilities every container uses, until Ctrl-C, SIGTERM or
/// --duration; write DIR/<container-name>.json for each. A container that
/// exits while recording is written at once.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  capprof record --out profiles --duration 60 &\n  docker run --name web … ; capprof export --format docker profiles/web.json"
)]
pub struct RecordArgs {
    /// Directory for the profiles (created if missing).
    #[arg(long, short, value_name = "DIR", env = "CAPPROF_OUT")]
    pub out: PathBuf,
    /// Only these containers (name or id prefix); repeatable. Default: all.
    #[arg(long = "container", short = 'c', value_name = "NAME_OR_ID")]
    pub containers: Vec<String>,
    /// Stop after this many seconds.
    #[arg(long, short, value_name = "SECONDS", env = "CAPPROF_DURATION")]
    pub duration: Option<u64>,
    /// The engine's API socket (default: $DOCKER_HOST, else /var/run/docker.sock).
    #[arg(long, value_name = "unix://PATH", env = "CAPPROF_ENGINE")]
    pub engine: Option<String>,
    /// Also watch this cgroup v2 subtree (relative to the mount) for containers.
    #[arg(long = "cgroup-root", value_name = "PATH")]
    pub cgroup_roots: Vec<String>,
    /// Use this backend instead of the best one the kernel offers.
    #[arg(long, value_enum, env = "CAPPROF_BACKEND")]
    pub backend: Option<Backend>,
}

/// How long a dead container's profile waits for the engine's inspect reply.
const INSPECT_WAIT: Duration = Duration::from_secs(5);

pub fn main(args: RecordArgs) -> Result<ExitCode, Error> {
    preflight()?;
    let mount = cgroup::cgroup2_mount().map_err(|e| Error::usage(e.to_string()))?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", args.out.display())))?;
    fsutil::check_writable(&args.out.join(".capprof-probe"))
        .map_err(|e| Error::usage(format!("cannot write in {}: {e}", args.out.display())))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(record(args, mount))
}

async fn record(args: RecordArgs, mount: PathBuf) -> Result<ExitCode, Error> {
    let endpoint = args
        .engine
        .clone()
        .unwrap_or_else(engine::endpoint_from_env);
    let engine = Engine::connect(&endpoint)
        .await
        .map_err(|e| Error::usage(e.to_string()))?;
    let mut observer = Observer::load(args.backend)?;

    let watched = watch_container_roots(
        &mut observer,
        &mount,
        &engine.cgroup_parents(),
        &args.cgroup_roots,
    )?;
    if watched.is_empty() {
        return Err(Error::usage(
            "no container cgroup subtree to watch (try --cgroup-root)",
        ));
    }

    let events_ring = observer.take_events()?;
    let (stop_tx, stop_rx) = oneshot::channel();
    let (tx, mut rx) = mpsc::channel(4096);
    let reader = tokio::spawn(read_events(events_ring, tx, stop_rx));
    let mut recorder = Recorder::new(&mount, watched.clone(), &observer);
    let mut engine_events = Box::pin(engine.events());
    let (info_tx, mut info_rx) = mpsc::channel::<(String, Option<engine::ContainerInfo>)>(256);
    // Containers whose inspect is in flight, since when.
    let mut inspecting = std::collections::HashMap::new();
    for id in engine.running().await {
        if let Some(info) = engine.inspect(&id).await {
            recorder.on_inspect(info);
        }
    }
    let engine = std::sync::Arc::new(engine);
    eprintln!(
        "capprof: recording containers of {} {} under {} ({} backend); Ctrl-C to stop",
        engine.flavor.runtime_name(),
        engine.version,
        watched.join(", "),
        observer.backend()
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
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut written = BTreeSet::new();
    let mut engine_alive = true;
    loop {
        tokio::select! {
            Some(r) = rx.recv() => recorder.on_record(r),
            ev = engine_events.next(), if engine_alive => match ev {
                Some(ev) => {
                    if ev.action == "start" {
                        let (engine, info_tx, id) = (engine.clone(), info_tx.clone(), ev.id.clone());
                        inspecting.insert(id.clone(), std::time::Instant::now());
                        tokio::spawn(async move {
                            let info = engine.inspect(&id).await;
                            let _ = info_tx.send((id, info)).await;
                        });
                    }
                    recorder.on_engine_event(ev);
                }
                None => {
                    tracing::warn!("the engine's event stream ended; finalizing on stop only");
                    engine_alive = false;
                }
            },
            Some((id, info)) = info_rx.recv() => {
                inspecting.remove(&id);
                if let Some(info) = info {
                    recorder.on_inspect(info);
                }
            }
            _ = tick.tick() => {
                for id in recorder.due(Duration::from_millis(300)) {
                    // Its engine's answer is on the way (Podman answers only
                    // after its cleanup): wait for it, a while.
                    if inspecting.get(&id).is_some_and(|t| t.elapsed() < INSPECT_WAIT) {
                        continue;
                    }
                    finalize(&mut recorder, &mut observer, &id, &args, &mut written)?;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
        }
    }
    let _ = stop_tx.send(());
    let _ = reader.await;
    while let Ok(r) = rx.try_recv() {
        recorder.on_record(r);
    }
    while let Ok((_, info)) = info_rx.try_recv() {
        if let Some(info) = info {
            recorder.on_inspect(info);
        }
    }
    for id in recorder.ids() {
        finalize(&mut recorder, &mut observer, &id, &args, &mut written)?;
    }
    eprintln!(
        "capprof: wrote {} profile(s) to {}",
        written.len(),
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn finalize(
    recorder: &mut Recorder,
    observer: &mut Observer,
    id: &str,
    args: &RecordArgs,
    written: &mut BTreeSet<String>,
) -> Result<(), Error> {
    let Some(rec) = recorder.get(id) else {
        return Ok(());
    };
    if !args.containers.is_empty() && !args.containers.iter().any(|w| rec.matches(w)) {
        // Not wanted: still drain its counters so the kernel map stays small.
        let _ = recorder.finalize(id, observer)?;
        return Ok(());
    }
    let path = profile_path(&args.out, rec);
    let Some(profile) = recorder.finalize(id, observer)? else {
        return Ok(());
    };
    write_profile(&path, &profile.to_json())?;
    written.insert(path.display().to_string());
    {
        eprintln!(
            "capprof: {} -> {} (allowlist: {})",
            profile.subject.name.as_deref().unwrap_or(id),
            path.display(),
            if profile.allowlist.is_empty() {
                "none".to_owned()
            } else {
                profile
                    .allowlist
                    .iter()
                    .map(|c| c.short_name())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        );
    }
    Ok(())
}

fn write_profile(path: &Path, json: &str) -> Result<(), Error> {
    fsutil::write_atomic(path, json.as_bytes())
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))
}
