//! The in-kernel aggregation: one counter per (cgroup, capability, verdict,
//! call-site kind).

use core::mem::size_of;

/// The check was granted (`cap_capable` returned 0).
pub const VERDICT_GRANTED: u8 = 0;
/// The check was refused (`cap_capable` returned an error, -EPERM).
pub const VERDICT_DENIED: u8 = 1;

/// How a check was made, as far as the kernel side can tell. These ids are
/// stable and never reused; userspace turns them into the profile's classes.
pub mod kind {
    /// Not classified (no `opts`, and the call site is unknown or calibration
    /// failed). Treated like `AUDIT` so that nothing needed is ever dropped.
    pub const UNKNOWN: u8 = 0;
    /// An audited check (CAP_OPT_NONE or CAP_OPT_INSETID): the kernel asks
    /// because the operation needs the capability.
    pub const AUDIT: u8 = 1;
    /// A CAP_OPT_NOAUDIT check that can still gate an operation.
    pub const NOAUDIT: u8 = 2;
    /// A CAP_OPT_NOAUDIT probe that changes no permission decision, such as
    /// `security_vm_enough_memory_mm`'s CAP_SYS_ADMIN check on mmap/brk.
    pub const ADVISORY: u8 = 3;
    /// Only in `SITES`: the return address is inside `security_capable`, so
    /// the kind is decided one frame further out.
    pub const VIA_SECURITY_CAPABLE: u8 = 4;
    /// The CAP_SETPCAP check `cap_capset()` makes on every capset() call,
    /// straight through `cap_capable()`. It decides only when the call
    /// grows the inheritable set, and the capset hook records that case as
    /// a kept capability; otherwise it changes nothing, like an advisory
    /// probe.
    pub const CAPSET: u8 = 5;
    /// Made with credentials that are not the task's own: the hook's `cred`
    /// is not `current->real_cred`. overlayfs copy-up (and other kernel
    /// paths that use `override_creds`) checks the mounter's credentials
    /// from the container's task. Takes precedence over every kind above:
    /// such a check says nothing about what the workload needs.
    pub const BORROWED: u8 = 6;
}

/// Which user namespace a check targeted, relative to the checking
/// credentials' own (`cred->user_ns`). Stable ids.
pub mod userns {
    /// The credentials' own namespace (or it could not be read): what
    /// `--cap-add` grants.
    pub const OWN: u8 = 0;
    /// A namespace below it: decided by the same capability sets (or by
    /// owning the namespace).
    pub const DESCENDANT: u8 = 1;
    /// Any other, above all an ancestor such as the host's: `cap_capable`
    /// refuses it whatever the credentials hold, so no `--cap-add` can grant
    /// it.
    pub const ANCESTOR: u8 = 2;
}

/// Key of `COUNTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckKey {
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    pub cap: u32,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `kind::*`.
    pub kind: u8,
    /// `phase::*`.
    pub phase: u8,
    /// `userns::*`: the target namespace relative to the credentials' own.
    pub userns: u8,
}
const _: () = assert!(size_of::<CheckKey>() == 16);

/// Value of `COUNTS`. `count` is updated atomically; the timestamps are
/// CLOCK_BOOTTIME nanoseconds (`bpf_ktime_get_boot_ns`). A clock read costs
/// about 40 ns here, as much as the rest of the counter, so `last_ns` is
/// refreshed only when `last_jiffies` shows a new tick: exact to a tick,
/// and one clock read per tick however hot the counter is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// `jiffies` when `last_ns` was taken.
    pub last_jiffies: u64,
}
const _: () = assert!(size_of::<CheckStats>() == 32);

/// Key of `EVIDENCE_SEEN`: one evidence record is sent per distinct key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EvidenceKey {
    pub cgroup_id: u64,
    pub cap: u32,
    /// Syscall number, or `SYSCALL_UNKNOWN`.
    pub syscall: u32,
    /// The task's comm: which program made the check.
    pub comm: [u8; 16],
    pub verdict: u8,
    pub kind: u8,
    pub phase: u8,
    /// `userns::*`.
    pub userns: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<EvidenceKey>() == 40);

/// A `COUNTS` entry takes evidence (syscall, comm) from its first this many
/// checks only: evidence costs a pt_regs read, a comm copy and an
/// `EVIDENCE_SEEN` lookup, several times the counter itself, and a busy
/// loop repeats the same evidence anyway.
pub const EVIDENCE_BUDGET: u64 = 32;

/// `syscall` when the task is not in a syscall or it could not be read.
pub const SYSCALL_UNKNOWN: u32 = u32::MAX;

/// Values of `WATCH_ROOTS` (how a subtree is profiled) and of the `CGROUPS`
/// cache (the mode of the root a cgroup lies under, or `UNWATCHED`).
pub mod watch {
    /// The cgroup is outside every watched subtree.
    pub const UNWATCHED: u32 = 0;
    /// A command's cgroup (`capprof run`): every check is the workload's.
    pub const COMMAND: u32 = 1;
    /// Container cgroups: a process is runtime setup until it execs the
    /// workload (see `phase`).
    pub const CONTAINERS: u32 = 2;
}

/// `CGROUPS` values: the watch mode in the low byte, and above it the
/// `generations::WATCH` generation it was decided in. A decision from an older
/// generation (before a root was added or removed) is stale and re-walked,
/// so userspace never has to find and delete stale entries.
pub mod decision {
    pub const fn pack(mode: u32, generation: u32) -> u32 {
        (mode & 0xff) | (generation << 8)
    }
    pub const fn mode(value: u32) -> u32 {
        value & 0xff
    }
    /// Whether `value` was decided in `generation` (compared modulo 2^24).
    pub const fn is_current(value: u32, generation: u32) -> bool {
        (value >> 8) == (generation & 0x00ff_ffff)
    }
}

/// Indexes of the `GENERATION` array. Each is bumped after the state it
/// guards changes; `HOT` entries remember the generation they were filled
/// in and are refilled when it moves.
pub mod generations {
    /// Bumped by userspace after every change of `WATCH_ROOTS`.
    pub const WATCH: u32 = 0;
    /// Bumped (atomically) by the process hooks after every exec and exit
    /// in a container cgroup, which is when a cached phase can go stale.
    pub const TASKS: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Entries of `HotCache::sites`, direct-mapped by return address.
pub const HOT_SITES: usize = 8;

/// The single value of the per-CPU `HOT` map: what the previous check on
/// this CPU resolved, so that the next check from the same task skips the
/// `CGROUPS`, `TASKS` and `SITES` lookups, and checks pending for `COUNTS`.
/// Only the `cap_capable` program of one loaded object writes it, and never
/// re-entrantly on one CPU.
///
/// Pending checks: once a counter has had its `EVIDENCE_BUDGET` checks, a
/// repeat of the same key within the same jiffy is only counted here, with
/// no hash lookup and no atomic on a shared cache line. Keys have
/// `HOT_PENDING` slots, chosen by `pending_slot`, so a workload that
/// alternates between a few capabilities keeps each in its own. A slot's
/// checks are added to `COUNTS` (flushed) at the first check on this CPU
/// that takes the slot with another key or in another jiffy, and all slots
/// at a change of cgroup. Userspace adds what is
/// still pending when it reads (see `Observer::read_counts`), and before
/// draining makes every CPU flush (`Observer::flush_pending`). A
/// capability's first checks always go to `COUNTS` directly, so nothing
/// pending can hide one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HotCache {
    pub cgroup_id: u64,
    /// `watch::*` of `cgroup_id`.
    pub mode: u32,
    /// `generations::WATCH` when `mode` was decided.
    pub watch_gen: u32,
    /// The tgid whose phase is cached, 0 for none.
    pub tgid: u32,
    /// `generations::TASKS` when `phase` was read.
    pub tasks_gen: u32,
    pub phase: u8,
    pub _pad: [u8; 7],
    /// Return address -> `kind::*`; an address of 0 is an empty entry.
    pub site_addr: [u64; HOT_SITES],
    pub site_kind: [u8; HOT_SITES],
    /// The keys checks are pending for; a `cgroup_id` of 0 when none.
    pub pend_key: [CheckKey; HOT_PENDING],
    /// Checks of `pend_key` counted here and not yet in `COUNTS`.
    pub pend_count: [u64; HOT_PENDING],
    /// The jiffy they were made in. The check that armed a slot was counted
    /// in `COUNTS` in that jiffy, so `last_ns` already covers them.
    pub pend_jiffies: [u64; HOT_PENDING],
    /// Bumped at every flush, so that userspace can tell whether one
    /// happened while it read `COUNTS`.
    pub pend_seq: u64,
    /// Bumped whenever this CPU's check path writes `COUNTS` itself (a new
    /// counter, or a check counted there): with `pend_seq` and the pending
    /// counts, it tells userspace that nothing changed since its last read,
    /// so that an idle node's counters are not walked again. Costs one add
    /// on the path that already writes `COUNTS`, never on a repeat.
    pub counts_seq: u64,
}
const _: () =
    assert!(size_of::<HotCache>() == 32 + 8 * HOT_SITES + HOT_SITES + 32 * HOT_PENDING + 16);

/// Pending slots in `HotCache`, a power of two.
pub const HOT_PENDING: usize = 8;

/// The pending slot of a key: spreads the capabilities a workload mixes
/// (the storm's six, and the advisory mmap probe) over different slots.
pub const fn pending_slot(key: &CheckKey) -> usize {
    (key.cap as usize + 5 * key.kind as usize + 3 * key.verdict as usize) & (HOT_PENDING - 1)
}

/// Whether a check was made by the workload or by the container runtime
/// setting it up. Stable ids.
pub mod phase {
    pub const WORKLOAD: u8 = 0;
    pub const SETUP: u8 = 1;

    /// Whether `comm`, the name an exec leaves, is the container runtime's
    /// own: runc's `runc:[0:PARENT]`, `runc:[1:CHILD]`, `runc:[2:INIT]` and
    /// `runc init`, its memfd clones (`runc_cloned:…`, `memfd:runc_cloned…`
    /// on 6.14+, where an fd exec is named after the file), crun, and `exe`,
    /// which is what re-executing `/proc/self/exe` leaves.
    pub const fn is_runtime_comm(comm: &[u8; 16]) -> bool {
        starts_with(comm, b"runc")
            || starts_with(comm, b"memfd:runc")
            || starts_with(comm, b"crun")
            || (starts_with(comm, b"exe") && comm[3] == 0)
    }

    /// The phase of a process after it execs and its comm becomes `comm`.
    /// A process becomes workload at its first exec of a program that is not
    /// the runtime, and stays workload (its children inherit that).
    pub const fn after_exec(current: u8, comm: &[u8; 16]) -> u8 {
        if current == WORKLOAD || !is_runtime_comm(comm) {
            WORKLOAD
        } else {
            SETUP
        }
    }

    const fn starts_with(comm: &[u8; 16], prefix: &[u8]) -> bool {
        let mut i = 0;
        while i < prefix.len() {
            if i >= comm.len() || comm[i] != prefix[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// Indexes of the per-CPU `STATS` counters.
pub mod stat {
    /// Evidence records that could not be reserved in the ring buffer.
    pub const RINGBUF_LOST: u32 = 0;
    /// Checks that could not be counted because `COUNTS` was full.
    pub const COUNTS_FULL: u32 = 1;
    /// Retired (was: checks seen in watched cgroups, now the sum of
    /// `COUNTS`). Kept so that the indexes below stay stable.
    pub const RETIRED_WATCHED_CHECKS: u32 = 2;
    /// Checks whose call site could not be classified.
    pub const UNCLASSIFIED: u32 = 3;
    /// cgroup records that could not be reserved in the ring buffer.
    pub const CGROUP_EVENTS_LOST: u32 = 4;
    /// Pending checks whose counter userspace had already drained when
    /// they were flushed (it had read them from `HOT` itself).
    pub const PENDING_DROPPED: u32 = 5;
    pub const COUNT: u32 = 8;
}

/// Value of `INFLIGHT` (kprobe backend): what the entry probe saw, for the
/// return probe to count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inflight {
    pub cap: u32,
    pub opts: u32,
    /// Return address into `cap_capable`'s caller, read at entry.
    pub site: u64,
    /// Return address one frame further out, read at entry.
    pub outer: u64,
    /// `cap_capable`'s `cred` and `targ_ns` arguments.
    pub cred: u64,
    pub target_ns: u64,
}
const _: () = assert!(size_of::<Inflight>() == 40);
