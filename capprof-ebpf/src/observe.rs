//! The path every backend shares: filter, classify, aggregate, and send
//! first-sighting evidence.
//!
//! Cost model (measured with bpf_stats, BENCHMARKS.md): `cap_capable` fires
//! on nearly every mmap/brk/execve of every process on the host, so
//! - a check from an unwatched cgroup costs one helper call
//!   (`bpf_get_current_cgroup_id`), two inlined array lookups (`HOT`,
//!   `GENERATION`) and a compare: the per-CPU `HOT` entry remembers the
//!   previous check's cgroup and its watch decision. Only when the cgroup
//!   changes does the check look `CGROUPS` up (and walk the ancestors the
//!   first time).
//! - a watched check never walks the stack. The tracepoint has no `opts`, so
//!   the kind (audited, NOAUDIT, advisory) comes from the call site: 8-byte
//!   reads at stack slots calibrated at load time (the return address into
//!   `cap_capable`'s caller and, when that is `security_capable`, into its
//!   caller), each resolved through `HOT`'s small site cache, then `SITES`,
//!   then the function ranges. `bpf_get_stack` would cost about 30x the
//!   counter (1.9 µs vs 60 ns). With `opts` (fexit, kprobe, lsm), an audited
//!   check needs no call site at all.
//! - a counter's first `EVIDENCE_BUDGET` checks each cost a hash lookup, an
//!   atomic add and the evidence dedup (syscall, comm, `EVIDENCE_SEEN`, a
//!   ring buffer record on first sight). After that, a check whose key is
//!   already pending on this CPU within the same jiffy only bumps one of
//!   `HOT`'s eight pending counts (see `HotCache`): no hash lookup, no
//!   shared cache line. The counter gets it at most once a jiffy.
//! - a watched check (only a watched one) also reads whose credentials it
//!   used and which user namespace it targeted (`cred_relation`): one helper
//!   call for the task pointer and two 8-byte kernel reads
//!   (`current->real_cred`, `cred->user_ns`); two more reads (the
//!   namespaces' levels) only when the target is not the credentials' own
//!   namespace. They come before the pending fast path because both go
//!   into the key, so every watched check pays them: the bench smoke's
//!   profiled per-run cost (bpf_stats, a CAP_KILL loop) went from 57-59 ns
//!   to 70-72 ns here, about 12 ns. Caching the answer per (task, cred)
//!   would be cheaper but wrong once a freed override cred's address is
//!   reused for the task's own.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_task_pt_regs},
    },
};
use capprof_common::{
    check::{
        CheckKey, CheckStats, EVIDENCE_BUDGET, EvidenceKey, HOT_PENDING, HOT_SITES, HotCache,
        SYSCALL_UNKNOWN, VERDICT_DENIED, VERDICT_GRANTED, decision, generations, kind,
        pending_slot, phase, stat, userns, watch,
    },
    config::{CgroupNameOffsets, Config, CredOffsets, MAX_CGROUP_DEPTH, MAX_FUNC_RANGES},
    event::{CgroupEvent, EVENT_CGROUP, EVENT_EVIDENCE, EvidenceEvent},
};

use crate::{
    helpers,
    maps::{
        CGROUPS, CONFIG, COUNTS, EVENTS, EVIDENCE_SEEN, HOT, SITES, TASKS, WATCH_ROOTS, bump,
        generation,
    },
    process::send_exec,
};

/// capprof's own tgid, set at load time: its own checks are never profiled.
#[unsafe(no_mangle)]
pub static CAPPROF_TGID: u32 = 0;

/// `cap_capable`'s `opts` argument (include/linux/security.h).
pub const CAP_OPT_NOAUDIT: u32 = 1 << 1;

/// Checked by capset() on every call, straight through `cap_capable`.
const CAP_SETPCAP: u32 = 8;

/// Where the callers' return addresses can be found.
#[derive(Clone, Copy)]
pub enum CallSite {
    /// Read them now, at the calibrated slots counted up from this address
    /// (the tracepoint's or the fexit trampoline's context).
    Frame(u64),
    /// Already read (by the kprobe at entry, with `read_sites`).
    Read(u64, u64),
}

/// The credentials a check was made with and the user namespace it
/// targeted: the hook's `cred` and `target_ns`/`targ_ns`/`ns` arguments,
/// kernel pointers (0 when unknown).
#[derive(Clone, Copy)]
pub struct Creds {
    pub cred: u64,
    pub target_ns: u64,
}

/// Counts one check. `opts` is `cap_capable`'s real `opts` where the hook
/// has it (fexit, kprobe), None on the tracepoint.
#[inline(always)]
pub fn observe(cap: u32, ret: i32, opts: Option<u32>, call_site: CallSite, creds: Creds) {
    let cgroup_id = helpers::cgroup_id();
    let Some(hot) = HOT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's entry. Only this program writes it, and a program
    // is never re-entered on one CPU (the kernel skips a nested run).
    let hot = unsafe { &mut *hot };
    let watch_gen = generation(generations::WATCH);
    if hot.cgroup_id != cgroup_id || hot.watch_gen != watch_gen {
        for slot in 0..HOT_PENDING {
            flush_pending(hot, slot);
        }
        hot.mode = cgroup_mode(cgroup_id, watch_gen);
        hot.cgroup_id = cgroup_id;
        hot.watch_gen = watch_gen;
    }
    if hot.mode == watch::UNWATCHED {
        return;
    }
    observe_watched(hot, cgroup_id, cap, ret, opts, call_site, creds);
}

#[inline(always)]
fn observe_watched(
    hot: &mut HotCache,
    cgroup_id: u64,
    cap: u32,
    ret: i32,
    opts: Option<u32>,
    call_site: CallSite,
    creds: Creds,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read of a constant global.
    if tgid == unsafe { core::ptr::read_volatile(&CAPPROF_TGID) } {
        return;
    }
    let phase = if hot.mode == watch::CONTAINERS {
        cached_phase(hot, tgid)
    } else {
        phase::WORKLOAD
    };

    let config = CONFIG.get(0);
    let (borrowed, userns) = match config {
        Some(config) => cred_relation(&config.creds, creds),
        None => (false, userns::OWN),
    };
    let (kind, site, outer_site) = match (opts, config) {
        // Borrowed credentials: what kind of check it was does not matter,
        // but the call site is wanted as evidence, read in whichever frame
        // layout the tracepoint has now (another program attached to it
        // moves the return addresses; `read_sites` knows only the first).
        (_, Some(config)) if borrowed => {
            let (_, site, outer) = classify_call_site(hot, config, call_site);
            (kind::BORROWED, site, outer)
        }
        // Audited: nothing to tell apart, the call site is not needed (but
        // for CAP_SETPCAP, which capset() checks on every call).
        (Some(opts), _) if opts & CAP_OPT_NOAUDIT == 0 && cap != CAP_SETPCAP => match call_site {
            CallSite::Read(site, outer) => (kind::AUDIT, site, outer),
            CallSite::Frame(_) => (kind::AUDIT, 0, 0),
        },
        (_, None) => (kind::UNKNOWN, 0, 0),
        (opts, Some(config)) => {
            let (site_kind, site, outer) = classify_call_site(hot, config, call_site);
            let kind = match opts {
                None => site_kind,
                // The call site tells the advisory probes apart from the
                // NOAUDIT checks that gate something; both carry
                // CAP_OPT_NOAUDIT. capset()'s audited CAP_SETPCAP check is
                // told apart the same way.
                Some(_) if site_kind == kind::ADVISORY || site_kind == kind::CAPSET => site_kind,
                Some(opts) if opts & CAP_OPT_NOAUDIT == 0 => kind::AUDIT,
                Some(_) => kind::NOAUDIT,
            };
            (kind, site, outer)
        }
    };
    if kind == kind::UNKNOWN {
        bump(stat::UNCLASSIFIED);
    }
    let verdict = if ret == 0 {
        VERDICT_GRANTED
    } else {
        VERDICT_DENIED
    };
    let key = CheckKey {
        cgroup_id,
        cap,
        verdict,
        kind,
        phase,
        userns,
    };
    let jiffies = helpers::jiffies();
    let slot = pending_slot(&key);
    if hot.pend_key[slot] == key && hot.pend_jiffies[slot] == jiffies {
        hot.pend_count[slot] += 1;
        return;
    }
    flush_pending(hot, slot);
    hot.counts_seq += 1;
    let before = count(&key, jiffies);
    if before == u64::MAX {
        return;
    }
    if before + 1 >= EVIDENCE_BUDGET {
        // The budget is spent: repeats in this jiffy stay in `HOT`.
        hot.pend_key[slot] = key;
        hot.pend_jiffies[slot] = jiffies;
    }
    if before >= EVIDENCE_BUDGET {
        return;
    }
    let (site, outer_site) = match (site, call_site, config) {
        (0, CallSite::Frame(frame), Some(config)) => read_sites(config, frame),
        _ => (site, outer_site),
    };
    send_evidence(&key, ret, pid_tgid, config, site, outer_site);
}

/// The cold part of a check: dedup its evidence and send a record the first
/// time a (cgroup, cap, syscall, comm, verdict, kind, phase) is seen.
#[inline(always)]
fn send_evidence(
    key: &CheckKey,
    ret: i32,
    pid_tgid: u64,
    config: Option<&Config>,
    site: u64,
    outer_site: u64,
) {
    let CheckKey {
        cgroup_id,
        cap,
        verdict,
        kind,
        phase,
        userns,
    } = *key;
    // Advisory probes fire on every mmap; which program or syscall made one
    // says nothing new, so they share one evidence key per counter.
    let advisory = kind == kind::ADVISORY;
    let syscall = if advisory {
        SYSCALL_UNKNOWN
    } else {
        config.map_or(SYSCALL_UNKNOWN, current_syscall)
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let evidence_key = EvidenceKey {
        cgroup_id,
        cap,
        syscall,
        comm: if advisory { [0; 16] } else { comm },
        verdict,
        kind,
        phase,
        userns,
        _pad: [0; 4],
    };
    // SAFETY: the value is a plain u8 we never dereference.
    if unsafe { EVIDENCE_SEEN.get(&evidence_key) }.is_some() {
        return;
    }
    if EVIDENCE_SEEN
        .insert(&evidence_key, &0, BPF_NOEXIST as u64)
        .is_err()
    {
        // Another CPU inserted it first, or the map refused: either way the
        // record is (or will be) sent by someone else.
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    send_exec(tgid);
    let Some(mut entry) = EVENTS.reserve::<EvidenceEvent>(0) else {
        bump(stat::RINGBUF_LOST);
        // Forget the sighting so that the next such check tries again.
        let _ = EVIDENCE_SEEN.remove(&evidence_key);
        return;
    };
    let uid_gid = bpf_get_current_uid_gid();
    entry.write(EvidenceEvent {
        event: EVENT_EVIDENCE,
        cap,
        cgroup_id,
        ts_ns: helpers::boot_ns(),
        tgid,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        syscall,
        ret,
        verdict,
        kind,
        phase,
        userns,
        _pad: [0; 4],
        comm,
        site,
        outer_site,
    });
    entry.submit(0);
}

/// Whether a check's credentials are borrowed, and where its target user
/// namespace lies (`userns::*`), from fields at offsets resolved from BTF.
///
/// Borrowed: `cred` is not the task's own `real_cred`. `override_creds()`
/// swaps the task's subjective credentials (`current->cred`), and every
/// ordinary check passes `current_cred()`, so an override shows as a `cred`
/// that is `current->cred` but not `current->real_cred`. Checks of another
/// task's or a file's credentials (`has_capability(t, …)`,
/// `file_ns_capable()`'s `f_cred`, `ptracer_capable()`) differ from it too,
/// and are not the workload's own either. Unreadable offsets or pointers
/// make a check the task's own: the profile then over-grants, as before.
#[inline(always)]
fn cred_relation(o: &CredOffsets, creds: Creds) -> (bool, u8) {
    if creds.cred == 0 || o.task_real_cred == u32::MAX {
        return (false, userns::OWN);
    }
    let task = helpers::task_btf();
    let real_cred = read_u64(task, o.task_real_cred);
    let borrowed = real_cred != 0 && real_cred != creds.cred;
    (borrowed, target_userns(o, creds))
}

/// `userns::*` of `creds.target_ns` relative to `creds.cred->user_ns`,
/// decided as `cap_capable()` walks: a namespace at a deeper level whose
/// ancestor at the credentials' level is theirs is a descendant; any other
/// (an ancestor, or another branch) is one no capability of theirs reaches.
#[inline(always)]
fn target_userns(o: &CredOffsets, creds: Creds) -> u8 {
    if creds.target_ns == 0 || o.cred_user_ns == u32::MAX {
        return userns::OWN;
    }
    let own = read_u64(creds.cred, o.cred_user_ns);
    if own == 0 || own == creds.target_ns {
        return userns::OWN;
    }
    outside_userns(o, own, creds.target_ns)
}

/// The cold part of `target_userns`: the target is another namespace.
#[inline(never)]
fn outside_userns(o: &CredOffsets, own: u64, target: u64) -> u8 {
    if o.user_ns_level == u32::MAX || o.user_ns_parent == u32::MAX {
        return userns::OWN;
    }
    let level = |ns: u64| read_u32(ns, o.user_ns_level);
    let (Some(own_level), Some(mut target_level)) = (level(own), level(target)) else {
        return userns::OWN;
    };
    let mut ns = target;
    // User namespaces nest at most 32 deep (MAX_USER_NS_LEVEL).
    for _ in 0..33 {
        if target_level <= own_level {
            break;
        }
        ns = read_u64(ns, o.user_ns_parent);
        if ns == 0 {
            return userns::OWN;
        }
        target_level -= 1;
    }
    if ns == own {
        userns::DESCENDANT
    } else {
        userns::ANCESTOR
    }
}

/// The 8-byte kernel word at `base + offset`, 0 when unreadable.
#[inline(always)]
fn read_u64(base: u64, offset: u32) -> u64 {
    if base == 0 {
        return 0;
    }
    // SAFETY: checked kernel read; a bad address reads an error.
    unsafe { bpf_probe_read_kernel((base + (offset as u64 & 0xffff)) as *const u64) }.unwrap_or(0)
}

/// The 4-byte kernel word at `base + offset`.
#[inline(always)]
fn read_u32(base: u64, offset: u32) -> Option<u32> {
    // SAFETY: checked kernel read; a bad address reads an error.
    unsafe { bpf_probe_read_kernel((base + (offset as u64 & 0xffff)) as *const u32) }.ok()
}

/// The phase of `tgid`, from `HOT` while no exec or exit in a container
/// cgroup has happened since it was read, else from `TASKS`.
#[inline(always)]
fn cached_phase(hot: &mut HotCache, tgid: u32) -> u8 {
    // Read the generation before `TASKS`: a change racing with this read
    // leaves an older generation in `HOT`, which the next check refreshes.
    let tasks_gen = generation(generations::TASKS);
    if hot.tgid != tgid || hot.tasks_gen != tasks_gen {
        hot.phase = task_phase(tgid);
        hot.tgid = tgid;
        hot.tasks_gen = tasks_gen;
    }
    hot.phase
}

/// The watch mode of the current task's cgroup in generation `watch_gen`:
/// one lookup for a known cgroup, a walk of its ancestors the first time
/// (and again after the roots change).
#[inline(always)]
pub fn cgroup_mode(cgroup_id: u64, watch_gen: u32) -> u32 {
    // SAFETY: the value is a plain u32.
    let known = unsafe { CGROUPS.get(&cgroup_id) }.copied();
    if let Some(value) = known
        && decision::is_current(value, watch_gen)
    {
        return decision::mode(value);
    }
    let was_watched = known.is_some_and(|v| decision::mode(v) != watch::UNWATCHED);
    first_sight(cgroup_id, watch_gen, was_watched)
}

#[inline(never)]
fn first_sight(cgroup_id: u64, watch_gen: u32, was_watched: bool) -> u32 {
    let mut mode = watch::UNWATCHED;
    // Walk from the root down: the outermost watched ancestor decides.
    let mut level = 0;
    while level < MAX_CGROUP_DEPTH {
        // SAFETY: helper taking a plain integer.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if ancestor == 0 {
            break;
        }
        // SAFETY: the value is a plain u32.
        if let Some(root) = unsafe { WATCH_ROOTS.get(&ancestor) } {
            mode = *root;
            break;
        }
        level += 1;
    }
    let _ = CGROUPS.insert(&cgroup_id, &decision::pack(mode, watch_gen), 0);
    // Userspace learns the cgroup's name once, not again at every change of
    // the roots.
    if mode != watch::UNWATCHED && !was_watched {
        announce_cgroup(cgroup_id);
    }
    mode
}

/// The phase of the current process (`tgid`) in a container cgroup: setup
/// until it execs the workload (`TASKS` is written by the process hooks).
#[inline(always)]
pub fn task_phase(tgid: u32) -> u8 {
    // SAFETY: the value is a plain u8.
    match unsafe { TASKS.get(&tgid) } {
        Some(phase) => *phase,
        None => unseen_task_phase(tgid),
    }
}

/// The phase of a process the process hooks never saw: it was running
/// before the programs were attached (a container already running when
/// recording began, a daemon started on a busy node), or the runtime
/// moved it into the cgroup after forking it outside (runc's init), or
/// its entry was evicted. Its comm tells: the runtime's own names stay
/// setup, anything else has exec'd the workload already. Remembered, so
/// that this runs once per process; the value is the one every reader
/// would have computed, so no cached phase goes stale.
#[inline(never)]
fn unseen_task_phase(tgid: u32) -> u8 {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let phase = phase::after_exec(phase::SETUP, &comm);
    let _ = TASKS.insert(&tgid, &phase, BPF_NOEXIST as u64);
    phase
}

fn announce_cgroup(cgroup_id: u64) {
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        bump(stat::CGROUP_EVENTS_LOST);
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` is our reserved record until submit; kernel memory is
    // only read through checked helpers.
    unsafe {
        (*event).event = EVENT_CGROUP;
        (*event).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*event).cgroup_id = cgroup_id;
        (*event).ts_ns = helpers::boot_ns();
        (*event).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*event).name[0] = 0;
        (*event).parent[0] = 0;
        if let Some(config) = CONFIG.get(0) {
            read_cgroup_names(
                &config.cgroup_name,
                &mut (*event).name,
                &mut (*event).parent,
            );
        }
    }
    entry.submit(0);
}

/// `current->cgroups->dfl_cgrp->kn->name` and `kn->parent->name`, at
/// offsets resolved from BTF at load time.
#[inline(always)]
unsafe fn read_cgroup_names(o: &CgroupNameOffsets, name: &mut [u8], parent: &mut [u8]) {
    if o.task_cgroups == u32::MAX {
        return;
    }
    let field = |base: u64, off: u32| -> u64 {
        if base == 0 {
            return 0;
        }
        // SAFETY: checked kernel read.
        unsafe { bpf_probe_read_kernel((base + (off as u64 & 0xffff)) as *const u64) }.unwrap_or(0)
    };
    let task = helpers::task_btf();
    let css_set = field(task, o.task_cgroups);
    let cgroup = field(css_set, o.css_set_dfl_cgrp);
    let kn = field(cgroup, o.cgroup_kn);
    let leaf = field(kn, o.kernfs_node_name);
    if leaf != 0 {
        // SAFETY: checked kernel string read into our buffer.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(leaf as *const u8, name) };
    }
    let up = field(field(kn, o.kernfs_node_parent), o.kernfs_node_name);
    if up != 0 {
        // SAFETY: as above.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(up as *const u8, parent) };
    }
}

/// Adds the checks pending in one of `HOT`'s slots to `COUNTS`.
#[inline(always)]
fn flush_pending(hot: &mut HotCache, slot: usize) {
    let slot = slot & (HOT_PENDING - 1);
    let n = hot.pend_count[slot];
    if n == 0 {
        return;
    }
    hot.pend_count[slot] = 0;
    hot.pend_seq += 1;
    match COUNTS.get_ptr_mut(&hot.pend_key[slot]) {
        // SAFETY: a live map value; the counter is only updated atomically.
        Some(stats) => unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).count, n);
        },
        // Userspace drains a counter only after it has made every CPU flush
        // or has read what was still pending itself: these are counted.
        None => bump(stat::PENDING_DROPPED),
    }
}

/// Counts the check under `key` and returns how many checks the counter
/// held before (0 for a new one; u64::MAX when it could not be counted).
#[inline(always)]
fn count(key: &CheckKey, jiffies: u64) -> u64 {
    if let Some(stats) = COUNTS.get_ptr_mut(key) {
        return add(stats, jiffies);
    }
    let now = helpers::boot_ns();
    let fresh = CheckStats {
        count: 1,
        first_ns: now,
        last_ns: now,
        last_jiffies: jiffies,
    };
    if COUNTS.insert(key, &fresh, BPF_NOEXIST as u64).is_ok() {
        return 0;
    }
    // Lost the race to another CPU's insert, or the map is full.
    match COUNTS.get_ptr_mut(key) {
        Some(stats) => add(stats, jiffies),
        None => {
            bump(stat::COUNTS_FULL);
            u64::MAX
        }
    }
}

#[inline(always)]
fn add(stats: *mut CheckStats, jiffies: u64) -> u64 {
    // SAFETY: `stats` points into a live map value; the counter is only ever
    // updated atomically, and racing timestamp stores are harmless (both
    // are of this tick).
    unsafe {
        // Racy on purpose: the value before the add only rations evidence.
        let before = core::ptr::read_volatile(&raw const (*stats).count);
        // The BPF target has no compare-and-swap, so core's AtomicU64 has
        // no fetch_add; the intrinsic lowers to BPF_ATOMIC_ADD.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*stats).count, 1);
        if (*stats).last_jiffies != jiffies {
            (*stats).last_jiffies = jiffies;
            (*stats).last_ns = helpers::boot_ns();
        }
        before
    }
}

/// Reads the two return addresses of a check at the calibrated slots above
/// `frame`; (0, 0) when not calibrated.
#[inline(always)]
pub fn read_sites(config: &Config, frame: u64) -> (u64, u64) {
    if !config.calibrated() || frame == 0 {
        return (0, 0);
    }
    (
        read_slot(frame, config.slot_caller),
        read_slot(frame, config.slot_outer),
    )
}

/// Resolves the return addresses of a check to its kind.
/// Returns (kind, caller return address, outer return address).
#[inline(always)]
fn classify_call_site(hot: &mut HotCache, config: &Config, call_site: CallSite) -> (u8, u64, u64) {
    if !config.calibrated() {
        return (kind::UNKNOWN, 0, 0);
    }
    let (site, site_kind, slot_outer) = match call_site {
        CallSite::Frame(frame) => {
            let site = read_slot(frame, config.slot_caller);
            let site_kind = resolve_cached(hot, config, site);
            if site_kind == kind::UNKNOWN && config.slot_caller_alt != 0 {
                // Maybe the tracepoint's other frame layout (another program
                // attached or gone since calibration).
                let alt = read_slot(frame, config.slot_caller_alt);
                let alt_kind = resolve_cached(hot, config, alt);
                if alt_kind != kind::UNKNOWN {
                    (alt, alt_kind, config.slot_outer_alt)
                } else {
                    (site, site_kind, config.slot_outer)
                }
            } else {
                (site, site_kind, config.slot_outer)
            }
        }
        CallSite::Read(site, _) => (site, resolve_cached(hot, config, site), 0),
    };
    if site_kind != kind::VIA_SECURITY_CAPABLE {
        return (site_kind, site, 0);
    }
    // Only ordinary checks are decided one frame further out.
    let outer = match call_site {
        CallSite::Frame(frame) => read_slot(frame, slot_outer),
        CallSite::Read(_, outer) => outer,
    };
    let outer_kind = resolve_cached(hot, config, outer);
    if outer_kind == kind::VIA_SECURITY_CAPABLE {
        return (kind::UNKNOWN, site, outer);
    }
    (outer_kind, site, outer)
}

#[inline(always)]
fn read_slot(frame: u64, slot: u32) -> u64 {
    let addr = frame + 8 * (slot as u64 & 63);
    // SAFETY: bpf_probe_read_kernel validates the address; a bad slot reads
    // an error, which resolves to UNKNOWN.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// `resolve` through `HOT`'s direct-mapped site cache. Return addresses
/// and their kinds never change within a load, so entries never go stale.
#[inline(always)]
fn resolve_cached(hot: &mut HotCache, config: &Config, addr: u64) -> u8 {
    let i = ((addr ^ (addr >> 5) ^ (addr >> 11)) as usize) & (HOT_SITES - 1);
    if addr != 0 && hot.site_addr[i] == addr {
        return hot.site_kind[i];
    }
    let found = resolve(config, addr);
    hot.site_addr[i] = addr;
    hot.site_kind[i] = found;
    found
}

#[inline(always)]
fn resolve(config: &Config, addr: u64) -> u8 {
    if addr == 0 {
        return kind::UNKNOWN;
    }
    // SAFETY: the value is a plain u32.
    if let Some(k) = unsafe { SITES.get(&addr) } {
        return *k as u8;
    }
    resolve_slow(config, addr)
}

/// First sight of a return address: find its function in the ranges
/// userspace resolved from /proc/kallsyms, and remember the answer.
#[inline(never)]
fn resolve_slow(config: &Config, addr: u64) -> u8 {
    let mut found = kind::UNKNOWN as u32;
    let n = config.nr_ranges as usize;
    for i in 0..MAX_FUNC_RANGES {
        if i >= n {
            break;
        }
        let range = &config.ranges[i];
        if addr >= range.start && addr < range.end {
            found = range.kind;
            break;
        }
    }
    let _ = SITES.insert(&addr, &found, 0);
    found as u8
}

/// The syscall the current task is in, from its user pt_regs.
#[inline(always)]
fn current_syscall(config: &Config) -> u32 {
    let offset = config.syscall_nr_offset;
    if offset == u32::MAX {
        return SYSCALL_UNKNOWN;
    }
    // SAFETY: a helper that takes the current task's BTF pointer and
    // returns a kernel pointer; the read is checked.
    unsafe {
        let regs = bpf_task_pt_regs(helpers::task_btf() as *mut _) as u64;
        if regs == 0 {
            return SYSCALL_UNKNOWN;
        }
        let addr = regs + (offset as u64 & 0xfff);
        match bpf_probe_read_kernel(addr as *const i64) {
            Ok(nr) if nr >= 0 => nr as u32,
            _ => SYSCALL_UNKNOWN,
        }
    }
}
