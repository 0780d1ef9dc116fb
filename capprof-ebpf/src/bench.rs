//! Benchmark-only programs, loaded by `capprof-bench` and never by capprof
//! (their names are in `names::bench`). Only the crate's `bench` feature
//! builds them, into the benchmark's copy of the object, next to capprof's
//! own programs: the benchmark compares designs built with the same
//! toolchain, and the object capprof embeds does not carry them. They add no
//! map of their own to what capprof creates at load.
//!
//! match-proto (Linux 6.14+, include/trace/events/capability.h):
//!   TRACE_EVENT(cap_capable, TP_PROTO(const struct cred *cred,
//!       struct user_namespace *target_ns, const struct user_namespace *capable_ns,
//!       int cap, int ret))

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, generated::bpf_task_pt_regs,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use capprof_common::{
    check::{
        CheckKey, CheckStats, EvidenceKey, HOT_SITES, HotCache, SYSCALL_UNKNOWN, VERDICT_DENIED,
        VERDICT_GRANTED, decision, generations, kind, phase, stat, userns, watch,
    },
    event::{EVENT_EVIDENCE, EvidenceEvent},
};

use crate::{
    helpers,
    maps::{CGROUPS, COUNTS, EVENTS, EVIDENCE_SEEN, HOT, SITES, bump, generation},
};

/// The per-event streaming design, as BCC's `capable` does it: one ring
/// buffer record per check, from every cgroup, with nothing aggregated in
/// the kernel. Records that cannot be reserved are counted in
/// `STATS[RINGBUF_LOST]`.
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_bench_stream(ctx: BtfTracePointContext) -> i32 {
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    stream(cap as u32, ret);
    0
}

#[inline(always)]
fn stream(cap: u32, ret: i32) {
    let Some(mut entry) = EVENTS.reserve::<EvidenceEvent>(0) else {
        bump(stat::RINGBUF_LOST);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    entry.write(EvidenceEvent {
        event: EVENT_EVIDENCE,
        cap,
        cgroup_id: helpers::cgroup_id(),
        ts_ns: helpers::boot_ns(),
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        syscall: SYSCALL_UNKNOWN,
        ret,
        verdict: if ret == 0 {
            VERDICT_GRANTED
        } else {
            VERDICT_DENIED
        },
        kind: kind::UNKNOWN,
        phase: phase::WORKLOAD,
        userns: userns::OWN,
        _pad: [0; 4],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        site: 0,
        outer_site: 0,
    });
    entry.submit(0);
}

/// How much of the profiled path `capprof_bench_ladder` runs (1 to 4), set
/// at load time.
#[unsafe(no_mangle)]
static BENCH_LADDER_STEP: u32 = 0;

/// The profiled path of `observe()` rebuilt one step at a time, so that
/// bpf_stats can price each step (`capprof-bench measure --config ladderN`).
/// Step 1 is the unwatched path (cgroup id, the per-CPU `HOT` entry and the
/// watch generation, compared); 2 adds the counter (pid, jiffies, the clock once a tick,
/// `COUNTS` lookup and atomic add); 3 the call-site classification (two
/// stack reads resolved through `HOT`'s site cache); 4 the evidence dedup
/// (syscall number, comm, `EVIDENCE_SEEN` lookup), which `observe()` now
/// runs only in a counter's first `EVIDENCE_BUDGET` checks. It uses the
/// slots and pt_regs offset of this machine (x86_64, ENVIRONMENT.md)
/// instead of `CONFIG`, which it does not need to be calibrated for.
#[btf_tracepoint(function = "cap_capable")]
pub fn capprof_bench_ladder(ctx: BtfTracePointContext) -> i32 {
    let cap: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(4);
    // SAFETY: read of a constant global.
    let step = unsafe { core::ptr::read_volatile(&BENCH_LADDER_STEP) };
    ladder(step, cap as u32, ret, ctx.as_ptr() as u64);
    0
}

const LADDER_SLOT_CALLER: u64 = 12;
const LADDER_SLOT_OUTER: u64 = 17;
const LADDER_ORIG_AX: u64 = 15 * 8;

/// The steps of `capprof_bench_ladder`, each inlined as `observe()`'s are,
/// so that each step's price is that of the same instructions.
#[inline(always)]
fn ladder(step: u32, cap: u32, ret: i32, frame: u64) {
    // 1. The unwatched path.
    let cgroup_id = helpers::cgroup_id();
    let Some(hot) = ladder_hot(cgroup_id) else {
        return;
    };
    if step <= 1 || hot.mode == watch::UNWATCHED {
        return;
    }
    // 2. The counter.
    // observe() compares the tgid with capprof's own.
    if (bpf_get_current_pid_tgid() >> 32) as u32 == 0 {
        return;
    }
    let jiffies = helpers::jiffies();
    let verdict = if ret == 0 {
        VERDICT_GRANTED
    } else {
        VERDICT_DENIED
    };
    let before = ladder_count(cgroup_id, cap, verdict, jiffies);
    if step <= 2 || before == u64::MAX {
        return;
    }
    // 3. Call-site classification.
    let site_kind = ladder_classify(hot, frame);
    if step <= 3 {
        return;
    }
    // 4. Evidence dedup.
    ladder_evidence(cgroup_id, cap, verdict, site_kind);
}

/// Step 1: this CPU's `HOT` entry, with the cgroup's watch mode read again
/// when the cgroup or the watch generation changed.
#[inline(always)]
fn ladder_hot(cgroup_id: u64) -> Option<&'static mut HotCache> {
    let hot = HOT.get_ptr_mut(0)?;
    // SAFETY: this CPU's entry, written only by this program.
    let hot = unsafe { &mut *hot };
    let watch_gen = generation(generations::WATCH);
    if hot.cgroup_id != cgroup_id || hot.watch_gen != watch_gen {
        // SAFETY: the value is a plain u32.
        hot.mode = match unsafe { CGROUPS.get(cgroup_id) } {
            Some(value) => decision::mode(*value),
            None => {
                let _ = CGROUPS.insert(cgroup_id, decision::pack(watch::COMMAND, watch_gen), 0);
                watch::COMMAND
            }
        };
        hot.cgroup_id = cgroup_id;
        hot.watch_gen = watch_gen;
    }
    Some(hot)
}

/// Step 2: the counter, added to atomically; its count before this check.
#[inline(always)]
fn ladder_count(cgroup_id: u64, cap: u32, verdict: u8, jiffies: u64) -> u64 {
    let key = CheckKey {
        cgroup_id,
        cap,
        verdict,
        kind: kind::AUDIT,
        phase: phase::WORKLOAD,
        userns: userns::OWN,
    };
    match COUNTS.get_ptr_mut(key) {
        // SAFETY: a live map value, updated atomically.
        Some(stats) => unsafe {
            let before = core::ptr::read_volatile(&raw const (*stats).count);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).count, 1);
            if (*stats).last_jiffies != jiffies {
                (*stats).last_jiffies = jiffies;
                (*stats).last_ns = helpers::boot_ns();
            }
            before
        },
        None => {
            let now = helpers::boot_ns();
            let fresh = CheckStats {
                count: 1,
                first_ns: now,
                last_ns: now,
                last_jiffies: jiffies,
            };
            let _ = COUNTS.insert(key, fresh, BPF_NOEXIST as u64);
            0
        }
    }
}

/// Step 3: the two stack slots' call sites, through `HOT`'s site cache.
#[inline(always)]
fn ladder_classify(hot: &mut HotCache, frame: u64) -> u8 {
    let mut site_kind = 0;
    for slot in [LADDER_SLOT_CALLER, LADDER_SLOT_OUTER] {
        // SAFETY: checked kernel read.
        let addr = unsafe { bpf_probe_read_kernel((frame + 8 * slot) as *const u64) }.unwrap_or(0);
        let i = ((addr ^ (addr >> 5) ^ (addr >> 11)) as usize) & (HOT_SITES - 1);
        if hot.site_addr[i] == addr {
            site_kind |= hot.site_kind[i];
            continue;
        }
        // SAFETY: the value is a plain u32.
        let found = match unsafe { SITES.get(addr) } {
            Some(k) => *k as u8,
            None => {
                let _ = SITES.insert(addr, kind::AUDIT as u32, 0);
                kind::AUDIT
            }
        };
        hot.site_addr[i] = addr;
        hot.site_kind[i] = found;
        site_kind |= found;
    }
    site_kind
}

/// Step 4: the evidence key, looked up and inserted when new.
#[inline(always)]
fn ladder_evidence(cgroup_id: u64, cap: u32, verdict: u8, site_kind: u8) {
    // SAFETY: helpers returning kernel pointers; the read is checked.
    let syscall = unsafe {
        let regs = bpf_task_pt_regs(helpers::task_btf() as *mut _) as u64;
        match bpf_probe_read_kernel((regs + LADDER_ORIG_AX) as *const i64) {
            Ok(nr) if regs != 0 && nr >= 0 => nr as u32,
            _ => SYSCALL_UNKNOWN,
        }
    };
    let evidence_key = EvidenceKey {
        cgroup_id,
        cap,
        syscall,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        verdict,
        kind: site_kind,
        phase: phase::WORKLOAD,
        userns: userns::OWN,
        _pad: [0; 4],
    };
    // SAFETY: the value is a plain u8.
    if unsafe { EVIDENCE_SEEN.get(evidence_key) }.is_none() {
        let _ = EVIDENCE_SEEN.insert(evidence_key, 0, BPF_NOEXIST as u64);
    }
}
