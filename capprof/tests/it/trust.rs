//! Profiles that mean what they say under awkward input: re-used names,
//! containers recorded after they started, and files that are not
//! profiles, on the real engine.

use std::time::Duration;

use crate::common::{engine::*, *};

fn name(tag: &str) -> String {
    format!("capprof-t-{tag}-{}", std::process::id())
}

/// A name re-used during one recording: both containers keep a profile,
/// each with its own id, and neither overwrites the other.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_reused_name_keeps_both_profiles() {
    require_engine();
    let ctr = name("reuse");
    let rec = Recording::start("reuse", &[]);
    // First a chown (CHOWN), then, under the same name, a mknod (MKNOD).
    let first = docker_run(
        Some(&ctr),
        &[],
        &["sh", "-c", "touch /tmp/f && chown 1000 /tmp/f"],
    );
    assert!(first.status.success(), "{}", output_text(&first));
    let first_id = String::from_utf8_lossy(&docker(&["inspect", "-f", "{{.Id}}", &ctr]).stdout)
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(800));
    docker(&["rm", "-f", &ctr]);
    let second = docker_run(Some(&ctr), &[], &["mknod", "/tmp/n", "c", "1", "3"]);
    assert!(second.status.success(), "{}", output_text(&second));
    let second_id = String::from_utf8_lossy(&docker(&["inspect", "-f", "{{.Id}}", &ctr]).stdout)
        .trim()
        .to_owned();
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    docker(&["rm", "-f", &ctr]);

    let mut seen = vec![];
    for entry in std::fs::read_dir(dir.path("profiles")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !stem.starts_with(&ctr) {
            continue;
        }
        let profile: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let id = profile["subject"]["id"].as_str().unwrap().to_owned();
        seen.push((stem, id, names(&profile, "allowlist")));
    }
    seen.sort();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let of = |id: &str| seen.iter().find(|(_, i, _)| i == id).cloned();
    let (_, _, first_caps) = of(&first_id).expect("the first container's profile");
    let (_, _, second_caps) = of(&second_id).expect("the second container's profile");
    assert_eq!(first_caps, ["CAP_CHOWN"], "{seen:?}");
    assert_eq!(second_caps, ["CAP_MKNOD"], "{seen:?}");
    // One keeps the plain name, the other is told apart by its id.
    assert!(seen.iter().any(|(stem, ..)| *stem == ctr), "{seen:?}");
    assert!(
        seen.iter()
            .any(|(stem, id, _)| *stem == format!("{ctr}-{}", &id[..12])),
        "{seen:?}"
    );
}

/// A container that was running before the recording began: the profile
/// says it is partial, export warns, and --require-complete refuses.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_container_recorded_after_its_start_is_partial() {
    require_engine();
    let ctr = name("partial");
    let out = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &ctr,
        &test_image(),
        "sh",
        "-c",
        "sleep 2; touch /tmp/f; chown 1000 /tmp/f",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let rec = Recording::start("partial", &["--container", &ctr]);
    let waited = docker(&["wait", &ctr]);
    assert!(waited.status.success(), "{}", output_text(&waited));
    std::thread::sleep(Duration::from_millis(800));
    let dir = rec.stop();
    docker(&["rm", "-f", &ctr]);

    let profile = read_profile(&dir, &ctr);
    let partial = &profile["observation"]["partial"];
    assert!(partial.is_object(), "not marked partial: {profile}");
    assert!(partial["workload_started"].is_string(), "{partial}");
    assert!(partial["recording_started"].is_string(), "{partial}");

    let path = profile_path(&dir, &ctr);
    let out = capprof(&["export", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capprof: warning: ") && stderr.contains("already running"),
        "{stderr}"
    );
    let out = capprof(&["export", "--require-complete", path.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "already running");
}

/// Output paths that are not regular files are refused, and left as they
/// were.
#[test]
#[ignore = "needs root"]
fn export_writes_only_regular_files() {
    require_root();
    let dir = Scratch::new("outpaths");
    let out = capprof(&["export", "-o", "/dev/full", SAMPLE_PROFILE]);
    assert_one_line_error(&out, 2, "character device");
    assert!(
        std::fs::metadata("/dev/full")
            .map(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()))
            .unwrap_or(false),
        "/dev/full is still a device"
    );
    // A new file is private; a replaced one keeps its mode.
    let fresh = dir.path("fresh.txt");
    let out = capprof(&["export", "-o", fresh.to_str().unwrap(), SAMPLE_PROFILE]);
    assert!(out.status.success(), "{}", output_text(&out));
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&fresh), 0o600);
    std::fs::set_permissions(&fresh, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = capprof(&["export", "-o", fresh.to_str().unwrap(), SAMPLE_PROFILE]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(mode(&fresh), 0o644);
    // Profiles that are not files, or too large, are one line and exit 2.
    for (input, needle) in [
        ("/dev/zero", "is a character device, not a regular file"),
        ("/tmp", "is a directory, not a regular file"),
    ] {
        let out = capprof(&["export", input]);
        assert_one_line_error(&out, 2, needle);
    }
}

/// A container profile that re-runs `true` in the test image with `run`
/// merged into its `subject.run`; `id`, when given, names the original
/// container.
fn rerun_profile(dir: &Scratch, file: &str, id: Option<&str>, run: serde_json::Value) -> String {
    let mut spec = serde_json::json!({
        "image": test_image(), "cmd": ["true"], "network_mode": "none"
    });
    for (k, v) in run.as_object().unwrap() {
        spec[k] = v.clone();
    }
    let mut subject = serde_json::json!({"kind": "container", "name": "trust", "run": spec});
    if let Some(id) = id {
        subject["id"] = id.into();
    }
    let profile = serde_json::json!({
        "schema": "capprof.profile/v1",
        "generator": "capprof test",
        "subject": subject,
        "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
        "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
        "capabilities": []
    });
    let path = dir.path(file);
    std::fs::write(&path, profile.to_string()).unwrap();
    path.display().to_string()
}

fn verify(profile: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify", "--runs", "1", "--timeout", "20"];
    args.extend_from_slice(extra);
    args.push(profile);
    capprof(&args)
}

/// What reaches the host through the container's walls is refused, in
/// one line naming the setting and --trust-run; with --trust-run it runs,
/// after the block that says what will run and a warning.
#[test]
#[ignore = "needs root and a Docker engine"]
fn verify_refuses_what_reaches_the_host_unless_trusted() {
    require_engine();
    let dir = Scratch::new("trust-refuse");
    let cases = [
        (
            "root.json",
            serde_json::json!({"binds": ["/:/host:ro"]}),
            "run.binds \"/:/host:ro\" binds the host's root",
        ),
        (
            "path.json",
            serde_json::json!({"binds": ["/etc:/hostetc:ro"]}),
            "run.binds \"/etc:/hostetc:ro\"",
        ),
        (
            "device.json",
            serde_json::json!({"devices": [{"path_on_host": "/dev/null", "path_in_container": "/dev/xnull", "cgroup_permissions": "rwm"}]}),
            "run.devices \"/dev/null:/dev/xnull:rwm\"",
        ),
        (
            "privileged.json",
            serde_json::json!({"privileged": true}),
            "run.privileged",
        ),
        (
            "pid.json",
            serde_json::json!({"pid_mode": "host"}),
            "run.pid_mode \"host\"",
        ),
    ];
    for (file, run, needle) in cases {
        let profile = rerun_profile(&dir, file, None, run);
        let out = verify(&profile, &[]);
        assert_one_line_error(&out, 2, needle);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--trust-run"),
            "{}",
            output_text(&out)
        );
        let out = verify(&profile, &["--trust-run"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", output_text(&out));
        assert!(
            stderr.contains("capprof: verify will run, as root, on "),
            "{stderr}"
        );
        assert!(
            stderr.contains("capprof: warning: --trust-run: running what capprof would refuse: ")
                && stderr.contains(needle),
            "{stderr}"
        );
    }
}

/// The original container's own binds are trusted while the engine has
/// it (and only the same binds, for the same command); once it is gone,
/// no host path is.
#[test]
#[ignore = "needs root and a Docker engine"]
fn the_original_containers_own_binds_need_no_flag() {
    require_engine();
    let dir = Scratch::new("trust-original");
    std::fs::create_dir_all(dir.path("data")).unwrap();
    let bind = format!("{}:/data:ro", dir.path("data").display());
    let ctr = name("original");
    let _ = docker(&["rm", "-f", &ctr]);
    let out = docker_run(Some(&ctr), &["-v".into(), bind.clone()], &["true"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let id = String::from_utf8_lossy(&docker(&["inspect", "-f", "{{.Id}}", &ctr]).stdout)
        .trim()
        .to_owned();

    let own = rerun_profile(
        &dir,
        "own.json",
        Some(&id),
        serde_json::json!({"binds": [bind]}),
    );
    let out = verify(&own, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("  binds         {bind}")),
        "{stderr}"
    );
    assert!(!stderr.contains("capprof: warning: "), "{stderr}");

    // One more host path than the original had.
    let more = rerun_profile(
        &dir,
        "more.json",
        Some(&id),
        serde_json::json!({"binds": [bind, "/etc:/hostetc:ro"]}),
    );
    assert_one_line_error(
        &verify(&more, &[]),
        2,
        "run.binds \"/etc:/hostetc:ro\" reaches the host, and the original container was not given it",
    );
    // The same binds for another command borrow nothing.
    let other = rerun_profile(
        &dir,
        "other.json",
        Some(&id),
        serde_json::json!({"binds": [bind], "cmd": ["cat", "/data/x"]}),
    );
    assert_one_line_error(&verify(&other, &[]), 2, "no original container");

    docker(&["rm", "-f", &ctr]);
    assert_one_line_error(&verify(&own, &[]), 2, "no original container");
}

/// A `run` profile's command runs on the host, as root: never without
/// --trust-run.
#[test]
#[ignore = "needs root"]
fn a_run_profiles_command_needs_trust_run() {
    require_root();
    let dir = Scratch::new("trust-command");
    let profile = dir.path("p.json");
    let out = capprof(&[
        "run",
        "--out",
        profile.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "true",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let p = profile.to_str().unwrap();
    assert_one_line_error(
        &verify(p, &[]),
        2,
        "run.command \"sh -c true\" is a command that runs on this host as root",
    );
    let out = verify(p, &["--trust-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("capprof: verify will run, as root, on this host, outside any container:")
            && stderr.contains("  command       sh -c true"),
        "{stderr}"
    );
}
