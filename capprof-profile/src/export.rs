//! Turning a profile's allowlist into the settings of the tools that run
//! workloads (docker and podman flags, a compose or Kubernetes snippet, an
//! OCI `process.capabilities` fragment, a systemd drop-in), and comparing it
//! with what a container runtime grants by default.
//!
//! Everything here is pure: it takes a profile and returns text.

use serde::Serialize;

pub use crate::grant::{decide, grant, notes};
use crate::{
    capability::Cap,
    caveat::Caveat,
    conditional::{self, Decision, SysctlSetting, TargetSysctls},
    grant::{K8sPodSecurityContext, K8sSysctl, header},
    profile::Profile,
};

/// What `render` produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `docker run` flags: `--cap-drop=ALL --cap-add=…`.
    Docker,
    /// A docker compose service snippet (`cap_drop`, `cap_add`).
    Compose,
    /// A Kubernetes container `securityContext` snippet.
    K8s,
    /// A strategic-merge patch for the pod's owner (Deployment,
    /// StatefulSet, DaemonSet, …), setting each profiled container's
    /// capabilities (k8s_patch.rs).
    K8sPatch,
    /// `podman run` flags (the same as docker's).
    Podman,
    /// An OCI runtime-spec `process.capabilities` fragment (config.json).
    Oci,
    /// A systemd unit drop-in (`CapabilityBoundingSet=`, `AmbientCapabilities=`).
    Systemd,
    /// The profile itself, as JSON.
    Json,
}

impl Format {
    /// What the target of this format has in a container's network
    /// namespace, which decides the profile's conditional capabilities.
    pub fn sysctls(self) -> TargetSysctls {
        match self {
            // compose runs on Docker Engine.
            Format::Docker | Format::Compose => TargetSysctls::DOCKER,
            Format::Podman => TargetSysctls::PODMAN,
            Format::K8s | Format::K8sPatch => TargetSysctls {
                source: "a Kubernetes node with CRI-O or containerd 1.x (the kernel's default)",
                ..TargetSysctls::KERNEL
            },
            Format::Oci => TargetSysctls {
                source: "an OCI config that sets no sysctl (the kernel's default)",
                ..TargetSysctls::KERNEL
            },
            Format::Systemd => TargetSysctls {
                source: "a systemd service on a host with the kernel's default",
                // The drop-in sets AmbientCapabilities=.
                grants_ambient: true,
                ..TargetSysctls::KERNEL
            },
            Format::Json => TargetSysctls::KERNEL,
        }
    }
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
    /// What this runtime has in a container's network namespace.
    pub fn sysctls(self) -> TargetSysctls {
        match self {
            Runtime::Docker => TargetSysctls::DOCKER,
            Runtime::Podman => TargetSysctls::PODMAN,
            Runtime::Containerd => TargetSysctls {
                source: "containerd 1.x's CRI (the kernel's default)",
                ..TargetSysctls::KERNEL
            },
            Runtime::Crio => TargetSysctls {
                source: "crio (the kernel's default)",
                ..TargetSysctls::KERNEL
            },
            Runtime::Runc => TargetSysctls {
                source: "runc with `runc spec`'s config (the kernel's default)",
                ..TargetSysctls::KERNEL
            },
        }
    }

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
    /// Not on the allowlist, but needed under this runtime's sysctls by an
    /// operation that made no check where it was recorded (the profile's
    /// `conditional`), and granted by default: keep.
    pub keep_conditional: Vec<Cap>,
    /// The same, not granted by default: must be added.
    pub add_conditional: Vec<Cap>,
    /// Asked for and refused where it was recorded (the profile's
    /// `denied`): not used, but not unneeded either. The workload ran
    /// without it; these stay off the allowlist, and those in `defaults`
    /// are in `drop` too.
    pub refused: Vec<Cap>,
    /// The sysctls the comparison assumed for the runtime.
    pub sysctls: TargetSysctls,
    /// Sysctls the pod or container must set instead of a capability: a
    /// caller that needs one did not hold the capability where it was
    /// recorded, and no grant reaches it there
    /// (`Conditional::without_capability`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set_sysctls: Vec<conditional::SysctlSetting>,
}

impl Comparison {
    /// One line: `docker grants 14 by default: drop 12, keep 2, add 0`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} grants {} by default: drop {}, keep {}, add {}",
            self.runtime,
            self.defaults.len(),
            self.drop.len(),
            self.keep.len(),
            self.add.len()
        );
        if !self.keep_conditional.is_empty() || !self.add_conditional.is_empty() {
            line.push_str(&format!(
                "; conditional: keep {}, add {}",
                self.keep_conditional.len(),
                self.add_conditional.len()
            ));
        }
        if !self.refused.is_empty() {
            line.push_str(&format!(
                "; {} refused where it was recorded",
                self.refused.len()
            ));
        }
        if !self.set_sysctls.is_empty() {
            line.push_str(&format!("; set {} sysctl(s)", self.set_sysctls.len()));
        }
        line
    }
}

/// Compares `profile`'s allowlist with `runtime`'s defaults, under the
/// sysctls the runtime is known to set. Every list is sorted by capability
/// number.
pub fn compare(profile: &Profile, runtime: Runtime) -> Comparison {
    compare_under(profile, runtime, runtime.sysctls())
}

/// `compare`, with the runtime's sysctls as the user says.
pub fn compare_under(profile: &Profile, runtime: Runtime, sysctls: TargetSysctls) -> Comparison {
    let defaults = runtime.default_caps();
    let mut needed = profile.allowlist.clone();
    needed.sort();
    needed.dedup();
    let decision = conditional::decide(&profile.conditional, &needed, &sysctls);
    let conditional = decision.added_caps();
    let pick = |from: &[Cap], keep: &dyn Fn(&Cap) -> bool| -> Vec<Cap> {
        from.iter().copied().filter(|c| keep(c)).collect()
    };
    Comparison {
        runtime,
        keep: pick(&defaults, &|c| needed.contains(c)),
        drop: pick(&defaults, &|c| {
            !needed.contains(c) && !conditional.contains(c)
        }),
        add: pick(&needed, &|c| !defaults.contains(c)),
        keep_conditional: pick(&conditional, &|c| defaults.contains(c)),
        add_conditional: pick(&conditional, &|c| !defaults.contains(c)),
        refused: {
            let mut refused = pick(&profile.denied, &|c| !needed.contains(c));
            refused.sort();
            refused.dedup();
            refused
        },
        sysctls,
        defaults,
        set_sysctls: decision.relax,
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
    #[error(transparent)]
    K8sPatch(#[from] crate::k8s_patch::K8sPatchError),
}

/// Renders `profile`'s allowlist in `format`, with the conditional
/// capabilities its target needs (`Format::sysctls`). The output ends with
/// a newline.
pub fn render(profile: &Profile, format: Format) -> Result<String, ExportError> {
    render_under(profile, format, format.sysctls())
}

/// `render`, for a target whose sysctls are `target`. Formats that take
/// comments say why each conditional capability was added or left out, and
/// which capabilities only a capset() kept.
pub fn render_under(
    profile: &Profile,
    format: Format,
    target: TargetSysctls,
) -> Result<String, ExportError> {
    if format == Format::Json {
        return Ok(profile.to_json());
    }
    let decision = decide(profile, &target);
    let grant = grant(profile, &decision);
    let caps = &grant;
    let mut notes = notes(profile, &decision);
    // Flags have no comments: whoever prints them says it (`capprof
    // export` and `profile` on stderr, the daemon's routes in a header).
    let partial = Caveat::partial(profile).map(|c| c.to_string());
    if let Some(warning) = &partial {
        notes.insert(0, format!("WARNING: {warning}"));
    }
    let header = header(profile, &notes);
    match format {
        Format::Docker | Format::Podman => Ok(run_flags(caps, &decision.relax)),
        Format::Compose => yaml(header, format, &compose(caps, &decision)),
        Format::K8s => yaml(header, format, &k8s(caps, &decision)),
        Format::Oci => oci(caps, &decision, partial, format),
        Format::Systemd => Ok(systemd(&header, caps)),
        Format::Json => Ok(profile.to_json()),
        Format::K8sPatch => {
            let one = crate::k8s_patch::Input::new("the profile", profile.clone(), target)?;
            Ok(crate::k8s_patch::render(&crate::k8s_patch::Patch::of(
                vec![one],
            )?)?)
        }
    }
}

/// A compose service's capabilities and sysctls.
fn compose<'a>(caps: &[Cap], decision: &'a Decision) -> ComposeService<'a> {
    ComposeService {
        cap_drop: vec!["ALL"],
        cap_add: caps.iter().map(|c| c.short_name()).collect(),
        sysctls: decision
            .relax
            .iter()
            .map(|s| (s.sysctl().name(), s.value.to_string()))
            .collect(),
    }
}

/// A Kubernetes container's securityContext, with the pod's sysctls.
fn k8s<'a>(caps: &[Cap], decision: &'a Decision) -> K8sContainer<'a> {
    K8sContainer {
        security_context: K8sSecurityContext {
            capabilities: K8sCapabilities {
                drop: vec!["ALL"],
                add: caps.iter().map(|c| c.short_name()).collect(),
            },
        },
        pod_security_context: (!decision.relax.is_empty()).then(|| K8sPodSecurityContext {
            sysctls: decision.relax.iter().map(K8sSysctl::of).collect(),
        }),
    }
}

/// An OCI runtime spec's capability sets, with why each conditional
/// capability and sysctl is there in annotations (JSON has no comments).
fn oci(
    caps: &[Cap],
    decision: &Decision,
    partial: Option<String>,
    format: Format,
) -> Result<String, ExportError> {
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
        // JSON has no comments: the why goes into annotations.
        annotations: decision
            .added
            .iter()
            .map(|(cap, why)| {
                (
                    format!("org.capprof.conditional.{}", cap.short_name()),
                    format!("added: {why}"),
                )
            })
            .chain(decision.relax.iter().map(|s| {
                (
                    format!("org.capprof.sysctl.{}", s.sysctl().name()),
                    s.why.clone(),
                )
            }))
            .chain(partial.map(|w| ("org.capprof.warning".to_owned(), w)))
            .collect(),
        linux: (!decision.relax.is_empty()).then(|| OciLinux {
            sysctl: decision
                .relax
                .iter()
                .map(|s| (s.sysctl().name().to_owned(), s.value.to_string()))
                .collect(),
        }),
    };
    let mut json = serde_json::to_string_pretty(&doc)
        .map_err(|source| ExportError::Json { format, source })?;
    json.push('\n');
    Ok(json)
}

/// `--cap-drop=ALL --cap-add=CHOWN … [--sysctl NAME=VALUE …]`, which
/// docker and podman both accept. A value with a space is quoted for the
/// shell.
fn run_flags(caps: &[Cap], relax: &[SysctlSetting]) -> String {
    let mut out = String::from("--cap-drop=ALL");
    for cap in caps {
        out.push_str(" --cap-add=");
        out.push_str(cap.short_name());
    }
    for s in relax {
        let setting = format!("{}={}", s.sysctl().name(), s.value);
        if setting.contains(' ') {
            out.push_str(&format!(" --sysctl '{setting}'"));
        } else {
            out.push_str(&format!(" --sysctl {setting}"));
        }
    }
    out.push('\n');
    out
}

/// A systemd drop-in. In a drop-in, systemd merges each assignment with the
/// unit's own (systemd.exec: "If this option appears more than once, the
/// bounding sets are merged"), so a unit that had CAP_SYS_ADMIN would keep
/// it. Each setting therefore starts with an empty assignment, which
/// "resets the bounding set to the empty capability set", and only then
/// names the capabilities.
fn systemd(header: &str, caps: &[Cap]) -> String {
    let names: Vec<String> = caps.iter().map(|c| c.name()).collect();
    let names = names.join(" ");
    let mut out = header.to_owned();
    out.push_str("[Service]\n");
    for setting in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        out.push_str(&format!("{setting}=\n"));
        if !names.is_empty() {
            out.push_str(&format!("{setting}={names}\n"));
        }
    }
    out
}

fn yaml(header: String, format: Format, doc: &impl Serialize) -> Result<String, ExportError> {
    let body =
        serde_norway::to_string(doc).map_err(|source| ExportError::Yaml { format, source })?;
    let mut out = header;
    out.push_str(&body);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// A compose service fragment: paste under `services.<name>`. `cap_add` is
/// always written, as `[]` when nothing is needed, so that the output has
/// one shape.
#[derive(Serialize)]
struct ComposeService<'a> {
    cap_drop: Vec<&'a str>,
    cap_add: Vec<&'a str>,
    /// Only when a caller needs one relaxed (`Decision::relax`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    sysctls: std::collections::BTreeMap<&'a str, String>,
}

/// A container fragment: paste into a pod's `spec.containers[]`. `add` is
/// always written (`[]` when empty), like compose's `cap_add`.
#[derive(Serialize)]
struct K8sContainer<'a> {
    #[serde(rename = "securityContext")]
    security_context: K8sSecurityContext<'a>,
    /// The pod's `spec.securityContext`, only when a caller needs a sysctl
    /// relaxed (`Decision::relax`): sysctls are set per pod, not per
    /// container. The key is the one Helm charts use for it.
    #[serde(rename = "podSecurityContext", skip_serializing_if = "Option::is_none")]
    pod_security_context: Option<K8sPodSecurityContext>,
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
    /// `annotations` of config.json, written only to say why a conditional
    /// capability was added.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
    /// `linux.sysctl`, only when a caller needs one relaxed.
    #[serde(skip_serializing_if = "Option::is_none")]
    linux: Option<OciLinux>,
}

#[derive(Serialize)]
struct OciLinux {
    sysctl: std::collections::BTreeMap<String, String>,
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
mod tests;
