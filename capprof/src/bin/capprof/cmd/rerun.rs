//! What `capprof verify` and `capprof minimize` share: the probe and run
//! flags, re-creating the workload a profile describes, one progress line
//! per run, and cleaning up on every way out, Ctrl-C included.

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use capprof::{
    capability::Cap,
    cgroup,
    engine::{self, ContainerInfo, Engine},
    observer::ObserverError,
    profile::{Profile, RunSpec, SubjectKind},
    proof::{
        Probe, ProofError, RunOptions, Workload,
        command::CommandWorkload,
        container::{ContainerCleanup, ContainerWorkload},
        refusals::RefusalWatch,
        search::Event,
        trust::{self, Original, Untrusted},
    },
};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// The flags of every command that re-runs a workload.
#[derive(Debug, Clone, clap::Args)]
pub struct RerunArgs {
    /// Success is this command passing (exit 0), run on the host with
    /// CAPPROF_CONTAINER_NAME, _ID, _PID and _ADDRESS in its environment
    /// (for a command: CAPPROF_PID). Split into words like a shell would,
    /// but run without one. Retried until it passes or --timeout.
    #[arg(
        long,
        value_name = "CMD",
        conflicts_with = "probe_exec",
        env = "CAPPROF_PROBE"
    )]
    pub probe: Option<String>,
    /// Success is this command passing inside the container (engine exec).
    #[arg(long, value_name = "CMD", env = "CAPPROF_PROBE_EXEC")]
    pub probe_exec: Option<String>,
    /// Runs per tried set: a capability is unneeded only if every run
    /// without it passes.
    #[arg(long, value_name = "N", default_value_t = 3, env = "CAPPROF_RUNS",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Seconds one run may take (until the probe passes, or without a
    /// probe until the workload exits).
    #[arg(long, value_name = "SECONDS", default_value_t = 60, env = "CAPPROF_TIMEOUT",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// The engine's API socket [default: $DOCKER_HOST, else /var/run/docker.sock].
    #[arg(long, value_name = "unix://PATH", env = "CAPPROF_ENGINE")]
    pub engine: Option<String>,
    /// Run what the profile's subject.run asks even where capprof's trust
    /// model refuses it (a `run` profile's command, host paths, devices,
    /// host namespaces, … that the original container was not given; see
    /// the book's "Trust model" page), with a warning. Read the profile first. No
    /// environment variable: trust is given to one profile at a time.
    #[arg(long)]
    pub trust_run: bool,
}

/// A workload ready to re-run, and what to clean up afterwards.
pub struct Prepared {
    pub workload: Workload,
    pub cleanup: Option<ContainerCleanup>,
    pub probe: Option<Probe>,
    /// How the subject is named in messages.
    pub label: String,
}

impl Prepared {
    /// Runs one proof search (`search::verify` or `search::minimize`) on
    /// the workload, from the set `set`: a progress line per run (a bar on
    /// a terminal), and every container it created removed at the end,
    /// also on Ctrl-C or SIGTERM.
    pub async fn search<T>(
        &mut self,
        verb: &'static str,
        steps: u64,
        set: &[Cap],
        search: impl AsyncFnOnce(&mut Workload, &Progress) -> Result<T, ProofError>,
    ) -> Result<T, Error> {
        let progress = Progress::new(verb, steps);
        progress.start(
            &self.label,
            set,
            &self.workload.engine(),
            self.probe.as_ref(),
        );
        let result = guarded(self.cleanup.as_ref(), search(&mut self.workload, &progress)).await;
        progress.finish();
        result
    }
}

/// Reads what is needed to re-run the profile's workload, and checks it
/// before anything runs: the engine answers, the image is there, the
/// environment values can be had, the probe can run, and the trust model
/// accepts what it asks for (or `--trust-run` overrides it). Then says
/// what will run, on stderr. `verb` is the command (`verify`), `set` the
/// most any run will be given.
pub async fn prepare(
    verb: &str,
    path: &str,
    profile: &Profile,
    set: &[Cap],
    args: &RerunArgs,
) -> Result<Prepared, Error> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::usage(
            "capprof must run as root to re-run workloads (containers, cgroups, capability sets)",
        ));
    }
    let no_run = || ProofError::NoRunSpec {
        profile: path.to_owned(),
    };
    let run = profile.subject.run.clone().ok_or_else(no_run)?;
    let probe = match (&args.probe, &args.probe_exec) {
        (Some(line), _) => Some(Probe::host(line)?),
        (None, Some(line)) => Some(Probe::exec(line)?),
        (None, None) => None,
    };
    let mut options = RunOptions {
        probe: probe.clone(),
        timeout: Duration::from_secs(args.timeout),
        refusals: None,
    };
    let mount = cgroup::cgroup2_mount().map_err(|e| Error::usage(e.to_string()))?;
    let subject = &profile.subject;
    let label = subject
        .name
        .clone()
        .or_else(|| subject.command.as_ref().map(|c| c.join(" ")))
        .or_else(|| subject.id.as_deref().map(engine::short_id))
        .map_or_else(|| path.to_owned(), |l| capprof::text::visible(&l));
    if subject.kind == SubjectKind::Command {
        let argv = run.command.clone().ok_or_else(no_run)?;
        gate(path, &trust::assess_command(&argv), args.trust_run)?;
        eprint!("{}", trust::describe(verb, &run, set, None));
        options.refusals = watch_refusals(|_| Ok(()));
        let workload =
            CommandWorkload::new(argv, run.workdir.clone().map(PathBuf::from), options, mount)?;
        return Ok(Prepared {
            workload: Workload::Command(workload),
            cleanup: None,
            probe,
            label,
        });
    }
    let (engine, run) = container_run(path, profile, run, set, args).await?;
    options.refusals = watch_refusals(|w| w.watch_containers(&mount, &engine.cgroup_parents()));
    let cleanup = ContainerCleanup::new(engine.clone());
    let workload = ContainerWorkload::new(engine, run.clone(), options, mount, cleanup.clone());
    eprint!(
        "{}",
        trust::describe(verb, &run, set, Some(&workload.engine_name()))
    );
    Ok(Prepared {
        workload: Workload::Container(Box::new(workload)),
        cleanup: Some(cleanup),
        probe,
        label,
    })
}

/// An observer for the runs' refused capset() calls (`proof::refusals`),
/// set up by `watch`. Without one the proof still runs, on the sampler
/// alone, and says so.
fn watch_refusals(
    watch: impl FnOnce(&RefusalWatch) -> Result<(), ObserverError>,
) -> Option<Arc<RefusalWatch>> {
    let started = RefusalWatch::start().and_then(|w| watch(&w).map(|()| w));
    match started {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            eprintln!(
                "capprof: refused capset() calls are not watched ({e}); failed privilege drops are judged from /proc samples alone"
            );
            None
        }
    }
}

/// A container profile's engine and run spec, with its environment
/// values, once the trust model accepted it: compared with the original
/// container while the engine still has it.
async fn container_run(
    path: &str,
    profile: &Profile,
    run: RunSpec,
    set: &[Cap],
    args: &RerunArgs,
) -> Result<(Arc<Engine>, RunSpec), Error> {
    let Some(image) = run.image.clone() else {
        return Err(ProofError::NoRunSpec {
            profile: path.to_owned(),
        }
        .into());
    };
    let endpoint = args
        .engine
        .clone()
        .unwrap_or_else(engine::endpoint_from_env);
    let engine = Arc::new(Engine::connect(&endpoint).await.map_err(ProofError::from)?);
    if !engine.image_exists(&image).await {
        return Err(ProofError::ImageGone(image).into());
    }
    let original = match profile.subject.id.as_deref() {
        Some(id) if engine::is_container_id(id) => {
            engine.inspect(id).await.filter(|info| info.id == id)
        }
        _ => None,
    };
    let run = with_env(path, profile, run, original.as_ref())?;
    let untrusted = trust::assess(
        &run,
        set,
        original.as_ref().and_then(|o| Original::of(o, &run)),
    );
    gate(path, &untrusted, args.trust_run)?;
    Ok((engine, run))
}

/// Refuses a profile the trust model does not accept, in one line naming
/// the first setting and the flag; with `--trust-run`, warns instead.
fn gate(path: &str, untrusted: &[Untrusted], trust_run: bool) -> Result<(), ProofError> {
    let Some(first) = untrusted.first() else {
        return Ok(());
    };
    if !trust_run {
        return Err(ProofError::Untrusted {
            profile: path.to_owned(),
            setting: first.to_string(),
            more: untrusted.len() - 1,
        });
    }
    crate::log::warn(format_args!(
        "--trust-run: running what capprof would refuse: {}",
        untrusted
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    ));
    Ok(())
}

/// The run spec with its environment values: from the profile
/// (`--keep-env`), else from the original container while it exists.
fn with_env(
    path: &str,
    profile: &Profile,
    mut run: RunSpec,
    original: Option<&ContainerInfo>,
) -> Result<RunSpec, Error> {
    if run.env.is_some() || run.env_names.is_empty() {
        return Ok(run);
    }
    let unavailable = || ProofError::EnvUnavailable {
        profile: path.to_owned(),
        container: profile
            .subject
            .name
            .clone()
            .or_else(|| profile.subject.id.as_deref().map(engine::short_id))
            .unwrap_or_else(|| "(unnamed)".into()),
    };
    let values = original
        .and_then(|o| o.run.as_ref())
        .and_then(|r| r.env.clone())
        .ok_or_else(unavailable)?;
    let wanted: Vec<String> = values
        .into_iter()
        .filter(|kv| {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            run.env_names.iter().any(|n| n == name)
        })
        .collect();
    run.env = Some(wanted);
    Ok(run)
}

/// Runs `work` until it ends, Ctrl-C or SIGTERM; then removes every
/// container it created, whatever happened.
pub async fn guarded<T>(
    cleanup: Option<&ContainerCleanup>,
    work: impl Future<Output = Result<T, ProofError>>,
) -> Result<T, Error> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::internal(e.to_string()))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::internal(e.to_string()))?;
    let result = tokio::select! {
        r = work => Some(r),
        _ = sigint.recv() => None,
        _ = sigterm.recv() => None,
    };
    let removed = match cleanup {
        Some(c) => c.remove_all().await,
        None => 0,
    };
    match result {
        Some(r) => Ok(r?),
        None => Err(Error::Interrupted(format!(
            "interrupted; removed {removed} container(s) capprof had created"
        ))),
    }
}

/// One line per run on stderr, under a progress bar on a terminal.
pub struct Progress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    /// What the work is, said with the first result (so that input found
    /// bad by the first run is still one line).
    intro: std::sync::Mutex<Option<String>>,
}

impl Progress {
    /// `steps`: how many runs at most.
    pub fn new(verb: &'static str, steps: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(steps);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} runs {elapsed} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self {
            bar,
            verb,
            intro: std::sync::Mutex::new(None),
        }
    }

    fn line(&self, text: String) {
        if let Some(intro) = self.intro.lock().ok().and_then(|mut i| i.take()) {
            self.print(intro);
        }
        self.print(text);
    }

    fn print(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn event(&self, event: Event) {
        match event {
            Event::Run {
                without, run, runs, ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_message(match without {
                        None if run > runs => "baseline again, to compare".to_owned(),
                        None => format!("baseline, run {run}/{runs}"),
                        Some(cap) => format!("without {cap}, run {run}/{runs}"),
                    });
                }
            }
            Event::Ran {
                without,
                run,
                runs,
                outcome,
                drift,
                inconclusive,
            } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                let what = match without {
                    // A run the search added: see `proof::search`.
                    None if run > runs => format!("baseline again (run {run}), to compare"),
                    None => format!("baseline, run {run}/{runs}"),
                    Some(cap) => format!("without {cap}, run {run}/{runs}"),
                };
                let mut text = format!("capprof: {}: {what}: {outcome}", self.verb);
                for d in drift {
                    text.push_str(&format!(
                        "; but {} (pid {}) kept {}",
                        d.process,
                        d.pid,
                        d.gained.join(", ")
                    ));
                }
                for d in inconclusive {
                    text.push_str(&format!(
                        "; inconclusive: {} (pid {}) was seen only in passing, with {} the baseline never showed there",
                        d.process,
                        d.pid,
                        d.gained.join(", ")
                    ));
                }
                self.line(text);
            }
            Event::Decided { cap, verdict } => {
                self.line(format!(
                    "capprof: {}: {} is {}: {}",
                    self.verb,
                    cap,
                    verdict.label(),
                    verdict.reason()
                ));
            }
        }
    }

    /// Says what the work is, with the first result.
    pub fn start(&self, label: &str, set: &[Cap], engine: &str, probe: Option<&Probe>) {
        let caps = if set.is_empty() {
            "no capability".to_owned()
        } else {
            capprof::capability::display_list(set)
        };
        let intro = format!(
            "capprof: {}: {label} with {caps} on {engine}; success is {}",
            self.verb,
            probe.map_or("exit status 0".to_owned(), |p| format!(
                "the probe passing ({})",
                p.describe()
            ))
        );
        if let Ok(mut slot) = self.intro.lock() {
            *slot = Some(intro);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn now() -> String {
    capprof::profile::rfc3339(SystemTime::now())
}
