//! Kubernetes nodes: containers named through the node's CRI runtime
//! (containerd, CRI-O) by namespace, pod and container name, their owner
//! derived from the pod's labels, and workload profiles merged over an
//! owner's pods.
//!
//! - [`client`]: the runtime service over its unix socket (tonic, runtime.v1).
//! - [`owner`]: Deployment, StatefulSet, DaemonSet, Job or CronJob from a
//!   pod's labels and name (heuristic; its opening comment says where).
//! - [`workload`]: one profile per owner and container name, with coverage.
//! - [`names`]: the checks every name from the runtime passes before it
//!   becomes a file name or a profile field.
//!
//! Attribution by cgroup path ([`crate::attribution`]) stays the fallback:
//! a container the runtime does not name is still profiled, by id.

pub mod client;
pub mod names;
pub mod owner;
pub mod workload;

use std::path::{Path, PathBuf};

pub use client::CriClient;

use crate::profile::K8sRef;

/// Where the runtimes serve the CRI, in the order they are tried.
pub const DEFAULT_SOCKETS: &[&str] =
    &["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];

/// The cgroup v2 parents (relative to the mount) under which the kubelet
/// puts pods: `/kubepods` with the cgroupfs driver, `/kubepods.slice` with
/// systemd's.
pub const CGROUP_PARENTS: &[&str] = &["/kubepods", "/kubepods.slice"];

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("no CRI runtime answers at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("unsupported CRI address {0:?} (give the runtime's socket: unix:///PATH or /PATH)")]
    UnsupportedAddress(String),
    #[error(
        "no CRI runtime socket found (tried {}); give one with --cri",
        DEFAULT_SOCKETS.join(", ")
    )]
    NotFound,
}

/// The first CRI runtime that answers at one of [`DEFAULT_SOCKETS`].
pub async fn detect() -> Result<CriClient, CriError> {
    for socket in DEFAULT_SOCKETS {
        if !client::is_socket(Path::new(socket)) {
            continue;
        }
        match CriClient::connect(&format!("unix://{socket}")).await {
            Ok(client) => return Ok(client),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Err(CriError::NotFound)
}

/// The pod parents to watch under `mount`: those that exist; `/kubepods`
/// (created) when none does yet, as on a node whose first pod is to come
/// with the cgroupfs driver.
pub fn cgroup_parents(mount: &Path) -> Vec<&'static str> {
    let existing: Vec<&'static str> = CGROUP_PARENTS
        .iter()
        .copied()
        .filter(|p| mount.join(p.trim_start_matches('/')).is_dir())
        .collect();
    if existing.is_empty() {
        vec![CGROUP_PARENTS[0]]
    } else {
        existing
    }
}

/// Where a pod container's profile goes: `DIR/<namespace>/<pod>/<container>.json`.
/// None unless every component is a valid Kubernetes name (so never `/`,
/// `..` or empty).
pub fn profile_path(dir: &Path, k8s: &K8sRef, container: &str) -> Option<PathBuf> {
    let pod = k8s.pod.as_deref()?;
    (names::is_dns_label(&k8s.namespace)
        && names::is_dns_subdomain(pod)
        && names::is_dns_label(container))
    .then(|| {
        dir.join(&k8s.namespace)
            .join(pod)
            .join(format!("{container}.json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_paths_are_validated() {
        let k8s = |ns: &str, pod: &str| K8sRef {
            namespace: ns.into(),
            pod: Some(pod.into()),
            ..Default::default()
        };
        let dir = Path::new("/out");
        assert_eq!(
            profile_path(dir, &k8s("shop", "web-7d9f8c6b5-abcde"), "nginx"),
            Some(PathBuf::from("/out/shop/web-7d9f8c6b5-abcde/nginx.json"))
        );
        for (ns, pod, c) in [
            ("..", "web", "nginx"),
            ("shop", "..", "nginx"),
            ("shop", "a/b", "nginx"),
            ("shop", "web", "../x"),
            ("", "web", "nginx"),
            ("shop", "", "nginx"),
            ("shop", "web", ""),
            ("shop", "web", "a.b"),
        ] {
            assert_eq!(profile_path(dir, &k8s(ns, pod), c), None, "{ns}/{pod}/{c}");
        }
        let mut no_pod = k8s("shop", "x");
        no_pod.pod = None;
        assert_eq!(profile_path(dir, &no_pod, "nginx"), None);
    }

    #[test]
    fn cri_o_paths_attribute() {
        // CRI-O is not in Debian 12, so its attribution is tested on paths.
        let id = "4c2f3e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
        let uid = "d3b07384-d113-4ec5-a9f4-0b3f4e6c1a2b";
        for path in [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{id}.scope",
                uid.replace('-', "_")
            ),
            format!("/kubepods/burstable/pod{uid}/crio-{id}"),
            format!("/kubepods/besteffort/pod{uid}/crio-{id}/sub"),
        ] {
            let a = crate::attribution::attribute(&path).unwrap();
            assert_eq!(a.runtime, crate::attribution::CgroupCreator::Crio, "{path}");
            assert_eq!(a.id, id);
            assert_eq!(a.pod_uid.as_deref(), Some(uid));
        }
        assert!(DEFAULT_SOCKETS.contains(&"/var/run/crio/crio.sock"));
        assert_eq!(
            crate::attribution::attribute(&format!(
                "/kubepods/burstable/pod{uid}/crio-conmon-{id}"
            )),
            None
        );
    }
}
