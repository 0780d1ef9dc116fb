//! The names of maps and programs, defined once.
//!
//! The eBPF crate names each `static` exactly like the constant here (the
//! `#[map]` macro takes the identifier as the name), and userspace looks them
//! up only through these constants. A userspace test loads the object and
//! checks that every name below exists in it, and that none of `bench`'s
//! does.

// Maps: each is documented once, at its definition in
// capprof-ebpf/src/maps.rs.
pub const WATCH_ROOTS: &str = "WATCH_ROOTS";
pub const CGROUPS: &str = "CGROUPS";
pub const CONFIG: &str = "CONFIG";
pub const SITES: &str = "SITES";
pub const COUNTS: &str = "COUNTS";
pub const EVIDENCE_SEEN: &str = "EVIDENCE_SEEN";
pub const EVENTS: &str = "EVENTS";
pub const STATS: &str = "STATS";
pub const INFLIGHT: &str = "INFLIGHT";
pub const CALIB: &str = "CALIB";
pub const TASKS: &str = "TASKS";
pub const TASK_EXECS: &str = "TASK_EXECS";
pub const HOT: &str = "HOT";
pub const GENERATION: &str = "GENERATION";
/// Dedup of the syscall hooks' records (`OperationKey`, LRU).
pub const OPS_SEEN: &str = "OPS_SEEN";
/// ICMP datagram socket() calls between entry and exit, by thread id.
pub const SOCKETS_PENDING: &str = "SOCKETS_PENDING";
/// The syscall hooks' records the ring buffer had no room for.
pub const CONDITIONAL_BACKLOG: &str = "CONDITIONAL_BACKLOG";
pub const CAPSET_BACKLOG: &str = "CAPSET_BACKLOG";
pub const CAPSET_EXEC_BACKLOG: &str = "CAPSET_EXEC_BACKLOG";
/// What each process's capset() calls kept, until its next exec.
pub const CAPSET_RAISES: &str = "CAPSET_RAISES";

/// tp_btf program on the `cap_capable` tracepoint (Linux 6.14+).
pub const PROG_TP_BTF: &str = "capprof_tp_btf";
/// fexit program on `cap_capable()` (trampolines, Linux 5.5+).
pub const PROG_FEXIT: &str = "capprof_fexit";
/// kprobe / kretprobe pair on `cap_capable()`.
pub const PROG_KPROBE: &str = "capprof_kprobe";
pub const PROG_KRETPROBE: &str = "capprof_kretprobe";
/// BPF-LSM program on the `capable` hook (opt-in; sees granted checks only).
pub const PROG_LSM: &str = "capprof_lsm";
/// Load-time calibration of the stack slots, one per backend.
pub const PROG_CALIBRATE: &str = "capprof_calibrate";
pub const PROG_CALIBRATE_FEXIT: &str = "capprof_calibrate_fexit";
pub const PROG_CALIBRATE_KPROBE: &str = "capprof_calibrate_kprobe";
pub const PROG_CALIBRATE_LSM: &str = "capprof_calibrate_lsm";
/// Process lifecycle, to tell runtime setup from the workload (tp_btf).
pub const PROG_EXEC: &str = "capprof_exec";
pub const PROG_FORK: &str = "capprof_fork";
pub const PROG_EXIT: &str = "capprof_exit";
/// Syscall tracepoints for what no capability check shows: binds below
/// 1024 and ICMP datagram sockets that a relaxed sysctl let through
/// (conditional capabilities), and capset() (capabilities kept).
pub const PROG_BIND: &str = "capprof_bind";
pub const PROG_SOCKET: &str = "capprof_socket";
pub const PROG_SOCKET_EXIT: &str = "capprof_socket_exit";
pub const PROG_CAPSET: &str = "capprof_capset";
/// (program, tracepoint) of each syscall hook, in the `syscalls` category.
pub const SYSCALL_HOOKS: &[(&str, &str)] = &[
    (PROG_BIND, "sys_enter_bind"),
    (PROG_SOCKET, "sys_enter_socket"),
    (PROG_SOCKET_EXIT, "sys_exit_socket"),
    (PROG_CAPSET, "sys_enter_capset"),
];
pub const SYSCALLS_CATEGORY: &str = "syscalls";
/// An empty program on the `cap_capable` tracepoint, attached for a moment
/// at load next to `PROG_CALIBRATE`: a second program makes the tracepoint
/// switch to its other frame layout, so that calibration finds the slots of
/// both. The benchmark also uses it as its floor.
pub const PROG_CALIBRATE_SPACER: &str = "capprof_calibrate_spacer";

/// The kernel function and tracepoint every backend observes.
pub const HOOK_FUNCTION: &str = "cap_capable";
pub const TRACEPOINT_CATEGORY: &str = "capability";
pub const TRACEPOINT_NAME: &str = "cap_capable";
/// The LSM hook the BPF-LSM backend observes (`bpf_lsm_capable` in BTF).
pub const LSM_HOOK: &str = "capable";

/// Every map userspace expects to find in the object capprof embeds.
pub const ALL_MAPS: &[&str] = &[
    WATCH_ROOTS,
    CGROUPS,
    CONFIG,
    SITES,
    COUNTS,
    EVIDENCE_SEEN,
    EVENTS,
    STATS,
    INFLIGHT,
    CALIB,
    TASKS,
    TASK_EXECS,
    HOT,
    GENERATION,
    OPS_SEEN,
    SOCKETS_PENDING,
    CONDITIONAL_BACKLOG,
    CAPSET_BACKLOG,
    CAPSET_EXEC_BACKLOG,
    CAPSET_RAISES,
];
/// Every program userspace expects to find in the object capprof embeds.
pub const ALL_PROGRAMS: &[&str] = &[
    PROG_TP_BTF,
    PROG_FEXIT,
    PROG_KPROBE,
    PROG_KRETPROBE,
    PROG_LSM,
    PROG_CALIBRATE,
    PROG_CALIBRATE_FEXIT,
    PROG_CALIBRATE_KPROBE,
    PROG_CALIBRATE_LSM,
    PROG_CALIBRATE_SPACER,
    PROG_EXEC,
    PROG_FORK,
    PROG_EXIT,
    PROG_BIND,
    PROG_SOCKET,
    PROG_SOCKET_EXIT,
    PROG_CAPSET,
];

/// The benchmark's own programs (`capprof-bench`). capprof-ebpf builds them
/// only with its `bench` feature, into the benchmark's copy of the object;
/// the object capprof embeds does not have them.
pub mod bench {
    /// The per-event streaming design (one `EVENTS` record per check, like
    /// BCC's `capable`), to compare with in-kernel aggregation.
    pub const PROG_STREAM: &str = "capprof_bench_stream";
    /// capprof's profiled path rebuilt step by step, to price each step
    /// with bpf_stats.
    pub const PROG_LADDER: &str = "capprof_bench_ladder";

    /// Every program the `bench` feature adds to the object.
    pub const ALL_PROGRAMS: &[&str] = &[PROG_STREAM, PROG_LADDER];
}
