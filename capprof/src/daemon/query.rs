//! The daemon's internal API: what the HTTP handlers and the metrics
//! endpoint ask the aggregator task, which owns all profile state. Bounded
//! mpsc in, oneshot out (lockc's pattern); no shared locks.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{series::PodWorkload, shadow::ShadowStatus};
use crate::{
    capability::Cap,
    cri::workload::{WorkloadError, WorkloadKey},
    profile::Profile,
};

/// One line of `capprof ps` / `GET /v1/containers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSummary {
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    pub runtime: String,
    /// `running` or `exited`.
    pub state: String,
    pub required: Vec<Cap>,
    pub allowlist: Vec<Cap>,
    pub first_seen: String,
    pub last_seen: String,
    /// How it fares against its candidate allowlist (`daemon --shadow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub backend: String,
    pub classification: String,
    pub uptime_secs: u64,
    pub containers: usize,
    /// Capabilities the daemon still holds after dropping what it no longer
    /// needs (empty: none).
    pub capabilities: Vec<String>,
}

/// One sample of `capprof_checks` (a gauge of cumulative checks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSample {
    pub container: String,
    /// The workload of a pod's container; None outside Kubernetes.
    #[serde(default)]
    pub pod: Option<PodWorkload>,
    pub capability: String,
    /// required, denied, silent, borrowed, advisory.
    pub class: String,
    /// `workload`, or `runtime_setup` for the checks the container runtime
    /// made before the workload's exec (never on the allowlist).
    pub phase: String,
    pub count: u64,
}

/// One sample of `capprof_shadow_violations_total`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSample {
    /// The container's id: the series sums containers, and keeps the
    /// counts of the ones gone (see [`super::series::Continuity`]).
    #[serde(default)]
    pub id: String,
    pub container: String,
    /// The workload of a pod's container; None outside Kubernetes.
    #[serde(default)]
    pub pod: Option<PodWorkload>,
    pub capability: String,
    pub count: u64,
}

/// Everything the metrics endpoint exports, read in one go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    pub checks: Vec<CheckSample>,
    pub ringbuf_lost: u64,
    pub counts_full: u64,
    /// Runs of capprof's programs the kernel skipped (recursion misses).
    #[serde(default)]
    pub recursion_misses: u64,
    pub cgroups_tracked: u64,
    pub containers_tracked: u64,
    pub profiles_written: u64,
    pub evictions: u64,
    /// Checks enforcing the candidate allowlists would have refused.
    #[serde(default)]
    pub shadow_violations: Vec<ShadowSample>,
    /// The fleet writer's counters (`daemon --kube`); None when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeSample>,
}

/// What the fleet writer has done (`crate::fleet::writer::Stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSample {
    pub writes: u64,
    pub failures: u64,
    pub conflicts: u64,
    pub pending: u64,
    /// Unix time of the last round with no failure; 0 before the first.
    pub last_success: u64,
}

/// Why a profile query has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    NotFound,
    /// A name that more than one container has had (re-used names): their
    /// ids, so the user can pick one.
    Ambiguous(Vec<String>),
}

/// What goes to the aggregator. `ps` and a container's profile are read
/// from its published [`View`](super::view::View) instead, unless the view
/// does not hold that container yet.
pub enum Query {
    /// One container's profile, by name or id prefix: asked only when the
    /// view has no answer (a container that entered the recorder since the
    /// last publication), so that one the daemon knows is never "not found".
    Container {
        key: String,
        reply: oneshot::Sender<Result<Profile, Lookup>>,
    },
    /// The profile merged over every container of an image.
    Image {
        image: String,
        reply: oneshot::Sender<Result<Profile, Lookup>>,
    },
    Health {
        reply: oneshot::Sender<Health>,
    },
    /// One container against its candidate allowlist: None for an unknown
    /// container, `Some(None)` for one without a candidate.
    Shadow {
        key: String,
        reply: oneshot::Sender<Option<Option<ShadowStatus>>>,
    },
    Metrics {
        reply: oneshot::Sender<MetricsSnapshot>,
    },
    /// One workload's profile: its pods' containers of one name, merged
    /// with coverage.
    Workload {
        key: WorkloadKey,
        reply: oneshot::Sender<Result<Profile, WorkloadError>>,
    },
    /// Every workload, as `NAMESPACE/KIND/NAME/CONTAINER`.
    Workloads {
        reply: oneshot::Sender<Vec<String>>,
    },
}

pub type QueryTx = mpsc::Sender<Query>;

/// Asks the aggregator; None when it has gone away.
pub async fn ask<T>(tx: &QueryTx, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Option<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(make(reply)).await.ok()?;
    rx.await.ok()
}
