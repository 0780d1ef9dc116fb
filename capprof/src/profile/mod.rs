//! The profile: what a workload was seen to use, as a versioned JSON
//! document (`capprof.profile/v1`). `build` makes one from what the
//! observer hands out.
//!
//! Stable fields read by other tools: `schema`, `required`, `denied`,
//! `advisory`, `silent`, `borrowed`, `ungrantable`, `allowlist` and
//! `capabilities`; `conditional` and `kept` (conditional.rs) when not
//! empty.

mod build;
mod proof;
mod run;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

#[cfg(test)]
#[cfg(test)]
pub use build::{Observations, with_allowlist};
pub use build::{ProfileBuilder, build, from_observer};
pub use proof::{KeptIdentity, MAX_PROOF_ENTRIES, Proof};
pub use run::{DeviceSpec, MountSpec, RunSpec, UlimitSpec};
use serde::{Deserialize, Serialize};

pub use crate::observer::{UserNs, Verdict};
use crate::{
    capability::Cap,
    conditional::{self, Conditional, Kept},
    observer::{Backend, Kind},
};

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
    pub fn of(kind: Kind, verdict: Verdict) -> Self {
        match (kind, verdict) {
            (Kind::Borrowed, _) => Class::Borrowed,
            // capset()'s CAP_SETPCAP check changes nothing unless the call
            // grows the inheritable set, which the capset hook records.
            (Kind::Advisory | Kind::Capset, _) => Class::Advisory,
            (Kind::NoAudit, _) => Class::Silent,
            (Kind::Audit | Kind::Unknown, Verdict::Denied) => Class::Denied,
            (Kind::Audit | Kind::Unknown, Verdict::Granted) => Class::Required,
        }
    }

    /// The name the profile and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Required => "required",
            Class::Denied => "denied",
            Class::Silent => "silent",
            Class::Borrowed => "borrowed",
            Class::Advisory => "advisory",
        }
    }

    /// The classes of checks `backend` cannot see on any kernel, which
    /// profiles report as `unobservable`.
    pub fn unobservable_on(backend: Backend) -> Vec<Class> {
        let mut blind = vec![];
        if !backend.sees_refusals() {
            blind.push(Class::Denied);
        }
        if !backend.sees_advisory() {
            blind.push(Class::Advisory);
        }
        blind
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What was profiled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// `command`, `container`, `pod-container` (a container of a Kubernetes
    /// pod, named through the node's CRI runtime; `name` is the container's
    /// name in the pod) or `workload` (the merged containers of one name
    /// across a workload's pods).
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
    /// The capabilities the container was started with, from the engine
    /// (for a command: `capprof run --caps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Cap>>,
    /// How to run the workload again (`capprof verify`, `minimize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
    /// Where the container sits in Kubernetes (kinds `pod-container` and
    /// `workload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k8s: Option<K8sRef>,
}

/// A container's place in Kubernetes, as the node's CRI runtime reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct K8sRef {
    pub namespace: String,
    /// The pod's name; absent for a `workload` profile, which stands for
    /// all of its owner's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The workload that owns the pod, where it could be derived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The controller that owns a pod: the object a `k8s-patch` export patches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `CronJob`,
    /// `ReplicaSet` (a bare one) or `Pod` (no controller).
    pub kind: String,
    pub name: String,
    /// How it was derived, for the reader to judge: for example
    /// `label:pod-template-hash` or `name-pattern`.
    pub derived_from: String,
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
    /// Set when the recording began after the workload had started: its
    /// start-up checks were not seen, so the allowlist may be too small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
}

/// Why an observation missed the workload's start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// When the container started, as its engine says (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_started: Option<String>,
    /// When the recording started.
    pub recording_started: String,
}

impl Partial {
    /// One sentence for a warning.
    pub fn warning(&self, what: &str) -> String {
        format!(
            "{what} was already running when recording started ({}recording started {}): its start-up needs were not seen, and the allowlist may be too small; record it from its start",
            self.workload_started
                .as_deref()
                .map(|t| format!("it started {t}, "))
                .unwrap_or_default(),
            self.recording_started
        )
    }
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
    /// Operations that made no check only because a sysctl of the
    /// container's network namespace allowed them (conditional.rs). Not on
    /// the allowlist: exports add them per target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditional: Vec<Conditional>,
    /// Capabilities kept through capset(), which makes no check for them.
    /// On the allowlist: the capset() fails without them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<Kept>,
    /// What re-running the workload proved about the allowlist
    /// (`capprof minimize`); absent for a profile that was only observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
    /// How `capprof merge` made this profile out of others; absent for a
    /// profile of one observation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<Coverage>,
}

/// How many profiles a merged profile stands for, and where each capability
/// was seen (`capprof merge`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    /// How many single observations were merged (M).
    pub profiles: u64,
    /// The subjects of those observations, in merge order.
    #[serde(default)]
    pub subjects: Vec<Subject>,
    /// For each workload capability: in how many of the M it was seen, and
    /// by which executables.
    #[serde(default)]
    pub capabilities: BTreeMap<Cap, CapCoverage>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapCoverage {
    /// In how many of the merged observations the capability was seen (N).
    pub seen_in: u64,
    /// The programs whose checks were kept as evidence (`exe`, else `comm`).
    #[serde(default)]
    pub executables: Vec<String>,
}

impl Coverage {
    /// Untrusted input: counts must be possible and name only capabilities
    /// the profile has.
    fn check(&self, usages: &[CapUsage]) -> Result<(), String> {
        if self.profiles == 0 {
            return Err("coverage.profiles is 0".into());
        }
        for (cap, cov) in &self.capabilities {
            if cov.seen_in == 0 || cov.seen_in > self.profiles {
                return Err(format!(
                    "coverage of {cap}: seen_in {} is not within 1..={}",
                    cov.seen_in, self.profiles
                ));
            }
            if !usages.iter().any(|u| u.name == *cap) {
                return Err(format!("coverage names {cap}, which was not seen"));
            }
        }
        Ok(())
    }
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
    #[error("{path}: not a capprof profile: the JSON is not an object")]
    NotAnObject { path: String },
    #[error("{path}: {what}, not a capprof profile")]
    NotAFile { path: String, what: &'static str },
    #[error("{path}: larger than {} MiB, not a capprof profile", MAX_BYTES >> 20)]
    TooLarge { path: String },
}

/// How large a profile file may be: far more than any real profile (a few
/// hundred KiB), and a bound on what an untrusted file or pipe can make
/// capprof hold.
pub const MAX_BYTES: u64 = 64 << 20;

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
        let probe: Probe = serde_json::from_slice(bytes).map_err(|source| {
            if source.classify() == serde_json::error::Category::Data {
                // Valid JSON of another shape; serde's own words would name
                // capprof's internal type.
                ProfileError::NotAnObject {
                    path: path.to_owned(),
                }
            } else {
                ProfileError::Malformed {
                    path: path.to_owned(),
                    source,
                }
            }
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

    /// Reads a profile file: a regular file of at most `MAX_BYTES`.
    pub fn read(path: &str) -> Result<Self, ProfileError> {
        let read_err = |source| ProfileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            let what = if meta.is_dir() {
                "a directory"
            } else {
                "a special file"
            };
            return Err(ProfileError::NotAFile {
                path: path.to_owned(),
                what,
            });
        }
        Self::read_from(path, file)
    }

    /// Reads a profile from a stream (stdin), at most `MAX_BYTES` of it.
    pub fn read_from(path: &str, reader: impl std::io::Read) -> Result<Self, ProfileError> {
        use std::io::Read as _;
        let mut bytes = vec![];
        reader
            .take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ProfileError::Read {
                path: path.to_owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_BYTES {
            return Err(ProfileError::TooLarge {
                path: path.to_owned(),
            });
        }
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
        if let Some(run) = &self.subject.run {
            run.validate()?;
        }
        let expected = Summary::of(&self.capabilities, &self.kept);
        // A proof may have removed capabilities from the observed
        // allowlist (never added any); it vouches for what it kept.
        let allowlist = match &self.proof {
            Some(proof) => {
                proof.check(&self.allowlist, &expected.allowlist)?;
                expected.allowlist.clone()
            }
            None => self.allowlist.clone(),
        };
        let got = Summary {
            allowlist,
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
        if let Some(coverage) = &self.coverage {
            coverage.check(&self.capabilities)?;
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
        self.conditional = conditional::merge_conditional(&self.conditional, &other.conditional);
        self.kept = conditional::merge_kept(&self.kept, &other.kept);
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
        // A merge that includes a partial observation is partial.
        if self.observation.partial.is_none() {
            self.observation.partial = other.observation.partial.clone();
        }
        // A proof is for one allowlist of one workload, not for a merge.
        self.proof = None;
        self.apply_summary();
    }

    /// Adds what the syscall hooks saw (`conditional::from_records`) and
    /// brings the allowlist up to date.
    pub fn add_syscall_findings(&mut self, conditional: &[Conditional], kept: &[Kept]) {
        self.conditional = conditional::merge_conditional(&self.conditional, conditional);
        self.kept = conditional::merge_kept(&self.kept, kept);
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
        } = Summary::of(&self.capabilities, &self.kept);
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
    /// The summary arrays; capabilities kept through capset() join the
    /// allowlist.
    fn of(usages: &[CapUsage], kept: &[Kept]) -> Self {
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
        s.allowlist.extend(kept.iter().map(|k| k.capability));
        s.allowlist.sort();
        s.allowlist.dedup();
        s
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, time::Duration};

    use super::*;
    use crate::observer::{Count, Phase};

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    fn count(
        name: &str,
        verdict: Verdict,
        kind: Kind,
        phase: Phase,
        user_ns: UserNs,
        n: u64,
        t: SystemTime,
    ) -> Count {
        Count {
            cgroup_id: 1,
            cap: cap(name),
            verdict,
            kind,
            phase,
            user_ns,
            count: n,
            first_seen: t,
            last_seen: t,
        }
    }

    fn observe(entries: &[(&str, Verdict, Kind, Phase, u64)]) -> Profile {
        let mut builder = ProfileBuilder::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for &(name, verdict, kind, phase, count) in entries {
            builder.add_count(&self::count(
                name,
                verdict,
                kind,
                phase,
                UserNs::Own,
                count,
                t,
            ));
        }
        builder.build(
            Subject {
                kind: "command".into(),
                ..Default::default()
            },
            Observation::default(),
        )
    }

    #[test]
    fn classes_from_kind_and_verdict() {
        assert_eq!(Class::of(Kind::Audit, Verdict::Granted), Class::Required);
        assert_eq!(Class::of(Kind::Audit, Verdict::Denied), Class::Denied);
        assert_eq!(Class::of(Kind::Unknown, Verdict::Granted), Class::Required);
        assert_eq!(Class::of(Kind::NoAudit, Verdict::Granted), Class::Silent);
        assert_eq!(Class::of(Kind::NoAudit, Verdict::Denied), Class::Silent);
        assert_eq!(Class::of(Kind::Advisory, Verdict::Granted), Class::Advisory);
        assert_eq!(Class::of(Kind::Advisory, Verdict::Denied), Class::Advisory);
    }

    #[test]
    fn summary_sorts_each_capability_into_one_class() {
        let p = observe(&[
            (
                "CAP_SYS_ADMIN",
                Verdict::Granted,
                Kind::Advisory,
                Phase::Workload,
                500,
            ),
            (
                "CAP_CHOWN",
                Verdict::Granted,
                Kind::Audit,
                Phase::Workload,
                2,
            ),
            (
                "CAP_SYS_RESOURCE",
                Verdict::Denied,
                Kind::Audit,
                Phase::Workload,
                1,
            ),
            (
                "CAP_SYS_PTRACE",
                Verdict::Granted,
                Kind::NoAudit,
                Phase::Workload,
                1,
            ),
            (
                "CAP_SYSLOG",
                Verdict::Denied,
                Kind::NoAudit,
                Phase::Workload,
                1,
            ),
            // Granted advisory checks do not make a refused silent one allowed.
            (
                "CAP_SYSLOG",
                Verdict::Granted,
                Kind::Advisory,
                Phase::Workload,
                5,
            ),
            // The same capability both advisory and audited is required.
            (
                "CAP_FOWNER",
                Verdict::Granted,
                Kind::Advisory,
                Phase::Workload,
                1,
            ),
            (
                "CAP_FOWNER",
                Verdict::Granted,
                Kind::Audit,
                Phase::Workload,
                1,
            ),
            // Runtime setup never reaches the allowlist.
            (
                "CAP_SETPCAP",
                Verdict::Granted,
                Kind::Audit,
                Phase::Setup,
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
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
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
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            2,
        )]);
        let b = observe(&[
            (
                "CAP_CHOWN",
                Verdict::Granted,
                Kind::Audit,
                Phase::Workload,
                3,
            ),
            (
                "CAP_NET_RAW",
                Verdict::Granted,
                Kind::Audit,
                Phase::Workload,
                1,
            ),
            (
                "CAP_SYS_ADMIN",
                Verdict::Granted,
                Kind::Advisory,
                Phase::Workload,
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
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
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
    fn untrusted_input_is_bounded_and_named_in_the_users_words() {
        let big = std::io::repeat(b' ').take(MAX_BYTES + 10);
        assert!(matches!(
            Profile::read_from("<stdin>", big),
            Err(ProfileError::TooLarge { .. })
        ));
        let err = Profile::from_json("x.json", b"[1, 2]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.json: not a capprof profile: the JSON is not an object"
        );
        for special in ["/dev/zero", "/tmp"] {
            let err = Profile::read(special).unwrap_err();
            assert!(matches!(err, ProfileError::NotAFile { .. }), "{err}");
        }
    }

    #[test]
    fn kept_capabilities_join_the_allowlist_apart_from_required() {
        use crate::conditional::{CapSet, Kept, OperationEvidence};
        let mut p = observe(&[(
            "CAP_SETUID",
            Verdict::Granted,
            Kind::Audit,
            Phase::Workload,
            1,
        )]);
        let kept = Kept {
            capability: cap("NET_BIND_SERVICE"),
            sets: [CapSet::Permitted].into(),
            evidence: vec![OperationEvidence {
                comm: "chronyd".into(),
                exe: None,
                pid: 7,
                uid: 0,
                gid: None,
            }],
        };
        p.add_syscall_findings(&[], std::slice::from_ref(&kept));
        assert_eq!(p.required, vec![cap("SETUID")]);
        assert_eq!(p.allowlist, vec![cap("SETUID"), cap("NET_BIND_SERVICE")]);
        let json = p.to_json();
        assert!(json.contains("\"kept\""), "{json}");
        assert!(!json.contains("\"conditional\""), "{json}");
        assert_eq!(Profile::from_json("k.json", json.as_bytes()).unwrap(), p);
        // An allowlist without the kept capability does not validate.
        let mut stripped: serde_json::Value = serde_json::from_str(&json).unwrap();
        stripped["kept"] = serde_json::json!([]);
        let err = Profile::from_json("k.json", stripped.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, ProfileError::Inconsistent { .. }), "{err}");
        // Merging keeps it.
        let mut other = observe(&[]);
        other.merge(&p);
        assert!(other.allowlist.contains(&cap("NET_BIND_SERVICE")));
        assert_eq!(other.kept, vec![kept]);
    }

    #[test]
    fn capset_checks_are_not_required() {
        assert_eq!(Class::of(Kind::Capset, Verdict::Granted), Class::Advisory);
        assert_eq!(Class::of(Kind::Capset, Verdict::Denied), Class::Advisory);
    }

    #[test]
    fn borrowed_checks_never_reach_the_allowlist() {
        assert_eq!(Class::of(Kind::Borrowed, Verdict::Granted), Class::Borrowed);
        assert_eq!(Class::of(Kind::Borrowed, Verdict::Denied), Class::Borrowed);
        let w = Phase::Workload;
        let p = observe(&[
            // Only borrowed: reported, not granted.
            ("CAP_SYS_ADMIN", Verdict::Granted, Kind::Borrowed, w, 68),
            (
                "CAP_DAC_READ_SEARCH",
                Verdict::Granted,
                Kind::Borrowed,
                w,
                16,
            ),
            // Borrowed and the mmap probe: still borrowed.
            ("CAP_SYS_ADMIN", Verdict::Granted, Kind::Advisory, w, 500),
            // Borrowed and the workload's own audited check: required.
            ("CAP_CHOWN", Verdict::Granted, Kind::Borrowed, w, 10),
            ("CAP_CHOWN", Verdict::Granted, Kind::Audit, w, 2),
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
        let before = observe(&[("CAP_CHOWN", Verdict::Granted, Kind::Audit, w, 2)]);
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
        let mut obs = ProfileBuilder::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let w = Phase::Workload;
        for (name, verdict, kind, ns, n) in [
            // mknod of a device in a user namespace: CAP_MKNOD of the host's.
            (
                "CAP_MKNOD",
                Verdict::Denied,
                Kind::Audit,
                UserNs::Ancestor,
                1,
            ),
            // chown in the container's own namespace.
            ("CAP_CHOWN", Verdict::Granted, Kind::Audit, UserNs::Own, 2),
            // In a descendant namespace: the same capabilities decide.
            (
                "CAP_SETUID",
                Verdict::Granted,
                Kind::Audit,
                UserNs::Descendant,
                1,
            ),
            // Every mmap's probe of the host's namespace: not a need.
            (
                "CAP_SYS_ADMIN",
                Verdict::Denied,
                Kind::Advisory,
                UserNs::Ancestor,
                9,
            ),
            // Borrowed checks are not the workload's.
            (
                "CAP_FOWNER",
                Verdict::Granted,
                Kind::Borrowed,
                UserNs::Ancestor,
                3,
            ),
        ] {
            obs.add_count(&count(name, verdict, kind, w, ns, n, t));
        }
        let p = obs.build(Subject::default(), Observation::default());
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
        let w = Phase::Workload;
        let mut observation = Observation {
            unclassified_checks: 1234,
            ..Default::default()
        };
        observation.recursion_misses = Some(3);
        let mut obs = ProfileBuilder::default();
        let t = SystemTime::UNIX_EPOCH;
        let own = UserNs::Own;
        obs.add_count(&count(
            "CHOWN",
            Verdict::Granted,
            Kind::Unknown,
            w,
            own,
            5,
            t,
        ));
        obs.add_count(&count("CHOWN", Verdict::Granted, Kind::Audit, w, own, 7, t));
        let setup = Phase::Setup;
        obs.add_count(&count(
            "SETPCAP",
            Verdict::Granted,
            Kind::Unknown,
            setup,
            own,
            2,
            t,
        ));
        let p = obs.build(Subject::default(), observation);
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
}
