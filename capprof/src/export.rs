//! Turning a profile's allowlist into the settings of the tools that run
//! workloads (docker and podman flags, a compose or Kubernetes snippet, an
//! OCI `process.capabilities` fragment, a systemd drop-in), and comparing it
//! with what a container runtime grants by default.
//!
//! Everything here is pure: it takes a profile and returns text.

use serde::Serialize;

use crate::{capability::Cap, profile::Profile};

/// What `render` produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `docker run` flags: `--cap-drop=ALL --cap-add=…`.
    Docker,
    /// A docker compose service snippet (`cap_drop`, `cap_add`).
    Compose,
    /// A Kubernetes container `securityContext` snippet.
    K8s,
    /// `podman run` flags (the same as docker's).
    Podman,
    /// An OCI runtime-spec `process.capabilities` fragment (config.json).
    Oci,
    /// A systemd unit drop-in (`CapabilityBoundingSet=`, `AmbientCapabilities=`).
    Systemd,
    /// The profile itself, as JSON.
    Json,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        value_name(self, f)
    }
}

/// A container runtime whose default capability set `--against` compares
/// with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Docker Engine (moby).
    Docker,
    /// containerd (`ctr`, nerdctl, and the CRI plugin used by Kubernetes).
    Containerd,
    /// CRI-O.
    #[value(alias = "cri-o")]
    Crio,
    /// Podman 4 and later (containers.conf defaults).
    Podman,
    /// The config.json that `runc spec` writes.
    Runc,
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        value_name(self, f)
    }
}

/// Writes the name clap accepts for `value` (`k8s`, `crio`, …).
fn value_name(value: &impl clap::ValueEnum, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    match value.to_possible_value() {
        Some(v) => f.write_str(v.get_name()),
        None => Ok(()),
    }
}

/// Docker Engine and containerd grant the same 14. Sources: moby
/// `oci/caps/defaults.go` (`DefaultCapabilities`) and containerd
/// `pkg/oci/spec.go` (`defaultUnixCaps`, used by `populateDefaultUnixSpec`).
const DOCKER_DEFAULTS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SYS_CHROOT",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
];

/// CRI-O's `default_capabilities`. Source: cri-o
/// `internal/config/capabilities/capabilities_linux.go` (`Default()`).
/// Older CRI-O releases also granted NET_RAW and SYS_CHROOT, and before that
/// MKNOD, AUDIT_WRITE and SETFCAP.
const CRIO_DEFAULTS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "KILL",
];

/// Podman's `default_capabilities`. Source: containers/common
/// `pkg/config/default.go` (`DefaultCapabilities`, the containers.conf
/// default). Podman before 4.0 also granted AUDIT_WRITE, MKNOD and NET_RAW.
const PODMAN_DEFAULTS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What `runc spec` writes. Source: runc `libcontainer/specconv/example.go`
/// (`Example()`).
const RUNC_DEFAULTS: &[&str] = &["AUDIT_WRITE", "KILL", "NET_BIND_SERVICE"];

impl Runtime {
    /// The capabilities a container of this runtime gets when nothing is
    /// added or dropped, sorted by number.
    pub fn default_caps(self) -> Vec<Cap> {
        let names = match self {
            Runtime::Docker | Runtime::Containerd => DOCKER_DEFAULTS,
            Runtime::Crio => CRIO_DEFAULTS,
            Runtime::Podman => PODMAN_DEFAULTS,
            Runtime::Runc => RUNC_DEFAULTS,
        };
        // Every name above is known to `Cap` (the tests count them).
        Cap::all()
            .filter(|cap| names.contains(&cap.short_name()))
            .collect()
    }
}

/// A profile's allowlist set against a runtime's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Comparison {
    pub runtime: Runtime,
    /// What the runtime grants by default.
    pub defaults: Vec<Cap>,
    /// Granted by default and needed.
    pub keep: Vec<Cap>,
    /// Granted by default but never needed: safe to drop.
    pub drop: Vec<Cap>,
    /// Needed but not granted by default: must be added.
    pub add: Vec<Cap>,
}

impl Comparison {
    /// One line: `docker grants 14 by default: drop 12, keep 2, add 0`.
    pub fn summary(&self) -> String {
        format!(
            "{} grants {} by default: drop {}, keep {}, add {}",
            self.runtime,
            self.defaults.len(),
            self.drop.len(),
            self.keep.len(),
            self.add.len()
        )
    }
}

/// Compares `profile`'s allowlist with `runtime`'s defaults. Every list is
/// sorted by capability number.
pub fn compare(profile: &Profile, runtime: Runtime) -> Comparison {
    let defaults = runtime.default_caps();
    let mut needed = profile.allowlist.clone();
    needed.sort();
    needed.dedup();
    let keep = defaults
        .iter()
        .copied()
        .filter(|c| needed.contains(c))
        .collect();
    let drop = defaults
        .iter()
        .copied()
        .filter(|c| !needed.contains(c))
        .collect();
    let add = needed
        .iter()
        .copied()
        .filter(|c| !defaults.contains(c))
        .collect();
    Comparison {
        runtime,
        defaults,
        keep,
        drop,
        add,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot render the {format} output: {source}")]
    Yaml {
        format: Format,
        source: serde_norway::Error,
    },
    #[error("cannot render the {format} output: {source}")]
    Json {
        format: Format,
        source: serde_json::Error,
    },
}

/// Renders `profile`'s allowlist in `format`. The output ends with a newline.
pub fn render(profile: &Profile, format: Format) -> Result<String, ExportError> {
    let caps = &profile.allowlist;
    match format {
        Format::Docker | Format::Podman => Ok(run_flags(caps)),
        Format::Compose => {
            let doc = ComposeService {
                cap_drop: vec!["ALL"],
                cap_add: caps.iter().map(|c| c.short_name()).collect(),
            };
            yaml(profile, format, &doc)
        }
        Format::K8s => {
            let doc = K8sContainer {
                security_context: K8sSecurityContext {
                    capabilities: K8sCapabilities {
                        drop: vec!["ALL"],
                        add: caps.iter().map(|c| c.short_name()).collect(),
                    },
                },
            };
            yaml(profile, format, &doc)
        }
        Format::Oci => {
            let names: Vec<String> = caps.iter().map(|c| c.name()).collect();
            let doc = OciSpec {
                process: OciProcess {
                    capabilities: OciCapabilities {
                        bounding: names.clone(),
                        effective: names.clone(),
                        // Docker never sets the inheritable set (since the
                        // CVE-2022-24769 fix), and ambient capabilities are
                        // an opt-in grant to non-root processes across
                        // execve: granting them by default would undo the
                        // point of a minimal set.
                        inheritable: vec![],
                        permitted: names,
                        ambient: vec![],
                    },
                },
            };
            let mut json = serde_json::to_string_pretty(&doc)
                .map_err(|source| ExportError::Json { format, source })?;
            json.push('\n');
            Ok(json)
        }
        Format::Systemd => Ok(systemd(profile)),
        Format::Json => Ok(profile.to_json()),
    }
}

/// `--cap-drop=ALL --cap-add=CHOWN …`, which docker and podman both accept.
fn run_flags(caps: &[Cap]) -> String {
    let mut out = String::from("--cap-drop=ALL");
    for cap in caps {
        out.push_str(" --cap-add=");
        out.push_str(cap.short_name());
    }
    out.push('\n');
    out
}

/// A systemd drop-in. An empty assignment sets the empty set (systemd.exec:
/// "If the empty string is assigned to this option, the bounding set is
/// reset to the empty capability set").
fn systemd(profile: &Profile) -> String {
    let names: Vec<String> = profile.allowlist.iter().map(|c| c.name()).collect();
    let names = names.join(" ");
    format!(
        "{}[Service]\nCapabilityBoundingSet={names}\nAmbientCapabilities={names}\n",
        header(profile)
    )
}

fn yaml(profile: &Profile, format: Format, doc: &impl Serialize) -> Result<String, ExportError> {
    let body =
        serde_norway::to_string(doc).map_err(|source| ExportError::Yaml { format, source })?;
    let mut out = header(profile);
    out.push_str(&body);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A `# capprof: …` comment line naming the subject. The subject comes from
/// the profile, which is untrusted: control characters (a newline would end
/// the comment and inject configuration) are replaced and the length is
/// bounded.
fn header(profile: &Profile) -> String {
    const MAX_CHARS: usize = 120;
    let subject = &profile.subject;
    let label = [
        subject.name.clone(),
        subject.command.as_ref().map(|argv| argv.join(" ")),
        subject.id.clone(),
    ]
    .into_iter()
    .flatten()
    .find(|s| !s.trim().is_empty())
    .unwrap_or_else(|| "unnamed subject".to_owned());
    let mut clean: String = label
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_CHARS)
        .collect();
    if label.chars().count() > MAX_CHARS {
        clean.push('…');
    }
    let n = profile.allowlist.len();
    let plural = if n == 1 { "capability" } else { "capabilities" };
    match &profile.proof {
        Some(proof) if proof.sufficient => {
            // The proof's fields are untrusted too.
            let how: String = format!(
                "{}, {} run(s) per set, {}",
                proof.method, proof.runs, proof.engine
            )
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_CHARS)
            .collect();
            format!("# capprof: {n} {plural} proven sufficient for {clean} ({how})\n")
        }
        _ => format!("# capprof: {n} {plural} observed in use by {clean}\n"),
    }
}

/// A compose service fragment: paste under `services.<name>`. `cap_add` is
/// always written, as `[]` when nothing is needed, so that the output has
/// one shape.
#[derive(Serialize)]
struct ComposeService<'a> {
    cap_drop: Vec<&'a str>,
    cap_add: Vec<&'a str>,
}

/// A container fragment: paste into a pod's `spec.containers[]`. `add` is
/// always written (`[]` when empty), like compose's `cap_add`.
#[derive(Serialize)]
struct K8sContainer<'a> {
    #[serde(rename = "securityContext")]
    security_context: K8sSecurityContext<'a>,
}

#[derive(Serialize)]
struct K8sSecurityContext<'a> {
    capabilities: K8sCapabilities<'a>,
}

#[derive(Serialize)]
struct K8sCapabilities<'a> {
    drop: Vec<&'a str>,
    add: Vec<&'a str>,
}

/// The part of an OCI runtime-spec config.json that holds capabilities.
#[derive(Serialize)]
struct OciSpec {
    process: OciProcess,
}

#[derive(Serialize)]
struct OciProcess {
    capabilities: OciCapabilities,
}

/// The shape runc and Docker generate for a root process (moby's
/// `oci.SetCapabilities`): bounding, effective and permitted hold the grant.
/// For a non-root user Docker sets only the bounding set, leaving it to file
/// capabilities to raise the rest, as execve would.
#[derive(Serialize)]
struct OciCapabilities {
    bounding: Vec<String>,
    effective: Vec<String>,
    inheritable: Vec<String>,
    permitted: Vec<String>,
    ambient: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Subject;

    fn cap(name: &str) -> Cap {
        name.parse().unwrap()
    }

    fn caps(names: &[&str]) -> Vec<Cap> {
        names.iter().map(|n| cap(n)).collect()
    }

    /// A profile whose allowlist is exactly `names`.
    fn profile(names: &[&str]) -> Profile {
        let subject = Subject {
            kind: "container".into(),
            name: Some("web".into()),
            ..Default::default()
        };
        let p = crate::profile::with_allowlist(names, subject);
        assert_eq!(p.allowlist, caps(names), "test profile");
        p
    }

    const EMPTY: &[&str] = &[];
    const TWO: &[&str] = &["CAP_CHOWN", "CAP_NET_RAW"];

    fn yaml_value(text: &str) -> serde_norway::Value {
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("invalid YAML ({e}):\n{text}"))
    }

    fn strings(value: &serde_norway::Value) -> Vec<String> {
        value
            .as_sequence()
            .unwrap_or_else(|| panic!("not a list: {value:?}"))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn docker_and_podman_flags() {
        for format in [Format::Docker, Format::Podman] {
            assert_eq!(render(&profile(EMPTY), format).unwrap(), "--cap-drop=ALL\n");
            assert_eq!(
                render(&profile(TWO), format).unwrap(),
                "--cap-drop=ALL --cap-add=CHOWN --cap-add=NET_RAW\n"
            );
        }
    }

    #[test]
    fn compose_snippet_parses_back() {
        for (names, add) in [(EMPTY, vec![]), (TWO, vec!["CHOWN", "NET_RAW"])] {
            let out = render(&profile(names), Format::Compose).unwrap();
            assert!(out.starts_with("# capprof: "), "{out}");
            assert!(out.ends_with('\n'));
            let doc = yaml_value(&out);
            let map = doc.as_mapping().unwrap();
            assert_eq!(map.len(), 2, "{out}");
            assert_eq!(strings(&doc["cap_drop"]), ["ALL"]);
            assert_eq!(strings(&doc["cap_add"]), add, "{out}");
        }
    }

    #[test]
    fn k8s_snippet_parses_back() {
        for (names, add) in [(EMPTY, vec![]), (TWO, vec!["CHOWN", "NET_RAW"])] {
            let out = render(&profile(names), Format::K8s).unwrap();
            assert!(out.starts_with("# capprof: "), "{out}");
            assert!(out.ends_with('\n'));
            let doc = yaml_value(&out);
            assert_eq!(doc.as_mapping().unwrap().len(), 1, "{out}");
            let caps = &doc["securityContext"]["capabilities"];
            assert_eq!(caps.as_mapping().unwrap().len(), 2, "{out}");
            assert_eq!(strings(&caps["drop"]), ["ALL"]);
            assert_eq!(strings(&caps["add"]), add, "{out}");
            assert!(!out.contains("CAP_"), "{out}");
        }
    }

    #[test]
    fn oci_fragment_has_all_five_sets() {
        for (names, granted) in [(EMPTY, vec![]), (TWO, vec!["CAP_CHOWN", "CAP_NET_RAW"])] {
            let out = render(&profile(names), Format::Oci).unwrap();
            assert!(out.ends_with('\n'));
            let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
            let sets = doc["process"]["capabilities"].as_object().unwrap();
            assert_eq!(sets.len(), 5, "{out}");
            let set = |name: &str| -> Vec<String> {
                sets[name]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name} missing:\n{out}"))
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect()
            };
            for name in ["bounding", "effective", "permitted"] {
                assert_eq!(set(name), granted, "{name}");
            }
            for name in ["inheritable", "ambient"] {
                assert!(set(name).is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn systemd_drop_in() {
        let out = render(&profile(TWO), Format::Systemd).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("# capprof: 2 capabilities observed in use by web"));
        assert_eq!(
            &lines[1..],
            [
                "[Service]",
                "CapabilityBoundingSet=CAP_CHOWN CAP_NET_RAW",
                "AmbientCapabilities=CAP_CHOWN CAP_NET_RAW",
            ]
        );
        assert!(out.ends_with('\n'));

        let out = render(&profile(EMPTY), Format::Systemd).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            &lines[1..],
            [
                "[Service]",
                "CapabilityBoundingSet=",
                "AmbientCapabilities="
            ]
        );
    }

    #[test]
    fn json_is_the_profile() {
        for names in [EMPTY, TWO] {
            let p = profile(names);
            let out = render(&p, Format::Json).unwrap();
            assert_eq!(out, p.to_json());
            assert_eq!(Profile::from_json("out.json", out.as_bytes()).unwrap(), p);
        }
    }

    #[test]
    fn header_cannot_inject_configuration() {
        let mut p = profile(TWO);
        p.subject.name = Some("evil\ncap_add: [SYS_ADMIN]\r\n".into());
        let out = render(&p, Format::Compose).unwrap();
        assert_eq!(
            strings(&yaml_value(&out)["cap_add"]),
            ["CHOWN", "NET_RAW"],
            "{out}"
        );
        assert_eq!(
            out.lines().filter(|l| l.starts_with('#')).count(),
            1,
            "{out}"
        );

        p.subject.name = None;
        p.subject.command = Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()]);
        let out = render(&p, Format::Systemd).unwrap();
        assert!(
            out.starts_with("# capprof: 2 capabilities observed in use by nginx -g daemon off;\n")
        );

        p.subject.command = Some(vec!["x".repeat(500)]);
        let out = render(&p, Format::K8s).unwrap();
        assert!(out.lines().next().unwrap().chars().count() < 200, "{out}");
        yaml_value(&out);
    }

    #[test]
    fn runtime_default_counts() {
        assert_eq!(Runtime::Docker.default_caps().len(), 14);
        assert_eq!(Runtime::Containerd.default_caps().len(), 14);
        assert_eq!(Runtime::Crio.default_caps().len(), 9);
        assert_eq!(Runtime::Podman.default_caps().len(), 11);
        assert_eq!(Runtime::Runc.default_caps().len(), 3);
        assert_eq!(
            Runtime::Docker.default_caps(),
            Runtime::Containerd.default_caps()
        );
        assert_eq!(
            Runtime::Runc.default_caps(),
            caps(&["KILL", "NET_BIND_SERVICE", "AUDIT_WRITE"]), // by number
        );
        // No name in the tables is misspelled or repeated.
        for names in [
            DOCKER_DEFAULTS,
            CRIO_DEFAULTS,
            PODMAN_DEFAULTS,
            RUNC_DEFAULTS,
        ] {
            let mut parsed = caps(names);
            parsed.sort();
            parsed.dedup();
            assert_eq!(parsed.len(), names.len());
        }
        // Each smaller default is a subset of Docker's.
        let docker = Runtime::Docker.default_caps();
        for runtime in [Runtime::Crio, Runtime::Podman, Runtime::Runc] {
            for cap in runtime.default_caps() {
                assert!(docker.contains(&cap), "{runtime}: {cap}");
            }
        }
    }

    #[test]
    fn compare_splits_keep_drop_add() {
        let p = profile(&["CAP_CHOWN", "CAP_NET_RAW", "CAP_SYS_ADMIN"]);
        let c = compare(&p, Runtime::Docker);
        assert_eq!(c.keep, caps(&["CHOWN", "NET_RAW"]));
        assert_eq!(c.add, caps(&["SYS_ADMIN"]));
        assert_eq!(c.drop.len(), 12);
        assert!(!c.drop.contains(&cap("CHOWN")));
        assert!(c.drop.contains(&cap("MKNOD")));
        assert_eq!(
            c.summary(),
            "docker grants 14 by default: drop 12, keep 2, add 1"
        );

        let c = compare(&p, Runtime::Crio);
        assert_eq!(c.keep, caps(&["CHOWN"]));
        assert_eq!(c.add, caps(&["NET_RAW", "SYS_ADMIN"]));
        assert_eq!(c.drop.len(), 8);
        assert_eq!(
            c.summary(),
            "crio grants 9 by default: drop 8, keep 1, add 2"
        );

        let c = compare(&profile(EMPTY), Runtime::Runc);
        assert!(c.keep.is_empty() && c.add.is_empty());
        assert_eq!(c.drop, c.defaults);

        let json = serde_json::to_value(compare(&p, Runtime::Podman)).unwrap();
        assert_eq!(json["runtime"], "podman");
        assert_eq!(
            json["add"],
            serde_json::json!(["CAP_NET_RAW", "CAP_SYS_ADMIN"])
        );
        assert_eq!(json["keep"], serde_json::json!(["CAP_CHOWN"]));
        assert_eq!(json["defaults"].as_array().unwrap().len(), 11);
    }

    #[test]
    fn value_names() {
        use clap::ValueEnum as _;
        assert_eq!(Format::K8s.to_string(), "k8s");
        assert_eq!(Runtime::Crio.to_string(), "crio");
        assert_eq!(Runtime::from_str("cri-o", true).unwrap(), Runtime::Crio);
        assert_eq!(Format::from_str("oci", true).unwrap(), Format::Oci);
        assert!(Format::from_str("helm", true).is_err());
    }
}
