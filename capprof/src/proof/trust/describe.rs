//! What a re-run will do, said before it does it: one block on stderr,
//! one setting a line, every value from the profile made visible
//! (`text::visible`), so that a profile cannot hide what it asks for.

use super::{device_text, shell_words};
use crate::{capability::Cap, profile::RunSpec, text::visible};

/// The block `verify` and `minimize` print before the first run: `verb`
/// is the command, `engine` where it runs (`None`: a `run` profile's
/// command, on this host), `allowlist` the most the re-run may hold.
pub fn describe(verb: &str, spec: &RunSpec, allowlist: &[Cap], engine: Option<&str>) -> String {
    let caps = if allowlist.is_empty() {
        "none".to_owned()
    } else {
        allowlist
            .iter()
            .map(Cap::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines: Vec<(&str, String)> = vec![];
    let Some(engine) = engine else {
        let argv = spec.command.as_deref().unwrap_or_default();
        lines.push(("command", visible(&shell_words(argv))));
        lines.push(("workdir", or_default(spec.workdir.as_deref(), "this one")));
        lines.push((
            "capabilities",
            format!("{caps}; every set limited to them, in a cgroup of its own"),
        ));
        return block(
            &format!("{verb} will run, as root, on this host, outside any container:"),
            &lines,
        );
    };
    lines.push(("image", or_default(spec.image.as_deref(), "-")));
    let argv: Vec<String> = spec
        .entrypoint
        .iter()
        .chain(&spec.cmd)
        .flatten()
        .cloned()
        .collect();
    lines.push((
        "command",
        match argv.is_empty() {
            true => "the image's".to_owned(),
            false => visible(&shell_words(&argv)),
        },
    ));
    lines.push(("user", or_default(spec.user.as_deref(), "the image's")));
    lines.push((
        "capabilities",
        format!("{caps}; every other one dropped, never privileged"),
    ));
    lines.push((
        "network",
        or_default(spec.network_mode.as_deref(), "the engine's default"),
    ));
    lines.extend(host_access(spec));
    lines.push(("namespaces", namespaces(spec)));
    if !spec.env_names.is_empty() {
        lines.push(("environment", list(&spec.env_names)));
    }
    block(&format!("{verb} will run, as root, on {engine}:"), &lines)
}

/// The settings that reach the host: binds, mounts, devices, security
/// options and sysctls (tmpfs, for completeness).
fn host_access(spec: &RunSpec) -> Vec<(&'static str, String)> {
    let mounts: Vec<String> = spec
        .mounts
        .iter()
        .map(|m| {
            format!(
                "{} {}:{}{}",
                m.kind,
                m.source.as_deref().unwrap_or(""),
                m.target,
                if m.read_only { ":ro" } else { "" }
            )
        })
        .collect();
    let devices: Vec<String> = spec.devices.iter().map(device_text).collect();
    let sysctls: Vec<String> = spec
        .sysctls
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let tmpfs: Vec<String> = spec.tmpfs.keys().cloned().collect();
    [
        ("binds", &spec.binds),
        ("mounts", &mounts),
        ("tmpfs", &tmpfs),
        ("devices", &devices),
        ("security", &spec.security_opt),
        ("sysctls", &sysctls),
    ]
    .into_iter()
    .filter(|(what, l)| !l.is_empty() || matches!(*what, "binds" | "devices"))
    .map(|(what, l)| (what, list(l)))
    .collect()
}

fn namespaces(spec: &RunSpec) -> String {
    [
        ("pid", &spec.pid_mode, "private"),
        ("ipc", &spec.ipc_mode, "private"),
        ("uts", &spec.uts_mode, "private"),
        ("user", &spec.userns_mode, "private"),
        ("cgroup", &spec.cgroupns_mode, "the engine's default"),
    ]
    .into_iter()
    .map(|(ns, mode, default)| format!("{ns} {}", or_default(mode.as_deref(), default)))
    .collect::<Vec<_>>()
    .join(", ")
}

fn or_default(value: Option<&str>, default: &str) -> String {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => visible(v),
        None => default.to_owned(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(|i| visible(i))
        .collect::<Vec<_>>()
        .join(", ")
}

fn block(head: &str, lines: &[(&str, String)]) -> String {
    let mut out = format!("capprof: {head}\n");
    for (what, value) in lines {
        out.push_str(&format!("  {what:<13} {value}\n"));
    }
    out
}
