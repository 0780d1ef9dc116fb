//! The daemon's configuration: flags, `CAPPROF_*` environment variables, and
//! a TOML file, in that order of precedence, validated at startup.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// Every setting, with its default (see `Default`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Profiles and state: /var/lib/capprof.
    pub state_dir: PathBuf,
    /// The local API socket: /run/capprof/capprof.sock (root-only, 0600).
    pub socket: PathBuf,
    /// Prometheus metrics address; off by default. A bare port binds
    /// loopback.
    pub metrics: Option<String>,
    /// Workloads with metrics series of their own; the others share
    /// `workload="_other"`. Default 500 (`series::DEFAULT_MAX_WORKLOADS`).
    pub metrics_max_workloads: usize,
    /// Exited containers whose `ps` line is kept. Their profiles leave
    /// memory as soon as they are on disk (counted in
    /// capprof_evictions_total), whatever this says. Default 1024.
    pub max_containers: usize,
    /// How often changed profiles are written, in seconds. Default 3.
    pub flush_interval_secs: u64,
    /// The engine API socket: $DOCKER_HOST, else /var/run/docker.sock.
    pub engine: Option<String>,
    /// The CRI runtime socket (containerd, CRI-O) that names pods'
    /// containers. Default: none; the runtime at its default socket is used
    /// when no Docker engine answers.
    pub cri: Option<String>,
    /// Where bpffs is (mounted if missing): /sys/fs/bpf.
    pub bpffs: PathBuf,
    /// Extra cgroup v2 subtrees to watch for containers.
    pub cgroup_roots: Vec<String>,
    /// Shadow mode: candidate allowlists (profile files, or directories of
    /// them) each container is compared with. Default: none.
    pub shadow: Vec<PathBuf>,
    /// How long an exited container's state and profile files are kept
    /// after their last write (`"7d"`, `"12h"`). Default 7 days: a busy
    /// engine starts hundreds of short-lived containers an hour, and a week
    /// covers the CI runs and batch jobs someone still asks about.
    #[serde(with = "humantime_serde_str")]
    pub retain_for: Duration,
    /// Most exited containers kept on disk; the oldest beyond it are
    /// removed first. Default 1000 (about 10 MB of files). Running
    /// containers never count and are never removed.
    pub retain_max: usize,
    /// Write this node's part of each workload's CapabilityProfile to the
    /// cluster's API (`fleet::writer`). Default off.
    pub kube: bool,
    /// This node's name in the parts: $NODE_NAME (the DaemonSet sets it
    /// from `spec.nodeName`), else the host name.
    pub kube_node: Option<String>,
    /// Where the cluster is: a kubeconfig file; default the pod's service
    /// account, else as kubectl finds its config.
    pub kubeconfig: Option<PathBuf>,
    /// At most one write per object per node per interval. Default 30s.
    #[serde(with = "humantime_serde_str")]
    pub kube_interval: Duration,
    /// A node's part older than this no longer counts, and the next writer
    /// removes it. Default 7 days.
    #[serde(with = "humantime_serde_str")]
    pub kube_stale_after: Duration,
    /// At most this many Kubernetes API requests per second from this
    /// node (0.1 is one every 10 s). Default 2.
    pub kube_max_rate: f64,
}

/// Durations in the config file as people write them: `"7d"`, `"90m"`.
mod humantime_serde_str {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `retain_for`'s default: 7 days.
pub const DEFAULT_RETAIN_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/capprof"),
            socket: PathBuf::from("/run/capprof/capprof.sock"),
            metrics: None,
            metrics_max_workloads: super::series::DEFAULT_MAX_WORKLOADS,
            max_containers: 1024,
            flush_interval_secs: 3,
            engine: None,
            cri: None,
            bpffs: PathBuf::from(crate::observer::pin::DEFAULT_BPFFS),
            cgroup_roots: vec![],
            shadow: vec![],
            retain_for: DEFAULT_RETAIN_FOR,
            retain_max: 1000,
            kube: false,
            kube_node: None,
            kubeconfig: None,
            kube_interval: crate::fleet::writer::DEFAULT_INTERVAL,
            kube_stale_after: crate::fleet::writer::DEFAULT_STALE_AFTER,
            kube_max_rate: crate::fleet::writer::DEFAULT_MAX_RATE,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl DaemonConfig {
    /// The fleet writer's settings, when `kube` is on: the node's name
    /// from the config, else $NODE_NAME, else the host name.
    pub fn writer(&self) -> Option<crate::fleet::writer::WriterConfig> {
        if !self.kube {
            return None;
        }
        let node = self
            .kube_node
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_ascii_lowercase())
                    .unwrap_or_else(|_| "unknown".into())
            });
        Some(crate::fleet::writer::WriterConfig {
            node,
            kubeconfig: self.kubeconfig.clone(),
            interval: self.kube_interval,
            stale_after: self.kube_stale_after,
            max_rate: self.kube_max_rate,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut crate::fsutil::open_regular(path).map_err(read_err)?,
            &mut text,
        )
        .map_err(read_err)?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, path) in [
            ("state_dir", &self.state_dir),
            ("socket", &self.socket),
            ("bpffs", &self.bpffs),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be an absolute path, not {}",
                    path.display()
                )));
            }
        }
        if self.max_containers == 0 {
            return Err(ConfigError::Invalid(
                "max_containers must be at least 1".into(),
            ));
        }
        if self.metrics_max_workloads == 0 {
            return Err(ConfigError::Invalid(
                "metrics_max_workloads must be at least 1".into(),
            ));
        }
        if self.flush_interval_secs == 0 || self.flush_interval_secs > 3600 {
            return Err(ConfigError::Invalid(
                "flush_interval_secs must be 1..=3600".into(),
            ));
        }
        if self.retain_for < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "retain_for must be at least 1s".into(),
            ));
        }
        if self.retain_max == 0 {
            return Err(ConfigError::Invalid("retain_max must be at least 1".into()));
        }
        if self.kube_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "kube_interval must be at least 1s".into(),
            ));
        }
        if self.kube_stale_after < self.kube_interval * 4 {
            return Err(ConfigError::Invalid(
                "kube_stale_after must be at least 4 times kube_interval".into(),
            ));
        }
        if !(0.001..=1000.0).contains(&self.kube_max_rate) {
            return Err(ConfigError::Invalid(
                "kube_max_rate must be 0.001..=1000 requests per second".into(),
            ));
        }
        if let Some(node) = &self.kube_node
            && !crate::cri::names::is_dns_subdomain(node)
        {
            return Err(ConfigError::Invalid(format!(
                "kube_node {:?} is not a Kubernetes node name",
                crate::text::visible(node)
            )));
        }
        if let Some(m) = &self.metrics {
            super::metrics::parse_addr(m)
                .map_err(|e| ConfigError::Invalid(format!("metrics: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_defaults() {
        let c: DaemonConfig =
            toml::from_str("state_dir = \"/srv/capprof\"\nmax_containers = 9\n").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/srv/capprof"));
        assert_eq!(c.max_containers, 9);
        assert_eq!(c.socket, DaemonConfig::default().socket);
        c.validate().unwrap();
        assert!(toml::from_str::<DaemonConfig>("bogus = 1").is_err());
        assert_eq!(c.retain_for, DEFAULT_RETAIN_FOR);
        let kept: DaemonConfig = toml::from_str("retain_for = \"36h\"\nretain_max = 50\n").unwrap();
        assert_eq!(kept.retain_for, Duration::from_secs(36 * 3600));
        assert_eq!(kept.retain_max, 50);
        assert!(toml::from_str::<DaemonConfig>("retain_for = \"soon\"").is_err());
        let none = DaemonConfig {
            retain_max: 0,
            ..Default::default()
        };
        assert!(none.validate().is_err());
        let rel = DaemonConfig {
            socket: "rel.sock".into(),
            ..Default::default()
        };
        assert!(rel.validate().is_err());
    }
}
