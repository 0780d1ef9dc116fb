//! Root integration tests: real eBPF on the real kernel. Each action makes
//! a known capability check under `capprof run`, and the profile must hold
//! exactly the expected `required` set.

use std::process::{Command, Stdio};

use crate::common::{self, *};

fn expect_required(cmd: &[&str], expected: &[&str]) -> serde_json::Value {
    let (out, profile) = profile_of(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed under capprof: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(profile["schema"], "capprof.profile/v1");
    assert_eq!(
        names(&profile, "required"),
        expected,
        "{cmd:?}: {}",
        serde_json::to_string_pretty(&profile["capabilities"]).unwrap()
    );
    assert_eq!(names(&profile, "allowlist"), expected, "{cmd:?}");
    assert_eq!(profile["observation"]["lost_records"], 0);
    // Classified (from the calibrated call site, or `opts` on fexit and
    // kprobe), with nothing left over.
    let classification = profile["observation"]["classification"].as_str().unwrap();
    assert!(
        ["call-site", "opts"].contains(&classification),
        "{classification}"
    );
    assert_eq!(
        profile["observation"]["unclassified_checks"], 0,
        "{profile}"
    );
    // Every kernel tested (5.12+) reports its recursion misses.
    assert!(
        profile["observation"]["recursion_misses"].is_u64(),
        "{profile}"
    );
    // The other classes agree on every backend too: nothing silent or
    // refused, and nothing advisory but the memory probe. The tracepoint
    // sees that probe in every run (each exec makes it); hooks on
    // cap_capable miss it where cap_capable is inlined into
    // cap_vm_enough_memory (Debian's 6.1 and 6.12), and the lsm hook misses
    // it everywhere.
    for class in ["silent", "denied"] {
        assert!(
            names(&profile, class).is_empty(),
            "{cmd:?} {class}: {profile}"
        );
    }
    let advisory = names(&profile, "advisory");
    assert!(
        advisory.iter().all(|c| c == "CAP_SYS_ADMIN"),
        "{cmd:?}: {profile}"
    );
    // (A capability is listed under its strongest class: required wins.)
    if profile["observation"]["backend"] == "tp_btf" && !expected.contains(&"CAP_SYS_ADMIN") {
        assert_eq!(advisory, ["CAP_SYS_ADMIN"], "{cmd:?}: {profile}");
    }
    profile
}

/// `sleep 30` as uid and gid 1000: a process of another user.
fn sleeper_of_another_uid() -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    Command::new("sleep")
        .arg("30")
        .uid(1000)
        .gid(1000)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A backend that cannot see a class of checks (the BPF-LSM hook sees
/// neither refusals nor advisory checks) records none, and the profile says
/// that class is unobservable.
fn assert_unseen(profile: &serde_json::Value, class: &str) {
    assert!(
        profile["capabilities"].as_array().unwrap().is_empty(),
        "{profile}"
    );
    assert!(
        names(&profile["observation"], "unobservable").contains(&class.to_owned()),
        "{profile}"
    );
}

#[test]
#[ignore = "needs root"]
fn chown_needs_chown() {
    require_root();
    let dir = Scratch::new("chown");
    let file = dir.path("f");
    fixture_file(&file, 0, 0, 0o644);
    let profile = expect_required(&[ACTION, "chown", file.to_str().unwrap()], &["CAP_CHOWN"]);
    // Evidence names the program and the syscall.
    let chown = capability(&profile, "CAP_CHOWN");
    assert_eq!(chown["granted"], 2, "uid and gid are checked separately");
    let ev = &chown["evidence"][0];
    assert_eq!(ev["comm"], "capprof-test-ac");
    assert_eq!(ev["syscall"], "chown");
    assert!(
        ev["exe"]
            .as_str()
            .unwrap_or("")
            .ends_with("capprof-test-action"),
        "{ev}"
    );
    assert!(
        ev["call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("capable_wrt_inode_uidgid"),
        "{ev}"
    );
}

#[test]
#[ignore = "needs root"]
fn mknod_needs_mknod() {
    require_root();
    let dir = Scratch::new("mknod");
    expect_required(
        &[ACTION, "mknod", dir.path("null").to_str().unwrap()],
        &["CAP_MKNOD"],
    );
}

#[test]
#[ignore = "needs root"]
fn raw_socket_needs_net_raw() {
    require_root();
    expect_required(&[ACTION, "raw-socket"], &["CAP_NET_RAW"]);
}

#[test]
#[ignore = "needs root"]
fn low_port_needs_net_bind_service() {
    require_root();
    // A free port below 1024 on loopback.
    let port = (600..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free low port");
    expect_required(
        &[ACTION, "bind-low-port", &port.to_string()],
        &["CAP_NET_BIND_SERVICE"],
    );
}

#[test]
#[ignore = "needs root"]
fn setuid_needs_setuid() {
    require_root();
    expect_required(&[ACTION, "setuid"], &["CAP_SETUID"]);
}

#[test]
#[ignore = "needs root"]
fn setgid_needs_setgid() {
    require_root();
    expect_required(&[ACTION, "setgid"], &["CAP_SETGID"]);
}

#[test]
#[ignore = "needs root"]
fn signalling_another_uid_needs_kill() {
    require_root();
    let mut sleeper = sleeper_of_another_uid();
    let pid = sleeper.id().to_string();
    expect_required(&[ACTION, "kill", &pid], &["CAP_KILL"]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

#[test]
#[ignore = "needs root"]
fn chroot_needs_sys_chroot() {
    require_root();
    expect_required(&[ACTION, "chroot"], &["CAP_SYS_CHROOT"]);
}

#[test]
#[ignore = "needs root"]
fn writing_another_users_file_needs_dac_override() {
    require_root();
    let dir = Scratch::new("dac");
    let file = dir.path("secret");
    fixture_file(&file, 1000, 1000, 0o600);
    expect_required(
        &[ACTION, "write-file", file.to_str().unwrap()],
        &["CAP_DAC_OVERRIDE"],
    );
}

#[test]
#[ignore = "needs root"]
fn chmod_of_another_users_file_needs_fowner() {
    require_root();
    let dir = Scratch::new("fowner");
    let file = dir.path("f");
    // Group 0, which root is in: chmod then makes no CAP_FSETID check.
    fixture_file(&file, 1000, 0, 0o644);
    expect_required(&[ACTION, "chmod", file.to_str().unwrap()], &["CAP_FOWNER"]);
}

#[test]
#[ignore = "needs root"]
fn sethostname_in_new_uts_namespace_needs_sys_admin() {
    require_root();
    expect_required(&[ACTION, "sethostname"], &["CAP_SYS_ADMIN"]);
}

#[test]
#[ignore = "needs root"]
fn lowering_nice_needs_sys_nice() {
    require_root();
    expect_required(&[ACTION, "nice"], &["CAP_SYS_NICE"]);
}

#[test]
#[ignore = "needs root"]
fn refused_rlimit_raise_is_denied_not_required() {
    require_root();
    let (out, profile) = profile_of(&[ACTION, "raise-rlimit"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if profile["observation"]["backend"] == "lsm" {
        // The BPF-LSM hook runs only after cap_capable granted a check: the
        // refusal is invisible, and the profile says so.
        assert!(names(&profile, "denied").is_empty(), "{profile}");
        assert_unseen(&profile, "denied");
    } else {
        assert_eq!(names(&profile, "denied"), ["CAP_SYS_RESOURCE"]);
        assert!(
            profile["observation"].get("unobservable").is_none(),
            "{profile}"
        );
    }
    assert!(names(&profile, "required").is_empty(), "{profile}");
    assert!(names(&profile, "allowlist").is_empty(), "{profile}");
}

#[test]
#[ignore = "needs root"]
fn plain_programs_need_nothing() {
    require_root();
    for cmd in [
        &["true"][..],
        &["ls", "/"][..],
        &[ACTION, "nothing"][..],
        &[ACTION, "mmap-loop"][..],
    ] {
        let profile = expect_required(cmd, &[]);
        // The mmap/brk/execve memory checks are advisory, never required.
        for class in ["silent", "denied"] {
            assert!(
                names(&profile, class).is_empty(),
                "{cmd:?} {class}: {profile}"
            );
        }
    }
    // The mmap loop's checks really are seen, and classified advisory.
    // Kernels that inline cap_capable into cap_vm_enough_memory (Debian's
    // 6.1 and 6.12) make the probe invisible to fexit and kprobe; only the
    // tracepoint, inside cap_capable's body, sees it there.
    // The BPF-LSM hook never sees it on any kernel: cap_vm_enough_memory
    // calls cap_capable directly, not through security_capable().
    let (_, profile) = profile_of(&[ACTION, "mmap-loop"]);
    if profile["observation"]["backend"] == "tp_btf" {
        assert_eq!(names(&profile, "advisory"), ["CAP_SYS_ADMIN"]);
        let admin = &profile["capabilities"][0];
        assert!(admin["granted"].as_u64().unwrap() >= 2000, "{admin}");
    } else if profile["observation"]["backend"] == "lsm" {
        assert_unseen(&profile, "advisory");
    } else {
        assert!(
            names(&profile, "advisory")
                .iter()
                .all(|c| c == "CAP_SYS_ADMIN"),
            "{profile}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn python_needs_nothing() {
    require_root();
    let profile = expect_required(&["python3", "-c", "pass"], &[]);
    assert!(names(&profile, "silent").is_empty(), "{profile}");
}

#[test]
#[ignore = "needs root"]
fn descendants_are_profiled_until_the_last_exits() {
    require_root();
    let dir = Scratch::new("desc");
    let file = dir.path("f");
    fixture_file(&file, 0, 0, 0o644);
    // The parent exits at once; a background child chowns after it.
    let script = format!("( sleep 0.3; {ACTION} chown {} ) & exit 0", file.display());
    expect_required(&["sh", "-c", &script], &["CAP_CHOWN"]);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        1000,
        "the child ran to completion"
    );
}

#[test]
#[ignore = "needs root"]
fn exit_status_is_the_commands() {
    require_root();
    let out = capprof(&["run", "--quiet", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    let out = capprof(&["run", "--quiet", "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15));
}

#[test]
#[ignore = "needs root"]
fn out_file_is_written_and_table_goes_to_stderr() {
    require_root();
    let dir = Scratch::new("out");
    let out_path = dir.path("p.json");
    let out = capprof(&[
        "run",
        "--out",
        out_path.to_str().unwrap(),
        "--",
        ACTION,
        "chroot",
    ]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "nothing on stdout with --out");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAP_SYS_CHROOT") && stderr.contains("allowlist"),
        "{stderr}"
    );
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(names(&profile, "required"), ["CAP_SYS_CHROOT"]);
}

#[test]
#[ignore = "needs root"]
fn format_json_prints_the_profile_on_stdout() {
    require_root();
    let out = capprof(&["run", "--format", "json", "--quiet", "--", ACTION, "setgid"]);
    assert!(out.status.success());
    let profile: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(names(&profile, "required"), ["CAP_SETGID"]);
}

#[test]
#[ignore = "needs root"]
fn noaudit_checks_are_silent_and_allowed_when_granted() {
    require_root();
    let mut sleeper = sleeper_of_another_uid();
    // /proc/PID/stat of another uid asks ptrace_may_access(…|NOAUDIT):
    // ns_capable_noaudit(CAP_SYS_PTRACE).
    let stat = format!("/proc/{}/stat", sleeper.id());
    let (out, profile) = profile_of(&["cat", &stat]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(out.status.success());
    assert_eq!(names(&profile, "silent"), ["CAP_SYS_PTRACE"], "{profile}");
    assert!(names(&profile, "required").is_empty(), "{profile}");
    assert_eq!(names(&profile, "allowlist"), ["CAP_SYS_PTRACE"]);
    let ptrace = &capability(&profile, "CAP_SYS_PTRACE")["evidence"][0];
    assert!(
        ptrace["call_site"]
            .as_str()
            .unwrap()
            .starts_with("ns_capable_noaudit"),
        "{ptrace}"
    );
}

/// The BPF-LSM backend, forced: where the kernel runs BPF-LSM programs it
/// profiles exactly like the others (granted checks, with their call
/// sites); where it does not (CI's own kernel refuses LSM programs), it is
/// refused in one line with exit status 2, before the command runs.
#[test]
#[ignore = "needs root"]
fn lsm_backend_profiles_granted_checks_or_is_refused_in_one_line() {
    require_root();
    let dir = Scratch::new("lsm");
    let file = dir.path("f");
    fixture_file(&file, 0, 0, 0o644);
    let out_path = dir.path("p.json");
    let out = capprof(&[
        "run",
        "--backend",
        "lsm",
        "--quiet",
        "--out",
        out_path.to_str().unwrap(),
        "--",
        ACTION,
        "chown",
        file.to_str().unwrap(),
    ]);
    if out.status.code() == Some(2) {
        assert_one_line_error(&out, 2, "backend lsm is not available on this kernel");
        assert!(!out_path.exists(), "no profile when the backend is refused");
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            0,
            "the command never ran"
        );
        eprintln!(
            "lsm refused here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert_eq!(profile["observation"]["backend"], "lsm");
    assert_eq!(profile["observation"]["classification"], "opts");
    assert_eq!(
        names(&profile["observation"], "unobservable"),
        ["denied", "advisory"]
    );
    assert_eq!(names(&profile, "required"), ["CAP_CHOWN"]);
    let chown = &profile["capabilities"][0];
    assert_eq!(chown["granted"], 2, "{chown}");
    let ev = &chown["evidence"][0];
    assert!(
        ev["call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("capable_wrt_inode_uidgid"),
        "{ev}"
    );
}

/// Waits for `path` to exist (another process's progress marker).
fn wait_for(path: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A second program on the cap_capable tracepoint (another capprof here;
/// bpftrace or any tool in real life) makes the tracepoint call through an
/// iterator, which moves the callers' return addresses up the stack. The
/// same checks must be classified the same whether that program was there
/// at load and left, or came after: advisory stays advisory (not required),
/// and nothing goes unclassified.
#[test]
#[ignore = "needs root"]
fn classification_survives_other_programs_coming_and_going() {
    require_root();
    let dir = Scratch::new("layout");
    let file = dir.path("f");
    let marker = |name: &str| dir.path(name);
    let wait_loop = |name: &str| {
        format!(
            "touch {}; while [ ! -e {} ]; do sleep 0.05; done",
            marker(&format!("{name}-up")).display(),
            marker(name).display()
        )
    };
    let workload = |gate: &str| {
        format!(
            "{}; {ACTION} mmap-loop && {ACTION} chown {}",
            wait_loop(gate),
            file.display()
        )
    };
    let quiet_run = |script: String| {
        Command::new(CAPPROF)
            .args(["run", "--quiet", "--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("capprof runs")
    };
    let check = |profile: &serde_json::Value, case: &str| {
        assert_eq!(
            names(profile, "required"),
            ["CAP_CHOWN"],
            "{case}: {profile}"
        );
        assert_eq!(
            profile["observation"]["unclassified_checks"], 0,
            "{case}: {profile}"
        );
        if profile["observation"]["backend"] == "tp_btf" {
            assert_eq!(
                names(profile, "advisory"),
                ["CAP_SYS_ADMIN"],
                "{case}: {profile}"
            );
        }
    };

    // Loaded while the other program is attached; the checks come after it
    // has gone.
    fixture_file(&file, 0, 0, 0o644);
    let mut other = quiet_run(wait_loop("a-release"));
    wait_for(&marker("a-release-up"));
    let ours = std::thread::scope(|s| {
        let ours = s.spawn(|| profile_of(&["sh", "-c", &workload("a-go")]));
        wait_for(&marker("a-go-up"));
        std::fs::write(marker("a-release"), b"").unwrap();
        other.wait().unwrap();
        std::fs::write(marker("a-go"), b"").unwrap();
        ours.join().unwrap()
    });
    check(&ours.1, "other program gone after load");

    // Loaded alone; the checks come while the other program is attached.
    fixture_file(&file, 0, 0, 0o644);
    let ours = std::thread::scope(|s| {
        let ours = s.spawn(|| profile_of(&["sh", "-c", &workload("b-go")]));
        wait_for(&marker("b-go-up"));
        let mut other = quiet_run(wait_loop("b-release"));
        wait_for(&marker("b-release-up"));
        std::fs::write(marker("b-go"), b"").unwrap();
        let ours = ours.join().unwrap();
        std::fs::write(marker("b-release"), b"").unwrap();
        other.wait().unwrap();
        ours
    });
    check(&ours.1, "other program attached after load");
}

// What no capability check shows (capprof-ebpf/src/syscalls.rs): binds
// and ICMP datagram sockets that a relaxed sysctl let through, and
// capset() calls that keep a capability. Their names share the `syscall_`
// prefix, so that `cargo xtask vm-test --filter syscall_` runs them alone.

/// Whether this kernel has the syscall tracepoints the bind, socket and
/// capset hooks use (CONFIG_FTRACE_SYSCALLS, tracefs mounted); reports the
/// test skipped when not (`common::skip`), so it is never counted passed.
fn has_syscall_tracepoints() -> bool {
    let found = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::path::Path::new(t)
                .join("events/syscalls/sys_enter_bind")
                .exists()
        });
    if !found {
        common::skip("no syscalls:sys_enter_bind tracepoint (CONFIG_FTRACE_SYSCALLS, tracefs)");
    }
    found
}

/// The profile of one successful test action, for the syscall hooks'
/// tests; `None` (after a printed reason) where the kernel lacks the
/// syscall tracepoints.
fn syscall_profile(args: &[&str]) -> Option<serde_json::Value> {
    require_root();
    if !has_syscall_tracepoints() {
        return None;
    }
    let mut cmd = vec![ACTION];
    cmd.extend_from_slice(args);
    let (out, profile) = profile_of(&cmd);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(profile)
}

/// The entries of the profile's `conditional` or `kept` list (absent when
/// empty).
fn entries(profile: &serde_json::Value, field: &str) -> Vec<serde_json::Value> {
    profile[field].as_array().cloned().unwrap_or_default()
}

#[test]
#[ignore = "needs root"]
fn syscall_bind_that_a_lowered_sysctl_let_through_is_conditional() {
    // As in a Docker container: ip_unprivileged_port_start=0, so the bind
    // makes no CAP_NET_BIND_SERVICE check.
    let Some(profile) = syscall_profile(&["bind-in-netns", "600", "0"]) else {
        return;
    };
    for field in ["required", "allowlist"] {
        assert!(
            !names(&profile, field).contains(&"CAP_NET_BIND_SERVICE".to_owned()),
            "{field}: {profile}"
        );
    }
    let conditional = entries(&profile, "conditional");
    assert_eq!(conditional.len(), 1, "{profile}");
    let c = &conditional[0];
    assert_eq!(c["capability"], "CAP_NET_BIND_SERVICE");
    assert_eq!(c["operation"], "bind tcp port 600");
    assert_eq!(c["sysctl"], "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(c["value"], "0", "read in the process's own namespace");
    assert_eq!(c["port"], 600);
    let ev = &c["evidence"][0];
    assert_eq!(ev["comm"], "capprof-test-ac");
    assert!(
        ev["exe"]
            .as_str()
            .unwrap_or("")
            .ends_with("capprof-test-action"),
        "{ev}"
    );
}

#[test]
#[ignore = "needs root"]
fn syscall_bind_below_the_namespaces_start_is_checked_not_conditional() {
    let Some(profile) = syscall_profile(&["bind-in-netns", "600", "1024"]) else {
        return;
    };
    assert!(
        names(&profile, "required").contains(&"CAP_NET_BIND_SERVICE".to_owned()),
        "{profile}"
    );
    assert!(entries(&profile, "conditional").is_empty(), "{profile}");
}

#[test]
#[ignore = "needs root"]
fn syscall_icmp_datagram_socket_that_ping_group_range_allowed_is_conditional() {
    let Some(profile) = syscall_profile(&["ping-socket-in-netns", "0 2147483647"]) else {
        return;
    };
    assert!(
        !names(&profile, "allowlist").contains(&"CAP_NET_RAW".to_owned()),
        "{profile}"
    );
    let conditional = entries(&profile, "conditional");
    assert_eq!(conditional.len(), 1, "{profile}");
    let c = &conditional[0];
    assert_eq!(c["capability"], "CAP_NET_RAW");
    assert_eq!(c["operation"], "icmp datagram socket");
    assert_eq!(c["sysctl"], "net.ipv4.ping_group_range");
    assert_eq!(c["value"], "0 2147483647");
    assert_eq!(c["evidence"][0]["gid"], 0);
}

#[test]
#[ignore = "needs root"]
fn syscall_icmp_datagram_socket_refused_falls_back_to_a_checked_raw_socket() {
    // The kernel's default range ("1 0") shuts everyone out: the datagram
    // socket fails and the raw one makes the real check.
    let Some(profile) = syscall_profile(&["ping-socket-in-netns", ""]) else {
        return;
    };
    assert!(
        names(&profile, "required").contains(&"CAP_NET_RAW".to_owned()),
        "{profile}"
    );
    assert!(entries(&profile, "conditional").is_empty(), "{profile}");
}

#[test]
#[ignore = "needs root"]
fn syscall_capset_that_keeps_a_capability_puts_it_on_the_allowlist() {
    // Keep CAP_NET_BIND_SERVICE (10) alone: no check is made for it.
    let Some(profile) = syscall_profile(&["capset", "keep:10"]) else {
        return;
    };
    assert!(names(&profile, "required").is_empty(), "{profile}");
    assert_eq!(
        names(&profile, "allowlist"),
        ["CAP_NET_BIND_SERVICE"],
        "{profile}"
    );
    let kept = entries(&profile, "kept");
    assert_eq!(kept.len(), 1, "{profile}");
    assert_eq!(kept[0]["capability"], "CAP_NET_BIND_SERVICE");
    assert_eq!(
        kept[0]["sets"],
        serde_json::json!(["permitted", "effective"])
    );
    assert_eq!(kept[0]["evidence"][0]["comm"], "capprof-test-ac");
    // capset()'s own CAP_SETPCAP check is told apart, not required.
    assert_eq!(
        profile["observation"]["unclassified_checks"], 0,
        "{profile}"
    );
}

#[test]
#[ignore = "needs root"]
fn syscall_capset_of_unchanged_or_emptied_sets_keeps_nothing() {
    for mode in ["same", "drop"] {
        let Some(profile) = syscall_profile(&["capset", mode]) else {
            return;
        };
        assert!(entries(&profile, "kept").is_empty(), "{mode}: {profile}");
        assert!(names(&profile, "allowlist").is_empty(), "{mode}: {profile}");
        assert_eq!(
            profile["observation"]["unclassified_checks"], 0,
            "{mode}: {profile}"
        );
    }
}

/// overlayfs copies a file up from its lower layer with its mounter's
/// credentials, from the task that writes (`ovl_override_creds`): on
/// Docker's overlay2 that is every container's first write to an image
/// file. Those checks (CHOWN to give the copy its owner back, SYS_ADMIN for
/// trusted.* xattrs, DAC_* in the work directory, …) are the mounter's, not
/// the workload's: they are reported as `borrowed`, never required. The
/// file here is world-writable, so the write itself needs nothing.
#[test]
#[ignore = "needs root"]
fn overlay_copy_up_checks_are_borrowed_not_required() {
    require_root();
    let dir = Scratch::new("overlay");
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| {
        let path = dir.path(d);
        std::fs::create_dir(&path).unwrap();
        path
    });
    fixture_file(&lower.join("f"), 1000, 1000, 0o666);
    let out_path = dir.path("p.json");
    let target = merged.join("f");
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    // The overlay is mounted outside the profiled cgroup, before capprof
    // runs; only the write is profiled.
    let out = Command::new(ACTION)
        .args(["in-overlay", &arg(&lower), &arg(&upper), &arg(&work)])
        .args([
            &arg(&merged),
            CAPPROF,
            "run",
            "--quiet",
            "--out",
            &arg(&out_path),
        ])
        .args(["--", ACTION, "write-file", &arg(&target)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The write went through the copy-up: the upper layer has the file,
    // with its owner.
    let meta = std::fs::metadata(upper.join("f")).expect("copied up");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).unwrap();
    assert!(names(&profile, "required").is_empty(), "{profile}");
    assert!(names(&profile, "allowlist").is_empty(), "{profile}");
    assert!(names(&profile, "denied").is_empty(), "{profile}");
    assert_eq!(
        profile["observation"]["unclassified_checks"], 0,
        "{profile}"
    );
    // Chowning the copy to uid 1000 is the mounter's CAP_CHOWN check.
    let borrowed = names(&profile, "borrowed");
    assert!(borrowed.contains(&"CAP_CHOWN".to_owned()), "{profile}");
    let chown = profile["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "CAP_CHOWN")
        .unwrap();
    assert_eq!(chown["class"], "borrowed", "{chown}");
    assert_eq!(chown["by_class"].as_object().unwrap().len(), 1, "{chown}");
    let ev = &chown["evidence"][0];
    assert_eq!(ev["class"], "borrowed", "{ev}");
    assert_eq!(ev["comm"], "capprof-test-ac", "{ev}");
    assert_eq!(ev["user_ns"], "own", "{ev}");
    assert!(
        ev["call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("capable_wrt_inode_uidgid"),
        "{ev}"
    );
}
