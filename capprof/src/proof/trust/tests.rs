use super::*;

fn spec() -> RunSpec {
    RunSpec {
        image: Some("busybox:1".into()),
        cmd: Some(vec!["sh".into(), "-c".into(), "chown 1 /data/f".into()]),
        network_mode: Some("none".into()),
        binds: vec!["/srv/data:/data:ro".into(), "cache:/cache".into()],
        ..Default::default()
    }
}

fn caps(names: &[&str]) -> Vec<Cap> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

fn info(run: RunSpec, capabilities: Option<Vec<Cap>>) -> ContainerInfo {
    ContainerInfo {
        id: "a".repeat(64),
        run: Some(run),
        capabilities,
        ..Default::default()
    }
}

/// What is refused, field by field, when the original is gone.
#[test]
fn without_the_original_nothing_that_reaches_the_host_is_trusted() {
    let allow = caps(&["CHOWN"]);
    let fields = |f: &dyn Fn(&mut RunSpec)| -> Vec<(&'static str, Why)> {
        let mut s = spec();
        s.binds.clear();
        f(&mut s);
        assess(&s, &allow, None)
            .into_iter()
            .map(|u| (u.field, u.why))
            .collect()
    };
    // Inside the container only: nothing to say.
    assert!(
        fields(&|s| {
            s.user = Some("1000".into());
            s.tmpfs.insert("/run".into(), "exec".into());
            s.binds = vec!["cache:/cache".into(), "/anon".into()];
            s.security_opt = vec!["no-new-privileges:true".into()];
            s.sysctls
                .insert("net.ipv4.ping_group_range".into(), "0 0".into());
            s.ipc_mode = Some("shareable".into());
        })
        .is_empty()
    );
    let root = [("run.binds", Why::HostRoot)];
    assert_eq!(fields(&|s| s.binds = vec!["/:/host".into()]), root);
    assert_eq!(fields(&|s| s.binds = vec!["//:/host".into()]), root);
    assert_eq!(fields(&|s| s.binds = vec!["/etc/..:/host:ro".into()]), root);
    assert_eq!(
        fields(&|s| s.binds = vec!["/etc:/x".into()]),
        [("run.binds", Why::NoOriginal)]
    );
    assert_eq!(
        fields(&|s| s.devices = vec![DeviceSpec {
            path_on_host: "/dev/sda".into(),
            path_in_container: "/dev/sda".into(),
            cgroup_permissions: "rwm".into(),
        }]),
        [("run.devices", Why::NoOriginal)]
    );
    assert_eq!(
        fields(&|s| s.privileged = true),
        [("run.privileged", Why::NoOriginal)]
    );
    for (field, set) in [
        (
            "run.pid_mode",
            (|s: &mut RunSpec| s.pid_mode = Some("host".into())) as fn(&mut RunSpec),
        ),
        ("run.ipc_mode", |s| s.ipc_mode = Some("host".into())),
        ("run.uts_mode", |s| s.uts_mode = Some("host".into())),
        ("run.userns_mode", |s| s.userns_mode = Some("host".into())),
        ("run.network_mode", |s| {
            s.network_mode = Some("container:abc".into())
        }),
        ("run.runtime", |s| s.runtime = Some("weird".into())),
        ("run.security_opt", |s| {
            s.security_opt = vec!["seccomp=unconfined".into()]
        }),
        ("run.sysctls", |s| {
            s.sysctls.insert("kernel.core_pattern".into(), "|/x".into());
        }),
        ("run.mounts", |s| {
            s.mounts = vec![MountSpec {
                kind: "bind".into(),
                source: Some("/etc".into()),
                target: "/e".into(),
                read_only: false,
            }]
        }),
    ] {
        assert_eq!(fields(&set), [(field, Why::NoOriginal)], "{field}");
    }
    // The engine's defaults are trusted; more is not.
    let beyond = assess(&spec(), &caps(&["CHOWN", "SYS_ADMIN"]), None);
    assert!(
        beyond
            .iter()
            .any(|u| u.field == "allowlist" && u.value == "CAP_SYS_ADMIN")
    );
}

/// The original container's own settings are trusted, as long as it runs
/// the same image and command; never a bind of the host's root.
#[test]
fn the_original_containers_own_settings_are_trusted() {
    let mut original = spec();
    original.pid_mode = Some("host".into());
    original.binds.push("/:/host".into());
    let original_info = info(original.clone(), Some(caps(&["CHOWN", "SYS_ADMIN"])));
    let o = Original::of(&original_info, &original);
    assert!(o.is_some());
    let got = assess(&original, &caps(&["SYS_ADMIN"]), o);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].field, got[0].why), ("run.binds", Why::HostRoot));

    // Another host path, or rw where it was ro: not the original's.
    let mut more = original.clone();
    more.binds = vec!["/srv/data:/data:rw".into()];
    let got = assess(&more, &[], Original::of(&original_info, &more));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].why, Why::NotOriginal);
    // More capabilities than the original had.
    let got = assess(
        &spec(),
        &caps(&["NET_ADMIN"]),
        Original::of(&original_info, &spec()),
    );
    assert_eq!((got[0].field, got[0].why), ("allowlist", Why::NotOriginal));

    // The same id running another command borrows nothing.
    let mut other = spec();
    other.cmd = Some(vec!["sh".into(), "-c".into(), "cat /data/secret".into()]);
    assert!(Original::of(&original_info, &other).is_none());
}

#[test]
fn a_run_profiles_command_is_never_trusted_and_is_shown_as_typed() {
    let argv: Vec<String> = ["sh", "-c", "rm -rf '/x'"].map(String::from).to_vec();
    let got = assess_command(&argv);
    assert_eq!(got[0].why, Why::HostCommand);
    assert_eq!(got[0].value, r#"sh -c 'rm -rf '\''/x'\'''"#);
    let line = got[0].to_string();
    assert!(line.starts_with("run.command "), "{line}");
    assert!(line.contains("runs on this host as root"), "{line}");
}

#[test]
fn the_block_shows_every_setting_and_hides_nothing() {
    let mut s = spec();
    s.image = Some("busy\u{202E}box".into());
    s.devices = vec![];
    s.env_names = vec!["TOKEN".into()];
    s.pid_mode = Some("host".into());
    let text = describe("verify", &s, &caps(&["CHOWN"]), Some("docker 20.10"));
    assert!(
        text.starts_with("capprof: verify will run, as root, on docker 20.10:\n"),
        "{text}"
    );
    for needle in [
        "image         busy\\u{202e}box",
        "command       sh -c 'chown 1 /data/f'",
        "capabilities  CAP_CHOWN; every other one dropped",
        "network       none",
        "binds         /srv/data:/data:ro, cache:/cache",
        "devices       none",
        "namespaces    pid host, ipc private",
        "environment   TOKEN",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    assert!(text.lines().skip(1).all(|l| l.starts_with("  ")), "{text}");
    let cmd = RunSpec::for_command(&["true".into()]);
    let text = describe("minimize", &cmd, &[], None);
    assert!(text.contains("outside any container"), "{text}");
    assert!(text.contains("capabilities  none;"), "{text}");
}
