//! Getting capabilities to a workload that runs as non-root.
//!
//! `capabilities.add` gives nothing to a non-root process in Kubernetes
//! (kubernetes#56374), and Docker sets no ambient capabilities
//! (moby#8460): `--cap-add` only widens the bounding set, and a process
//! whose uid is not 0 starts with empty effective and permitted sets. What
//! does reach it is a **file capability** on the program it executes
//! (`setcap cap_net_bind_service+ep /usr/sbin/nginx` in the image), raised
//! at execve as long as the capability is in the bounding set and
//! privilege escalation is allowed: `no_new_privs`, which
//! `allowPrivilegeEscalation: false` and Docker's
//! `--security-opt no-new-privileges` set, makes the kernel ignore file
//! capabilities.
//!
//! The report recommends file capabilities when the workload:
//! - **runs as non-root**: some check on its allowlist came from a process
//!   whose uid is not 0. File capabilities go on the programs that made
//!   those checks.
//! - **could run as non-root**: every check came from uid 0, but the
//!   allowlist holds neither SETUID nor SETGID, so the workload does not
//!   switch identities itself and could be started as a non-root user.
//!   File capabilities go on every program that used a capability.
//!
//! A workload that runs as root and changes its own uid or gid (a server
//! that drops to a worker user) manages its identity itself; it keeps its
//! allowlist as root.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::{
    capability::Cap,
    profile::{Profile, Verdict},
};

/// Programs that run other code: a file capability on one of them is
/// granted to everything it runs.
const SHARED: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "env", "perl", "ruby", "node", "java",
    "php", "python", "python3",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunsAs {
    /// Every check on the allowlist came from uid 0.
    Root,
    /// Some came from another uid.
    NonRoot,
    /// Nothing on the allowlist to go by.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileCap {
    /// The program's path, or its command name when the path is unknown.
    pub program: String,
    pub path_known: bool,
    pub capabilities: Vec<Cap>,
    /// An interpreter or a multi-call binary: every script or applet it
    /// runs gets the capabilities too.
    pub shared: bool,
    /// `setcap cap_a,cap_b+ep PATH`.
    pub command: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SysctlAdvice {
    pub capability: Cap,
    pub sysctl: &'static str,
    pub advice: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub runs_as: RunsAs,
    /// The non-root uids seen on the allowlist's checks.
    pub uids: Vec<u32>,
    /// Whether file capabilities are recommended.
    pub recommended: bool,
    /// Why, or why not, in one sentence.
    pub why: String,
    pub file_caps: Vec<FileCap>,
    /// Namespaced sysctls that make a capability unnecessary.
    pub sysctls: Vec<SysctlAdvice>,
}

/// `setcap cap_a,cap_b+ep PATH`, or with `"$(command -v NAME)"` when only
/// the command name is known. Program names come from the workload, so
/// they are shell-quoted: a copied line runs nothing the workload chose.
fn setcap_command(program: &str, path_known: bool, caps: &[Cap]) -> String {
    let names: Vec<String> = caps
        .iter()
        .map(|c| format!("cap_{}", c.short_name().to_ascii_lowercase()))
        .collect();
    let target = if path_known {
        shell_quote(program)
    } else {
        format!("\"$(command -v {})\"", shell_quote(program))
    };
    format!("setcap {}+ep {target}", names.join(","))
}

/// `s` as one shell word: as it is when it holds only safe characters,
/// else in single quotes.
fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._+-,:=@".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn is_shared(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    SHARED.contains(&base) || base.starts_with("python") || base.starts_with("php")
}

pub fn delivery(profile: &Profile) -> Delivery {
    let allow: BTreeSet<Cap> = profile.allowlist.iter().copied().collect();
    // (program, path known) -> capabilities, for all checks and for non-root ones.
    let mut by_program: BTreeMap<(String, bool), BTreeSet<Cap>> = BTreeMap::new();
    let mut non_root: BTreeMap<(String, bool), BTreeSet<Cap>> = BTreeMap::new();
    let mut uids = BTreeSet::new();
    for usage in profile
        .capabilities
        .iter()
        .filter(|u| allow.contains(&u.name))
    {
        for ev in usage
            .evidence
            .iter()
            .filter(|e| e.verdict == Verdict::Granted)
        {
            // `/proc/self/exe` (busybox re-executing itself) names no file
            // a capability could be set on.
            let program = match &ev.exe {
                Some(exe) if exe.starts_with('/') && !exe.starts_with("/proc/") => {
                    (exe.clone(), true)
                }
                _ => (ev.comm.clone(), false),
            };
            by_program
                .entry(program.clone())
                .or_default()
                .insert(usage.name);
            if ev.uid != 0 {
                uids.insert(ev.uid);
                non_root.entry(program).or_default().insert(usage.name);
            }
        }
    }
    let sysctls = sysctls(&allow);
    let runs_as = if !uids.is_empty() {
        RunsAs::NonRoot
    } else if by_program.is_empty() {
        RunsAs::Unknown
    } else {
        RunsAs::Root
    };
    let switches_identity = ["SETUID", "SETGID"]
        .iter()
        .any(|n| allow.iter().any(|c| c.short_name() == *n));
    let (recommended, why, programs) = match runs_as {
        RunsAs::NonRoot => (
            true,
            format!(
                "it runs as non-root (uid {})",
                uids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            ),
            non_root,
        ),
        RunsAs::Root if !switches_identity => (
            true,
            "it runs as root but does not change its own uid or gid, so it could run as a non-root user \
             with file capabilities on the programs that use them"
                .to_owned(),
            by_program,
        ),
        RunsAs::Root => (
            false,
            "it runs as root and changes its own uid or gid (SETUID/SETGID): it manages its identity \
             itself, so keep it root with only its allowlist"
                .to_owned(),
            BTreeMap::new(),
        ),
        RunsAs::Unknown => (
            false,
            "nothing on its allowlist was seen with a program to put a file capability on".to_owned(),
            BTreeMap::new(),
        ),
    };
    let file_caps = known_paths_first(programs)
        .into_iter()
        .map(|((program, path_known), caps)| {
            let caps: Vec<Cap> = caps.into_iter().collect();
            FileCap {
                command: setcap_command(&program, path_known, &caps),
                shared: is_shared(&program),
                program,
                path_known,
                capabilities: caps,
            }
        })
        .collect();
    Delivery {
        runs_as,
        uids: uids.into_iter().collect(),
        recommended,
        why,
        file_caps,
        sysctls,
    }
}

/// A program known only by name joins a program whose path ends in that
/// name: busybox seen through `/proc/self/exe` is the `/usr/bin/busybox`
/// seen elsewhere.
fn known_paths_first(
    programs: BTreeMap<(String, bool), BTreeSet<Cap>>,
) -> BTreeMap<(String, bool), BTreeSet<Cap>> {
    let (mut known, unknown): (BTreeMap<_, _>, BTreeMap<_, _>) = programs
        .into_iter()
        .partition(|((_, path_known), _)| *path_known);
    let mut out = BTreeMap::new();
    for ((name, _), caps) in unknown {
        let same = known
            .keys()
            .find(|(path, _)| path.rsplit('/').next() == Some(name.as_str()))
            .cloned();
        match same.and_then(|key| known.get_mut(&key)) {
            Some(entry) => entry.extend(caps),
            None => {
                out.insert((name, false), caps);
            }
        }
    }
    out.extend(known);
    out
}

fn sysctls(allow: &BTreeSet<Cap>) -> Vec<SysctlAdvice> {
    let mut out = vec![];
    for cap in allow {
        match cap.short_name() {
            "NET_BIND_SERVICE" => out.push(SysctlAdvice {
                capability: *cap,
                sysctl: "net.ipv4.ip_unprivileged_port_start",
                advice: "set it to the lowest port the workload binds (a safe sysctl in Kubernetes, allowed \
                         by every Pod Security level) and drop NET_BIND_SERVICE",
            }),
            "NET_RAW" => out.push(SysctlAdvice {
                capability: *cap,
                sysctl: "net.ipv4.ping_group_range",
                advice: "if NET_RAW is only for ping (ICMP echo), a range holding the workload's gid lets it \
                         use unprivileged ICMP sockets instead",
            }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        observation::{Kind, Phase, Verdict},
        profile::{Class, Evidence, Observation, Observations, Subject},
    };

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    /// `(capability, exe, uid)`: one granted check each. An `exe` without
    /// a slash is a command name whose path was not recorded.
    fn profile(checks: &[(&str, Option<&str>, u32)]) -> Profile {
        let mut obs = Observations::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        for (c, exe, uid) in checks {
            obs.add_count(
                cap(c),
                (Verdict::Granted, Kind::Audit, Phase::Workload),
                1,
                (t, t),
            );
            obs.add_evidence(
                cap(c),
                Phase::Workload,
                Evidence {
                    comm: exe.unwrap_or("app").rsplit('/').next().unwrap().to_owned(),
                    exe: exe.filter(|e| e.contains('/')).map(str::to_owned),
                    syscall: None,
                    pid: 1,
                    uid: *uid,
                    verdict: Verdict::Granted,
                    class: Class::Required,
                    call_site: None,
                    user_ns: Default::default(),
                },
            );
        }
        obs.into_profile(
            Subject {
                kind: "container".into(),
                ..Default::default()
            },
            Observation::default(),
        )
    }

    #[test]
    fn non_root_programs_get_file_capabilities() {
        let p = profile(&[
            ("NET_BIND_SERVICE", Some("/usr/sbin/nginx"), 101),
            ("CHOWN", Some("/usr/local/bin/entrypoint"), 0),
        ]);
        let d = delivery(&p);
        assert_eq!(d.runs_as, RunsAs::NonRoot);
        assert!(d.recommended);
        assert_eq!(d.uids, [101]);
        assert_eq!(d.file_caps.len(), 1, "only the non-root program");
        assert_eq!(
            d.file_caps[0].command,
            "setcap cap_net_bind_service+ep /usr/sbin/nginx"
        );
        assert!(!d.file_caps[0].shared);
        assert_eq!(d.sysctls[0].sysctl, "net.ipv4.ip_unprivileged_port_start");
    }

    #[test]
    fn root_that_could_be_non_root() {
        let p = profile(&[
            ("CHOWN", Some("/bin/busybox"), 0),
            ("NET_RAW", Some("/bin/busybox"), 0),
            ("MKNOD", None, 0),
            ("KILL", Some("/proc/self/exe"), 0),
            // busybox re-executing itself is the busybox seen above.
            ("SYS_CHROOT", Some("busybox"), 0),
        ]);
        let d = delivery(&p);
        assert_eq!(d.runs_as, RunsAs::Root);
        assert!(d.recommended, "{}", d.why);
        let commands: Vec<&str> = d.file_caps.iter().map(|f| f.command.as_str()).collect();
        assert_eq!(
            commands,
            [
                "setcap cap_chown,cap_net_raw,cap_sys_chroot+ep /bin/busybox",
                "setcap cap_mknod+ep \"$(command -v app)\"",
                "setcap cap_kill+ep \"$(command -v exe)\""
            ]
        );
        assert!(d.file_caps[0].shared, "busybox runs every applet");
        assert!(!d.file_caps[1].path_known);
    }

    #[test]
    fn program_names_are_shell_quoted() {
        let p = profile(&[("CHOWN", Some("/opt/my app/$(reboot)"), 1000)]);
        assert_eq!(
            delivery(&p).file_caps[0].command,
            "setcap cap_chown+ep '/opt/my app/$(reboot)'"
        );
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote("/usr/sbin/nginx"), "/usr/sbin/nginx");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn root_that_switches_identity_keeps_root() {
        let p = profile(&[
            ("SETUID", Some("/usr/sbin/nginx"), 0),
            ("SETGID", Some("/usr/sbin/nginx"), 0),
        ]);
        let d = delivery(&p);
        assert!(!d.recommended);
        assert!(d.why.contains("SETUID/SETGID"));
        assert!(d.file_caps.is_empty());
        assert_eq!(delivery(&profile(&[])).runs_as, RunsAs::Unknown);
    }
}
