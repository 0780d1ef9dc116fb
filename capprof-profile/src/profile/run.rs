//! `subject.run`: what it takes to run a workload again, so that
//! `capprof verify` and `capprof minimize` can re-create it with another
//! capability set. For a container: its image and every setting from the
//! engine's inspect reply that changes how it behaves. For a command: its
//! command line and working directory.
//!
//! Environment values can hold secrets, so a profile keeps only the names
//! (`env_names`) unless `--keep-env` asked for the values (`env`).
//!
//! Profiles are untrusted input, and these settings go back to the engine:
//! [`RunSpec::validate`] bounds every string and list, refuses control
//! characters (environment values may span lines: certificates do), and
//! accepts only known capability names and mount types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capability::Cap;

/// Longest string accepted in a run spec.
const MAX_STRING: usize = 4096;
/// Most entries accepted in one list or map.
const MAX_ENTRIES: usize = 1024;
/// Longest `NAME=VALUE` accepted in `env`: values hold certificates and
/// keys (a PEM chain of a few KiB), not only words.
const MAX_ENV_ENTRY: usize = 64 << 10;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunSpec {
    /// A command's argv (`capprof run` profiles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The image, as the container was created from it (`Config.Image`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The working directory (a command's, or `Config.WorkingDir`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The names of the variables the container was given beyond its
    /// image's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// `NAME=VALUE` for each of them: only with `--keep-env`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(skip_serializing_if = "is_false")]
    pub tty: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub open_stdin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<String>,
    /// `-v SRC:DST[:OPTS]`, as given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<String>,
    /// `--mount`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// `--tmpfs PATH:OPTS`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceSpec>,
    /// The capability flags it was started with. `verify` and `minimize`
    /// replace them with the allowlist (and never run privileged).
    #[serde(skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// seccomp, AppArmor, SELinux and `no-new-privileges` options.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipc_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uts_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroupns_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<UlimitSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<i64>,
    /// The OCI runtime (`runc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountSpec {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceSpec {
    pub path_on_host: String,
    pub path_in_container: String,
    pub cgroup_permissions: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UlimitSpec {
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl RunSpec {
    /// A command's run spec: its argv and the working directory it ran in.
    pub fn for_command(argv: &[std::ffi::OsString]) -> Self {
        Self {
            command: Some(
                argv.iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
            ),
            workdir: std::env::current_dir()
                .ok()
                .map(|d| d.to_string_lossy().into_owned()),
            ..Default::default()
        }
    }

    /// The same spec without environment values, as profiles are written
    /// unless `--keep-env` is given.
    pub fn without_env_values(&self) -> Self {
        Self {
            env: None,
            ..self.clone()
        }
    }

    /// Checks a spec that came from a profile or an engine: bounded sizes,
    /// no control characters, known capability names and mount types.
    pub fn validate(&self) -> Result<(), String> {
        let strings = self.bounded_strings()?;
        check_strings(strings)?;
        self.check_names()?;
        if let Some(env) = &self.env {
            if env.len() > MAX_ENTRIES {
                return Err(format!("run.env has more than {MAX_ENTRIES} entries"));
            }
            if let Some(why) = env.iter().find_map(|e| env_entry_problem(e)) {
                return Err(format!("run.env: {why}"));
            }
        }
        if matches!(&self.image, Some(i) if i.trim().is_empty()) {
            return Err("run.image is empty".into());
        }
        if matches!(&self.command, Some(c) if c.is_empty()) {
            return Err("run.command is empty".into());
        }
        Ok(())
    }

    /// Every string of the spec, with the field it is in, once each list,
    /// map and mount is known to be within bounds.
    fn bounded_strings(&self) -> Result<Vec<(&str, &str)>, String> {
        let mut strings: Vec<(&str, &str)> = [
            ("image", &self.image),
            ("user", &self.user),
            ("workdir", &self.workdir),
            ("hostname", &self.hostname),
            ("stop_signal", &self.stop_signal),
            ("network_mode", &self.network_mode),
            ("pid_mode", &self.pid_mode),
            ("ipc_mode", &self.ipc_mode),
            ("uts_mode", &self.uts_mode),
            ("userns_mode", &self.userns_mode),
            ("cgroupns_mode", &self.cgroupns_mode),
            ("runtime", &self.runtime),
        ]
        .into_iter()
        .filter_map(|(what, s)| s.as_deref().map(|s| (what, s)))
        .collect();
        let lists: [(&str, Option<&Vec<String>>); 9] = [
            ("command", self.command.as_ref()),
            ("entrypoint", self.entrypoint.as_ref()),
            ("cmd", self.cmd.as_ref()),
            ("env_names", Some(&self.env_names)),
            ("binds", Some(&self.binds)),
            ("cap_add", Some(&self.cap_add)),
            ("cap_drop", Some(&self.cap_drop)),
            ("security_opt", Some(&self.security_opt)),
            ("group_add", Some(&self.group_add)),
        ];
        for (what, list) in lists {
            let Some(list) = list else { continue };
            if list.len() > MAX_ENTRIES {
                return Err(format!("run.{what} has more than {MAX_ENTRIES} entries"));
            }
            strings.extend(list.iter().map(|s| (what, s.as_str())));
        }
        for (what, map) in [("tmpfs", &self.tmpfs), ("sysctls", &self.sysctls)] {
            if map.len() > MAX_ENTRIES {
                return Err(format!("run.{what} has more than {MAX_ENTRIES} entries"));
            }
            for (k, v) in map {
                strings.push((what, k));
                strings.push((what, v));
            }
        }
        if self.mounts.len() > MAX_ENTRIES
            || self.devices.len() > MAX_ENTRIES
            || self.ulimits.len() > MAX_ENTRIES
        {
            return Err(format!(
                "run has more than {MAX_ENTRIES} mounts, devices or ulimits"
            ));
        }
        for m in &self.mounts {
            if !matches!(m.kind.as_str(), "bind" | "volume" | "tmpfs") {
                return Err(format!("run.mounts: unknown mount type {:?}", m.kind));
            }
            strings.push(("mounts", &m.target));
            if let Some(s) = &m.source {
                strings.push(("mounts", s));
            }
        }
        for d in &self.devices {
            strings.push(("devices", &d.path_on_host));
            strings.push(("devices", &d.path_in_container));
            strings.push(("devices", &d.cgroup_permissions));
        }
        for u in &self.ulimits {
            strings.push(("ulimits", &u.name));
        }
        Ok(strings)
    }

    /// Capability names in cap_add and cap_drop, and names in env_names.
    fn check_names(&self) -> Result<(), String> {
        for name in self.cap_add.iter().chain(&self.cap_drop) {
            if !name.eq_ignore_ascii_case("ALL") && name.parse::<Cap>().is_err() {
                return Err(format!("run: unknown capability {name:?}"));
            }
        }
        for name in &self.env_names {
            if name.is_empty() || name.contains('=') {
                return Err(format!("run.env_names: {name:?} is not a variable name"));
            }
        }
        Ok(())
    }
}

/// Each string within `MAX_STRING` and free of control characters but tab.
fn check_strings(strings: Vec<(&str, &str)>) -> Result<(), String> {
    for (what, s) in strings {
        if s.len() > MAX_STRING {
            return Err(format!(
                "run.{what}: a value is longer than {MAX_STRING} bytes"
            ));
        }
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return Err(format!("run.{what}: a value holds control characters"));
        }
    }
    Ok(())
}

/// What is wrong with one `NAME=VALUE` of a container's environment, if
/// anything. A value may span lines (a PEM certificate does): the engine
/// passes it as is, so only what it cannot pass (NUL) or what would be
/// another kind of text (other control characters) is refused.
pub fn env_entry_problem(entry: &str) -> Option<String> {
    let Some((name, value)) = entry.split_once('=') else {
        return Some("every entry must be NAME=VALUE".into());
    };
    if name.is_empty() || name.chars().any(char::is_control) {
        return Some(format!(
            "{:?} is not a variable name",
            crate::text::visible(name)
        ));
    }
    if entry.len() > MAX_ENV_ENTRY {
        return Some(format!("{name}: longer than {} KiB", MAX_ENV_ENTRY >> 10));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Some(format!("{name}: the value holds control characters"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_refuses_what_an_engine_must_not_be_sent() {
        let ok = RunSpec {
            image: Some("busybox:1".into()),
            cmd: Some(vec!["sh".into(), "-c".into(), "true".into()]),
            cap_add: vec!["NET_RAW".into(), "CAP_CHOWN".into()],
            cap_drop: vec!["ALL".into()],
            env_names: vec!["TOKEN".into()],
            mounts: vec![MountSpec {
                kind: "bind".into(),
                source: Some("/srv".into()),
                target: "/data".into(),
                read_only: true,
            }],
            ..Default::default()
        };
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut RunSpec)| {
            let mut spec = ok.clone();
            f(&mut spec);
            spec.validate().unwrap_err()
        };
        assert!(bad(&|s| s.cap_add.push("FLY".into())).contains("FLY"));
        assert!(bad(&|s| s.image = Some("a\nb".into())).contains("control"));
        assert!(bad(&|s| s.mounts[0].kind = "weird".into()).contains("weird"));
        assert!(bad(&|s| s.env_names.push("A=B".into())).contains("A=B"));
        assert!(bad(&|s| s.binds = vec!["x".repeat(5000)]).contains("longer"));
        assert!(bad(&|s| s.env = Some(vec!["NOVALUE".into()])).contains("NAME=VALUE"));
        assert!(bad(&|s| s.env = Some(vec!["K=a\0b".into()])).contains("K: the value"));
        assert!(bad(&|s| s.command = Some(vec![])).contains("empty"));
    }

    /// A multi-line value (a PEM certificate) is a value like any other.
    #[test]
    fn env_values_may_span_lines() {
        let pem = "TLS_CERT=-----BEGIN CERTIFICATE-----\r\nMIIB\tIjAN\n-----END CERTIFICATE-----\n";
        let spec = RunSpec {
            image: Some("busybox:1".into()),
            env_names: vec!["TLS_CERT".into()],
            env: Some(vec![pem.into()]),
            ..Default::default()
        };
        spec.validate().unwrap();
        assert_eq!(env_entry_problem(pem), None);
    }

    #[test]
    fn env_values_are_left_out_unless_kept() {
        let spec = RunSpec {
            env_names: vec!["TOKEN".into()],
            env: Some(vec!["TOKEN=hunter2".into()]),
            ..Default::default()
        };
        let json = serde_json::to_string(&spec.without_env_values()).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        assert!(json.contains("TOKEN"), "{json}");
    }
}
