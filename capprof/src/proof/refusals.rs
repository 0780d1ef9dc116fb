//! Refused capset() calls in the proof's runs, as the kernel saw them.
//!
//! A server that drops to its own user often keeps a capability through
//! capset() on the way (squid keeps NET_BIND_SERVICE, and drops SETUID,
//! SETGID and NET_RAW in the same call). Take that capability away and the
//! call is refused, as a whole: the server logs it and serves on, and its
//! processes hold what the call was meant to drop. The credential sampler
//! ([`super::creds`]) sees that state only while it lasts, which can be a
//! moment, so one run catches it and the next does not.
//!
//! The kernel side sees every such call when it is made: at
//! `sys_enter_capset` it compares the sets asked for with the caller's
//! (`CapsetCall::refused`), and reports the call once per cgroup, program
//! and sets asked for. So each run of the proof is watched by an observer
//! of its own, and a run with a refused capset() that no baseline run
//! made has a failed drop: the same verdict as a process that ended up
//! more privileged ([`super::search`]). One rule, no list of programs.
//!
//! Without an observer (no BTF, or the kernel refuses the programs) the
//! proof falls back to the sampler alone, and says so once.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use crate::{
    capability::Cap,
    observer::{
        Observer, ObserverError, WatchMode,
        events::{RingEvent, comm_str, cstr},
        reader::EventReader,
    },
};

/// One refused capset() call.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    /// The program that made it.
    pub comm: String,
    /// What it asked for and did not hold (`CapsetCall::lacking`).
    pub lacking: Vec<Cap>,
    /// What it meant to drop, and so still holds.
    pub kept: Vec<Cap>,
    pub pid: u32,
}

impl Refusal {
    /// The same call in another run: the program and what it lacked.
    pub fn same_call(&self, other: &Refusal) -> bool {
        self.comm == other.comm && self.lacking == other.lacking
    }

    /// What the proof's reports say of it, after "PROGRAM (pid N) kept".
    pub fn describe(&self) -> String {
        format!(
            "{}, which its refused capset() meant to drop (it lacked {})",
            crate::capability::display_list(&self.kept),
            crate::capability::display_list(&self.lacking)
        )
    }

    /// As a drift: a drop that failed, seen by the kernel rather than the
    /// sampler.
    pub fn drift(&self) -> super::creds::Drift {
        super::creds::Drift {
            pid: self.pid,
            process: self.comm.clone(),
            gained: vec![self.describe()],
        }
    }
}

/// What the reader saw so far: refusals by cgroup id, and the names of the
/// cgroups they were made in (a run that ends at once takes its cgroup
/// with it, so the name is all that says which run a record was of).
#[derive(Default)]
struct Seen {
    refused: HashMap<u64, Vec<Refusal>>,
    names: HashMap<u64, String>,
}

/// How many cgroup names are remembered before they are forgotten (a
/// proof runs a few dozen containers; others on the engine add theirs).
const NAMES: usize = 65536;

/// An observer loaded for the proof, and the task that reads what it sends.
pub struct RefusalWatch {
    observer: Mutex<Observer>,
    seen: Arc<Mutex<Seen>>,
    _reader: EventReader,
}

impl std::fmt::Debug for RefusalWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalWatch").finish_non_exhaustive()
    }
}

impl RefusalWatch {
    /// Loads an observer and starts reading it. Must run inside a tokio
    /// runtime.
    pub fn start() -> Result<Self, ObserverError> {
        let mut observer = Observer::load(None)?;
        let (reader, mut records) = EventReader::spawn(&mut observer)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let into = seen.clone();
        tokio::spawn(async move {
            while let Some(received) = records.recv().await {
                let mut seen = into.lock().unwrap_or_else(|p| p.into_inner());
                match received.record {
                    RingEvent::Cgroup(c) => {
                        if seen.names.len() >= NAMES {
                            seen.names.clear();
                        }
                        seen.names.insert(c.cgroup_id, cstr(&c.name));
                    }
                    RingEvent::CapsetRefused(e) => {
                        if let Some(refusal) = refusal_of(&e) {
                            seen.refused.entry(e.cgroup_id).or_default().push(refusal);
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(RefusalWatch {
            observer: Mutex::new(observer),
            seen,
            _reader: reader,
        })
    }

    /// Watches, in container mode, the subtrees the engine puts its
    /// containers under (`parents`, relative to `mount`): each run's
    /// container is then seen from its first process on.
    pub fn watch_containers(&self, mount: &Path, parents: &[&str]) -> Result<(), ObserverError> {
        let mut observer = self.observer.lock().unwrap_or_else(|p| p.into_inner());
        crate::recorder::watch_container_roots(&mut observer, mount, parents, &[]).map(drop)
    }

    /// Watches one run's own cgroup, before anything runs in it.
    pub fn watch_command(&self, cgroup_id: u64) -> Result<(), ObserverError> {
        let mut observer = self.observer.lock().unwrap_or_else(|p| p.into_inner());
        observer.watch(cgroup_id, WatchMode::Command)
    }

    /// Stops watching a run's cgroup, and forgets the cached decisions for
    /// `ids` (its subtree).
    pub fn unwatch_command(&self, cgroup_id: u64, ids: &[u64]) {
        let mut observer = self.observer.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = observer.unwatch(cgroup_id, ids) {
            tracing::debug!("unwatch {cgroup_id}: {e}");
        }
    }

    /// The refusals made in a run's cgroups, taken out: those with an id in
    /// `ids`, and those whose cgroup's name holds `container` (its id).
    /// The reader hands records on as the kernel writes them; a moment's
    /// wait lets it drain what a run that just ended wrote last.
    pub async fn take(&self, ids: &[u64], container: Option<&str>) -> Vec<Refusal> {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<u64> = ids.to_vec();
        if let Some(container) = container.filter(|c| !c.is_empty()) {
            all.extend(
                seen.names
                    .iter()
                    .filter(|(_, name)| name.contains(container))
                    .map(|(id, _)| *id),
            );
        }
        all.sort_unstable();
        all.dedup();
        let mut refusals: Vec<Refusal> = all
            .iter()
            .flat_map(|id| seen.refused.remove(id).unwrap_or_default())
            .collect();
        refusals.sort();
        refusals
    }
}

/// A refused call's record as a `Refusal`; None if the record says it was
/// not refused after all (never trust a record).
fn refusal_of(e: &capprof_common::event::CapsetEvent) -> Option<Refusal> {
    let caps = |mask: u64| -> Vec<Cap> { Cap::in_mask(mask).collect() };
    let lacking = e.call().lacking();
    // A refused call that would have dropped nothing leaves the process
    // with less than it asked for, not more: whether it copes shows in the
    // run's outcome, as any other missing capability does.
    let kept = e.old_permitted & !e.new_permitted | e.old_effective & !e.new_effective;
    (lacking != 0 && kept != 0).then(|| Refusal {
        comm: comm_str(&e.comm),
        lacking: caps(lacking),
        kept: caps(kept),
        pid: e.tgid,
    })
}

/// The refusals of `run` that no baseline run made: each a failed drop.
pub fn new_in(baseline: &[Refusal], run: &[Refusal]) -> Vec<Refusal> {
    run.iter()
        .filter(|r| !baseline.iter().any(|b| b.same_call(r)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use capprof_common::event::{CapsetEvent, EVENT_CAPSET_REFUSED};

    use super::*;

    const NBS: u64 = 1 << 10;
    const SETGID: u64 = 1 << 6;
    const SETUID: u64 = 1 << 7;

    fn record(old_permitted: u64, new_permitted: u64) -> CapsetEvent {
        let mut comm = [0; 16];
        comm[..5].copy_from_slice(b"squid");
        CapsetEvent {
            event: EVENT_CAPSET_REFUSED,
            tgid: 42,
            cgroup_id: 7,
            ts_ns: 0,
            uid: 13,
            phase: 0,
            _pad: [0; 3],
            old_permitted,
            old_effective: old_permitted,
            old_inheritable: 0,
            new_permitted,
            new_effective: new_permitted,
            new_inheritable: 0,
            comm,
        }
    }

    #[test]
    fn a_refused_call_names_what_it_lacked() {
        // squid keeps NET_BIND_SERVICE while it drops SETUID and SETGID,
        // in a run that was not given NET_BIND_SERVICE.
        let refusal = refusal_of(&record(SETUID | SETGID, NBS)).expect("refused");
        assert_eq!(refusal.comm, "squid");
        assert_eq!(refusal.lacking, vec![Cap::from_number(10).unwrap()]);
        assert_eq!(
            refusal.describe(),
            "CAP_SETGID CAP_SETUID, which its refused capset() meant to drop (it lacked CAP_NET_BIND_SERVICE)"
        );
        // A record of a call the kernel allows is not believed.
        assert_eq!(refusal_of(&record(SETUID | NBS, NBS)), None);
        // A refused call that would have dropped nothing is no failed drop.
        assert_eq!(refusal_of(&record(SETUID, SETUID | NBS)), None);
    }

    #[test]
    fn only_refusals_no_baseline_run_made_count() {
        let nbs = refusal_of(&record(SETUID, NBS)).unwrap();
        let other_pid = Refusal {
            pid: 99,
            ..nbs.clone()
        };
        let setuid = refusal_of(&record(NBS, SETUID)).unwrap();
        assert_eq!(new_in(&[], std::slice::from_ref(&nbs)), vec![nbs.clone()]);
        // The same call by another process of the same program: not new.
        assert!(new_in(&[other_pid], std::slice::from_ref(&nbs)).is_empty());
        // Another capability lacked: new.
        assert_eq!(new_in(&[setuid], std::slice::from_ref(&nbs)), vec![nbs]);
    }
}
