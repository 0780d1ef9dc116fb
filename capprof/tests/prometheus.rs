//! deploy/prometheus/ against Prometheus's own checker, promtool (Debian's
//! `prometheus`, which `cargo xtask setup` installs): the rules parse, their
//! unit tests pass (and fail when the alert is broken), the scrape
//! configuration parses and finds the DaemonSet's pods at their metrics
//! port, and every metric the rules name is one the daemon serves.
//! Host-only; a missing promtool fails every test here.

mod common;

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
use common::{Scratch, output_text};
use serde::Deserialize as _;
use serde_json::Value;

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
    let mut checked = config.clone();
    let job = checked["scrape_configs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|j| j["job_name"] == "capprof")
        .unwrap();
    let object = job.as_object_mut().unwrap();
    object.remove("kubernetes_sd_configs").unwrap();
    object.insert(
        "static_configs".into(),
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

/// Every `capprof_*` metric the rules name is one the daemon serves, with
/// the labels they use: the rules and the daemon do not drift apart.
#[test]
fn the_rules_name_metrics_the_daemon_serves() {
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
    let served = encode(&snapshot, &mut SeriesState::new(10)).unwrap();
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
