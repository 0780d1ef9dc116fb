//! The profile model lives in capprof-profile ([`capprof_profile::profile`],
//! re-exported here). What stays is what only the agent can do: build a
//! profile from what its observer handed out.

pub use capprof_profile::profile::*;

use crate::observer::{Count, Observer, reader::Received};

/// Builds one subject's profile from everything the observer handed out
/// for it: its counts, the evidence, and what the syscall hooks found
/// (conditional and kept capabilities).
pub fn from_observer(
    observer: &Observer,
    counts: Vec<Count>,
    received: &[Received],
    subject: Subject,
    observation: Observation,
) -> Profile {
    let sightings = received.iter().filter_map(|r| observer.sighting(r));
    let mut profile = build(counts, sightings, subject, observation);
    let found = crate::conditional::from_records(received);
    profile.add_syscall_findings(&found.conditional, &found.kept);
    profile.add_transient(&found.transient);
    profile
}
