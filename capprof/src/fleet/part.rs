//! The two conversions the fleet rests on: a node's workload profile into
//! its part of the object, and the object's parts back into one profile
//! that every command accepts (export, report, diff, verify).
//!
//! The parts carry the counts and classes of every capability, the
//! conditional, kept and transient findings and what made the node's view
//! partial; they leave out the evidence (programs, call sites), which stays
//! on the node that saw it. The fleet profile is then the existing
//! [`merge`] of one profile per node, so "seen in N pods on M nodes" and
//! every class rule are the same code as `capprof merge`.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime},
};

use super::object::{
    CapabilityProfile, Classes, NodePart, PartCapability, PartConditional, PartKept, PartTransient,
    ProfileStatus, ShortCap, StatusCoverage, Warning, WarningKind, short,
};
use crate::{
    capability::Cap,
    caveat::Caveat,
    conditional::{Conditional, Findings, Kept, Transient},
    cri::workload::WorkloadKey,
    load::Loaded,
    merge::{self, MergeError},
    profile::{
        self, CapCoverage, CapUsage, Coverage, K8sRef, Observation, Owner, Partial, Profile,
        Subject, SubjectKind,
    },
};

/// Longest warning message the CRD admits.
const MAX_MESSAGE: usize = 1024;

/// This node's part, from its daemon's profile of the workload container
/// (merged over the node's pods, `cri::workload::workload_profile`).
pub fn node_part(node: &str, key: &WorkloadKey, profile: &Profile) -> NodePart {
    let pods = profile.coverage.as_ref().map_or(1, |c| c.profiles.max(1));
    let seen_in = |cap: Cap| {
        profile
            .coverage
            .as_ref()
            .and_then(|c| c.capabilities.get(&cap))
            .map_or(pods, |c| c.seen_in.clamp(1, pods))
    };
    let capabilities = profile
        .capabilities
        .iter()
        .filter(|u| !u.by_class.is_empty())
        .map(|u| PartCapability {
            capability: ShortCap(u.name),
            granted: u.granted,
            denied: u.denied,
            silent_granted: u.silent_granted,
            ungrantable: u.ungrantable,
            by_class: u.by_class.clone(),
            pods: seen_in(u.name),
        })
        .collect();
    // A time that does not parse (a profile made before its first check)
    // is now: the part must be valid for the API server.
    let time = |t: &str| match humantime::parse_rfc3339_weak(t) {
        Ok(_) => t.to_owned(),
        Err(_) => profile::rfc3339(SystemTime::now()),
    };
    NodePart {
        node: node.to_owned(),
        first_observed: time(&profile.observation.start),
        last_observed: time(&profile.observation.end),
        pods,
        complete: profile.observation.partial.is_none(),
        backend: profile.observation.backend.clone(),
        classification: profile.observation.classification.clone(),
        unobservable: profile.observation.unobservable.clone(),
        lost_records: profile.observation.lost_records,
        allowlist: short(&profile.allowlist),
        capabilities,
        conditional: profile
            .conditional
            .iter()
            .map(|c| PartConditional {
                capability: ShortCap(c.capability),
                operation: c.operation.clone(),
                sysctl: c.sysctl,
                value: c.value.clone(),
                port: c.port,
                without_capability: c.without_capability,
            })
            .collect(),
        kept: profile
            .kept
            .iter()
            .map(|k| PartKept {
                capability: ShortCap(k.capability),
                sets: k.sets.iter().copied().collect(),
            })
            .collect(),
        transient: profile
            .transient
            .iter()
            .map(|t| PartTransient {
                capability: ShortCap(t.capability),
                // Within the CRD's limits.
                lost_at_exec_of: t
                    .lost_at_exec_of
                    .iter()
                    .take(16)
                    .map(|p| p.chars().take(4096).collect())
                    .collect(),
            })
            .collect(),
        evidence: format!(
            "node {node}: capprof profile --workload {}",
            WorkloadKey {
                container: key.container.clone(),
                ..key.clone()
            }
        ),
        warnings: warnings_of(node, profile),
    }
}

/// What makes one node's view less than certain, one warning per kind:
/// the caveats the fleet object has a kind for.
fn warnings_of(node: &str, profile: &Profile) -> Vec<Warning> {
    Caveat::of(profile)
        .into_iter()
        .filter_map(|caveat| {
            let kind = match caveat {
                Caveat::Partial { .. } => WarningKind::Partial,
                Caveat::Uncalibrated => WarningKind::Uncalibrated,
                Caveat::Ungrantable(_) => WarningKind::Ungrantable,
                Caveat::Conditional(_) => WarningKind::Conditional,
                Caveat::Transient(_) => WarningKind::Transient,
                _ => return None,
            };
            Some(Warning {
                kind,
                node: Some(node.to_owned()),
                message: caveat.to_string().chars().take(MAX_MESSAGE).collect(),
            })
        })
        .collect()
}

/// Whether a part is older than `stale_after` at `now`: its node has not
/// seen the workload since, and it counts no more.
pub fn is_stale(part: &NodePart, now: SystemTime, stale_after: Duration) -> bool {
    humantime::parse_rfc3339_weak(&part.last_observed)
        .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age > stale_after))
}

/// The fleet-wide profile of `object`, from its parts that are not stale.
/// None when no part is left.
pub fn fleet_profile(
    object: &CapabilityProfile,
    now: SystemTime,
    stale_after: Duration,
) -> Result<Option<Profile>, MergeError> {
    let key = object.key();
    let inputs: Vec<Loaded> = object
        .status
        .nodes
        .iter()
        .filter(|p| !is_stale(p, now, stale_after))
        .map(|p| Loaded::new(format!("node {}", p.node), part_profile(&key, p)))
        .collect();
    if inputs.is_empty() {
        return Ok(None);
    }
    let mut merged = merge::merge(&inputs)?.profile;
    merged.subject = workload_subject(&key, None);
    Ok(Some(merged))
}

fn workload_subject(key: &WorkloadKey, node: Option<&str>) -> Subject {
    Subject {
        kind: SubjectKind::Workload,
        name: key.container.clone(),
        // The node whose part this is, for the coverage's list of subjects.
        id: node.map(|n| format!("node/{n}")),
        k8s: Some(K8sRef {
            namespace: key.namespace.clone(),
            owner: Some(Owner {
                kind: key.kind.clone(),
                name: key.name.clone(),
                derived_from: "capabilityprofile".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One node's part as a profile of its pods, with coverage, so that
/// [`merge`] adds the nodes up as it adds up any merged profiles.
fn part_profile(key: &WorkloadKey, part: &NodePart) -> Profile {
    let usage = |c: &PartCapability| CapUsage {
        name: c.capability.0,
        number: c.capability.0.number(),
        class: profile::usage_class(&c.by_class),
        granted: c.granted,
        denied: c.denied,
        by_class: c.by_class.clone(),
        silent_granted: c.silent_granted,
        ungrantable: c.ungrantable,
        first_seen: part.first_observed.clone(),
        last_seen: part.last_observed.clone(),
        evidence: vec![],
    };
    let subject = workload_subject(key, Some(&part.node));
    let coverage = Coverage {
        profiles: part.pods,
        subjects: vec![subject.clone()],
        capabilities: part
            .capabilities
            .iter()
            .map(|c| {
                let cov = CapCoverage {
                    seen_in: c.pods,
                    executables: vec![],
                };
                (c.capability.0, cov)
            })
            .collect(),
    };
    let observation = Observation {
        start: part.first_observed.clone(),
        end: part.last_observed.clone(),
        backend: part.backend.clone(),
        classification: part.classification.clone(),
        lost_records: part.lost_records,
        unclassified_checks: 0,
        recursion_misses: None,
        unobservable: part.unobservable.clone(),
        partial: (!part.complete).then(|| Partial {
            workload_started: None,
            recording_started: part.first_observed.clone(),
        }),
    };
    let findings = Findings {
        conditional: part
            .conditional
            .iter()
            .map(|c| Conditional {
                capability: c.capability.0,
                operation: c.operation.clone(),
                sysctl: c.sysctl,
                value: c.value.clone(),
                port: c.port,
                evidence: vec![],
                without_capability: c.without_capability,
            })
            .collect(),
        kept: part
            .kept
            .iter()
            .map(|k| Kept {
                capability: k.capability.0,
                sets: k.sets.iter().copied().collect(),
                evidence: vec![],
            })
            .collect(),
        transient: part
            .transient
            .iter()
            .map(|t| Transient {
                capability: t.capability.0,
                evidence: vec![],
                lost_at_exec_of: t.lost_at_exec_of.clone(),
            })
            .collect(),
    };
    let capabilities = part.capabilities.iter().map(usage).collect();
    let mut profile = Profile::assemble(subject, observation, capabilities, vec![], findings);
    profile.generator = format!("capprof {} (fleet)", env!("CARGO_PKG_VERSION"));
    profile.coverage = Some(coverage);
    profile
}

/// The merged fields of the status, from the parts that are not stale;
/// the parts themselves are left as they are. Stale parts are named in a
/// warning.
pub fn summarize(
    object: &CapabilityProfile,
    now: SystemTime,
    stale_after: Duration,
) -> Result<ProfileStatus, MergeError> {
    let mut status = ProfileStatus {
        nodes: object.status.nodes.clone(),
        proof: Some("observed".into()),
        ..Default::default()
    };
    let live: Vec<&NodePart> = object
        .status
        .nodes
        .iter()
        .filter(|p| !is_stale(p, now, stale_after))
        .collect();
    let mut warnings: BTreeSet<Warning> = live.iter().flat_map(|p| p.warnings.clone()).collect();
    for part in object
        .status
        .nodes
        .iter()
        .filter(|p| is_stale(p, now, stale_after))
    {
        warnings.insert(Warning {
            kind: WarningKind::Stale,
            node: Some(part.node.clone()),
            message: format!(
                "node {} has not seen the workload since {}: its part is left out and is removed at the next write",
                part.node, part.last_observed
            ),
        });
    }
    status.warnings = warnings.into_iter().take(64).collect();
    status.nodes_seen = Some(live.len() as u64);
    let Some(fleet) = fleet_profile(object, now, stale_after)? else {
        status.pods_seen = Some(0);
        return Ok(status);
    };
    let coverage = merge::coverage_of(&fleet);
    status.pods_seen = Some(fleet.coverage.as_ref().map_or(0, |c| c.profiles));
    let nodes_with = |cap: Cap| {
        live.iter()
            .filter(|p| p.capabilities.iter().any(|c| c.capability.0 == cap))
            .count() as u64
    };
    status.coverage = fleet
        .capabilities
        .iter()
        .map(|u| StatusCoverage {
            capability: ShortCap(u.name),
            pods: coverage.get(&u.name).map_or(0, |(n, _)| *n),
            nodes: nodes_with(u.name),
        })
        .collect();
    status.allowlist = short(&fleet.allowlist);
    status.classes = classes_of(&fleet);
    Ok(status)
}

fn classes_of(p: &Profile) -> Classes {
    let caps = |it: &mut dyn Iterator<Item = Cap>| {
        let set: BTreeSet<Cap> = it.collect();
        short(&set.into_iter().collect::<Vec<_>>())
    };
    Classes {
        required: short(&p.required),
        denied: short(&p.denied),
        silent: short(&p.silent),
        borrowed: short(&p.borrowed),
        advisory: short(&p.advisory),
        ungrantable: short(&p.ungrantable),
        conditional: caps(&mut p.conditional.iter().map(|c| c.capability)),
        kept: caps(&mut p.kept.iter().map(|k| k.capability)),
        transient: caps(&mut p.transient.iter().map(|t| t.capability)),
    }
}

/// The part with its times left out: what decides whether a node has
/// anything new to write.
pub fn content(part: &NodePart) -> NodePart {
    NodePart {
        first_observed: String::new(),
        last_observed: String::new(),
        ..part.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        cri::{owner, workload::workload_profile},
        export::{self, Format},
        fleet::object::{Metadata, Spec, WorkloadRef},
        observer::{Kind, Phase, Verdict},
        profile::{Observation, Observations},
    };

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn pod(name: &str, caps: &[&str]) -> Profile {
        let mut obs = Observations::default();
        let t = SystemTime::now();
        for c in caps {
            let cap = format!("CAP_{c}").parse().unwrap();
            obs.add_count(
                cap,
                (Verdict::Granted, Kind::Audit, Phase::Workload),
                2,
                (t, t),
            );
        }
        let observation = Observation {
            backend: "tp_btf".into(),
            classification: "call-site".into(),
            ..Default::default()
        };
        let labels: BTreeMap<String, String> = [("pod-template-hash", "7d9f8c6b5")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut p = obs.into_profile(Subject::default(), observation);
        p.subject = Subject {
            kind: "pod-container".into(),
            id: Some(format!("{name}-app")),
            name: Some("app".into()),
            k8s: Some(K8sRef {
                namespace: "shop".into(),
                pod: Some(name.into()),
                pod_uid: Some(format!("uid-{name}")),
                owner: owner::derive("shop", name, &labels).ok(),
                labels,
            }),
            ..Default::default()
        };
        p
    }

    fn key() -> WorkloadKey {
        "shop/Deployment/web/app".parse().unwrap()
    }

    fn part_of(node: &str, pods: &[Profile]) -> NodePart {
        let merged = workload_profile(&key(), pods).unwrap();
        node_part(node, &key(), &merged)
    }

    fn object(parts: Vec<NodePart>) -> CapabilityProfile {
        CapabilityProfile {
            api_version: crate::fleet::object::API_VERSION.into(),
            kind: crate::fleet::object::KIND.into(),
            metadata: Metadata {
                name: "deployment.web.app".into(),
                namespace: "shop".into(),
                resource_version: None,
            },
            spec: Spec {
                workload: WorkloadRef {
                    kind: "Deployment".into(),
                    name: "web".into(),
                },
                container: "app".into(),
            },
            status: ProfileStatus {
                nodes: parts,
                ..Default::default()
            },
        }
    }

    fn two_nodes() -> CapabilityProfile {
        let a = part_of(
            "node-a",
            &[
                pod("web-7d9f8c6b5-aaaaa", &["CHOWN", "NET_BIND_SERVICE"]),
                pod("web-7d9f8c6b5-bbbbb", &["CHOWN"]),
            ],
        );
        let b = part_of(
            "node-b",
            &[pod("web-7d9f8c6b5-ccccc", &["CHOWN", "SETUID"])],
        );
        object(vec![a, b])
    }

    #[test]
    fn parts_of_two_nodes_merge_into_one_profile() {
        let obj = two_nodes();
        obj.check().unwrap();
        // What the API server hands back reads as the same object.
        let json = serde_json::to_string(&obj).unwrap();
        assert_eq!(
            serde_json::from_str::<CapabilityProfile>(&json).unwrap(),
            obj
        );

        let fleet = fleet_profile(&obj, SystemTime::now(), WEEK)
            .unwrap()
            .unwrap();
        let caps = |names: &[&str]| -> Vec<Cap> {
            names
                .iter()
                .map(|n| format!("CAP_{n}").parse().unwrap())
                .collect()
        };
        let allowlist: BTreeSet<Cap> = fleet.allowlist.iter().copied().collect();
        let union: BTreeSet<Cap> = caps(&["CHOWN", "SETUID", "NET_BIND_SERVICE"])
            .into_iter()
            .collect();
        assert_eq!(allowlist, union);
        assert_eq!(
            fleet.capabilities[0].granted, 6,
            "2 checks in each of 3 pods"
        );
        let coverage = fleet.coverage.as_ref().unwrap();
        assert_eq!(coverage.profiles, 3);
        // Every command reads it: it is a valid profile, and k8s-patch
        // knows which object to patch.
        Profile::from_json("fleet.json", fleet.to_json().as_bytes()).unwrap();
        let patch = export::render(&fleet, Format::K8sPatch).unwrap();
        assert!(patch.contains("patch deployment web"), "{patch}");
        assert!(
            patch.contains("NET_BIND_SERVICE") && patch.contains("SETUID"),
            "{patch}"
        );

        let status = summarize(&obj, SystemTime::now(), WEEK).unwrap();
        assert_eq!(status.pods_seen, Some(3));
        assert_eq!(status.nodes_seen, Some(2));
        let cov: BTreeMap<&str, (u64, u64)> = status
            .coverage
            .iter()
            .map(|c| (c.capability.0.short_name(), (c.pods, c.nodes)))
            .collect();
        assert_eq!(cov["CHOWN"], (3, 2));
        assert_eq!(cov["NET_BIND_SERVICE"], (1, 1));
        assert_eq!(cov["SETUID"], (1, 1));
        assert_eq!(status.nodes.len(), 2, "the parts stay as they are");
    }

    #[test]
    fn a_stale_part_no_longer_counts() {
        let mut obj = two_nodes();
        let long_ago = SystemTime::now() - 2 * WEEK;
        obj.status.nodes[1].last_observed = crate::profile::rfc3339(long_ago);
        let fleet = fleet_profile(&obj, SystemTime::now(), WEEK)
            .unwrap()
            .unwrap();
        assert!(!fleet.allowlist.iter().any(|c| c.short_name() == "SETUID"));
        let status = summarize(&obj, SystemTime::now(), WEEK).unwrap();
        assert_eq!(status.nodes_seen, Some(1));
        assert!(
            status
                .warnings
                .iter()
                .any(|w| w.kind == WarningKind::Stale && w.node.as_deref() == Some("node-b")),
            "{:?}",
            status.warnings
        );
        obj.status.nodes[0].last_observed = crate::profile::rfc3339(long_ago);
        assert_eq!(fleet_profile(&obj, SystemTime::now(), WEEK).unwrap(), None);
    }

    #[test]
    fn content_ignores_the_times() {
        let obj = two_nodes();
        let mut later = obj.status.nodes[0].clone();
        later.last_observed = crate::profile::rfc3339(SystemTime::now() + WEEK);
        assert_eq!(content(&later), content(&obj.status.nodes[0]));
        later.pods += 1;
        assert_ne!(content(&later), content(&obj.status.nodes[0]));
    }

    #[test]
    fn invalid_objects_are_refused() {
        let mut obj = two_nodes();
        obj.status.nodes[1].node = "node-a".into();
        assert!(obj.check().unwrap_err().reason.contains("two parts"));
        let mut obj = two_nodes();
        obj.status.nodes[0].capabilities[0].pods = 99;
        assert!(
            obj.check()
                .unwrap_err()
                .reason
                .contains("seen in 99 of 2 pods")
        );
        let mut obj = two_nodes();
        obj.spec.workload.kind = "Secret".into();
        assert!(obj.check().is_err());
    }
}
