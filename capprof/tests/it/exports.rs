//! Exports checked by the tools that consume them.

use std::process::Command;

use crate::common::*;

/// The systemd drop-in really takes away what the unit granted: checked
/// with systemd's own `systemd-analyze security`, offline, on a unit that
/// grants CAP_SYS_ADMIN and the drop-in capprof writes for a profile that
/// needs CHOWN and NET_BIND_SERVICE.
#[test]
#[ignore = "needs systemd-analyze (cargo xtask setup)"]
fn systemd_drop_in_removes_what_the_unit_granted() {
    let root = Scratch::new("systemd-root");
    let units = root.path("etc/systemd/system");
    std::fs::create_dir_all(units.join("web.service.d")).unwrap();
    std::fs::write(
        units.join("web.service"),
        "[Service]\nExecStart=/usr/bin/true\nCapabilityBoundingSet=CAP_SYS_ADMIN CAP_CHOWN\n",
    )
    .unwrap();
    let drop_in = units.join("web.service.d/capprof.conf");
    let out = capprof(&[
        "export",
        "-f",
        "systemd",
        "-o",
        drop_in.to_str().unwrap(),
        SAMPLE_PROFILE,
    ]);
    assert!(out.status.success(), "{}", output_text(&out));

    let analyze = |root: &Scratch| {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true"])
            .arg(format!("--root={}", root.0.display()))
            .arg("web.service")
            .output()
            .expect("systemd-analyze (Debian's systemd; cargo xtask setup installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let line = |report: &str, cap: &str| {
        report
            .lines()
            .find(|l| l.contains(&format!("CapabilityBoundingSet=~{cap}")))
            .unwrap_or_else(|| panic!("no {cap} line in:\n{report}"))
            .to_owned()
    };
    let report = analyze(&root);
    assert!(
        line(&report, "CAP_SYS_ADMIN").starts_with('✓'),
        "CAP_SYS_ADMIN survived the drop-in:\n{report}"
    );

    // The same drop-in without its reset lines keeps the unit's
    // CAP_SYS_ADMIN: the check above can fail.
    let text = std::fs::read_to_string(&drop_in).unwrap();
    let merged: String = text
        .lines()
        .filter(|l| !l.ends_with('='))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&drop_in, merged).unwrap();
    let report = analyze(&root);
    assert!(
        line(&report, "CAP_SYS_ADMIN").starts_with('✗'),
        "expected CAP_SYS_ADMIN without the reset lines:\n{report}"
    );
}
