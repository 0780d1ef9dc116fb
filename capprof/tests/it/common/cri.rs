//! Pods on a private containerd, started through the CRI the way the
//! kubelet starts them (tests/it/cri.rs, tests/it/fleet.rs).

use std::collections::HashMap;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ImageSpec, KeyValue,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest, runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The image the CRI runs (imported into containerd by xtask).
pub const IMAGE: &str = "capprof-busybox:test";
pub const PATH_ENV: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// The first node's runtime.
pub fn endpoint() -> String {
    std::env::var("CAPPROF_TEST_CRI")
        .expect("CAPPROF_TEST_CRI is not set: run these tests through `cargo xtask test`, which starts a private containerd")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The second node's runtime (the fleet tests run two).
pub fn endpoint_b() -> String {
    std::env::var("CAPPROF_TEST_CRI_B")
        .expect("CAPPROF_TEST_CRI_B is not set: run these tests through `cargo xtask test`, which starts a second private containerd")
}

pub async fn connect(endpoint: &str) -> RuntimeServiceClient<Channel> {
    let path = endpoint.strip_prefix("unix://").unwrap().to_owned();
    let channel = Endpoint::from_static("http://cri.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

/// A pod as the kubelet describes it to the runtime.
pub struct PodSpec {
    pub namespace: &'static str,
    pub name: &'static str,
    pub uid: String,
    pub labels: Vec<(&'static str, &'static str)>,
    pub container: &'static str,
    pub script: &'static str,
}

pub fn uid(n: u32) -> String {
    format!("{n:08x}-d113-4ec5-a9f4-{:012x}", std::process::id())
}

impl PodSpec {
    fn sandbox_config(&self) -> PodSandboxConfig {
        let mut labels: HashMap<String, String> = self
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.insert("io.kubernetes.pod.name".into(), self.name.into());
        labels.insert("io.kubernetes.pod.namespace".into(), self.namespace.into());
        labels.insert("io.kubernetes.pod.uid".into(), self.uid.clone());
        let annotations = HashMap::from([
            ("kubernetes.io/config.source".to_owned(), "api".to_owned()),
            (
                "kubernetes.io/config.seen".to_owned(),
                "2026-01-01T00:00:00Z".to_owned(),
            ),
        ]);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: self.name.into(),
                uid: self.uid.clone(),
                namespace: self.namespace.into(),
                attempt: 0,
            }),
            // Host network: runc refuses a hostname without a UTS namespace.
            hostname: String::new(),
            labels,
            annotations,
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/kubepods/burstable/pod{}", self.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self) -> ContainerConfig {
        let labels = HashMap::from([
            (
                "io.kubernetes.container.name".to_owned(),
                self.container.to_owned(),
            ),
            ("io.kubernetes.pod.name".to_owned(), self.name.to_owned()),
            (
                "io.kubernetes.pod.namespace".to_owned(),
                self.namespace.to_owned(),
            ),
            ("io.kubernetes.pod.uid".to_owned(), self.uid.clone()),
        ]);
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: self.container.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), self.script.into()],
            envs: vec![KeyValue {
                key: "PATH".into(),
                value: PATH_ENV.into(),
            }],
            labels,
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn host_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pods started through the CRI, stopped and removed on drop.
pub struct Pods {
    endpoint: String,
    sandboxes: Vec<(String, String)>,
}

impl Pods {
    /// On the first node's runtime.
    pub fn run(specs: &[PodSpec]) -> Self {
        Self::run_on(&endpoint(), specs)
    }

    pub fn run_on(endpoint: &str, specs: &[PodSpec]) -> Self {
        runtime().block_on(async {
            let mut client = connect(endpoint).await;
            let mut sandboxes = vec![];
            for spec in specs {
                let config = spec.sandbox_config();
                let sandbox = client
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: String::new(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", spec.name))
                    .into_inner()
                    .pod_sandbox_id;
                sandboxes.push((sandbox.clone(), spec.uid.clone()));
                let id = client
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: sandbox.clone(),
                        config: Some(spec.container_config()),
                        sandbox_config: Some(config),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", spec.name))
                    .into_inner()
                    .container_id;
                client
                    .start_container(StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("StartContainer {}: {e}", spec.name));
                eprintln!(
                    "[cri] pod {}/{} container {} {id}",
                    spec.namespace, spec.name, spec.container
                );
            }
            Self {
                endpoint: endpoint.to_owned(),
                sandboxes,
            }
        })
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        runtime().block_on(async {
            let mut client = connect(&self.endpoint).await;
            for (sandbox, _) in &self.sandboxes {
                let _ = client
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: sandbox.clone(),
                    })
                    .await;
                let _ = client
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: sandbox.clone(),
                    })
                    .await;
            }
        });
        // The kubelet removes a pod's cgroup; here, the test does.
        for (_, uid) in &self.sandboxes {
            if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
                for hierarchy in entries.flatten() {
                    let _ = std::fs::remove_dir(
                        hierarchy
                            .path()
                            .join(format!("kubepods/burstable/pod{uid}")),
                    );
                }
            }
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/kubepods/burstable/pod{uid}"));
        }
    }
}
