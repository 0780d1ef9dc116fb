//! `capprof-bench storm`: two workers, many profiled cgroups, as fast as
//! they can; every (cgroup, capability) pair they exercised must be counted.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use capprof::{
    cgroup::{self, OwnedCgroup},
    observer::{KernelStats, Observer, WatchMode},
};
use capprof_common::{check::EVIDENCE_BUDGET, event::EVENT_EVIDENCE};
use clap::Args;
use serde::Serialize;

use crate::{
    reader::Reader,
    util::{cpu_count, emit, make_dir},
    worker::{CAP_KILL, WorkerSpec, Workload},
};

#[derive(Debug, Args)]
pub struct StormArgs {
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    #[arg(long, default_value_t = 100)]
    pub cgroups: usize,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Debug, Serialize)]
pub struct StormLine {
    pub kind: &'static str,
    pub secs: f64,
    pub cgroups: usize,
    pub threads: usize,
    /// Checks the workers made by construction (made_total), per second of
    /// the slowest worker's wall time.
    pub checks_per_s: f64,
    pub made_total: u64,
    /// Sum of the drained counters for the exercised pairs.
    pub counted_total: u64,
    pub pairs_exercised: usize,
    /// Exercised (cgroup, cap) pairs absent from the drained counts.
    pub pairs_missing: usize,
    /// Pairs whose count is below what the workers made.
    pub pairs_undercounted: usize,
    /// More counted than made (one exit-time kill per worker aside).
    pub overcounted: bool,
    pub ringbuf_lost: u64,
    pub cgroup_events_lost: u64,
    pub counts_full: u64,
    /// Pending checks flushed into a counter already drained (they were
    /// read from `HOT` instead); 0 when every CPU could be made to flush.
    pub pending_dropped: u64,
    /// Ring buffer records read during the storm.
    pub records: u64,
    /// Exercised pairs with no evidence record read.
    pub pairs_without_evidence: usize,
    /// Evidence missing with no loss counted: a record vanished silently.
    pub silent_loss: bool,
    /// The workers' CPU time over (threads x wall time): below 1 when other
    /// processes took CPU from them.
    pub worker_cpu_share: f64,
    pub load_ms: f64,
    /// Overflow phase: the reader stops, and each check in fresh cgroups is
    /// a new comm, so the ring buffer fills. Every evidence attempt must be
    /// either read or counted in `ringbuf_lost`, and every check counted.
    pub overflow_checks: u64,
    /// Checks that looked for evidence: a counter's first
    /// `EVIDENCE_BUDGET`, each a new evidence key here.
    pub overflow_attempts: u64,
    pub overflow_records: u64,
    pub overflow_lost: u64,
    pub overflow_counted: u64,
    /// Something was lost, records + lost == attempts, and counted ==
    /// checks.
    pub overflow_accounted: bool,
    /// Zero missed pairs, nothing undercounted, no silent loss (overflow
    /// phase included).
    pub no_loss: bool,
}

pub fn storm(args: &StormArgs) -> Result<()> {
    let mount = cgroup::cgroup2_mount()?;
    let root = OwnedCgroup::create(&mount, &format!("bench-storm-{}", std::process::id()))?;
    let result = storm_in(args, &root);
    root.kill_all();
    result
}

pub fn storm_in(args: &StormArgs, root: &OwnedCgroup) -> Result<()> {
    let dirs: Vec<PathBuf> = (0..args.cgroups.max(1))
        .map(|i| make_dir(root.path(), &format!("s{i:03}")))
        .collect::<Result<_>>()?;
    let ids: Vec<u64> = dirs
        .iter()
        .map(|d| cgroup::cgroup_id(d))
        .collect::<Result<_, _>>()?;
    let mut observer = Observer::load(None).context("loading capprof")?;
    let load_ms = observer.load_time().as_secs_f64() * 1e3;
    let reader = Reader::spawn(observer.take_events()?, true);
    observer.watch(root.id(), WatchMode::Command)?;

    let threads = args.threads.max(1);
    let made = run_workers(&dirs, &ids, threads, (args.secs * 1e3) as u64)?;
    // Let the reader catch up with the last records.
    thread::sleep(Duration::from_millis(100));
    let records = reader.records.load(Ordering::Relaxed);
    let (evidence, ring) = reader.finish().context("the ring buffer reader failed")?;
    let id_set: HashSet<u64> = ids.iter().copied().collect();
    let drained = observer.drain_counts(|id| id_set.contains(&id))?;
    let stats = observer.kernel_stats()?;
    let mut counted: HashMap<(u64, u32), u64> = HashMap::new();
    for c in drained {
        *counted.entry((c.cgroup_id, c.cap.number())).or_default() += c.count;
    }
    let mut line = StormLine::new(args, dirs.len(), threads, &made, &stats, load_ms);
    line.compare(&made.pairs, &counted, &evidence);
    line.records = records;
    line.silent_loss = line.pairs_without_evidence > 0 && stats.ringbuf_lost == 0;
    overflow(&mut observer, ring, root, threads, &mut line)?;
    // Nothing counted twice either: beyond what they made, the workers only
    // kill their helper process once each as they exit.
    line.overcounted = line.counted_total > made.total + threads as u64;
    line.no_loss = line.pairs_missing == 0
        && line.pairs_undercounted == 0
        && !line.overcounted
        && stats.counts_full == 0
        && !line.silent_loss
        && made.total > 0
        && line.overflow_accounted;
    let _ = observer.unwatch(root.id(), &ids);
    emit(&line)
}

/// The checks the workers made, by cgroup and capability, and what the
/// run cost them.
struct Made {
    pairs: BTreeMap<(u64, u32), u64>,
    total: u64,
    /// The longest worker's wall time.
    wall_ns: u64,
    /// All workers' CPU time.
    cpu_ns: u64,
}

/// Runs `threads` storm workers for `ms`, each over its share of `dirs`
/// (cgroup ids `ids`), one CPU each, and adds up what they made.
fn run_workers(dirs: &[PathBuf], ids: &[u64], threads: usize, ms: u64) -> Result<Made> {
    let ncpu = cpu_count();
    let mut workers = Vec::new();
    let mut owned: Vec<Vec<usize>> = Vec::new();
    for t in 0..threads {
        let mine: Vec<usize> = (t..dirs.len()).step_by(threads).collect();
        let spec = WorkerSpec {
            workload: Workload::Storm,
            cgroups: mine.iter().map(|&i| dirs[i].clone()).collect(),
            cpu: Some(t % ncpu),
        };
        workers.push(spec.spawn()?);
        owned.push(mine);
    }
    for w in &mut workers {
        w.wait_ready()?;
    }
    // Several passes over the cgroups, at most 20 ms a visit.
    let visit = |n: usize| (ms / 4 / n.max(1) as u64).clamp(1, 20);
    for (w, mine) in workers.iter_mut().zip(&owned) {
        w.go(ms, visit(mine.len()))?;
    }
    let mut made = Made {
        pairs: BTreeMap::new(),
        total: 0,
        wall_ns: 0,
        cpu_ns: 0,
    };
    for (w, mine) in workers.iter_mut().zip(&owned) {
        let r = w.result()?;
        made.wall_ns = made.wall_ns.max(r.wall_ns);
        made.cpu_ns += r.cpu_ns;
        for (pos, cap, n) in r.made {
            let id = ids[mine[pos]];
            *made.pairs.entry((id, cap)).or_default() += n;
            made.total += n;
        }
    }
    for w in workers {
        w.finish()?;
    }
    Ok(made)
}

impl StormLine {
    /// The line's rates and the kernel's loss counters; the comparison and
    /// the overflow phase fill in the rest.
    fn new(
        args: &StormArgs,
        cgroups: usize,
        threads: usize,
        made: &Made,
        stats: &KernelStats,
        load_ms: f64,
    ) -> Self {
        StormLine {
            kind: "storm",
            secs: args.secs,
            cgroups,
            threads,
            checks_per_s: if made.wall_ns == 0 {
                0.0
            } else {
                made.total as f64 / (made.wall_ns as f64 / 1e9)
            },
            made_total: made.total,
            counted_total: 0,
            pairs_exercised: made.pairs.len(),
            pairs_missing: 0,
            pairs_undercounted: 0,
            overcounted: false,
            ringbuf_lost: stats.ringbuf_lost,
            cgroup_events_lost: stats.cgroup_events_lost,
            counts_full: stats.counts_full,
            pending_dropped: stats.pending_dropped,
            records: 0,
            pairs_without_evidence: 0,
            silent_loss: false,
            worker_cpu_share: if made.wall_ns == 0 {
                0.0
            } else {
                made.cpu_ns as f64 / (threads as f64 * made.wall_ns as f64)
            },
            load_ms,
            overflow_checks: 0,
            overflow_attempts: 0,
            overflow_records: 0,
            overflow_lost: 0,
            overflow_counted: 0,
            overflow_accounted: false,
            no_loss: false,
        }
    }

    /// Compares what was made with what was counted and which pairs had
    /// evidence.
    fn compare(
        &mut self,
        made: &BTreeMap<(u64, u32), u64>,
        counted: &HashMap<(u64, u32), u64>,
        evidence: &HashSet<(u64, u32)>,
    ) {
        for (pair, &n) in made {
            match counted.get(pair) {
                None => self.pairs_missing += 1,
                Some(&c) => {
                    self.counted_total += c;
                    if c < n {
                        self.pairs_undercounted += 1;
                    }
                }
            }
            if !evidence.contains(pair) {
                self.pairs_without_evidence += 1;
            }
        }
    }
}

/// Fresh cgroups each overflow worker hops through.
const OVERFLOW_CGROUPS: usize = 300;

/// With nobody reading the ring buffer, every worker check comes from a new
/// comm, in fresh cgroups: each of a counter's first `EVIDENCE_BUDGET`
/// checks is a new evidence key, so a record to reserve for each, more than
/// the ring holds. Then reads what arrived and checks the books: every
/// evidence attempt was either read or counted lost, and every check was
/// counted.
fn overflow(
    observer: &mut Observer,
    mut ring: RingBuf<MapData>,
    root: &OwnedCgroup,
    threads: usize,
    line: &mut StormLine,
) -> Result<()> {
    let lost_before = observer.kernel_stats()?.ringbuf_lost;
    let ncpu = cpu_count();
    let mut workers = Vec::new();
    let mut ids = HashSet::new();
    for t in 0..threads {
        let dirs: Vec<PathBuf> = (0..OVERFLOW_CGROUPS)
            .map(|i| make_dir(root.path(), &format!("o{t}-{i:03}")))
            .collect::<Result<_>>()?;
        for d in &dirs {
            ids.insert(cgroup::cgroup_id(d)?);
        }
        let spec = WorkerSpec {
            workload: Workload::Overflow,
            cgroups: dirs,
            cpu: Some(t % ncpu),
        };
        let mut w = spec.spawn()?;
        w.wait_ready()?;
        workers.push(w);
    }
    let pids: HashSet<u32> = workers.iter().map(|w| w.child.id()).collect();
    for w in &mut workers {
        w.go(0, 0)?;
    }
    for w in &mut workers {
        line.overflow_checks += w.result()?.iters;
    }
    // Read the books before the workers exit: their exit kills their kill
    // target, one more check each.
    line.overflow_lost = observer.kernel_stats()?.ringbuf_lost - lost_before;
    // EvidenceEvent: u32 event at 0, u32 cap at 4, tgid at 24.
    while let Some(item) = ring.next() {
        let word = |at: usize| {
            item.get(at..at + 4)
                .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        };
        if word(0) == EVENT_EVIDENCE && word(4) == CAP_KILL && pids.contains(&word(24)) {
            line.overflow_records += 1;
        }
    }
    for c in observer.drain_counts(|id| ids.contains(&id))? {
        if c.cap.number() == CAP_KILL {
            line.overflow_counted += c.count;
            // One worker per cgroup: a counter's first checks are exactly
            // the ones that look for evidence.
            line.overflow_attempts += c.count.min(EVIDENCE_BUDGET);
        }
    }
    for w in workers {
        w.finish()?;
    }
    line.overflow_accounted = line.overflow_checks > 0
        && line.overflow_lost > 0
        && line.overflow_records + line.overflow_lost == line.overflow_attempts
        && line.overflow_counted == line.overflow_checks;
    Ok(())
}
