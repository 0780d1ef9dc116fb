//! The test cluster `cargo xtask test` starts (xtask/src/kube.rs), driven
//! with kubectl: its directory comes in `CAPPROF_TEST_KUBE`, with an admin
//! kubeconfig and a node daemon's (the ServiceAccount deploy/rbac.yaml
//! binds).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::Value;

use super::output_text;

/// Who a kubectl call runs as.
#[derive(Clone, Copy)]
pub enum As {
    /// `system:masters`.
    Admin,
    /// The `capprof/capprof` ServiceAccount deploy/rbac.yaml binds, as a
    /// node daemon has it.
    Node,
}

pub fn cluster_dir() -> PathBuf {
    std::env::var_os("CAPPROF_TEST_KUBE")
        .map(PathBuf::from)
        .expect("CAPPROF_TEST_KUBE is not set: run these tests through `cargo xtask test`")
}

pub fn deploy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

/// kubectl as `who`, with `stdin` piped in. Each call gets a discovery
/// cache of its own: kubectl's shared one would not know a CRD created
/// after it was filled.
pub fn kubectl(who: As, args: &[&str], stdin: Option<&str>) -> Output {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let dir = cluster_dir();
    let kubeconfig = dir.join(match who {
        As::Admin => "admin.kubeconfig",
        As::Node => "node.kubeconfig",
    });
    let cache = dir.join(format!(
        "kubectl-cache-{}-{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs (cargo xtask setup installs it)");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&cache);
    out
}

pub fn kubectl_ok(who: As, args: &[&str], stdin: Option<&str>) -> String {
    let out = kubectl(who, args, stdin);
    assert!(
        out.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        output_text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn apply_file(path: &Path) {
    kubectl_ok(As::Admin, &["apply", "-f", path.to_str().unwrap()], None);
}

/// What an operator does first: the CRD and the daemon's RBAC, then a
/// namespace `ns` for the test. Idempotent.
pub fn install(ns: &str) {
    let _ = kubectl(As::Admin, &["create", "namespace", "capprof"], None);
    apply_file(&deploy("crd.yaml"));
    apply_file(&deploy("rbac.yaml"));
    kubectl_ok(
        As::Admin,
        &[
            "wait",
            "--for",
            "condition=established",
            "--timeout=60s",
            "crd/capabilityprofiles.capprof.dev",
        ],
        None,
    );
    let _ = kubectl(As::Admin, &["create", "namespace", ns], None);
}

pub fn get_json(who: As, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl_ok(who, &all, None)).unwrap()
}

/// The kubeconfig file of `who`.
pub fn kubeconfig(who: As) -> PathBuf {
    cluster_dir().join(match who {
        As::Admin => "admin.kubeconfig",
        As::Node => "node.kubeconfig",
    })
}
