//! Many observations of one workload (its replicas, its test runs, its
//! nodes) as one profile: the union of what each saw, with coverage saying
//! how many observations there were (`coverage.profiles`, M) and, per
//! capability, in how many it was seen (`seen_in`, N) and by which
//! executables.
//!
//! Only observations that mean the same thing are merged. Two profiles
//! differ in meaning when their backends could see different classes of
//! checks (`observation.unobservable`: the `lsm` backend sees no refused and
//! no advisory check), or when one classified its checks and the other
//! counted all of them as audited (`classification: uncalibrated`). Their
//! union would say "never refused" or "required" for reasons that hold for
//! only some of the inputs, so such a merge is refused. Different backends
//! that see the same classes (`tp_btf`, `fexit`, `kprobe`) merge.
//!
//! Merging is associative: a merged profile merges again, its coverage
//! counting for its M observations. A proof does not carry over: it was
//! made for one input's allowlist, not for the union.
//!
//! Each observation is counted once. It is keyed by its container id (a
//! `run` profile's, which has none, by its cgroup, unique to the run), and
//! a merged profile remembers the keys of all it holds in
//! `coverage.subjects`. An input whose observations are all included
//! already (the same file twice, or a merge merged again with one of its
//! inputs) is left out and named in [`Merged::skipped`]; one that shares
//! only some is refused, since its counts cannot be split.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    capability::Cap,
    load::Loaded,
    profile::{CapCoverage, Class, Coverage, Profile, Subject, SubjectKind},
};

/// How many executables coverage keeps per capability.
pub const MAX_EXECUTABLES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge")]
    Empty,
    #[error("cannot merge {other} with {first}: {reason}")]
    Incompatible {
        first: String,
        other: String,
        reason: String,
    },
    #[error(
        "cannot merge {other}: it holds container {key}, which {first} holds too, and others \
         that it does not; merge the original profiles instead"
    )]
    Overlap {
        first: String,
        other: String,
        key: String,
    },
}

/// A merge, and the inputs left out because they were in it already.
#[derive(Debug)]
pub struct Merged {
    pub profile: Profile,
    pub skipped: Vec<Skipped>,
}

/// An input left out of a merge: every observation it holds came in
/// through `included_by` already.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub source: String,
    pub included_by: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is already included (through {}); not counted again",
            self.source, self.included_by
        )
    }
}

/// What identifies one observation: its container's id, else its cgroup
/// (a `run`'s is unique to the run). None when the subject has neither.
fn observation_key(subject: &Subject) -> Option<String> {
    subject.id.clone().or_else(|| subject.cgroup.clone())
}

/// The keys of every observation `profile` holds (several for a merge).
fn observation_keys(profile: &Profile) -> Vec<String> {
    match &profile.coverage {
        Some(c) if !c.subjects.is_empty() => {
            c.subjects.iter().filter_map(observation_key).collect()
        }
        _ => observation_key(&profile.subject).into_iter().collect(),
    }
}

/// `inputs` without those whose observations another input holds too
/// (all of them: the same file twice, or one of a merge's own inputs). Of
/// two that hold the same, the first stays.
fn distinct(inputs: &[Loaded]) -> Result<(Vec<&Loaded>, Vec<Skipped>), MergeError> {
    let keys: Vec<BTreeSet<String>> = inputs
        .iter()
        .map(|i| observation_keys(&i.profile).into_iter().collect())
        .collect();
    let holder = |i: usize| {
        (0..inputs.len()).find(|&j| {
            j != i
                && !keys[i].is_empty()
                && keys[i].is_subset(&keys[j])
                && (keys[i] != keys[j] || j < i)
        })
    };
    let (mut kept, mut skipped) = (vec![], vec![]);
    let mut seen: BTreeMap<&String, &str> = BTreeMap::new();
    for (i, input) in inputs.iter().enumerate() {
        if let Some(j) = holder(i) {
            skipped.push(Skipped {
                source: input.source.clone(),
                included_by: inputs[j].source.clone(),
            });
            continue;
        }
        if let Some((key, first)) = keys[i].iter().find_map(|k| seen.get(k).map(|f| (k, *f))) {
            return Err(MergeError::Overlap {
                first: first.to_owned(),
                other: input.source.clone(),
                key: crate::profile::short_id(key),
            });
        }
        seen.extend(keys[i].iter().map(|k| (k, input.source.as_str())));
        kept.push(input);
    }
    Ok((kept, skipped))
}

/// What a profile's classes mean: which classes its backend could see, and
/// whether checks were classified at all.
#[derive(Debug, PartialEq, Eq)]
struct Semantics {
    unobservable: BTreeSet<Class>,
    classified: bool,
}

impl Semantics {
    fn of(profile: &Profile) -> Self {
        Self {
            unobservable: profile.observation.unobservable.iter().copied().collect(),
            classified: !profile.observation.is_uncalibrated(),
        }
    }

    fn describe(&self, backend: &str) -> String {
        let mut parts = vec![];
        if self.unobservable.is_empty() {
            parts.push(format!("{backend} sees every class"));
        } else {
            let blind: Vec<String> = self
                .unobservable
                .iter()
                .map(|c| c.as_str().to_owned())
                .collect();
            parts.push(format!("{backend} cannot see {}", blind.join(", ")));
        }
        if !self.classified {
            parts.push("its checks were not classified".to_owned());
        }
        parts.join(" and ")
    }
}

/// Merges `inputs` (at least one) into one profile with coverage, each
/// observation counted once.
pub fn merge(inputs: &[Loaded]) -> Result<Merged, MergeError> {
    let (inputs, skipped) = distinct(inputs)?;
    let profile = merge_distinct(&inputs)?;
    Ok(Merged { profile, skipped })
}

fn merge_distinct(inputs: &[&Loaded]) -> Result<Profile, MergeError> {
    let (first, rest) = inputs.split_first().ok_or(MergeError::Empty)?;
    let semantics = Semantics::of(&first.profile);
    for other in rest {
        let theirs = Semantics::of(&other.profile);
        if theirs != semantics {
            return Err(MergeError::Incompatible {
                first: first.source.clone(),
                other: other.source.clone(),
                reason: format!(
                    "its backend {} but {}'s {}; merge profiles whose backends see the same classes",
                    theirs.describe(&other.profile.observation.backend),
                    first.source,
                    semantics.describe(&first.profile.observation.backend),
                ),
            });
        }
    }

    let mut merged = first.profile.clone();
    for other in rest {
        merged.merge(&other.profile);
    }
    merged.generator = format!("capprof {}", env!("CARGO_PKG_VERSION"));
    merged.proof = None;

    let mut backends: Vec<&str> = vec![];
    for input in inputs {
        let backend = input.profile.observation.backend.as_str();
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    merged.observation.backend = backends.join(",");

    let mut coverage = Coverage::default();
    for input in inputs {
        add_coverage(&mut coverage, &input.profile);
    }
    merged.subject = common_subject(&coverage.subjects);
    merged.coverage = Some(coverage);
    Ok(merged)
}

/// Adds one input's observations to `coverage`; a merged input counts for
/// as many observations as it stands for.
fn add_coverage(coverage: &mut Coverage, profile: &Profile) {
    let theirs = profile.coverage.as_ref();
    coverage.profiles = coverage
        .profiles
        .saturating_add(theirs.map_or(1, |c| c.profiles));
    match theirs {
        Some(c) if !c.subjects.is_empty() => coverage.subjects.extend(c.subjects.iter().cloned()),
        _ => coverage.subjects.push(profile.subject.clone()),
    }
    for usage in &profile.capabilities {
        let before = theirs.and_then(|c| c.capabilities.get(&usage.name));
        let entry = coverage.capabilities.entry(usage.name).or_default();
        entry.seen_in = entry
            .seen_in
            .saturating_add(before.map_or(1, |b| b.seen_in));
        let mut executables: BTreeSet<String> = entry.executables.drain(..).collect();
        if let Some(b) = before {
            executables.extend(b.executables.iter().cloned());
        }
        executables.extend(
            usage
                .evidence
                .iter()
                .map(|e| e.exe.clone().unwrap_or_else(|| e.comm.clone())),
        );
        entry.executables = executables.into_iter().take(MAX_EXECUTABLES).collect();
    }
}

/// The subject of a merge: what all the inputs' subjects share. `kind` is
/// `merged` when they differ.
fn common_subject(subjects: &[Subject]) -> Subject {
    fn same<T: PartialEq + Clone>(mut values: impl Iterator<Item = T>) -> Option<T> {
        let first = values.next()?;
        values.all(|v| v == first).then_some(first)
    }
    let all = || subjects.iter();
    Subject {
        kind: same(all().map(|s| s.kind.clone())).unwrap_or(SubjectKind::Merged),
        runtime: same(all().map(|s| s.runtime.clone())).flatten(),
        id: same(all().map(|s| s.id.clone())).flatten(),
        name: same(all().map(|s| s.name.clone())).flatten(),
        image: same(all().map(|s| s.image.clone())).flatten(),
        cgroup: same(all().map(|s| s.cgroup.clone())).flatten(),
        command: same(all().map(|s| s.command.clone())).flatten(),
        capabilities: same(all().map(|s| s.capabilities.clone())).flatten(),
        run: same(all().map(|s| s.run.clone())).flatten(),
        k8s: same(all().map(|s| s.k8s.clone())).flatten(),
    }
}

/// A one-line summary of a merge, for stderr.
pub fn summary(profile: &Profile) -> String {
    let m = profile.coverage.as_ref().map_or(1, |c| c.profiles);
    let allow: Vec<String> = profile.allowlist.iter().map(Cap::to_string).collect();
    let partial: Vec<String> = profile
        .coverage
        .iter()
        .flat_map(|c| &c.capabilities)
        .filter(|(cap, cov)| cov.seen_in < m && profile.allowlist.contains(cap))
        .map(|(cap, cov)| format!("{cap} in {} of {m}", cov.seen_in))
        .collect();
    let mut line = format!(
        "merged {m} profiles: allowlist {}",
        if allow.is_empty() {
            "(empty)".to_owned()
        } else {
            allow.join(" ")
        }
    );
    if !partial.is_empty() {
        line.push_str(&format!("; seen in only some: {}", partial.join(", ")));
    }
    line
}

/// Coverage per capability, for readers: `seen_in` of M.
pub fn coverage_of(profile: &Profile) -> BTreeMap<Cap, (u64, u64)> {
    let Some(coverage) = &profile.coverage else {
        return BTreeMap::new();
    };
    coverage
        .capabilities
        .iter()
        .map(|(cap, CapCoverage { seen_in, .. })| (*cap, (*seen_in, coverage.profiles)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        observation::{Kind, Phase, Verdict},
        profile::{Evidence, Observation, Observations, Proof},
    };

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    /// A profile in which each `(capability, exe)` was required once.
    fn observed(name: &str, caps: &[(&str, &str)]) -> Loaded {
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (c, exe) in caps {
            obs.add_count(
                cap(c),
                (Verdict::Granted, Kind::Audit, Phase::Workload),
                1,
                (t, t),
            );
            obs.add_evidence(
                cap(c),
                Phase::Workload,
                Evidence {
                    comm: exe.rsplit('/').next().unwrap().to_owned(),
                    exe: Some((*exe).to_owned()),
                    syscall: None,
                    pid: 1,
                    uid: 0,
                    verdict: Verdict::Granted,
                    class: Class::Required,
                    call_site: None,
                    user_ns: Default::default(),
                },
            );
        }
        let subject = Subject {
            kind: "container".into(),
            id: Some(format!("{name:0>64}")),
            name: Some(name.into()),
            image: Some("web:1".into()),
            ..Default::default()
        };
        let observation = Observation {
            backend: "tp_btf".into(),
            classification: "call-site".into(),
            ..Default::default()
        };
        Loaded::new(
            format!("{name}.json"),
            obs.into_profile(subject, observation),
        )
    }

    #[test]
    fn union_with_coverage() {
        let a = observed(
            "web-1",
            &[("CHOWN", "/bin/chown"), ("SETUID", "/usr/sbin/nginx")],
        );
        let b = observed("web-2", &[("SETUID", "/usr/sbin/nginx")]);
        let mut c = observed("web-3", &[("SETUID", "/usr/sbin/nginx-debug")]);
        c.profile.proof = Some(Proof {
            sufficient: true,
            ..Default::default()
        });
        let merged = merge(&[a, b, c]).unwrap().profile;
        assert_eq!(merged.allowlist, [cap("CHOWN"), cap("SETUID")]);
        assert_eq!(merged.proof, None, "a proof is for one allowlist");
        let coverage = merged.coverage.as_ref().unwrap();
        assert_eq!(coverage.profiles, 3);
        let names: Vec<_> = coverage.subjects.iter().map(|s| s.name.clone()).collect();
        assert_eq!(
            names,
            [
                Some("web-1".into()),
                Some("web-2".into()),
                Some("web-3".into())
            ]
        );
        assert_eq!(coverage.capabilities[&cap("CHOWN")].seen_in, 1);
        let setuid = &coverage.capabilities[&cap("SETUID")];
        assert_eq!(setuid.seen_in, 3);
        assert_eq!(
            setuid.executables,
            ["/usr/sbin/nginx", "/usr/sbin/nginx-debug"]
        );
        // What the subjects share stays; what differs goes.
        assert_eq!(merged.subject.kind, SubjectKind::Container);
        assert_eq!(merged.subject.image.as_deref(), Some("web:1"));
        assert_eq!(merged.subject.name, None);
        assert_eq!(
            summary(&merged),
            "merged 3 profiles: allowlist CAP_CHOWN CAP_SETUID; seen in only some: CAP_CHOWN in 1 of 3"
        );
        // The result is a valid profile, and reads back the same.
        let back = Profile::from_json("merged.json", merged.to_json().as_bytes()).unwrap();
        assert_eq!(back, merged);
    }

    #[test]
    fn merging_merged_profiles_counts_every_observation() {
        let ab = merge(&[
            observed("a", &[("CHOWN", "/bin/chown")]),
            observed("b", &[("CHOWN", "/bin/chown")]),
        ])
        .unwrap()
        .profile;
        let c = observed("c", &[("CHOWN", "/bin/chown"), ("KILL", "/bin/kill")]);
        let all = merge(&[Loaded::new("ab.json", ab), c]).unwrap().profile;
        let coverage = all.coverage.unwrap();
        assert_eq!(coverage.profiles, 3);
        assert_eq!(coverage.subjects.len(), 3);
        assert_eq!(coverage.capabilities[&cap("CHOWN")].seen_in, 3);
        assert_eq!(coverage.capabilities[&cap("KILL")].seen_in, 1);
    }

    #[test]
    fn refuses_different_semantics() {
        let a = observed("a", &[("CHOWN", "/bin/chown")]);
        let mut lsm = observed("b", &[("CHOWN", "/bin/chown")]);
        lsm.profile.observation.backend = "lsm".into();
        lsm.profile.observation.unobservable = vec![Class::Denied, Class::Advisory];
        let err = merge(&[a.clone(), lsm]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot merge b.json with a.json: its backend lsm cannot see denied, advisory \
             but a.json's tp_btf sees every class; merge profiles whose backends see the same classes"
        );

        let mut raw = observed("c", &[("CHOWN", "/bin/chown")]);
        raw.profile.observation.classification =
            crate::profile::ClassificationMethod::Uncalibrated.to_string();
        let err = merge(&[a.clone(), raw]).unwrap_err();
        assert!(err.to_string().contains("not classified"), "{err}");

        // Backends that see the same classes merge.
        let mut fexit = observed("d", &[("KILL", "/bin/kill")]);
        fexit.profile.observation.backend = "fexit".into();
        let merged = merge(&[a, fexit]).unwrap().profile;
        assert_eq!(merged.observation.backend, "tp_btf,fexit");
        assert!(matches!(merge(&[]), Err(MergeError::Empty)));
    }

    #[test]
    fn untrusted_coverage_is_checked() {
        let merged = merge(&[observed("a", &[("CHOWN", "/bin/chown")])])
            .unwrap()
            .profile;
        let json = merged.to_json();
        let bad = json.replace("\"seen_in\": 1", "\"seen_in\": 7");
        assert_ne!(bad, json);
        let err = Profile::from_json("bad.json", bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("seen_in 7"), "{err}");
    }

    /// The same observation twice, or a merge with one of its own inputs,
    /// counts once, and says so.
    #[test]
    fn each_observation_counts_once() {
        let a = observed("a", &[("CHOWN", "/bin/chown")]);
        let b = observed("b", &[("CHOWN", "/bin/chown"), ("KILL", "/bin/kill")]);
        let twice = merge(&[a.clone(), a.clone()]).unwrap();
        assert_eq!(twice.profile.coverage.as_ref().unwrap().profiles, 1);
        assert_eq!(twice.profile.capabilities[0].granted, 1);
        assert_eq!(
            twice.skipped,
            [Skipped {
                source: "a.json".into(),
                included_by: "a.json".into()
            }]
        );
        let ab = Loaded::new("ab.json", merge(&[a.clone(), b.clone()]).unwrap().profile);
        let again = merge(&[ab.clone(), a.clone()]).unwrap();
        let coverage = again.profile.coverage.as_ref().unwrap();
        assert_eq!(coverage.profiles, 2);
        assert_eq!(coverage.capabilities[&cap("CHOWN")].seen_in, 2);
        assert_eq!(
            again.skipped[0].to_string(),
            "a.json is already included (through ab.json); not counted again"
        );
        // A merge read back from its JSON remembers what it holds.
        let ab_back = Loaded::parse("ab.json", ab.profile.to_json().as_bytes()).unwrap();
        let first = merge(&[a.clone(), ab_back]).unwrap();
        assert_eq!(first.profile.coverage.as_ref().unwrap().profiles, 2);
        assert_eq!(first.skipped[0].included_by, "ab.json");
        let c = observed("c", &[("KILL", "/bin/kill")]);
        let ac = Loaded::new("ac.json", merge(&[a, c]).unwrap().profile);
        let err = merge(&[ab, ac]).unwrap_err();
        assert!(matches!(err, MergeError::Overlap { .. }), "{err}");
    }
}
