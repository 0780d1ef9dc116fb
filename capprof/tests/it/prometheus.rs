//! deploy/prometheus/ against Prometheus's own checker, promtool (Debian's
//! `prometheus`, which `cargo xtask setup` installs): the rules parse, their
//! unit tests pass (and fail when the alert is broken), the scrape
//! configuration parses and finds the DaemonSet's pods at their metrics
//! port, every metric the rules name is one the daemon serves, and a real
//! Prometheus server (Debian's `prometheus`, the same package) scrapes
//! through the job's relabelling and fires the alert. Host-only; a missing
//! promtool or prometheus fails the tests that need it.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use capprof::daemon::{
    metrics::{SeriesState, encode},
    query::{CheckSample, MetricsSnapshot, ShadowSample},
    series::PodWorkload,
};
use serde::Deserialize as _;
use serde_json::Value;

use crate::common::{Scratch, output_text};

const RULES: &str = "capprof-rules.yaml";
const RULE_TESTS: &str = "capprof-rules.test.yaml";
const CONFIG: &str = "prometheus.yml";

fn prometheus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs promtool; panics if it is missing, so that nothing here passes
/// untested.
fn promtool(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e} (Debian's `prometheus` package; `cargo xtask setup` installs it)")
        });
    (out.status.success(), output_text(&out))
}

/// A copy of deploy/prometheus/ to change.
fn copy_of_prometheus_dir(tag: &str) -> Scratch {
    let scratch = Scratch::new(tag);
    for name in [RULES, RULE_TESTS, CONFIG] {
        std::fs::copy(prometheus_dir().join(name), scratch.path(name)).unwrap();
    }
    scratch
}

#[test]
fn the_rules_pass_promtool_check_rules() {
    let (ok, said) = promtool(&["check", "rules", RULES], &prometheus_dir());
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
}

/// The unit tests: the fleet sums over nodes, the alert fires on a
/// violation series and not without one.
#[test]
fn the_rules_pass_their_unit_tests() {
    let (ok, said) = promtool(&["test", "rules", RULE_TESTS], &prometheus_dir());
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

/// The unit tests are not vacuous: an alert that never fires, and a
/// recording rule that does not add nodes up, fail them.
#[test]
fn the_unit_tests_catch_a_broken_alert_and_a_broken_sum() {
    let original = read(&prometheus_dir().join(RULES));
    // As written in the file, indentation included.
    let breakages = [
        (
            "            capprof_shadow_violations_total\n          ) > 0\n",
            "            capprof_shadow_violations_total\n          ) > 1e9\n",
            "alertname: CapprofShadowViolation",
        ),
        (
            "sum by (namespace, workload, container, capability, class, phase) (",
            "max by (namespace, workload, container, capability, class, phase) (",
            "namespace_workload_container:capprof_checks:sum",
        ),
    ];
    for (from, to, failure) in breakages {
        assert_eq!(original.matches(from).count(), 1, "{from:?} in {RULES}");
        let rules = original.replace(from, to);
        let scratch = copy_of_prometheus_dir("prometheus-broken");
        std::fs::write(scratch.path(RULES), &rules).unwrap();
        let (ok, said) = promtool(&["test", "rules", RULE_TESTS], &scratch.0);
        assert!(!ok, "the unit tests passed with {to:?}:\n{said}");
        assert!(said.contains(failure), "{said}");
    }
}

fn yaml(path: &Path) -> Value {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The DaemonSet of deploy/daemonset.yaml.
fn daemonset() -> Value {
    let path = prometheus_dir().join("../daemonset.yaml");
    let text = read(&path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/daemonset.yaml")
}

/// The scrape job finds the DaemonSet's pods (namespace, label) at its
/// metrics port, and the configuration passes `promtool check config`.
/// Debian's promtool is built without Kubernetes discovery, so it checks a
/// copy whose `kubernetes_sd_configs` is a static target; the discovery
/// block itself is checked against the DaemonSet here.
#[test]
fn the_scrape_config_finds_the_daemonset_and_passes_promtool() {
    let config = yaml(&prometheus_dir().join(CONFIG));
    let ds = daemonset();
    let jobs = config["scrape_configs"].as_array().unwrap();
    let job = jobs.iter().find(|j| j["job_name"] == "capprof").unwrap();
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod");
    assert_eq!(sd["namespaces"]["names"][0], ds["metadata"]["namespace"]);
    let labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .unwrap();
    let name = labels["app.kubernetes.io/name"].as_str().unwrap();
    assert_eq!(
        sd["selectors"][0]["label"],
        format!("app.kubernetes.io/name={name}")
    );
    let container = &ds["spec"]["template"]["spec"]["containers"][0];
    let port = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["containerPort"] == 9090)
        .expect("the metrics port");
    let keep = &job["relabel_configs"][0];
    assert_eq!(keep["action"], "keep");
    assert_eq!(
        keep["regex"],
        format!("{name};{}", port["name"].as_str().unwrap())
    );
    let env = container["env"].as_array().unwrap();
    let metrics = env.iter().find(|e| e["name"] == "CAPPROF_METRICS").unwrap();
    assert!(
        metrics["value"].as_str().unwrap().ends_with(":9090"),
        "{metrics}"
    );
    // No target label that would push capprof's own labels aside.
    for relabel in job["relabel_configs"].as_array().unwrap() {
        let target = relabel["target_label"].as_str().unwrap_or("");
        assert!(
            !["namespace", "workload", "container"].contains(&target),
            "{relabel}"
        );
    }

    let scratch = copy_of_prometheus_dir("prometheus-config");
    let checked = with_discovery(
        &config,
        "static_configs",
        serde_json::json!([{"targets": ["127.0.0.1:9090"]}]),
    );
    std::fs::write(
        scratch.path(CONFIG),
        serde_norway::to_string(&checked).unwrap(),
    )
    .unwrap();
    let (ok, said) = promtool(&["check", "config", CONFIG], &scratch.0);
    assert!(ok, "{said}");
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
}

/// `config` with the capprof job's `kubernetes_sd_configs` replaced by
/// `key: discovery`.
fn with_discovery(config: &Value, key: &str, discovery: Value) -> Value {
    let mut changed = config.clone();
    let job = changed["scrape_configs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|j| j["job_name"] == "capprof")
        .unwrap()
        .as_object_mut()
        .unwrap();
    job.remove("kubernetes_sd_configs").unwrap();
    job.insert(key.into(), discovery);
    changed
}

/// What the daemon serves for a pod's container of shop/Deployment/web
/// with a check and a shadow violation (OpenMetrics).
fn served() -> String {
    let web = PodWorkload {
        namespace: "shop".into(),
        kind: "Deployment".into(),
        name: "web".into(),
    };
    let snapshot = MetricsSnapshot {
        checks: vec![CheckSample {
            container: "app".into(),
            pod: Some(web.clone()),
            capability: "CAP_CHOWN".into(),
            class: "required".into(),
            phase: "workload".into(),
            count: 1,
        }],
        shadow_violations: vec![ShadowSample {
            id: "0123456789ab".into(),
            container: "app".into(),
            pod: Some(web),
            capability: "CAP_SETUID".into(),
            count: 1,
        }],
        ..Default::default()
    };
    encode(&snapshot, &mut SeriesState::new(10)).unwrap()
}

/// Every `capprof_*` metric the rules name is one the daemon serves, with
/// the labels they use: the rules and the daemon do not drift apart.
#[test]
fn the_rules_name_metrics_the_daemon_serves() {
    let served = served();
    let rules = read(&prometheus_dir().join(RULES));
    let named: BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("capprof_"))
        .collect();
    assert!(named.len() >= 3, "{named:?}");
    for metric in named {
        let line = served
            .lines()
            .find(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
            .unwrap_or_else(|| {
                panic!("the rules name {metric}, which the daemon does not serve:\n{served}")
            });
        for label in ["namespace", "workload", "container", "capability"] {
            if metric != "capprof_metrics_workloads_folded_total" {
                assert!(line.contains(&format!("{label}=\"")), "{line}");
            }
        }
    }
}

/// Serves `body` as `/metrics` (Prometheus text) to any number of
/// requests, on a thread; its address.
fn serve_metrics(body: String) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// `GET path` from a local HTTP server, as JSON.
fn get_json(addr: &str, path: &str) -> Option<Value> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    serde_json::from_str(reply.split_once("\r\n\r\n")?.1).ok()
}

/// A Prometheus server that a test started, stopped on drop.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The scrape job's relabelling, on a real Prometheus server (Debian's,
/// without Kubernetes discovery): targets carry the `__meta_kubernetes_*`
/// labels pod discovery would give them, through file discovery. Only the
/// DaemonSet's running pod at its metrics port is scraped; its series keep
/// capprof's `namespace`, `workload` and `container`, gain `node`, and
/// the rules record the fleet sum and fire the shadow-violation alert.
#[test]
fn a_real_prometheus_scrapes_the_daemonset_through_the_relabelling() {
    let daemon = serve_metrics(capprof::daemon::metrics::to_prometheus_text(&served()));
    let scratch = copy_of_prometheus_dir("prometheus-server");
    let pod = |address: &str, app: &str, port: &str, phase: &str| {
        serde_json::json!({"targets": [address], "labels": {
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
            "__meta_kubernetes_pod_container_port_name": port,
            "__meta_kubernetes_pod_phase": phase,
            "__meta_kubernetes_pod_node_name": "node-1",
            "__meta_kubernetes_pod_name": "capprof-x7k2p",
        }})
    };
    let targets = serde_json::json!([
        pod(&daemon, "capprof", "metrics", "Running"),
        // Another port of the same pod, another app, a pod not running.
        pod("127.0.0.1:1", "capprof", "health", "Running"),
        pod("127.0.0.1:2", "web", "metrics", "Running"),
        pod("127.0.0.1:3", "capprof", "metrics", "Pending"),
    ]);
    std::fs::write(scratch.path("targets.json"), targets.to_string()).unwrap();
    let mut config = with_discovery(
        &yaml(&prometheus_dir().join(CONFIG)),
        "file_sd_configs",
        serde_json::json!([{"files": [scratch.path("targets.json")]}]),
    );
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    config["scrape_configs"][0]["scrape_interval"] = "1s".into();
    std::fs::write(
        scratch.path(CONFIG),
        serde_norway::to_string(&config).unwrap(),
    )
    .unwrap();
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let _server = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}", scratch.path(CONFIG).display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(scratch.path("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus: {e} (Debian's `prometheus` package)")),
    );
    let query = |q: &str| -> Vec<Value> {
        get_json(&web, &format!("/api/v1/query?query={q}"))
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The alert and the recording rule are in two groups, evaluated apart.
    let (firing, fleet) = loop {
        let alerts = query("ALERTS");
        let fleet = query("namespace_workload_container:capprof_checks:sum");
        if !alerts.is_empty() && !fleet.is_empty() {
            break (alerts, fleet);
        }
        let log = std::fs::read_to_string(scratch.path("prometheus.log")).unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "no alert or fleet sum after 60 s:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };

    let targets = get_json(&web, "/api/v1/targets").unwrap();
    let active = targets["data"]["activeTargets"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["scrapeUrl"], format!("http://{daemon}/metrics"));
    assert_eq!(active[0]["labels"]["node"], "node-1", "{targets}");
    assert_eq!(
        targets["data"]["droppedTargets"].as_array().unwrap().len(),
        3
    );

    let checks = query("capprof_checks");
    assert_eq!(checks.len(), 1, "{checks:?}");
    let labels = &checks[0]["metric"];
    assert_eq!(labels["namespace"], "shop", "{labels}");
    assert_eq!(labels["workload"], "Deployment/web", "{labels}");
    assert_eq!(labels["container"], "app", "{labels}");
    assert_eq!(labels["node"], "node-1", "{labels}");
    assert!(labels.get("exported_namespace").is_none(), "{labels}");
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    assert_eq!(fleet[0]["value"][1], "1", "{fleet:?}");
    assert_eq!(firing.len(), 1, "{firing:?}");
    let alert = &firing[0]["metric"];
    assert_eq!(alert["alertname"], "CapprofShadowViolation", "{alert}");
    assert_eq!(alert["workload"], "Deployment/web", "{alert}");
    assert_eq!(alert["capability"], "CAP_SETUID", "{alert}");
}
