//! Prometheus metrics: `GET /metrics` over TCP, off unless `--metrics ADDR`
//! is given. Each scrape asks the aggregator for a [`MetricsSnapshot`] and
//! encodes it in a fresh registry, so nothing here holds state between
//! scrapes.
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `capprof_checks{container,capability,class,phase}` | gauge | checks seen so far |
//! | `capprof_ringbuf_lost_total` | counter | evidence records the kernel could not send |
//! | `capprof_counts_full_total` | counter | checks not counted: the counts map was full |
//! | `capprof_recursion_misses_total` | counter | checks not counted: the kernel skipped capprof's programs |
//! | `capprof_cgroups_tracked` | gauge | cgroups attributed to containers |
//! | `capprof_containers_tracked` | gauge | containers held in memory |
//! | `capprof_profiles_written_total` | counter | profile writes to the state directory |
//! | `capprof_evictions_total` | counter | exited containers evicted from memory |
//! | `capprof_shadow_violations_total{container,capability}` | counter | checks enforcing the candidate allowlist would have refused (`--shadow`) |
//!
//! The encoder ends each HELP text with a period. A scrape with no checks
//! yet has no `capprof_checks` lines at all, not even HELP and TYPE.
//!
//! `capprof_checks` is a gauge, not a counter: a container's series
//! disappears when it is evicted, and its value is the profile's cumulative
//! count, restored across daemon restarts.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::AtomicU64,
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

use super::query::{self, MetricsSnapshot, Query, QueryTx};

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

/// Binds `addr` and serves `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    tx: QueryTx,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    serve_listener(listener, tx, shutdown).await
}

/// Serves `GET /metrics` on a listener bound earlier (before the daemon
/// drops its capabilities, in case the port is privileged).
pub async fn serve_listener(
    listener: TcpListener,
    tx: QueryTx,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    axum::serve(listener, router(tx))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(MetricsError::Serve)
}

pub fn router(tx: QueryTx) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "metrics are at /metrics\n") })
        .with_state(tx)
}

/// The classic Prometheus text format, for clients that do not ask for
/// OpenMetrics (curl, `promtool check metrics`).
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn scrape(State(tx): State<QueryTx>, headers: axum::http::HeaderMap) -> Response {
    let Some(snapshot) = query::ask(&tx, |reply| Query::Metrics { reply }).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the daemon is stopping\n").into_response();
    };
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match encode(&snapshot) {
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    container: String,
    capability: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    container: String,
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

/// Encodes `snapshot` in the OpenMetrics text format (ending in `# EOF`).
/// Counters are registered without `_total`; the encoder appends it.
pub fn encode(snapshot: &MetricsSnapshot) -> Result<String, MetricsError> {
    let mut registry = Registry::default();
    let checks = Family::<CheckLabels, Gauge<u64, AtomicU64>>::default();
    for sample in &snapshot.checks {
        let labels = CheckLabels {
            container: sample.container.clone(),
            capability: sample.capability.clone(),
            class: sample.class.clone(),
            phase: sample.phase.clone(),
        };
        // Two samples with the same labels add up rather than overwrite.
        checks.get_or_create(&labels).inc_by(sample.count);
    }
    registry.register(
        "capprof_checks",
        "Capability checks seen so far, by container, capability, class and phase (runtime_setup: the container runtime's own setup, never on an allowlist)",
        checks,
    );
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
    // Like capprof_checks, absent from a scrape until it has a series.
    let shadow = Family::<ShadowLabels, Counter>::default();
    for sample in &snapshot.shadow_violations {
        shadow
            .get_or_create(&ShadowLabels {
                container: sample.container.clone(),
                capability: sample.capability.clone(),
            })
            .inc_by(sample.count);
    }
    registry.register(
        "capprof_shadow_violations",
        "Capability checks that enforcing the candidate allowlist (daemon --shadow) would have refused, by container and capability",
        shadow,
    );
    let mut out = String::new();
    text::encode(&mut out, &registry).map_err(MetricsError::Encode)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::daemon::query::CheckSample;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            checks: vec![
                CheckSample {
                    container: "web".into(),
                    capability: "CAP_CHOWN".into(),
                    class: "required".into(),
                    phase: "workload".into(),
                    count: 3,
                },
                CheckSample {
                    container: "web\"1".into(),
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
            shadow_violations: vec![crate::daemon::query::ShadowSample {
                container: "web".into(),
                capability: "CAP_SETUID".into(),
                count: 2,
            }],
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
        let text = to_prometheus_text(&encode(&snapshot()).unwrap());
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
        let text = encode(&snapshot()).unwrap();
        let expected = [
            "# HELP capprof_checks Capability checks seen so far, by container, capability, class and phase (runtime_setup: the container runtime's own setup, never on an allowlist).",
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
            "# HELP capprof_shadow_violations Capability checks that enforcing the candidate allowlist (daemon --shadow) would have refused, by container and capability.",
            "# TYPE capprof_shadow_violations counter",
            r#"capprof_shadow_violations_total{container="web",capability="CAP_SETUID"} 2"#,
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
                == r#"capprof_checks{container="web",capability="CAP_CHOWN",class="required",phase="workload"} 3"#),
            "{text}"
        );
        assert!(
            text.lines().any(|l| l
                == r#"capprof_checks{container="web\"1",capability="CAP_SYS_ADMIN",class="advisory",phase="runtime_setup"} 12"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("# HELP ")).count(), 9);
    }

    #[test]
    fn an_empty_snapshot_still_has_every_counter() {
        let text = encode(&MetricsSnapshot::default()).unwrap();
        // prometheus-client leaves out a family with no series at all.
        assert!(!text.contains("capprof_checks"), "{text}");
        assert!(text.contains("\ncapprof_evictions_total 0\n"), "{text}");
        assert!(text.contains("\ncapprof_containers_tracked 0\n"), "{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("# TYPE ")).count(), 7);
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
        let server = tokio::spawn(serve_listener(listener, tx, async move {
            let _ = stopped.await;
        }));

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
