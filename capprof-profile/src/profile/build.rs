//! How what the observer hands out (typed counts and sightings) becomes a
//! profile.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

use super::{
    CapUsage, Class, Evidence, MAX_EVIDENCE, Observation, Profile, Subject, rfc3339, usage_class,
};
use crate::{
    capability::Cap,
    conditional::Findings,
    observation::{Count, Kind, Phase, Sighting, UserNs, Verdict},
};

/// Builds one subject's profile from its counts and evidence.
pub fn build(
    counts: impl IntoIterator<Item = Count>,
    sightings: impl IntoIterator<Item = Sighting>,
    subject: Subject,
    observation: Observation,
) -> Profile {
    let mut builder = ProfileBuilder::default();
    for count in counts {
        builder.add_count(&count);
    }
    for sighting in sightings {
        builder.add_sighting(sighting);
    }
    builder.build(subject, observation)
}

/// One subject's counts and evidence, accumulated per phase and capability
/// until they become a profile.
#[derive(Debug, Default, Clone)]
pub struct ProfileBuilder {
    usages: BTreeMap<(Phase, Cap), Acc>,
    /// Checks whose call site was unknown, counted as audited.
    unclassified: u64,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    granted: u64,
    denied: u64,
    silent_granted: u64,
    by_class: BTreeMap<Class, u64>,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    evidence: BTreeSet<Evidence>,
    ungrantable: u64,
}

impl ProfileBuilder {
    /// Adds one kernel counter.
    pub fn add_count(&mut self, count: &Count) {
        let acc = self.usages.entry((count.phase, count.cap)).or_default();
        match count.verdict {
            Verdict::Denied => acc.denied += count.count,
            Verdict::Granted => acc.granted += count.count,
        }
        let class = Class::of(count.kind, count.verdict);
        if class == Class::Silent && count.verdict == Verdict::Granted {
            acc.silent_granted += count.count;
        }
        *acc.by_class.entry(class).or_default() += count.count;
        // Only audited checks (and unclassified ones, which count as
        // audited) of an ancestor namespace say the workload needed what no
        // --cap-add can grant: every mmap in a user namespace makes an
        // advisory SYS_ADMIN check of the host's, and borrowed checks are
        // not the workload's.
        let audited = matches!(count.kind, Kind::Audit | Kind::Unknown);
        if audited && count.user_ns == UserNs::Ancestor {
            acc.ungrantable += count.count;
        }
        if count.kind == Kind::Unknown {
            self.unclassified += count.count;
        }
        acc.first = Some(
            acc.first
                .map_or(count.first_seen, |f| f.min(count.first_seen)),
        );
        acc.last = Some(acc.last.map_or(count.last_seen, |l| l.max(count.last_seen)));
    }

    /// Adds one piece of evidence; each capability keeps `MAX_EVIDENCE`.
    pub fn add_sighting(&mut self, s: Sighting) {
        let acc = self.usages.entry((s.phase, s.cap)).or_default();
        if acc.evidence.len() < MAX_EVIDENCE {
            acc.evidence.insert(Evidence {
                comm: s.comm,
                exe: s.exe,
                syscall: s.syscall,
                pid: s.pid,
                uid: s.uid,
                verdict: s.verdict,
                class: Class::of(s.kind, s.verdict),
                call_site: s.call_site,
                user_ns: s.user_ns,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.usages.is_empty()
    }

    /// The profile. `observation.unclassified_checks` is this subject's own
    /// count, from its counters.
    pub fn build(self, subject: Subject, mut observation: Observation) -> Profile {
        observation.unclassified_checks = self.unclassified;
        let mut capabilities = vec![];
        let mut runtime_setup = vec![];
        for ((phase, cap), acc) in self.usages {
            // Evidence may arrive for a combination whose counter was not
            // read (it is only ever a subset); a usage needs counts.
            if acc.by_class.is_empty() {
                continue;
            }
            let usage = CapUsage {
                name: cap,
                number: cap.number(),
                class: usage_class(&acc.by_class),
                granted: acc.granted,
                denied: acc.denied,
                silent_granted: acc.silent_granted,
                by_class: acc.by_class,
                first_seen: acc.first.map(rfc3339).unwrap_or_default(),
                last_seen: acc.last.map(rfc3339).unwrap_or_default(),
                evidence: acc.evidence.into_iter().collect(),
                ungrantable: acc.ungrantable,
            };
            match phase {
                Phase::Setup => runtime_setup.push(usage),
                Phase::Workload => capabilities.push(usage),
            }
        }
        Profile::assemble(
            subject,
            observation,
            capabilities,
            runtime_setup,
            Findings::default(),
        )
    }
}

/// A profile whose allowlist is exactly `names`, each seen once, for tests.
#[cfg(any(test, feature = "testing"))]
pub fn with_allowlist(names: &[&str], subject: Subject) -> Profile {
    use std::time::Duration;

    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let counts = names.iter().map(|name| Count {
        cgroup_id: 1,
        cap: name.parse().expect("a known capability"),
        verdict: Verdict::Granted,
        kind: Kind::Audit,
        phase: Phase::Workload,
        user_ns: UserNs::Own,
        count: 1,
        first_seen: t,
        last_seen: t,
    });
    build(counts, [], subject, Observation::default())
}

/// For tests that write a profile by hand: typed counts and evidence,
/// without a kernel.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct Observations(ProfileBuilder);

#[cfg(any(test, feature = "testing"))]
impl Observations {
    /// `count` checks of `cap` from `first_seen` to `last_seen`.
    pub fn add_count(
        &mut self,
        cap: Cap,
        (verdict, kind, phase): (Verdict, Kind, Phase),
        count: u64,
        (first_seen, last_seen): (SystemTime, SystemTime),
    ) {
        self.0.add_count(&Count {
            cgroup_id: 0,
            cap,
            verdict,
            kind,
            phase,
            user_ns: UserNs::Own,
            count,
            first_seen,
            last_seen,
        });
    }

    pub fn add_evidence(&mut self, cap: Cap, phase: Phase, evidence: Evidence) {
        let acc = self.0.usages.entry((phase, cap)).or_default();
        if acc.evidence.len() < MAX_EVIDENCE {
            acc.evidence.insert(evidence);
        }
    }

    pub fn into_profile(self, subject: Subject, observation: Observation) -> Profile {
        self.0.build(subject, observation)
    }
}
