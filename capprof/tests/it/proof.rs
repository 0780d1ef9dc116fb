//! Proof on the real engine: each workload is recorded with
//! `capprof record`, its observed allowlist is larger than what it needs,
//! `capprof minimize` finds exactly what it needs, and `capprof verify`
//! proves the result. Then: a flaky workload and a flaky probe, `run`
//! profiles and `run --caps`, cleanup after failures and Ctrl-C, and bad
//! input. Every test checks that no container capprof created is left.
//!
//! Runs are kept short (the CI machine has two cores): one or two runs per
//! tried set, workloads of a second or less.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::common::*;

const LABEL: &str = "io.capprof.proof";

fn image() -> String {
    std::env::var("CAPPROF_TEST_IMAGE").unwrap_or_else(|_| "capprof-busybox:test".into())
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs")
}

fn require_engine() {
    require_root();
    let out = docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        out.status.success(),
        "no Docker engine answers (DOCKER_HOST={:?}); run through `cargo xtask test`: {}",
        std::env::var("DOCKER_HOST").ok(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Containers capprof created to prove a profile that are still there.
fn proof_containers() -> Vec<String> {
    let out = docker(&["ps", "-aq", "--filter", &format!("label={LABEL}")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_no_proof_containers() {
    let left = proof_containers();
    assert!(left.is_empty(), "capprof left containers behind: {left:?}");
}

/// A container name unique to this test run.
fn unique(tag: &str) -> String {
    format!("capprof-proof-t-{tag}-{}", std::process::id())
}

/// The test helper binary and the host libraries it needs, mounted
/// read-only into a busybox container.
fn action_mounts() -> Vec<String> {
    let mut v = vec![];
    for (src, dst) in [
        (ACTION, "/action"),
        ("/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"),
        ("/lib64", "/lib64"),
    ] {
        v.push("-v".to_owned());
        v.push(format!("{src}:{dst}:ro"));
    }
    v
}

/// Records one container: `capprof record --container NAME` while the
/// container runs `cmd` (detached when `detach`, then `exercise`, then
/// stopped). Returns the scratch dir and the profile's path. The container
/// is left in place, so that its environment can be read back; the test
/// removes it.
fn record(
    tag: &str,
    name: &str,
    flags: &[String],
    image: &str,
    cmd: &[&str],
    detach: bool,
    exercise: &dyn Fn(),
) -> (Scratch, PathBuf) {
    let _ = docker(&["rm", "-f", name]);
    let dir = Scratch::new(tag);
    let out_dir = dir.path("profiles");
    let mut child = Command::new(CAPPROF)
        .args([
            "record",
            "--out",
            out_dir.to_str().unwrap(),
            "--container",
            name,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("capprof record starts");
    wait_for_line(&mut child, "capprof", "recording", Duration::from_secs(30));
    let mut args: Vec<String> = vec!["run".into(), "--name".into(), name.into()];
    if !flags.iter().any(|f| f.starts_with("--network")) {
        args.extend(["--network".into(), "none".into()]);
    }
    if detach {
        args.push("-d".into());
    }
    args.extend(flags.iter().cloned());
    args.push(image.to_owned());
    args.extend(cmd.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = docker(&argv);
    assert!(
        out.status.success(),
        "{name} failed under the default set: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exercise();
    if detach {
        let _ = docker(&["stop", "-t", "1", name]);
    }
    let profile = out_dir.join(format!("{name}.json"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !profile.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "capprof record exited with {status}");
    assert!(profile.exists(), "no profile for {name}");
    (dir, profile)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn run_capprof(args: &[&str]) -> Output {
    let out = capprof(args);
    eprintln!(
        "$ capprof {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `capprof minimize`, which must succeed; the minimized profile.
fn minimize(profile: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "minimize",
        "--out",
        out.to_str().unwrap(),
        "--timeout",
        "15",
    ];
    args.extend_from_slice(extra);
    args.push(profile.to_str().unwrap());
    let result = run_capprof(&args);
    assert!(result.status.success(), "minimize failed");
    assert_no_proof_containers();
    read_json(out)
}

/// `capprof verify -f json`: the exit status and the report.
fn verify(profile: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let mut args = vec!["verify", "--format", "json"];
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout", "15"]);
    }
    args.extend_from_slice(extra);
    args.push(profile.to_str().unwrap());
    let out = run_capprof(&args);
    assert_no_proof_containers();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), report)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    sorted(v.iter().map(|s| s.to_string()).collect())
}

/// A recorded profile and its minimized form.
struct Proven {
    _dir: Scratch,
    /// The recorded profile.
    profile: PathBuf,
    min: Value,
}

/// Records, checks that `observed` was seen, minimizes to exactly
/// `needed`, and proves the result with verify (and verify --ablate: each
/// capability left is needed).
fn prove(
    tag: &str,
    flags: &[String],
    cmd: &[&str],
    observed: &[&str],
    needed: &[&str],
    probe: &[&str],
) -> Proven {
    prove_image(tag, flags, &image(), cmd, observed, needed, probe)
}

/// [`prove`] for a workload of another image.
fn prove_image(
    tag: &str,
    flags: &[String],
    image: &str,
    cmd: &[&str],
    observed: &[&str],
    needed: &[&str],
    probe: &[&str],
) -> Proven {
    require_engine();
    let name = unique(tag);
    let (dir, profile) = record(tag, &name, flags, image, cmd, !probe.is_empty(), &|| {
        std::thread::sleep(Duration::from_millis(700))
    });
    let recorded = read_json(&profile);
    let allowlist = names(&recorded, "allowlist");
    for cap in observed {
        assert!(
            allowlist.contains(&cap.to_string()),
            "{cap} not observed: {allowlist:?}"
        );
    }
    // Larger, or (where the kernel side already leaves a needless
    // capability out) the same: the proof must never make it larger.
    assert!(
        allowlist.len() >= needed.len(),
        "the observed set {allowlist:?} is smaller than what is needed"
    );
    let run = &recorded["subject"]["run"];
    assert_eq!(run["image"], image, "{run}");
    assert_eq!(run["network_mode"], "none", "{run}");

    let out = dir.path("min.json");
    let mut extra = vec!["--runs", "1"];
    extra.extend_from_slice(probe);
    let min = minimize(&profile, &out, &extra);
    assert_eq!(sorted(names(&min, "allowlist")), strs(needed), "{min}");
    let proof = &min["proof"];
    assert_eq!(proof["method"], "minimize");
    assert_eq!(proof["sufficient"], true);
    assert_eq!(proof["runs"], 1);
    assert!(proof["engine"].as_str().unwrap().starts_with("docker "));
    assert_eq!(sorted(names(proof, "observed")), sorted(allowlist.clone()));
    let unneeded = names(proof, "unneeded");
    for cap in &allowlist {
        assert_eq!(
            unneeded.contains(cap),
            !needed.contains(&cap.as_str()),
            "{cap}: {proof}"
        );
    }

    // The minimized profile proves itself, and each capability left is
    // needed: the set is minimal.
    let mut extra = vec!["--ablate", "--runs", "1"];
    extra.extend_from_slice(probe);
    let (code, report) = verify(&out, &extra);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["sufficient"], true);
    let ablation = report["ablation"]
        .as_array()
        .expect("--ablate reports an ablation");
    for entry in ablation {
        assert_ne!(entry["verdict"], "unneeded", "{report}");
    }
    assert_eq!(ablation.len(), needed.len(), "{report}");
    // export says it is proven.
    let exported = capprof(&["export", "--format", "k8s", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&exported.stdout);
    assert!(text.contains("proven sufficient"), "{text}");
    let _ = docker(&["rm", "-f", &name]);
    Proven {
        _dir: dir,
        profile,
        min,
    }
}

#[test]
#[ignore = "needs root"]
fn chmod_needs_fowner_but_not_fsetid() {
    let proven = prove(
        "chmod",
        &["-e".into(), "TOKEN=not-in-the-profile".into()],
        &[
            "sh",
            "-c",
            "touch /tmp/f && chown 1000:1000 /tmp/f && chmod 600 /tmp/f && [ ${#TOKEN} = 18 ]",
        ],
        &["CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID"],
        &["CAP_CHOWN", "CAP_FOWNER"],
        &[],
    );
    // The value the run needed came from the original container: the
    // profile keeps only the variable's name.
    let text = std::fs::read_to_string(&proven.profile).unwrap();
    assert!(!text.contains("not-in-the-profile"), "{text}");
    let recorded: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        recorded["subject"]["run"]["env_names"],
        serde_json::json!(["TOKEN"])
    );
}

#[test]
#[ignore = "needs root"]
fn tar_extract_needs_no_fsetid() {
    prove(
        "tar",
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/a && echo x > /tmp/a/f && chown 1000:1000 /tmp/a/f && chmod 4755 /tmp/a/f \
             && tar -cf /tmp/a.tar -C /tmp/a . && mkdir /tmp/b && tar -xpf /tmp/a.tar -C /tmp/b",
        ],
        &["CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID"],
        &["CAP_CHOWN", "CAP_FOWNER"],
        &[],
    );
}

/// An entrypoint's best-effort steps, as many images have them: it tries
/// to hand a data directory to its user and to make a device node, and
/// carries on when it cannot. Both checks are made and granted, so both are
/// observed; neither is needed.
#[test]
#[ignore = "needs root"]
fn best_effort_entrypoint_steps_are_not_needed() {
    let proven = prove(
        "besteffort",
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/data && (chown -R 1000:1000 /tmp/data 2>/dev/null || echo 'cannot chown, going on') \
             && (mknod /tmp/null c 1 3 2>/dev/null || echo 'no mknod, going on') && echo ready",
        ],
        &["CAP_CHOWN", "CAP_MKNOD"],
        &[],
        &[],
    );
    assert_eq!(
        sorted(names(&proven.min["proof"], "unneeded")),
        strs(&["CAP_CHOWN", "CAP_MKNOD"])
    );
}

/// A program that reads its private configuration when it can and falls
/// back to defaults when it cannot: root reading another user's 0600 file
/// is granted DAC_OVERRIDE, and without it the program still works.
#[test]
#[ignore = "needs root"]
fn a_config_reader_with_a_fallback_needs_no_dac_override() {
    prove(
        "fallback",
        &[],
        &[
            "sh",
            "-c",
            "(cat /srv/img/app-file > /tmp/conf 2>/dev/null || echo defaults > /tmp/conf) \
             && grep -q . /tmp/conf",
        ],
        &["CAP_DAC_OVERRIDE"],
        &[],
        &[],
    );
}

#[test]
#[ignore = "needs root"]
fn a_libcap_style_drop_needs_no_setpcap() {
    // capset()'s own CAP_SETPCAP check is classified advisory in the kernel
    // side (it decides nothing unless the call grows the inheritable set),
    // so observation no longer puts SETPCAP on the allowlist; the proof
    // confirms that CHOWN alone is needed.
    let proven = prove(
        "libcap",
        &action_mounts(),
        &[
            "sh",
            "-c",
            "touch /tmp/f && /action drop-caps-then-chown /tmp/f",
        ],
        &["CAP_CHOWN"],
        &["CAP_CHOWN"],
        &[],
    );
    assert!(
        !names(&proven.min, "allowlist").contains(&"CAP_SETPCAP".to_owned()),
        "{}",
        proven.min
    );
}

#[test]
#[ignore = "needs root"]
fn a_web_server_is_proven_with_a_probe() {
    let min = prove(
        "httpd",
        &[],
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello > /www/index.html && chown -R 1000:1000 /www \
             && chmod 600 /www/index.html && exec httpd -f -p 8080 -h /www -u app",
        ],
        &[
            "CAP_CHOWN",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_SETGID",
            "CAP_SETUID",
        ],
        &["CAP_CHOWN", "CAP_FOWNER", "CAP_SETGID", "CAP_SETUID"],
        &["--probe-exec", "wget -q -O- http://127.0.0.1:8080/"],
    );
    assert_eq!(
        min.min["proof"]["probe"],
        "exec: wget -q -O- http://127.0.0.1:8080/"
    );
}

/// Debian's nginx (nginx-light, its own configuration: port 80, `user
/// www-data`) on the engine's storage driver, overlay2 unless the run says
/// otherwise. At start nginx makes its temporary directories and opens its
/// logs, and on overlay2 the kernel copies those paths up with the
/// mounter's borrowed credentials (SYS_ADMIN, DAC_READ_SEARCH, FOWNER …).
/// None of those may reach the allowlist: minimize finds exactly the four
/// nginx's own start needs, and verify --ablate proves each of them, with a
/// probe that fetches the page.
#[test]
#[ignore = "needs root"]
fn debian_nginx_needs_only_its_own_checks() {
    let image =
        std::env::var("CAPPROF_NGINX_IMAGE").unwrap_or_else(|_| "capprof-nginx:test".into());
    let needed = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETGID", "CAP_SETUID"];
    let proven = prove_image(
        "nginx",
        &[],
        &image,
        &["/usr/sbin/nginx", "-g", "daemon off;"],
        &needed,
        &needed,
        &["--probe-exec", "wget -q -O- http://127.0.0.1/"],
    );
    let recorded = read_json(&proven.profile);
    // Observation alone is already exact: nothing for minimize to remove.
    assert_eq!(sorted(names(&recorded, "allowlist")), strs(&needed));
    for cap in ["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"] {
        assert!(
            !names(&recorded, "allowlist").contains(&cap.to_owned()),
            "{cap} on nginx's allowlist: {recorded}"
        );
    }
    let driver = docker(&["info", "--format", "{{.Driver}}"]);
    if String::from_utf8_lossy(&driver.stdout).trim() == "overlay2" {
        // The copy-ups were seen, and kept apart.
        let borrowed = names(&recorded, "borrowed");
        assert!(
            borrowed.contains(&"CAP_SYS_ADMIN".to_owned()),
            "no borrowed SYS_ADMIN on overlay2: {borrowed:?}"
        );
    }
    // Port 80 bound under Docker's relaxed sysctl: conditional, not
    // required, so a runtime that keeps 1024 gets NET_BIND_SERVICE.
    let conditional: Vec<&str> = recorded["conditional"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["capability"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        conditional.contains(&"CAP_NET_BIND_SERVICE"),
        "port 80 is not conditional: {}",
        recorded["conditional"]
    );
}

#[test]
#[ignore = "needs root"]
fn audit_write_is_kept_and_flagged_unless_asked() {
    let min = prove(
        "audit",
        &action_mounts(),
        &[
            "sh",
            "-c",
            "/action audit-login && touch /tmp/f && chown 1000:1000 /tmp/f && chmod 600 /tmp/f",
        ],
        &["CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_FSETID"],
        &["CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_FOWNER"],
        &[],
    );
    let proof = &min.min["proof"];
    assert_eq!(names(proof, "kept_security_relevant"), ["CAP_AUDIT_WRITE"]);
    assert!(!names(proof, "needed").contains(&"CAP_AUDIT_WRITE".to_owned()));

    // Asked to, minimize tries it: the workload passes without it (the
    // login is then not audited), so it goes.
    let dir = Scratch::new("audit-drop");
    let out = dir.path("min.json");
    // The container is gone by now, and with it the trust in its binds
    // of the host's libraries: this test's own, so --trust-run.
    let dropped = minimize(
        &min.profile,
        &out,
        &["--runs", "1", "--drop-security-relevant", "--trust-run"],
    );
    assert_eq!(
        sorted(names(&dropped, "allowlist")),
        strs(&["CAP_CHOWN", "CAP_FOWNER"])
    );
    assert!(names(&dropped["proof"], "kept_security_relevant").is_empty());
    assert!(names(&dropped["proof"], "unneeded").contains(&"CAP_AUDIT_WRITE".to_owned()));
}

#[test]
#[ignore = "needs root"]
fn a_failed_privilege_drop_keeps_setuid_and_setgid() {
    // su drops to app; if it cannot, the script carries on as root. Exit
    // status 0 either way: only the credential comparison sees it.
    let min = prove(
        "su",
        &[],
        &[
            "sh",
            "-c",
            "touch /tmp/ready; su -s /bin/sh app -c 'exec sleep 1' || sleep 1; true",
        ],
        &["CAP_SETGID", "CAP_SETUID"],
        &["CAP_SETGID", "CAP_SETUID"],
        &[],
    );
    let proof = &min.min["proof"];
    assert!(names(proof, "needed").is_empty(), "{proof}");
    let kept: Vec<&Value> = proof["kept_identity"].as_array().unwrap().iter().collect();
    for cap in ["CAP_SETGID", "CAP_SETUID"] {
        let entry = kept
            .iter()
            .find(|k| k["capability"] == cap)
            .unwrap_or_else(|| panic!("{cap} not in kept_identity: {proof}"));
        assert!(
            entry["process"].as_str().unwrap().ends_with("sleep"),
            "{entry}"
        );
        let drift: Vec<String> = names(entry, "drift");
        assert!(drift.contains(&"uid 0".to_owned()), "{entry}");
    }
}

/// squid's drop: keep the capabilities across setuid(), then capset()
/// down to NET_BIND_SERVICE alone, and carry on if that is refused. Without
/// NET_BIND_SERVICE the call is refused and the process, now uid 1000,
/// still holds everything it meant to drop; it exits at once, so the
/// credential sampler (every 50 ms) almost never sees that. The kernel
/// side sees the refused call itself, so the verdict is the same in every
/// run: NET_BIND_SERVICE is needed, for the drop.
#[test]
#[ignore = "needs root"]
fn a_drop_refused_by_capset_keeps_what_it_asked_for() {
    let min = prove(
        "capset-refused",
        &action_mounts(),
        &["/action", "drop-keeping", "10"],
        &["CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID"],
        &["CAP_NET_BIND_SERVICE", "CAP_SETGID", "CAP_SETUID"],
        &[],
    );
    let proof = &min.min["proof"];
    let kept: Vec<&Value> = proof["kept_identity"].as_array().unwrap().iter().collect();
    let entry = kept
        .iter()
        .find(|k| k["capability"] == "CAP_NET_BIND_SERVICE")
        .unwrap_or_else(|| panic!("NET_BIND_SERVICE not in kept_identity: {proof}"));
    assert_eq!(entry["process"], "action", "{entry}");
    let drift = names(entry, "drift");
    assert!(
        drift.iter().any(|d| d.contains("refused capset()")
            && d.contains("CAP_SETUID")
            && d.ends_with("(it lacked CAP_NET_BIND_SERVICE)")),
        "{entry}"
    );
}

/// A workload that needs CHOWN on every other run only (a counter in a
/// mounted directory says which), and a host probe that fails every other
/// attempt. Over two runs per set, CHOWN is never dropped, and the probe's
/// failures are retried, not taken for the workload's. Both counters are
/// replaced by rename: capprof may kill the probe, and remove the
/// container, at any point, and a half-written counter would read empty.
#[test]
#[ignore = "needs root"]
fn a_flaky_workload_and_a_flaky_probe_never_shrink_the_set() {
    require_engine();
    let state = Scratch::new("flaky-state");
    std::fs::write(state.path("n"), "0").unwrap();
    let probe = state.path("probe.sh");
    let count = state.path("probe-count");
    std::fs::write(
        &probe,
        format!(
            "#!/bin/sh\n\
             c=$(cat {count} 2>/dev/null || echo 0)\n\
             echo $((c + 1)) > {count}.tmp && mv {count}.tmp {count}\n\
             [ $((c % 2)) = 1 ] || exit 1\n\
             [ -e /proc/$CAPPROF_CONTAINER_PID/root/tmp/done ]\n",
            count = count.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let name = unique("flaky");
    let flags = vec!["-v".to_owned(), format!("{}:/state", state.0.display())];
    let (dir, profile) = record(
        "flaky",
        &name,
        &flags,
        &image(),
        &[
            "sh",
            "-c",
            "n=$(cat /state/n); echo $((n + 1)) > /state/n.tmp && mv /state/n.tmp /state/n; \
             if [ $((n % 2)) = 0 ]; then touch /tmp/f && chown 1000:1000 /tmp/f || exit 1; fi; \
             touch /tmp/done; exec sleep 30",
        ],
        true,
        &|| std::thread::sleep(Duration::from_millis(700)),
    );
    let recorded = read_json(&profile);
    assert!(names(&recorded, "allowlist").contains(&"CAP_CHOWN".to_owned()));
    let out = dir.path("min.json");
    let min = minimize(
        &profile,
        &out,
        &["--runs", "2", "--probe", probe.to_str().unwrap()],
    );
    assert_eq!(names(&min, "allowlist"), ["CAP_CHOWN"], "{min}");
    let runs: u64 = std::fs::read_to_string(state.path("n"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let attempts: u64 = std::fs::read_to_string(&count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        attempts >= 2 * (runs - 2),
        "the probe was not retried: {attempts} attempts over {runs} runs"
    );
    let _ = docker(&["rm", "-f", &name]);
}

/// `capprof run` profiles: `run --caps` limits every set, and minimize and
/// verify re-run the command that way.
#[test]
#[ignore = "needs root"]
fn run_profiles_are_minimized_with_run_caps() {
    require_root();
    let out = capprof(&[
        "run",
        "--quiet",
        "--caps",
        "CHOWN,NET_RAW",
        "--",
        "sh",
        "-c",
        "grep ^Cap /proc/self/status",
    ]);
    let status = String::from_utf8_lossy(&out.stdout);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("{set}:\t0000000000002001")),
            "{set} not limited: {status}"
        );
    }

    let dir = Scratch::new("run-profile");
    let file = dir.path("f");
    let cmd = format!(
        "rm -f {f} && touch {f} && chown 1000:1000 {f} && chmod 600 {f}",
        f = file.display()
    );
    let (out, profile) = profile_of(&["sh", "-c", &cmd]);
    assert!(out.status.success());
    let allowlist = names(&profile, "allowlist");
    assert!(
        allowlist.contains(&"CAP_FSETID".to_owned()),
        "{allowlist:?}"
    );
    assert_eq!(profile["subject"]["run"]["command"][2], cmd.as_str());
    let input = dir.path("p.json");
    std::fs::write(&input, serde_json::to_string(&profile).unwrap()).unwrap();
    // A `run` profile's command runs on the host, as root: it takes
    // --trust-run, and without it nothing runs.
    let out = capprof(&["verify", input.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "run.command");
    let trusted = ["--trust-run", "--runs", "1"];
    let min = minimize(&input, &dir.path("min.json"), &trusted);
    assert_eq!(
        sorted(names(&min, "allowlist")),
        strs(&["CAP_CHOWN", "CAP_FOWNER"])
    );
    assert_eq!(min["proof"]["engine"], "command");
    let (code, report) = verify(&dir.path("min.json"), &trusted);
    assert_eq!(code, Some(0), "{report}");
    // With less, the command fails, and verify says so with status 1.
    let mut less = min.clone();
    less["allowlist"] = serde_json::json!(["CAP_CHOWN"]);
    less["proof"]["needed"] = serde_json::json!(["CAP_CHOWN"]);
    less["proof"]["unneeded"] = serde_json::json!([]);
    let less_path = dir.path("less.json");
    std::fs::write(&less_path, serde_json::to_string(&less).unwrap()).unwrap();
    let (code, report) = verify(&less_path, &trusted);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["sufficient"], false);
}

/// A profile of `cmd` in the test image, with no capability observed.
fn synthetic_profile(dir: &Scratch, image: &str, cmd: &[&str]) -> PathBuf {
    let profile = serde_json::json!({
        "schema": "capprof.profile/v1",
        "generator": "capprof test",
        "subject": {
            "kind": "container",
            "name": "synthetic",
            "run": {"image": image, "cmd": cmd, "network_mode": "none"}
        },
        "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
        "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
        "capabilities": []
    });
    let path = dir.path("synthetic.json");
    std::fs::write(&path, profile.to_string()).unwrap();
    path
}

#[test]
#[ignore = "needs root"]
fn a_failing_probe_or_workload_leaves_no_container() {
    require_engine();
    let dir = Scratch::new("fails");
    let ok = synthetic_profile(&dir, &image(), &["sleep", "30"]);
    let (code, report) = verify(
        &ok,
        &["--runs", "1", "--timeout", "3", "--probe-exec", "false"],
    );
    assert_eq!(code, Some(1), "{report}");
    assert!(
        report["failure"]
            .as_str()
            .unwrap()
            .contains("the probe did not pass"),
        "{report}"
    );
    let out = run_capprof(&[
        "minimize",
        "--runs",
        "1",
        "--timeout",
        "3",
        "--probe-exec",
        "false",
        "--out",
        dir.path("min.json").to_str().unwrap(),
        ok.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("fails with the profile's own allowlist")
    );
    assert!(!dir.path("min.json").exists());
    assert_no_proof_containers();
    let failing = synthetic_profile(&dir, &image(), &["false"]);
    let (code, report) = verify(&failing, &["--runs", "1"]);
    assert_eq!(code, Some(1));
    assert_eq!(report["failure"], "run 1 of 1: exit status 1");
}

#[test]
#[ignore = "needs root"]
fn ctrl_c_leaves_no_container() {
    require_engine();
    let dir = Scratch::new("ctrl-c");
    let profile = synthetic_profile(&dir, &image(), &["sleep", "30"]);
    let mut child = Command::new(CAPPROF)
        .args([
            "minimize",
            "--runs",
            "1",
            "--out",
            dir.path("min.json").to_str().unwrap(),
            profile.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = echo_lines(child.stderr.take().unwrap(), "capprof");
    // Wait until the baseline's container runs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proof_containers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "minimize never created a container"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Every line, up to end of file (try_iter alone raced the reader).
    let lines = drain_lines(&rx);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("interrupted; removed 1 container")),
        "{lines:?}"
    );
    assert_no_proof_containers();
    assert!(!dir.path("min.json").exists());
}

#[test]
#[ignore = "needs root"]
fn bad_input_is_one_line_and_status_2() {
    require_engine();
    let dir = Scratch::new("proof-bad");
    let ok = synthetic_profile(&dir, &image(), &["true"]);
    let ok_str = ok.to_str().unwrap();

    // No engine.
    let out = Command::new(CAPPROF)
        .args(["verify", ok_str])
        .env("DOCKER_HOST", "unix:///nonexistent/capprof-docker.sock")
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "no container engine answers");

    // An image that is gone.
    let gone = Scratch::new("proof-gone");
    let gone = synthetic_profile(&gone, "capprof-gone-image:none", &["true"]);
    let out = capprof(&["verify", gone.to_str().unwrap()]);
    assert_one_line_error(
        &out,
        2,
        "image capprof-gone-image:none is no longer on the engine",
    );

    // A profile without subject.run.
    let mut value = read_json(&ok);
    value["subject"]
        .as_object_mut()
        .unwrap()
        .remove("run")
        .unwrap();
    let bare = dir.path("bare.json");
    std::fs::write(&bare, value.to_string()).unwrap();
    let out = capprof(&[
        "minimize",
        "--out",
        dir.path("o.json").to_str().unwrap(),
        bare.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 2, "has no subject.run");

    // Probes that cannot run: on the host, and in the container.
    let not_exec = dir.path("probe.sh");
    std::fs::write(&not_exec, "#!/bin/sh\ntrue\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = capprof(&["verify", "--probe", not_exec.to_str().unwrap(), ok_str]);
    assert_one_line_error(&out, 2, "is not an executable file");
    let out = capprof(&["verify", "--probe", "capprof-no-such-probe --flag", ok_str]);
    assert_one_line_error(&out, 2, "command not found");
    let sleeper = Scratch::new("proof-sleeper");
    let sleeper = synthetic_profile(&sleeper, &image(), &["sleep", "30"]);
    let out = capprof(&[
        "verify",
        "--runs",
        "1",
        "--probe-exec",
        "/capprof-no-such-probe",
        sleeper.to_str().unwrap(),
    ]);
    // Found only once the container runs: after the block that says what
    // runs, one line.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (block, last) = stderr.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(last.contains("cannot run in the container"), "{stderr}");
    assert!(
        block.starts_with("capprof: verify will run, as root, on ")
            && block.lines().skip(1).all(|l| l.starts_with("  ")),
        "{stderr}"
    );
    assert_no_proof_containers();

    // Environment values that were not kept, from a container that is gone.
    let mut value = read_json(&ok);
    value["subject"]["id"] = Value::String("ab".repeat(32));
    value["subject"]["run"]["env_names"] = serde_json::json!(["TOKEN"]);
    let no_env = dir.path("no-env.json");
    std::fs::write(&no_env, value.to_string()).unwrap();
    let out = capprof(&["verify", no_env.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "record again with --keep-env");

    let out = capprof(&["minimize", "--runs", "0", "--out", "x.json", ok_str]);
    assert_eq!(out.status.code(), Some(2));
}
