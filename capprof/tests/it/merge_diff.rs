//! `capprof merge` and `capprof diff`, on real profiles, and the CI recipe
//! of the book's `capprof diff` guide end to end: a baseline and new
//! observations made by `capprof run`, compared by `capprof diff`.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
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

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Writes a copy of fixture `name` with `from` replaced by `to`.
fn derived(dir: &Scratch, name: &str, file: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    assert!(text.contains(from), "{from} not in {name}");
    let path = dir.path(file);
    std::fs::write(&path, text.replace(from, to)).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn merge_is_the_union_with_coverage() {
    let dir = Scratch::new("merge");
    let out = dir.path("merged.json");
    let result = capprof(&[
        "merge",
        "--out",
        out.to_str().unwrap(),
        &fixture("container-demo.json"),
        &fixture("run-sample.json"),
        &fixture("run-phases.json"),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        stderr.contains(
            "merged 3 profiles: allowlist CAP_CHOWN CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("CAP_NET_RAW in 2 of 3"), "{stderr}");
    let merged = read_json(&out);
    assert_eq!(merged["schema"], "capprof.profile/v1");
    let coverage = &merged["coverage"];
    assert_eq!(coverage["profiles"], 3);
    assert_eq!(coverage["subjects"].as_array().unwrap().len(), 3);
    assert_eq!(coverage["subjects"][0]["name"], "capprof-demo");
    assert_eq!(coverage["capabilities"]["CAP_CHOWN"]["seen_in"], 3);
    assert_eq!(coverage["capabilities"]["CAP_NET_RAW"]["seen_in"], 2);
    let chown_by: Vec<&str> = coverage["capabilities"]["CAP_CHOWN"]["executables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(chown_by.contains(&"/usr/bin/chown"), "{chown_by:?}");
    // The subjects differ (a container and two commands): kind says so.
    assert_eq!(merged["subject"]["kind"], "merged");
    let chown = merged["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "CAP_CHOWN")
        .unwrap();
    let granted: u64 = ["container-demo.json", "run-sample.json", "run-phases.json"]
        .iter()
        .map(|f| {
            let p = read_json(Path::new(&fixture(f)));
            p["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == "CAP_CHOWN")
                .unwrap()["granted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(chown["granted"], granted, "counts add up");

    // The merged profile is a profile: export reads it, and it merges
    // again, counting every observation.
    let flags = capprof(&["export", out.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8_lossy(&flags.stdout),
        "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_RAW --cap-add=SYS_CHROOT --cap-add=MKNOD\n"
    );
    let again = dir.path("again.json");
    let result = capprof(&[
        "merge",
        "-o",
        again.to_str().unwrap(),
        out.to_str().unwrap(),
        &fixture("run-nonroot.json"),
    ]);
    assert!(result.status.success());
    let again = read_json(&again);
    assert_eq!(again["coverage"]["profiles"], 4);
    assert_eq!(again["coverage"]["capabilities"]["CAP_CHOWN"]["seen_in"], 3);
    assert_eq!(
        again["coverage"]["capabilities"]["CAP_SETUID"]["seen_in"],
        1
    );

    // A directory of profiles merges too: three replicas, each its own
    // container (copies of one container would count once).
    let replicas = dir.path("replicas");
    std::fs::create_dir(&replicas).unwrap();
    for i in 0..3 {
        let mut replica = read_json(std::path::Path::new(&fixture("container-demo.json")));
        replica["subject"]["id"] = format!("{i:0>64}").into();
        replica["subject"]["cgroup"] = format!("/docker/{i:0>64}").into();
        std::fs::write(replicas.join(format!("r{i}.json")), replica.to_string()).unwrap();
    }
    let from_dir = dir.path("from-dir.json");
    let result = capprof(&[
        "merge",
        "-o",
        from_dir.to_str().unwrap(),
        replicas.to_str().unwrap(),
    ]);
    assert!(result.status.success());
    let from_dir = read_json(&from_dir);
    assert_eq!(from_dir["coverage"]["profiles"], 3);
    assert_eq!(
        from_dir["subject"]["name"], "capprof-demo",
        "shared subject kept"
    );
}

#[test]
fn merge_refuses_bad_input() {
    let dir = Scratch::new("merge-bad");
    let out = dir.path("out.json");
    std::fs::write(&out, "precious").unwrap();
    let out_arg = out.to_str().unwrap();

    // Mixed schema versions.
    let v2 = derived(
        &dir,
        "run-sample.json",
        "v2.json",
        "capprof.profile/v1",
        "capprof.profile/v2",
    );
    let result = capprof(&["merge", "-o", out_arg, &fixture("run-phases.json"), &v2]);
    assert_one_line_error(&result, 2, "capprof.profile/v2");

    // Different capability semantics: an lsm profile cannot see refusals.
    let lsm = derived(
        &dir,
        "run-sample.json",
        "lsm.json",
        "\"backend\": \"tp_btf\",",
        "\"backend\": \"lsm\", \"unobservable\": [\"denied\", \"advisory\"],",
    );
    let result = capprof(&["merge", "-o", out_arg, &fixture("run-phases.json"), &lsm]);
    assert_one_line_error(&result, 2, "cannot see denied, advisory");

    // Uncalibrated classification.
    let raw = derived(
        &dir,
        "run-sample.json",
        "raw.json",
        "\"classification\": \"call-site\"",
        "\"classification\": \"uncalibrated\"",
    );
    let result = capprof(&["merge", "-o", out_arg, &fixture("run-phases.json"), &raw]);
    assert_one_line_error(&result, 2, "not classified");

    // Empty directory, non-profile JSON, missing file.
    let empty = dir.path("empty");
    std::fs::create_dir(&empty).unwrap();
    let result = capprof(&["merge", "-o", out_arg, empty.to_str().unwrap()]);
    assert_one_line_error(&result, 2, "no *.json profiles");
    let other = dir.path("tsconfig.json");
    std::fs::write(&other, "{\"compilerOptions\": {}}").unwrap();
    let result = capprof(&["merge", "-o", out_arg, other.to_str().unwrap()]);
    assert_one_line_error(&result, 2, "tsconfig.json");
    let result = capprof(&["merge", "-o", out_arg, "/nonexistent/p.json"]);
    assert_one_line_error(&result, 2, "/nonexistent/p.json");

    // Nothing was half-written over the existing file.
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");

    // No --out, or an --out that cannot be written.
    let result = capprof(&["merge", &fixture("run-sample.json")]);
    assert_eq!(result.status.code(), Some(2));
    let result = capprof(&[
        "merge",
        "-o",
        dir.0.to_str().unwrap(),
        &fixture("run-sample.json"),
    ]);
    assert_one_line_error(&result, 2, "cannot write");
    let names: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("capprof-tmp")),
        "a temporary file was left: {names:?}"
    );
}

fn diff(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let out = capprof(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn diff_of_real_profiles() {
    let sample = fixture("run-sample.json");
    let phases = fixture("run-phases.json");
    // phases.sh needs nothing sample.sh was not granted; NET_RAW could go.
    let (code, table, _) = diff(&[&sample, &phases]);
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("could drop"), "{table}");
    assert!(
        table.trim_end().ends_with(&format!(
            "ok: {phases} needs nothing beyond {sample}; could drop 1: CAP_NET_RAW"
        )),
        "{table}"
    );
    // The other way round, NET_RAW is a regression, with its evidence.
    let (code, table, _) = diff(&[&phases, &sample]);
    assert_eq!(code, Some(3), "{table}");
    assert!(table.contains("regression (needed)"), "{table}");
    assert!(
        table.contains("/usr/bin/busybox · socket · ns_capable+0x2a · uid 0"),
        "{table}"
    );
    let (code, json, _) = diff(&["--format", "json", &phases, &sample]);
    assert_eq!(code, Some(3));
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["verdict"], "regression");
    assert_eq!(json["regressions"], serde_json::json!(["CAP_NET_RAW"]));
    let row = json["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["capability"] == "CAP_NET_RAW")
        .unwrap();
    assert_eq!(row["key"], "CAP_NET_RAW:required");
    assert_eq!(row["evidence"][0]["comm"], "busybox");
    assert!(row["evidence"][0].get("pid").is_none(), "{row}");

    // NEW from stdin.
    let mut child = Command::new(CAPPROF)
        .args(["diff", &phases, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&sample).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<stdin> needs 1 capability"));
}

#[test]
fn diff_refuses_bad_input() {
    let dir = Scratch::new("diff-bad");
    let v2 = derived(
        &dir,
        "run-sample.json",
        "v2.json",
        "capprof.profile/v1",
        "capprof.profile/v2",
    );
    let (code, _, err) = diff(&[&fixture("run-sample.json"), &v2]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("capprof.profile/v2") && err.lines().count() == 1,
        "{err}"
    );
    let out = capprof(&["diff", "-", "-"]);
    assert_one_line_error(&out, 2, "only one of BASELINE and NEW");
    let out = capprof(&["diff", &fixture("run-sample.json"), "/nonexistent/new.json"]);
    assert_one_line_error(&out, 2, "/nonexistent/new.json");
    let out = capprof(&["diff", &fixture("run-sample.json"), dir.0.to_str().unwrap()]);
    assert_one_line_error(&out, 2, "not a regular file");
    let out = capprof(&["diff", &fixture("run-sample.json")]);
    assert_eq!(out.status.code(), Some(2));
    let out = capprof(&["diff", "-f", "yaml", &fixture("run-sample.json"), &v2]);
    assert_eq!(out.status.code(), Some(2));
}

/// `capprof run -q --out FILE -- sh -c SCRIPT`; the profile's path.
fn observe(dir: &Scratch, name: &str, script: &str) -> String {
    let path = dir.path(name);
    let out = capprof(&[
        "run",
        "--quiet",
        "--out",
        path.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_str().unwrap().to_owned()
}

/// The CI recipe of the book's `capprof diff` guide: the committed profile
/// of a test run, then each new run under `capprof run`, compared with
/// `capprof diff`.
#[test]
#[ignore = "needs root"]
fn ci_recipe_end_to_end() {
    require_root();
    let dir = Scratch::new("diff-ci");
    let work = dir.path("work");
    std::fs::create_dir(&work).unwrap();
    let w = work.to_str().unwrap();
    // Each run writes its own file: rewriting one chowned away would need
    // DAC_OVERRIDE.
    let chown = |name: &str| format!("echo x > {w}/{name} && chown 1000 {w}/{name}");
    let baseline = observe(&dir, "baseline.json", &chown("a"));

    // The same tests again: nothing new.
    let same = observe(&dir, "same.json", &chown("b"));
    let (code, table, _) = diff(&[&baseline, &same]);
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("kept"), "{table}");

    // A change that starts making device nodes: a regression, exit 3, with
    // the program and syscall that needed it.
    let more = observe(
        &dir,
        "more.json",
        &format!("{} && mknod {w}/null1 c 1 3", chown("c")),
    );
    let (code, table, _) = diff(&[&baseline, &more]);
    assert_eq!(code, Some(3), "{table}");
    assert!(table.contains("CAP_MKNOD"), "{table}");
    assert!(table.contains("mknodat"), "{table}");
    assert!(table.contains("regression: "), "{table}");

    // A change that no longer chowns: CHOWN could drop, the gate passes.
    let less = observe(&dir, "less.json", &format!("echo x > {w}/e"));
    let (code, table, _) = diff(&[&baseline, &less]);
    assert_eq!(code, Some(0), "{table}");
    assert!(table.contains("could drop 1: CAP_CHOWN"), "{table}");

    // Two runs of the same change diff identically: no pid or time in it.
    let more_again = observe(
        &dir,
        "more-again.json",
        &format!("{} && mknod {w}/null2 c 1 3", chown("d")),
    );
    let strip = |json: String| {
        let mut v: Value = serde_json::from_str(&json).unwrap();
        v.as_object_mut().unwrap().remove("new");
        v
    };
    let (_, one, _) = diff(&["-f", "json", &baseline, &more]);
    let (_, two, _) = diff(&["-f", "json", &baseline, &more_again]);
    assert_eq!(strip(one), strip(two));
}

/// A profile from a newer capprof merges, and the fields this build cannot
/// carry are named rather than silently dropped.
#[test]
fn merge_names_fields_it_cannot_carry() {
    let dir = Scratch::new("merge-newer");
    let newer = derived(
        &dir,
        "run-sample.json",
        "newer.json",
        "\"runtime_setup\": []",
        "\"runtime_setup\": [], \"future_list\": [{\"capability\": \"CAP_NET_BIND_SERVICE\"}]",
    );
    let out = dir.path("merged.json");
    let result = capprof(&[
        "merge",
        "-o",
        out.to_str().unwrap(),
        &newer,
        &fixture("run-phases.json"),
    ]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "newer.json: written by a newer capprof; future_list not carried into the merge"
        ),
        "{stderr}"
    );
    assert_eq!(read_json(&out)["coverage"]["profiles"], 2);
}
