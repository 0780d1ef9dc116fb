//! Which container, or which systemd service, a cgroup v2 path belongs to,
//! read from the path alone: each runtime and cgroup driver names its
//! cgroups in its own way.
//!
//! | runtime | cgroup driver | path |
//! |---|---|---|
//! | docker | cgroupfs | `/docker/<id>` |
//! | docker | systemd | `/system.slice/docker-<id>.scope` |
//! | containerd (CRI) | systemd | `/kubepods.slice/…/kubepods-<qos>-pod<uid>.slice/cri-containerd-<id>.scope` |
//! | containerd (CRI) | cgroupfs | `/kubepods/<qos>/pod<uid>/<id>` |
//! | containerd | cgroupfs | `/<namespace>/<id>` (`ctr`, nerdctl) |
//! | CRI-O | systemd | `/kubepods.slice/…/crio-<id>.scope` |
//! | CRI-O | cgroupfs | `/kubepods/<qos>/pod<uid>/crio-<id>` |
//! | podman | systemd | `/machine.slice/libpod-<id>.scope`, in a pod `/machine.slice/machine-libpod_pod_<pod>.slice/libpod-<id>.scope`, rootless under `user@<uid>.service` |
//! | podman | cgroupfs | `/libpod_parent/libpod-<id>` |
//! | podman | `--cgroups=split` (Quadlet) | `/system.slice/<unit>.service/libpod-payload-<id>` |
//! | LXC | | `/lxc.payload.<name>`, legacy `/lxc/<name>` |
//! | systemd | | `/system.slice/<unit>.service` |
//!
//! Anything below a container's cgroup (a sub-cgroup the container made, a
//! nested engine's containers) belongs to that container: the outermost
//! match wins. Only a path with no container in it falls back to the
//! innermost `.service` unit.
//!
//! The runtime monitors (`crio-conmon-<id>.scope`, `libpod-conmon-<id>.scope`,
//! `lxc.monitor.<name>`) are not containers: their checks are the runtime's
//! own plumbing, so their paths attribute to nothing (`None`), not to the
//! container they watch.

use std::fmt;

use serde::Serialize;

/// Who made a cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupCreator {
    Docker,
    /// containerd itself or its CRI plugin (Kubernetes).
    Containerd,
    Crio,
    Podman,
    Lxc,
    /// A systemd service that is not a container.
    Systemd,
}

impl CgroupCreator {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupCreator::Docker => "docker",
            CgroupCreator::Containerd => "containerd",
            CgroupCreator::Crio => "crio",
            CgroupCreator::Podman => "podman",
            CgroupCreator::Lxc => "lxc",
            CgroupCreator::Systemd => "systemd",
        }
    }
}

impl fmt::Display for CgroupCreator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The workload a cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Attribution {
    pub runtime: CgroupCreator,
    /// The full container id (64 hex digits), the LXC container's name, or
    /// the systemd unit (`nginx.service`).
    pub id: String,
    /// The Kubernetes pod UID (with dashes), or the podman pod id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The containerd namespace, when the path names it (`/<namespace>/<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Attribution {
    fn new(runtime: CgroupCreator, id: &str) -> Self {
        Self {
            runtime,
            id: id.to_owned(),
            pod_uid: None,
            namespace: None,
        }
    }

    fn in_pod(mut self, pod_uid: Option<&str>) -> Self {
        self.pod_uid = pod_uid.map(str::to_owned);
        self
    }
}

/// The first 12 characters of a container id, as `docker ps` shows it; a
/// shorter id (or a name) is returned whole.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Top-level cgroups that are never a containerd namespace.
const NOT_NAMESPACES: &[&str] = &[
    "docker",
    "kubepods",
    "libpod_parent",
    "lxc",
    "machine",
    "user",
];

/// What one path component says.
enum Step {
    /// It is a container's cgroup.
    Found(Attribution),
    /// It is a runtime monitor: the whole path attributes to nothing.
    Monitor,
    /// Nothing; look further down.
    Next,
}

/// The container or service that owns `cgroup_path`, a cgroup v2 path
/// relative to the cgroup2 mount (it starts with `/`). `None` for the root,
/// slices, session scopes, runtime monitors and anything unrecognised.
pub fn attribute(cgroup_path: &str) -> Option<Attribution> {
    let rest = cgroup_path.strip_prefix('/')?;
    let comps: Vec<&str> = rest.split('/').filter(|c| !c.is_empty()).collect();

    match top_level(&comps) {
        Step::Found(found) => return Some(found),
        Step::Monitor => return None,
        Step::Next => {}
    }

    // kubelet's cgroupfs driver puts pods under a top-level `kubepods`.
    let kube_cgroupfs = comps.first() == Some(&"kubepods");
    let mut pod: Option<String> = None;
    let mut kube_pod = false;
    for &comp in &comps {
        if let Some(uid) = kube_pod_slice(comp) {
            pod = Some(uid);
            kube_pod = true;
            continue;
        }
        if let Some(uid) = comp
            .strip_prefix("pod")
            .filter(|u| kube_cgroupfs && is_pod_uid(u))
        {
            pod = Some(uid.to_owned());
            kube_pod = true;
            continue;
        }
        if let Some(id) = comp
            .strip_prefix("machine-libpod_pod_")
            .and_then(|s| s.strip_suffix(".slice"))
            .filter(|id| is_hex64(id))
        {
            pod = Some(id.to_owned());
            continue;
        }
        match container(comp, pod.as_deref(), kube_pod) {
            Step::Found(found) => return Some(found),
            Step::Monitor => return None,
            Step::Next => {}
        }
    }

    // No container: the innermost service, so that a user service under
    // `user@1000.service` is itself and not the user manager.
    comps
        .iter()
        .rev()
        .find(|c| is_service_unit(c))
        .map(|unit| Attribution::new(CgroupCreator::Systemd, unit))
}

/// The forms that only exist at the top of the hierarchy.
fn top_level(comps: &[&str]) -> Step {
    let Some(&first) = comps.first() else {
        return Step::Next;
    };
    let second = comps.get(1).copied();
    let found = |runtime, id: &str| Step::Found(Attribution::new(runtime, id));
    if first == "docker" {
        return second
            .filter(|id| is_hex64(id))
            .map_or(Step::Next, |id| found(CgroupCreator::Docker, id));
    }
    if let Some(name) = first.strip_prefix("lxc.payload.") {
        return if is_lxc_name(name) {
            found(CgroupCreator::Lxc, name)
        } else {
            Step::Next
        };
    }
    if first.starts_with("lxc.monitor.") {
        return Step::Monitor;
    }
    if first == "lxc" {
        return second
            .filter(|n| is_lxc_name(n))
            .map_or(Step::Next, |n| found(CgroupCreator::Lxc, n));
    }
    match second {
        Some(id) if is_hex64(id) && is_containerd_namespace(first) => {
            let mut found = Attribution::new(CgroupCreator::Containerd, id);
            found.namespace = Some(first.to_owned());
            Step::Found(found)
        }
        _ => Step::Next,
    }
}

/// A container's own cgroup, inside a pod or not.
fn container(comp: &str, pod: Option<&str>, kube_pod: bool) -> Step {
    let (name, scope) = match comp.strip_suffix(".scope") {
        Some(name) => (name, true),
        None => (comp, false),
    };
    if name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-") {
        return Step::Monitor;
    }
    let hex = |prefix: &str| name.strip_prefix(prefix).filter(|id| is_hex64(id));
    let found = if let Some(id) = hex("docker-").filter(|_| scope) {
        // Docker's systemd driver; under a kubepods slice, cri-dockerd.
        Attribution::new(CgroupCreator::Docker, id).in_pod(pod)
    } else if let Some(id) = hex("cri-containerd-").filter(|_| scope) {
        Attribution::new(CgroupCreator::Containerd, id).in_pod(pod)
    } else if let Some(id) = hex("crio-") {
        Attribution::new(CgroupCreator::Crio, id).in_pod(pod)
    } else if let Some(id) = hex("libpod-payload-").filter(|_| !scope) {
        Attribution::new(CgroupCreator::Podman, id)
    } else if let Some(id) = hex("libpod-") {
        Attribution::new(CgroupCreator::Podman, id).in_pod(pod)
    } else if kube_pod && !scope && is_hex64(comp) {
        // kubelet's cgroupfs driver names the container by its bare id.
        // containerd is the CRI runtime that does this today (cri-dockerd
        // on cgroupfs does too, and is reported as containerd).
        Attribution::new(CgroupCreator::Containerd, comp).in_pod(pod)
    } else {
        return Step::Next;
    };
    Step::Found(found)
}

/// `kubepods-burstable-pod<uid>.slice`, `kubepods-pod<uid>.slice` (and
/// kubelet's `--cgroup-root` variants such as
/// `kubelet-kubepods-besteffort-pod<uid>.slice`): the pod UID, with the
/// `_` that systemd's slice naming forced turned back into `-`.
fn kube_pod_slice(comp: &str) -> Option<String> {
    let stem = comp.strip_suffix(".slice")?;
    let (parents, last) = stem.rsplit_once('-')?;
    if !parents.split('-').any(|p| p == "kubepods") {
        return None;
    }
    let uid = last.strip_prefix("pod").filter(|u| is_pod_uid(u))?;
    Some(uid.replace('_', "-"))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod UID is a UUID (`-`, or `_` in a slice name), or for static pods
/// a bare hash.
fn is_pod_uid(s: &str) -> bool {
    (8..=64).contains(&s.len())
        && s.bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'-' | b'_'))
}

/// containerd's identifier rule (`identifiers.Validate`): alphanumeric
/// runs joined by single `.`, `_` or `-`, at most 76 characters.
fn is_containerd_namespace(s: &str) -> bool {
    let separators = |b: u8| matches!(b, b'.' | b'_' | b'-');
    !s.is_empty()
        && s.len() <= 76
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || separators(b))
        && !s.starts_with(|c: char| !c.is_ascii_alphanumeric())
        && !s.ends_with(|c: char| !c.is_ascii_alphanumeric())
        && !s
            .as_bytes()
            .windows(2)
            .any(|w| separators(w[0]) && separators(w[1]))
        && !NOT_NAMESPACES.contains(&s)
        && ![".slice", ".scope", ".service", ".mount"]
            .iter()
            .any(|sfx| s.ends_with(sfx))
}

fn is_lxc_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && !s.chars().any(char::is_control)
}

/// A systemd service unit name (`nginx.service`, `getty@tty1.service`,
/// `foo\x2dbar.service`).
fn is_service_unit(s: &str) -> bool {
    s.len() <= 255
        && s.strip_suffix(".service")
            .is_some_and(|stem| !stem.is_empty())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4c2f3e0a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "d3b07384-d113-4ec5-a9f4-0b3f4e6c1a2b";
    const POD_: &str = "d3b07384_d113_4ec5_a9f4_0b3f4e6c1a2b";

    fn expect(
        runtime: CgroupCreator,
        id: &str,
        pod: Option<&str>,
        ns: Option<&str>,
    ) -> Option<Attribution> {
        Some(Attribution {
            runtime,
            id: id.to_owned(),
            pod_uid: pod.map(str::to_owned),
            namespace: ns.map(str::to_owned),
        })
    }

    #[test]
    fn attributes_real_paths() {
        use CgroupCreator::*;
        let rows: Vec<(String, Option<Attribution>)> = vec![
            // Docker.
            (format!("/docker/{ID}"), expect(Docker, ID, None, None)),
            (
                format!("/system.slice/docker-{ID}.scope"),
                expect(Docker, ID, None, None),
            ),
            (format!("/docker/{ID}/init"), expect(Docker, ID, None, None)),
            (
                format!("/system.slice/docker-{ID}.scope/app/worker"),
                expect(Docker, ID, None, None),
            ),
            (
                format!("/docker/{ID}/docker/{ID2}"),
                expect(Docker, ID, None, None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"
                ),
                expect(Docker, ID, None, None),
            ),
            // containerd through the CRI, systemd driver: each QoS class.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/cri-containerd-{ID}.scope"
                ),
                expect(Containerd, ID, Some(POD), None),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_}.slice/cri-containerd-{ID}.scope"
                ),
                expect(Containerd, ID, Some(POD), None),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{POD_}.slice/cri-containerd-{ID}.scope"),
                expect(Containerd, ID, Some(POD), None),
            ),
            // A static pod's UID is a hash.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3a9c1e2b4d6f8a0c2e4a6b8d0f2e4c.slice/cri-containerd-{ID}.scope"
                ),
                expect(
                    Containerd,
                    ID,
                    Some("0f3a9c1e2b4d6f8a0c2e4a6b8d0f2e4c"),
                    None,
                ),
            ),
            // ... cgroupfs driver.
            (
                format!("/kubepods/burstable/pod{POD}/{ID}"),
                expect(Containerd, ID, Some(POD), None),
            ),
            (
                format!("/kubepods/besteffort/pod{POD}/{ID}"),
                expect(Containerd, ID, Some(POD), None),
            ),
            (
                format!("/kubepods/pod{POD}/{ID}"),
                expect(Containerd, ID, Some(POD), None),
            ),
            // Plain containerd: the namespace is in the path.
            (
                format!("/default/{ID}"),
                expect(Containerd, ID, None, Some("default")),
            ),
            (
                format!("/k8s.io/{ID}"),
                expect(Containerd, ID, None, Some("k8s.io")),
            ),
            (
                format!("/buildkit-ns/{ID}/sub"),
                expect(Containerd, ID, None, Some("buildkit-ns")),
            ),
            // CRI-O.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/crio-{ID}.scope"
                ),
                expect(Crio, ID, Some(POD), None),
            ),
            (
                format!("/kubepods/burstable/pod{POD}/crio-{ID}"),
                expect(Crio, ID, Some(POD), None),
            ),
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_}.slice/crio-{ID}.scope"
                ),
                expect(Crio, ID, Some(POD), None),
            ),
            // Podman.
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                expect(Podman, ID, None, None),
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                expect(Podman, ID, None, None),
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                expect(Podman, ID, None, None),
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                expect(Podman, ID, None, None),
            ),
            (
                format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"),
                expect(Podman, ID, Some(ID2), None),
            ),
            (
                format!("/system.slice/nginx.service/libpod-payload-{ID}"),
                expect(Podman, ID, None, None),
            ),
            // LXC.
            ("/lxc.payload.web1".into(), expect(Lxc, "web1", None, None)),
            (
                "/lxc.payload.web1/system.slice/cron.service".into(),
                expect(Lxc, "web1", None, None),
            ),
            ("/lxc/db".into(), expect(Lxc, "db", None, None)),
            // systemd services.
            (
                "/system.slice/nginx.service".into(),
                expect(Systemd, "nginx.service", None, None),
            ),
            (
                "/system.slice/nginx.service/worker".into(),
                expect(Systemd, "nginx.service", None, None),
            ),
            (
                "/system.slice/system-getty.slice/getty@tty1.service".into(),
                expect(Systemd, "getty@tty1.service", None, None),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.service".into(),
                expect(Systemd, "app-foo.service", None, None),
            ),
            (
                "/system.slice/docker.service".into(),
                expect(Systemd, "docker.service", None, None),
            ),
            // Not a workload.
            ("/".into(), None),
            ("".into(), None),
            (format!("docker/{ID}"), None),
            ("/init.scope".into(), None),
            ("/system.slice".into(), None),
            ("/user.slice/user-1000.slice/session-3.scope".into(), None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice"
                ),
                None,
            ),
            (format!("/kubepods/burstable/pod{POD}"), None),
            // Monitors are not their container.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/crio-conmon-{ID}.scope"
                ),
                None,
            ),
            (
                format!("/kubepods/burstable/pod{POD}/crio-conmon-{ID}"),
                None,
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            ("/lxc.monitor.web1".into(), None),
            // Ids must be 64 lowercase hex digits.
            ("/docker/4c2f3e0a9b8d".into(), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/system.slice/docker-{}.scope", &ID[1..]), None),
            (format!("/machine.slice/libpod-{ID}x.scope"), None),
            // A bare id is a container only under a kubepods pod.
            (format!("/system.slice/{ID}"), None),
            // `/docker/<id>` is docker, never a containerd namespace.
            ("/docker/not-an-id".into(), None),
            (format!("/libpod_parent/{ID}"), None),
            (format!("/machine.slice/{ID}"), None),
        ];
        assert!(rows.len() >= 16);
        for (path, want) in rows {
            assert_eq!(attribute(&path), want, "{path}");
        }
    }

    #[test]
    fn short_ids() {
        assert_eq!(short_id(ID), "4c2f3e0a9b8d");
        assert_eq!(short_id("web1"), "web1");
        assert_eq!(short_id(""), "");
        // Never splits a character.
        assert_eq!(short_id("ééééééééééé"), "éééééé");
        assert_eq!(short_id("aéééééééééé"), "aéééééééééé");
    }

    #[test]
    fn serializes_lowercase() {
        let a = attribute(&format!("/k8s.io/{ID}")).unwrap();
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["runtime"], "containerd");
        assert_eq!(json["namespace"], "k8s.io");
        assert!(json.get("pod_uid").is_none());
        for (rt, name) in [
            (CgroupCreator::Docker, "docker"),
            (CgroupCreator::Containerd, "containerd"),
            (CgroupCreator::Crio, "crio"),
            (CgroupCreator::Podman, "podman"),
            (CgroupCreator::Lxc, "lxc"),
            (CgroupCreator::Systemd, "systemd"),
        ] {
            assert_eq!(rt.to_string(), name);
            assert_eq!(serde_json::to_value(rt).unwrap(), name);
        }
    }
}
