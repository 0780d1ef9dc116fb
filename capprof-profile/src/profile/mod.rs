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

/// Test doubles, for this crate's tests and (with the `testing` feature)
/// for capprof's.
#[cfg(any(test, feature = "testing"))]
pub use build::{Observations, with_allowlist};
pub use build::{ProfileBuilder, build};
pub use proof::{KeptIdentity, MAX_PROOF_ENTRIES, Proof};
pub use run::{DeviceSpec, MountSpec, RunSpec, UlimitSpec, env_entry_problem};
use serde::{Deserialize, Serialize};

pub use crate::observation::{UserNs, Verdict};
use crate::{
    capability::Cap,
    conditional::{self, Conditional, Kept, Transient},
    observation::{Backend, Kind},
};

pub const SCHEMA: &str = "capprof.profile/v1";

pub use crate::MAX_EVIDENCE;

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

/// A container id as the engines' own tables show it: its first 12
/// characters.
pub fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// What kind of thing was profiled, as profile files spell it.
///
/// A word this build does not know (a newer capprof's) is kept as written,
/// so a profile read and written again says the same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SubjectKind {
    /// A command run by `capprof run`.
    Command,
    /// A container of a container engine.
    Container,
    /// A container of a Kubernetes pod, named through the node's CRI
    /// runtime; the subject's `name` is the container's name in the pod.
    PodContainer,
    /// The merged containers of one name across a workload's pods.
    Workload,
    /// Profiles of different kinds merged (`capprof merge`).
    Merged,
    /// Another word, or none (a profile made by hand).
    #[default]
    Unknown,
    Other(String),
}

impl SubjectKind {
    const KNOWN: [SubjectKind; 5] = [
        SubjectKind::Command,
        SubjectKind::Container,
        SubjectKind::PodContainer,
        SubjectKind::Workload,
        SubjectKind::Merged,
    ];

    /// As profile files spell it.
    pub fn as_str(&self) -> &str {
        match self {
            SubjectKind::Command => "command",
            SubjectKind::Container => "container",
            SubjectKind::PodContainer => "pod-container",
            SubjectKind::Workload => "workload",
            SubjectKind::Merged => "merged",
            SubjectKind::Unknown => "",
            SubjectKind::Other(word) => word,
        }
    }

    /// Whether it names a Kubernetes container: one, or a workload's.
    pub fn is_kubernetes(&self) -> bool {
        matches!(self, SubjectKind::PodContainer | SubjectKind::Workload)
    }
}

impl From<String> for SubjectKind {
    fn from(word: String) -> Self {
        if word.is_empty() {
            return SubjectKind::Unknown;
        }
        match Self::KNOWN.into_iter().find(|k| k.as_str() == word) {
            Some(known) => known,
            None => SubjectKind::Other(word),
        }
    }
}

impl From<&str> for SubjectKind {
    fn from(word: &str) -> Self {
        word.to_owned().into()
    }
}

impl From<SubjectKind> for String {
    fn from(kind: SubjectKind) -> String {
        kind.as_str().to_owned()
    }
}

impl std::fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// What was profiled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    pub kind: SubjectKind,
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

/// How checks were told apart while recording: the typed reading of
/// [`Observation::classification`], which profile files keep as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassificationMethod {
    /// Calibrated call-site reads (the tracepoint).
    CallSite,
    /// The hook's `opts` argument (fexit, kprobe, lsm).
    Opts,
    /// Calibration failed: every check counted as audited.
    Uncalibrated,
    /// A word this build does not know (a newer capprof's, or none).
    Other,
}

impl ClassificationMethod {
    /// As profile files spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallSite => "call-site",
            Self::Opts => "opts",
            Self::Uncalibrated => "uncalibrated",
            Self::Other => "",
        }
    }

    /// The method a profile file names; `Other` for a word this build does
    /// not know.
    pub fn parse(word: &str) -> Self {
        [Self::CallSite, Self::Opts, Self::Uncalibrated]
            .into_iter()
            .find(|m| m.as_str() == word)
            .unwrap_or(Self::Other)
    }
}

impl std::fmt::Display for ClassificationMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How the observation was made.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub start: String,
    pub end: String,
    /// `tp_btf`, `fexit`, `kprobe` or `lsm`.
    pub backend: String,
    /// `call-site` (calibrated), `opts`, or `uncalibrated` (every check
    /// treated as audited); read it typed with
    /// [`Observation::classification_method`].
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

impl Observation {
    /// [`Observation::classification`], typed.
    pub fn classification_method(&self) -> ClassificationMethod {
        ClassificationMethod::parse(&self.classification)
    }

    /// Whether calibration failed, so every check counted as audited.
    pub fn is_uncalibrated(&self) -> bool {
        self.classification_method() == ClassificationMethod::Uncalibrated
    }
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
    /// Capabilities a capset() kept and the same process lost at its next
    /// exec, with no check of them in between (conditional.rs). Not on the
    /// allowlist; `minimize` tries them, and keeps any the workload fails
    /// without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient: Vec<Transient>,
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
    #[error("{path}: not a capprof profile: the JSON is not an object")]
    NotAnObject { path: String },
}

impl Profile {
    /// The warning every output of a partial profile carries (tables,
    /// exports, the daemon's routes, `diff`, `report`): its recording began
    /// after the workload had started. None for a complete one.
    pub fn partial_warning(&self) -> Option<String> {
        crate::caveat::Caveat::partial(self).map(|c| c.to_string())
    }

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
                let mut observed = expected.allowlist.clone();
                observed.extend(self.transient.iter().map(|t| t.capability));
                proof.check(&self.allowlist, &observed)?;
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
        self.transient =
            conditional::merge_transient(&self.transient, &other.transient, &self.kept);
        self.observation.start = min_str(&self.observation.start, &other.observation.start);
        self.observation.end = max_str(&self.observation.end, &other.observation.end);
        // Counts come from files: a sum saturates rather than wrap or panic.
        self.observation.lost_records = self
            .observation
            .lost_records
            .saturating_add(other.observation.lost_records);
        self.observation.unclassified_checks = self
            .observation
            .unclassified_checks
            .saturating_add(other.observation.unclassified_checks);
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
        self.transient = conditional::merge_transient(&self.transient, &[], &self.kept);
        self.apply_summary();
    }

    /// Adds capabilities lost at exec (`conditional::Transient`); none
    /// that is kept elsewhere in the profile.
    pub fn add_transient(&mut self, transient: &[Transient]) {
        self.transient = conditional::merge_transient(&self.transient, transient, &self.kept);
    }

    /// What `minimize` starts from: the allowlist and the transient
    /// capabilities, which observation alone cannot settle.
    pub fn candidates(&self) -> Vec<Cap> {
        let all: BTreeSet<Cap> = self
            .allowlist
            .iter()
            .copied()
            .chain(self.transient.iter().map(|t| t.capability))
            .collect();
        all.into_iter().collect()
    }

    /// The capabilities a check of the workload's own was seen to use
    /// (granted or refused, any class but borrowed and advisory): what
    /// `minimize` may keep as security-relevant without trying.
    pub fn used(&self) -> Vec<Cap> {
        self.capabilities
            .iter()
            .filter(|u| matches!(u.class, Class::Required | Class::Denied | Class::Silent))
            .map(|u| u.name)
            .collect()
    }

    /// A profile of what was seen, with its summary arrays worked out from
    /// `capabilities` and the kept capabilities: what [`build`] and the
    /// fleet's node parts (`fleet::part`) both make.
    pub fn assemble(
        subject: Subject,
        observation: Observation,
        capabilities: Vec<CapUsage>,
        runtime_setup: Vec<CapUsage>,
        findings: conditional::Findings,
    ) -> Self {
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
            conditional: findings.conditional,
            kept: findings.kept,
            transient: findings.transient,
            proof: None,
            coverage: None,
        };
        profile.apply_summary();
        profile
    }

    pub(crate) fn apply_summary(&mut self) {
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
                // Counts read from files may be anything: saturate.
                acc.granted = acc.granted.saturating_add(usage.granted);
                acc.denied = acc.denied.saturating_add(usage.denied);
                acc.silent_granted = acc.silent_granted.saturating_add(usage.silent_granted);
                acc.ungrantable = acc.ungrantable.saturating_add(usage.ungrantable);
                for (class, n) in &usage.by_class {
                    let sum = acc.by_class.entry(*class).or_default();
                    *sum = sum.saturating_add(*n);
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
pub fn usage_class(by_class: &BTreeMap<Class, u64>) -> Class {
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
mod tests;
