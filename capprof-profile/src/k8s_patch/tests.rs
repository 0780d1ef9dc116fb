//! The patch's shape and the refusals; tests/it/k8s_patch.rs applies patches
//! with the real kubectl.

use super::*;
use crate::{
    export,
    profile::{K8sRef, Subject, with_allowlist},
};

fn profile(kind: &str, owner: Option<(&str, &str)>, container: &str, caps: &[&str]) -> Profile {
    let subject = Subject {
        kind: kind.into(),
        name: Some(container.into()),
        k8s: Some(K8sRef {
            namespace: "shop".into(),
            pod: Some("web-7d9f8c-x2x4z".into()),
            owner: owner.map(|(kind, name)| Owner {
                kind: kind.into(),
                name: name.into(),
                derived_from: "label:pod-template-hash".into(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    with_allowlist(caps, subject)
}

fn input(file: &str, p: Profile) -> Result<Input, K8sPatchError> {
    Input::new(file, p, TargetSysctls::KERNEL)
}

fn web(container: &str, caps: &[&str]) -> Input {
    input(
        &format!("{container}.json"),
        profile(
            "pod-container",
            Some(("Deployment", "web")),
            container,
            caps,
        ),
    )
    .unwrap()
}

fn yaml(text: &str) -> serde_norway::Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
}

#[test]
fn one_owner_one_patch_with_every_container() {
    let patch = Patch::of(vec![
        web("nginx", &["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]),
        web("sidecar", &[]),
    ])
    .unwrap();
    assert_eq!(patch.file_name(), "shop.deployment.web.yaml");
    let out = render(&patch).unwrap();
    assert!(
        out.starts_with(
            "# capprof: strategic-merge patch for Deployment shop/web \
             (owner derived from label:pod-template-hash)\n\
             # capprof: kubectl -n shop patch deployment web --type strategic --patch-file FILE\n"
        ),
        "{out}"
    );
    let doc = yaml(&out);
    let containers = doc["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .unwrap();
    assert_eq!(containers.len(), 2, "{out}");
    assert_eq!(containers[0]["name"], "nginx");
    let caps = &containers[0]["securityContext"]["capabilities"];
    assert_eq!(caps["drop"], yaml("[ALL]"));
    assert_eq!(caps["add"], yaml("[CHOWN, NET_BIND_SERVICE]"));
    // An empty list is written: it replaces the object's list.
    assert_eq!(containers[1]["name"], "sidecar");
    assert_eq!(
        containers[1]["securityContext"]["capabilities"]["add"],
        yaml("[]")
    );
    assert!(
        out.contains("# capprof: container sidecar from sidecar.json:\n"),
        "{out}"
    );
}

#[test]
fn cronjob_patches_its_job_template() {
    let p = profile(
        "workload",
        Some(("CronJob", "nightly")),
        "backup",
        &["CAP_CHOWN"],
    );
    let patch = Patch::of(vec![input("b.json", p).unwrap()]).unwrap();
    let doc = yaml(&render(&patch).unwrap());
    let c = &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "backup");
    assert_eq!(c["securityContext"]["capabilities"]["add"], yaml("[CHOWN]"));
}

#[test]
fn owner_kinds() {
    for (kind, ok) in [
        ("Deployment", true),
        ("statefulset", true),
        ("DaemonSet", true),
        ("ReplicaSet", true),
        ("CronJob", true),
        ("Job", false),
        ("Pod", false),
        ("Node", false),
    ] {
        let p = profile("pod-container", Some((kind, "x")), "c", &[]);
        match input("p.json", p) {
            Ok(i) => assert!(ok, "{kind} accepted as {:?}", i.target),
            Err(e) => {
                assert!(!ok, "{kind}: {e}");
                let msg = e.to_string();
                assert!(msg.starts_with("p.json: "), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
        }
    }
    let err = input(
        "j.json",
        profile("pod-container", Some(("Job", "once")), "c", &[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

#[test]
fn refuses_what_it_cannot_patch() {
    let msg = |r: Result<Input, K8sPatchError>| r.unwrap_err().to_string();
    let mut docker = profile("container", Some(("Deployment", "web")), "c", &[]);
    assert!(msg(input("d.json", docker.clone())).contains("subject kind `container`"));
    docker.subject.kind = "pod-container".into();
    docker.subject.k8s = None;
    assert!(msg(input("d.json", docker)).contains("no subject.k8s"));
    let orphan = profile("pod-container", None, "c", &[]);
    assert_eq!(
        msg(input("o.json", orphan)),
        "o.json: the owner of pod web-7d9f8c-x2x4z is not known (no subject.k8s.owner): \
         patch its controller by hand with --format k8s"
    );
    let mut unnamed = profile("pod-container", Some(("Deployment", "web")), "c", &[]);
    unnamed.subject.name = None;
    assert!(msg(input("u.json", unnamed)).contains("names no container"));
    for bad in ["Nginx", "a/b", "-x", "x\ny", ""] {
        let p = profile("pod-container", Some(("Deployment", "web")), bad, &[]);
        assert!(
            msg(input("b.json", p)).contains("is not a Kubernetes name"),
            "{bad:?}"
        );
    }
    let p = profile("pod-container", Some(("Deployment", "web/../x")), "c", &[]);
    assert!(msg(input("b.json", p)).contains("owner name"));
}

#[test]
fn different_owners_and_duplicate_containers() {
    let db = input(
        "db.json",
        profile("workload", Some(("StatefulSet", "db")), "postgres", &[]),
    )
    .unwrap();
    let err = Patch::of(vec![web("nginx", &[]), db.clone()]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "nginx.json is for Deployment shop/web but db.json is for StatefulSet shop/db: one \
         patch changes one object; pass --out-dir DIR to write one patch per owner"
    );
    let patches = Patch::group(vec![web("nginx", &[]), db, web("sidecar", &[])]).unwrap();
    let names: Vec<String> = patches.iter().map(Patch::file_name).collect();
    assert_eq!(
        names,
        ["shop.deployment.web.yaml", "shop.statefulset.db.yaml"]
    );
    assert_eq!(patches[0].inputs.len(), 2);

    let err = Patch::of(vec![web("nginx", &[]), web("nginx", &["CAP_CHOWN"])]).unwrap_err();
    assert!(
        err.to_string().contains("both profile container nginx"),
        "{err}"
    );
    assert!(matches!(Patch::of(vec![]), Err(K8sPatchError::Empty)));
}

#[test]
fn warnings_stay_with_the_patch() {
    let mut p = profile(
        "pod-container",
        Some(("Deployment", "web")),
        "nginx",
        &["CAP_CHOWN"],
    );
    p.observation.partial = Some(crate::profile::Partial {
        workload_started: None,
        recording_started: "2026-01-01T00:00:00Z".into(),
    });
    p.denied = vec!["CAP_NET_ADMIN".parse().unwrap()];
    // Untrusted text cannot end a comment line.
    p.subject
        .k8s
        .as_mut()
        .unwrap()
        .owner
        .as_mut()
        .unwrap()
        .derived_from = "x\nspec: {}".into();
    let out = render(&Patch::of(vec![input("p.json", p).unwrap()]).unwrap()).unwrap();
    assert!(
        out.contains("# capprof: WARNING: nginx was already running"),
        "{out}"
    );
    assert!(
        out.contains("# capprof: WARNING: the workload was refused CAP_NET_ADMIN"),
        "{out}"
    );
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.starts_with("spec: {}"), "{out}");
    }
    assert_eq!(
        yaml(&out)["spec"]["template"]["spec"]["containers"][0]["name"],
        "nginx"
    );
}

#[test]
fn export_render_takes_one_profile() {
    let p = profile(
        "pod-container",
        Some(("DaemonSet", "agent")),
        "agent",
        &["CAP_NET_RAW"],
    );
    let out = export::render(&p, export::Format::K8sPatch).unwrap();
    assert!(out.contains("DaemonSet shop/agent"), "{out}");
    let p = profile("container", None, "agent", &[]);
    assert!(matches!(
        export::render(&p, export::Format::K8sPatch),
        Err(export::ExportError::K8sPatch(
            K8sPatchError::NotKubernetes { .. }
        ))
    ));
}

/// Sysctls are per pod: two containers that bind low ports without the
/// capability get one setting, low enough for both, in the pod's
/// securityContext, and no NET_BIND_SERVICE.
#[test]
fn callers_without_the_capability_get_one_pod_sysctl() {
    use crate::conditional::{Conditional, OperationEvidence, Sysctl};
    let with_bind = |container: &str, port: u16| {
        let mut p = profile(
            "pod-container",
            Some(("Deployment", "web")),
            container,
            &["CAP_SETUID"],
        );
        p.add_syscall_findings(
            &[Conditional {
                capability: Sysctl::UnprivilegedPortStart.capability(),
                operation: format!("bind tcp port {port}"),
                sysctl: Sysctl::UnprivilegedPortStart,
                value: "0".into(),
                port: Some(port),
                evidence: vec![OperationEvidence {
                    comm: container.into(),
                    exe: None,
                    pid: 9,
                    uid: 101,
                    gid: Some(101),
                }],
                without_capability: true,
            }],
            &[],
        );
        input(&format!("{container}.json"), p).unwrap()
    };
    let out =
        render(&Patch::of(vec![with_bind("dns", 53), with_bind("mail", 25)]).unwrap()).unwrap();
    let doc = yaml(&out);
    let pod = &doc["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["sysctls"],
        yaml("[{name: net.ipv4.ip_unprivileged_port_start, value: '25'}]"),
        "{out}"
    );
    for c in pod["containers"].as_sequence().unwrap() {
        assert_eq!(
            c["securityContext"]["capabilities"]["add"],
            yaml("[SETUID]"),
            "{out}"
        );
    }
    assert!(out.contains("sysctls list replaces the object's"), "{out}");
    // Without such a caller the pod's securityContext is not touched.
    let plain = yaml(&render(&Patch::of(vec![web("nginx", &["CAP_CHOWN"])]).unwrap()).unwrap());
    assert!(
        plain["spec"]["template"]["spec"]
            .get("securityContext")
            .is_none()
    );
}
