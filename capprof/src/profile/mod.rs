//! The profile: what a workload was seen to use, as a versioned JSON
//! document (`capprof.profile/v1`). `build` makes one from what the
//! observer hands out.
//!
//! Stable fields read by other tools: `schema`, `required`, `denied`,
//! `advisory`, `silent`, `allowlist` and `capabilities`.

mod build;
mod proof;
mod run;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::SystemTime,
};

#[cfg(test)]
pub use build::with_allowlist;
pub use build::{ProfileBuilder, build};
pub use proof::{KeptIdentity, MAX_PROOF_ENTRIES, Proof};
pub use run::{DeviceSpec, MountSpec, RunSpec, UlimitSpec};
use serde::{Deserialize, Serialize};

pub use crate::observer::Verdict;
use crate::{
    capability::Cap,
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
    /// NOAUDIT probes that change no permission decision (mmap's
    /// CAP_SYS_ADMIN in `security_vm_enough_memory_mm`).
    Advisory,
}

impl Class {
    /// The class of one check. Unclassified checks count as audited, so a
    /// calibration failure can only over-grant, never break a workload.
    pub fn of(kind: Kind, verdict: Verdict) -> Self {
        match (kind, verdict) {
            (Kind::Advisory, _) => Class::Advisory,
            (Kind::NoAudit, _) => Class::Silent,
            (Kind::Audit | Kind::Unknown, Verdict::Denied) => Class::Denied,
            (Kind::Audit | Kind::Unknown, Verdict::Granted) => Class::Required,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Required => "required",
            Class::Denied => "denied",
            Class::Silent => "silent",
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
    /// The capabilities the container was started with, from the engine
    /// (for a command: `capprof run --caps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Cap>>,
    /// How to run the workload again (`capprof verify`, `minimize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunSpec>,
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
    /// Checks whose call site was unknown, counted as audited.
    #[serde(default)]
    pub unclassified_checks: u64,
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
    pub capabilities: Vec<CapUsage>,
    /// Checks the container runtime made while setting the container up,
    /// before the workload's exec. Never part of the allowlist.
    #[serde(default)]
    pub runtime_setup: Vec<CapUsage>,
    /// What re-running the workload proved about the allowlist
    /// (`capprof minimize`); absent for a profile that was only observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
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
        if let Some(run) = &self.subject.run {
            run.validate()?;
        }
        let expected = Summary::of(&self.capabilities);
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
        // What either observation could not see is not known for the merge.
        let mut blind: BTreeSet<Class> = self.observation.unobservable.drain(..).collect();
        blind.extend(other.observation.unobservable.iter().copied());
        self.observation.unobservable = blind.into_iter().collect();
        // A proof is for one allowlist of one workload, not for a merge.
        self.proof = None;
        self.apply_summary();
    }

    fn apply_summary(&mut self) {
        let Summary {
            allowlist,
            required,
            denied,
            advisory,
            silent,
        } = Summary::of(&self.capabilities);
        self.allowlist = allowlist;
        self.required = required;
        self.denied = denied;
        self.advisory = advisory;
        self.silent = silent;
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
    // `Class` orders Required < Denied < Silent < Advisory.
    by_class.keys().next().copied().unwrap_or(Class::Advisory)
}

#[derive(Debug, PartialEq, Eq)]
struct Summary {
    allowlist: Vec<Cap>,
    required: Vec<Cap>,
    denied: Vec<Cap>,
    advisory: Vec<Cap>,
    silent: Vec<Cap>,
}

impl Summary {
    fn of(usages: &[CapUsage]) -> Self {
        let mut s = Summary {
            allowlist: vec![],
            required: vec![],
            denied: vec![],
            advisory: vec![],
            silent: vec![],
        };
        let mut sorted: Vec<&CapUsage> = usages.iter().collect();
        sorted.sort_by_key(|u| u.name);
        for usage in sorted {
            match usage.class {
                Class::Required => s.required.push(usage.name),
                Class::Denied => s.denied.push(usage.name),
                Class::Silent => s.silent.push(usage.name),
                Class::Advisory => s.advisory.push(usage.name),
            }
            let silent_granted = usage.class == Class::Silent && usage.silent_granted > 0;
            if usage.class == Class::Required || silent_granted {
                s.allowlist.push(usage.name);
            }
        }
        s
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::observer::{Count, Phase};

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    fn observe(entries: &[(&str, Verdict, Kind, Phase, u64)]) -> Profile {
        let mut builder = ProfileBuilder::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for &(name, verdict, kind, phase, count) in entries {
            builder.add_count(&Count {
                cgroup_id: 1,
                cap: cap(name),
                verdict,
                kind,
                phase,
                count,
                first_seen: t,
                last_seen: t,
            });
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
}
