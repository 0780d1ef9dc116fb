//! What the observer hands out: typed counts and sightings, decoded from the
//! kernel's raw codes, with kernel times turned into wall time. Raw codes
//! stop here. Also the kernel side's health counters.

use std::{
    collections::HashMap as StdHashMap,
    time::{Duration, SystemTime},
};

use aya::maps::{HashMap, PerCpuArray};
use capprof_common::check::{self, CheckKey, CheckStats, HotCache, stat};
pub use capprof_profile::observation::{Count, Kind, Phase, Sighting, UserNs, Verdict};

use super::{
    Observer, ObserverError,
    events::{RingEvent, comm_str},
    map_err,
    reader::Received,
};
use crate::capability::Cap;

/// Health counters of the kernel side, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelStats {
    pub ringbuf_lost: u64,
    pub counts_full: u64,
    pub unclassified: u64,
    pub cgroup_events_lost: u64,
    /// Pending checks flushed after their counter was drained (they had
    /// been read from `HOT`, so they are not lost). Should stay 0.
    pub pending_dropped: u64,
    /// Runs of capprof's programs the kernel skipped because the program
    /// was already running on that CPU (`bpf_prog_info.recursion_misses`,
    /// summed over this load's programs): checks nobody counted. None when
    /// the kernel does not say (before 5.12).
    pub recursion_misses: Option<u64>,
}

/// Converts CLOCK_BOOTTIME nanoseconds (the kernel's timestamps) to wall
/// time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    boot_epoch: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let boot_now = boottime_ns();
        let now = SystemTime::now();
        Self {
            boot_epoch: now - Duration::from_nanos(boot_now),
        }
    }

    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        self.boot_epoch + Duration::from_nanos(boot_ns)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_BOOTTIME always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The syscall's name, or None when the kernel side could not tell it.
pub fn syscall_name(nr: u32) -> Option<String> {
    if nr == check::SYSCALL_UNKNOWN {
        return None;
    }
    Some(match syscalls::Sysno::new(nr as usize) {
        Some(sysno) => sysno.name().to_owned(),
        None => format!("syscall_{nr}"),
    })
}

fn decode_counts(raw: impl IntoIterator<Item = (CheckKey, CheckStats)>) -> Vec<Count> {
    let clock = Clock::new();
    raw.into_iter()
        .filter_map(|(key, stats)| {
            Some(Count {
                cgroup_id: key.cgroup_id,
                // A number this build does not know is left out.
                cap: Cap::from_number(key.cap)?,
                verdict: Verdict::from_raw(key.verdict),
                kind: Kind::from_raw(key.kind),
                phase: Phase::from_raw(key.phase),
                user_ns: UserNs::from_raw(key.userns),
                count: stats.count,
                first_seen: clock.wall(stats.first_ns),
                last_seen: clock.wall(stats.last_ns),
            })
        })
        .collect()
}

/// What every CPU's `HOT` entry says about `COUNTS`: its flushes, its own
/// writes there, and what it holds pending. Any check that changes what
/// [`Observer::read_counts`] returns changes it.
fn signature(hot: &[HotCache]) -> u64 {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let mut hasher = DefaultHasher::new();
    for h in hot {
        (h.pend_seq, h.counts_seq, h.pend_count, h.pend_jiffies).hash(&mut hasher);
    }
    hasher.finish()
}

impl Observer {
    /// Decodes an evidence record; None for any other record, or one whose
    /// capability this build does not know.
    pub fn sighting(&self, received: &Received) -> Option<Sighting> {
        let RingEvent::Evidence(e) = received.record else {
            return None;
        };
        let site = if e.outer_site != 0 {
            e.outer_site
        } else {
            e.site
        };
        Some(Sighting {
            cgroup_id: e.cgroup_id,
            cap: Cap::from_number(e.cap)?,
            verdict: Verdict::from_raw(e.verdict),
            kind: Kind::from_raw(e.kind),
            phase: Phase::from_raw(e.phase),
            comm: comm_str(&e.comm),
            exe: received.exe.clone(),
            syscall: syscall_name(e.syscall),
            pid: e.tgid,
            uid: e.uid,
            call_site: self.symbolize(site),
            user_ns: UserNs::from_raw(e.userns),
        })
    }

    /// Reads every counter, leaving them in place, with the checks still
    /// pending in each CPU's `HOT` entry added.
    ///
    /// While no CPU's check path has written `COUNTS` or a pending count
    /// since the last read (the `HOT` entries say so, in one lookup), the
    /// last read is the answer: an idle node's counters are not walked
    /// again at every flush and query.
    pub fn read_counts(&self) -> Result<Vec<Count>, ObserverError> {
        let now = signature(&self.read_hot()?);
        if let Ok(cache) = self.counts_cache.lock()
            && let Some((seen, counts)) = cache.as_ref()
            && *seen == now
        {
            return Ok(counts.clone());
        }
        let (raw, seen) = self.read_consistent(|_| true)?;
        let counts = decode_counts(raw);
        if let Ok(mut cache) = self.counts_cache.lock() {
            *cache = Some((seen, counts.clone()));
        }
        Ok(counts)
    }

    fn read_hot(&self) -> Result<Vec<HotCache>, ObserverError> {
        use capprof_common::names::HOT;
        let hot: PerCpuArray<_, HotCache> =
            PerCpuArray::try_from(self.map(HOT)?).map_err(map_err(HOT))?;
        Ok(hot
            .get(&0, 0)
            .map_err(map_err(HOT))?
            .iter()
            .copied()
            .collect())
    }

    /// Reads and deletes the counters of the cgroups `wanted` selects. Every
    /// CPU flushes its pending checks first, so that none is left behind
    /// to be added to a counter that is gone.
    pub fn drain_counts(
        &mut self,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<Vec<Count>, ObserverError> {
        flush_pending();
        // Counters are about to go: the last read no longer holds.
        if let Ok(cache) = self.counts_cache.get_mut() {
            *cache = None;
        }
        let (out, _) = self.read_consistent(&wanted)?;
        let mut counts: HashMap<_, CheckKey, CheckStats> =
            HashMap::try_from(self.map_mut(capprof_common::names::COUNTS)?)
                .map_err(map_err(capprof_common::names::COUNTS))?;
        for (key, _) in &out {
            let _ = counts.remove(key);
        }
        Ok(decode_counts(out))
    }

    /// `COUNTS` for the `wanted` cgroups plus what is pending in `HOT`, read
    /// so that no flush falls between the two reads: `HOT` is read before
    /// and after `COUNTS`, and the read is retried when a CPU flushed in
    /// between. A counter that keeps flushing (a live, busy one) may after
    /// three tries be off by one flush; a finished cgroup's never is.
    /// Also returns the [`signature`] of `HOT` as the read began: a later
    /// read with the same one would find the same counters.
    fn read_consistent(
        &self,
        wanted: impl Fn(u64) -> bool,
    ) -> Result<(Vec<(CheckKey, CheckStats)>, u64), ObserverError> {
        use capprof_common::names::COUNTS;
        let counts: HashMap<_, CheckKey, CheckStats> =
            HashMap::try_from(self.map(COUNTS)?).map_err(map_err(COUNTS))?;
        let mut attempt = 0;
        loop {
            let before = self.read_hot()?;
            let mut out: StdHashMap<CheckKey, CheckStats> = counts
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, _)| wanted(k.cgroup_id))
                .collect();
            let after = self.read_hot()?;
            attempt += 1;
            let flushed = before
                .iter()
                .zip(&after)
                .any(|(b, a)| b.pend_seq != a.pend_seq);
            if flushed && attempt < 3 {
                continue;
            }
            let pending = after
                .iter()
                .flat_map(|h| h.pend_key.iter().zip(h.pend_count))
                .filter(|(key, n)| *n > 0 && wanted(key.cgroup_id));
            for (key, n) in pending {
                // A pending key always has its counter (it was armed by a
                // check counted there); one that is gone was drained.
                if let Some(stats) = out.get_mut(key) {
                    stats.count += n;
                }
            }
            return Ok((out.into_iter().collect(), signature(&before)));
        }
    }

    pub fn kernel_stats(&self) -> Result<KernelStats, ObserverError> {
        use capprof_common::names::STATS;
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map(STATS)?).map_err(map_err(STATS))?;
        let sum = |i: u32| stats.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Ok(KernelStats {
            ringbuf_lost: sum(stat::RINGBUF_LOST),
            counts_full: sum(stat::COUNTS_FULL),
            unclassified: sum(stat::UNCLASSIFIED),
            cgroup_events_lost: sum(stat::CGROUP_EVENTS_LOST),
            pending_dropped: sum(stat::PENDING_DROPPED),
            recursion_misses: self.recursion_misses(),
        })
    }

    /// `recursion_misses` summed over the programs this load keeps in the
    /// kernel (the backend's and the process hooks'), since this observer
    /// started (a warm set's programs count from when they were made);
    /// None when the kernel reports it for none of them.
    pub fn recursion_misses(&self) -> Option<u64> {
        self.lifetime_recursion_misses()
            .map(|n| n.saturating_sub(self.recursion_misses_before))
    }

    /// `recursion_misses` of the programs since they were loaded.
    pub(super) fn lifetime_recursion_misses(&self) -> Option<u64> {
        capprof_common::names::ALL_PROGRAMS
            .iter()
            .filter_map(|name| self.objects.program(name)?.fd().ok())
            .filter_map(|fd| {
                use std::os::fd::AsFd as _;
                super::prog_stats::recursion_misses(fd.as_fd())
                    .ok()
                    .flatten()
            })
            .reduce(|a, b| a + b)
    }
}

/// Makes every CPU this thread may run on flush the checks pending in its
/// `HOT` entry (of every capprof object loaded): the thread moves to each
/// CPU in turn and makes one capability check there (a `setuid` to its own
/// uid, which changes nothing). The check comes from capprof's cgroup, not
/// the one the pending checks came from, and a change of cgroup flushes.
/// CPUs this thread may not run on keep theirs; readers add those.
pub fn flush_pending() {
    // SAFETY: plain syscalls on this thread with valid cpu_set_t buffers.
    unsafe {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size, &mut allowed) != 0 {
            return;
        }
        let uid = libc::getuid();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if !libc::CPU_ISSET(cpu, &allowed) {
                continue;
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) == 0 {
                // The raw syscall: glibc's setuid() would run it on every
                // thread of the process.
                libc::syscall(libc::SYS_setuid, uid);
            }
        }
        libc::sched_setaffinity(0, size, &allowed);
    }
}

#[cfg(test)]
mod tests {
    use capprof_common::check::{VERDICT_DENIED, VERDICT_GRANTED, kind, phase};

    use super::*;

    /// Every change a check can make to what `read_counts` returns moves
    /// the signature: a pending repeat, a flush, a write to `COUNTS`, and
    /// the same on another CPU.
    #[test]
    fn any_counted_check_moves_the_signature() {
        // SAFETY: plain integers and arrays of them: all zeros is valid.
        let idle: HotCache = unsafe { std::mem::zeroed() };
        let cpus = [idle, idle];
        let base = signature(&cpus);
        assert_eq!(base, signature(&[idle, idle]), "nothing moved");
        let changes: [fn(&mut HotCache); 4] = [
            |h| h.pend_count[3] += 1,
            |h| h.pend_seq += 1,
            |h| h.counts_seq += 1,
            |h| h.pend_jiffies[0] += 1,
        ];
        for (n, change) in changes.iter().enumerate() {
            for cpu in 0..2 {
                let mut moved = cpus;
                change(&mut moved[cpu]);
                assert_ne!(signature(&moved), base, "change {n} on CPU {cpu}");
            }
        }
    }

    #[test]
    fn raw_codes_decode_to_typed_values() {
        assert_eq!(Verdict::from_raw(VERDICT_GRANTED), Verdict::Granted);
        assert_eq!(Verdict::from_raw(VERDICT_DENIED), Verdict::Denied);
        assert_eq!(Kind::from_raw(kind::AUDIT), Kind::Audit);
        assert_eq!(Kind::from_raw(kind::NOAUDIT), Kind::NoAudit);
        assert_eq!(Kind::from_raw(kind::ADVISORY), Kind::Advisory);
        assert_eq!(Kind::from_raw(kind::UNKNOWN), Kind::Unknown);
        // An id from a newer kernel side is never mistaken for a NOAUDIT one.
        assert_eq!(Kind::from_raw(200), Kind::Unknown);
        assert_eq!(Phase::from_raw(phase::SETUP), Phase::Setup);
        assert_eq!(Phase::from_raw(phase::WORKLOAD), Phase::Workload);
    }

    #[test]
    fn boot_clock_is_close_to_wall_clock() {
        let clock = Clock::new();
        let wall = clock.wall(boottime_ns());
        let now = SystemTime::now();
        let diff = now.duration_since(wall).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }

    #[test]
    fn unknown_capabilities_are_left_out() {
        let key = |cap| CheckKey {
            cgroup_id: 1,
            cap,
            verdict: VERDICT_GRANTED,
            kind: kind::AUDIT,
            phase: phase::WORKLOAD,
            userns: 0,
        };
        let stats = CheckStats {
            count: 3,
            ..Default::default()
        };
        let counts = decode_counts([(key(0), stats), (key(63), stats)]);
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].cap.short_name(), "CHOWN");
        assert_eq!(counts[0].count, 3);
    }
}
