//! The flags of the commands that read the cluster's CapabilityProfiles
//! (`profile --kube`, `report --kube`).

use std::{path::PathBuf, time::Duration};

use capprof::fleet::read::ReadOptions;

/// Where the cluster is, and which nodes' parts still count.
#[derive(Debug, clap::Args)]
pub struct KubeReadArgs {
    /// With --kube: the cluster's kubeconfig [default: $KUBECONFIG, else
    /// ~/.kube/config, else the pod's service account].
    #[arg(
        long,
        value_name = "FILE",
        env = "CAPPROF_KUBECONFIG",
        requires = "kube"
    )]
    pub kubeconfig: Option<PathBuf>,

    /// With --kube: leave out the parts of nodes that have not seen the
    /// workload for this long, as the daemons do ("7d").
    #[arg(long = "kube-stale-after", value_name = "DURATION", env = "CAPPROF_KUBE_STALE_AFTER",
          value_parser = humantime::parse_duration, default_value = "7d", requires = "kube")]
    pub stale_after: Duration,
}

impl KubeReadArgs {
    pub fn options(&self) -> ReadOptions<'_> {
        ReadOptions {
            kubeconfig: self.kubeconfig.as_deref(),
            stale_after: self.stale_after,
        }
    }
}
