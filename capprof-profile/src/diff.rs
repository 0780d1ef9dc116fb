//! A new observation against a committed baseline profile: the CI gate.
//!
//! Rows are keyed by capability and class only, never by a pid or a time,
//! so the same workload gives the same diff run after run. What decides:
//!
//! - **regression**: NEW needs a capability BASELINE's allowlist does not
//!   grant. That is a capability on NEW's allowlist, or one NEW was refused
//!   (`denied`) that BASELINE neither grants nor was refused itself: a
//!   workload run under the baseline's allowlist shows a new need as a
//!   refusal. Listed with NEW's evidence; the gate fails (exit 3).
//! - **could drop**: on BASELINE's allowlist, not needed by NEW. Listed;
//!   the gate passes. One run seldom exercises everything, so this is a
//!   hint, not a verdict.
//! - **kept**: on both allowlists.
//! - anything else (advisory checks, refusals both saw, runtime setup) is
//!   shown for context and decides nothing.

use serde::Serialize;

use crate::{
    capability::Cap,
    caveat::Caveat,
    profile::{CapUsage, Profile},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Regression,
    CouldDrop,
    Kept,
    /// On neither allowlist: context only.
    Unchanged,
}

impl Change {
    pub fn label(self) -> &'static str {
        match self {
            Change::Regression => "regression",
            Change::CouldDrop => "could drop",
            Change::Kept => "kept",
            Change::Unchanged => "-",
        }
    }
}

/// One piece of NEW's evidence, without the pid: stable across runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct StableEvidence {
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_site: Option<String>,
    pub uid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffRow {
    /// `CAP_NET_RAW:required`: NEW's class, else BASELINE's.
    pub key: String,
    pub capability: Cap,
    /// The class in BASELINE, when it saw the capability.
    pub baseline: Option<String>,
    /// The class in NEW, when it saw the capability.
    pub new: Option<String>,
    pub change: Change,
    /// Why a regression is one: `needed` or `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// NEW's evidence, for regressions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<StableEvidence>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub baseline: String,
    pub new: String,
    /// `ok` or `regression`.
    pub verdict: &'static str,
    pub regressions: Vec<Cap>,
    pub could_drop: Vec<Cap>,
    /// Every capability either profile saw, by number.
    pub rows: Vec<DiffRow>,
    /// What limits the comparison (a blind backend, an empty observation).
    pub notes: Vec<String>,
}

impl Diff {
    pub fn is_regression(&self) -> bool {
        !self.regressions.is_empty()
    }

    /// The last line of the table.
    pub fn summary(&self) -> String {
        let names = |caps: &[Cap]| {
            caps.iter()
                .map(Cap::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let drop = if self.could_drop.is_empty() {
            String::new()
        } else {
            format!(
                "; could drop {}: {}",
                self.could_drop.len(),
                names(&self.could_drop)
            )
        };
        if self.is_regression() {
            format!(
                "regression: {} needs {} capabilit{} {} does not grant: {}{drop}",
                self.new,
                self.regressions.len(),
                if self.regressions.len() == 1 {
                    "y"
                } else {
                    "ies"
                },
                self.baseline,
                names(&self.regressions)
            )
        } else {
            format!(
                "ok: {} needs nothing beyond {}{drop}",
                self.new, self.baseline
            )
        }
    }
}

/// Compares NEW with BASELINE (the names are for messages only).
pub fn diff(baseline_name: &str, baseline: &Profile, new_name: &str, new: &Profile) -> Diff {
    let find = |p: &Profile, cap: Cap| -> Option<CapUsage> {
        p.capabilities.iter().find(|u| u.name == cap).cloned()
    };
    let mut caps: Vec<Cap> = baseline
        .capabilities
        .iter()
        .chain(&new.capabilities)
        .map(|u| u.name)
        .collect();
    caps.sort();
    caps.dedup();

    let mut rows = vec![];
    for cap in caps {
        let before = find(baseline, cap);
        let after = find(new, cap);
        let granted = baseline.allowlist.contains(&cap);
        let needed = new.allowlist.contains(&cap);
        let newly_refused =
            new.denied.contains(&cap) && !granted && !baseline.denied.contains(&cap);
        let (change, reason) = if needed && !granted {
            (Change::Regression, Some("needed"))
        } else if newly_refused {
            (Change::Regression, Some("refused"))
        } else if granted && needed {
            (Change::Kept, None)
        } else if granted {
            (Change::CouldDrop, None)
        } else {
            (Change::Unchanged, None)
        };
        let evidence = match (&after, change) {
            (Some(usage), Change::Regression) => stable_evidence(usage),
            _ => vec![],
        };
        let class_of = |u: &Option<CapUsage>| u.as_ref().map(|u| u.class.as_str().to_owned());
        let key_class = class_of(&after).or_else(|| class_of(&before));
        rows.push(DiffRow {
            key: format!("{cap}:{}", key_class.clone().unwrap_or_default()),
            capability: cap,
            baseline: class_of(&before),
            new: class_of(&after),
            change,
            reason,
            evidence,
        });
    }
    let pick = |change: Change| -> Vec<Cap> {
        rows.iter()
            .filter(|r| r.change == change)
            .map(|r| r.capability)
            .collect()
    };
    let regressions = pick(Change::Regression);
    let could_drop = pick(Change::CouldDrop);
    Diff {
        baseline: baseline_name.to_owned(),
        new: new_name.to_owned(),
        verdict: if regressions.is_empty() {
            "ok"
        } else {
            "regression"
        },
        regressions,
        could_drop,
        rows,
        notes: notes(baseline_name, baseline, new_name, new),
    }
}

fn stable_evidence(usage: &CapUsage) -> Vec<StableEvidence> {
    let mut out: Vec<StableEvidence> = usage
        .evidence
        .iter()
        .map(|e| StableEvidence {
            comm: e.comm.clone(),
            exe: e.exe.clone(),
            syscall: e.syscall.clone(),
            call_site: e.call_site.clone(),
            uid: e.uid,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn notes(baseline_name: &str, baseline: &Profile, new_name: &str, new: &Profile) -> Vec<String> {
    let mut notes = vec![];
    if new.capabilities.is_empty() {
        notes.push(format!(
            "{new_name} saw no capability checks at all: was the workload run under capprof?"
        ));
    }
    // What makes either side's lists incomplete or uncertain; refusals are
    // the diff's own subject.
    for (name, p) in [(baseline_name, baseline), (new_name, new)] {
        for caveat in Caveat::of(p).into_iter().filter(|c| {
            matches!(
                c,
                Caveat::Unobservable { .. } | Caveat::Partial { .. } | Caveat::Uncalibrated
            )
        }) {
            notes.push(format!("{name}: {caveat}"));
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::{
        observation::{Kind, Phase},
        profile::{Class, Evidence, Observation, Observations, Subject, Verdict},
    };

    fn cap(s: &str) -> Cap {
        s.parse().unwrap()
    }

    /// `(capability, verdict, kind, pid)`, one check each, at time `t`.
    fn profile(t: u64, checks: &[(&str, Verdict, Kind, u32)]) -> Profile {
        let mut obs = Observations::default();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(t);
        for (c, verdict, k, pid) in checks {
            obs.add_count(cap(c), (*verdict, *k, Phase::Workload), 1, (at, at));
            obs.add_evidence(
                cap(c),
                Phase::Workload,
                Evidence {
                    comm: "app".into(),
                    exe: Some("/usr/bin/app".into()),
                    syscall: Some("socket".into()),
                    pid: *pid,
                    uid: 0,
                    verdict: *verdict,
                    class: Class::of(*k, *verdict),
                    call_site: Some("ns_capable+0x2a".into()),
                    user_ns: Default::default(),
                },
            );
        }
        obs.into_profile(
            Subject {
                kind: "command".into(),
                ..Default::default()
            },
            Observation::default(),
        )
    }

    const G: Verdict = Verdict::Granted;
    const D: Verdict = Verdict::Denied;

    #[test]
    fn nothing_new_passes_and_lists_what_could_drop() {
        let base = profile(
            1,
            &[("CHOWN", G, Kind::Audit, 10), ("MKNOD", G, Kind::Audit, 11)],
        );
        let new = profile(2, &[("CHOWN", G, Kind::Audit, 99)]);
        let d = diff("base.json", &base, "new.json", &new);
        assert!(!d.is_regression());
        assert_eq!(d.verdict, "ok");
        assert_eq!(d.could_drop, [cap("MKNOD")]);
        assert_eq!(
            d.summary(),
            "ok: new.json needs nothing beyond base.json; could drop 1: CAP_MKNOD"
        );
    }

    #[test]
    fn a_new_need_or_a_new_refusal_is_a_regression() {
        let base = profile(
            1,
            &[
                ("CHOWN", G, Kind::Audit, 10),
                ("SYS_RESOURCE", D, Kind::Audit, 10),
            ],
        );
        let new = profile(
            2,
            &[
                ("CHOWN", G, Kind::Audit, 20),
                ("NET_RAW", G, Kind::Audit, 21),
                ("SYS_RESOURCE", D, Kind::Audit, 22),
                ("SYS_NICE", D, Kind::Audit, 23),
                ("SYS_ADMIN", G, Kind::Advisory, 24),
            ],
        );
        let d = diff("base.json", &base, "new.json", &new);
        assert_eq!(d.regressions, [cap("NET_RAW"), cap("SYS_NICE")]);
        assert_eq!(d.verdict, "regression");
        let row = |c: &str| d.rows.iter().find(|r| r.capability == cap(c)).unwrap();
        assert_eq!(row("NET_RAW").reason, Some("needed"));
        assert_eq!(row("NET_RAW").key, "CAP_NET_RAW:required");
        assert_eq!(row("NET_RAW").evidence.len(), 1);
        assert_eq!(
            row("NET_RAW").evidence[0].syscall.as_deref(),
            Some("socket")
        );
        assert_eq!(row("SYS_NICE").reason, Some("refused"));
        // Refused in both: not new.
        assert_eq!(row("SYS_RESOURCE").change, Change::Unchanged);
        assert_eq!(row("SYS_ADMIN").change, Change::Unchanged);
        assert_eq!(row("CHOWN").change, Change::Kept);
        assert!(d.summary().starts_with(
            "regression: new.json needs 2 capabilities base.json does not grant: CAP_NET_RAW CAP_SYS_NICE"
        ));
    }

    #[test]
    fn keys_hold_no_pid_or_time() {
        let base = profile(1, &[("CHOWN", G, Kind::Audit, 10)]);
        let one = profile(
            1_000,
            &[("CHOWN", G, Kind::Audit, 20), ("KILL", G, Kind::Audit, 21)],
        );
        let two = profile(
            9_000,
            &[("CHOWN", G, Kind::Audit, 30), ("KILL", G, Kind::Audit, 31)],
        );
        let a = serde_json::to_string(&diff("b", &base, "n", &one)).unwrap();
        let b = serde_json::to_string(&diff("b", &base, "n", &two)).unwrap();
        assert_eq!(
            a, b,
            "the same workload at another time and pid diffs the same"
        );
        assert!(!a.contains("\"pid\""), "{a}");
    }
}
