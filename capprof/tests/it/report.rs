//! `capprof report`: HTML checked in a real headless browser, Markdown,
//! JSON, bad input, hostile profiles, and 500 profiles at once.

use std::{
    collections::HashSet, os::unix::process::CommandExt as _, path::Path, process::Command,
    time::Instant,
};

use serde_json::Value;

use crate::common::*;

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

const FIXTURES: [&str; 4] = [
    "container-demo.json",
    "run-sample.json",
    "run-nonroot.json",
    "run-phases.json",
];

fn all_fixtures() -> Vec<String> {
    FIXTURES.iter().map(|f| fixture(f)).collect()
}

fn report_json(inputs: &[String]) -> Value {
    let mut args = vec!["report", "--format", "json"];
    args.extend(inputs.iter().map(String::as_str));
    let out = capprof(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A line on stderr that the test harness does not capture.
fn show(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "    {line}");
}

/// Runs Debian's chromium headless on `page` with `args`; its stdout.
fn chromium(scratch: &Scratch, page: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.path("chromium").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("chromium does not run ({e}); `cargo xtask setup` installs Debian's chromium")
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decodes a PNG into (width, height, RGB pixels).
fn decode_png(path: &Path) -> (u32, u32, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width, info.height, pixels)
}

/// The report of every fixture, rendered by a real browser: the page is
/// not blank, and the matrix is there with one cell per class seen.
#[test]
#[ignore = "needs chromium (cargo xtask setup)"]
fn html_report_renders_in_headless_chromium() {
    let dir = Scratch::new("report-chromium");
    let page = dir.path("report.html");
    let mut args = vec!["report", "--out", page.to_str().unwrap()];
    let inputs = all_fixtures();
    args.extend(inputs.iter().map(String::as_str));
    let out = capprof(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing is fetched from anywhere.
    for external in [
        "<script", "<link", "src=", "@import", "url(", "http://", "https://",
    ] {
        assert!(!html.contains(external), "{external} in the page");
    }

    let shot = dir.path("report.png");
    chromium(
        &dir,
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,1800",
        ],
    );
    let (width, height, pixels) = decode_png(&shot);
    assert_eq!((width, height), (1400, 1800));
    let colours: HashSet<[u8; 3]> = pixels.iter().copied().collect();
    let non_white = pixels.iter().filter(|p| **p != [255, 255, 255]).count();
    show(format_args!(
        "screenshot {}: {} colours, {:.0}% non-white",
        shot.display(),
        colours.len(),
        100.0 * non_white as f64 / pixels.len() as f64
    ));
    assert!(colours.len() > 50, "only {} colours", colours.len());
    assert!(non_white * 10 > pixels.len(), "the page is nearly blank");
    // The header's navy and a full-strength advisory cell (SYS_ADMIN, over
    // 100 checks) are painted exactly.
    for (name, rgb) in [
        ("header", [0x0f, 0x17, 0x2a]),
        ("advisory cell", [0x6b, 0x72, 0x80]),
    ] {
        assert!(colours.contains(&rgb), "no {name} colour {rgb:?}");
    }

    // The DOM as the browser built it: the matrix, one row per profile,
    // one coloured cell per (profile, capability) the report lists.
    let dom = String::from_utf8(chromium(&dir, &page, &["--dump-dom"])).unwrap();
    assert!(
        dom.contains("<table class=\"matrix\" id=\"matrix\">"),
        "no matrix in the DOM"
    );
    let report = report_json(&inputs);
    let rows = report["matrix"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), FIXTURES.len());
    let mut expected_cells = 0;
    for row in rows {
        for cell in row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| !c.is_null())
        {
            expected_cells += 1;
            let class = cell["class"].as_str().unwrap();
            let count = cell["count"].as_u64().unwrap();
            assert!(
                dom.contains(&format!("data-class=\"{class}\"")),
                "no {class} cell"
            );
            assert!(dom.contains(&format!("<b>{count}</b>")), "no count {count}");
        }
    }
    assert_eq!(dom.matches("<td class=\"m ").count(), expected_cells);
    for class in ["required", "advisory", "setup"] {
        assert!(dom.contains(&format!("data-class=\"{class}\"")), "{class}");
    }
    // Each profile's section, and the catalogue with every capability.
    for i in 0..FIXTURES.len() {
        assert!(dom.contains(&format!("id=\"c{i}\"")), "section {i}");
    }
    assert!(dom.contains("CHECKPOINT_RESTORE"));
}

#[test]
fn report_content_for_real_profiles() {
    let report = report_json(&all_fixtures());
    let containers = report["containers"].as_array().unwrap();
    let by_label = |needle: &str| -> &Value {
        containers
            .iter()
            .find(|c| c["label"].as_str().unwrap().contains(needle))
            .unwrap_or_else(|| panic!("no {needle} in the report"))
    };

    // The container: Docker's 14 against its four, runtime setup apart.
    let demo = by_label("capprof-demo");
    assert_eq!(demo["runtime"], "docker");
    assert_eq!(demo["defaults"].as_array().unwrap().len(), 14);
    assert_eq!(
        demo["allowlist"],
        serde_json::json!(["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_CHROOT", "CAP_MKNOD"])
    );
    assert_eq!(demo["drop"].as_array().unwrap().len(), 10);
    assert!(!demo["runtime_setup"].as_array().unwrap().is_empty());
    assert_eq!(demo["status"], "observed");
    assert_eq!(demo["exposure_default"]["score"], 6.4);
    assert_eq!(demo["exposure_allowlist"]["score"], 3.0);
    assert_eq!(demo["pod_security_default"]["level"], "baseline");
    // NET_RAW is not among baseline's 13.
    assert_eq!(demo["pod_security_allowlist"]["level"], "privileged");
    let chown = demo["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["capability"] == "CAP_CHOWN")
        .unwrap();
    assert_eq!(chown["action"], "keep");
    let ev = &chown["evidence"][0];
    assert_eq!(ev["comm"], "chown");
    assert!(ev["syscall"].is_string() && ev["call_site"].is_string());
    assert!(chown["first_seen"].is_string() && chown["last_seen"].is_string());

    // Start-up only: MKNOD and SYS_CHROOT at start, CHOWN all along.
    let phases = by_label("phases.sh");
    assert_eq!(
        phases["startup_only"],
        serde_json::json!(["CAP_SYS_CHROOT", "CAP_MKNOD"])
    );
    let phase_of = |cap: &str| phases["phases"]["by_cap"][cap].as_str().unwrap().to_owned();
    assert_eq!(phase_of("CAP_CHOWN"), "steady");
    // 20 ms of sample.sh cannot tell start-up from steady state.
    let sample = by_label("demo/sample.sh");
    assert!(
        sample["phases"]["unknown_because"]
            .as_str()
            .unwrap()
            .contains("less than twice")
    );
    // With a window short enough, it can.
    let short = capprof(&[
        "report",
        "-f",
        "json",
        "--startup-window",
        "3",
        &fixture("run-phases.json"),
    ]);
    let short: Value = serde_json::from_slice(&short.stdout).unwrap();
    assert_eq!(
        short["containers"][0]["startup_only"],
        serde_json::json!(["CAP_SYS_CHROOT", "CAP_MKNOD"])
    );

    // Non-root: busybox held NET_RAW as uid 1000.
    let nonroot = by_label("setpriv");
    let delivery = &nonroot["delivery"];
    assert_eq!(delivery["runs_as"], "non-root");
    assert_eq!(delivery["uids"], serde_json::json!([1000]));
    let commands: Vec<&str> = delivery["file_caps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.contains(&"setcap cap_net_raw+ep /usr/bin/busybox"),
        "{commands:?}"
    );
    // The container ran as root and never switched identity: it could run
    // as non-root with file capabilities.
    assert_eq!(demo["delivery"]["runs_as"], "root");
    assert_eq!(demo["delivery"]["recommended"], true);

    // The HTML and the Markdown say the same things.
    let md = capprof(&["report", "-f", "markdown", &fixture("run-phases.json")]);
    assert!(md.status.success());
    let md = String::from_utf8(md.stdout).unwrap();
    for needle in [
        "### Containers × capabilities",
        "| `CHOWN` | yes | required | 3 | **keep** | steady |",
        "Used only at start-up: `SYS_CHROOT` `MKNOD`",
        // In a <pre> block, where GitHub decodes the entities.
        "exec setpriv --inh-caps=-sys_chroot,-mknod --bounding-set=-sys_chroot,-mknod -- &quot;$@&quot;",
        "RUN setcap cap_chown+ep /usr/bin/chown",
        "allowPrivilegeEscalation: false",
        "**Pod Security**",
    ] {
        assert!(md.contains(needle), "{needle:?} not in:\n{md}");
    }
}

/// Profiles are untrusted: nothing in one becomes markup.
#[test]
fn hostile_strings_are_escaped() {
    let dir = Scratch::new("report-hostile");
    let text = std::fs::read_to_string(fixture("run-sample.json")).unwrap();
    let hostile = text
        .replace(
            "\"comm\": \"chown\"",
            r#""comm": "<script>alert(1)</script>""#,
        )
        .replace(
            "\"/bin/sh\",",
            r#""\"><img src=x onerror=alert(2)> | *x* [l](javascript:alert(3))","#,
        );
    assert_ne!(hostile, text);
    let path = dir.path("hostile.json");
    std::fs::write(&path, hostile).unwrap();
    let path = path.to_str().unwrap();

    let html = capprof(&["report", path]);
    assert!(html.status.success());
    let html = String::from_utf8(html.stdout).unwrap();
    assert!(!html.contains("<script"), "a script tag got through");
    assert!(!html.contains("<img"), "an img tag got through");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    let md = capprof(&["report", "-f", "markdown", path]);
    assert!(md.status.success());
    let md = String::from_utf8(md.stdout).unwrap();
    // Backslash-escaped (`\<img`) or an entity, never a tag.
    for tag in ["<script", "<img"] {
        for (i, _) in md.match_indices(tag) {
            assert_eq!(&md[i - 1..i], "\\", "{tag} unescaped in:\n{md}");
        }
    }
    assert!(!md.contains("](javascript"), "{md}");
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = Scratch::new("report-bad");
    let empty = dir.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = capprof(&["report", empty.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "no *.json profiles in this directory");

    // A directory with files, none of them a profile.
    let notes = dir.path("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("README.txt"), "hello").unwrap();
    let out = capprof(&["report", notes.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "no *.json profiles");

    // JSON that is not a profile.
    let other = dir.path("package.json");
    std::fs::write(&other, r#"{"name": "left-pad", "version": "1.3.0"}"#).unwrap();
    let out = capprof(&["report", other.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "package.json");

    // Not JSON at all.
    let garbage = dir.path("garbage.json");
    std::fs::write(&garbage, "\u{0}\u{1}not json").unwrap();
    let out = capprof(&["report", garbage.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "not a capprof profile");

    // A profile of another schema version, among good ones.
    let v2 = dir.path("v2.json");
    std::fs::write(
        &v2,
        std::fs::read_to_string(fixture("run-sample.json"))
            .unwrap()
            .replace("capprof.profile/v1", "capprof.profile/v2"),
    )
    .unwrap();
    let out = capprof(&["report", &fixture("run-sample.json"), v2.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "capprof.profile/v2");

    // Missing files, devices and FIFOs are refused, not read.
    let out = capprof(&["report", dir.path("missing.json").to_str().unwrap()]);
    assert_one_line_error(&out, 2, "missing.json");
    let out = capprof(&["report", "/dev/zero"]);
    assert_one_line_error(&out, 2, "not a regular file");
    let fifo = dir.path("fifo.json");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = capprof(&["report", fifo.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "not a regular file");

    // Output onto a directory or a device: refused, nothing written.
    let out = capprof(&[
        "report",
        "--out",
        dir.0.to_str().unwrap(),
        &fixture("run-sample.json"),
    ]);
    assert_one_line_error(&out, 2, "cannot write");
    let out = capprof(&["report", "--out", "/dev/null", &fixture("run-sample.json")]);
    assert_one_line_error(&out, 2, "not a regular file");
    let out = capprof(&[
        "report",
        "--startup-window",
        "0",
        &fixture("run-sample.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = capprof(&["report"]);
    assert_eq!(out.status.code(), Some(2), "no input");
}

/// A file root owns with mode 0600, read by an unprivileged user.
#[test]
#[ignore = "needs root"]
fn unreadable_file() {
    require_root();
    let dir = Scratch::new("report-unreadable");
    let secret = dir.path("secret.json");
    std::fs::copy(fixture("run-sample.json"), &secret).unwrap();
    fixture_mode(&secret, 0o600);
    let out = Command::new(CAPPROF)
        .args(["report", secret.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "Permission denied");
    // And a directory the user cannot list.
    let closed = dir.path("closed");
    std::fs::create_dir(&closed).unwrap();
    fixture_mode(&closed, 0o700);
    let out = Command::new(CAPPROF)
        .args(["report", closed.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "Permission denied");
}

fn fixture_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// 500 profiles, made from the real container profile with other names,
/// capability sets and timings: the report must stay fast and small.
#[test]
fn five_hundred_profiles() {
    let dir = Scratch::new("report-500");
    let profiles = dir.path("profiles");
    std::fs::create_dir(&profiles).unwrap();
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("container-demo.json")).unwrap())
            .unwrap();
    for i in 0..500 {
        let mut p = base.clone();
        p["subject"]["name"] = format!("svc-{i:03}").into();
        p["subject"]["id"] = format!("{i:064x}").into();
        // Drop one of the workload's capabilities in turn, so rows differ.
        let caps = p["capabilities"].as_array_mut().unwrap();
        if i % 5 != 0 && caps.len() > 1 {
            caps.remove(i % caps.len());
        }
        rebuild_summary(&mut p);
        std::fs::write(
            profiles.join(format!("svc-{i:03}.json")),
            serde_json::to_vec_pretty(&p).unwrap(),
        )
        .unwrap();
    }
    for (format, file) in [("html", "r.html"), ("markdown", "r.md")] {
        let out_path = dir.path(file);
        let start = Instant::now();
        let out = capprof(&[
            "report",
            "-f",
            format,
            "--out",
            out_path.to_str().unwrap(),
            profiles.to_str().unwrap(),
        ]);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let size = std::fs::metadata(&out_path).unwrap().len();
        // Written to stderr directly, past the test harness's capture, so the
        // numbers show in every run's output.
        show(format_args!(
            "report of 500 profiles ({format}): {:.0} ms, {} bytes ({:.1} KiB per profile)",
            took.as_secs_f64() * 1000.0,
            size,
            size as f64 / 500.0 / 1024.0
        ));
        assert!(took.as_secs_f64() < 5.0, "{took:?}");
        assert!(size < 40 << 20, "{size} bytes");
        let text = std::fs::read_to_string(&out_path).unwrap();
        assert!(text.contains("svc-499"));
    }
}

/// Makes the summary arrays agree with `capabilities`, as capprof does.
fn rebuild_summary(p: &mut Value) {
    let mut allow = vec![];
    let mut lists: [(&str, Vec<Value>); 4] = [
        ("required", vec![]),
        ("denied", vec![]),
        ("advisory", vec![]),
        ("silent", vec![]),
    ];
    let mut caps: Vec<Value> = p["capabilities"].as_array().unwrap().clone();
    caps.sort_by_key(|c| c["number"].as_u64().unwrap());
    for c in &caps {
        let class = c["class"].as_str().unwrap();
        for (name, list) in lists.iter_mut() {
            if *name == class {
                list.push(c["name"].clone());
            }
        }
        if class == "required" || (class == "silent" && c["silent_granted"].as_u64() > Some(0)) {
            allow.push(c["name"].clone());
        }
    }
    p["allowlist"] = allow.into();
    for (name, list) in lists {
        p[name] = list.into();
    }
}

#[test]
fn help_is_clear() {
    for cmd in ["report", "merge", "diff"] {
        let out = capprof(&[cmd, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{cmd}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Usage:") && text.contains("Examples:"),
            "{cmd}: {text}"
        );
    }
}
