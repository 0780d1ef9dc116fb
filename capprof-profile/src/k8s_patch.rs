//! `capprof export --format k8s-patch`: a strategic-merge patch for the
//! object that owns a pod (Deployment, StatefulSet, DaemonSet, a bare
//! ReplicaSet, or a CronJob), setting the `securityContext.capabilities` of
//! each profiled container to `drop: [ALL]` and `add:` what it used.
//!
//! Strategic merge, as `kubectl patch --type strategic` and the API server
//! apply it (checked with the real kubectl in tests/it/k8s_patch.rs):
//! - `containers` merges by `name`, so only the named containers change and
//!   the others are left alone;
//! - `securityContext` is a struct, merged field by field, so its other
//!   fields (`runAsUser`, `readOnlyRootFilesystem`, …) stay;
//! - `capabilities.add` and `.drop` carry no patch strategy in the API
//!   (`Capabilities` in k8s.io/api core/v1), so each list is **replaced**
//!   whole, not merged into: a capability the object added before and the
//!   profile does not hold is gone after the patch, as it should be.
//!
//! A container named in the patch but missing from the object would be
//! appended as a new, image-less container by the same merge; the header
//! says so, and `kubectl patch --local … -o yaml` shows it before applying.
//!
//! Pods themselves and Jobs are refused: a pod's containers'
//! securityContext cannot change once it exists, and a Job's pod template
//! is immutable (`spec.template: field is immutable`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    caveat::Caveat,
    conditional::{SysctlSetting, TargetSysctls},
    grant::{self, K8sPodSecurityContext, K8sSysctl},
    profile::{Owner, Profile, SubjectKind},
};

#[derive(Debug, thiserror::Error)]
pub enum K8sPatchError {
    #[error(
        "{file}: subject kind `{kind}` is not a Kubernetes container; k8s-patch needs a \
         `pod-container` or `workload` profile, named through the node's CRI (--format k8s \
         prints a container snippet)"
    )]
    NotKubernetes { file: String, kind: SubjectKind },
    #[error(
        "{file}: the profile has no subject.k8s (namespace, pod, owner): it was not named \
         through a node's CRI"
    )]
    NoK8s { file: String },
    #[error(
        "{file}: the owner of pod {pod} is not known (no subject.k8s.owner): patch its \
         controller by hand with --format k8s"
    )]
    NoOwner { file: String, pod: String },
    #[error("{file}: the profile names no container (subject.name)")]
    NoContainer { file: String },
    #[error("{file}: {what} {value:?} is not a Kubernetes name")]
    BadName {
        file: String,
        what: &'static str,
        value: String,
    },
    #[error("{file}: {kind} {namespace}/{name} cannot be patched: {why}")]
    Unpatchable {
        file: String,
        kind: String,
        namespace: String,
        name: String,
        why: &'static str,
    },
    #[error(
        "{first} is for {first_target} but {second} is for {second_target}: one patch changes \
         one object; pass --out-dir DIR to write one patch per owner"
    )]
    DifferentOwners {
        first: String,
        first_target: Box<Target>,
        second: String,
        second_target: Box<Target>,
    },
    #[error(
        "{first} and {second} both profile container {container} of {target}: merge them \
         first (capprof merge) and export the merged profile"
    )]
    DuplicateContainer {
        first: String,
        second: String,
        container: String,
        target: Box<Target>,
    },
    #[error("no profile to patch with")]
    Empty,
    #[error("cannot render the k8s-patch output: {source}")]
    Yaml {
        #[source]
        source: serde_norway::Error,
    },
}

/// The kinds of owner a patch can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnerKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// A ReplicaSet with no Deployment above it. Its template can change,
    /// but it does not roll its pods: they get the new settings only when
    /// re-created.
    ReplicaSet,
    /// The template of the Jobs it will create, at
    /// `spec.jobTemplate.spec.template`; running Jobs keep theirs.
    CronJob,
}

impl OwnerKind {
    /// The kind as `subject.k8s.owner.kind` spells it (case-insensitive),
    /// or why no patch can change such an owner.
    fn parse(kind: &str) -> Result<Self, &'static str> {
        Ok(match kind.to_ascii_lowercase().as_str() {
            "deployment" => OwnerKind::Deployment,
            "statefulset" => OwnerKind::StatefulSet,
            "daemonset" => OwnerKind::DaemonSet,
            "replicaset" => OwnerKind::ReplicaSet,
            "cronjob" => OwnerKind::CronJob,
            "job" => {
                return Err(
                    "a Job's pod template is immutable; re-create the Job with the \
                            settings of --format k8s, or patch the CronJob that creates it",
                );
            }
            "pod" => {
                return Err(
                    "a bare pod has no controller, and a running pod's containers' \
                            securityContext cannot change; re-create it with the settings of \
                            --format k8s",
                );
            }
            _ => {
                return Err(
                    "only a Deployment, StatefulSet, DaemonSet, ReplicaSet or CronJob \
                            has a pod template to patch",
                );
            }
        })
    }

    /// The kind's name in the API (`Deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Deployment => "Deployment",
            OwnerKind::StatefulSet => "StatefulSet",
            OwnerKind::DaemonSet => "DaemonSet",
            OwnerKind::ReplicaSet => "ReplicaSet",
            OwnerKind::CronJob => "CronJob",
        }
    }

    /// The API version the patch names: the one every served Kubernetes
    /// release has (`batch/v1` CronJobs from 1.21).
    pub fn api_version(self) -> &'static str {
        match self {
            OwnerKind::CronJob => "batch/v1",
            _ => "apps/v1",
        }
    }

    /// The resource name kubectl takes (`deployment`).
    pub fn resource(self) -> &'static str {
        match self {
            OwnerKind::Deployment => "deployment",
            OwnerKind::StatefulSet => "statefulset",
            OwnerKind::DaemonSet => "daemonset",
            OwnerKind::ReplicaSet => "replicaset",
            OwnerKind::CronJob => "cronjob",
        }
    }
}

/// The object a patch changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub namespace: String,
    pub kind: OwnerKind,
    pub name: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// One profile, checked: whose container it is, and under which sysctls
/// its conditional capabilities are decided.
#[derive(Clone, Debug)]
pub struct Input {
    /// Where the profile came from (a file name), for messages.
    pub file: String,
    pub profile: Profile,
    pub target: Target,
    pub container: String,
    /// How the owner was derived (`subject.k8s.owner.derived_from`).
    pub derived_from: String,
    pub sysctls: TargetSysctls,
}

impl Input {
    /// Checks that `profile` names a container of a patchable owner.
    pub fn new(
        file: &str,
        profile: Profile,
        sysctls: TargetSysctls,
    ) -> Result<Self, K8sPatchError> {
        let file = file.to_owned();
        let subject = &profile.subject;
        if !subject.kind.is_kubernetes() {
            return Err(K8sPatchError::NotKubernetes {
                file,
                kind: subject.kind.clone(),
            });
        }
        let Some(k8s) = &subject.k8s else {
            return Err(K8sPatchError::NoK8s { file });
        };
        let Some(Owner {
            kind,
            name,
            derived_from,
        }) = &k8s.owner
        else {
            return Err(K8sPatchError::NoOwner {
                pod: k8s.pod.clone().unwrap_or_else(|| "(unnamed)".to_owned()),
                file,
            });
        };
        let Some(container) = subject.name.clone() else {
            return Err(K8sPatchError::NoContainer { file });
        };
        let check = |what: &'static str, value: &str, subdomain: bool| {
            if is_name(value, subdomain) {
                Ok(())
            } else {
                Err(K8sPatchError::BadName {
                    file: file.clone(),
                    what,
                    value: value.to_owned(),
                })
            }
        };
        check("namespace", &k8s.namespace, false)?;
        check("owner name", name, true)?;
        check("container name", &container, false)?;
        let kind = OwnerKind::parse(kind).map_err(|why| K8sPatchError::Unpatchable {
            file: file.clone(),
            kind: kind.clone(),
            namespace: k8s.namespace.clone(),
            name: name.clone(),
            why,
        })?;
        let target = Target {
            namespace: k8s.namespace.clone(),
            kind,
            name: name.clone(),
        };
        let derived_from = derived_from.clone();
        Ok(Input {
            file,
            profile,
            target,
            container,
            derived_from,
            sysctls,
        })
    }
}

/// A DNS-1123 label (`subdomain == false`: namespaces and container names)
/// or subdomain (object names): lower-case letters, digits and `-` (and
/// `.` in a subdomain), starting and ending with a letter or digit.
fn is_name(value: &str, subdomain: bool) -> bool {
    let max = if subdomain { 253 } else { 63 };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !value.is_empty()
        && value.len() <= max
        && value.starts_with(alnum)
        && value.ends_with(alnum)
        && value
            .chars()
            .all(|c| alnum(c) || c == '-' || (subdomain && c == '.'))
}

/// The containers of one owner.
#[derive(Clone, Debug)]
pub struct Patch {
    pub target: Target,
    /// One per container, in the order given.
    pub inputs: Vec<Input>,
}

impl Patch {
    /// One patch from profiles of one owner; profiles of different owners,
    /// or two of one container, are refused.
    pub fn of(inputs: Vec<Input>) -> Result<Self, K8sPatchError> {
        let mut patches = Self::group(inputs)?;
        if patches.len() > 1 {
            let (a, b) = (&patches[0].inputs[0], &patches[1].inputs[0]);
            return Err(K8sPatchError::DifferentOwners {
                first: a.file.clone(),
                first_target: Box::new(a.target.clone()),
                second: b.file.clone(),
                second_target: Box::new(b.target.clone()),
            });
        }
        patches.pop().ok_or(K8sPatchError::Empty)
    }

    /// One patch per owner, ordered by namespace, kind and name; two
    /// profiles of one container are refused.
    pub fn group(inputs: Vec<Input>) -> Result<Vec<Self>, K8sPatchError> {
        if inputs.is_empty() {
            return Err(K8sPatchError::Empty);
        }
        let mut owners: BTreeMap<Target, Vec<Input>> = BTreeMap::new();
        for input in inputs {
            let same = owners.entry(input.target.clone()).or_default();
            if let Some(other) = same.iter().find(|i| i.container == input.container) {
                return Err(K8sPatchError::DuplicateContainer {
                    first: other.file.clone(),
                    second: input.file,
                    container: input.container,
                    target: Box::new(input.target),
                });
            }
            same.push(input);
        }
        Ok(owners
            .into_iter()
            .map(|(target, inputs)| Patch { target, inputs })
            .collect())
    }

    /// `NAMESPACE.KIND.NAME.yaml`: every part is a DNS name, so the file
    /// name has no `/` and cannot collide with another owner's.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}.{}.yaml",
            self.target.namespace,
            self.target.kind.resource(),
            self.target.name
        )
    }
}

/// The patch as YAML: comment lines saying what it changes, how to apply
/// it and, per container, what the other formats' comments say (conditional
/// capabilities, capset()-kept ones, partial recordings, refusals), then
/// the patch. Ends with a newline.
pub fn render(patch: &Patch) -> Result<String, K8sPatchError> {
    let target = &patch.target;
    let mut out = format!(
        "# capprof: strategic-merge patch for {target} (owner derived from {})\n",
        comment_safe(&patch.inputs[0].derived_from)
    );
    out.push_str(&format!(
        "# capprof: kubectl -n {} patch {} {} --type strategic --patch-file FILE\n",
        target.namespace,
        target.kind.resource(),
        target.name
    ));
    out.push_str(
        "# capprof: or, owning just these fields: kubectl apply --server-side --validate=false --field-manager=capprof -f FILE\n",
    );
    out.push_str(
        "# capprof: each container's capabilities.add and .drop replace the object's lists; \
         its other securityContext fields stay; a container name the object lacks would be \
         added as a new container\n",
    );
    match target.kind {
        OwnerKind::ReplicaSet => out.push_str(
            "# capprof: a ReplicaSet does not roll its pods: delete them to start pods with \
             the new template\n",
        ),
        OwnerKind::CronJob => out.push_str(
            "# capprof: this changes the Jobs the CronJob creates from now on, not running ones\n",
        ),
        _ => {}
    }
    let mut containers = Vec::with_capacity(patch.inputs.len());
    let mut relax = vec![];
    for input in &patch.inputs {
        let profile = &input.profile;
        let decision = grant::decide(profile, &input.sysctls);
        relax.extend(decision.relax.iter().cloned());
        let mut notes = grant::notes(profile, &decision);
        notes.extend(warnings(profile, &input.container));
        out.push_str(&format!(
            "# capprof: container {} from {}:\n",
            input.container,
            comment_safe(&input.file)
        ));
        out.push_str(&grant::header(profile, &notes));
        let add = grant::grant(profile, &decision)
            .into_iter()
            .map(|c| c.short_name())
            .collect();
        containers.push(Container {
            name: &input.container,
            security_context: SecurityContext {
                capabilities: Capabilities {
                    drop: vec!["ALL"],
                    add,
                },
            },
        });
    }
    let relax = SysctlSetting::combine(relax);
    if !relax.is_empty() {
        out.push_str(
            "# capprof: the pod's securityContext.sysctls list replaces the object's: keep any \
             other sysctl it sets\n",
        );
    }
    let pod = Spec {
        spec: Containers {
            security_context: (!relax.is_empty()).then(|| K8sPodSecurityContext {
                sysctls: relax.iter().map(K8sSysctl::of).collect(),
            }),
            containers,
        },
    };
    // The object's identity too, so that the same file is a strategic
    // merge patch and a server-side apply configuration.
    let body = match target.kind {
        OwnerKind::CronJob => serde_norway::to_string(&Object::of(
            target,
            Spec {
                spec: JobTemplate {
                    job_template: Spec {
                        spec: Template { template: pod },
                    },
                },
            },
        )),
        _ => serde_norway::to_string(&Object::of(
            target,
            Spec {
                spec: Template { template: pod },
            },
        )),
    }
    .map_err(|source| K8sPatchError::Yaml { source })?;
    out.push_str(&body);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// What `capprof export` warns about on stderr, as comments that stay with
/// the patch: the allowlist may be too small.
fn warnings(profile: &Profile, container: &str) -> Vec<String> {
    Caveat::of(profile)
        .into_iter()
        .filter(|c| {
            matches!(
                c,
                Caveat::Partial { .. } | Caveat::Refused(_) | Caveat::Ungrantable(_)
            )
        })
        .map(|c| format!("WARNING: {}", c.naming(container)))
        .collect()
}

/// Untrusted text for a comment line: hidden characters (a newline would
/// end the comment) made visible, length bounded.
fn comment_safe(text: &str) -> String {
    crate::text::line(text, 200)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Object<'a, T> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata<'a>,
    #[serde(flatten)]
    spec: T,
}

impl<'a, T> Object<'a, T> {
    fn of(target: &'a Target, spec: T) -> Self {
        Object {
            api_version: target.kind.api_version(),
            kind: target.kind.as_str(),
            metadata: Metadata {
                name: &target.name,
                namespace: &target.namespace,
            },
            spec,
        }
    }
}

#[derive(Serialize)]
struct Metadata<'a> {
    name: &'a str,
    namespace: &'a str,
}

#[derive(Serialize)]
struct Spec<T> {
    spec: T,
}

#[derive(Serialize)]
struct Template<T> {
    template: T,
}

#[derive(Serialize)]
struct JobTemplate<T> {
    #[serde(rename = "jobTemplate")]
    job_template: T,
}

#[derive(Serialize)]
struct Containers<'a> {
    /// Only when a container needs a sysctl relaxed.
    #[serde(rename = "securityContext", skip_serializing_if = "Option::is_none")]
    security_context: Option<K8sPodSecurityContext>,
    containers: Vec<Container<'a>>,
}

/// A container entry: `name` is the merge key.
#[derive(Serialize)]
struct Container<'a> {
    name: &'a str,
    #[serde(rename = "securityContext")]
    security_context: SecurityContext,
}

#[derive(Serialize)]
struct SecurityContext {
    capabilities: Capabilities,
}

/// `add` is always written (`[]` when nothing is needed): an empty list
/// replaces the object's, where a missing key would keep it.
#[derive(Serialize)]
struct Capabilities {
    drop: Vec<&'static str>,
    add: Vec<&'static str>,
}

#[cfg(test)]
mod tests;
