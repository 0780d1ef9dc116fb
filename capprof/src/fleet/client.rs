//! The Kubernetes API, through kube-rs: reading and writing
//! CapabilityProfiles, and reading the workload objects their
//! ownerReferences name. Every failure becomes a [`FleetError`] that says
//! in one line what to do.

use std::path::{Path, PathBuf};

use kube::{
    Client, Config,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

use super::object::{self, API_VERSION, CapabilityProfile, NodePart};
use crate::cri::{owner, workload::WorkloadKey};

/// The one shared field manager of the spec and of the merged status.
pub const MANAGER: &str = "capprof";

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("no Kubernetes cluster configured: {0}")]
    Config(String),
    #[error("no Kubernetes API server reachable at {server}: {message}")]
    Unreachable { server: String, message: String },
    #[error(
        "the CapabilityProfile resource is not installed in the cluster at {server}; install it with: kubectl apply -f deploy/crd.yaml"
    )]
    CrdMissing { server: String },
    #[error(
        "forbidden by RBAC: {user} may not {verb} {resource} (deploy/rbac.yaml grants what capprof needs): {message}"
    )]
    Forbidden {
        user: String,
        verb: &'static str,
        resource: String,
        message: String,
    },
    #[error("no CapabilityProfile for {key} (object {namespace}/{name}): no node has written one")]
    NotFound {
        key: String,
        namespace: String,
        name: String,
    },
    #[error("the API server refused to {verb} {resource}: {message}")]
    Refused {
        verb: &'static str,
        resource: String,
        code: u16,
        message: String,
    },
    #[error("{0} (fix or delete the object; capprof rewrites its own parts)")]
    Invalid(#[from] object::InvalidObject),
    #[error("{verb} {resource}: {source}")]
    Other {
        verb: &'static str,
        resource: String,
        #[source]
        source: kube::Error,
    },
}

impl FleetError {
    /// A conflict on a resourceVersion precondition: someone wrote first.
    pub fn is_conflict(&self) -> bool {
        matches!(self, FleetError::Refused { code: 409, .. })
    }
}

/// A connection to one cluster.
#[derive(Clone)]
pub struct Fleet {
    client: Client,
    server: String,
    /// Who we are, for error messages: the kubeconfig's user or the
    /// service account.
    user: String,
    profiles: ApiResource,
}

impl Fleet {
    /// From `kubeconfig`, else as kubectl would: `$KUBECONFIG`,
    /// `~/.kube/config`, then the pod's service account.
    pub async fn connect(kubeconfig: Option<&Path>) -> Result<Self, FleetError> {
        let config = match kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    FleetError::Config(format!(
                        "cannot read kubeconfig {}: {}",
                        path.display(),
                        first_line(&e.to_string())
                    ))
                })?;
                Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        FleetError::Config(format!("kubeconfig {}: {e}", path.display()))
                    })?
            }
            None => Config::infer()
                .await
                .map_err(|e| FleetError::Config(first_line(&e.to_string())))?,
        };
        let server = config.cluster_url.to_string();
        let user = kubeconfig.map(PathBuf::from).map_or_else(
            || "this service account".into(),
            |p| format!("the user of {}", p.display()),
        );
        let client = Client::try_from(config).map_err(|e| FleetError::Config(e.to_string()))?;
        let gvk = GroupVersionKind::gvk(object::GROUP, object::VERSION, object::KIND);
        Ok(Self {
            client,
            server,
            user,
            profiles: ApiResource::from_gvk_with_plural(&gvk, object::PLURAL),
        })
    }

    fn api(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &self.profiles),
            None => Api::all_with(self.client.clone(), &self.profiles),
        }
    }

    /// Says so when the CRD is not installed; readers call it first, so
    /// that "not installed" is not mistaken for "no profile yet".
    pub async fn check_installed(&self) -> Result<(), FleetError> {
        match self.client.list_api_group_resources(API_VERSION).await {
            Ok(list) if list.resources.iter().any(|r| r.name == object::PLURAL) => Ok(()),
            Ok(_) => Err(FleetError::CrdMissing {
                server: self.server.clone(),
            }),
            Err(e) => Err(self.error(e, "get", "the capprof.dev API group".into())),
        }
    }

    /// One workload container's object; None when no node wrote it.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<CapabilityProfile>, FleetError> {
        let resource = format!("capabilityprofiles {namespace}/{name}");
        match self.api(Some(namespace)).get_opt(name).await {
            Ok(Some(obj)) => decode(obj).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.error(e, "get", resource)),
        }
    }

    /// Every object of one namespace, or of the cluster.
    pub async fn list(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<CapabilityProfile>, FleetError> {
        let resource = match namespace {
            Some(ns) => format!("capabilityprofiles in namespace {ns}"),
            None => "capabilityprofiles in all namespaces".into(),
        };
        let list = self
            .api(namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| self.error(e, "list", resource))?;
        list.items.into_iter().map(decode).collect()
    }

    /// Creates the object if need be (the spec and the ownerReference,
    /// under the shared manager; identical from every node).
    pub async fn ensure(
        &self,
        key: &WorkloadKey,
        name: &str,
        container: &str,
        owner: Option<Value>,
    ) -> Result<(), FleetError> {
        let mut metadata = json!({
            "name": name,
            "namespace": key.namespace,
            "labels": {"app.kubernetes.io/managed-by": "capprof"},
        });
        if let Some(owner) = owner {
            metadata["ownerReferences"] = json!([owner]);
        }
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": object::KIND,
            "metadata": metadata,
            "spec": {
                "workload": {"kind": key.kind, "name": key.name},
                "container": container,
            },
        });
        let params = PatchParams::apply(MANAGER).force();
        self.api(Some(&key.namespace))
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| {
                self.error(
                    e,
                    "patch",
                    format!("capabilityprofiles {}/{name}", key.namespace),
                )
            })?;
        Ok(())
    }

    /// Writes this node's part alone (server-side apply with the node's
    /// own field manager: other nodes' parts are never touched) and
    /// returns the object as it now stands.
    pub async fn apply_part(
        &self,
        namespace: &str,
        name: &str,
        part: &NodePart,
    ) -> Result<CapabilityProfile, FleetError> {
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": object::KIND,
            "metadata": {"name": name, "namespace": namespace},
            "status": {"nodes": [part]},
        });
        let params = PatchParams::apply(&node_manager(&part.node)).force();
        let obj = self
            .api(Some(namespace))
            .patch_status(name, &params, &Patch::Apply(&body))
            .await
            .map_err(|e| {
                self.error(
                    e,
                    "patch",
                    format!("capabilityprofiles/status {namespace}/{name}"),
                )
            })?;
        decode(obj)
    }

    /// Replaces the status, on the condition that the object is still at
    /// the resourceVersion it was read at (409 otherwise).
    pub async fn replace_status(&self, object: &CapabilityProfile) -> Result<(), FleetError> {
        let (ns, name) = (&object.metadata.namespace, &object.metadata.name);
        let resource = format!("capabilityprofiles/status {ns}/{name}");
        let body = serde_json::to_value(object).map_err(|e| FleetError::Config(e.to_string()))?;
        let dynamic: DynamicObject =
            serde_json::from_value(body).map_err(|e| FleetError::Config(e.to_string()))?;
        self.api(Some(ns))
            .replace_status(name, &Default::default(), &dynamic)
            .await
            .map_err(|e| self.error(e, "update", resource))?;
        Ok(())
    }

    /// The ownerReference to the workload, when its object exists: the
    /// garbage collector then deletes the profile with the workload.
    pub async fn owner_reference(&self, key: &WorkloadKey) -> Result<Option<Value>, FleetError> {
        let candidates: &[(&str, &str, &str)] = match key.kind.as_str() {
            owner::DEPLOYMENT => &[("apps", "v1", "deployments")],
            owner::STATEFULSET => &[("apps", "v1", "statefulsets")],
            owner::DAEMONSET => &[("apps", "v1", "daemonsets")],
            owner::JOB => &[("batch", "v1", "jobs")],
            // batch/v1 from Kubernetes 1.21, v1beta1 before.
            owner::CRONJOB => &[
                ("batch", "v1", "cronjobs"),
                ("batch", "v1beta1", "cronjobs"),
            ],
            _ => &[],
        };
        for (group, version, plural) in candidates {
            let gvk = GroupVersionKind::gvk(group, version, &key.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &resource);
            match api.get_metadata_opt(&key.name).await {
                Ok(Some(meta)) => {
                    let Some(uid) = meta.metadata.uid else {
                        continue;
                    };
                    return Ok(Some(json!({
                        "apiVersion": format!("{group}/{version}"),
                        "kind": key.kind,
                        "name": key.name,
                        "uid": uid,
                    })));
                }
                Ok(None) => {}
                // An API version this server does not serve.
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(self.error(
                        e,
                        "get",
                        format!("{plural} {}/{}", key.namespace, key.name),
                    ));
                }
            }
        }
        Ok(None)
    }

    fn error(&self, e: kube::Error, verb: &'static str, resource: String) -> FleetError {
        match e {
            kube::Error::Api(status) => {
                let message = crate::text::visible(&status.message);
                match status.code {
                    403 => FleetError::Forbidden {
                        user: self.user.clone(),
                        verb,
                        resource,
                        message,
                    },
                    404 if status.details.as_ref().is_none_or(|d| d.name.is_empty()) => {
                        FleetError::CrdMissing {
                            server: self.server.clone(),
                        }
                    }
                    code => FleetError::Refused {
                        verb,
                        resource,
                        code,
                        message,
                    },
                }
            }
            kube::Error::HyperError(_) | kube::Error::Service(_) => FleetError::Unreachable {
                server: self.server.clone(),
                message: one_line(&e),
            },
            source => FleetError::Other {
                verb,
                resource,
                source,
            },
        }
    }
}

/// The field manager of one node's part.
pub fn node_manager(node: &str) -> String {
    format!("capprof-node-{node}")
}

/// The first line of a message (a YAML parser's error draws a caret
/// under the input on the next ones).
fn first_line(text: &str) -> String {
    crate::text::visible(text.lines().next().unwrap_or_default().trim_end())
}

/// An error and its causes on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    crate::text::visible(&text)
}

/// An object as the server sent it, checked before anything reads it.
fn decode(obj: DynamicObject) -> Result<CapabilityProfile, FleetError> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let invalid = |reason: String| object::InvalidObject {
        name: crate::text::visible(&name),
        reason,
    };
    let value = serde_json::to_value(&obj).map_err(|e| invalid(e.to_string()))?;
    let profile: CapabilityProfile =
        serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    profile.check()?;
    Ok(profile)
}
