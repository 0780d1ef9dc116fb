//! bpf_stats of every loaded program.

use std::collections::{BTreeSet, HashMap};

use aya::programs::loaded_programs;
use aya_obj::generated::bpf_prog_type;

/// A program's accumulated bpf_stats.
pub struct ProgSnap {
    pub name: String,
    pub run_cnt: u64,
    pub run_ns: u64,
}

pub fn prog_snapshot() -> HashMap<u32, ProgSnap> {
    loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            let snap = ProgSnap {
                name: p.name_as_str().unwrap_or("").to_owned(),
                run_cnt: p.run_count(),
                run_ns: p.run_time().as_nanos() as u64,
            };
            (p.id(), snap)
        })
        .collect()
}

/// (runs, run time) between two snapshots, over the programs `pick` selects.
pub fn delta(
    s0: &HashMap<u32, ProgSnap>,
    s1: &HashMap<u32, ProgSnap>,
    pick: impl Fn(u32) -> bool,
) -> (u64, u64) {
    s1.iter()
        .filter(|(id, _)| pick(**id))
        .fold((0, 0), |(c, t), (id, p)| {
            let (c0, t0) = s0.get(id).map_or((0, 0), |q| (q.run_cnt, q.run_ns));
            (
                c + p.run_cnt.saturating_sub(c0),
                t + p.run_ns.saturating_sub(t0),
            )
        })
}

/// Programs of the kinds that can sit on `cap_capable` (tracing, raw and
/// classic tracepoints, kprobes), except `ours`. When this set changes
/// between the phases of a measurement, someone else's program came or went
/// and the end-to-end figures of that measurement are not comparable.
pub fn hook_kind_progs(ours: &BTreeSet<u32>) -> BTreeSet<u32> {
    loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| {
            matches!(
                p.program_type(),
                bpf_prog_type::BPF_PROG_TYPE_TRACING
                    | bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT
                    | bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT
                    | bpf_prog_type::BPF_PROG_TYPE_KPROBE
            )
        })
        .map(|p| p.id())
        .filter(|id| !ours.contains(id))
        .collect()
}
