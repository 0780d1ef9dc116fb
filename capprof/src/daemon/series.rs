//! The `namespace`, `workload` and `container` labels of the daemon's
//! per-container metrics, and the cap that keeps their number bounded.
//!
//! A pod's container is labelled by its workload (`Deployment/web`) and its
//! name in the pod, never by its pod or container id: the replicas of a
//! Deployment on a node share one series per capability, class and phase,
//! however many pods come and go. A container outside Kubernetes keeps the
//! labels it always had: its name, with `namespace` and `workload` empty.
//!
//! At most `max_workloads` workloads get series of their own; the others
//! are folded into `workload="_other"` (with `namespace` and `container`
//! empty), and each workload folded is counted. What is kept between
//! scrapes keeps the series honest:
//! - a workload keeps its place (own series, or `_other`) while any of its
//!   containers has samples, so its counts never move from one series to
//!   another;
//! - a counter summed over containers would go down when one of them is
//!   evicted from memory, which Prometheus reads as a reset (and
//!   `increase()` as a burst of new violations): a container's last value
//!   stays in its series until the series has no container left, and the
//!   series then ends, as an evicted container's always did.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
};

use prometheus_client::encoding::EncodeLabelSet;
use serde::{Deserialize, Serialize};

use crate::profile::K8sRef;

/// The `workload` label of the series that workloads beyond the cap share.
pub const OTHER: &str = "_other";

/// `--metrics-max-workloads`' default: a node runs at most 110 pods by
/// default, so 500 workloads leave room for churn (CronJobs, bare pods)
/// before anything is folded.
pub const DEFAULT_MAX_WORKLOADS: usize = 500;

/// The workload a pod's container belongs to: its namespace and owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodWorkload {
    pub namespace: String,
    /// The owner's kind (`Deployment`, `StatefulSet`, `Pod` for a bare pod
    /// or one whose owner could not be derived).
    pub kind: String,
    pub name: String,
}

impl PodWorkload {
    /// A pod's workload: its owner, or the pod itself when no owner could
    /// be derived (a bare pod's owner is the pod anyway). None without
    /// either.
    pub fn of(k8s: &K8sRef) -> Option<Self> {
        let (kind, name) = match (&k8s.owner, &k8s.pod) {
            (Some(owner), _) => (owner.kind.clone(), owner.name.clone()),
            (None, Some(pod)) => ("Pod".to_owned(), pod.clone()),
            (None, None) => return None,
        };
        Some(Self {
            namespace: k8s.namespace.clone(),
            kind,
            name,
        })
    }

    /// The `workload` label: `KIND/NAME`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// The labels every per-container series carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, EncodeLabelSet)]
pub struct Place {
    /// The pod's namespace; empty outside Kubernetes.
    pub namespace: String,
    /// `KIND/NAME` of the pod's owner; empty outside Kubernetes.
    pub workload: String,
    /// The container's name (in its pod, for a pod's container; `POD` for
    /// a pod's sandbox), else its short id.
    pub container: String,
}

/// Which workloads have series of their own, across scrapes.
#[derive(Debug)]
pub struct WorkloadSeries {
    max_workloads: usize,
    /// Each workload with samples at the last scrape: true when it has
    /// series of its own, false when it is folded into `_other`.
    own: BTreeMap<PodWorkload, bool>,
    folded_total: u64,
}

impl WorkloadSeries {
    pub fn new(max_workloads: usize) -> Self {
        Self {
            max_workloads,
            own: BTreeMap::new(),
            folded_total: 0,
        }
    }

    /// Places this scrape's workloads: the ones already placed keep their
    /// place, the ones gone free theirs, and new ones (in name order) take
    /// a free place or are folded.
    pub fn assign<'a>(&mut self, live: impl IntoIterator<Item = &'a PodWorkload>) {
        let live: BTreeSet<&PodWorkload> = live.into_iter().collect();
        self.own.retain(|w, _| live.contains(w));
        let mut owned = self.own.values().filter(|own| **own).count();
        for w in live {
            if self.own.contains_key(w) {
                continue;
            }
            let own = owned < self.max_workloads;
            if own {
                owned += 1;
            } else {
                self.folded_total += 1;
            }
            self.own.insert(w.clone(), own);
        }
    }

    /// The labels of a sample of container `container`, of `pod`'s
    /// workload if it is a pod's; the workload must have been
    /// [`assign`](Self::assign)ed (one that was not is folded).
    pub fn place(&self, container: &str, pod: Option<&PodWorkload>) -> Place {
        match pod {
            None => Place {
                container: container.to_owned(),
                ..Place::default()
            },
            Some(w) if self.own.get(w).copied().unwrap_or(false) => Place {
                namespace: w.namespace.clone(),
                workload: w.label(),
                container: container.to_owned(),
            },
            Some(_) => Place {
                workload: OTHER.to_owned(),
                ..Place::default()
            },
        }
    }

    /// Workloads folded into `_other` so far (one that comes back after
    /// its containers were gone counts again).
    pub fn folded_total(&self) -> u64 {
        self.folded_total
    }
}

/// Keeps a counter summed over containers from going down when one of
/// them goes away, between scrapes.
#[derive(Debug)]
pub struct Continuity<K> {
    /// Each container's value per series at the last scrape.
    last: HashMap<(String, K), u64>,
    /// The last values of the containers gone, per series.
    retired: HashMap<K, u64>,
}

impl<K> Default for Continuity<K> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            retired: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash + Ord> Continuity<K> {
    /// Each series' value: the sum of its containers' `(id, series,
    /// value)` samples, plus what its containers gone had. A series with no
    /// container left ends.
    pub fn sum(&mut self, samples: impl IntoIterator<Item = (String, K, u64)>) -> BTreeMap<K, u64> {
        let mut now: HashMap<(String, K), u64> = HashMap::new();
        for (id, key, value) in samples {
            *now.entry((id, key)).or_default() += value;
        }
        let mut totals: BTreeMap<K, u64> = BTreeMap::new();
        for ((_, key), value) in &now {
            *totals.entry(key.clone()).or_default() += value;
        }
        for ((id, key), value) in self.last.drain() {
            if !now.contains_key(&(id, key.clone())) {
                *self.retired.entry(key).or_default() += value;
            }
        }
        self.retired.retain(|key, _| totals.contains_key(key));
        for (key, value) in &self.retired {
            if let Some(total) = totals.get_mut(key) {
                *total += value;
            }
        }
        self.last = now;
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Owner;

    fn workload(namespace: &str, kind: &str, name: &str) -> PodWorkload {
        PodWorkload {
            namespace: namespace.into(),
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_pod_is_labelled_by_its_owner_not_by_itself() {
        let mut k8s = K8sRef {
            namespace: "shop".into(),
            pod: Some("web-7d9f8c6b5-abcde".into()),
            owner: Some(Owner {
                kind: "Deployment".into(),
                name: "web".into(),
                derived_from: "label:pod-template-hash".into(),
            }),
            ..Default::default()
        };
        let web = PodWorkload::of(&k8s).unwrap();
        assert_eq!(web.label(), "Deployment/web");
        k8s.owner = None;
        assert_eq!(
            PodWorkload::of(&k8s).unwrap().label(),
            "Pod/web-7d9f8c6b5-abcde"
        );
        k8s.pod = None;
        assert_eq!(PodWorkload::of(&k8s), None);

        let mut series = WorkloadSeries::new(10);
        series.assign([&web]);
        assert_eq!(
            series.place("app", Some(&web)),
            Place {
                namespace: "shop".into(),
                workload: "Deployment/web".into(),
                container: "app".into(),
            }
        );
        assert_eq!(
            series.place("nginx", None),
            Place {
                container: "nginx".into(),
                ..Place::default()
            }
        );
    }

    /// 600 workloads under a cap of 500: 500 have their own series, 100
    /// are folded into one and counted; the places stick while their
    /// workloads live, and one freed goes to the next newcomer.
    #[test]
    fn workloads_beyond_the_cap_are_folded_into_other() {
        let all: Vec<PodWorkload> = (0..600)
            .map(|i| workload("batch", "Job", &format!("job-{i:03}")))
            .collect();
        let mut series = WorkloadSeries::new(500);
        series.assign(&all);
        assert_eq!(series.folded_total(), 100);
        let places: BTreeSet<Place> = all.iter().map(|w| series.place("c", Some(w))).collect();
        assert_eq!(places.len(), 501, "500 own series and one _other");
        let other = series.place("c", Some(&all[599]));
        assert_eq!(
            other,
            Place {
                workload: OTHER.into(),
                ..Place::default()
            }
        );
        assert_eq!(series.place("c", Some(&all[0])).workload, "Job/job-000");

        // Scraped again: nothing moves, nothing more is counted.
        series.assign(&all);
        assert_eq!(series.folded_total(), 100);
        assert_eq!(series.place("c", Some(&all[599])), other);

        // job-000 is gone; a newcomer takes its place, and the folded
        // ones stay folded (their counts never move to a series of their
        // own mid-way).
        let newcomer = workload("batch", "Job", "job-new");
        series.assign(all[1..].iter().chain([&newcomer]));
        assert_eq!(series.folded_total(), 100);
        assert_eq!(series.place("c", Some(&newcomer)).workload, "Job/job-new");
        assert_eq!(series.place("c", Some(&all[599])), other);
        // A workload never assigned is folded, not given a series.
        let stranger = workload("batch", "Job", "stranger");
        assert_eq!(series.place("c", Some(&stranger)), other);
    }

    #[test]
    fn a_summed_counter_does_not_go_down_when_a_container_goes() {
        let mut c = Continuity::<&str>::default();
        let sum = c.sum([("a".into(), "web", 5), ("b".into(), "web", 3)]);
        assert_eq!(sum["web"], 8);
        // a is evicted; c starts.
        let sum = c.sum([("b".into(), "web", 4), ("c".into(), "web", 0)]);
        assert_eq!(sum["web"], 9);
        let sum = c.sum([("b".into(), "web", 4), ("c".into(), "web", 2)]);
        assert_eq!(sum["web"], 11);
        // Every container gone: the series ends, and starts afresh later.
        assert!(c.sum([]).is_empty());
        let sum = c.sum([("d".into(), "web", 1)]);
        assert_eq!(sum["web"], 1);
    }
}
