//! `capprof daemon`: always-on per-container profiling.

use std::{path::PathBuf, process::ExitCode};

use capprof::{
    daemon::{self, config::DaemonConfig},
    observer::{Backend, preflight},
};

use crate::error::Error;

/// Profile every container on this host, always on: keeps each container's
/// profile current in the state directory, serves them on a root-only unix
/// socket (see `capprof ps` and `capprof profile`), and optionally exports
/// Prometheus metrics. Maps and programs are pinned in bpffs, so checks made
/// while the daemon is down are counted when it comes back. After attaching
/// it drops every capability.
///
/// Every flag can also come from a CAPPROF_* variable or the TOML --config
/// file (flags win, then the environment, then the file).
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// State directory [default: /var/lib/capprof].
    #[arg(long, value_name = "DIR", env = "CAPPROF_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// API socket [default: /run/capprof/capprof.sock].
    #[arg(long, value_name = "PATH", env = "CAPPROF_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Serve Prometheus metrics here; a bare port binds 127.0.0.1 [default: off].
    #[arg(long, value_name = "ADDR", env = "CAPPROF_METRICS")]
    pub metrics: Option<String>,
    /// Workloads given metrics series of their own; pods of further
    /// workloads are counted under workload="_other" [default: 500].
    #[arg(long, value_name = "N", env = "CAPPROF_METRICS_MAX_WORKLOADS")]
    pub metrics_max_workloads: Option<usize>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE", env = "CAPPROF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Exited containers `ps` lists (their profiles are on disk, not in memory).
    #[arg(long, value_name = "N", env = "CAPPROF_MAX_CONTAINERS")]
    pub max_containers: Option<usize>,
    /// Seconds between writes of changed profiles [default: 3].
    #[arg(long, value_name = "SECONDS", env = "CAPPROF_FLUSH_INTERVAL")]
    pub flush_interval: Option<u64>,
    /// The engine's API socket [default: $DOCKER_HOST, else /var/run/docker.sock].
    #[arg(
        long,
        value_name = "unix://PATH",
        env = "CAPPROF_ENGINE",
        conflicts_with = "cri"
    )]
    pub engine: Option<String>,
    /// Name containers through this CRI runtime socket (containerd,
    /// CRI-O), by namespace, pod and container, and answer per workload
    /// (`capprof profile --workload`). Without --cri or --engine, the
    /// runtime at /run/containerd/containerd.sock or
    /// /var/run/crio/crio.sock is used when no Docker engine answers.
    #[arg(long, value_name = "unix://PATH", env = "CAPPROF_CRI")]
    pub cri: Option<String>,
    /// bpffs mount point, mounted if missing [default: /sys/fs/bpf].
    #[arg(long, value_name = "DIR", env = "CAPPROF_BPFFS")]
    pub bpffs: Option<PathBuf>,
    /// Use this backend instead of the best one the kernel offers.
    #[arg(long, value_enum, env = "CAPPROF_BACKEND")]
    pub backend: Option<Backend>,
    /// Shadow mode: compare each container with the candidate allowlist of
    /// these profiles (files or directories of them; matched by container
    /// name, else by image), and report every check enforcing it would
    /// refuse. Repeatable.
    #[arg(
        long,
        value_name = "PROFILES",
        env = "CAPPROF_SHADOW",
        value_delimiter = ','
    )]
    pub shadow: Vec<PathBuf>,
    /// Remove an exited container's files this long after their last
    /// write ("7d", "12h") [default: 7d].
    #[arg(long, value_name = "DURATION", env = "CAPPROF_RETAIN_FOR",
          value_parser = humantime::parse_duration)]
    pub retain_for: Option<std::time::Duration>,
    /// Keep at most this many exited containers on disk, the newest
    /// [default: 1000].
    #[arg(long, value_name = "N", env = "CAPPROF_RETAIN_MAX")]
    pub retain_max: Option<usize>,
    /// Write this node's part of each workload's CapabilityProfile to the
    /// Kubernetes API (deploy/crd.yaml), so that `kubectl get
    /// capabilityprofiles` and `capprof profile --kube` show each workload
    /// across every node [default: off].
    #[arg(long, env = "CAPPROF_KUBE")]
    pub kube: bool,
    /// This node's name in the profiles [default: $NODE_NAME, else the host name].
    #[arg(
        long,
        value_name = "NAME",
        env = "CAPPROF_KUBE_NODE",
        requires = "kube"
    )]
    pub kube_node: Option<String>,
    /// The cluster's kubeconfig [default: the pod's service account, else
    /// $KUBECONFIG or ~/.kube/config].
    #[arg(
        long,
        value_name = "FILE",
        env = "CAPPROF_KUBECONFIG",
        requires = "kube"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// At most one write per object per node this often ("30s") [default: 30s].
    #[arg(long, value_name = "DURATION", env = "CAPPROF_KUBE_INTERVAL",
          value_parser = humantime::parse_duration, requires = "kube")]
    pub kube_interval: Option<std::time::Duration>,
    /// A node's part unrefreshed for this long no longer counts and is
    /// removed ("7d") [default: 7d].
    #[arg(long, value_name = "DURATION", env = "CAPPROF_KUBE_STALE_AFTER",
          value_parser = humantime::parse_duration, requires = "kube")]
    pub kube_stale_after: Option<std::time::Duration>,
    /// At most this many Kubernetes API requests per second from this node;
    /// 0.2 is one every 5 s (BENCHMARKS.md: what 1,000 nodes need) [default: 2].
    #[arg(
        long,
        value_name = "PER_SECOND",
        env = "CAPPROF_KUBE_MAX_RATE",
        requires = "kube"
    )]
    pub kube_max_rate: Option<f64>,
    /// Remove the pinned maps and programs, then exit.
    #[arg(long)]
    pub reset: bool,
}

impl DaemonArgs {
    fn config(&self) -> Result<DaemonConfig, Error> {
        let mut c = match &self.config {
            Some(path) => DaemonConfig::from_file(path).map_err(|e| Error::usage(e.to_string()))?,
            None => DaemonConfig::default(),
        };
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &self.socket {
            c.socket = v.clone();
        }
        if let Some(v) = &self.metrics {
            c.metrics = Some(v.clone());
        }
        if let Some(v) = self.metrics_max_workloads {
            c.metrics_max_workloads = v;
        }
        if let Some(v) = self.max_containers {
            c.max_containers = v;
        }
        if let Some(v) = self.flush_interval {
            c.flush_interval_secs = v;
        }
        if let Some(v) = &self.engine {
            c.engine = Some(v.clone());
        }
        if let Some(v) = &self.cri {
            c.cri = Some(v.clone());
        }
        if let Some(v) = &self.bpffs {
            c.bpffs = v.clone();
        }
        if let Some(v) = self.retain_for {
            c.retain_for = v;
        }
        if let Some(v) = self.retain_max {
            c.retain_max = v;
        }
        if self.kube {
            c.kube = true;
        }
        if let Some(v) = &self.kube_node {
            c.kube_node = Some(v.clone());
        }
        if let Some(v) = &self.kubeconfig {
            c.kubeconfig = Some(v.clone());
        }
        if let Some(v) = self.kube_interval {
            c.kube_interval = v;
        }
        if let Some(v) = self.kube_stale_after {
            c.kube_stale_after = v;
        }
        if let Some(v) = self.kube_max_rate {
            c.kube_max_rate = v;
        }
        if !self.shadow.is_empty() {
            c.shadow = self.shadow.clone();
        }
        c.validate().map_err(|e| Error::usage(e.to_string()))?;
        Ok(c)
    }
}

pub fn main(args: DaemonArgs) -> Result<ExitCode, Error> {
    let config = args.config()?;
    preflight()?;
    if args.reset {
        let removed = daemon::reset(&config).map_err(|e| Error::internal(e.to_string()))?;
        eprintln!(
            "capprof: {}",
            if removed {
                "removed the pinned maps and programs"
            } else {
                "no pins to remove"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    // One thread: capabilities are per thread, and the daemon drops them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(daemon::run(config, args.backend))
        .map_err(|e| {
            if e.is_prerequisite() {
                Error::usage(e.to_string())
            } else {
                Error::internal(e.to_string())
            }
        })?;
    Ok(ExitCode::SUCCESS)
}
