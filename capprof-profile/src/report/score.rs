//! Two verdicts on a set of capabilities: an exposure score, in the spirit
//! of `systemd-analyze security`, and the Pod Security Standards level a
//! pod granting them can meet.
//!
//! **Exposure.** Each capability has a weight `w`: the chance, in percent,
//! that holding it alone lets a compromised workload escape or take over
//! the host or its neighbours (`catalogue.rs`). Treating the capabilities
//! as independent ways out, the exposure of a set is
//! `10 × (1 − Π (1 − w/100))`, from 0.0 (nothing granted) to 10.0: one
//! escape-relevant capability weighs more than many small ones, and each
//! capability added can only raise it. Ratings: 0.0 `SAFE`, below 2.0
//! `OK`, below 5.0 `MEDIUM`, below 8.0 `EXPOSED`, else `UNSAFE`.
//!
//! **Pod Security** (Kubernetes Pod Security Standards, capabilities rules
//! only): `baseline` allows `capabilities.add` to hold only its 13
//! capabilities; `restricted` also requires `drop: [ALL]` and allows adding
//! only NET_BIND_SERVICE. Anything else needs `privileged`.

use serde::Serialize;

use crate::{capability::Cap, report::catalogue};

/// The 13 capabilities Pod Security `baseline` allows a pod to add.
pub const BASELINE_ADD: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What Pod Security `restricted` allows a pod to add, after `drop: [ALL]`.
pub const RESTRICTED_ADD: [&str; 1] = ["NET_BIND_SERVICE"];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Exposure {
    /// 0.0 to 10.0, one decimal.
    pub score: f64,
    pub rating: &'static str,
    pub capabilities: usize,
    /// The escape-relevant capabilities in the set.
    pub escape: Vec<Cap>,
}

/// The exposure of a workload granted `caps`.
pub fn exposure(caps: &[Cap]) -> Exposure {
    let mut caps = caps.to_vec();
    caps.sort();
    caps.dedup();
    let safe: f64 = caps
        .iter()
        .map(|c| 1.0 - f64::from(catalogue::entry(*c).weight) / 100.0)
        .product();
    let score = (100.0 * (1.0 - safe)).round() / 10.0;
    Exposure {
        score,
        rating: rating(score),
        capabilities: caps.len(),
        escape: caps
            .iter()
            .copied()
            .filter(|c| catalogue::entry(*c).escape)
            .collect(),
    }
}

fn rating(score: f64) -> &'static str {
    match score {
        s if s <= 0.0 => "SAFE",
        s if s < 2.0 => "OK",
        s if s < 5.0 => "MEDIUM",
        s if s < 8.0 => "EXPOSED",
        _ => "UNSAFE",
    }
}

/// A Pod Security Standards level, most to least strict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Restricted,
    Baseline,
    Privileged,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Restricted => "restricted",
            Level::Baseline => "baseline",
            Level::Privileged => "privileged",
        }
    }
}

/// The strictest level a container's capabilities meet, and why not a
/// stricter one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodSecurity {
    pub level: Level,
    /// What the spec adds, and whether it drops ALL.
    pub add: Vec<Cap>,
    pub drops_all: bool,
    /// Why the next stricter level is out of reach; empty at `restricted`.
    pub blockers: Vec<String>,
}

/// The verdict for a container spec that adds `add` and, if `drops_all`,
/// drops ALL first.
pub fn pod_security(add: &[Cap], drops_all: bool) -> PodSecurity {
    let outside = |allowed: &[&str]| -> Vec<Cap> {
        add.iter()
            .copied()
            .filter(|c| !allowed.contains(&c.short_name()))
            .collect()
    };
    let names = |caps: &[Cap]| {
        caps.iter()
            .map(|c| c.short_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let beyond_baseline = outside(&BASELINE_ADD);
    let beyond_restricted = outside(&RESTRICTED_ADD);
    let mut blockers = vec![];
    let level = if !beyond_baseline.is_empty() {
        blockers.push(format!(
            "baseline forbids adding {}",
            names(&beyond_baseline)
        ));
        Level::Privileged
    } else if !drops_all || !beyond_restricted.is_empty() {
        if !drops_all {
            blockers.push("restricted requires capabilities.drop: [ALL]".to_owned());
        }
        if !beyond_restricted.is_empty() {
            blockers.push(format!(
                "restricted allows adding only NET_BIND_SERVICE, not {}",
                names(&beyond_restricted)
            ));
        }
        Level::Baseline
    } else {
        Level::Restricted
    };
    PodSecurity {
        level,
        add: add.to_vec(),
        drops_all,
        blockers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Runtime;

    fn caps(names: &[&str]) -> Vec<Cap> {
        names.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn exposure_grows_with_each_capability_and_escapes_dominate() {
        assert_eq!(exposure(&[]).score, 0.0);
        assert_eq!(exposure(&[]).rating, "SAFE");
        assert_eq!(exposure(&caps(&["NET_BIND_SERVICE"])).score, 0.1);
        let docker = exposure(&Runtime::Docker.default_caps());
        assert_eq!(docker.capabilities, 14);
        assert_eq!(docker.score, 6.4);
        assert_eq!(docker.rating, "EXPOSED");
        assert!(docker.escape.is_empty());
        let admin = exposure(&caps(&["SYS_ADMIN"]));
        assert_eq!(admin.rating, "UNSAFE");
        assert!(admin.score > docker.score);
        assert_eq!(admin.escape, caps(&["SYS_ADMIN"]));
        let all: Vec<Cap> = Cap::all().collect();
        assert_eq!(exposure(&all).score, 10.0);
        // Monotone: adding a capability never lowers the score.
        let mut set = vec![];
        let mut last = 0.0;
        for cap in Cap::all() {
            set.push(cap);
            let s = exposure(&set).score;
            assert!(s >= last, "{cap}: {s} < {last}");
            last = s;
        }
        // Duplicates count once.
        assert_eq!(
            exposure(&caps(&["CHOWN", "CHOWN"])),
            exposure(&caps(&["CHOWN"]))
        );
    }

    #[test]
    fn pod_security_levels() {
        let docker_default = pod_security(&[], false);
        assert_eq!(docker_default.level, Level::Baseline);
        assert_eq!(
            docker_default.blockers,
            ["restricted requires capabilities.drop: [ALL]"]
        );
        assert_eq!(pod_security(&[], true).level, Level::Restricted);
        assert_eq!(
            pod_security(&caps(&["NET_BIND_SERVICE"]), true).level,
            Level::Restricted
        );
        let chown = pod_security(&caps(&["CHOWN", "NET_BIND_SERVICE"]), true);
        assert_eq!(chown.level, Level::Baseline);
        assert_eq!(
            chown.blockers,
            ["restricted allows adding only NET_BIND_SERVICE, not CHOWN"]
        );
        let raw = pod_security(&caps(&["NET_RAW", "SYS_ADMIN", "CHOWN"]), true);
        assert_eq!(raw.level, Level::Privileged);
        assert_eq!(raw.blockers, ["baseline forbids adding NET_RAW, SYS_ADMIN"]);
        // Docker's defaults are baseline's 13 plus NET_RAW.
        let docker = Runtime::Docker.default_caps();
        assert_eq!(docker.len(), BASELINE_ADD.len() + 1);
        for name in BASELINE_ADD {
            assert!(docker.contains(&name.parse().unwrap()), "{name}");
        }
    }
}
