//! capprof as a user installs it: the build it names (`--version`,
//! `doctor`), its man pages and completions, the kustomize base in
//! deploy/, the artefacts of `cargo xtask dist` (the .deb installed into a
//! clean Debian 12 container that has no Rust, lintian, the checksums),
//! and an upgrade over a running daemon's pins.
//!
//! The root tests get `cargo xtask dist`'s directory in
//! `CAPPROF_TEST_DIST`, the clean Debian image in `CAPPROF_DEBIAN_IMAGE`,
//! and the API server of tests/it/kube_api.rs in `CAPPROF_TEST_KUBE`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use capprof_common::MAP_ABI_VERSION;
use serde::Deserialize as _;
use serde_json::Value;

use crate::common::{daemon::TestDaemon, *};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn stdout_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", output_text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The commit this build comes from, as build.rs stamps it for every
/// target of the package, this test's too.
const COMMIT: &str = env!("CAPPROF_GIT_COMMIT");

/// [`COMMIT`], checked against git's HEAD where git answers (a normal
/// user may not read the checkout's repository: git refuses another
/// user's).
fn head_commit() -> String {
    let out =
        run(Command::new("git")
            .current_dir(repo())
            .args(["rev-parse", "--short=12", "HEAD"]));
    if out.status.success() {
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), COMMIT);
    }
    COMMIT.to_owned()
}

#[test]
fn version_names_the_commit_and_the_map_abi() {
    let out = capprof(&["--version"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "capprof {VERSION} (commit {}, map ABI {MAP_ABI_VERSION})\n",
            head_commit()
        )
    );
}

#[test]
fn doctor_names_the_build_in_a_bug_report() {
    // Exits 2 for a normal user (not root): the report is still printed.
    let table = capprof(&["doctor", "--no-load"]);
    let first = String::from_utf8_lossy(&table.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        first,
        format!(
            "capprof:  {VERSION} (commit {}, map ABI {MAP_ABI_VERSION})",
            head_commit()
        )
    );
    let json = capprof(&["doctor", "--no-load", "--format", "json"]);
    let report: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["version"], VERSION);
    assert_eq!(report["commit"], head_commit());
    assert_eq!(report["map_abi"], MAP_ABI_VERSION);
}

/// The subcommands `capprof --help` lists, `help` aside.
fn subcommands() -> Vec<String> {
    let help = stdout_ok(Command::new(CAPPROF).arg("--help"));
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_subcommand_has_a_man_page_and_completions() {
    let dir = Scratch::new("distfiles");
    stdout_ok(Command::new(CAPPROF).arg("dist-files").arg(&dir.0));
    let commands = subcommands();
    assert!(commands.len() >= 12, "{commands:?}");
    let man = dir.path("man");
    let mut pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let mut expected: Vec<String> = commands
        .iter()
        .map(|c| format!("capprof-{c}.1"))
        .chain(["capprof.1".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(pages, expected);
    let record = std::fs::read_to_string(man.join("capprof-record.1")).unwrap();
    assert!(record.contains(".TH capprof-record 1"), "{record}");
    assert!(record.contains("\\-\\-duration"), "{record}");
    for (file, shell) in [
        ("capprof", "bash"),
        ("_capprof", "zsh"),
        ("capprof.fish", "fish"),
    ] {
        let text = std::fs::read_to_string(dir.path("completions").join(file)).unwrap();
        for command in &commands {
            assert!(text.contains(command.as_str()), "{shell} lacks {command}");
        }
        // The hidden command that writes these is not offered.
        assert!(!text.contains("dist-files"), "{shell} offers dist-files");
    }
}

/// `kubectl kustomize deploy/`, as documents.
fn kustomize() -> Vec<Value> {
    let text = stdout_ok(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(repo().join("deploy")),
    );
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

#[test]
fn deploy_is_a_kustomize_base_of_every_manifest() {
    let docs = kustomize();
    let kinds: BTreeSet<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "DaemonSet",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Service",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
    // Every manifest of deploy/ is in the base: none is forgotten.
    let kustomization = std::fs::read_to_string(repo().join("deploy/kustomization.yaml")).unwrap();
    for entry in std::fs::read_dir(repo().join("deploy")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("- {name}")),
                "{name} is not in deploy/kustomization.yaml"
            );
        }
    }
    // The metrics Service selects the DaemonSet's pods, on their port.
    let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap();
    let (service, daemonset) = (find("Service"), find("DaemonSet"));
    let labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[key], value, "selector {key}");
    }
    let port = &service["spec"]["ports"][0];
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    assert!(
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port["targetPort"]),
        "{port}"
    );
}

/// `cargo xtask dist`'s directory.
fn dist() -> PathBuf {
    PathBuf::from(
        std::env::var_os("CAPPROF_TEST_DIST")
            .expect("CAPPROF_TEST_DIST is not set: run these tests through `cargo xtask test`"),
    )
}

fn artefact(suffix: &str) -> PathBuf {
    std::fs::read_dir(dist())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(suffix))
        .unwrap_or_else(|| panic!("no *{suffix} in {}", dist().display()))
}

fn debian_image() -> String {
    std::env::var("CAPPROF_DEBIAN_IMAGE")
        .expect("CAPPROF_DEBIAN_IMAGE is not set: run these tests through `cargo xtask test`")
}

/// Runs `script` with bash in a new container of the clean Debian image,
/// with `cargo xtask dist`'s directory at /dist and `flags`.
fn in_debian(name: &str, flags: &[&str], script: &str) -> Output {
    let mount = format!("{}:/dist:ro", dist().display());
    let name = format!("capprof-install-{name}-{}", std::process::id());
    let mut cmd = Command::new("docker");
    cmd.args([
        "run",
        "--rm",
        "--name",
        &name,
        "--network",
        "none",
        "-v",
        &mount,
    ])
    .args(flags)
    .arg(debian_image())
    .args(["bash", "-c", script]);
    run(&mut cmd)
}

/// Sections of a script's output, each after its `== NAME` line.
fn sections(out: &Output) -> std::collections::BTreeMap<String, String> {
    let mut map = std::collections::BTreeMap::new();
    let mut current = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.strip_prefix("== ") {
            current = name.to_owned();
            map.insert(current.clone(), String::new());
        } else if let Some(text) = map.get_mut(&current) {
            text.push_str(line);
            text.push('\n');
        }
    }
    map
}

/// The deb's file name in /dist.
fn deb_name() -> String {
    artefact(".deb")
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Every file and directory outside the package manager's own records
/// (dpkg's and apt's state, caches, logs) and the pseudo-filesystems.
const SNAPSHOT: &str = r"snapshot() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /tmp -o -path /dist \
        -o -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/cache -o -path /var/log \) \
        -prune -o -print | sort
}";

/// What a user does on a clean Debian 12 with only the .deb: install it
/// with apt, ask for the version, the doctor, a man page and a completion,
/// then remove it.
const INSTALL: &str = r#"
echo "== rust"; command -v cargo rustc rustup
snapshot > /tmp/before
cd /dist
echo "== install"; apt-get install -y "./$DEB" > /tmp/apt.log 2>&1; echo "status $?"
echo "== version"; capprof --version
echo "== doctor"; capprof doctor --no-load; echo "status $?"
echo "== man"; man -w capprof-record
echo "== complete"
. /usr/share/bash-completion/bash_completion
COMP_LINE="capprof rec"; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(capprof rec); COMP_CWORD=1
_completion_loader capprof
"$(complete -p capprof | sed -n 's/.* -F \([^ ]*\) .*/\1/p')" capprof rec capprof
echo "${COMPREPLY[*]}"
echo "== conffiles"; dpkg-query -W -f='${Conffiles}\n' capprof
echo "== remove"; apt-get remove -y capprof > /tmp/apt-remove.log 2>&1; echo "status $?"
hash -r; command -v capprof
snapshot > /tmp/after
echo "== left"; comm -13 /tmp/before /tmp/after
echo "== lost"; comm -23 /tmp/before /tmp/after
echo "== apt"; cat /tmp/apt.log /tmp/apt-remove.log
"#;

#[test]
#[ignore = "needs root and a Docker engine"]
fn the_deb_installs_on_a_clean_debian_12_and_removes_without_a_trace() {
    require_root();
    let started = std::time::Instant::now();
    let script = format!("DEB={}\n{SNAPSHOT}\n{INSTALL}", deb_name());
    let out = in_debian("deb", &[], &script);
    let text = output_text(&out);
    let s = sections(&out);
    let section = |name: &str| {
        s.get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name}: {text}"))
    };
    assert_eq!(section("rust"), "", "the image has Rust: {text}");
    assert_eq!(section("install"), "status 0\n", "{text}");
    let build = format!(
        "{VERSION} (commit {}, map ABI {MAP_ABI_VERSION})",
        head_commit()
    );
    assert_eq!(section("version"), format!("capprof {build}\n"));
    // No cgroup2 in a plain container: doctor says so and exits 2, having
    // named the build first.
    let doctor = section("doctor");
    assert!(
        doctor.starts_with(&format!("capprof:  {build}\n")),
        "{doctor}"
    );
    assert!(
        doctor.ends_with("status 0\n") || doctor.ends_with("status 2\n"),
        "{doctor}"
    );
    assert_eq!(section("man"), "/usr/share/man/man1/capprof-record.1.gz\n");
    assert_eq!(section("complete"), "record\n", "{text}");
    // The package has no conffiles, so nothing may stay.
    assert_eq!(section("conffiles"), "\n");
    assert_eq!(section("remove"), "status 0\n", "{text}");
    assert_eq!(section("left"), "", "left behind by apt-get remove");
    assert_eq!(section("lost"), "", "removed by apt-get remove");
    eprintln!("installed, used and removed in {:.1?}", started.elapsed());
}

/// Profiles a command with the installed package only, and exports the
/// docker flags it needs: the container gets what the host's root has
/// (less CAP_SYS_RESOURCE, which root lacks here), the host's pid
/// namespace and cgroups, BTF and tracefs.
#[test]
#[ignore = "needs root and a Docker engine"]
fn a_user_with_only_the_deb_profiles_a_command_and_exports_its_flags() {
    require_root();
    let script = format!(
        r#"cd /dist && apt-get install -y "./{}" > /tmp/apt.log 2>&1 || cat /tmp/apt.log
touch /tmp/file
capprof run --quiet --out /tmp/chown.json -- chown 1:1 /tmp/file
echo "== flags"
capprof export -f docker /tmp/chown.json
"#,
        deb_name()
    );
    let flags = [
        "--cap-add=ALL",
        "--cap-drop=SYS_RESOURCE",
        "--security-opt=apparmor=unconfined",
        "--security-opt=seccomp=unconfined",
        "--cgroupns=host",
        "--pid=host",
        "-v=/sys/fs/cgroup:/sys/fs/cgroup",
        "-v=/sys/kernel/btf:/sys/kernel/btf:ro",
        "-v=/sys/kernel/tracing:/sys/kernel/tracing",
    ];
    let out = in_debian("use", &flags, &script);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        sections(&out).get("flags").map(String::as_str),
        Some("--cap-drop=ALL --cap-add=CHOWN\n"),
        "{text}"
    );
}

/// The book's packaging notes, where every lintian warning is explained.
fn packaging_notes() -> String {
    let page = repo().join("docs/src/operations/packages.md");
    let text = std::fs::read_to_string(&page).unwrap();
    text.split_once("## Packaging notes")
        .map(|(_, rest)| rest.split("\n## ").next().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{} has no ## Packaging notes", page.display()))
}

#[test]
#[ignore = "needs root (lintian runs on cargo xtask dist's package)"]
fn lintian_finds_no_error_and_each_warning_is_explained() {
    let deb = artefact(".deb");
    let out = run(Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(&deb));
    let text = output_text(&out);
    let tags = |level: &str| -> BTreeSet<String> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{level}: capprof")))
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    };
    assert!(tags("E").is_empty(), "lintian errors: {text}");
    let notes = packaging_notes();
    for warning in tags("W") {
        assert!(
            notes.contains(&format!("`{warning}`")),
            "lintian warns {warning}, which the book's packaging notes (docs/src/operations/packages.md) do not explain: {text}"
        );
    }
}

#[test]
#[ignore = "needs root (cargo xtask dist's artefacts)"]
fn the_dist_artefacts_match_their_sums_and_each_other() {
    let sums = stdout_ok(
        Command::new("sha256sum")
            .current_dir(dist())
            .args(["-c", "SHA256SUMS"]),
    );
    let checked: Vec<&str> = sums.lines().collect();
    assert_eq!(checked.len(), 3, "{sums}");
    for suffix in [
        ".deb: OK",
        ".tar.gz: OK",
        &format!("capprof-image-{VERSION}.tar: OK"),
    ] {
        assert!(checked.iter().any(|l| l.ends_with(suffix)), "{sums}");
    }
    // The tarball holds the package's files, under one top directory.
    let deb = artefact(".deb");
    let in_deb: BTreeSet<String> = stdout_ok(Command::new("dpkg-deb").arg("-c").arg(&deb))
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches("./").trim_end_matches('/').to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    let in_tar: BTreeSet<String> =
        stdout_ok(Command::new("tar").arg("-tzf").arg(artefact(".tar.gz")))
            .lines()
            .filter_map(|l| {
                l.split_once('/')
                    .map(|(_, rest)| rest.trim_end_matches('/').to_owned())
            })
            .filter(|p| !p.is_empty())
            .collect();
    assert_eq!(in_deb, in_tar);
    // A `docker save` archive.
    let image = stdout_ok(
        Command::new("tar")
            .arg("-tf")
            .arg(artefact(&format!("capprof-image-{VERSION}.tar"))),
    );
    assert!(image.lines().any(|l| l == "manifest.json"), "{image}");
    // Depends: names the package of every library the binary links.
    let scratch = Scratch::new("debx");
    stdout_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&scratch.0));
    let depends = stdout_ok(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends"),
    );
    let dynamic = stdout_ok(
        Command::new("readelf")
            .arg("-d")
            .arg(scratch.path("usr/bin/capprof")),
    );
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert!(!needed.is_empty(), "{dynamic}");
    for library in needed {
        let owner = stdout_ok(Command::new("dpkg").args(["-S", &format!("*/{library}")]));
        let package = owner.split(':').next().unwrap();
        assert!(
            depends
                .split(',')
                .any(|d| d.trim().starts_with(&format!("{package} "))),
            "{library} is {package}'s, which Depends: {depends} lacks"
        );
    }
}

/// Fields deploy/ uses that the test API server (Kubernetes 1.20, the
/// one Debian 12's sources build) predates, with the release that added
/// them.
const NEWER_THAN_THE_TEST_SERVER: &[(&str, &str)] = &[("appArmorProfile", "Kubernetes 1.30")];

/// Removes every `field` key from `value`, however deep; how many.
fn remove_field(value: &mut Value, field: &str) -> usize {
    match value {
        Value::Object(map) => {
            let here = usize::from(map.remove(field).is_some());
            here + map
                .values_mut()
                .map(|v| remove_field(v, field))
                .sum::<usize>()
        }
        Value::Array(items) => items.iter_mut().map(|v| remove_field(v, field)).sum(),
        _ => 0,
    }
}

#[test]
#[ignore = "needs the fleet tests' API server (cargo xtask test)"]
fn the_kustomize_base_passes_the_api_servers_dry_run() {
    use crate::common::kube::{As, kubectl};
    // The namespace must exist for the dry run of what goes in it.
    let _ = kubectl(As::Admin, &["create", "namespace", "capprof"], None);
    // kubectl validates strictly against the server's schema, then the
    // server dry-runs each object. The test server is 1.20: the fields
    // the base uses from later releases are removed first, and named here.
    let mut docs = kustomize();
    for (field, since) in NEWER_THAN_THE_TEST_SERVER {
        let removed = docs
            .iter_mut()
            .map(|d| remove_field(d, field))
            .sum::<usize>();
        assert!(
            removed > 0,
            "{field} ({since}) is no longer used: drop it from the list"
        );
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let out = kubectl(
        As::Admin,
        &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        Some(&list.to_string()),
    );
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    for object in [
        "daemonset.apps/capprof",
        "customresourcedefinition.apiextensions.k8s.io/capabilityprofiles.capprof.dev",
        "service/capprof-metrics",
        "clusterrole.rbac.authorization.k8s.io/capprof-node",
    ] {
        assert!(text.contains(object), "{object} not applied: {text}");
    }
}

/// The flags of `TestDaemon` in `dir`, for a daemon started by hand.
fn daemon_args(dir: &Scratch) -> Vec<String> {
    let mut args = vec!["daemon".to_owned()];
    for (flag, path) in [
        ("--state-dir", "state"),
        ("--socket", "run/capprof.sock"),
        ("--bpffs", "bpffs"),
    ] {
        args.push(flag.into());
        args.push(dir.path(path).display().to_string());
    }
    args
}

/// A command's output; one still running after 30 s is stopped and the
/// test fails with `running`.
fn output_within(cmd: &mut Command, running: &str) -> Output {
    use std::{process::Stdio, time::Duration};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            stop_child(&mut child, Duration::from_secs(30));
            panic!("{running}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// An upgrade over pins a daemon left attached: the new daemon takes them
/// over when its map ABI is the same, and otherwise refuses in one line
/// that names `capprof daemon --reset`, touching nothing; after the reset
/// it starts afresh.
#[test]
#[ignore = "needs root"]
fn an_upgrade_takes_over_pins_of_its_abi_and_names_the_reset_across_abis() {
    require_root();
    let mut old = TestDaemon::start(Scratch::new("upgrade"), &[]);
    old.stop();
    let args = daemon_args(&old.dir);
    let bpffs = old.dir.path("bpffs");
    let ours = bpffs.join(format!("capprof/v{MAP_ABI_VERSION}"));
    assert!(ours.join("links").read_dir().unwrap().next().is_some());

    // The same map ABI: taken over.
    let mut new = Command::new(CAPPROF)
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _lines = wait_for_line(
        &mut new,
        "upgraded",
        "reusing pinned maps and programs",
        std::time::Duration::from_secs(30),
    );
    stop_child(&mut new, std::time::Duration::from_secs(30));

    // Pins as an older capprof with another map ABI left them, attached.
    let older = bpffs.join(format!("capprof/v{}", MAP_ABI_VERSION - 1));
    std::fs::rename(&ours, &older).unwrap();
    let refused = output_within(
        Command::new(CAPPROF)
            .args(&args)
            .env("CAPPROF_LOG", "error"),
        "the daemon started beside pins of another map ABI",
    );
    assert_one_line_error(
        &refused,
        2,
        &format!("capprof daemon --reset --bpffs {}", bpffs.display()),
    );
    assert!(
        older.join("links").read_dir().unwrap().next().is_some(),
        "the old pins were touched"
    );
    assert!(
        !ours.join("links").exists(),
        "the refused daemon left pins of its own"
    );

    let reset = capprof(&["daemon", "--reset", "--bpffs", bpffs.to_str().unwrap()]);
    assert!(reset.status.success(), "{}", output_text(&reset));
    assert!(!older.exists(), "--reset left the other ABI's pins");
    old.start_again();
    assert!(ours.join("links").read_dir().unwrap().next().is_some());
}
