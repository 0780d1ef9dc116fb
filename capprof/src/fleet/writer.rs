//! `capprof daemon --kube`: the task that keeps this node's parts of the
//! cluster's CapabilityProfiles up to date.
//!
//! Once per interval it asks the aggregator for every workload container
//! this node has profiled, and writes only the parts whose content changed
//! (or whose `lastObserved` is due for a refresh, a quarter of the stale
//! time, so that a live node's part never expires). An idle node makes no
//! request at all. A failed write stays pending and is retried with
//! exponential backoff; the profiles themselves live in the daemon's state
//! directory the whole time, so a long outage loses nothing: the first
//! round after it writes what changed.
//!
//! After its part, a writer refreshes the merged fields from the object
//! the apply returned, on the condition that nobody wrote in between
//! (resourceVersion). When somebody did, it re-reads: if another node's
//! part came in meanwhile, that node's own summary, which saw ours, is
//! left to do the job; if only the merged fields or the metadata moved,
//! it tries again. Whoever writes a part last leaves a summary of every
//! part.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use super::{
    client::{Fleet, FleetError},
    object::{self, CapabilityProfile, NodePart},
    part,
};
use crate::{
    cri::workload::WorkloadKey,
    daemon::query::{self, Query, QueryTx},
    profile::rfc3339,
};

/// Default time between two rounds of writes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default age after which a node's part no longer counts: a node gone for
/// good (scaled down, replaced) drops out of the profile after a week.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest wait between two attempts while the API server fails.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Attempts at the merged fields before leaving them to the next round.
const SUMMARY_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct WriterConfig {
    /// This node's name, as the parts name it.
    pub node: String,
    /// None: in-cluster service account, or as kubectl finds its config.
    pub kubeconfig: Option<PathBuf>,
    pub interval: Duration,
    pub stale_after: Duration,
    /// At most this many requests per second from this node: a rollout
    /// that starts 100 pods on each of 1,000 nodes at once then reaches the
    /// API server at most this many times 1,000 per second (BENCHMARKS.md).
    pub max_rate: f64,
}

/// Default of [`WriterConfig::max_rate`].
pub const DEFAULT_MAX_RATE: f64 = 2.0;

/// What the writer has done, for the metrics and `/health`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests that changed something on the API server.
    pub writes: AtomicU64,
    /// Requests that failed (each attempt counts).
    pub failures: AtomicU64,
    /// Parts waiting to be written.
    pub pending: AtomicU64,
    /// Conflicts met on the merged fields (another node wrote first).
    pub conflicts: AtomicU64,
    /// Unix time of the last round with no failure; 0 before the first.
    pub last_success: AtomicU64,
}

impl Stats {
    /// For the metrics endpoint.
    pub fn sample(&self) -> crate::daemon::query::KubeSample {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        crate::daemon::query::KubeSample {
            writes: get(&self.writes),
            failures: get(&self.failures),
            conflicts: get(&self.conflicts),
            pending: get(&self.pending),
            last_success: get(&self.last_success),
        }
    }
}

/// What was last written of one object.
struct Written {
    content: NodePart,
    at: Instant,
}

pub struct Writer {
    config: WriterConfig,
    stats: Arc<Stats>,
    written: BTreeMap<(String, String), Written>,
    /// Objects this run has created or found, so the spec is applied once.
    ensured: BTreeSet<(String, String)>,
    failing_since: Option<Instant>,
    backoff: Duration,
    /// When the next request may go out (`max_rate`).
    next_request: Option<tokio::time::Instant>,
}

impl Writer {
    pub fn new(config: WriterConfig, stats: Arc<Stats>) -> Self {
        Self {
            config,
            stats,
            written: BTreeMap::new(),
            ensured: BTreeSet::new(),
            failing_since: None,
            backoff: Duration::ZERO,
            next_request: None,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, tx: QueryTx, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut fleet: Option<Fleet> = None;
        loop {
            let wait = if self.failing_since.is_some() {
                self.backoff
            } else {
                self.config.interval
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
            if fleet.is_none() {
                match Fleet::connect(self.config.kubeconfig.as_deref()).await {
                    Ok(f) => fleet = Some(f),
                    Err(e) => {
                        self.failed(&e);
                        continue;
                    }
                }
            }
            let Some(f) = &fleet else { continue };
            let Some(profiles) = node_profiles(&tx).await else {
                return;
            };
            match self.round(f, &profiles).await {
                Ok(()) => self.succeeded(),
                Err(e) => self.failed(&e),
            }
        }
    }

    fn failed(&mut self, e: &FleetError) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.backoff = if self.failing_since.is_none() {
            Duration::from_secs(1)
        } else {
            (self.backoff * 2).min(MAX_BACKOFF)
        };
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        tracing::warn!(
            "kube: {e}; {} part(s) pending, failing for {}s, next attempt in {}s (profiles are kept on disk)",
            self.stats.pending.load(Ordering::Relaxed),
            since.elapsed().as_secs(),
            self.backoff.as_secs()
        );
    }

    fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                "kube: the API server answers again after {}s; every pending part is written",
                since.elapsed().as_secs()
            );
        }
        self.backoff = Duration::ZERO;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.stats.last_success.store(now, Ordering::Relaxed);
    }

    /// One round: every part whose content changed, or that is due for a
    /// refresh. Stops at the first failure; what is left stays pending.
    pub async fn round(
        &mut self,
        fleet: &Fleet,
        profiles: &[(WorkloadKey, crate::profile::Profile)],
    ) -> Result<(), FleetError> {
        let refresh = self.config.stale_after / 4;
        let due: Vec<(WorkloadKey, String, NodePart)> = profiles
            .iter()
            .filter_map(|(key, profile)| {
                let container = key.container.clone()?;
                let mut p = part::node_part(&self.config.node, key, profile);
                // lastObserved: when this node last saw it, which is now
                // for a pod still running (and for one that stopped since
                // the last round).
                p.last_observed = rfc3339(SystemTime::now());
                let name = object::object_name(key, &container);
                let id = (key.namespace.clone(), name.clone());
                let unchanged = self
                    .written
                    .get(&id)
                    .is_some_and(|w| w.content == part::content(&p) && w.at.elapsed() < refresh);
                (!unchanged).then_some((key.clone(), name, p))
            })
            .collect();
        self.stats
            .pending
            .store(due.len() as u64, Ordering::Relaxed);
        for (key, name, p) in due {
            self.write(fleet, &key, &name, &p).await?;
            self.written.insert(
                (key.namespace.clone(), name),
                Written {
                    content: part::content(&p),
                    at: Instant::now(),
                },
            );
            self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Waits until the node's rate limit lets one more request out.
    async fn pace(&mut self) {
        let gap = Duration::from_secs_f64(1.0 / self.config.max_rate.clamp(0.001, 1000.0));
        let now = tokio::time::Instant::now();
        if let Some(at) = self.next_request
            && at > now
        {
            tokio::time::sleep_until(at).await;
        }
        self.next_request = Some(now.max(self.next_request.unwrap_or(now)) + gap);
    }

    async fn write(
        &mut self,
        fleet: &Fleet,
        key: &WorkloadKey,
        name: &str,
        p: &NodePart,
    ) -> Result<(), FleetError> {
        let id = (key.namespace.clone(), name.to_owned());
        if !self.ensured.contains(&id) {
            self.pace().await;
            let owner = fleet.owner_reference(key).await?;
            let container = key.container.as_deref().unwrap_or_default();
            self.pace().await;
            fleet.ensure(key, name, container, owner).await?;
            self.count_write();
            self.ensured.insert(id);
        }
        self.pace().await;
        let object = fleet.apply_part(&key.namespace, name, p).await?;
        self.count_write();
        self.summarize(fleet, object).await
    }

    /// Brings the merged fields in line with the parts, and drops the
    /// parts that went stale, unless someone wrote in between.
    async fn summarize(
        &mut self,
        fleet: &Fleet,
        mut object: CapabilityProfile,
    ) -> Result<(), FleetError> {
        for _ in 0..SUMMARY_ATTEMPTS {
            let now = SystemTime::now();
            let stale_after = self.config.stale_after;
            let mut status = part::summarize(&object, now, stale_after)
                .map_err(|e| FleetError::Invalid(invalid(&object, e.to_string())))?;
            status
                .nodes
                .retain(|p| !part::is_stale(p, now, stale_after));
            let mut current = object.status.clone();
            current.last_update = None;
            if current == status {
                return Ok(());
            }
            status.last_update = Some(rfc3339(now));
            let seen = std::mem::replace(&mut object.status, status).nodes;
            self.pace().await;
            match fleet.replace_status(&object).await {
                Ok(()) => {
                    self.count_write();
                    return Ok(());
                }
                Err(e) if e.is_conflict() => {
                    self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    let (ns, name) = (
                        object.metadata.namespace.clone(),
                        object.metadata.name.clone(),
                    );
                    self.pace().await;
                    match fleet.get(&ns, &name).await? {
                        // Another node wrote its part after ours: the
                        // summary it writes next covers ours too (any
                        // write that succeeds after our part saw it), so
                        // racing it would only add conflicts.
                        Some(again) if again.status.nodes != seen => return Ok(()),
                        Some(again) => object = again,
                        None => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn count_write(&self) {
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
    }
}

fn invalid(object: &CapabilityProfile, reason: String) -> object::InvalidObject {
    object::InvalidObject {
        name: object.metadata.name.clone(),
        reason,
    }
}

/// Every workload container's profile on this node; None when the
/// aggregator has gone (the daemon is stopping).
async fn node_profiles(tx: &QueryTx) -> Option<Vec<(WorkloadKey, crate::profile::Profile)>> {
    let keys = query::ask(tx, |reply| Query::Workloads { reply }).await?;
    let mut out = vec![];
    for text in keys {
        let Ok(key) = text.parse::<WorkloadKey>() else {
            continue;
        };
        let asked = query::ask(tx, |reply| Query::Workload {
            key: key.clone(),
            reply,
        })
        .await?;
        match asked {
            Ok(profile) => out.push((key, profile)),
            Err(e) => tracing::warn!("kube: {e}"),
        }
    }
    Some(out)
}
