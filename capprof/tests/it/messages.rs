//! What capprof says, and how: one grammar for `--caps`, one spelling of a
//! capability in human output, one style of warning line, messages that
//! say what is wrong rather than which library failed.

use crate::common::{engine::*, *};

/// `none` is the one way to ask for no capability: an empty list (an
/// unset shell variable) and `none` among names are refused before CMD
/// runs, each with one line that says why.
#[test]
#[ignore = "needs root"]
fn caps_grammar_refuses_ambiguous_lists() {
    require_root();
    let dir = Scratch::new("caps-grammar");
    let ran = dir.path("ran");
    let cmd = format!("touch {}", ran.display());
    for (list, needle) in [
        (
            "",
            "--caps \"\": empty list; write `none` for no capabilities",
        ),
        (
            "none,CHOWN",
            "`none` means no capabilities and cannot be combined with CHOWN",
        ),
        ("CHOWN,,NET_RAW", "empty name in the list"),
        ("CHOWN,FLY", "unknown capability \"FLY\""),
    ] {
        let out = capprof(&["run", "--quiet", "--caps", list, "--", "sh", "-c", &cmd]);
        assert_one_line_error(&out, 2, needle);
        assert!(!ran.exists(), "--caps {list:?} ran the command");
    }
    let out = capprof(&["run", "--quiet", "--caps", "none", "--", "sh", "-c", &cmd]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(ran.exists());
}

/// Every capability name in `text` carries the `CAP_` prefix, as `record`
/// and `run` print them.
fn assert_cap_spelling(text: &str) {
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let bare = word.parse::<capprof::capability::Cap>().is_ok() && !word.starts_with("CAP_");
        assert!(
            !bare || word.chars().any(|c| c.is_ascii_lowercase()),
            "{word:?} without CAP_ in:\n{text}"
        );
    }
}

/// `minimize` and `verify` spell capabilities as `record` does.
#[test]
#[ignore = "needs root"]
fn verify_and_minimize_spell_capabilities_as_record_does() {
    require_root();
    let dir = Scratch::new("cap-spelling");
    let file = dir.path("f");
    let cmd = format!(
        "rm -f {f} && touch {f} && chown 1000:1000 {f}",
        f = file.display()
    );
    let profile = dir.path("p.json");
    let out = capprof(&[
        "run",
        "--out",
        profile.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &cmd,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_cap_spelling(&output_text(&out));
    let min = dir.path("min.json");
    let p = profile.to_str().unwrap();
    // A `run` profile's command runs on the host: --trust-run says so.
    let out = capprof(&[
        "minimize",
        "--trust-run",
        "--runs",
        "1",
        "--out",
        min.to_str().unwrap(),
        p,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(text.contains("allowlist: CAP_CHOWN"), "{text}");
    assert_cap_spelling(&text);
    let out = capprof(&["verify", "--trust-run", "--runs", "1", "--ablate", p]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_cap_spelling(&output_text(&out));
}

/// A profile of a container whose name, image, command and program hold a
/// bidirectional override, an escape sequence and a zero-width space.
fn hostile_profile(dir: &Scratch) -> std::path::PathBuf {
    let text = std::fs::read_to_string(SAMPLE_PROFILE).unwrap();
    let mut p: serde_json::Value = serde_json::from_str(&text).unwrap();
    p["subject"]["name"] = "web\u{202E}lmth.exe".into();
    p["subject"]["image"] = "nginx\u{1b}[2J\u{200B}:1".into();
    p["subject"]["command"] = serde_json::json!(["sh", "-c", "x\u{2066}y\nz"]);
    p["capabilities"][0]["evidence"] = serde_json::json!([{
        "comm": "ch\u{202E}own", "exe": "/bin/ch\u{202E}own", "syscall": "fchownat",
        "pid": 7, "uid": 0, "verdict": "granted", "class": "required"
    }]);
    let path = dir.path("hostile.json");
    std::fs::write(&path, p.to_string()).unwrap();
    path
}

/// No hidden character reaches any output: each is shown as `\u{…}`.
fn assert_all_visible(what: &str, out: &std::process::Output) {
    let text = output_text(out);
    let hidden: Vec<char> = text
        .chars()
        .filter(|c| *c != '\n' && capprof::text::is_hidden(*c))
        .collect();
    assert!(hidden.is_empty(), "{what}: {hidden:?} in:\n{text}");
    if text.contains("lmth.exe") || text.contains("own") {
        assert!(
            text.contains("u{202e}"),
            "{what}: no visible escape in:\n{text}"
        );
    }
}

/// Names are escaped the same way by every output: each export's
/// comments, the Markdown and HTML reports, diff, and the tables.
#[test]
fn hidden_characters_in_names_are_shown_everywhere_the_same_way() {
    let dir = Scratch::new("hidden-chars");
    let hostile = hostile_profile(&dir);
    let p = hostile.to_str().unwrap();
    for format in ["docker", "compose", "k8s", "oci", "systemd", "podman"] {
        let out = capprof(&["export", "--format", format, p]);
        assert!(out.status.success(), "{format}: {}", output_text(&out));
        assert_all_visible(format, &out);
    }
    let out = capprof(&[
        "export",
        "--format",
        "k8s-patch",
        "--target",
        "deploy/web",
        p,
    ]);
    if out.status.success() {
        assert_all_visible("k8s-patch", &out);
    }
    for format in ["markdown", "html"] {
        let out = capprof(&["report", "--format", format, "--out", "-", p]);
        assert!(out.status.success(), "{format}: {}", output_text(&out));
        assert_all_visible(format, &out);
    }
    let out = capprof(&["diff", SAMPLE_PROFILE, p]);
    assert_all_visible("diff", &out);
}

/// A container name unique to this test run.
fn unique(tag: &str) -> String {
    format!("capprof-msgs-{tag}-{}", std::process::id())
}

/// One multi-line environment value (a PEM certificate) no longer costs
/// the container its `subject.run`: the profile keeps how it runs (the
/// variable's name, not its value), and `verify` re-runs it with the value
/// read back from the original container.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_multi_line_env_value_keeps_the_run_and_verifies() {
    require_engine();
    let name = unique("pem");
    let _ = docker(&["rm", "-f", &name]);
    let recording = Recording::start("pem", &["--container", &name]);
    let pem = "TLS_CERT=-----BEGIN CERTIFICATE-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A\n-----END CERTIFICATE-----";
    // Fails unless the value arrives whole, on its three lines; lives long
    // enough to be inspected.
    let check = "sleep 1; test \"$(printf '%s\\n' \"$TLS_CERT\" | wc -l)\" -eq 3";
    let out = docker_run(
        Some(&name),
        &["-e".into(), pem.into()],
        &["sh", "-c", check],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    let dir = recording.stop();
    let profile = read_profile(&dir, &name);
    let run = &profile["subject"]["run"];
    assert!(run.is_object(), "no subject.run: {profile}");
    assert_eq!(run["env_names"], serde_json::json!(["TLS_CERT"]), "{run}");
    assert!(
        run.get("env").is_none(),
        "a value was kept without --keep-env: {run}"
    );
    let path = profile_path(&dir, &name);
    let out = capprof(&[
        "verify",
        "--runs",
        "1",
        "--timeout",
        "15",
        path.to_str().unwrap(),
    ]);
    let _ = docker(&["rm", "-f", &name]);
    assert!(out.status.success(), "verify: {}", output_text(&out));
}

/// `merge` counts each observation once: the same profile twice, or a
/// merge merged again with one of its inputs, with one warning line each.
#[test]
fn merge_counts_each_container_once_and_says_so() {
    let dir = Scratch::new("merge-twice");
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/run-sample.json"
    );
    let other = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/run-phases.json"
    );
    let merged = dir.path("m.json");
    let m = merged.to_str().unwrap();
    let profiles = |out: &std::process::Output| -> u64 {
        assert!(out.status.success(), "{}", output_text(out));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
        json["coverage"]["profiles"].as_u64().unwrap()
    };
    let out = capprof(&["merge", "-o", m, sample, sample]);
    assert_eq!(profiles(&out), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("already included"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("run-sample.json"), "{stderr}");

    let out = capprof(&["merge", "-o", m, sample, other]);
    assert_eq!(profiles(&out), 2);
    let twice = dir.path("m2.json");
    std::fs::copy(&merged, &twice).unwrap();
    let out = capprof(&["merge", "-o", m, twice.to_str().unwrap(), sample]);
    assert_eq!(profiles(&out), 2);
    assert!(
        output_text(&out).contains("already included"),
        "{}",
        output_text(&out)
    );
}

/// A profile that saw no check and was refused one: `export` warns twice
/// (once from the library, through tracing; once loudly, from the command).
fn profile_with_warnings(dir: &Scratch) -> std::path::PathBuf {
    let text = std::fs::read_to_string(SAMPLE_PROFILE).unwrap();
    let mut p: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in ["allowlist", "required", "capabilities"] {
        p[field] = serde_json::json!([]);
    }
    p["observation"]["partial"] = serde_json::json!({
        "workload_started": "2025-01-01T00:00:00Z",
        "recording_started": "2025-01-01T00:00:05Z"
    });
    let path = dir.path("warns.json");
    std::fs::write(&path, p.to_string()).unwrap();
    path
}

/// Every warning line has one form, `capprof: warning: …`, and no colour
/// reaches a file or a pipe; on a terminal, colour unless NO_COLOR is set.
#[test]
fn warnings_have_one_form_and_colour_only_on_a_terminal() {
    let dir = Scratch::new("warn-style");
    let profile = profile_with_warnings(&dir);
    let p = profile.to_str().unwrap();
    let out = capprof(&["export", "--format", "json", p]);
    assert!(out.status.success(), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains('\u{1b}'), "colour in a pipe: {stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        stderr.contains("no capability check was seen"),
        "no tracing warning: {stderr}"
    );
    assert!(
        stderr.contains("already running"),
        "no loud warning: {stderr}"
    );
    for line in &lines {
        assert!(
            line.starts_with("capprof: warning: "),
            "{line:?} in {stderr}"
        );
    }
    // Under a terminal (script(1) gives one): coloured, unless NO_COLOR.
    let on_tty = |no_color: bool| {
        let mut cmd = std::process::Command::new("script");
        cmd.args([
            "-qec",
            &format!("{CAPPROF} export --format json {p} >/dev/null"),
            "/dev/null",
        ]);
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        output_text(&cmd.output().unwrap())
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("\u{1b}[33mwarning: "), "{coloured:?}");
    let plain = on_tty(true);
    assert!(
        plain.contains("capprof: warning: ") && !plain.contains('\u{1b}'),
        "{plain:?}"
    );
}

/// `record` creates `--out` only once the engine answered, says how long
/// it records, and says why it wrote nothing.
#[test]
#[ignore = "needs root and a Docker engine"]
fn record_says_how_long_and_why_nothing_was_written() {
    require_engine();
    let dir = Scratch::new("record-msgs");
    let out_dir = dir.path("profiles");
    let out = out_dir.to_str().unwrap();
    let nowhere = format!("unix://{}", dir.path("no.sock").display());
    let result = capprof(&[
        "record",
        "--out",
        out,
        "--duration",
        "1",
        "--engine",
        &nowhere,
    ]);
    assert_eq!(result.status.code(), Some(2), "{}", output_text(&result));
    assert!(
        !out_dir.exists(),
        "--out created before the engine answered"
    );

    let result = capprof(&[
        "record",
        "--out",
        out,
        "--duration",
        "1",
        "--container",
        "capprof-msgs-no-such-container",
    ]);
    assert!(result.status.success(), "{}", output_text(&result));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains("for 1 s") && !stderr.contains("Ctrl-C to stop"),
        "{stderr}"
    );
    let wrote = stderr
        .lines()
        .find(|l| l.contains("wrote 0 profile(s)"))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    assert!(
        wrote.contains("no container made a capability check")
            || wrote.contains("matched --container capprof-msgs-no-such-container"),
        "no reason: {wrote}"
    );
}

/// `doctor` tries every backend besides the one it uses, and its lines
/// agree with what `run --backend` then does; its verdict agrees with its
/// lines: `ready` only with every required check ok, and no `FAIL` line.
#[test]
#[ignore = "needs root"]
fn doctor_tries_each_backend_and_its_verdict_matches_its_lines() {
    require_root();
    let out = capprof(&["doctor", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let used = report["backend"].as_str().unwrap().to_owned();
    let checks = report["checks"].as_array().unwrap();
    for backend in ["tp_btf", "fexit", "kprobe", "lsm"] {
        if backend == used {
            continue;
        }
        let name = if backend == "lsm" {
            "bpf lsm".to_owned()
        } else {
            format!("backend {backend}")
        };
        let check = checks
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no check {name:?} in {report}"));
        assert_eq!(check["tried"], true, "{check}");
        let run = capprof(&["run", "--quiet", "--backend", backend, "--", "true"]);
        assert_eq!(
            check["ok"].as_bool().unwrap(),
            run.status.success(),
            "doctor says {check} but run --backend {backend}: {}",
            output_text(&run)
        );
    }
    let table = capprof(&["doctor"]);
    let text = String::from_utf8_lossy(&table.stdout);
    let last = text.lines().last().unwrap_or_default();
    assert!(last.starts_with("ready: capprof records with"), "{text}");
    assert!(last.contains(&used), "{text}");
    assert!(!text.contains("[FAIL]"), "a FAIL line before ready: {text}");
    let no_load = capprof(&["doctor", "--no-load"]);
    let text = String::from_utf8_lossy(&no_load.stdout);
    assert!(!text.contains("\nready"), "ready without loading: {text}");
    assert!(text.contains("[skip] load"), "{text}");
}

/// A unix listener that answers every connection with `reply` and hangs
/// up; it lives as long as the test process.
fn fake_listener(path: &std::path::Path, reply: &'static [u8]) {
    use std::io::{Read as _, Write as _};
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(200)));
            let _ = stream.read(&mut [0; 4096]);
            let _ = stream.write_all(reply);
        }
    });
}

/// What the engine and CRI clients say when a socket is not what was
/// asked for: what is wrong, never the client library's internals.
#[test]
#[ignore = "needs root and a Docker engine"]
fn socket_errors_say_what_is_wrong() {
    require_engine();
    let dir = Scratch::new("socket-errors");
    let out = dir.path("profiles");
    let file = dir.path("file.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let dangling = dir.path("dangling.sock");
    std::os::unix::fs::symlink(dir.path("gone"), &dangling).unwrap();
    // A listener that is gone: its file stays, connecting is refused.
    let deaf = dir.path("deaf.sock");
    drop(std::os::unix::net::UnixListener::bind(&deaf).unwrap());
    let datagram = dir.path("datagram.sock");
    let _datagram = std::os::unix::net::UnixDatagram::bind(&datagram).unwrap();
    // Accepts, and never answers.
    let silent = dir.path("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let garbage = dir.path("garbage.sock");
    fake_listener(&garbage, b"garbage\r\n");
    let old_api = dir.path("old-api.sock");
    fake_listener(
        &old_api,
        b"HTTP/1.1 400 Bad Request\r\nApi-Version: 1.52\r\nContent-Type: application/json\r\n\
          Content-Length: 75\r\nConnection: close\r\n\r\n\
          {\"message\":\"client version 1.41 is too old. Minimum supported API version\"}",
    );
    let docker =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let at = |p: &std::path::Path| format!("unix://{}", p.display());
    let cases: Vec<(&str, String, &str)> = vec![
        ("--engine", at(&dir.path("missing.sock")), "no such file"),
        ("--cri", at(&file), "it is a regular file, not a socket"),
        ("--engine", at(&dangling), "a symbolic link to"),
        ("--engine", at(&deaf), "nothing listens there"),
        ("--cri", at(&deaf), "nothing listens there"),
        ("--engine", at(&datagram), "a datagram socket"),
        (
            "--cri",
            docker,
            "this socket speaks Docker's HTTP API, not the CRI's gRPC: give it with --engine",
        ),
        (
            "--engine",
            at(&garbage),
            "neither Docker's HTTP API nor gRPC",
        ),
        ("--cri", at(&garbage), "neither Docker's HTTP API nor gRPC"),
        (
            "--engine",
            at(&old_api),
            "the engine refused capprof's API version",
        ),
        ("--cri", at(&silent), "does not answer (timed out)"),
    ];
    for (flag, endpoint, needle) in &cases {
        let result = capprof(&[
            "record",
            "--out",
            out.to_str().unwrap(),
            "--duration",
            "1",
            flag,
            endpoint,
        ]);
        assert_one_line_error(&result, 2, needle);
        let text = output_text(&result);
        for internal in ["hyper", "h2 protocol", "transport error", "client error"] {
            assert!(!text.contains(internal), "{flag} {endpoint}: {text}");
        }
    }
    assert!(!out.exists(), "--out created although no engine answered");
}
