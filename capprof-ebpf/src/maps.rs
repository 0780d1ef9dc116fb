//! Every map of the object. Names match `capprof_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use capprof_common::{
    check::{CheckKey, CheckStats, EvidenceKey, HotCache, Inflight, generations, stat},
    config::{CALIB_SAMPLES, CalibSample, Config},
    event::{CapsetEvent, CapsetExecEvent, ConditionalEvent, ExecEvent},
    syscalls::{CapsetRaise, OperationKey, PendingSocket},
};

/// Roots of the profiled cgroup subtrees: cgroup id -> `watch::ROOT`.
/// Written by userspace only.
#[map]
pub static WATCH_ROOTS: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// The watch decision for every cgroup a check has come from: cgroup id ->
/// `decision::pack(watch::*, generation)`. Filled by the kernel on first
/// sight. cgroup ids are never reused, so an entry can only go stale when
/// the roots change, which bumps `GENERATION[generations::WATCH]` and makes every
/// older entry stale at once. LRU: losing an entry only costs a re-walk of
/// the ancestors.
#[map]
pub static CGROUPS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

/// Runtime configuration, one entry, written by userspace after calibration.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Return address -> `kind::*`, filled by the kernel the first time an
/// address is seen (from `Config::ranges`), so a call site is resolved once.
#[map]
pub static SITES: LruHashMap<u64, u32> = LruHashMap::with_max_entries(4096, 0);

/// The aggregation: one counter per (cgroup, cap, verdict, kind). Not LRU: an
/// evicted entry would be a capability lost from a profile. Userspace deletes
/// the entries of cgroups it has finished with; inserts that fail because
/// the map is full are counted in `STATS[COUNTS_FULL]`.
#[map]
pub static COUNTS: HashMap<CheckKey, CheckStats> = HashMap::with_max_entries(65536, 0);

/// Evidence already sent. LRU: an evicted entry at worst sends a duplicate.
#[map]
pub static EVIDENCE_SEEN: LruHashMap<EvidenceKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Evidence and cgroup records for userspace. Only first sightings go here.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Health counters of the kernel side, indexed by `stat::*`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// kprobe backend: what the entry probe saw of the in-flight check, by
/// thread id.
#[map]
pub static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// Phase of each process (tgid) in a container cgroup: `phase::*`. Written
/// at exec, copied to children at fork, removed at exit. LRU so that a
/// missed exit cannot fill it.
#[map]
pub static TASKS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(65536, 0);

/// The last exec of each process in a watched cgroup (tgid -> the record),
/// until it is sent, just before the first record that names the process
/// (`process::send_exec`), or the process exits. LRU, so that a missed exit
/// cannot fill it; an evicted exec leaves userspace naming the program from
/// /proc, as for a process that never exec'd in the cgroup.
#[map]
pub static TASK_EXECS: LruHashMap<u32, ExecEvent> = LruHashMap::with_max_entries(16384, 0);

/// The hot path's per-CPU memory of the previous check (see `HotCache`).
/// Private to each load: it caches decisions made with this load's `CONFIG`.
#[map]
pub static HOT: PerCpuArray<HotCache> = PerCpuArray::with_max_entries(1, 0);

/// Generation counters, indexed by `generations::*`, that invalidate `HOT` and
/// `CGROUPS` entries.
#[map]
pub static GENERATION: Array<u32> = Array::with_max_entries(generations::COUNT, 0);

/// Calibration samples, filled once by `capprof_calibrate`.
#[map]
pub static CALIB: Array<CalibSample> = Array::with_max_entries(CALIB_SAMPLES, 0);

/// Records the syscall hooks have sent (`OperationKey`). LRU: an evicted
/// entry at worst sends a duplicate, which userspace merges.
#[map]
pub static OPS_SEEN: LruHashMap<OperationKey, u8> = LruHashMap::with_max_entries(8192, 0);

/// ICMP datagram socket() calls from watched cgroups, by thread id, from
/// their entry to their exit (where the result tells whether
/// `ping_group_range` let them through). Each entry lives for one syscall.
#[map]
pub static SOCKETS_PENDING: HashMap<u32, PendingSocket> = HashMap::with_max_entries(4096, 0);

/// The syscall hooks' records that the ring buffer had no room for (no
/// reader while the daemon is down, or one far behind), by their dedup key,
/// until userspace drains them (`observer::reader`). A record happens once
/// per (cgroup, operation, program): dropped, it would be lost for good,
/// unlike a check, whose count stays in `COUNTS`. Not LRU: an insert that
/// fails because the map is full is counted in `STATS[RINGBUF_LOST]`.
#[map]
pub static CONDITIONAL_BACKLOG: HashMap<OperationKey, ConditionalEvent> =
    HashMap::with_max_entries(4096, 0);

/// As `CONDITIONAL_BACKLOG`, for the exec outcomes of capset() raises.
#[map]
pub static CAPSET_EXEC_BACKLOG: HashMap<OperationKey, CapsetExecEvent> =
    HashMap::with_max_entries(1024, 0);

/// As `CONDITIONAL_BACKLOG`, for capset() records.
#[map]
pub static CAPSET_BACKLOG: HashMap<OperationKey, CapsetEvent> = HashMap::with_max_entries(4096, 0);

/// What each process's capset() calls kept (tgid -> `CapsetRaise`), from
/// the capset hook until the process's next exec (which reports what
/// survived), its first fork (its child may keep the capabilities without
/// an exec: they stay kept) or its exit. LRU: an evicted entry only leaves
/// the capabilities kept.
#[map]
pub static CAPSET_RAISES: LruHashMap<u32, CapsetRaise> = LruHashMap::with_max_entries(4096, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; this program cannot be re-entered on this
        // CPU while it runs.
        unsafe { *counter += 1 };
    }
}

/// `GENERATION[index]`, 0 when unreadable.
#[inline(always)]
pub fn generation(index: u32) -> u32 {
    GENERATION.get(index).copied().unwrap_or(0)
}
