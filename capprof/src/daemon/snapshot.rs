//! What the metrics endpoint asks the aggregator for: every container's
//! cumulative checks and shadow violations, with the workload of each pod's
//! container, and the daemon's counters. The labels and their cap are the
//! metrics endpoint's business ([`super::series`]).

use std::collections::BTreeMap;

use super::{
    Aggregator,
    query::{CheckSample, MetricsSnapshot, ShadowSample},
    series::PodWorkload,
};
use crate::recorder::CountIndex;

/// `capprof_checks`' labels but the count: container, its workload,
/// capability, class, phase.
type CheckKey = (String, Option<PodWorkload>, String, String, &'static str);

impl Aggregator {
    pub(super) fn metrics_snapshot(&self) -> MetricsSnapshot {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        let index = CountIndex::new(observer.read_counts().unwrap_or_default());
        let stats = observer.kernel_stats().unwrap_or_default();
        let mut checks: BTreeMap<CheckKey, u64> = BTreeMap::new();
        let mut shadow_violations = vec![];
        for rec in recorder.records() {
            let counts = recorder.counts_of(&rec.id, &index);
            let Some(p) = recorder.snapshot(&rec.id, observer, &counts) else {
                continue;
            };
            let container = rec.file_stem();
            let pod = rec.info.k8s.as_ref().and_then(PodWorkload::of);
            if let Some(status) = self.shadow.status(
                rec.info.name.as_deref(),
                rec.info.image.as_deref(),
                Some(&p),
            ) {
                shadow_violations.extend(status.violations.iter().map(|v| ShadowSample {
                    id: rec.id.clone(),
                    container: container.clone(),
                    pod: pod.clone(),
                    capability: v.capability.to_string(),
                    count: v.checks,
                }));
            }
            let phases = [
                ("workload", &p.capabilities),
                ("runtime_setup", &p.runtime_setup),
            ];
            for (phase, usages) in phases {
                for u in usages {
                    for (class, n) in &u.by_class {
                        let key = (
                            container.clone(),
                            pod.clone(),
                            u.name.to_string(),
                            class.to_string(),
                            phase,
                        );
                        *checks.entry(key).or_default() += n;
                    }
                }
            }
        }
        MetricsSnapshot {
            checks: checks
                .into_iter()
                .map(
                    |((container, pod, capability, class, phase), count)| CheckSample {
                        container,
                        pod,
                        capability,
                        class,
                        phase: phase.to_owned(),
                        count,
                    },
                )
                .collect(),
            ringbuf_lost: stats.ringbuf_lost,
            counts_full: stats.counts_full,
            recursion_misses: stats.recursion_misses.unwrap_or(0),
            cgroups_tracked: recorder.cgroups_tracked() as u64,
            containers_tracked: recorder.len() as u64,
            profiles_written: self.counters.profiles_written,
            evictions: self.counters.evictions,
            shadow_violations,
            kube: self.fleet.as_ref().map(|f| f.sample()),
        }
    }
}
