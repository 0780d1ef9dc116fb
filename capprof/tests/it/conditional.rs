//! What no capability check shows, proven on the real engine (`cargo xtask
//! test` starts a private dockerd and imports the busybox and tools
//! images):
//! - conditional capabilities: Docker lowers `ip_unprivileged_port_start`
//!   and opens `ping_group_range` in each container network namespace, so a
//!   bind to port 80 or an ICMP datagram socket makes no check there. The
//!   k8s and oci exports add the capability; a re-run on the same engine
//!   with the kernel's default sysctl and exactly those capabilities still
//!   works, and fails without the conditional one.
//! - kept capabilities: capsh keeps CAP_NET_BIND_SERVICE through capset()
//!   as a daemon that drops root does; its allowlist is sufficient, and
//!   without the kept capability the container fails at start.
//! - transient capabilities: setpriv raises Docker's whole default set with
//!   capset() and execs a program that loses it; none of it is kept.

use std::{
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::*;

fn image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

fn tools_image() -> String {
    std::env::var("CAPPROF_TOOLS_IMAGE").unwrap_or_else(|_| "capprof-tools:test".into())
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn require_engine(images: &[String]) {
    require_root();
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        out.status.success(),
        "no Docker engine answers (DOCKER_HOST={:?}); run through `cargo xtask test`, which starts one: {}",
        std::env::var("DOCKER_HOST").ok(),
        String::from_utf8_lossy(&out.stderr)
    );
    for image in images {
        assert!(
            docker(&["image", "inspect", image]).status.success(),
            "no image {image}; `cargo xtask test` imports it"
        );
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A container name unique to this test run.
fn unique(tag: &str) -> String {
    format!("capprof-t-{tag}-{}", std::process::id())
}

fn remove(name: &str) {
    let _ = docker(&["rm", "-f", name]);
}

/// `capprof record --container NAME` until stopped with SIGINT.
struct Recording {
    child: Child,
    dir: Scratch,
}

impl Recording {
    fn start(tag: &str, names: &[&str]) -> Self {
        let dir = Scratch::new(tag);
        let out = dir.path("profiles");
        let mut args = vec!["record", "--out", out.to_str().unwrap()];
        for name in names {
            args.extend(["--container", name]);
        }
        let mut child = Command::new(CAPPROF)
            .args(&args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("capprof record starts");
        wait_for_line(&mut child, "record", "recording", Duration::from_secs(30));
        Self { child, dir }
    }

    fn stop(mut self) -> Scratch {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "capprof record exited with {status}");
        self.dir
    }
}

fn profile_path(dir: &Scratch, name: &str) -> String {
    dir.path("profiles")
        .join(format!("{name}.json"))
        .to_str()
        .unwrap()
        .to_owned()
}

fn read_profile(dir: &Scratch, name: &str) -> Value {
    let path = profile_path(dir, name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("no profile {path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn export(dir: &Scratch, name: &str, args: &[&str]) -> String {
    let path = profile_path(dir, name);
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    all.push(&path);
    let out = capprof(&all);
    assert!(out.status.success(), "export {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The capabilities an export grants, as docker spells them (`CHOWN`),
/// sorted.
fn granted(dir: &Scratch, name: &str, format: &str) -> Vec<String> {
    let text = export(dir, name, &["--format", format]);
    let mut caps: Vec<String> = match format {
        "docker" => text
            .split_whitespace()
            .filter_map(|flag| flag.strip_prefix("--cap-add="))
            .map(str::to_owned)
            .collect(),
        "k8s" => {
            let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
            doc["securityContext"]["capabilities"]["add"]
                .as_sequence()
                .unwrap_or_else(|| panic!("no add list:\n{text}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        }
        "oci" => {
            let doc: Value = serde_json::from_str(&text).unwrap();
            let sets = &doc["process"]["capabilities"];
            assert_eq!(sets["bounding"], sets["permitted"], "{text}");
            assert_eq!(sets["bounding"], sets["effective"], "{text}");
            sets["bounding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().trim_start_matches("CAP_").to_owned())
                .collect()
        }
        other => panic!("no parser for {other}"),
    };
    caps.sort();
    caps
}

/// `--cap-drop=ALL --cap-add=…`.
fn cap_flags(caps: &[String]) -> Vec<String> {
    std::iter::once("--cap-drop=ALL".to_owned())
        .chain(caps.iter().map(|c| format!("--cap-add={c}")))
        .collect()
}

fn without(caps: &[String], dropped: &str) -> Vec<String> {
    assert!(
        caps.iter().any(|c| c == dropped),
        "{dropped} not in {caps:?}"
    );
    caps.iter().filter(|c| *c != dropped).cloned().collect()
}

fn entries(profile: &Value, field: &str) -> Vec<Value> {
    profile[field].as_array().cloned().unwrap_or_default()
}

/// The one entry of `field` for `capability`.
fn entry_for(profile: &Value, field: &str, capability: &str) -> Value {
    let found: Vec<Value> = entries(profile, field)
        .into_iter()
        .filter(|e| e["capability"] == capability)
        .collect();
    assert!(!found.is_empty(), "no {field} {capability}: {profile}");
    found[0].clone()
}

const PORT_START_1024: &str = "net.ipv4.ip_unprivileged_port_start=1024";
const NO_PING_GROUP: &str = "net.ipv4.ping_group_range=1 0";

/// A web server on port 80: busybox httpd, serving `ok`.
const HTTPD: &str = "echo ok > /tmp/index.html && exec httpd -f -p 80 -h /tmp";

/// Starts a detached container and says whether it serves `ok` on port 80
/// within a few seconds (probed from inside, with busybox wget).
fn serves(name: &str, flags: &[String], image: &str, cmd: &[&str]) -> bool {
    remove(name);
    let mut args: Vec<String> = ["run", "-d", "--network", "none", "--name", name]
        .map(String::from)
        .to_vec();
    args.extend(flags.iter().cloned());
    args.push(image.to_owned());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&args);
    assert!(out.status.success(), "docker run: {}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let probe = docker(&["exec", name, "wget", "-q", "-O-", "http://127.0.0.1/"]);
        if probe.status.success() && String::from_utf8_lossy(&probe.stdout).trim() == "ok" {
            break true;
        }
        let running = docker(&["inspect", "-f", "{{.State.Running}}", name]);
        if String::from_utf8_lossy(&running.stdout).trim() != "true" || Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !served {
        let logs = docker(&["logs", name]);
        eprintln!(
            "[{name}] does not serve; its output: {}{}",
            String::from_utf8_lossy(&logs.stdout),
            stderr(&logs)
        );
    }
    served
}

fn run_to_end(flags: &[String], image: &str, cmd: &[&str]) -> Output {
    let mut args: Vec<String> = ["run", "--rm", "--network", "none"]
        .map(String::from)
        .to_vec();
    args.extend(flags.iter().cloned());
    args.push(image.to_owned());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args)
}

#[test]
#[ignore = "needs root"]
fn port_80_bound_on_docker_is_added_for_runtimes_that_keep_1024() {
    require_engine(&[image()]);
    let name = unique("httpd");
    let rec = Recording::start("cond-httpd", &[&name]);
    assert!(
        serves(&name, &[], &image(), &["sh", "-c", HTTPD]),
        "httpd does not serve under Docker's defaults"
    );
    let _ = docker(&["kill", &name]);
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&name);

    let profile = read_profile(&dir, &name);
    // Docker set ip_unprivileged_port_start to 0: no check was made.
    for field in ["required", "allowlist"] {
        assert!(
            !names(&profile, field).contains(&"CAP_NET_BIND_SERVICE".to_owned()),
            "{field}: {profile}"
        );
    }
    let bind = entry_for(&profile, "conditional", "CAP_NET_BIND_SERVICE");
    assert_eq!(bind["port"], 80, "{bind}");
    assert_eq!(bind["sysctl"], "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(bind["value"], "0", "the container's value, not the host's");
    let op = bind["operation"].as_str().unwrap();
    assert!(
        op.starts_with("bind tcp") && op.ends_with("port 80"),
        "{op}"
    );
    assert_eq!(bind["evidence"][0]["comm"], "httpd", "{bind}");
    assert!(
        bind.get("without_capability").is_none(),
        "root held it: {bind}"
    );
    // runc's own capset() while it sets the container up is not the
    // workload's.
    assert!(entries(&profile, "kept").is_empty(), "{profile}");

    // On Docker, nothing to add; for Kubernetes and OCI, added, with why.
    let docker_caps = granted(&dir, &name, "docker");
    assert!(!docker_caps.contains(&"NET_BIND_SERVICE".to_owned()));
    let k8s = granted(&dir, &name, "k8s");
    let oci = granted(&dir, &name, "oci");
    assert_eq!(k8s, oci, "k8s and oci grant the same");
    assert!(k8s.contains(&"NET_BIND_SERVICE".to_owned()), "{k8s:?}");
    let text = export(&dir, &name, &["--format", "k8s"]);
    assert!(
        text.contains("# capprof: CAP_NET_BIND_SERVICE added: bind tcp"),
        "{text}"
    );
    let table = export(&dir, &name, &["--against", "runc"]);
    assert!(
        table.contains("keep (conditional)") && table.contains("CAP_NET_BIND_SERVICE"),
        "{table}"
    );

    // Where the kernel's default holds, exactly the exported set serves,
    let strict = ["--sysctl".to_owned(), PORT_START_1024.to_owned()];
    let flags = [strict.to_vec(), cap_flags(&k8s)].concat();
    assert!(
        serves(&name, &flags, &image(), &["sh", "-c", HTTPD]),
        "not sufficient with {flags:?}"
    );
    remove(&name);
    // and without the conditional capability it cannot bind.
    let fewer = [
        strict.to_vec(),
        cap_flags(&without(&k8s, "NET_BIND_SERVICE")),
    ]
    .concat();
    assert!(
        !serves(&name, &fewer, &image(), &["sh", "-c", HTTPD]),
        "serves without NET_BIND_SERVICE: the check is not made ({fewer:?})"
    );
    remove(&name);
}

/// The same server as a non-root user, as a package's unit starts one
/// (pdns in the corpus): it holds no capability, so adding
/// NET_BIND_SERVICE cannot let it bind where the kernel's default holds.
/// The k8s export sets the pod's sysctl instead, and exactly that serves.
#[test]
#[ignore = "needs root"]
fn port_80_bound_by_a_non_root_user_gets_the_sysctl_not_the_capability() {
    require_engine(&[image()]);
    let name = unique("httpd-user");
    let user = ["--user".to_owned(), "1000".to_owned()];
    let rec = Recording::start("cond-httpd-user", &[&name]);
    assert!(
        serves(&name, &user, &image(), &["sh", "-c", HTTPD]),
        "httpd does not serve as uid 1000 under Docker's defaults"
    );
    let _ = docker(&["kill", &name]);
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&name);

    let profile = read_profile(&dir, &name);
    let bind = entry_for(&profile, "conditional", "CAP_NET_BIND_SERVICE");
    assert_eq!(bind["port"], 80, "{bind}");
    assert_eq!(bind["evidence"][0]["uid"], 1000, "{bind}");
    assert_eq!(
        bind["without_capability"], true,
        "read from the caller's effective set: {bind}"
    );

    let k8s = granted(&dir, &name, "k8s");
    assert!(!k8s.contains(&"NET_BIND_SERVICE".to_owned()), "{k8s:?}");
    let text = export(&dir, &name, &["--format", "k8s"]);
    let doc: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let sysctl = &doc["podSecurityContext"]["sysctls"][0];
    assert_eq!(
        sysctl["name"].as_str(),
        Some("net.ipv4.ip_unprivileged_port_start"),
        "{text}"
    );
    assert_eq!(sysctl["value"].as_str(), Some("80"), "{text}");

    // Under the kernel's default, the export's capabilities and sysctl
    // serve,
    let exported = [
        user.to_vec(),
        vec![
            "--sysctl".to_owned(),
            "net.ipv4.ip_unprivileged_port_start=80".to_owned(),
        ],
        cap_flags(&k8s),
    ]
    .concat();
    assert!(
        serves(&name, &exported, &image(), &["sh", "-c", HTTPD]),
        "not sufficient with {exported:?}"
    );
    remove(&name);
    // while the capability an export used to add does not reach it.
    let strict = ["--sysctl".to_owned(), PORT_START_1024.to_owned()];
    let with_cap = [
        user.to_vec(),
        strict.to_vec(),
        cap_flags(&[k8s.clone(), vec!["NET_BIND_SERVICE".to_owned()]].concat()),
    ]
    .concat();
    assert!(
        !serves(&name, &with_cap, &image(), &["sh", "-c", HTTPD]),
        "a non-root process bound port 80 with NET_BIND_SERVICE only in its bounding set ({with_cap:?})"
    );
    remove(&name);
}

/// iputils ping: an ICMP datagram socket first, a raw one when
/// `ping_group_range` shuts it out.
const PING: &[&str] = &["/opt/iputils/ping", "-c1", "-W2", "127.0.0.1"];

#[test]
#[ignore = "needs root"]
fn ping_socket_on_docker_is_added_for_runtimes_that_keep_no_ping_group() {
    require_engine(&[tools_image()]);
    // Under Docker's defaults iputils ping keeps CAP_NET_RAW through
    // capset() (kept); with nothing granted it keeps nothing, and only the
    // datagram socket is left (conditional).
    let full = unique("ping");
    let bare = unique("ping-bare");
    let rec = Recording::start("cond-ping", &[&full, &bare]);
    for (name, flags) in [(&full, vec![]), (&bare, cap_flags(&[]))] {
        let mut args = vec!["run", "--network", "none", "--name", name];
        args.extend(flags.iter().map(String::as_str));
        let image = tools_image();
        args.push(&image);
        args.extend_from_slice(PING);
        let out = docker(&args);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&full);
    remove(&bare);

    for name in [&full, &bare] {
        let profile = read_profile(&dir, name);
        let socket = entry_for(&profile, "conditional", "CAP_NET_RAW");
        assert_eq!(socket["operation"], "icmp datagram socket", "{socket}");
        assert_eq!(socket["sysctl"], "net.ipv4.ping_group_range");
        assert_eq!(socket["value"], "0 2147483647");
        assert_eq!(socket["evidence"][0]["comm"], "ping");
        assert!(
            !names(&profile, "required").contains(&"CAP_NET_RAW".to_owned()),
            "no raw socket was made: {profile}"
        );
    }
    let kept = entry_for(&read_profile(&dir, &full), "kept", "CAP_NET_RAW");
    assert_eq!(kept["evidence"][0]["comm"], "ping", "{kept}");
    // With nothing to keep, ping's capset() keeps nothing.
    assert!(
        entries(&read_profile(&dir, &bare), "kept").is_empty(),
        "{}",
        read_profile(&dir, &bare)
    );

    // Recorded with nothing granted: docker needs nothing, k8s and oci
    // NET_RAW.
    assert!(granted(&dir, &bare, "docker").is_empty());
    let k8s = granted(&dir, &bare, "k8s");
    assert_eq!(k8s, ["NET_RAW"]);
    assert_eq!(granted(&dir, &bare, "oci"), k8s);
    let json: Value = serde_json::from_str(&export(
        &dir,
        &bare,
        &["--against", "crio", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(json["add_conditional"], serde_json::json!(["CAP_NET_RAW"]));

    // Where no group may open ping sockets, exactly the export pings,
    let strict = ["--sysctl".to_owned(), NO_PING_GROUP.to_owned()];
    let out = run_to_end(
        &[strict.to_vec(), cap_flags(&k8s)].concat(),
        &tools_image(),
        PING,
    );
    assert!(
        out.status.success(),
        "not sufficient with {k8s:?}: {}",
        stderr(&out)
    );
    // the full profile's export too,
    let k8s_full = granted(&dir, &full, "k8s");
    let out = run_to_end(
        &[strict.to_vec(), cap_flags(&k8s_full)].concat(),
        &tools_image(),
        PING,
    );
    assert!(
        out.status.success(),
        "not sufficient with {k8s_full:?}: {}",
        stderr(&out)
    );
    // and without NET_RAW it cannot.
    let out = run_to_end(
        &[strict.to_vec(), cap_flags(&[])].concat(),
        &tools_image(),
        PING,
    );
    assert!(
        !out.status.success(),
        "pings without NET_RAW under ping_group_range=1 0"
    );
}

/// capsh drops root to nobody, keeping CAP_NET_BIND_SERVICE through
/// capset() and passing it on as ambient, then runs httpd on port 80.
const CAPSH_HTTPD: &[&str] = &[
    "capsh",
    "--keep=1",
    "--user=nobody",
    "--caps=cap_net_bind_service+eip",
    "--addamb=cap_net_bind_service",
    "--shell=/bin/sh",
    "--",
    "-c",
    HTTPD,
];

#[test]
#[ignore = "needs root"]
fn capability_kept_through_capset_is_on_the_allowlist() {
    require_engine(&[tools_image()]);
    let name = unique("capsh");
    let rec = Recording::start("kept", &[&name]);
    assert!(
        serves(&name, &[], &tools_image(), CAPSH_HTTPD),
        "capsh + httpd does not serve under Docker's defaults"
    );
    let _ = docker(&["kill", &name]);
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&name);

    let profile = read_profile(&dir, &name);
    let kept = entry_for(&profile, "kept", "CAP_NET_BIND_SERVICE");
    assert_eq!(kept["evidence"][0]["comm"], "capsh", "{kept}");
    assert!(
        kept["sets"]
            .as_array()
            .unwrap()
            .contains(&"permitted".into()),
        "{kept}"
    );
    // No check exercised it (Docker let httpd's bind through unchecked),
    // but it is on the allowlist, apart from required.
    assert!(
        !names(&profile, "required").contains(&"CAP_NET_BIND_SERVICE".to_owned()),
        "{profile}"
    );
    assert!(
        names(&profile, "allowlist").contains(&"CAP_NET_BIND_SERVICE".to_owned()),
        "{profile}"
    );
    // capset()'s own CAP_SETPCAP checks are not counted as needed.
    assert!(
        !names(&profile, "required").contains(&"CAP_SETPCAP".to_owned()),
        "{profile}"
    );

    // Exactly the allowlist serves,
    let caps = granted(&dir, &name, "docker");
    assert!(
        serves(&name, &cap_flags(&caps), &tools_image(), CAPSH_HTTPD),
        "not sufficient with {caps:?}"
    );
    remove(&name);
    // and without the kept capability capsh fails at start.
    let fewer = cap_flags(&without(&caps, "NET_BIND_SERVICE"));
    assert!(
        !serves(&name, &fewer, &tools_image(), CAPSH_HTTPD),
        "serves without the kept NET_BIND_SERVICE ({fewer:?})"
    );
    let logs = docker(&["logs", &name]);
    assert!(
        stderr(&logs).contains("Unable to set capabilities")
            || String::from_utf8_lossy(&logs.stdout).contains("Unable to set capabilities"),
        "capsh should say why: {}",
        stderr(&logs)
    );
    remove(&name);
}

/// util-linux setpriv drops to uid 1000: setresuid() with KEEPCAPS, then a
/// capset() that raises its whole effective set again, then the exec of a
/// program that, not root and with no file or ambient capabilities, loses
/// all of it.
const SETPRIV_ID: &[&str] = &[
    "sh",
    "-c",
    "/usr/bin/setpriv --reuid=1000 --regid=1000 --clear-groups id",
];

/// What setpriv's capset() raised and its exec lost is `transient`, not
/// kept: the allowlist is what was checked (SETUID, SETGID), not Docker's
/// whole default set, and it is enough.
#[test]
#[ignore = "needs root"]
fn capabilities_lost_at_exec_are_transient_not_kept() {
    require_engine(&[tools_image()]);
    let name = unique("setpriv");
    let rec = Recording::start("transient", &[&name]);
    let image = tools_image();
    let mut args = vec!["run", "--name", &name, "--network", "none", &image];
    args.extend_from_slice(SETPRIV_ID);
    let out = docker(&args);
    assert!(out.status.success(), "setpriv fails: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("uid=1000"));
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    remove(&name);

    let profile = read_profile(&dir, &name);
    assert_eq!(
        names(&profile, "allowlist"),
        ["CAP_SETGID", "CAP_SETUID"],
        "{profile}"
    );
    assert!(entries(&profile, "kept").is_empty(), "{profile}");
    let transient = entry_for(&profile, "transient", "CAP_AUDIT_WRITE");
    assert_eq!(transient["evidence"][0]["comm"], "setpriv", "{transient}");
    assert_eq!(transient["lost_at_exec_of"][0], "id", "{transient}");
    assert_eq!(
        entries(&profile, "transient").len(),
        14,
        "Docker's 14 defaults: {profile}"
    );

    // The allowlist alone runs it.
    let caps = granted(&dir, &name, "docker");
    let out = run_to_end(&cap_flags(&caps), &tools_image(), SETPRIV_ID);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("uid=1000"),
        "setpriv fails with {caps:?}: {}",
        stderr(&out)
    );
}
