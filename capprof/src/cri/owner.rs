//! Which workload owns a pod, derived from the pod's labels and name alone.
//!
//! The node's CRI runtime knows a pod's labels and name, not its
//! `ownerReferences` (those live in the API server, which capprof does not
//! ask). So the owner is derived from what the controllers write into the
//! pods they make. The rules, in order:
//!
//! | labels | name | owner |
//! | --- | --- | --- |
//! | `pod-template-hash: H` | `<D>-H-<suffix>` | Deployment `<D>` (through ReplicaSet `<D>-H`) |
//! | `controller-revision-hash` and `statefulset.kubernetes.io/pod-name: P` (P = the pod's name) | `<S>-<ordinal>` | StatefulSet `<S>` |
//! | `controller-revision-hash` and `pod-template-generation` | `<DS>-<5 characters>` | DaemonSet `<DS>` |
//! | `batch.kubernetes.io/job-name: J` or `job-name: J` | | Job `J`; CronJob `<C>` when J is `<C>-<8 or more digits>` |
//! | none of these | | `Pod`: the pod itself, no controller |
//!
//! What is heuristic, and so named in [`Owner::derived_from`]:
//! - A ReplicaSet with `pod-template-hash` is taken to belong to a
//!   Deployment. A ReplicaSet made by hand with that label would be named
//!   as a Deployment that does not exist.
//! - A CronJob's Job is named `<cronjob>-<scheduled time in minutes>`; a
//!   Job made by hand whose name ends in 8 or more digits is taken for a
//!   CronJob's (`name-pattern:cronjob`).
//! - A pod with none of the labels is reported as its own owner (`Pod`),
//!   though a bare ReplicaSet, a ReplicationController or a custom
//!   controller may own it: their pods carry no label capprof could read.
//! - Labels that contradict the pod's name (a `pod-template-hash` that is
//!   not in the name, a `statefulset.kubernetes.io/pod-name` that is another
//!   pod's) derive nothing: [`OwnerError`], never a guess.

use std::collections::BTreeMap;

use crate::profile::{K8sRef, Owner};

pub const DEPLOYMENT: &str = "Deployment";
pub const STATEFULSET: &str = "StatefulSet";
pub const DAEMONSET: &str = "DaemonSet";
pub const JOB: &str = "Job";
pub const CRONJOB: &str = "CronJob";
pub const POD: &str = "Pod";

/// The owner kinds capprof derives, as written in profiles and workload
/// keys.
pub const KINDS: &[&str] = &[DEPLOYMENT, STATEFULSET, DAEMONSET, JOB, CRONJOB, POD];

const POD_TEMPLATE_HASH: &str = "pod-template-hash";
const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";
const STATEFULSET_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
const POD_TEMPLATE_GENERATION: &str = "pod-template-generation";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";
const LEGACY_JOB_NAME: &str = "job-name";

/// A CronJob's Job ends in the scheduled time, in minutes since the epoch:
/// 8 digits since 1976.
const CRONJOB_SUFFIX_MIN_DIGITS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "pod {namespace}/{pod}: its labels say {label}={value}, which its name does not fit, so its owner cannot be derived"
    )]
    Contradiction {
        namespace: String,
        pod: String,
        label: &'static str,
        value: String,
    },
    #[error(
        "pod {namespace}/{pod} has none of the labels a Deployment, StatefulSet, DaemonSet or Job gives its pods, so it has no owner to patch (label the pod, or profile its container)"
    )]
    NoController { namespace: String, pod: String },
    #[error("container {0} is not in a Kubernetes pod (it was not named through the CRI)")]
    NotAPod(String),
}

/// The owner of pod `pod` in `namespace`, from its labels and name.
pub fn derive(
    namespace: &str,
    pod: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Owner, OwnerError> {
    let label = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let contradiction = |label: &'static str, value: &str| OwnerError::Contradiction {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        label,
        value: value.to_owned(),
    };
    let owner = |kind: &str, name: &str, derived_from: &str| Owner {
        kind: kind.to_owned(),
        name: name.to_owned(),
        derived_from: derived_from.to_owned(),
    };

    if let Some(hash) = label(POD_TEMPLATE_HASH) {
        // `<deployment>-<hash>-<suffix>`: the ReplicaSet is `<deployment>-<hash>`.
        let infix = format!("-{hash}-");
        return match pod.rfind(&infix) {
            Some(at) if at > 0 && pod.len() > at + infix.len() => Ok(owner(
                DEPLOYMENT,
                &pod[..at],
                "label:pod-template-hash+name-pattern:replicaset",
            )),
            _ => Err(contradiction(POD_TEMPLATE_HASH, hash)),
        };
    }
    if label(CONTROLLER_REVISION_HASH).is_some() {
        if let Some(pod_name) = label(STATEFULSET_POD_NAME) {
            let statefulset = pod
                .rsplit_once('-')
                .filter(|(name, ordinal)| {
                    !name.is_empty()
                        && !ordinal.is_empty()
                        && ordinal.bytes().all(|b| b.is_ascii_digit())
                })
                .map(|(name, _)| name);
            return match statefulset {
                Some(name) if pod_name == pod => Ok(owner(
                    STATEFULSET,
                    name,
                    "label:statefulset.kubernetes.io/pod-name+name-pattern:ordinal",
                )),
                _ => Err(contradiction(STATEFULSET_POD_NAME, pod_name)),
            };
        }
        if let Some(generation) = label(POD_TEMPLATE_GENERATION) {
            let daemonset = pod
                .rsplit_once('-')
                .filter(|(name, suffix)| {
                    !name.is_empty()
                        && suffix.len() == 5
                        && suffix
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                })
                .map(|(name, _)| name);
            return match daemonset {
                Some(name) => Ok(owner(
                    DAEMONSET,
                    name,
                    "label:pod-template-generation+name-pattern:suffix",
                )),
                None => Err(contradiction(POD_TEMPLATE_GENERATION, generation)),
            };
        }
    }
    if let Some(job) = label(JOB_NAME).or_else(|| label(LEGACY_JOB_NAME)) {
        if !pod.starts_with(&format!("{job}-")) {
            return Err(contradiction(JOB_NAME, job));
        }
        let cronjob = job
            .rsplit_once('-')
            .filter(|(name, stamp)| {
                !name.is_empty()
                    && stamp.len() >= CRONJOB_SUFFIX_MIN_DIGITS
                    && stamp.bytes().all(|b| b.is_ascii_digit())
            })
            .map(|(name, _)| name);
        return Ok(match cronjob {
            Some(name) => owner(CRONJOB, name, "label:job-name+name-pattern:cronjob"),
            None => owner(JOB, job, "label:job-name"),
        });
    }
    Ok(owner(POD, pod, "no-controller-labels"))
}

/// The controller that owns the pod of `k8s`, for what patches a
/// controller (a `k8s-patch` export): an error for a bare pod, or when no
/// owner could be derived.
pub fn controller(what: &str, k8s: Option<&K8sRef>) -> Result<Owner, OwnerError> {
    let k8s = k8s.ok_or_else(|| OwnerError::NotAPod(what.to_owned()))?;
    let pod = k8s.pod.clone().unwrap_or_default();
    match &k8s.owner {
        Some(owner) if owner.kind != POD => Ok(owner.clone()),
        Some(_) => Err(OwnerError::NoController {
            namespace: k8s.namespace.clone(),
            pod,
        }),
        None => derive(&k8s.namespace, &pod, &k8s.labels).and_then(|owner| {
            if owner.kind == POD {
                Err(OwnerError::NoController {
                    namespace: k8s.namespace.clone(),
                    pod,
                })
            } else {
                Ok(owner)
            }
        }),
    }
}

/// The canonical spelling of an owner kind given in any case
/// (`deployment` → `Deployment`); None for a kind capprof does not derive.
pub fn canonical_kind(kind: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| k.eq_ignore_ascii_case(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn derives_owners_from_labels_and_names() {
        /// Pod name, labels, and the owner (kind, name), or None for a
        /// contradiction.
        type Row<'a> = (
            &'a str,
            &'a [(&'a str, &'a str)],
            Option<(&'a str, &'a str)>,
        );
        let rows: &[Row] = &[
            // Deployments.
            (
                "web-7d9f8c6b5-abcde",
                &[("pod-template-hash", "7d9f8c6b5"), ("app", "web")],
                Some((DEPLOYMENT, "web")),
            ),
            (
                "shop-frontend-66b6c48dd5-x2x9z",
                &[("pod-template-hash", "66b6c48dd5")],
                Some((DEPLOYMENT, "shop-frontend")),
            ),
            // A Deployment whose name holds digits like a hash.
            (
                "api-v2-5f7d9-xk2lp",
                &[("pod-template-hash", "5f7d9")],
                Some((DEPLOYMENT, "api-v2")),
            ),
            // The hash is not in the name: not guessed.
            ("web-abcde", &[("pod-template-hash", "7d9f8c6b5")], None),
            (
                "7d9f8c6b5-abcde",
                &[("pod-template-hash", "7d9f8c6b5")],
                None,
            ),
            (
                "web-7d9f8c6b5-",
                &[("pod-template-hash", "7d9f8c6b5")],
                None,
            ),
            // StatefulSets.
            (
                "db-0",
                &[
                    ("controller-revision-hash", "db-5c4d7b8f9"),
                    ("statefulset.kubernetes.io/pod-name", "db-0"),
                ],
                Some((STATEFULSET, "db")),
            ),
            (
                "kafka-broker-12",
                &[
                    ("controller-revision-hash", "kafka-broker-6d8"),
                    ("statefulset.kubernetes.io/pod-name", "kafka-broker-12"),
                ],
                Some((STATEFULSET, "kafka-broker")),
            ),
            (
                "db-0",
                &[
                    ("controller-revision-hash", "h"),
                    ("statefulset.kubernetes.io/pod-name", "db-1"),
                ],
                None,
            ),
            (
                "db-x",
                &[
                    ("controller-revision-hash", "h"),
                    ("statefulset.kubernetes.io/pod-name", "db-x"),
                ],
                None,
            ),
            // DaemonSets.
            (
                "fluent-bit-7xk2p",
                &[
                    ("controller-revision-hash", "6c9f5d7b8"),
                    ("pod-template-generation", "3"),
                ],
                Some((DAEMONSET, "fluent-bit")),
            ),
            (
                "capprof-abc12",
                &[
                    ("controller-revision-hash", "1"),
                    ("pod-template-generation", "1"),
                ],
                Some((DAEMONSET, "capprof")),
            ),
            (
                "capprof-abc1",
                &[
                    ("controller-revision-hash", "1"),
                    ("pod-template-generation", "1"),
                ],
                None,
            ),
            (
                "capprof-ABC12",
                &[
                    ("controller-revision-hash", "1"),
                    ("pod-template-generation", "1"),
                ],
                None,
            ),
            // Jobs and CronJobs.
            (
                "migrate-x7k2p",
                &[
                    ("batch.kubernetes.io/job-name", "migrate"),
                    ("job-name", "migrate"),
                ],
                Some((JOB, "migrate")),
            ),
            (
                "migrate-x7k2p",
                &[("job-name", "migrate")],
                Some((JOB, "migrate")),
            ),
            (
                "backup-28374620-q8w2e",
                &[("batch.kubernetes.io/job-name", "backup-28374620")],
                Some((CRONJOB, "backup")),
            ),
            // A Job whose name ends in a short number is not a CronJob's.
            (
                "load-2024-abcde",
                &[("job-name", "load-2024")],
                Some((JOB, "load-2024")),
            ),
            ("other-x7k2p", &[("job-name", "migrate")], None),
            // Bare pods.
            ("debug", &[], Some((POD, "debug"))),
            ("debug", &[("app", "debug")], Some((POD, "debug"))),
            // controller-revision-hash alone names no controller.
            (
                "odd-1",
                &[("controller-revision-hash", "1")],
                Some((POD, "odd-1")),
            ),
            // An empty label is no label.
            ("solo", &[("pod-template-hash", "")], Some((POD, "solo"))),
        ];
        for (pod, pairs, want) in rows {
            let got = derive("shop", pod, &labels(pairs));
            match (want, &got) {
                (Some((kind, name)), Ok(owner)) => {
                    assert_eq!(
                        (owner.kind.as_str(), owner.name.as_str()),
                        (*kind, *name),
                        "{pod}"
                    );
                    assert!(!owner.derived_from.is_empty());
                }
                (None, Err(OwnerError::Contradiction { pod: p, .. })) => assert_eq!(p, pod),
                _ => panic!("{pod} {pairs:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn heuristics_say_so() {
        let cron = derive(
            "ns",
            "backup-28374620-q8w2e",
            &labels(&[("job-name", "backup-28374620")]),
        )
        .unwrap();
        assert!(cron.derived_from.contains("name-pattern"), "{cron:?}");
        let bare = derive("ns", "debug", &labels(&[])).unwrap();
        assert_eq!(bare.derived_from, "no-controller-labels");
    }

    #[test]
    fn errors_are_one_line() {
        let e = derive(
            "shop",
            "web-abcde",
            &labels(&[("pod-template-hash", "7d9")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod shop/web-abcde: its labels say pod-template-hash=7d9, which its name does not fit, so its owner cannot be derived"
        );
        let k8s = K8sRef {
            namespace: "shop".into(),
            pod: Some("debug".into()),
            ..Default::default()
        };
        let e = controller("debug", Some(&k8s)).unwrap_err();
        assert!(matches!(e, OwnerError::NoController { .. }), "{e}");
        assert!(!e.to_string().contains('\n'));
        assert!(matches!(
            controller("web", None),
            Err(OwnerError::NotAPod(_))
        ));
        let k8s = K8sRef {
            namespace: "shop".into(),
            pod: Some("web-7d9f8c6b5-abcde".into()),
            labels: labels(&[("pod-template-hash", "7d9f8c6b5")]),
            ..Default::default()
        };
        assert_eq!(controller("web", Some(&k8s)).unwrap().name, "web");
    }

    #[test]
    fn kinds_are_canonical() {
        assert_eq!(canonical_kind("deployment"), Some(DEPLOYMENT));
        assert_eq!(canonical_kind("STATEFULSET"), Some(STATEFULSET));
        assert_eq!(canonical_kind("Pod"), Some(POD));
        assert_eq!(canonical_kind("ReplicationController"), None);
    }
}
