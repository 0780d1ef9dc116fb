//! The profile: what a workload was seen to use, as a versioned JSON
//! document (`capprof.profile/v1`), and how raw kernel counters become one.
//!
//! Stable fields read by other tools: `schema`, `required`, `denied`,
//! `advisory`, `silent`, `borrowed`, `ungrantable`, `allowlist` and
//! `capabilities`.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime},
};

use capprof_common::check::{VERDICT_DENIED, kind, phase, userns};
use serde::{Deserialize, Serialize};

use crate::caps::Cap;

pub const SCHEMA: &str = "capprof.profile/v1";

/// How many distinct evidence entries a capability keeps.
pub const MAX_EVIDENCE: usize = 16;

/// The class of a check, as the profile reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Audited and granted: the workload needs it.
    Required,
    /// Audited and refused: the workload wanted it and did not get it.
    Denied,
    /// NOAUDIT checks that can still gate an operation; granted ones count
    /// toward the allowlist.
    Silent,
    /// Checks made with credentials that are not the workload's own: the
    /// kernel borrowed someone else's (overlayfs copy-up checks the
    /// mounter's from the container's task). Never on the allowlist.
    Borrowed,
    /// NOAUDIT probes that change no permission decision (mmap's
    /// CAP_SYS_ADMIN in `security_vm_enough_memory_mm`).
    Advisory,
}

impl Class {
    /// The class of one check. Unclassified checks count as audited, so a
    /// calibration failure can only over-grant, never break a workload.
    /// Borrowed credentials come first: whatever else the check was, it
    /// was not made with the workload's own.
    pub fn of(kind: u8, verdict: u8) -> Self {
        match kind {
            kind::BORROWED => Class::Borrowed,
            kind::ADVISORY => Class::Advisory,
            kind::NOAUDIT => Class::Silent,
            _ if verdict == VERDICT_DENIED => Class::Denied,
            _ => Class::Required,
        }
    }

    /// The name the profile and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Class::Required => "required",
            Class::Denied => "denied",
            Class::Silent => "silent",
            Class::Borrowed => "borrowed",
            Class::Advisory => "advisory",
        }
    }
}

/// Which user namespace a check targeted, relative to the checking
/// credentials' own.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum UserNs {
    /// Their own: what `--cap-add` grants.
    #[default]
    Own,
    /// One below it, decided by the same capabilities.
    Descendant,
    /// An ancestor such as the host's (or another branch): refused whatever
    /// the container holds, so no `--cap-add` can grant it.
    Ancestor,
}

impl UserNs {
    pub fn of(id: u8) -> Self {
        match id {
            userns::DESCENDANT => UserNs::Descendant,
            userns::ANCESTOR => UserNs::Ancestor,
            _ => UserNs::Own,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Granted,
    Denied,
}

/// What was profiled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `command` or `container`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The cgroup v2 path, relative to the cgroup2 mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The capabilities the container was started with, from the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Cap>>,
}

/// How the observation was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub start: String,
    pub end: String,
    /// `tp_btf`, `fexit`, `kprobe` or `lsm`.
    pub backend: String,
    /// `call-site` (calibrated), `opts`, or `uncalibrated` (every check
    /// treated as audited).
    pub classification: String,
    /// Evidence records the kernel could not send (counts are never lost).
    #[serde(default)]
    pub lost_records: u64,
    /// This subject's checks whose call site was unknown, counted as
    /// audited.
    #[serde(default)]
    pub unclassified_checks: u64,
    /// Runs of capprof's programs the kernel skipped because one was
    /// already running on that CPU (`bpf_prog_info.recursion_misses`): checks
    /// nobody counted, on the whole host (a skipped run cannot say whose
    /// check it was), since capprof loaded. Absent when the kernel does not
    /// report it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recursion_misses: Option<u64>,
    /// Classes of checks the backend cannot see, so their arrays are empty
    /// whatever the workload did: `lsm` lists `denied` (the hook runs only
    /// for granted checks) and `advisory`. Absent when every class is seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unobservable: Vec<Class>,
}

/// One piece of evidence: who made a check, and how.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Evidence {
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub verdict: Verdict,
    pub class: Class,
    /// The kernel function that asked, as `symbol+0xoff`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_site: Option<String>,
    /// The user namespace the check targeted, relative to the credentials'.
    #[serde(default)]
    pub user_ns: UserNs,
}

/// Everything seen of one capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapUsage {
    pub name: Cap,
    pub number: u32,
    pub class: Class,
    pub granted: u64,
    pub denied: u64,
    /// Checks by class (`required`, `silent`, …), for the curious.
    #[serde(default)]
    pub by_class: BTreeMap<Class, u64>,
    /// Granted checks of the `silent` class: when the capability is
    /// reported as silent, these put it on the allowlist.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub silent_granted: u64,
    /// Audited checks (with the workload's own credentials) that targeted a
    /// user namespace outside theirs, an ancestor such as the host's: the
    /// kernel refuses them whatever the container holds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ungrantable: u64,
    pub first_seen: String,
    pub last_seen: String,
    #[serde(default)]
    pub evidence: Vec<Evidence>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub schema: String,
    pub generator: String,
    pub subject: Subject,
    pub observation: Observation,
    /// What to grant: `required`, plus the `silent` capabilities that were
    /// granted (they may gate an operation).
    pub allowlist: Vec<Cap>,
    pub required: Vec<Cap>,
    pub denied: Vec<Cap>,
    pub advisory: Vec<Cap>,
    pub silent: Vec<Cap>,
    /// Capabilities checked only with borrowed credentials (see
    /// `Class::Borrowed`). Never on the allowlist.
    #[serde(default)]
    pub borrowed: Vec<Cap>,
    /// Capabilities the workload asked for in a user namespace outside its
    /// own (an ancestor such as the host's, under rootless Podman or
    /// `dockerd --userns-remap`): no `--cap-add` can grant them.
    #[serde(default)]
    pub ungrantable: Vec<Cap>,
    pub capabilities: Vec<CapUsage>,
    /// Checks the container runtime made while setting the container up,
    /// before the workload's exec. Never part of the allowlist.
    #[serde(default)]
    pub runtime_setup: Vec<CapUsage>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: not a capprof profile: {source}")]
    Malformed {
        path: String,
        source: serde_json::Error,
    },
    #[error("{path}: schema {found:?} is not supported (expected {SCHEMA:?})")]
    Schema { path: String, found: String },
    #[error("{path}: inconsistent profile: {reason}")]
    Inconsistent { path: String, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

impl Profile {
    /// Parses and validates a profile from untrusted bytes: the schema must
    /// match, every capability must be known (serde checks that), and the
    /// summary arrays must agree with the per-capability records.
    pub fn from_json(path: &str, bytes: &[u8]) -> Result<Self, ProfileError> {
        #[derive(Deserialize)]
        struct Probe {
            schema: Option<String>,
        }
        // Check the schema first, so another version gets a clear message
        // rather than a missing-field error.
        let probe: Probe =
            serde_json::from_slice(bytes).map_err(|source| ProfileError::Malformed {
                path: path.to_owned(),
                source,
            })?;
        match probe.schema.as_deref() {
            Some(SCHEMA) => {}
            other => {
                return Err(ProfileError::Schema {
                    path: path.to_owned(),
                    found: other.unwrap_or("<none>").to_owned(),
                });
            }
        }
        let profile: Profile =
            serde_json::from_slice(bytes).map_err(|source| ProfileError::Malformed {
                path: path.to_owned(),
                source,
            })?;
        profile
            .validate()
            .map_err(|reason| ProfileError::Inconsistent {
                path: path.to_owned(),
                reason,
            })?;
        Ok(profile)
    }

    pub fn read(path: &str) -> Result<Self, ProfileError> {
        let bytes = std::fs::read(path).map_err(|source| ProfileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(path, &bytes)
    }

    fn validate(&self) -> Result<(), String> {
        for usage in self.capabilities.iter().chain(&self.runtime_setup) {
            if usage.number != usage.name.number() {
                return Err(format!(
                    "{} has number {}, expected {}",
                    usage.name,
                    usage.number,
                    usage.name.number()
                ));
            }
        }
        let expected = Summary::of(&self.capabilities);
        let got = Summary {
            allowlist: self.allowlist.clone(),
            required: self.required.clone(),
            denied: self.denied.clone(),
            advisory: self.advisory.clone(),
            silent: self.silent.clone(),
            borrowed: self.borrowed.clone(),
            ungrantable: self.ungrantable.clone(),
        };
        if expected != got {
            return Err("the summary arrays do not match the capabilities records".into());
        }
        Ok(())
    }

    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("a profile always serializes");
        json.push('\n');
        json
    }

    /// Adds `other`'s observations to this profile: the replicas of one
    /// service add up to one profile.
    pub fn merge(&mut self, other: &Profile) {
        self.capabilities = merge_usages(&self.capabilities, &other.capabilities);
        self.runtime_setup = merge_usages(&self.runtime_setup, &other.runtime_setup);
        self.observation.start = min_str(&self.observation.start, &other.observation.start);
        self.observation.end = max_str(&self.observation.end, &other.observation.end);
        self.observation.lost_records += other.observation.lost_records;
        self.observation.unclassified_checks += other.observation.unclassified_checks;
        // A host-wide counter read twice: the larger reading covers both.
        self.observation.recursion_misses = self
            .observation
            .recursion_misses
            .max(other.observation.recursion_misses);
        // What either observation could not see is not known for the merge.
        let mut blind: BTreeSet<Class> = self.observation.unobservable.drain(..).collect();
        blind.extend(other.observation.unobservable.iter().copied());
        self.observation.unobservable = blind.into_iter().collect();
        self.apply_summary();
    }

    fn apply_summary(&mut self) {
        let Summary {
            allowlist,
            required,
            denied,
            advisory,
            silent,
            borrowed,
            ungrantable,
        } = Summary::of(&self.capabilities);
        self.allowlist = allowlist;
        self.required = required;
        self.denied = denied;
        self.advisory = advisory;
        self.silent = silent;
        self.borrowed = borrowed;
        self.ungrantable = ungrantable;
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn min_str(a: &str, b: &str) -> String {
    if a.is_empty() {
        b
    } else if b.is_empty() || a <= b {
        a
    } else {
        b
    }
    .to_owned()
}

fn max_str(a: &str, b: &str) -> String {
    if a >= b { a } else { b }.to_owned()
}

fn merge_usages(a: &[CapUsage], b: &[CapUsage]) -> Vec<CapUsage> {
    let mut by_cap: BTreeMap<Cap, CapUsage> = BTreeMap::new();
    for usage in a.iter().chain(b) {
        match by_cap.get_mut(&usage.name) {
            None => {
                by_cap.insert(usage.name, usage.clone());
            }
            Some(acc) => {
                acc.granted += usage.granted;
                acc.denied += usage.denied;
                acc.silent_granted += usage.silent_granted;
                acc.ungrantable += usage.ungrantable;
                for (class, n) in &usage.by_class {
                    *acc.by_class.entry(*class).or_default() += n;
                }
                acc.first_seen = min_str(&acc.first_seen, &usage.first_seen);
                acc.last_seen = max_str(&acc.last_seen, &usage.last_seen);
                let mut evidence: BTreeSet<Evidence> = acc.evidence.drain(..).collect();
                evidence.extend(usage.evidence.iter().cloned());
                acc.evidence = evidence.into_iter().take(MAX_EVIDENCE).collect();
                acc.class = usage_class(&acc.by_class);
            }
        }
    }
    by_cap.into_values().collect()
}

/// The class a capability is reported under: the strongest of its checks.
fn usage_class(by_class: &BTreeMap<Class, u64>) -> Class {
    // `Class` orders Required < Denied < Silent < Borrowed < Advisory: a
    // capability seen both borrowed and as the mmap probe (SYS_ADMIN on
    // overlay2) is reported borrowed, the more telling of the two.
    by_class.keys().next().copied().unwrap_or(Class::Advisory)
}

#[derive(Debug, PartialEq, Eq)]
struct Summary {
    allowlist: Vec<Cap>,
    required: Vec<Cap>,
    denied: Vec<Cap>,
    advisory: Vec<Cap>,
    silent: Vec<Cap>,
    borrowed: Vec<Cap>,
    ungrantable: Vec<Cap>,
}

impl Summary {
    fn of(usages: &[CapUsage]) -> Self {
        let mut s = Summary {
            allowlist: vec![],
            required: vec![],
            denied: vec![],
            advisory: vec![],
            silent: vec![],
            borrowed: vec![],
            ungrantable: vec![],
        };
        let mut sorted: Vec<&CapUsage> = usages.iter().collect();
        sorted.sort_by_key(|u| u.name);
        for usage in sorted {
            match usage.class {
                Class::Required => s.required.push(usage.name),
                Class::Denied => s.denied.push(usage.name),
                Class::Silent => s.silent.push(usage.name),
                Class::Borrowed => s.borrowed.push(usage.name),
                Class::Advisory => s.advisory.push(usage.name),
            }
            if usage.ungrantable > 0 {
                s.ungrantable.push(usage.name);
            }
            let silent_granted = usage.class == Class::Silent && usage.silent_granted > 0;
            if usage.class == Class::Required || silent_granted {
                s.allowlist.push(usage.name);
            }
        }
        s
    }
}

/// Raw observations of one subject, as read from the kernel, before they
/// become a profile.
#[derive(Debug, Default, Clone)]
pub struct Observations {
    /// (phase, cap) -> usage being accumulated.
    usages: BTreeMap<(u8, Cap), Acc>,
    /// Checks of `kind::UNKNOWN`: call site unknown, counted as audited.
    unclassified: u64,
}

#[derive(Debug, Default, Clone)]
struct Acc {
    granted: u64,
    denied: u64,
    silent_granted: u64,
    ungrantable: u64,
    by_class: BTreeMap<Class, u64>,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    evidence: BTreeSet<Evidence>,
}

impl Observations {
    /// Adds one kernel counter.
    pub fn add_count(
        &mut self,
        cap: Cap,
        verdict: u8,
        kind: u8,
        phase: u8,
        count: u64,
        first: SystemTime,
        last: SystemTime,
    ) {
        let acc = self.usages.entry((phase, cap)).or_default();
        if verdict == VERDICT_DENIED {
            acc.denied += count;
        } else {
            acc.granted += count;
        }
        let class = Class::of(kind, verdict);
        if class == Class::Silent && verdict != VERDICT_DENIED {
            acc.silent_granted += count;
        }
        if kind == kind::UNKNOWN {
            self.unclassified += count;
        }
        *acc.by_class.entry(class).or_default() += count;
        acc.first = Some(acc.first.map_or(first, |f| f.min(first)));
        acc.last = Some(acc.last.map_or(last, |l| l.max(last)));
    }

    /// Adds `count` checks of a counter whose target user namespace was
    /// `userns` (`check::userns::*`): those outside the credentials' own
    /// namespace can never be granted. Only audited checks (and unclassified
    /// ones, which count as audited) say the workload needed the capability:
    /// NOAUDIT probes are left out (every mmap in a user namespace makes an
    /// advisory SYS_ADMIN check of the host's, refused), and so are borrowed
    /// checks, which are not the workload's.
    pub fn add_userns(&mut self, cap: Cap, kind: u8, phase: u8, userns: u8, count: u64) {
        let audited = matches!(kind, kind::AUDIT | kind::UNKNOWN);
        if !audited || UserNs::of(userns) != UserNs::Ancestor {
            return;
        }
        self.usages.entry((phase, cap)).or_default().ungrantable += count;
    }

    pub fn add_evidence(&mut self, cap: Cap, phase: u8, evidence: Evidence) {
        let acc = self.usages.entry((phase, cap)).or_default();
        if acc.evidence.len() < MAX_EVIDENCE {
            acc.evidence.insert(evidence);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.usages.is_empty()
    }

    /// The profile. `observation.unclassified_checks` is this subject's own
    /// count, from its counters.
    pub fn into_profile(self, subject: Subject, mut observation: Observation) -> Profile {
        observation.unclassified_checks = self.unclassified;
        let mut capabilities = vec![];
        let mut runtime_setup = vec![];
        for ((phase_id, cap), acc) in self.usages {
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
                ungrantable: acc.ungrantable,
                by_class: acc.by_class,
                first_seen: acc.first.map(rfc3339).unwrap_or_default(),
                last_seen: acc.last.map(rfc3339).unwrap_or_default(),
                evidence: acc.evidence.into_iter().collect(),
            };
            if phase_id == phase::SETUP {
                runtime_setup.push(usage);
            } else {
                capabilities.push(usage);
            }
        }
        let mut profile = Profile {
            schema: SCHEMA.to_owned(),
            generator: format!("capprof {}", env!("CARGO_PKG_VERSION")),
            subject,
            observation,
            allowlist: vec![],
            required: vec![],
            denied: vec![],
            advisory: vec![],
            silent: vec![],
            borrowed: vec![],
            ungrantable: vec![],
            capabilities,
            runtime_setup,
        };
        profile.apply_summary();
        profile
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
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

#[cfg(test)]
mod tests {
    use capprof_common::check::VERDICT_GRANTED;

    use super::*;

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    fn observe(entries: &[(&str, u8, u8, u8, u64)]) -> Profile {
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (name, verdict, kind, phase, count) in entries {
            obs.add_count(cap(name), *verdict, *kind, *phase, *count, t, t);
        }
        obs.into_profile(
            Subject {
                kind: "command".into(),
                ..Default::default()
            },
            Observation::default(),
        )
    }

    #[test]
    fn classes_from_kind_and_verdict() {
        assert_eq!(Class::of(kind::AUDIT, VERDICT_GRANTED), Class::Required);
        assert_eq!(Class::of(kind::AUDIT, VERDICT_DENIED), Class::Denied);
        assert_eq!(Class::of(kind::UNKNOWN, VERDICT_GRANTED), Class::Required);
        assert_eq!(Class::of(kind::NOAUDIT, VERDICT_GRANTED), Class::Silent);
        assert_eq!(Class::of(kind::NOAUDIT, VERDICT_DENIED), Class::Silent);
        assert_eq!(Class::of(kind::ADVISORY, VERDICT_GRANTED), Class::Advisory);
        assert_eq!(Class::of(kind::ADVISORY, VERDICT_DENIED), Class::Advisory);
    }

    #[test]
    fn summary_sorts_each_capability_into_one_class() {
        let p = observe(&[
            (
                "CAP_SYS_ADMIN",
                VERDICT_GRANTED,
                kind::ADVISORY,
                phase::WORKLOAD,
                500,
            ),
            (
                "CAP_CHOWN",
                VERDICT_GRANTED,
                kind::AUDIT,
                phase::WORKLOAD,
                2,
            ),
            (
                "CAP_SYS_RESOURCE",
                VERDICT_DENIED,
                kind::AUDIT,
                phase::WORKLOAD,
                1,
            ),
            (
                "CAP_SYS_PTRACE",
                VERDICT_GRANTED,
                kind::NOAUDIT,
                phase::WORKLOAD,
                1,
            ),
            (
                "CAP_SYSLOG",
                VERDICT_DENIED,
                kind::NOAUDIT,
                phase::WORKLOAD,
                1,
            ),
            // Granted advisory checks do not make a refused silent one allowed.
            (
                "CAP_SYSLOG",
                VERDICT_GRANTED,
                kind::ADVISORY,
                phase::WORKLOAD,
                5,
            ),
            // The same capability both advisory and audited is required.
            (
                "CAP_FOWNER",
                VERDICT_GRANTED,
                kind::ADVISORY,
                phase::WORKLOAD,
                1,
            ),
            (
                "CAP_FOWNER",
                VERDICT_GRANTED,
                kind::AUDIT,
                phase::WORKLOAD,
                1,
            ),
            // Runtime setup never reaches the allowlist.
            (
                "CAP_SETPCAP",
                VERDICT_GRANTED,
                kind::AUDIT,
                phase::SETUP,
                55,
            ),
        ]);
        assert_eq!(p.required, vec![cap("CHOWN"), cap("FOWNER")]);
        assert_eq!(p.denied, vec![cap("SYS_RESOURCE")]);
        assert_eq!(p.silent, vec![cap("SYS_PTRACE"), cap("SYSLOG")]);
        assert_eq!(p.advisory, vec![cap("SYS_ADMIN")]);
        assert_eq!(
            p.allowlist,
            vec![cap("CHOWN"), cap("FOWNER"), cap("SYS_PTRACE")]
        );
        assert_eq!(p.runtime_setup.len(), 1);
        assert_eq!(p.runtime_setup[0].name, cap("SETPCAP"));
        let fowner = p
            .capabilities
            .iter()
            .find(|u| u.name == cap("FOWNER"))
            .unwrap();
        assert_eq!(fowner.granted, 2);
        assert_eq!(fowner.by_class[&Class::Advisory], 1);
    }

    #[test]
    fn json_round_trip_and_validation() {
        let p = observe(&[(
            "CAP_CHOWN",
            VERDICT_GRANTED,
            kind::AUDIT,
            phase::WORKLOAD,
            2,
        )]);
        let json = p.to_json();
        assert!(json.contains("\"schema\": \"capprof.profile/v1\""));
        let back = Profile::from_json("p.json", json.as_bytes()).unwrap();
        assert_eq!(back, p);

        let other = json.replace("capprof.profile/v1", "capprof.profile/v9");
        let err = Profile::from_json("p.json", other.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("capprof.profile/v9"), "{err}");

        let unknown = json.replace("\"CAP_CHOWN\"", "\"CAP_FLY\"");
        let err = Profile::from_json("p.json", unknown.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("CAP_FLY"), "{err}");

        let err = Profile::from_json("p.json", b"{\"schema\": \"capprof.profile/v1\"").unwrap_err();
        assert!(matches!(err, ProfileError::Malformed { .. }), "{err}");

        // A tampered summary that grants more than was observed is refused.
        let tampered = json.replace(
            "\"allowlist\": [\n    \"CAP_CHOWN\"\n  ]",
            "\"allowlist\": [\n    \"CAP_CHOWN\",\n    \"CAP_SYS_ADMIN\"\n  ]",
        );
        assert_ne!(tampered, json);
        let err = Profile::from_json("p.json", tampered.as_bytes()).unwrap_err();
        assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
    }

    #[test]
    fn merge_adds_replicas() {
        let mut a = observe(&[(
            "CAP_CHOWN",
            VERDICT_GRANTED,
            kind::AUDIT,
            phase::WORKLOAD,
            2,
        )]);
        let b = observe(&[
            (
                "CAP_CHOWN",
                VERDICT_GRANTED,
                kind::AUDIT,
                phase::WORKLOAD,
                3,
            ),
            (
                "CAP_NET_RAW",
                VERDICT_GRANTED,
                kind::AUDIT,
                phase::WORKLOAD,
                1,
            ),
            (
                "CAP_SYS_ADMIN",
                VERDICT_GRANTED,
                kind::ADVISORY,
                phase::WORKLOAD,
                9,
            ),
        ]);
        a.merge(&b);
        assert_eq!(a.required, vec![cap("CHOWN"), cap("NET_RAW")]);
        assert_eq!(a.advisory, vec![cap("SYS_ADMIN")]);
        assert_eq!(a.capabilities[0].granted, 5);
        // Merging is idempotent in its classes and still validates.
        let json = a.to_json();
        Profile::from_json("merged.json", json.as_bytes()).unwrap();
    }

    #[test]
    fn unobservable_classes_are_said_and_merged() {
        let mut a = observe(&[(
            "CAP_CHOWN",
            VERDICT_GRANTED,
            kind::AUDIT,
            phase::WORKLOAD,
            2,
        )]);
        // Every class seen: the field is left out, as before it existed.
        assert!(!a.to_json().contains("unobservable"));
        let mut b = a.clone();
        b.observation.backend = "lsm".into();
        b.observation.unobservable = vec![Class::Denied, Class::Advisory];
        let json = b.to_json();
        assert!(
            json.contains("\"unobservable\": [\n      \"denied\",\n      \"advisory\"\n    ]"),
            "{json}"
        );
        assert_eq!(Profile::from_json("lsm.json", json.as_bytes()).unwrap(), b);
        // A merge with an lsm profile cannot vouch for the classes lsm missed.
        a.merge(&b);
        assert_eq!(a.observation.unobservable, [Class::Denied, Class::Advisory]);
    }

    #[test]
    fn borrowed_checks_never_reach_the_allowlist() {
        assert_eq!(Class::of(kind::BORROWED, VERDICT_GRANTED), Class::Borrowed);
        assert_eq!(Class::of(kind::BORROWED, VERDICT_DENIED), Class::Borrowed);
        let w = phase::WORKLOAD;
        let p = observe(&[
            // Only borrowed: reported, not granted.
            ("CAP_SYS_ADMIN", VERDICT_GRANTED, kind::BORROWED, w, 68),
            (
                "CAP_DAC_READ_SEARCH",
                VERDICT_GRANTED,
                kind::BORROWED,
                w,
                16,
            ),
            // Borrowed and the mmap probe: still borrowed.
            ("CAP_SYS_ADMIN", VERDICT_GRANTED, kind::ADVISORY, w, 500),
            // Borrowed and the workload's own audited check: required.
            ("CAP_CHOWN", VERDICT_GRANTED, kind::BORROWED, w, 10),
            ("CAP_CHOWN", VERDICT_GRANTED, kind::AUDIT, w, 2),
        ]);
        assert_eq!(p.required, vec![cap("CHOWN")]);
        assert_eq!(p.allowlist, vec![cap("CHOWN")]);
        assert_eq!(p.borrowed, vec![cap("DAC_READ_SEARCH"), cap("SYS_ADMIN")]);
        assert!(p.advisory.is_empty(), "{:?}", p.advisory);
        let admin = p
            .capabilities
            .iter()
            .find(|u| u.name == cap("SYS_ADMIN"))
            .unwrap();
        assert_eq!(admin.class, Class::Borrowed);
        assert_eq!(admin.by_class[&Class::Borrowed], 68);
        assert_eq!(admin.by_class[&Class::Advisory], 500);
        let back = Profile::from_json("p.json", p.to_json().as_bytes()).unwrap();
        assert_eq!(back, p);
        // A summary that hides the borrowed capabilities does not validate.
        let hidden = p.to_json().replace(
            "\"borrowed\": [\n    \"CAP_DAC_READ_SEARCH\",\n    \"CAP_SYS_ADMIN\"\n  ],",
            "\"borrowed\": [],",
        );
        assert_ne!(hidden, p.to_json());
        let err = Profile::from_json("hidden.json", hidden.as_bytes()).unwrap_err();
        assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
        // A profile written before `borrowed` and `ungrantable` existed reads.
        let before = observe(&[("CAP_CHOWN", VERDICT_GRANTED, kind::AUDIT, w, 2)]);
        let old = before
            .to_json()
            .replace("  \"borrowed\": [],\n", "")
            .replace("  \"ungrantable\": [],\n", "");
        assert!(
            !old.contains("borrowed") && !old.contains("ungrantable"),
            "{old}"
        );
        assert_eq!(
            Profile::from_json("old.json", old.as_bytes()).unwrap(),
            before
        );
    }

    #[test]
    fn ancestor_namespace_checks_are_ungrantable() {
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let w = phase::WORKLOAD;
        for (name, verdict, kind, ns, n) in [
            // mknod of a device in a user namespace: CAP_MKNOD of the host's.
            (
                "CAP_MKNOD",
                VERDICT_DENIED,
                kind::AUDIT,
                userns::ANCESTOR,
                1,
            ),
            // chown in the container's own namespace.
            ("CAP_CHOWN", VERDICT_GRANTED, kind::AUDIT, userns::OWN, 2),
            // In a descendant namespace: the same capabilities decide.
            (
                "CAP_SETUID",
                VERDICT_GRANTED,
                kind::AUDIT,
                userns::DESCENDANT,
                1,
            ),
            // Every mmap's probe of the host's namespace: not a need.
            (
                "CAP_SYS_ADMIN",
                VERDICT_DENIED,
                kind::ADVISORY,
                userns::ANCESTOR,
                9,
            ),
            // Borrowed checks are not the workload's.
            (
                "CAP_FOWNER",
                VERDICT_GRANTED,
                kind::BORROWED,
                userns::ANCESTOR,
                3,
            ),
        ] {
            obs.add_count(cap(name), verdict, kind, w, n, t, t);
            obs.add_userns(cap(name), kind, w, ns, n);
        }
        let p = obs.into_profile(Subject::default(), Observation::default());
        assert_eq!(p.ungrantable, vec![cap("MKNOD")]);
        assert_eq!(p.denied, vec![cap("MKNOD")]);
        assert_eq!(p.allowlist, vec![cap("CHOWN"), cap("SETUID")]);
        let mknod = p.capabilities.iter().find(|u| u.name == cap("MKNOD"));
        assert_eq!(mknod.map(|u| u.ungrantable), Some(1));
        Profile::from_json("p.json", p.to_json().as_bytes()).unwrap();
        // Merging adds the counts up.
        let mut merged = p.clone();
        merged.merge(&p);
        assert_eq!(merged.ungrantable, vec![cap("MKNOD")]);
        let mknod = merged.capabilities.iter().find(|u| u.name == cap("MKNOD"));
        assert_eq!(mknod.map(|u| u.ungrantable), Some(2));
    }

    #[test]
    fn unclassified_checks_are_the_profiles_own() {
        let w = phase::WORKLOAD;
        let mut observation = Observation {
            unclassified_checks: 1234,
            ..Default::default()
        };
        observation.recursion_misses = Some(3);
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH;
        obs.add_count(cap("CHOWN"), VERDICT_GRANTED, kind::UNKNOWN, w, 5, t, t);
        obs.add_count(cap("CHOWN"), VERDICT_GRANTED, kind::AUDIT, w, 7, t, t);
        obs.add_count(
            cap("SETPCAP"),
            VERDICT_GRANTED,
            kind::UNKNOWN,
            phase::SETUP,
            2,
            t,
            t,
        );
        let p = obs.into_profile(Subject::default(), observation);
        // Its own counters of unknown kind, not what the caller passed.
        assert_eq!(p.observation.unclassified_checks, 7);
        assert_eq!(p.observation.recursion_misses, Some(3));
        let mut merged = p.clone();
        let mut other = p.clone();
        other.observation.recursion_misses = Some(5);
        merged.merge(&other);
        assert_eq!(merged.observation.unclassified_checks, 14);
        // One host-wide counter read twice: the larger reading.
        assert_eq!(merged.observation.recursion_misses, Some(5));
    }

    #[test]
    fn boot_clock_is_close_to_wall_clock() {
        let clock = Clock::new();
        let wall = clock.wall(boottime_ns());
        let now = SystemTime::now();
        let diff = now.duration_since(wall).unwrap_or_else(|e| e.duration());
        assert!(diff < Duration::from_secs(1), "{diff:?}");
    }
}
