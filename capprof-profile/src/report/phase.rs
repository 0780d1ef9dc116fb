//! Start-up or steady state: was a capability used only while the workload
//! started?
//!
//! The rule, with a start-up window `W` (10 s unless `--startup-window`
//! says otherwise), measured from `observation.start`:
//!
//! - **startup-only**: its last check came within the first `W` seconds,
//!   and the observation then went on for at least `W` more seconds without
//!   another (`last_seen ≤ start + W` and `end ≥ start + 2W`);
//! - **steady**: it was checked after the first `W` seconds;
//! - **unknown** when the rule cannot tell: the observation lasted less
//!   than `2W`, a time is missing, or the workload's start was not seen (a
//!   container profile without runtime-setup checks was recorded after the
//!   container started, so its first checks are not its start-up).
//!
//! A start-up-only capability can be dropped once start-up is done: in the
//! entrypoint, after the start-up steps, or by moving those steps into an
//! initContainer. Observation cannot prove that the capability is never
//! needed later; `capprof verify` can.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    capability::Cap,
    profile::{Profile, SubjectKind},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUsed {
    StartupOnly,
    Steady,
    Unknown,
}

impl WhenUsed {
    pub fn label(self) -> &'static str {
        match self {
            WhenUsed::StartupOnly => "start-up only",
            WhenUsed::Steady => "steady",
            WhenUsed::Unknown => "unknown",
        }
    }
}

/// The phase of each workload capability of `profile`, and why all are
/// unknown when the rule cannot apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Phases {
    pub window_seconds: u64,
    pub by_cap: BTreeMap<Cap, WhenUsed>,
    /// Set when the rule could not apply to this profile at all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_because: Option<String>,
}

impl Phases {
    pub fn of(&self, cap: Cap) -> WhenUsed {
        self.by_cap.get(&cap).copied().unwrap_or(WhenUsed::Unknown)
    }
}

fn parse(t: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(t).ok()
}

pub fn phases(profile: &Profile, window: Duration) -> Phases {
    let mut out = Phases {
        window_seconds: window.as_secs(),
        by_cap: profile
            .capabilities
            .iter()
            .map(|u| (u.name, WhenUsed::Unknown))
            .collect(),
        unknown_because: None,
    };
    let obs = &profile.observation;
    let (Some(start), Some(end)) = (parse(&obs.start), parse(&obs.end)) else {
        out.unknown_because = Some("the observation has no start or end time".to_owned());
        return out;
    };
    if profile.subject.kind == SubjectKind::Container && profile.runtime_setup.is_empty() {
        out.unknown_because = Some(
            "the container's start was not observed (no runtime setup checks): it was already running"
                .to_owned(),
        );
        return out;
    }
    let lasted = end.duration_since(start).unwrap_or_default();
    if lasted < window * 2 {
        out.unknown_because = Some(format!(
            "observed for {:.1} s, less than twice the {} s start-up window",
            lasted.as_secs_f64(),
            window.as_secs()
        ));
        return out;
    }
    for usage in &profile.capabilities {
        let phase = match parse(&usage.last_seen) {
            Some(last) if last.duration_since(start).unwrap_or_default() <= window => {
                WhenUsed::StartupOnly
            }
            Some(_) => WhenUsed::Steady,
            None => WhenUsed::Unknown,
        };
        out.by_cap.insert(usage.name, phase);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        observation::{Kind, Phase as CheckPhase, Verdict},
        profile::{Observation, Observations, Subject, rfc3339},
    };

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    const T0: u64 = 1_700_000_000;

    /// Checks at `(capability, first, last)` seconds after T0, observed
    /// from T0 for `lasted` seconds.
    fn profile(kind_: &str, setup: bool, lasted: u64, checks: &[(&str, u64, u64)]) -> Profile {
        let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + s);
        let mut obs = Observations::default();
        for (c, first, last) in checks {
            let c = cap(c);
            obs.add_count(
                c,
                (Verdict::Granted, Kind::Audit, CheckPhase::Workload),
                1,
                (at(*first), at(*last)),
            );
        }
        if setup {
            obs.add_count(
                cap("SETPCAP"),
                (Verdict::Granted, Kind::Audit, CheckPhase::Setup),
                1,
                (at(0), at(0)),
            );
        }
        obs.into_profile(
            Subject {
                kind: kind_.into(),
                ..Default::default()
            },
            Observation {
                start: rfc3339(at(0)),
                end: rfc3339(at(lasted)),
                ..Default::default()
            },
        )
    }

    #[test]
    fn startup_only_needs_a_long_enough_observation() {
        let checks = [
            ("CHOWN", 1, 3),
            ("SETUID", 1, 10),
            ("KILL", 2, 11),
            ("MKNOD", 30, 30),
        ];
        let p = profile("command", false, 40, &checks);
        let phases = phases(&p, Duration::from_secs(10));
        assert_eq!(phases.unknown_because, None);
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::StartupOnly);
        assert_eq!(
            phases.of(cap("SETUID")),
            WhenUsed::StartupOnly,
            "the window's edge is in"
        );
        assert_eq!(phases.of(cap("KILL")), WhenUsed::Steady);
        assert_eq!(phases.of(cap("MKNOD")), WhenUsed::Steady);
        assert_eq!(phases.of(cap("NET_RAW")), WhenUsed::Unknown, "not seen");

        // 19 s is less than twice the window: nothing can be said.
        let short = profile("command", false, 19, &checks);
        let phases = super::phases(&short, Duration::from_secs(10));
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::Unknown);
        assert!(phases.unknown_because.unwrap().contains("less than twice"));
        // A shorter window decides it.
        let phases = super::phases(&short, Duration::from_secs(5));
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::StartupOnly);
        assert_eq!(phases.of(cap("SETUID")), WhenUsed::Steady);
    }

    #[test]
    fn a_container_whose_start_was_not_seen_is_unknown() {
        let checks = [("CHOWN", 1, 1)];
        let late = profile("container", false, 60, &checks);
        let phases = phases(&late, Duration::from_secs(10));
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::Unknown);
        assert!(phases.unknown_because.unwrap().contains("already running"));
        let from_start = profile("container", true, 60, &checks);
        let phases = super::phases(&from_start, Duration::from_secs(10));
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::StartupOnly);

        let mut no_times = from_start.clone();
        no_times.observation.start.clear();
        let phases = super::phases(&no_times, Duration::from_secs(10));
        assert_eq!(phases.of(cap("CHOWN")), WhenUsed::Unknown);
    }
}
