//! `cargo xtask corpus`: real Debian servers, each recorded under the
//! daemon while a real client works it, minimized and ablated with
//! capprof's own commands, and re-run with exactly its Kubernetes export;
//! twice, so that a result that differs from run to run shows. The
//! results are committed under `corpus/` as a dataset, and CORPUS.md is
//! written from them.

mod entry;
mod image;
mod run;
pub mod subset;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use run::{Outcome, Pass};
use serde::{Deserialize, Serialize};

use crate::{
    engine::Engine,
    util::{
        build_release, fresh_service_dir, note, spawn_logged, step, target_dir, terminate,
        workspace_root,
    },
};

/// The results' schema, beside the profiles' own (`capprof.profile/v1`).
pub const SCHEMA: &str = "capprof.corpus/v1";
/// Passes per entry: the second shows what differs from run to run.
const PASSES: usize = 2;

#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Run only these entries (file stems under corpus/servers/).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    only: Vec<String>,
    /// Entries run at once (each runs its passes in turn).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    jobs: u32,
    /// Where the results, profiles and CORPUS.md go [default: corpus/ and
    /// CORPUS.md in the workspace].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Compare with the committed results instead of writing them: one
    /// pass each of the --only entries, else of today's rotating subset
    /// (what `cargo xtask test` runs). Fails when an entry differs twice.
    #[arg(long)]
    check: bool,
    /// Only write CORPUS.md again from the results already there (after
    /// editing an entry's note); runs nothing.
    #[arg(long, conflicts_with_all = ["check", "only"])]
    table_only: bool,
    /// Use this capprof binary instead of building the release one.
    #[arg(long, value_name = "PATH", hide = true)]
    capprof: Option<PathBuf>,
}

/// One entry's results, as committed in `corpus/results/NAME.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EntryResult {
    pub schema: String,
    pub name: String,
    pub about: String,
    pub category: String,
    pub package: String,
    pub version: String,
    pub ports: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrunnable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub passes: Vec<Outcome>,
    /// Whether every pass found the same.
    pub stable: bool,
}

pub fn run(args: &CorpusArgs) -> Result<ExitCode> {
    let root = workspace_root();
    let servers = root.join("corpus").join("servers");
    let entries = entry::read_all(&servers, &args.only)?;
    let out = args.out.clone().unwrap_or_else(|| root.clone());
    if args.table_only {
        table::write(&out, &servers, Duration::ZERO)?;
        return Ok(ExitCode::SUCCESS);
    }
    let capprof = match &args.capprof {
        Some(path) => path.clone(),
        None => build_release(&["capprof"])?.join("capprof"),
    };
    let engine = Engine::ensure()?;
    if args.check {
        let ok = subset::check(&engine, &capprof, &args.only)?;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let daemon = Daemon::start(&engine, &capprof)?;
    let scratch = target_dir().join("corpus");
    step(format_args!(
        "running {} entries, {PASSES} passes each, {} at once",
        entries.len(),
        args.jobs
    ));
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![]);
    thread::scope(|s| {
        for _ in 0..args.jobs {
            s.spawn(|| {
                while let Some(entry) = entries.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let result =
                        run_entry(&engine, &capprof, &daemon.socket, entry, &scratch, &out);
                    let line = match &result {
                        Ok(r) => table::one_line(r),
                        Err(e) => format!("{}: {e:#}", entry.name),
                    };
                    note(line);
                    if let Ok(mut all) = results.lock() {
                        all.push(result);
                    }
                }
            });
        }
    });
    drop(daemon);
    let results = results.into_inner().unwrap_or_default();
    let failed = results.iter().filter(|r| r.is_err()).count();
    table::write(&out, &servers, started.elapsed())?;
    report(&capprof, &out, &scratch)?;
    step(format_args!(
        "corpus: {} entries in {:.0?}; {failed} could not run",
        results.len(),
        started.elapsed()
    ));
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn run_entry(
    engine: &Engine,
    capprof: &Path,
    socket: &Path,
    entry: &entry::Entry,
    scratch: &Path,
    out: &Path,
) -> Result<EntryResult> {
    let mut result = EntryResult {
        schema: SCHEMA.to_owned(),
        name: entry.name.clone(),
        about: entry.about.clone(),
        category: entry.category.clone(),
        package: entry.package().to_owned(),
        version: String::new(),
        ports: entry.ports.clone(),
        unrunnable: entry.unrunnable.clone(),
        note: entry.note.clone(),
        passes: vec![],
        stable: true,
    };
    if entry.unrunnable.is_none() {
        let image = image::ensure(engine, entry)?;
        result.version = image::package_version(engine, &image, entry.package())?;
        for pass in 1..=PASSES {
            step(format_args!("{}: pass {pass} of {PASSES}", entry.name));
            let dir = scratch.join(&entry.name).join(format!("pass{pass}"));
            let _ = fs::remove_dir_all(&dir);
            let outcome = Pass {
                engine,
                capprof,
                socket,
                entry,
                image: &image,
                dir,
            }
            .run();
            result.passes.push(outcome);
        }
        result.stable = result
            .passes
            .windows(2)
            .all(|w| w[0].result() == w[1].result());
        keep_profiles(&scratch.join(&entry.name).join("pass1"), out, &entry.name)?;
    }
    let dir = out.join("corpus").join("results");
    fs::create_dir_all(&dir)?;
    let mut json = serde_json::to_string_pretty(&result)?;
    json.push('\n');
    write_atomically(&dir.join(format!("{}.json", entry.name)), json.as_bytes())?;
    Ok(result)
}

/// `capprof report` of every minimized (proven) profile: in
/// target/corpus/report.html, and a copy beside the dataset that CORPUS.md
/// links.
fn report(capprof: &Path, out: &Path, scratch: &Path) -> Result<()> {
    let profiles = out.join("corpus").join("profiles");
    let mut minimized: Vec<PathBuf> = fs::read_dir(&profiles)
        .with_context(|| format!("reading {}", profiles.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("minimized.json")))
        .filter(|p| p.exists())
        .collect();
    minimized.sort();
    if minimized.is_empty() {
        return Ok(());
    }
    fs::create_dir_all(scratch)?;
    let html = scratch.join("report.html");
    step(format_args!(
        "capprof report of {} proven profiles",
        minimized.len()
    ));
    let status = Command::new(capprof)
        .arg("report")
        .arg("--out")
        .arg(&html)
        .args(&minimized)
        .status()
        .context("running capprof report")?;
    if !status.success() {
        bail!("capprof report failed ({status})");
    }
    write_atomically(&out.join("corpus").join("report.html"), &fs::read(&html)?)
}

/// The first pass's profiles and proof, kept as the dataset.
fn keep_profiles(pass: &Path, out: &Path, name: &str) -> Result<()> {
    let dir = out.join("corpus").join("profiles").join(name);
    fs::create_dir_all(&dir)?;
    for file in ["recorded.json", "minimized.json", "verify.json", "k8s.yaml"] {
        if let Ok(bytes) = fs::read(pass.join(file)) {
            write_atomically(&dir.join(file), &bytes)?;
        }
    }
    Ok(())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// The capprof daemon the entries are recorded under, stopped on drop.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
    capprof: PathBuf,
    /// Its own bpffs mount, where its links stay pinned after it stops.
    bpffs: PathBuf,
}

impl Daemon {
    fn start(engine: &Engine, capprof: &Path) -> Result<Self> {
        let dir = fresh_service_dir("corpus-daemon")?;
        let socket = dir.join("capprof.sock");
        step("starting capprof daemon");
        let bpffs = dir.join("bpffs");
        let mut cmd = Command::new(capprof);
        cmd.args(["daemon", "--state-dir"])
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            // Its own bpffs: a daemon of the host or of a test keeps its pins.
            .arg("--bpffs")
            .arg(&bpffs)
            .envs(engine.host().map(|h| ("DOCKER_HOST", h)));
        let child = spawn_logged(&mut cmd, &dir.join("daemon.log"))?;
        let mut daemon = Daemon {
            child,
            socket,
            capprof: capprof.to_owned(),
            bpffs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !daemon.socket.exists() {
            if Instant::now() > deadline || !matches!(daemon.child.try_wait(), Ok(None)) {
                terminate(&mut daemon.child, "capprof daemon", Duration::from_secs(5));
                bail!(
                    "capprof daemon did not start (see {})",
                    dir.join("daemon.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(daemon)
    }
}

impl Drop for Daemon {
    /// Stops it, then removes its pins and unmounts its bpffs: its links
    /// stay pinned, and their programs run on every check of the machine,
    /// until then (a dozen runs of the corpus left a dozen attached).
    fn drop(&mut self) {
        terminate(&mut self.child, "capprof daemon", Duration::from_secs(10));
        let _ = Command::new(&self.capprof)
            .args(["daemon", "--reset", "--bpffs"])
            .arg(&self.bpffs)
            .output();
        let _ = Command::new("umount").arg(&self.bpffs).output();
    }
}
