//! The `CapabilityProfile` custom resource (deploy/crd.yaml) as Rust types:
//! what the node daemons write and the readers read. Plain serde, so the
//! model is tested without a cluster; `client.rs` moves it over the wire.
//!
//! Everything read back from the API server is untrusted: a user with
//! `edit` on the namespace can write any shape the schema admits, and the
//! schema admits less than the Rust types need only by accident.
//! [`CapabilityProfile::check`] is the one gate every reader passes.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{
    capability::Cap,
    conditional::{CapSet, Sysctl},
    cri::{names, workload::WorkloadKey},
    profile::Class,
};

pub const GROUP: &str = "capprof.dev";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "CapabilityProfile";
pub const PLURAL: &str = "capabilityprofiles";
pub const API_VERSION: &str = "capprof.dev/v1alpha1";

/// Most node parts one object holds (the CRD's `maxItems`). Beyond it the
/// object would near etcd's 1.5 MiB limit; BENCHMARKS.md says what takes
/// over then.
pub const MAX_NODES: usize = 5000;

/// A capability as the CRD spells it: `CHOWN`, without `CAP_`, as
/// Kubernetes' own `securityContext.capabilities` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShortCap(pub Cap);

impl Serialize for ShortCap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.short_name())
    }
}

impl<'de> Deserialize<'de> for ShortCap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        if s.starts_with("CAP_") || s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(serde::de::Error::custom(format!(
                "capability {s:?} must be spelled as Kubernetes does (CHOWN)"
            )));
        }
        s.parse().map(ShortCap).map_err(serde::de::Error::custom)
    }
}

pub fn short(caps: &[Cap]) -> Vec<ShortCap> {
    caps.iter().copied().map(ShortCap).collect()
}

/// One object: the fleet-wide profile of one workload container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapabilityProfile {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: Spec,
    #[serde(default)]
    pub status: ProfileStatus,
}

/// The metadata fields capprof reads; the rest stays on the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub workload: WorkloadRef,
    pub container: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
}

/// The merged view (written by whichever node wrote last, from every
/// node's part) and the parts themselves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Classes::is_empty")]
    pub classes: Classes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<StatusCoverage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodePart>,
}

/// Every capability seen, by class, as in a profile.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub silent: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub borrowed: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub advisory: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditional: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ungrantable: Vec<ShortCap>,
}

impl Classes {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// In how many pods and on how many nodes a capability was needed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCoverage {
    pub capability: ShortCap,
    pub pods: u64,
    pub nodes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarningKind {
    Partial,
    Uncalibrated,
    Ungrantable,
    Conditional,
    Borrowed,
    Transient,
    Stale,
}

/// What makes the profile less than certain.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub message: String,
}

/// One node's share: what its daemon saw of the workload container, in the
/// pods that ran there. Written only by that node (server-side apply, field
/// manager `capprof-node-NODE`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePart {
    pub node: String,
    /// When the node first and last saw a pod of the workload running.
    pub first_observed: String,
    pub last_observed: String,
    pub pods: u64,
    /// False when a container was already running when recording began.
    pub complete: bool,
    pub backend: String,
    pub classification: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unobservable: Vec<Class>,
    #[serde(default)]
    pub lost_records: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<ShortCap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<PartCapability>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditional: Vec<PartConditional>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<PartKept>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transient: Vec<PartTransient>,
    /// Where the full evidence (programs, call sites) is kept.
    #[serde(default)]
    pub evidence: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<Warning>,
}

/// One capability's checks on one node, by class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartCapability {
    pub capability: ShortCap,
    pub granted: u64,
    pub denied: u64,
    #[serde(default)]
    pub silent_granted: u64,
    #[serde(default)]
    pub ungrantable: u64,
    pub by_class: BTreeMap<Class, u64>,
    /// In how many of the node's pods it was seen.
    pub pods: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartConditional {
    pub capability: ShortCap,
    pub operation: String,
    pub sysctl: Sysctl,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `Conditional::without_capability`.
    #[serde(
        rename = "withoutCapability",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub without_capability: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartKept {
    pub capability: ShortCap,
    pub sets: Vec<CapSet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartTransient {
    pub capability: ShortCap,
    #[serde(default)]
    pub lost_at_exec_of: Vec<String>,
}

/// Why an object read from the API server cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CapabilityProfile {name}: {reason}")]
pub struct InvalidObject {
    pub name: String,
    pub reason: String,
}

/// The object's name for a workload container: `deployment.web.nginx`.
/// Names longer than Kubernetes allows keep their start and gain a hash of
/// the whole, so that two long names never share an object.
pub fn object_name(key: &WorkloadKey, container: &str) -> String {
    let full = format!(
        "{}.{}.{}",
        key.kind.to_ascii_lowercase(),
        key.name,
        container
    );
    if full.len() <= 253 {
        return full;
    }
    let hash = fnv1a(full.as_bytes());
    let keep = full[..230].trim_end_matches(['.', '-']);
    format!("{keep}.{hash:016x}")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl CapabilityProfile {
    /// The workload key the object says it is of.
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.metadata.namespace.clone(),
            kind: self.spec.workload.kind.clone(),
            name: self.spec.workload.name.clone(),
            container: Some(self.spec.container.clone()),
        }
    }

    /// Untrusted input from the API server: names that are names, counts
    /// that are possible, and each node once.
    pub fn check(&self) -> Result<(), InvalidObject> {
        let fail = |reason: String| InvalidObject {
            name: crate::text::visible(&self.metadata.name),
            reason,
        };
        let spec = &self.spec;
        if crate::cri::owner::canonical_kind(&spec.workload.kind)
            != Some(spec.workload.kind.as_str())
        {
            return Err(fail(format!(
                "spec.workload.kind {:?} is not a workload kind",
                crate::text::visible(&spec.workload.kind)
            )));
        }
        if !names::is_dns_subdomain(&spec.workload.name) || !names::is_dns_label(&spec.container) {
            return Err(fail("spec names no valid workload and container".into()));
        }
        if self.status.nodes.len() > MAX_NODES {
            return Err(fail(format!("more than {MAX_NODES} node parts")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for part in &self.status.nodes {
            if !seen.insert(part.node.as_str()) {
                return Err(fail(format!(
                    "node {:?} has two parts",
                    crate::text::visible(&part.node)
                )));
            }
            part.check().map_err(|reason| {
                fail(format!(
                    "node {:?}: {reason}",
                    crate::text::visible(&part.node)
                ))
            })?;
        }
        Ok(())
    }
}

impl NodePart {
    fn check(&self) -> Result<(), String> {
        if !names::is_dns_subdomain(&self.node) {
            return Err("the node name is not a Kubernetes name".into());
        }
        for time in [&self.first_observed, &self.last_observed] {
            if humantime::parse_rfc3339_weak(time).is_err() {
                return Err(format!("{:?} is not a time", crate::text::visible(time)));
            }
        }
        if self.pods == 0 {
            return Err("pods is 0".into());
        }
        let mut caps = std::collections::BTreeSet::new();
        for c in &self.capabilities {
            if !caps.insert(c.capability) {
                return Err(format!("{} is listed twice", c.capability.0));
            }
            if c.pods == 0 || c.pods > self.pods {
                return Err(format!(
                    "{} was seen in {} of {} pods",
                    c.capability.0, c.pods, self.pods
                ));
            }
            if c.by_class.is_empty() {
                return Err(format!("{} has no checks", c.capability.0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: name.into(),
            container: None,
        }
    }

    #[test]
    fn object_names_are_kubernetes_names() {
        assert_eq!(object_name(&key("web"), "nginx"), "deployment.web.nginx");
        let label = "a".repeat(60);
        let long = [label.as_str(); 4].join(".");
        let long_a = object_name(&key(&long), "x");
        let long_b = object_name(&key(&long[1..]), "x");
        assert!(
            long_a.len() <= 253 && names::is_dns_subdomain(&long_a),
            "{long_a}"
        );
        assert_ne!(long_a, long_b);
    }

    #[test]
    fn capabilities_are_spelled_as_kubernetes_does() {
        let caps: Vec<ShortCap> = serde_json::from_str(r#"["CHOWN","NET_RAW"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&caps).unwrap(),
            r#"["CHOWN","NET_RAW"]"#
        );
        assert!(serde_json::from_str::<ShortCap>(r#""CAP_CHOWN""#).is_err());
        assert!(serde_json::from_str::<ShortCap>(r#""chown""#).is_err());
        assert!(serde_json::from_str::<ShortCap>(r#""FLY""#).is_err());
    }
}
