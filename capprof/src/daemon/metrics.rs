//! Prometheus metrics: `GET /metrics` over TCP, off unless `--metrics ADDR`
//! is given. Each scrape asks the aggregator for a [`MetricsSnapshot`] and
//! encodes it in a fresh registry, so nothing here holds state between
//! scrapes.
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `capprof_checks{namespace,workload,container,capability,class,phase}` | gauge | checks seen so far |
//! | `capprof_ringbuf_lost_total` | counter | evidence records the kernel could not send |
//! | `capprof_counts_full_total` | counter | checks not counted: the counts map was full |
//! | `capprof_recursion_misses_total` | counter | checks not counted: the kernel skipped capprof's programs |
//! | `capprof_cgroups_tracked` | gauge | cgroups attributed to containers |
//! | `capprof_containers_tracked` | gauge | containers held in memory |
//! | `capprof_profiles_written_total` | counter | profile writes to the state directory |
//! | `capprof_evictions_total` | counter | exited containers evicted from memory |
//! | `capprof_shadow_violations_total{namespace,workload,container,capability}` | counter | checks enforcing the candidate allowlist would have refused (`--shadow`) |
//! | `capprof_metrics_workloads_folded_total` | counter | workloads folded into `workload="_other"` (`--metrics-max-workloads`) |
//! | `capprof_kube_writes_total` | counter | requests that wrote to the Kubernetes API (`--kube`) |
//! | `capprof_kube_failures_total` | counter | failed Kubernetes API requests; the parts stay pending and are retried with backoff |
//! | `capprof_kube_conflicts_total` | counter | merged-field writes another node beat (re-read and retried) |
//! | `capprof_kube_pending_parts` | gauge | this node's parts waiting to be written |
//! | `capprof_kube_last_success_timestamp_seconds` | gauge | when a round last wrote everything it had |
//!
//! `namespace`, `workload` (`KIND/NAME`) and `container` say where a pod's
//! container is, per workload and never per pod: see [`super::series`],
//! which also bounds their number. Outside Kubernetes, `container` is the
//! container's name and the other two are empty.
//!
//! The encoder ends each HELP text with a period. A scrape with no checks
//! yet has no `capprof_checks` lines at all, not even HELP and TYPE.
//!
//! `capprof_checks` is a gauge, not a counter: a container's series
//! disappears when it is evicted, and its value is the profile's cumulative
//! count, restored across daemon restarts. Which workloads have series of
//! their own, and the counts of containers gone from a summed counter, are
//! the only state kept between scrapes.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;

use super::{
    query::{self, KubeSample, MetricsSnapshot, Query, QueryTx},
    series::{Continuity, Place, WorkloadSeries},
};

/// The OpenMetrics text format, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("bad metrics address {addr:?}: {reason} (give PORT, :PORT or HOST:PORT)")]
    BadAddr { addr: String, reason: String },
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot encode the metrics: {0}")]
    Encode(std::fmt::Error),
    #[error("the metrics server failed: {0}")]
    Serve(io::Error),
}

/// Parses `--metrics`: a bare port (`9090`) or `:9090` binds 127.0.0.1,
/// so metrics stay on the host unless an address says otherwise
/// (`0.0.0.0:9090`, `[::]:9090`, `10.0.0.5:9090`). Port 0 is refused: it
/// would listen on a port nobody knows.
pub fn parse_addr(s: &str) -> Result<SocketAddr, MetricsError> {
    let bad = |reason: &str| MetricsError::BadAddr {
        addr: s.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = s.trim();
    let port_only = trimmed.strip_prefix(':').unwrap_or(trimmed);
    let addr = if !port_only.is_empty() && port_only.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = port_only
            .parse()
            .map_err(|_| bad("the port must be 1 to 65535"))?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        trimmed
            .parse::<SocketAddr>()
            .map_err(|e| bad(&e.to_string()))?
    };
    if addr.port() == 0 {
        return Err(bad("the port must be 1 to 65535"));
    }
    Ok(addr)
}

/// What the series keep between scrapes: which workloads have series of
/// their own, and what a summed counter's containers gone had.
#[derive(Debug)]
pub struct SeriesState {
    workloads: WorkloadSeries,
    shadow: Continuity<ShadowLabels>,
}

impl SeriesState {
    /// At most `max_workloads` workloads with series of their own
    /// (`--metrics-max-workloads`).
    pub fn new(max_workloads: usize) -> Self {
        Self {
            workloads: WorkloadSeries::new(max_workloads),
            shadow: Continuity::default(),
        }
    }
}

#[derive(Clone)]
struct Scrape {
    tx: QueryTx,
    series: Arc<Mutex<SeriesState>>,
}

/// Binds `addr` and serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    tx: QueryTx,
    series: SeriesState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_listener(listener, tx, series, shutdown).await
}

/// Serves `GET /metrics` on a listener bound earlier (before the daemon
/// drops its capabilities, in case the port is privileged).
pub async fn serve_listener(
    listener: TcpListener,
    tx: QueryTx,
    series: SeriesState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    axum::serve(listener, router(tx, series))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

pub fn router(tx: QueryTx, series: SeriesState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "metrics are at /metrics\n") })
        .with_state(Scrape {
            tx,
            series: Arc::new(Mutex::new(series)),
        })
}

/// The classic Prometheus text format, for clients that do not ask for
/// OpenMetrics (curl, `promtool check metrics`).
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn scrape(State(state): State<Scrape>, headers: axum::http::HeaderMap) -> Response {
    let Some(snapshot) = query::ask(&state.tx, |reply| Query::Metrics { reply }).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n").into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // A scrape that panicked mid-way left nothing half-updated that matters.
    let mut series = state.series.lock().unwrap_or_else(|e| e.into_inner());
    match encode(&snapshot, &mut series) {
        Ok(body) if openmetrics => {
            (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
        }
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
            to_prometheus_text(&body),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// OpenMetrics text as the classic Prometheus text format, as the official
/// client libraries negotiate it: a counter family `x` is named `x_total`
/// in its HELP and TYPE lines (its samples already are), and there is no
/// `# EOF`. Everything else is the same in both.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ShadowLabels {
    #[prometheus(flatten)]
    place: Place,
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    #[prometheus(flatten)]
    place: Place,
    capability: String,
    class: String,
    phase: String,
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge<u64, AtomicU64> {
    let g = Gauge::<u64, AtomicU64>::default();
    g.set(value);
    g
}

/// Encodes `snapshot` in the OpenMetrics text format (ending in `# EOF`),
/// labelling pods' containers by workload as `series` places them.
/// Counters are registered without `_total`; the encoder appends it.
pub fn encode(
    snapshot: &MetricsSnapshot,
    series: &mut SeriesState,
) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    series.workloads.assign(
        (snapshot.checks.iter().filter_map(|s| s.pod.as_ref())).chain(
            snapshot
                .shadow_violations
                .iter()
                .filter_map(|s| s.pod.as_ref()),
        ),
    );
    register_checks(&mut registry, snapshot, series);
    register_daemon(&mut registry, snapshot);
    if let Some(kube) = &snapshot.kube {
        register_kube(&mut registry, kube);
    }
    register_shadow(&mut registry, snapshot, series);
    registry.register(
        "capprof_metrics_workloads_folded",
        "Workloads folded into the series of workload _other because --metrics-max-workloads others had series of their own",
        counter(series.workloads.folded_total()),
    );
    let mut out = String::new();
    text::encode(&mut out, &registry).map_err(MetricsError::Encode)?;
    Ok(out)
}

/// `capprof_checks`, one series per place, capability, class and phase.
fn register_checks(registry: &mut Registry, snapshot: &MetricsSnapshot, series: &SeriesState) {
    let checks = Family::<CheckLabels, Gauge<u64, AtomicU64>>::default();
    for sample in &snapshot.checks {
        let labels = CheckLabels {
            place: series
                .workloads
                .place(&sample.container, sample.pod.as_ref()),
            capability: sample.capability.clone(),
            class: sample.class.clone(),
            phase: sample.phase.clone(),
        };
        // Two samples with the same labels add up rather than overwrite.
        checks.get_or_create(&labels).inc_by(sample.count);
    }
    registry.register(
        "capprof_checks",
        "Capability checks seen so far, by namespace, workload, container, capability, class and phase (runtime_setup: the container runtime's own setup, never on an allowlist)",
        checks,
    );
}

/// The daemon's own health: what the kernel could not send or count, and
/// what is held in memory and written to disk.
fn register_daemon(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    registry.register(
        "capprof_ringbuf_lost",
        "Evidence records the kernel could not send (counts are never lost)",
        counter(snapshot.ringbuf_lost),
    );
    registry.register(
        "capprof_counts_full",
        "Checks the kernel could not count because the counts map was full",
        counter(snapshot.counts_full),
    );
    registry.register(
        "capprof_recursion_misses",
        "Capability checks not counted because the kernel skipped capprof's programs, \
         already running on that CPU (bpf_prog_info recursion_misses)",
        counter(snapshot.recursion_misses),
    );
    registry.register(
        "capprof_cgroups_tracked",
        "Cgroups attributed to containers",
        gauge(snapshot.cgroups_tracked),
    );
    registry.register(
        "capprof_containers_tracked",
        "Containers held in memory",
        gauge(snapshot.containers_tracked),
    );
    registry.register(
        "capprof_profiles_written",
        "Profiles written to the state directory",
        counter(snapshot.profiles_written),
    );
    registry.register(
        "capprof_evictions",
        "Exited containers evicted from memory (their profiles stay on disk)",
        counter(snapshot.evictions),
    );
}

/// The Kubernetes writer's requests and backlog (daemon --kube).
fn register_kube(registry: &mut Registry, kube: &KubeSample) {
    registry.register(
        "capprof_kube_writes",
        "Requests that wrote to the Kubernetes API (daemon --kube)",
        counter(kube.writes),
    );
    registry.register(
        "capprof_kube_failures",
        "Failed Kubernetes API requests; the parts stay pending and are retried with backoff",
        counter(kube.failures),
    );
    registry.register(
        "capprof_kube_conflicts",
        "Writes of the merged fields another node beat (re-read and retried)",
        counter(kube.conflicts),
    );
    registry.register(
        "capprof_kube_pending_parts",
        "This node's CapabilityProfile parts waiting to be written",
        gauge(kube.pending),
    );
    registry.register(
        "capprof_kube_last_success_timestamp_seconds",
        "When a round of writes last succeeded (Unix time; 0 before the first)",
        gauge(kube.last_success),
    );
}

/// `capprof_shadow_violations`; like capprof_checks, absent from a scrape
/// until it has a series.
fn register_shadow(registry: &mut Registry, snapshot: &MetricsSnapshot, series: &mut SeriesState) {
    let shadow = Family::<ShadowLabels, Counter>::default();
    let summed = series
        .shadow
        .sum(snapshot.shadow_violations.iter().map(|s| {
            let labels = ShadowLabels {
                place: series.workloads.place(&s.container, s.pod.as_ref()),
                capability: s.capability.clone(),
            };
            (s.id.clone(), labels, s.count)
        }));
    for (labels, count) in summed {
        shadow.get_or_create(&labels).inc_by(count);
    }
    registry.register(
        "capprof_shadow_violations",
        "Capability checks that enforcing the candidate allowlist (daemon --shadow) would have refused, by namespace, workload, container and capability",
        shadow,
    );
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::daemon::{
        query::{CheckSample, ShadowSample},
        series::{DEFAULT_MAX_WORKLOADS, PodWorkload},
    };

    fn check(container: &str, pod: Option<&PodWorkload>, cap: &str, count: u64) -> CheckSample {
        CheckSample {
            container: container.into(),
            pod: pod.cloned(),
            capability: cap.into(),
            class: "required".into(),
            phase: "workload".into(),
            count,
        }
    }

    fn violation(id: &str, pod: Option<&PodWorkload>, count: u64) -> ShadowSample {
        ShadowSample {
            id: id.into(),
            container: "app".into(),
            pod: pod.cloned(),
            capability: "CAP_SETUID".into(),
            count,
        }
    }

    fn deployment(namespace: &str, name: &str) -> PodWorkload {
        PodWorkload {
            namespace: namespace.into(),
            kind: "Deployment".into(),
            name: name.into(),
        }
    }

    fn encode_once(snapshot: &MetricsSnapshot) -> String {
        encode(snapshot, &mut SeriesState::new(DEFAULT_MAX_WORKLOADS)).unwrap()
    }

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            checks: vec![
                check("web", None, "CAP_CHOWN", 3),
                CheckSample {
                    container: "web\"1".into(),
                    pod: None,
                    capability: "CAP_SYS_ADMIN".into(),
                    class: "advisory".into(),
                    phase: "runtime_setup".into(),
                    count: 12,
                },
            ],
            ringbuf_lost: 4,
            counts_full: 0,
            recursion_misses: 6,
            cgroups_tracked: 5,
            containers_tracked: 2,
            profiles_written: 9,
            evictions: 1,
            shadow_violations: vec![ShadowSample {
                container: "web".into(),
                ..violation("0123abcd", None, 2)
            }],
            kube: Some(crate::daemon::query::KubeSample {
                writes: 7,
                failures: 2,
                conflicts: 1,
                pending: 3,
                last_success: 1_700_000_000,
            }),
        }
    }

    #[test]
    fn addresses_default_to_loopback() {
        let ok = |s: &str| parse_addr(s).unwrap().to_string();
        assert_eq!(ok("9090"), "127.0.0.1:9090");
        assert_eq!(ok(":9090"), "127.0.0.1:9090");
        assert_eq!(ok(" 9090 "), "127.0.0.1:9090");
        assert_eq!(ok("0.0.0.0:9090"), "0.0.0.0:9090");
        assert_eq!(ok("127.0.0.2:80"), "127.0.0.2:80");
        assert_eq!(ok("[::1]:9090"), "[::1]:9090");
        assert_eq!(ok("[::]:9090"), "[::]:9090");
        for bad in [
            "",
            ":",
            "0",
            ":0",
            "65536",
            "99999999999",
            "localhost:9090",
            "9090:",
            "x",
            "1.2.3.4",
        ] {
            let err = parse_addr(bad).unwrap_err();
            assert!(matches!(err, MetricsError::BadAddr { .. }), "{bad}: {err}");
            assert!(
                err.to_string().contains("give PORT, :PORT or HOST:PORT"),
                "{err}"
            );
        }
    }

    /// Prometheus's own checker accepts what curl and promtool are served.
    #[test]
    fn promtool_accepts_the_prometheus_text() {
        use std::{io::Write as _, process::Stdio};
        let text = to_prometheus_text(&encode_once(&snapshot()));
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus; cargo xtask setup installs it)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "promtool: {said}\n{text}");
        assert!(said.trim().is_empty(), "promtool: {said}\n{text}");
        assert!(
            text.contains("# HELP capprof_ringbuf_lost_total "),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn encodes_every_metric_with_help_and_type() {
        let text = encode_once(&snapshot());
        let expected = [
            "# HELP capprof_checks Capability checks seen so far, by namespace, workload, container, capability, class and phase (runtime_setup: the container runtime's own setup, never on an allowlist).",
            "# TYPE capprof_checks gauge",
            "# HELP capprof_ringbuf_lost Evidence records the kernel could not send (counts are never lost).",
            "# TYPE capprof_ringbuf_lost counter",
            "capprof_ringbuf_lost_total 4",
            "# TYPE capprof_counts_full counter",
            "capprof_counts_full_total 0",
            "# HELP capprof_recursion_misses Capability checks not counted because the kernel skipped capprof's programs, already running on that CPU (bpf_prog_info recursion_misses).",
            "# TYPE capprof_recursion_misses counter",
            "capprof_recursion_misses_total 6",
            "# TYPE capprof_cgroups_tracked gauge",
            "capprof_cgroups_tracked 5",
            "# TYPE capprof_containers_tracked gauge",
            "capprof_containers_tracked 2",
            "# TYPE capprof_profiles_written counter",
            "capprof_profiles_written_total 9",
            "# TYPE capprof_evictions counter",
            "capprof_evictions_total 1",
            "# HELP capprof_shadow_violations Capability checks that enforcing the candidate allowlist (daemon --shadow) would have refused, by namespace, workload, container and capability.",
            "# TYPE capprof_shadow_violations counter",
            r#"capprof_shadow_violations_total{namespace="",workload="",container="web",capability="CAP_SETUID"} 2"#,
            "# TYPE capprof_metrics_workloads_folded counter",
            "capprof_metrics_workloads_folded_total 0",
            "# TYPE capprof_kube_writes counter",
            "capprof_kube_writes_total 7",
            "capprof_kube_failures_total 2",
            "capprof_kube_conflicts_total 1",
            "# TYPE capprof_kube_pending_parts gauge",
            "capprof_kube_pending_parts 3",
            "capprof_kube_last_success_timestamp_seconds 1700000000",
        ];
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Label values are escaped; samples are in the order of the labels
        // of the family (a hash map), so look them up one by one.
        assert!(
            text.lines().any(|l| l
                == r#"capprof_checks{namespace="",workload="",container="web",capability="CAP_CHOWN",class="required",phase="workload"} 3"#),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                == r#"capprof_checks{namespace="",workload="",container="web\"1",capability="CAP_SYS_ADMIN",class="advisory",phase="runtime_setup"} 12"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# HELP ")).count(),
            15
        );
    }

    #[test]
    fn an_empty_snapshot_still_has_every_counter() {
        let text = encode_once(&MetricsSnapshot::default());
        // prometheus-client leaves out a family with no series at all.
        assert!(!text.contains("capprof_checks"), "{text}");
        assert!(text.contains("\ncapprof_evictions_total 0\n"), "{text}");
        assert!(text.contains("\ncapprof_containers_tracked 0\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE ")).count(), 8);
    }

    /// Two replicas of shop/Deployment/api (and their sandboxes) make one
    /// series per capability, labelled by workload and never by pod.
    #[test]
    fn replicas_share_their_workloads_series() {
        let api = deployment("shop", "api");
        let snapshot = MetricsSnapshot {
            checks: vec![
                check("app", Some(&api), "CAP_NET_RAW", 2),
                check("app", Some(&api), "CAP_NET_RAW", 5),
                check("POD", Some(&api), "CAP_SYS_ADMIN", 1),
                check("POD", Some(&api), "CAP_SYS_ADMIN", 1),
                check("nginx", None, "CAP_CHOWN", 4),
            ],
            shadow_violations: vec![
                violation("aaaa1111", Some(&api), 2),
                violation("bbbb2222", Some(&api), 1),
            ],
            ..Default::default()
        };
        let text = encode_once(&snapshot);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for line in [
            r#"capprof_checks{namespace="shop",workload="Deployment/api",container="app",capability="CAP_NET_RAW",class="required",phase="workload"} 7"#,
            r#"capprof_checks{namespace="shop",workload="Deployment/api",container="POD",capability="CAP_SYS_ADMIN",class="required",phase="workload"} 2"#,
            r#"capprof_checks{namespace="",workload="",container="nginx",capability="CAP_CHOWN",class="required",phase="workload"} 4"#,
            r#"capprof_shadow_violations_total{namespace="shop",workload="Deployment/api",container="app",capability="CAP_SETUID"} 3"#,
        ] {
            assert!(samples.contains(&line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            samples
                .iter()
                .filter(|l| l.starts_with("capprof_checks{"))
                .count(),
            3,
            "{text}"
        );
    }

    /// The cardinality cap: with room for 2 workloads, 5 make 2 series
    /// of their own and one `_other`, and the fold is counted; a shadow
    /// counter summed over replicas never goes down when one is evicted.
    #[test]
    fn workloads_beyond_the_cap_share_one_series() {
        let workloads: Vec<PodWorkload> = (1..=5)
            .map(|i| deployment("shop", &format!("w{i}")))
            .collect();
        let snapshot = MetricsSnapshot {
            checks: workloads
                .iter()
                .map(|w| check("app", Some(w), "CAP_CHOWN", 1))
                .collect(),
            shadow_violations: vec![
                violation("aaaa1111", Some(&workloads[0]), 2),
                violation("bbbb2222", Some(&workloads[0]), 3),
                violation("cccc3333", Some(&workloads[4]), 4),
            ],
            ..Default::default()
        };
        let mut series = SeriesState::new(2);
        let text = encode(&snapshot, &mut series).unwrap();
        let checks: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("capprof_checks{"))
            .collect();
        assert_eq!(checks.len(), 3, "{text}");
        for line in [
            r#"capprof_checks{namespace="shop",workload="Deployment/w1",container="app",capability="CAP_CHOWN",class="required",phase="workload"} 1"#,
            r#"capprof_checks{namespace="shop",workload="Deployment/w2",container="app",capability="CAP_CHOWN",class="required",phase="workload"} 1"#,
            r#"capprof_checks{namespace="",workload="_other",container="",capability="CAP_CHOWN",class="required",phase="workload"} 3"#,
            r#"capprof_shadow_violations_total{namespace="shop",workload="Deployment/w1",container="app",capability="CAP_SETUID"} 5"#,
            r#"capprof_shadow_violations_total{namespace="",workload="_other",container="",capability="CAP_SETUID"} 4"#,
            "capprof_metrics_workloads_folded_total 3",
        ] {
            assert!(
                checks.contains(&line) || text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }

        // The replica with 2 violations is evicted: w1's counter stays 5.
        let mut later = snapshot.clone();
        later.shadow_violations.remove(0);
        let text = encode(&later, &mut series).unwrap();
        let w1 = r#"capprof_shadow_violations_total{namespace="shop",workload="Deployment/w1",container="app",capability="CAP_SETUID"} 5"#;
        assert!(text.lines().any(|l| l == w1), "{text}");
        assert!(
            text.contains("\ncapprof_metrics_workloads_folded_total 3\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn serves_metrics_over_tcp() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let (tx, mut rx) = mpsc::channel::<Query>(4);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                if let Query::Metrics { reply } = q {
                    let _ = reply.send(snapshot());
                }
            }
        });
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_listener(
            listener,
            tx,
            SeriesState::new(2),
            async move {
                let _ = stopped.await;
            },
        ));

        let fetch = |path: &'static str| async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            // What a Prometheus server asks for.
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = fetch("/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}"))
        );
        assert!(
            answer.contains("\r\n\r\n# HELP capprof_checks "),
            "{answer}"
        );
        assert!(answer.ends_with("# EOF\n"), "{answer}");
        assert!(fetch("/").await.starts_with("HTTP/1.1 404 "));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
