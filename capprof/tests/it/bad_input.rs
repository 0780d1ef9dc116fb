//! Bad input and missing prerequisites: one clear line, exit status 2,
//! nothing half-written.

use std::{os::unix::process::CommandExt as _, process::Command};

use crate::common::*;

#[test]
fn unknown_flag() {
    let out = capprof(&["run", "--bogus", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
}

#[test]
#[ignore = "needs root"]
fn missing_command() {
    require_root();
    let out = capprof(&["run", "--", "/nonexistent/capprof-no-such-cmd"]);
    assert_one_line_error(
        &out,
        2,
        "command not found: /nonexistent/capprof-no-such-cmd",
    );
    let out = capprof(&["run", "--", "capprof-no-such-cmd"]);
    assert_one_line_error(&out, 2, "command not found: capprof-no-such-cmd");
}

#[test]
#[ignore = "needs root"]
fn unwritable_out() {
    require_root();
    let out = capprof(&["run", "--out", "/proc/capprof/p.json", "--", "true"]);
    assert_one_line_error(&out, 2, "cannot write /proc/capprof/p.json");
    let dir = Scratch::new("unwritable");
    let out = capprof(&["run", "--out", dir.0.to_str().unwrap(), "--", "true"]);
    assert_one_line_error(&out, 2, "cannot write");
}

#[test]
#[ignore = "needs root"]
fn existing_out_is_kept_when_the_run_cannot_start() {
    require_root();
    let dir = Scratch::new("keep");
    let out_path = dir.path("p.json");
    std::fs::write(&out_path, "precious").unwrap();
    let out = capprof(&[
        "run",
        "--out",
        out_path.to_str().unwrap(),
        "--",
        "capprof-no-such-cmd",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "precious");
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        1,
        "no temporary file left"
    );
}

#[test]
#[ignore = "needs root"]
fn not_root() {
    require_root();
    let out = Command::new(CAPPROF)
        .args(["run", "--", "true"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_one_line_error(&out, 2, "must run as root");
}

/// Runs capprof in a private mount namespace after `prepare` (shell).
fn in_mount_ns(prepare: &str, args: &str) -> std::process::Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{prepare} && exec {CAPPROF} {args}"))
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root"]
fn no_btf() {
    require_root();
    // Hide /sys/kernel/btf behind an empty tmpfs, in a private namespace.
    let out = in_mount_ns("mount -t tmpfs none /sys/kernel/btf", "run -- true");
    assert_one_line_error(&out, 2, "no BTF");
}

#[test]
#[ignore = "needs root"]
fn lsm_backend_without_the_bpf_lsm() {
    require_root();
    // An LSM list without `bpf`, in a private namespace: the lsm backend is
    // refused before anything is loaded.
    let out = in_mount_ns(
        "mount -t tmpfs none /sys/kernel/security && echo capability,yama,apparmor > /sys/kernel/security/lsm",
        "run --backend lsm -- true",
    );
    assert_one_line_error(
        &out,
        2,
        "backend lsm is not available on this kernel: the BPF LSM is not active",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("capability,yama,apparmor"),
        "{out:?}"
    );
    // Without securityfs, whether it is active cannot be known: refused too.
    let out = in_mount_ns(
        "mount -t tmpfs none /sys/kernel/security",
        "run --backend lsm -- true",
    );
    assert_one_line_error(&out, 2, "cannot read /sys/kernel/security/lsm");
}

#[test]
#[ignore = "needs root"]
fn no_cgroup2() {
    require_root();
    let mount = capprof_cgroup2_mount();
    let out = in_mount_ns(&format!("umount -l {mount}"), "run -- true");
    assert_one_line_error(&out, 2, "no cgroup2");
}

fn capprof_cgroup2_mount() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.starts_with("cgroup2 ")).then(|| left.split(' ').nth(4).unwrap().to_owned())
        })
        .expect("this machine has cgroup2")
}

#[test]
fn help_is_clear_for_every_command() {
    for cmd in [
        &["--help"][..],
        &["run", "--help"],
        &["doctor", "--help"],
        &["export", "--help"],
    ] {
        let out = capprof(cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{cmd:?}: {text}");
    }
}

/// Options that can only be a mistake are refused before anything is
/// loaded, each with one line that names the user's input.
#[test]
#[ignore = "needs root"]
fn record_refuses_options_that_would_record_nothing() {
    require_root();
    let dir = Scratch::new("record-noop");
    let out_dir = dir.path("profiles");
    let out = out_dir.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["record", "--out", out, "--duration", "0"], "--duration 0"),
        (
            &["record", "--out", "/etc/hostname", "--duration", "1"],
            "not a directory",
        ),
        (
            &[
                "record",
                "--out",
                out,
                "--duration",
                "1",
                "--cgroup-root",
                "capprof-no-such-root",
            ],
            "capprof-no-such-root",
        ),
        (
            &[
                "record",
                "--out",
                out,
                "--duration",
                "1",
                "--engine",
                "tcp://127.0.0.1:2375",
            ],
            "unsupported engine address",
        ),
    ];
    for (args, needle) in cases {
        let out = capprof(args);
        assert_one_line_error(&out, 2, needle);
    }
    assert!(
        std::fs::metadata("/etc/hostname").unwrap().is_file(),
        "/etc/hostname was touched"
    );
}

/// A state directory that cannot be one is the user's input at fault: one
/// line that names the path in the way, exit 2, the file left alone.
#[test]
#[ignore = "needs root"]
fn daemon_state_dir_that_is_a_file() {
    require_root();
    let dir = Scratch::new("state-file");
    let file = dir.path("state");
    std::fs::write(&file, "precious").unwrap();
    let socket = dir.path("capprof.sock");
    let file_str = file.to_str().unwrap();
    let nested = format!("{file_str}/sub");
    for (state, needle) in [
        (
            file_str,
            format!("{file_str}: it exists and is not a directory"),
        ),
        (
            nested.as_str(),
            format!("{nested}: {file_str} is not a directory"),
        ),
    ] {
        let out = capprof(&[
            "daemon",
            "--state-dir",
            state,
            "--socket",
            socket.to_str().unwrap(),
        ]);
        assert_one_line_error(&out, 2, &needle);
    }
    // The socket's path likewise, checked before anything is loaded.
    let under_file = format!("{file_str}/capprof.sock");
    let state_dir = dir.path("state-dir");
    for (socket, needle) in [
        (
            under_file.as_str(),
            format!("cannot bind {under_file}: {file_str} is not a directory"),
        ),
        (
            file_str,
            format!("{file_str} exists and is not a socket; refusing to replace it"),
        ),
    ] {
        let out = capprof(&[
            "daemon",
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--socket",
            socket,
        ]);
        assert_one_line_error(&out, 2, &needle);
    }
    // And any --out under a file.
    let out = capprof(&["export", "-o", &format!("{file_str}/p.txt"), SAMPLE_PROFILE]);
    assert_one_line_error(&out, 2, &format!("{file_str} is not a directory"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
    assert!(!socket.exists());
}

/// Runs capprof, killed if it has not exited within `within`: a command
/// that blocks is a failure, not a hung suite.
fn capprof_within(args: &[&str], within: std::time::Duration) -> std::process::Output {
    use std::process::Stdio;
    let mut child = Command::new(CAPPROF)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("capprof {args:?} still blocked after {within:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Every command that reads a profile refuses a FIFO (which nobody
/// writes) at once, with the same line, rather than block on it.
#[test]
fn fifo_inputs_are_refused_at_once_by_every_command() {
    let dir = Scratch::new("fifo-input");
    let fifo = dir.path("p.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap();
    let out_file = dir.path("out.json");
    let out = out_file.to_str().unwrap();
    let needle = format!("cannot read {fifo}: is a FIFO, not a regular file");
    let cases: &[&[&str]] = &[
        &["export", fifo],
        &["export", "--format", "k8s", fifo],
        &["report", "--out", out, fifo],
        &["merge", "--out", out, fifo, SAMPLE_PROFILE],
        &["diff", SAMPLE_PROFILE, fifo],
        &["verify", fifo],
        &["minimize", "--out", out, fifo],
    ];
    for args in cases {
        let output = capprof_within(args, std::time::Duration::from_secs(10));
        assert_one_line_error(&output, 2, &needle);
    }
    assert!(!out_file.exists(), "nothing written");
}

/// The fleet's settings are checked before anything is loaded: one line,
/// exit 2, whoever runs it.
#[test]
fn daemon_kube_settings_that_cannot_work() {
    for (args, needle) in [
        (
            &["daemon", "--kube", "--kube-max-rate", "0"][..],
            "kube_max_rate must be",
        ),
        (
            &["daemon", "--kube", "--kube-node", "Node_A"][..],
            "is not a Kubernetes node name",
        ),
        (
            &[
                "daemon",
                "--kube",
                "--kube-interval",
                "10s",
                "--kube-stale-after",
                "20s",
            ][..],
            "kube_stale_after must be at least 4 times kube_interval",
        ),
        (
            &["report", "--kube", "-n", "Not_A_Namespace"][..],
            "is not a namespace name",
        ),
    ] {
        let out = capprof(args);
        assert_one_line_error(&out, 2, needle);
    }
    // Flags that need another: clap's usage error, exit 2.
    for (args, needle) in [
        (&["daemon", "--kube-node", "a"][..], "--kube"),
        (
            &["profile", "--kube", "shop/Deployment/web"][..],
            "--workload",
        ),
    ] {
        let out = capprof(args);
        assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
    }
}
