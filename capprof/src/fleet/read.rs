//! Reading the cluster's view (`capprof profile --kube`, `capprof report
//! --kube`): the objects, checked, and re-merged from their parts.
//!
//! The command line is synchronous; these run kube-rs on a small runtime
//! of their own.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use super::{
    client::{Fleet, FleetError},
    object::{CapabilityProfile, InvalidObject, object_name},
    part,
};
use crate::{cri::workload::WorkloadKey, load::Loaded, profile::Profile};

/// Where to read from, and which parts still count.
#[derive(Debug, Clone)]
pub struct ReadOptions<'a> {
    pub kubeconfig: Option<&'a Path>,
    pub stale_after: Duration,
}

fn runtime() -> Result<tokio::runtime::Runtime, FleetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Config(format!("cannot start the client runtime: {e}")))
}

/// The fleet-wide profile of one workload container. Without a container
/// in `key`, the workload's only one.
pub fn profile(key: &WorkloadKey, options: &ReadOptions) -> Result<Profile, FleetError> {
    runtime()?.block_on(async {
        let fleet = Fleet::connect(options.kubeconfig).await?;
        fleet.check_installed().await?;
        let object = match &key.container {
            Some(container) => {
                let name = object_name(key, container);
                fleet
                    .get(&key.namespace, &name)
                    .await?
                    .ok_or_else(|| FleetError::NotFound {
                        key: key.to_string(),
                        namespace: key.namespace.clone(),
                        name,
                    })?
            }
            None => only_container(&fleet, key).await?,
        };
        to_profile(&object, options.stale_after)
    })
}

/// The workload's one object when its key names no container.
async fn only_container(fleet: &Fleet, key: &WorkloadKey) -> Result<CapabilityProfile, FleetError> {
    let mut mine: Vec<CapabilityProfile> = fleet
        .list(Some(&key.namespace))
        .await?
        .into_iter()
        .filter(|o| o.spec.workload.kind == key.kind && o.spec.workload.name == key.name)
        .collect();
    match mine.len() {
        0 => Err(FleetError::NotFound {
            key: key.to_string(),
            namespace: key.namespace.clone(),
            name: object_name(key, "CONTAINER"),
        }),
        1 => Ok(mine.remove(0)),
        _ => Err(FleetError::Config(format!(
            "{key} has several containers ({}): name one, as {key}/CONTAINER",
            mine.iter()
                .map(|o| o.spec.container.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Every object of a namespace (or of the cluster) as a profile, for a
/// report. Objects whose parts have all gone stale are left out.
pub fn profiles(namespace: Option<&str>, options: &ReadOptions) -> Result<Vec<Loaded>, FleetError> {
    runtime()?.block_on(async {
        let fleet = Fleet::connect(options.kubeconfig).await?;
        fleet.check_installed().await?;
        let mut out = vec![];
        for object in fleet.list(namespace).await? {
            let source = format!(
                "capabilityprofile {}/{}",
                object.metadata.namespace, object.metadata.name
            );
            match to_profile(&object, options.stale_after) {
                Ok(profile) => out.push(Loaded::new(source, profile)),
                Err(FleetError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })
}

/// The parts that still count, merged. The summary the writers left is
/// not trusted: it is recomputed.
pub fn to_profile(
    object: &CapabilityProfile,
    stale_after: Duration,
) -> Result<Profile, FleetError> {
    let key = object.key();
    let invalid = |reason: String| {
        FleetError::Invalid(InvalidObject {
            name: crate::text::visible(&object.metadata.name),
            reason,
        })
    };
    let merged = part::fleet_profile(object, SystemTime::now(), stale_after)
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| FleetError::NotFound {
            key: key.to_string(),
            namespace: key.namespace.clone(),
            name: object.metadata.name.clone(),
        })?;
    // What capprof hands out, it must read back as a profile.
    Profile::from_json("the fleet profile", merged.to_json().as_bytes())
        .map_err(|e| invalid(e.to_string()))
}
