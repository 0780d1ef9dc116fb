//! The trust model of `verify` and `minimize`: a profile is data that
//! people pass around, and its `subject.run` is re-run as root. What it
//! asks for is split in two:
//!
//! - **What stays inside the container** (image, command, user, workdir,
//!   environment, tmpfs, ulimits, …) runs as asked: the container is the
//!   boundary, and the image must already be on the engine.
//! - **What reaches the host through the container's walls** is refused
//!   unless the original container was given exactly the same: host-path
//!   binds and bind mounts, devices, `privileged`, sharing the host's (or
//!   another container's) PID, IPC, UTS or user namespace, a network other
//!   than none, host or the default bridge, security options that loosen
//!   seccomp, AppArmor or SELinux, sysctls outside the container's own
//!   namespaces, another OCI runtime, and capabilities beyond what the
//!   original had (beyond the engine's defaults when it is gone). The
//!   original container is the one `subject.id` names, compared only while
//!   the engine still has it and it runs the same image and command; when
//!   it is gone nothing of that kind is trusted. A bind of the host's root
//!   is refused even when the original had it, and a `run` profile's
//!   command always is: it runs on the host, as root, outside any
//!   container.
//!
//! `--trust-run` overrides the refusal, with a warning line. Either way,
//! [`describe`] says what will run before anything does.
//!
//! [`assess`] destructures [`RunSpec`] field by field, without `..`: a
//! field added to it does not compile until this model decides about it,
//! so the engine never receives a setting the model did not look at.

use std::path::{Component, Path, PathBuf};

use crate::{
    capability::Cap,
    engine::ContainerInfo,
    profile::{DeviceSpec, MountSpec, RunSpec},
    text::visible,
};

/// One setting of a profile's `subject.run` that capprof does not run
/// without `--trust-run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    /// The field as the profile names it: `run.binds`.
    pub field: &'static str,
    /// The value asked for, as written.
    pub value: String,
    pub why: Why,
}

/// Why a setting is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A `run` profile's command: it runs on this host, outside any
    /// container.
    HostCommand,
    /// A bind of the host's root directory.
    HostRoot,
    /// It reaches the host, and the original container was not given it.
    NotOriginal,
    /// It reaches the host, and there is no original container to compare
    /// with (gone, or running another image or command).
    NoOriginal,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.why {
            Why::HostCommand => {
                "is a command that runs on this host as root, outside any container"
            }
            Why::HostRoot => "binds the host's root directory",
            Why::NotOriginal => "reaches the host, and the original container was not given it",
            Why::NoOriginal => {
                "reaches the host, and no original container (same id, image and command) is left to compare with"
            }
        };
        write!(f, "{} {:?} {why}", self.field, visible(&self.value))
    }
}

/// What a re-run is compared with: the original container, when the
/// engine still has it and it runs what the profile says.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    pub run: &'a RunSpec,
    /// The capabilities it ran with, when known.
    pub capabilities: Option<&'a [Cap]>,
}

impl<'a> Original<'a> {
    /// The original container `info`, if it is the same workload as
    /// `spec`: same image, entrypoint and command. A profile that points
    /// at a container but runs something else borrows none of its trust.
    pub fn of(info: &'a ContainerInfo, spec: &RunSpec) -> Option<Self> {
        let run = info.run.as_ref()?;
        (run.image == spec.image && run.entrypoint == spec.entrypoint && run.cmd == spec.cmd)
            .then_some(Self {
                run,
                capabilities: info.capabilities.as_deref(),
            })
    }
}

/// A `run` profile's command: never trusted without `--trust-run`.
pub fn assess_command(argv: &[String]) -> Vec<Untrusted> {
    vec![Untrusted {
        field: "run.command",
        value: shell_words(argv),
        why: Why::HostCommand,
    }]
}

/// Every setting of a container's `spec` that reaches the host and is
/// not trusted, when the re-run may hold at most `allowlist`.
pub fn assess(spec: &RunSpec, allowlist: &[Cap], original: Option<Original>) -> Vec<Untrusted> {
    // Every field, named: see the module's comment.
    let RunSpec {
        command: _,
        image: _,
        entrypoint: _,
        cmd: _,
        user: _,
        workdir: _,
        hostname: _,
        env_names: _,
        env: _,
        tty: _,
        open_stdin: _,
        stop_signal: _,
        network_mode,
        binds,
        mounts,
        tmpfs: _,
        sysctls,
        devices,
        privileged,
        // Replaced by the allowlist: never sent.
        cap_add: _,
        cap_drop: _,
        security_opt,
        read_only: _,
        group_add: _,
        pid_mode,
        ipc_mode,
        uts_mode,
        userns_mode,
        cgroupns_mode: _,
        init: _,
        ulimits: _,
        shm_size: _,
        runtime,
    } = spec;
    let mut out = Check {
        out: vec![],
        original,
    };
    for bind in binds {
        out.bind(bind);
    }
    for mount in mounts {
        out.mount(mount);
    }
    for device in devices {
        out.unless("run.devices", device_text(device), |o| {
            o.devices.contains(device)
        });
    }
    if *privileged {
        out.unless("run.privileged", "true".into(), |o| o.privileged);
    }
    out.capabilities(allowlist);
    type Of = fn(&RunSpec) -> &Option<String>;
    let modes: [(&'static str, &Option<String>, &[&str], Of); 6] = [
        (
            "run.network_mode",
            network_mode,
            &["none", "host", "bridge", "default"],
            |o| &o.network_mode,
        ),
        ("run.pid_mode", pid_mode, &["private"], |o| &o.pid_mode),
        (
            "run.ipc_mode",
            ipc_mode,
            &["private", "shareable", "none"],
            |o| &o.ipc_mode,
        ),
        ("run.uts_mode", uts_mode, &["private"], |o| &o.uts_mode),
        ("run.userns_mode", userns_mode, &["private"], |o| {
            &o.userns_mode
        }),
        (
            "run.runtime",
            runtime,
            &["runc", "io.containerd.runc.v2", "crun"],
            |o| &o.runtime,
        ),
    ];
    for (field, mode, safe, of) in modes {
        out.mode(field, mode.as_deref(), safe, of);
    }
    for opt in security_opt.iter().filter(|o| !tightens(o)) {
        out.unless("run.security_opt", opt.clone(), |o| {
            o.security_opt.contains(opt)
        });
    }
    for (key, value) in sysctls.iter().filter(|(k, _)| !namespaced_sysctl(k)) {
        out.unless("run.sysctls", format!("{key}={value}"), |o| {
            o.sysctls.get(key) == Some(value)
        });
    }
    out.out
}

/// The assessment under way.
struct Check<'a> {
    out: Vec<Untrusted>,
    original: Option<Original<'a>>,
}

impl Check<'_> {
    /// Refuses `value` of `field` unless the original had it.
    fn unless(&mut self, field: &'static str, value: String, had: impl Fn(&RunSpec) -> bool) {
        let why = match self.original {
            Some(o) if had(o.run) => return,
            Some(_) => Why::NotOriginal,
            None => Why::NoOriginal,
        };
        self.out.push(Untrusted { field, value, why });
    }

    /// `-v SRC:DST[:OPTS]`: a host path when SRC is absolute, else a named
    /// volume (or, without DST, an anonymous one).
    fn bind(&mut self, bind: &str) {
        let Some((source, _)) = bind.split_once(':') else {
            return;
        };
        if is_volume_name(source) {
            return;
        }
        if is_host_root(source) {
            self.out.push(Untrusted {
                field: "run.binds",
                value: bind.to_owned(),
                why: Why::HostRoot,
            });
            return;
        }
        self.unless("run.binds", bind.to_owned(), |o| {
            o.binds.iter().any(|b| b == bind)
        });
    }

    /// `--mount`: a bind reaches the host; a volume with a name, or tmpfs,
    /// does not.
    fn mount(&mut self, mount: &MountSpec) {
        let source = mount.source.as_deref().unwrap_or("");
        let host = match mount.kind.as_str() {
            "tmpfs" => return,
            "volume" if source.is_empty() || is_volume_name(source) => return,
            _ => source,
        };
        let value = format!("{} {}:{}", mount.kind, host, mount.target);
        if mount.kind == "bind" && is_host_root(host) {
            self.out.push(Untrusted {
                field: "run.mounts",
                value,
                why: Why::HostRoot,
            });
            return;
        }
        self.unless("run.mounts", value, |o| o.mounts.contains(mount));
    }

    /// The allowlist the re-run may hold: within what the original had,
    /// else within the engine's defaults.
    fn capabilities(&mut self, allowlist: &[Cap]) {
        let defaults = crate::export::Runtime::Docker.default_caps();
        let trusted: &[Cap] = match self.original.and_then(|o| o.capabilities) {
            Some(caps) => caps,
            None => &defaults,
        };
        let beyond: Vec<String> = allowlist
            .iter()
            .filter(|c| !trusted.contains(c))
            .map(Cap::to_string)
            .collect();
        if beyond.is_empty() {
            return;
        }
        let why = match self.original {
            Some(o) if o.capabilities.is_some() => Why::NotOriginal,
            _ => Why::NoOriginal,
        };
        self.out.push(Untrusted {
            field: "allowlist",
            value: beyond.join(","),
            why,
        });
    }

    /// A namespace, network or runtime setting: unset or one of `safe` is
    /// fine; anything else only as the original had it.
    fn mode(
        &mut self,
        field: &'static str,
        mode: Option<&str>,
        safe: &[&str],
        of: fn(&RunSpec) -> &Option<String>,
    ) {
        let Some(mode) = mode.filter(|m| !m.is_empty() && !safe.contains(m)) else {
            return;
        };
        self.unless(field, mode.to_owned(), |o| of(o).as_deref() == Some(mode));
    }
}

/// Whether a bind's source is a volume name (`[A-Za-z0-9][A-Za-z0-9_.-]*`,
/// as the engine requires), not a host path.
fn is_volume_name(source: &str) -> bool {
    let mut chars = source.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether a host path is the root directory: `/`, `//`, `/etc/..`, or a
/// symlink to it on this host.
fn is_host_root(source: &str) -> bool {
    let mut path = PathBuf::from("/");
    for part in Path::new(source).components() {
        match part {
            Component::ParentDir => {
                path.pop();
            }
            Component::Normal(p) => path.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    path == Path::new("/") || std::fs::canonicalize(&path).is_ok_and(|p| p == Path::new("/"))
}

/// Security options that only tighten: `no-new-privileges`.
fn tightens(opt: &str) -> bool {
    matches!(
        opt,
        "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true"
    )
}

/// The sysctls a container has its own copy of (runc's list): setting
/// them changes nothing outside it.
fn namespaced_sysctl(key: &str) -> bool {
    key.starts_with("net.")
        || key.starts_with("fs.mqueue.")
        || matches!(
            key,
            "kernel.shmmax"
                | "kernel.shmall"
                | "kernel.shmmni"
                | "kernel.shm_rmid_forced"
                | "kernel.msgmax"
                | "kernel.msgmnb"
                | "kernel.msgmni"
                | "kernel.sem"
        )
}

fn device_text(d: &DeviceSpec) -> String {
    format!(
        "{}:{}:{}",
        d.path_on_host, d.path_in_container, d.cgroup_permissions
    )
}

/// An argv as one could type it: words with spaces or quotes quoted.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

mod describe;
pub use describe::describe;

#[cfg(test)]
mod tests;
