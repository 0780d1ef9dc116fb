//! `capprof-bench measure`: one configuration, each workload timed with it
//! and without it.

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    sync::atomic::Ordering,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::RingBuf,
    programs::BtfTracePoint,
    sys::{Stats, enable_stats},
};
use capprof::{
    cgroup::{self, OwnedCgroup},
    observer::{Observer, WatchMode},
};
use capprof_common::names;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{
    bpftrace::Bpftrace,
    progs::{delta, hook_kind_progs, prog_snapshot},
    reader::Reader,
    util::{cpu_ns_of, emit, make_dir, worker_cpu},
    worker::{Worker, WorkerSpec, Workload, window_stat},
};

/// What is attached to the `cap_capable` tracepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Config {
    /// Nothing attached.
    None,
    /// `capprof_calibrate_spacer`: an empty program on the same hook (the floor).
    Empty,
    /// capprof, with the workload's cgroup profiled.
    Profiled,
    /// capprof, profiling another cgroup only.
    Unprofiled,
    /// `capprof_bench_stream`: one ring buffer record per check.
    Stream,
    /// bpftrace counting per (cgroup, cap) in a map.
    Bpftrace,
    /// `capprof_bench_ladder` step 1: cgroup id + `CGROUPS` lookup.
    Ladder1,
    /// Step 2: + the counter.
    Ladder2,
    /// Step 3: + call-site classification.
    Ladder3,
    /// Step 4: + evidence dedup.
    Ladder4,
}

#[derive(Debug, Args)]
pub struct MeasureArgs {
    #[arg(long, value_enum)]
    pub config: Config,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,mmap,mixed"
    )]
    pub workloads: Vec<Workload>,
    /// Length of each baseline phase, before setup and after teardown.
    #[arg(long, default_value_t = 300)]
    pub base_ms: u64,
    /// Length of each end-to-end phase with the configuration set up.
    #[arg(long, default_value_t = 600)]
    pub e2e_ms: u64,
    /// Length of each bpf_stats phase.
    #[arg(long, default_value_t = 300)]
    pub stats_ms: u64,
    /// Cgroups the mixed workload hops over.
    #[arg(long, default_value_t = 50)]
    pub cgroups: usize,
}

#[derive(Debug, Serialize)]
pub struct MeasureLine {
    pub kind: &'static str,
    pub config: Config,
    pub workload: Workload,
    /// Setting the configuration up (load, calibrate, attach), ms.
    pub setup_ms: f64,
    // End-to-end phase with the configuration set up, bpf_stats off. The
    // worker thread's CPU time per iteration (CLOCK_THREAD_CPUTIME_ID),
    // over windows of 25 ms (one cgroup visit for `mixed`).
    pub iters: u64,
    /// Median over the windows.
    pub ns_per_iter: f64,
    pub ns_per_iter_min: f64,
    pub windows: usize,
    /// Wall time per iteration, for reference (includes preemption).
    pub wall_ns_per_iter: f64,
    /// The same worker, same phase length, before the configuration was set
    /// up and after it was torn down (None for `none`).
    pub base_before_ns_per_iter: Option<f64>,
    pub base_after_ns_per_iter: Option<f64>,
    /// `ns_per_iter` minus the mean of the two baselines: the cost the
    /// configuration adds, paired in time so that a machine's drift cancels.
    pub added_ns_per_iter: Option<f64>,
    /// CPU time the configuration's userspace (ring buffer reader,
    /// bpftrace) spent during the phase, per iteration.
    pub consumer_ns_per_iter: f64,
    // bpf_stats phase.
    pub stats_iters: u64,
    /// Runs of the configuration's programs during the phase (0 for `none`).
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// run_time / run_cnt: the program's own cost per check.
    pub ns_per_run: Option<f64>,
    /// run_cnt / iterations: the checks an iteration makes (plus whatever
    /// else on the machine ran while the phase did).
    pub checks_per_iter: Option<f64>,
    /// By construction.
    pub nominal_checks_per_iter: f64,
    /// Other programs that ran at least once per iteration during the
    /// bpf_stats phase: something else is on the hook, and the run is noisy.
    pub foreign_progs: String,
    /// Whether the set of other tracing programs stayed the same from the
    /// first baseline to the second: if not, another tool's program came or
    /// went during the measurement and its end-to-end figures are skewed.
    pub others_stable: bool,
    /// Ring buffer records read by the configuration's reader (stream, capprof).
    pub records: u64,
    pub ringbuf_lost: u64,
}

pub fn measure(args: &MeasureArgs) -> Result<()> {
    let mount = cgroup::cgroup2_mount()?;
    let root = OwnedCgroup::create(&mount, &format!("bench-{}", std::process::id()))?;
    let result = measure_in(args, &root);
    // Whatever happened, nothing may be left in our cgroups.
    root.kill_all();
    result
}

/// Per workload: a baseline phase, then (configuration set up) an
/// end-to-end phase and a bpf_stats phase, then (torn down) a second
/// baseline. One worker per workload runs every phase.
pub fn measure_in(args: &MeasureArgs, root: &OwnedCgroup) -> Result<()> {
    let single = make_dir(root.path(), "w")?;
    let other = make_dir(root.path(), "other")?;
    let mixed_parent = make_dir(root.path(), "mixed")?;
    let mixed: Vec<PathBuf> = (0..args.cgroups.max(1))
        .map(|i| make_dir(&mixed_parent, &format!("m{i:03}")))
        .collect::<Result<_>>()?;
    let baseline = args.config != Config::None;
    let mut workers = spawn_workers(&args.workloads, &single, &mixed)?;
    let others_at_start = hook_kind_progs(&BTreeSet::new());
    let before_ns: Vec<Option<f64>> = workers
        .iter_mut()
        .map(|w| {
            baseline
                .then(|| w.run(args.base_ms).map(|r| r.median()))
                .transpose()
        })
        .collect::<Result<_>>()?;

    let setup = Setup::attach(args, root, &other, &others_at_start)?;
    let mut others_stable = setup.others_stable;
    let mut lines = workers
        .iter_mut()
        .map(|w| setup.measure(w, args))
        .collect::<Result<Vec<_>>>()?;
    others_stable &= hook_kind_progs(&setup.ours) == others_at_start;
    let ours = setup.ours;
    drop(setup.attached);

    measure_after(&mut workers, &mut lines, before_ns, args.base_ms, baseline)?;
    others_stable &= hook_kind_progs(&ours) == others_at_start;
    for w in workers {
        w.finish()?;
    }
    for line in &mut lines {
        line.others_stable = others_stable;
    }
    for line in &lines {
        emit(line)?;
    }
    Ok(())
}

/// One worker per workload, ready: `Mixed` spreads over the `mixed`
/// cgroups, the others run in `single`.
fn spawn_workers(workloads: &[Workload], single: &Path, mixed: &[PathBuf]) -> Result<Vec<Worker>> {
    let cpu = worker_cpu();
    let mut workers = Vec::new();
    for &workload in workloads {
        let cgroups = match workload {
            Workload::Mixed => mixed.to_vec(),
            _ => vec![single.to_owned()],
        };
        let mut w = WorkerSpec {
            workload,
            cgroups,
            cpu,
        }
        .spawn()?;
        w.wait_ready()?;
        workers.push(w);
    }
    Ok(workers)
}

/// The configuration under measurement, set up, and which programs are its.
struct Setup {
    attached: Attached,
    setup_ms: f64,
    /// The programs whose bpf_stats are the configuration's own cost.
    mine: HashSet<u32>,
    /// Every program the set-up loaded.
    ours: BTreeSet<u32>,
    /// Whether other tools' programs on the hook were still
    /// `others_at_start` once it was set up.
    others_stable: bool,
}

impl Setup {
    /// Sets up `args.config`, timing it, and tells its programs from
    /// those that were loaded before.
    fn attach(
        args: &MeasureArgs,
        root: &OwnedCgroup,
        other: &Path,
        others_at_start: &BTreeSet<u32>,
    ) -> Result<Self> {
        let before: HashSet<u32> = prog_snapshot().into_keys().collect();
        let started = Instant::now();
        let attached = Attached::set_up(args.config, root, other)?;
        let setup_ms = started.elapsed().as_secs_f64() * 1e3;
        let mine: HashSet<u32> = match &attached {
            // Only the tracepoint program: capprof's process hooks do not run
            // in these loops, and its calibration program is unloaded.
            Attached::Capprof { .. } => prog_snapshot()
                .into_iter()
                .filter(|(id, p)| !before.contains(id) && p.name == names::PROG_TP_BTF)
                .map(|(id, _)| id)
                .collect(),
            _ => prog_snapshot()
                .into_keys()
                .filter(|id| !before.contains(id))
                .collect(),
        };
        let ours: BTreeSet<u32> = prog_snapshot()
            .into_keys()
            .filter(|id| !before.contains(id))
            .collect();
        let others_stable = hook_kind_progs(&ours) == *others_at_start;
        if args.config != Config::None && mine.is_empty() {
            bail!("{:?}: no program of ours is loaded", args.config);
        }
        if mine.len() > 1 && matches!(attached, Attached::Capprof { .. }) {
            tracing::warn!("another capprof_tp_btf appeared while loading; stats include it");
        }

        Ok(Self {
            attached,
            setup_ms,
            mine,
            ours,
            others_stable,
        })
    }

    /// One workload's line: its end-to-end phase with bpf_stats off, then
    /// its programs' own cost with bpf_stats on for this phase only.
    fn measure(&self, w: &mut Worker, args: &MeasureArgs) -> Result<MeasureLine> {
        // End to end, bpf_stats off.
        let consumer_before = self.attached.consumer_cpu_ns();
        let e2e = w.run(args.e2e_ms)?;
        let consumer_ns = self
            .attached
            .consumer_cpu_ns()
            .saturating_sub(consumer_before);

        // The programs' own cost, bpf_stats on for this phase only.
        let stats_fd = enable_stats(Stats::RunTime).context("BPF_ENABLE_STATS")?;
        let s0 = prog_snapshot();
        let stats = w.run(args.stats_ms)?;
        let s1 = prog_snapshot();
        drop(stats_fd);

        let (run_cnt, run_time_ns) = delta(&s0, &s1, |id| self.mine.contains(&id));
        let foreign: Vec<String> = s1
            .iter()
            .filter(|(id, _)| !self.mine.contains(id))
            .filter_map(|(id, p)| {
                let runs = p
                    .run_cnt
                    .saturating_sub(s0.get(id).map_or(0, |q| q.run_cnt));
                (runs >= stats.iters.max(1)).then(|| format!("{}#{id}", p.name))
            })
            .collect();
        let (records, ringbuf_lost) = self.attached.records();
        let per = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        Ok(MeasureLine {
            kind: "measure",
            config: args.config,
            workload: w.workload,
            setup_ms: self.setup_ms,
            iters: e2e.iters,
            ns_per_iter: e2e.median(),
            ns_per_iter_min: window_stat(&e2e.windows, 0.0),
            windows: e2e.windows.len(),
            wall_ns_per_iter: per(e2e.wall_ns, e2e.iters),
            base_before_ns_per_iter: None,
            base_after_ns_per_iter: None,
            added_ns_per_iter: None,
            consumer_ns_per_iter: per(consumer_ns, e2e.iters),
            stats_iters: stats.iters,
            run_cnt,
            run_time_ns,
            ns_per_run: (run_cnt > 0).then(|| per(run_time_ns, run_cnt)),
            checks_per_iter: (run_cnt > 0).then(|| per(run_cnt, stats.iters)),
            nominal_checks_per_iter: w.workload.nominal_checks(),
            foreign_progs: foreign.join(","),
            others_stable: true,
            records,
            ringbuf_lost,
        })
    }
}

/// The second baseline, with the configuration torn down, and the cost
/// each line adds over the mean of its two baselines.
fn measure_after(
    workers: &mut [Worker],
    lines: &mut [MeasureLine],
    before_ns: Vec<Option<f64>>,
    base_ms: u64,
    baseline: bool,
) -> Result<()> {
    for ((w, line), before) in workers.iter_mut().zip(lines).zip(before_ns) {
        let after = if baseline {
            Some(w.run(base_ms)?.median())
        } else {
            None
        };
        line.base_before_ns_per_iter = before;
        line.base_after_ns_per_iter = after;
        line.added_ns_per_iter = before
            .zip(after)
            .map(|(b, a)| line.ns_per_iter - (a + b) / 2.0);
    }
    Ok(())
}

/// One configuration, set up; torn down on drop.
pub enum Attached {
    Nothing,
    /// A bench program of our object, with its ring buffer reader if it has one.
    Own {
        ebpf: Ebpf,
        reader: Option<Reader>,
    },
    Capprof {
        observer: Box<Observer>,
        reader: Reader,
    },
    Bpftrace(Bpftrace),
}

impl Attached {
    pub fn set_up(config: Config, root: &OwnedCgroup, other: &Path) -> Result<Self> {
        Ok(match config {
            Config::None => Attached::Nothing,
            // Calibration's spacer returns 0 and does nothing else: it is
            // exactly the empty program the floor needs, so the bench
            // reuses it rather than carry a copy.
            Config::Empty => Attached::Own {
                ebpf: load_bench_prog(names::PROG_CALIBRATE_SPACER, 0)?,
                reader: None,
            },
            Config::Ladder1 | Config::Ladder2 | Config::Ladder3 | Config::Ladder4 => {
                let step = match config {
                    Config::Ladder1 => 1,
                    Config::Ladder2 => 2,
                    Config::Ladder3 => 3,
                    _ => 4,
                };
                Attached::Own {
                    ebpf: load_bench_prog(names::bench::PROG_LADDER, step)?,
                    reader: None,
                }
            }
            Config::Stream => {
                let mut ebpf = load_bench_prog(names::bench::PROG_STREAM, 0)?;
                let map = ebpf
                    .take_map(names::EVENTS)
                    .ok_or_else(|| anyhow!("no {} map", names::EVENTS))?;
                let reader = Reader::spawn(RingBuf::try_from(map)?, false);
                Attached::Own {
                    ebpf,
                    reader: Some(reader),
                }
            }
            Config::Profiled | Config::Unprofiled => {
                let mut observer = Observer::load(None).context("loading capprof")?;
                let reader = Reader::spawn(observer.take_events()?, false);
                let id = if config == Config::Profiled {
                    root.id()
                } else {
                    cgroup::cgroup_id(other)?
                };
                observer.watch(id, WatchMode::Command)?;
                Attached::Capprof {
                    observer: Box::new(observer),
                    reader,
                }
            }
            Config::Bpftrace => Attached::Bpftrace(Bpftrace::start()?),
        })
    }

    /// CPU time of this configuration's userspace so far: our own process
    /// (its reader thread; the main thread only waits), or bpftrace.
    pub fn consumer_cpu_ns(&self) -> u64 {
        match self {
            Attached::Nothing | Attached::Own { reader: None, .. } => 0,
            Attached::Own {
                reader: Some(_), ..
            }
            | Attached::Capprof { .. } => cpu_ns_of(0),
            Attached::Bpftrace(b) => cpu_ns_of(b.child.id()),
        }
    }

    /// (records read, records lost) so far.
    pub fn records(&self) -> (u64, u64) {
        let lost = |ebpf: Option<&Ebpf>| -> u64 {
            let Some(map) = ebpf.and_then(|e| e.map(names::STATS)) else {
                return 0;
            };
            aya::maps::PerCpuArray::<_, u64>::try_from(map)
                .ok()
                .and_then(|a| a.get(&capprof_common::check::stat::RINGBUF_LOST, 0).ok())
                .map_or(0, |v| v.iter().sum())
        };
        match self {
            Attached::Own { ebpf, reader } => (
                reader
                    .as_ref()
                    .map_or(0, |r| r.records.load(Ordering::Relaxed)),
                lost(Some(ebpf)),
            ),
            Attached::Capprof { observer, reader } => (
                reader.records.load(Ordering::Relaxed),
                observer.kernel_stats().map_or(0, |s| s.ringbuf_lost),
            ),
            _ => (0, 0),
        }
    }
}

/// capprof's eBPF object with the benchmark's programs added (build.rs
/// builds it with capprof-ebpf's `bench` feature). capprof's own
/// configurations load capprof's object, through `Observer::load`.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capprof"));

/// Loads the benchmark's object and attaches one of its programs to
/// `cap_capable` (`step`: how much of the ladder runs).
pub fn load_bench_prog(name: &'static str, step: u32) -> Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .override_global("BENCH_LADDER_STEP", &step, true)
        .load(BENCH_OBJECT)
        .context("loading the eBPF object")?;
    let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the object has no program {name}"))?
        .try_into()?;
    prog.load(names::TRACEPOINT_NAME, &btf)
        .with_context(|| format!("loading {name}"))?;
    prog.attach().with_context(|| format!("attaching {name}"))?;
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's object has its own programs and capprof's.
    #[test]
    fn bench_object_has_every_program() {
        let obj = aya_obj::Object::parse(BENCH_OBJECT).unwrap();
        for name in names::bench::ALL_PROGRAMS.iter().chain(names::ALL_PROGRAMS) {
            assert!(
                obj.programs.contains_key(*name),
                "program {name} missing from the benchmark's object"
            );
        }
    }
}
