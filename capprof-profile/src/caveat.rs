//! What a profile warns about: the ways its allowlist may be too small or
//! too large, or leaves something out on purpose. Each caveat is worded
//! once, here, by its `Display`; every output renders the same words its
//! own way (the text table and `diff` as `warning:` lines, `capprof export`
//! on stderr, the flags header and the Kubernetes patch as comments, the
//! report in its warnings cell, the fleet object as a typed warning), and
//! picks the caveats that matter to its reader.
//!
//! ```
//! use capprof_profile::{caveat::Caveat, profile};
//!
//! let mut profile = profile::build([], [], Default::default(), Default::default());
//! profile.denied = vec!["CAP_NET_ADMIN".parse().unwrap()];
//! let caveats = Caveat::of(&profile);
//! assert!(caveats.contains(&Caveat::NoChecks));
//! assert_eq!(
//!     caveats[0].to_string(),
//!     "the workload was refused CAP_NET_ADMIN: it is not in the allowlist, \
//!      which may be too small",
//! );
//! ```

use std::{collections::BTreeSet, fmt};

use crate::{
    Cap,
    capability::display_list,
    profile::{Class, Partial, Profile},
};

/// How loudly an output says a caveat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The allowlist may be wrong for the workload.
    Warning,
    /// Worth knowing; the allowlist is right for what was seen.
    Note,
}

/// One thing a profile warns about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caveat {
    /// The recording began after `subject` had started: its start-up checks
    /// were not seen.
    Partial { subject: String, partial: Partial },
    /// Capabilities the workload asked for and was refused.
    Refused(Vec<Cap>),
    /// No capability check was seen at all.
    NoChecks,
    /// Classes of checks the backend cannot see.
    Unobservable {
        backend: String,
        classes: Vec<Class>,
    },
    /// Calibration failed: every check counted as audited.
    Uncalibrated,
    /// Checks whose call site was unknown, counted as audited.
    Unclassified(u64),
    /// Evidence records the kernel could not send.
    LostRecords(u64),
    /// Runs of capprof's programs the kernel skipped, on the whole host.
    RecursionMisses(u64),
    /// Asked for in a user namespace above the container's own.
    Ungrantable(Vec<Cap>),
    /// Needed only where a network sysctl keeps the kernel's default.
    Conditional(Vec<Cap>),
    /// Kept through capset() and lost at the next exec, never used.
    Transient(Vec<Cap>),
    /// Checked with credentials that were not the workload's.
    Borrowed(Vec<Cap>),
}

impl Caveat {
    /// Every caveat of `profile`, in a fixed order: what may make the
    /// allowlist too small first.
    pub fn of(profile: &Profile) -> Vec<Caveat> {
        let obs = &profile.observation;
        let caps = |caps: &[Cap]| (!caps.is_empty()).then(|| caps.to_vec());
        let conditional: BTreeSet<Cap> = profile.conditional.iter().map(|c| c.capability).collect();
        let transient: Vec<Cap> = profile.transient.iter().map(|t| t.capability).collect();
        let counted = |n: u64| (n > 0).then_some(n);
        [
            Self::partial(profile),
            caps(&profile.denied).map(Caveat::Refused),
            profile.capabilities.is_empty().then_some(Caveat::NoChecks),
            (!obs.unobservable.is_empty()).then(|| Caveat::Unobservable {
                backend: obs.backend.clone(),
                classes: obs.unobservable.clone(),
            }),
            obs.is_uncalibrated().then_some(Caveat::Uncalibrated),
            counted(obs.unclassified_checks).map(Caveat::Unclassified),
            counted(obs.lost_records).map(Caveat::LostRecords),
            obs.recursion_misses
                .and_then(counted)
                .map(Caveat::RecursionMisses),
            caps(&profile.ungrantable).map(Caveat::Ungrantable),
            caps(&conditional.into_iter().collect::<Vec<_>>()).map(Caveat::Conditional),
            caps(&transient).map(Caveat::Transient),
            caps(&profile.borrowed).map(Caveat::Borrowed),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The partial-recording caveat alone, naming the profile's subject (or
    /// "the workload"); `None` for a complete recording.
    pub fn partial(profile: &Profile) -> Option<Caveat> {
        let subject = profile
            .subject
            .name
            .as_deref()
            .map_or_else(|| "the workload".to_owned(), crate::text::visible);
        profile
            .observation
            .partial
            .clone()
            .map(|partial| Caveat::Partial { subject, partial })
    }

    /// The same caveat naming `subject` instead (a Kubernetes container).
    pub fn naming(self, subject: &str) -> Caveat {
        match self {
            Caveat::Partial { partial, .. } => Caveat::Partial {
                subject: subject.to_owned(),
                partial,
            },
            other => other,
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Caveat::Unobservable { .. }
            | Caveat::Conditional(_)
            | Caveat::Transient(_)
            | Caveat::Borrowed(_) => Severity::Note,
            _ => Severity::Warning,
        }
    }
}

impl fmt::Display for Caveat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caveat::Partial { subject, partial } => write!(
                f,
                "{subject} was already running when recording started ({}recording started \
                 {}): its start-up needs were not seen, and the allowlist may be too small; \
                 record it from its start",
                partial
                    .workload_started
                    .as_deref()
                    .map(|t| format!("it started {t}, "))
                    .unwrap_or_default(),
                partial.recording_started
            ),
            Caveat::Refused(caps) => write!(
                f,
                "the workload was refused {}: {} not in the allowlist, which may be too small",
                display_list(caps),
                if caps.len() == 1 { "it is" } else { "they are" }
            ),
            Caveat::NoChecks => f.write_str("no capability check was seen: the allowlist is empty"),
            Caveat::Unobservable { backend, classes } => {
                let classes: Vec<&str> = classes.iter().map(|c| c.as_str()).collect();
                write!(
                    f,
                    "the {backend} backend cannot see {} checks; those lists are empty whatever \
                     the workload did",
                    classes.join(" or ")
                )
            }
            Caveat::Uncalibrated => f.write_str(
                "the kernel's call sites were not calibrated: every check counted as audited, \
                 so the allowlist may be too large",
            ),
            Caveat::Unclassified(n) => write!(
                f,
                "{n} checks had an unknown call site and counted as audited, so the allowlist \
                 may be too large"
            ),
            Caveat::LostRecords(n) => {
                write!(f, "{n} evidence records were lost (counts are complete)")
            }
            Caveat::RecursionMisses(n) => write!(
                f,
                "the kernel skipped capprof's programs {n} times on this host (recursion \
                 misses): those checks were not counted"
            ),
            Caveat::Ungrantable(caps) => write!(
                f,
                "the workload asked for {} in a user namespace above its own (such as the \
                 host's, under rootless Podman or dockerd --userns-remap); the kernel refuses \
                 that whatever the container holds, and no --cap-add can grant it",
                display_list(caps)
            ),
            Caveat::Conditional(caps) => write!(
                f,
                "{} needed only where the network sysctls keep the kernel's defaults",
                display_list(caps)
            ),
            Caveat::Transient(caps) => write!(
                f,
                "{} kept through capset() and lost at the next exec, never used: not granted",
                display_list(caps)
            ),
            Caveat::Borrowed(caps) => write!(
                f,
                "{} checked with credentials that were not the workload's, such as overlayfs \
                 copy-up's: not part of the allowlist",
                display_list(caps)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        observation::{Count, Kind, Phase, UserNs, Verdict},
        profile::{self, Observation, Subject},
    };

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    /// A profile that saw no check.
    fn empty() -> Profile {
        profile::build([], [], Subject::default(), Observation::default())
    }

    #[test]
    fn a_clean_profile_has_no_caveat() {
        let count = Count {
            cgroup_id: 1,
            cap: cap("CAP_CHOWN"),
            verdict: Verdict::Granted,
            kind: Kind::Audit,
            phase: Phase::Workload,
            user_ns: UserNs::Own,
            count: 1,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
        };
        let observation = Observation {
            classification: "call-site".into(),
            ..Observation::default()
        };
        let profile = profile::build([count], [], Subject::default(), observation);
        assert_eq!(Caveat::of(&profile), []);
    }

    #[test]
    fn each_caveat_comes_once_in_a_fixed_order() {
        let mut profile = empty();
        profile.subject.name = Some("web".into());
        profile.denied = vec![cap("CAP_NET_ADMIN"), cap("CAP_MKNOD")];
        profile.ungrantable = vec![cap("CAP_MKNOD")];
        profile.borrowed = vec![cap("CAP_DAC_OVERRIDE")];
        profile.observation = Observation {
            backend: "lsm".into(),
            classification: "uncalibrated".into(),
            lost_records: 2,
            unclassified_checks: 0,
            recursion_misses: Some(0),
            unobservable: vec![Class::Denied],
            partial: Some(Partial {
                workload_started: None,
                recording_started: "2025-01-01T00:00:00Z".into(),
            }),
            ..Observation::default()
        };
        let caveats = Caveat::of(&profile);
        let kinds: Vec<String> = caveats
            .iter()
            .map(|c| {
                format!("{c:?}")
                    .split([' ', '('])
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Partial",
                "Refused",
                "NoChecks",
                "Unobservable",
                "Uncalibrated",
                "LostRecords",
                "Ungrantable",
                "Borrowed"
            ]
        );
        assert!(
            caveats[0]
                .to_string()
                .starts_with("web was already running")
        );
        assert!(
            caveats[1]
                .to_string()
                .contains("refused CAP_NET_ADMIN CAP_MKNOD: they are not")
        );
        assert_eq!(caveats[3].severity(), Severity::Note);
        assert_eq!(caveats[4].severity(), Severity::Warning);
    }

    #[test]
    fn a_partial_caveat_can_name_another_subject() {
        let mut profile = empty();
        profile.observation.partial = Some(Partial {
            workload_started: Some("2025-01-01T00:00:00Z".into()),
            recording_started: "2025-01-01T00:01:00Z".into(),
        });
        let caveat = Caveat::partial(&profile).unwrap();
        assert!(
            caveat
                .to_string()
                .starts_with("the workload was already running")
        );
        let named = caveat.naming("nginx").to_string();
        assert!(
            named.starts_with(
                "nginx was already running when recording started (it started \
                 2025-01-01T00:00:00Z, recording started 2025-01-01T00:01:00Z)"
            ),
            "{named}"
        );
    }
}
