//! `capprof export --format k8s-patch` through the real kubectl: the patch
//! is applied with `kubectl patch --local --type strategic` to Deployment,
//! StatefulSet, DaemonSet and CronJob objects, and the patched objects'
//! capabilities are checked. Host-only: nothing here touches the kernel.
//!
//! The profiles are the real fixtures (web-profile.json: CHOWN and
//! NET_BIND_SERVICE; run-sample.json: CHOWN, NET_RAW, SYS_CHROOT, MKNOD)
//! given the `subject.k8s` of a pod's container, in memory.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::TcpListener,
    path::Path,
    process::Command,
};

use serde_json::{Value, json};

use crate::common::{CAPPROF, Scratch, assert_one_line_error, capprof, output_text};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/run-sample.json"
);
const WEB: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/web-profile.json"
);

/// `fixture` as the profile of `container` in a pod of `kind`/`name`.
fn pod_profile(
    dir: &Scratch,
    fixture: &str,
    container: &str,
    owner: Option<(&str, &str)>,
) -> String {
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let mut k8s = json!({
        "namespace": "shop",
        "pod": format!("{container}-pod-x2x4z"),
        "pod_uid": "0b5c6d4e-1111-2222-3333-444455556666",
        "labels": {"app": "web"},
    });
    if let Some((kind, name)) = owner {
        k8s["owner"] = json!({"kind": kind, "name": name, "derived_from": "test"});
    }
    p["subject"] = json!({
        "kind": "pod-container",
        "runtime": "containerd",
        "id": "4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a4f1c2b3a",
        "name": container,
        "k8s": k8s,
    });
    let owner = owner.map(|(k, n)| format!("{k}-{n}")).unwrap_or_default();
    let path = dir.path(&format!("{owner}-{container}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&p).unwrap()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// What `capprof export -f k8s` adds for the same profile: the patch must
/// grant exactly that.
fn k8s_snippet_adds(profile: &str) -> Vec<String> {
    let out = capprof(&["export", "-f", "k8s", profile]);
    assert!(out.status.success(), "{}", output_text(&out));
    let doc: Value = serde_norway::from_slice(&out.stdout).unwrap();
    names(&doc["securityContext"]["capabilities"]["add"])
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// An object of `kind` with two containers: `web`, whose securityContext
/// already holds other fields and capabilities (they must be replaced, and
/// the others kept), and `sidecar` with none.
fn object(kind: &str, name: &str) -> Value {
    let pod_spec = json!({
        "containers": [
            {
                "name": "web",
                "image": "nginx:1.27",
                "securityContext": {
                    "runAsUser": 101,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"add": ["NET_ADMIN", "SYS_TIME", "CHOWN"], "drop": ["MKNOD"]},
                },
            },
            {"name": "sidecar", "image": "busybox:1.36", "command": ["sleep", "infinity"]},
        ],
    });
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec});
    let selector = json!({"matchLabels": {"app": name}});
    let spec = match kind {
        "Deployment" => json!({"replicas": 2, "selector": selector, "template": template}),
        "StatefulSet" => json!({"serviceName": name, "selector": selector, "template": template}),
        "DaemonSet" => json!({"selector": selector, "template": template}),
        "CronJob" => {
            let mut template = template;
            template["spec"]["restartPolicy"] = json!("OnFailure");
            json!({"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}})
        }
        other => panic!("no object for {other}"),
    };
    let api = if kind == "CronJob" {
        format!("batch/{}", batch_version())
    } else {
        "apps/v1".to_owned()
    };
    json!({
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec,
    })
}

/// `kubectl patch --local -f OBJECT --type strategic --patch-file PATCH -o
/// json`: the patched object.
fn kubectl_patch(object: &Path, patch: &Path) -> Value {
    let out = Command::new("kubectl")
        .args(["patch", "--local", "-f"])
        .arg(object)
        .args(["--type", "strategic", "--patch-file"])
        .arg(patch)
        .args(["-o", "json"])
        .output()
        .expect("kubectl runs (cargo xtask setup installs it)");
    assert!(out.status.success(), "kubectl patch: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// An API server that answers only discovery (`/api`, `/apis`, the
/// group-versions' resource lists), on 127.0.0.1. `kubectl create
/// --dry-run=client` needs one even though it sends nothing: it maps each
/// object's kind to a resource through discovery first (without a server:
/// "couldn't get current server API group list"). There is no OpenAPI
/// document here, so schema validation is off (`--validate=false`).
struct Discovery {
    url: String,
}

impl Discovery {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let resource = |name: &str, kind: &str| {
            json!({"name": name, "singularName": "", "namespaced": true, "kind": kind,
                   "verbs": ["create", "get", "patch"]})
        };
        let group = |name: &str, version: &str| {
            let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
            json!({"name": name, "versions": [gv], "preferredVersion": gv})
        };
        let batch = format!("batch/{}", batch_version());
        let docs: Vec<(String, Value)> = vec![
            (
                "/api".to_owned(),
                json!({"kind": "APIVersions", "versions": ["v1"],
                            "serverAddressByClientCIDRs": []}),
            ),
            (
                "/apis".to_owned(),
                json!({"kind": "APIGroupList", "apiVersion": "v1",
                             "groups": [group("apps", "v1"), group("batch", batch_version())]}),
            ),
            (
                "/api/v1".to_owned(),
                json!({"kind": "APIResourceList", "groupVersion": "v1",
                               "resources": [resource("pods", "Pod")]}),
            ),
            (
                "/apis/apps/v1".to_owned(),
                json!({"kind": "APIResourceList", "groupVersion": "apps/v1",
                "resources": [resource("deployments", "Deployment"),
                              resource("statefulsets", "StatefulSet"),
                              resource("daemonsets", "DaemonSet")]}),
            ),
            (
                format!("/apis/{batch}"),
                json!({"kind": "APIResourceList", "groupVersion": batch,
                "resources": [resource("cronjobs", "CronJob")]}),
            ),
        ];
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = String::new();
                let mut reader = BufReader::new(&stream);
                let _ = reader.read_line(&mut request);
                // The headers, up to the blank line.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .split('?')
                    .next()
                    .unwrap_or("");
                let reply = match docs.iter().find(|(p, _)| p == path) {
                    Some((_, doc)) => {
                        let body = doc.to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    }
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\
                             Connection: close\r\n\r\n"
                        .to_owned(),
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Self { url }
    }

    /// `kubectl create --dry-run=client -f FILE -o json`: the object as
    /// kubectl would send it.
    fn create_dry_run(&self, file: &Path) -> Value {
        let out = Command::new("kubectl")
            .args([
                "--server",
                &self.url,
                "create",
                "--dry-run=client",
                "--validate=false",
            ])
            .arg("-f")
            .arg(file)
            .args(["-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl create: {}",
            output_text(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// CronJob's version for the kubectl at hand: `batch/v1` from Kubernetes
/// 1.21 on; Debian 12's kubernetes-client is 1.20, which knows only
/// `batch/v1beta1` ("cannot apply strategic merge patch for batch/v1,
/// Kind=CronJob locally"). The pod template sits at the same path in both.
fn batch_version() -> &'static str {
    let out = Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .expect("kubectl runs (cargo xtask setup installs it)");
    let version: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("kubectl version: {e}: {}", output_text(&out)));
    let minor: u32 = str_digits(&version["clientVersion"]["minor"]);
    if minor >= 21 { "v1" } else { "v1beta1" }
}

/// `"20"` or `"20+"` as a number.
fn str_digits(v: &Value) -> u32 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a version: {v}"));
    s.trim_end_matches('+').parse().unwrap()
}

fn containers<'a>(object: &'a Value, kind: &str) -> &'a Vec<Value> {
    let spec = if kind == "CronJob" {
        &object["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &object["spec"]["template"]["spec"]
    };
    spec["containers"].as_array().unwrap()
}

#[test]
#[ignore = "needs kubectl (cargo xtask setup)"]
fn patch_replaces_each_containers_capabilities_through_kubectl() {
    let dir = Scratch::new("k8s-patch");
    let discovery = Discovery::start();
    for (kind, name) in [
        ("Deployment", "web"),
        ("StatefulSet", "db"),
        ("DaemonSet", "agent"),
        ("CronJob", "nightly"),
    ] {
        let web = pod_profile(&dir, WEB, "web", Some((kind, name)));
        let sidecar = pod_profile(&dir, SAMPLE, "sidecar", Some((kind, name)));
        let patch = dir.path(&format!("{kind}.patch.yaml"));
        let out = capprof(&[
            "export",
            "--format",
            "k8s-patch",
            "-o",
            patch.to_str().unwrap(),
            &web,
            &sidecar,
        ]);
        assert!(out.status.success(), "{kind}: {}", output_text(&out));
        let text = std::fs::read_to_string(&patch).unwrap();
        assert!(
            text.contains(&format!(
                "# capprof: kubectl -n shop patch {} {name} --type strategic",
                kind.to_lowercase()
            )),
            "{text}"
        );

        let original = object(kind, name);
        let object_file = dir.path(&format!("{kind}.yaml"));
        std::fs::write(&object_file, serde_norway::to_string(&original).unwrap()).unwrap();
        let patched = kubectl_patch(&object_file, &patch);
        let got = containers(&patched, kind);
        assert_eq!(got.len(), 2, "{kind}: {patched}");

        // web: the old add list (NET_ADMIN, SYS_TIME) and drop list are
        // replaced, not merged into; its other fields stay.
        let web_c = &got[0];
        assert_eq!(web_c["name"], "web");
        assert_eq!(web_c["image"], "nginx:1.27");
        let sc = &web_c["securityContext"];
        assert_eq!(names(&sc["capabilities"]["drop"]), ["ALL"], "{kind}: {sc}");
        assert_eq!(
            names(&sc["capabilities"]["add"]),
            ["CHOWN", "NET_BIND_SERVICE"]
        );
        assert_eq!(names(&sc["capabilities"]["add"]), k8s_snippet_adds(&web));
        assert_eq!(sc["runAsUser"], 101);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);

        // sidecar: had no securityContext; gets the sample's four.
        let side = &got[1];
        assert_eq!(side["name"], "sidecar");
        assert_eq!(side["command"], json!(["sleep", "infinity"]));
        let caps = &side["securityContext"]["capabilities"];
        assert_eq!(names(&caps["drop"]), ["ALL"]);
        let mut add = names(&caps["add"]);
        add.sort();
        assert_eq!(add, ["CHOWN", "MKNOD", "NET_RAW", "SYS_CHROOT"], "{kind}");
        assert_eq!(names(&caps["add"]), k8s_snippet_adds(&sidecar));

        // Nothing else changed.
        let mut expected = original.clone();
        let spec = if kind == "CronJob" {
            &mut expected["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        } else {
            &mut expected["spec"]["template"]["spec"]
        };
        spec["containers"] = json!(got);
        assert_eq!(patched, expected, "{kind}");

        // The patched object patches again, identically: the patch is
        // idempotent.
        let patched_file = dir.path(&format!("{kind}.patched.yaml"));
        std::fs::write(&patched_file, serde_norway::to_string(&patched).unwrap()).unwrap();
        assert_eq!(kubectl_patch(&patched_file, &patch), patched, "{kind}");

        // kubectl takes the patched object as one to create.
        let created = discovery.create_dry_run(&patched_file);
        assert_eq!(created["kind"], kind);
        assert_eq!(containers(&created, kind), got, "{kind}");
    }
}

#[test]
#[ignore = "needs kubectl (cargo xtask setup)"]
fn out_dir_writes_one_patch_per_owner() {
    let dir = Scratch::new("k8s-patch-dir");
    let profiles = [
        pod_profile(&dir, WEB, "web", Some(("Deployment", "web"))),
        pod_profile(&dir, SAMPLE, "sidecar", Some(("Deployment", "web"))),
        pod_profile(&dir, SAMPLE, "web", Some(("DaemonSet", "agent"))),
    ];
    let mut args = vec!["export", "-f", "k8s-patch"];
    args.extend(profiles.iter().map(String::as_str));

    // Without --out-dir: one line, exit 2.
    let out = capprof(&args);
    assert_one_line_error(&out, 2, "pass --out-dir DIR");
    assert!(out.stdout.is_empty());

    let patches = dir.path("patches");
    args.extend(["--out-dir", patches.to_str().unwrap()]);
    let out = Command::new(CAPPROF).args(&args).output().unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
    let mut files: Vec<String> = std::fs::read_dir(&patches)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["shop.daemonset.agent.yaml", "shop.deployment.web.yaml"]
    );

    for (kind, name, file, web_adds) in [
        ("Deployment", "web", "shop.deployment.web.yaml", 2),
        ("DaemonSet", "agent", "shop.daemonset.agent.yaml", 4),
    ] {
        let object_file = dir.path(&format!("{kind}.yaml"));
        std::fs::write(
            &object_file,
            serde_norway::to_string(&object(kind, name)).unwrap(),
        )
        .unwrap();
        let patched = kubectl_patch(&object_file, &patches.join(file));
        let got = containers(&patched, kind);
        let adds = |i: usize| names(&got[i]["securityContext"]["capabilities"]["add"]).len();
        assert_eq!(adds(0), web_adds, "{kind}: {patched}");
        if kind == "Deployment" {
            assert_eq!(adds(1), 4);
        } else {
            // The DaemonSet's sidecar was not profiled: left as it was.
            assert_eq!(got[1].get("securityContext"), None, "{patched}");
        }
    }
}

#[test]
fn refuses_profiles_it_cannot_patch_with_one_line() {
    let dir = Scratch::new("k8s-patch-bad");
    let export = |profiles: &[&str]| {
        let mut args = vec!["export", "--format", "k8s-patch"];
        args.extend_from_slice(profiles);
        capprof(&args)
    };
    // A Docker container's profile has no Kubernetes place.
    assert_one_line_error(&export(&[WEB]), 2, "subject kind `container`");
    let orphan = pod_profile(&dir, WEB, "web", None);
    assert_one_line_error(
        &export(&[&orphan]),
        2,
        "is not known (no subject.k8s.owner)",
    );
    let job = pod_profile(&dir, WEB, "web", Some(("Job", "migrate")));
    assert_one_line_error(&export(&[&job]), 2, "pod template is immutable");
    let pod = pod_profile(&dir, WEB, "web", Some(("Pod", "debug")));
    assert_one_line_error(&export(&[&pod]), 2, "Pod shop/debug cannot be patched");
    let twice = pod_profile(&dir, SAMPLE, "web", Some(("Deployment", "web")));
    let web = dir.path("again.json");
    std::fs::copy(&twice, &web).unwrap();
    assert_one_line_error(
        &export(&[&twice, web.to_str().unwrap()]),
        2,
        "both profile container web of Deployment shop/web",
    );
    // Several profiles are for k8s-patch only; --out-dir too.
    let out = capprof(&["export", "-f", "k8s", &twice, &twice]);
    assert_one_line_error(&out, 2, "only --format k8s-patch takes several profiles");
    let out = capprof(&["export", "-f", "k8s", "--out-dir", "/tmp/x", &twice]);
    assert_one_line_error(&out, 2, "--out-dir is for --format k8s-patch");
    // A file that is not a profile.
    let junk = dir.path("junk.json");
    std::fs::write(&junk, "{}").unwrap();
    let out = export(&[junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
}
