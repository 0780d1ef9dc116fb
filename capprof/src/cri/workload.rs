//! Workload profiles: the containers of one name across the pods of one
//! owner, in one namespace, merged with coverage ("seen in N of M pods").
//!
//! Each pod counts once: the profiles of one pod's container (a container
//! the kubelet restarted has a new id, so a new profile) are added up
//! first, then the pods are merged by [`crate::merge`], whose coverage then
//! counts pods. Sandbox (pause) containers are not workloads.

use std::{collections::BTreeMap, fmt, str::FromStr};

use super::owner::{self, canonical_kind};
use crate::{
    load::Loaded,
    merge::{self, MergeError},
    profile::{K8sRef, Owner, Profile, SubjectKind},
};

/// `NAMESPACE/KIND/NAME[/CONTAINER]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// None: the workload's only container (an error if it has several).
    pub container: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(
        "{0:?} is not a workload: give NAMESPACE/KIND/NAME or NAMESPACE/KIND/NAME/CONTAINER (KIND one of {kinds})",
        kinds = owner::KINDS.join(", ")
    )]
    BadKey(String),
    #[error("{key}: no such workload (no pod of it was profiled)")]
    NotFound { key: String },
    #[error("{key} has several containers ({}): name one, as {key}/CONTAINER", containers.join(", "))]
    SeveralContainers {
        key: String,
        containers: Vec<String>,
    },
    #[error("{key}: {source}")]
    Merge {
        key: String,
        #[source]
        source: MergeError,
    },
}

impl FromStr for WorkloadKey {
    type Err = WorkloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WorkloadError::BadKey(s.chars().take(300).collect());
        let parts: Vec<&str> = s.split('/').collect();
        let (namespace, kind, name, container) = match parts.as_slice() {
            [ns, kind, name] => (ns, kind, name, None),
            [ns, kind, name, container] => (ns, kind, name, Some(*container)),
            _ => return Err(bad()),
        };
        let kind = canonical_kind(kind).ok_or_else(bad)?;
        if !super::names::is_dns_label(namespace)
            || !super::names::is_dns_subdomain(name)
            || container.is_some_and(|c| !super::names::is_dns_label(c))
        {
            return Err(bad());
        }
        Ok(Self {
            namespace: namespace.to_string(),
            kind: kind.to_owned(),
            name: name.to_string(),
            container: container.map(str::to_owned),
        })
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)?;
        if let Some(c) = &self.container {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

impl WorkloadKey {
    /// The key of a `pod-container` profile's workload; None for anything
    /// else, or a pod whose owner could not be derived.
    pub fn of(profile: &Profile) -> Option<Self> {
        let subject = &profile.subject;
        if subject.kind != SubjectKind::PodContainer {
            return None;
        }
        let k8s = subject.k8s.as_ref()?;
        let owner = k8s.owner.as_ref()?;
        Some(Self {
            namespace: k8s.namespace.clone(),
            kind: owner.kind.clone(),
            name: owner.name.clone(),
            container: subject.name.clone(),
        })
    }

    fn matches(&self, other: &WorkloadKey) -> bool {
        self.namespace == other.namespace
            && self.kind == other.kind
            && self.name == other.name
            && (self.container.is_none() || self.container == other.container)
    }
}

/// The workload profile for `key` out of `profiles` (any mix of
/// containers): their `pod-container` profiles of that owner and container
/// name, merged over pods.
pub fn workload_profile(key: &WorkloadKey, profiles: &[Profile]) -> Result<Profile, WorkloadError> {
    let key_text = key.to_string();
    let mine: Vec<(&Profile, WorkloadKey)> = profiles
        .iter()
        .filter_map(|p| WorkloadKey::of(p).map(|k| (p, k)))
        .filter(|(_, k)| key.matches(k))
        .collect();
    let mut containers: Vec<String> = mine
        .iter()
        .filter_map(|(_, k)| k.container.clone())
        .collect();
    containers.sort();
    containers.dedup();
    match containers.len() {
        0 => return Err(WorkloadError::NotFound { key: key_text }),
        1 => {}
        _ => {
            return Err(WorkloadError::SeveralContainers {
                key: key_text,
                containers,
            });
        }
    }
    // One profile per pod: a restarted container adds up.
    let mut by_pod: BTreeMap<String, Profile> = BTreeMap::new();
    for (profile, _) in &mine {
        let k8s = profile.subject.k8s.as_ref();
        let pod = k8s
            .and_then(|k| k.pod_uid.clone().or_else(|| k.pod.clone()))
            .unwrap_or_default();
        match by_pod.get_mut(&pod) {
            Some(earlier) => earlier.merge(profile),
            None => {
                by_pod.insert(pod, (*profile).clone());
            }
        }
    }
    let inputs: Vec<Loaded> = by_pod
        .into_iter()
        .map(|(pod, p)| {
            let name = p
                .subject
                .k8s
                .as_ref()
                .and_then(|k| k.pod.clone())
                .unwrap_or(pod);
            Loaded::new(format!("pod {name}"), p)
        })
        .collect();
    let common_labels = common_labels(inputs.iter().map(|l| &l.profile));
    let owner = mine
        .first()
        .and_then(|(p, _)| p.subject.k8s.as_ref())
        .and_then(|k| k.owner.clone())
        .unwrap_or_else(|| Owner {
            kind: key.kind.clone(),
            name: key.name.clone(),
            derived_from: String::new(),
        });
    let image = common(inputs.iter().map(|l| l.profile.subject.image.clone()));
    let runtime = common(inputs.iter().map(|l| l.profile.subject.runtime.clone()));
    let mut merged = merge::merge(&inputs)
        .map_err(|source| WorkloadError::Merge {
            key: key_text,
            source,
        })?
        .profile;
    merged.subject.kind = SubjectKind::Workload;
    merged.subject.name = containers.pop();
    merged.subject.image = image;
    merged.subject.runtime = runtime;
    merged.subject.id = None;
    merged.subject.cgroup = None;
    merged.subject.run = None;
    merged.subject.k8s = Some(K8sRef {
        namespace: key.namespace.clone(),
        pod: None,
        pod_uid: None,
        labels: common_labels,
        owner: Some(owner),
    });
    Ok(merged)
}

/// Every workload among `profiles`, one key per owner and container name.
pub fn workloads(profiles: &[Profile]) -> Vec<WorkloadKey> {
    let mut keys: Vec<WorkloadKey> = profiles.iter().filter_map(WorkloadKey::of).collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The value all items share, if they do.
fn common<T: PartialEq>(mut items: impl Iterator<Item = Option<T>>) -> Option<T> {
    let first = items.next()??;
    items.all(|i| i.as_ref() == Some(&first)).then_some(first)
}

/// The labels every pod has with the same value (so `pod-template-hash`
/// stays only while every pod is of one ReplicaSet).
fn common_labels<'a>(mut profiles: impl Iterator<Item = &'a Profile>) -> BTreeMap<String, String> {
    let labels = |p: &Profile| {
        p.subject
            .k8s
            .as_ref()
            .map(|k| k.labels.clone())
            .unwrap_or_default()
    };
    let Some(first) = profiles.next() else {
        return BTreeMap::new();
    };
    let mut kept = labels(first);
    for p in profiles {
        let theirs = labels(p);
        kept.retain(|k, v| theirs.get(k) == Some(v));
    }
    kept
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        observer::{Kind, Phase, Verdict},
        profile::{Observation, Observations, Subject},
    };

    /// A profile in which each capability was required once.
    fn observed(caps: &[&str]) -> Profile {
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for c in caps {
            obs.add_count(
                c.parse().unwrap(),
                (Verdict::Granted, Kind::Audit, Phase::Workload),
                1,
                (t, t),
            );
        }
        let observation = Observation {
            backend: "tp_btf".into(),
            classification: "call-site".into(),
            ..Default::default()
        };
        obs.into_profile(Subject::default(), observation)
    }

    fn pod_profile(
        pod: &str,
        uid: &str,
        container: &str,
        labels: &[(&str, &str)],
        caps: &[&str],
    ) -> Profile {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let owner = owner::derive("shop", pod, &labels).ok();
        let mut p = observed(caps);
        p.subject = Subject {
            kind: "pod-container".into(),
            runtime: Some("containerd".into()),
            id: Some(format!("{uid}-{container}")),
            name: Some(container.into()),
            image: Some("registry.local/web:1".into()),
            k8s: Some(K8sRef {
                namespace: "shop".into(),
                pod: Some(pod.into()),
                pod_uid: Some(uid.into()),
                labels,
                owner,
            }),
            ..Default::default()
        };
        p
    }

    #[test]
    fn keys_parse_and_print() {
        let k: WorkloadKey = "shop/deployment/web/nginx".parse().unwrap();
        assert_eq!(k.kind, "Deployment");
        assert_eq!(k.to_string(), "shop/Deployment/web/nginx");
        let k: WorkloadKey = "shop/StatefulSet/db".parse().unwrap();
        assert_eq!(k.container, None);
        for bad in [
            "",
            "shop",
            "shop/web",
            "shop/Thing/web",
            "shop/Pod/../x",
            "a/Pod/b/c/d",
            "Shop/Pod/x",
            "shop/Pod/x/",
        ] {
            let e = bad.parse::<WorkloadKey>().unwrap_err();
            assert!(matches!(e, WorkloadError::BadKey(_)), "{bad}");
        }
    }

    #[test]
    fn replicas_merge_with_pod_coverage() {
        let hash = [("pod-template-hash", "7d9f8c6b5"), ("app", "web")];
        let profiles = vec![
            pod_profile(
                "web-7d9f8c6b5-abcde",
                "u1",
                "app",
                &hash,
                &["CHOWN", "NET_BIND_SERVICE"],
            ),
            pod_profile("web-7d9f8c6b5-fghij", "u2", "app", &hash, &["CHOWN"]),
            // The same pod's container, restarted: still one pod.
            pod_profile("web-7d9f8c6b5-fghij", "u2", "app", &hash, &["CHOWN"]),
            pod_profile("web-7d9f8c6b5-fghij", "u2", "sidecar", &hash, &["NET_RAW"]),
            pod_profile(
                "db-0",
                "u3",
                "app",
                &[
                    ("controller-revision-hash", "db-1"),
                    ("statefulset.kubernetes.io/pod-name", "db-0"),
                ],
                &["SETUID"],
            ),
        ];
        let keys = workloads(&profiles);
        assert_eq!(
            keys.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "shop/Deployment/web/app",
                "shop/Deployment/web/sidecar",
                "shop/StatefulSet/db/app"
            ]
        );
        let key: WorkloadKey = "shop/Deployment/web/app".parse().unwrap();
        let w = workload_profile(&key, &profiles).unwrap();
        assert_eq!(w.subject.kind, SubjectKind::Workload);
        assert_eq!(w.subject.name.as_deref(), Some("app"));
        let k8s = w.subject.k8s.as_ref().unwrap();
        assert_eq!(k8s.pod, None);
        assert_eq!(k8s.owner.as_ref().unwrap().name, "web");
        assert_eq!(k8s.labels.get("app").map(String::as_str), Some("web"));
        let coverage = w.coverage.as_ref().unwrap();
        assert_eq!(coverage.profiles, 2);
        let seen = |cap: &str| coverage.capabilities[&cap.parse().unwrap()].seen_in;
        assert_eq!(seen("CHOWN"), 2);
        assert_eq!(seen("NET_BIND_SERVICE"), 1);
        assert!(w.subject.id.is_none());

        let e = workload_profile(&"shop/Deployment/web".parse().unwrap(), &profiles).unwrap_err();
        assert_eq!(
            e.to_string(),
            "shop/Deployment/web has several containers (app, sidecar): name one, as shop/Deployment/web/CONTAINER"
        );
        let e = workload_profile(&"shop/Deployment/api".parse().unwrap(), &profiles).unwrap_err();
        assert!(matches!(e, WorkloadError::NotFound { .. }));
        let db = workload_profile(&"shop/statefulset/db".parse().unwrap(), &profiles).unwrap();
        assert_eq!(db.coverage.unwrap().profiles, 1);
    }
}
