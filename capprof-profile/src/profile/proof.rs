//! `proof`: what re-running the workload established about a profile's
//! allowlist (`capprof minimize`). A profile with a proof whose
//! `sufficient` is true is *proven*; `export` and the tables say so.
//!
//! A proven allowlist may be smaller than what was observed: that is the
//! point of minimizing. It is never larger than what was observed (the
//! allowlist and the transient capabilities), and it is exactly what the
//! proof kept: `needed`, `kept_security_relevant`, the capabilities of
//! `kept_identity`, and `kept_inconclusive`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::capability::Cap;

/// Most drift entries a proof keeps per capability, and most entries in
/// any of its lists: enough to explain, bounded against untrusted input.
pub const MAX_PROOF_ENTRIES: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// `minimize`.
    pub method: String,
    /// The workload passed every run with exactly the allowlist.
    pub sufficient: bool,
    /// Runs per tried set: a capability counts as unneeded only when every
    /// one of them passed without it.
    pub runs: u32,
    /// Where it ran: `docker 20.10.24`, or `command` for `capprof run`
    /// profiles (re-run with `capprof run --caps` semantics).
    pub engine: String,
    /// When the proof was made (RFC 3339).
    pub at: String,
    /// What decided success: the probe, or the workload's own exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
    /// The allowlist before minimizing.
    #[serde(default)]
    pub observed: Vec<Cap>,
    /// Capabilities the workload failed without.
    #[serde(default)]
    pub needed: Vec<Cap>,
    /// Capabilities every run passed without, with no process more
    /// privileged than in the baseline: removed.
    #[serde(default)]
    pub unneeded: Vec<Cap>,
    /// Security-relevant capabilities, kept without trying (see
    /// `proof::SECURITY_RELEVANT`); empty with `--drop-security-relevant`.
    #[serde(default)]
    pub kept_security_relevant: Vec<Cap>,
    /// Capabilities whose removal let the workload pass, but left a process
    /// more privileged than in the baseline (a privilege drop that failed
    /// quietly): kept.
    #[serde(default)]
    pub kept_identity: Vec<KeptIdentity>,
    /// Capabilities every run passed without, but whose runs showed a
    /// process that could not be compared with the baseline's however
    /// often they were repeated: kept for want of proof, not as needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept_inconclusive: Vec<Cap>,
}

/// One capability kept because, without it, a process ended up with
/// credentials no process of the baseline had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptIdentity {
    pub capability: Cap,
    /// The process, as the chain of command names from the workload's
    /// first process (`httpd/httpd`).
    pub process: String,
    pub pid: u32,
    /// What it held that the baseline's matching processes did not
    /// (`uid 0`, `CapEff CAP_CHOWN`, …).
    pub drift: Vec<String>,
}

impl Proof {
    /// The capabilities this proof keeps, sorted.
    pub fn kept(&self) -> Vec<Cap> {
        let kept: BTreeSet<Cap> = self
            .needed
            .iter()
            .chain(&self.kept_security_relevant)
            .chain(&self.kept_inconclusive)
            .copied()
            .chain(self.kept_identity.iter().map(|k| k.capability))
            .collect();
        kept.into_iter().collect()
    }

    /// Checks a proof read from an untrusted profile against the profile's
    /// allowlist and what was observed.
    pub fn check(&self, allowlist: &[Cap], observed: &[Cap]) -> Result<(), String> {
        let lists = [
            &self.observed,
            &self.needed,
            &self.unneeded,
            &self.kept_security_relevant,
            &self.kept_inconclusive,
        ];
        if lists.iter().any(|l| l.len() > MAX_PROOF_ENTRIES)
            || self.kept_identity.len() > MAX_PROOF_ENTRIES
            || self
                .kept_identity
                .iter()
                .any(|k| k.drift.len() > MAX_PROOF_ENTRIES)
        {
            return Err("proof: too many entries".into());
        }
        let observed: BTreeSet<&Cap> = observed.iter().collect();
        if let Some(extra) = allowlist.iter().find(|c| !observed.contains(c)) {
            return Err(format!(
                "proof: the allowlist grants {extra}, which was never observed"
            ));
        }
        if self.method == "minimize" && self.kept() != allowlist {
            return Err(
                "proof: the allowlist is not what the proof kept (needed, kept_security_relevant, kept_identity, kept_inconclusive)"
                    .into(),
            );
        }
        let unneeded: BTreeSet<&Cap> = self.unneeded.iter().collect();
        if let Some(both) = allowlist.iter().find(|c| unneeded.contains(c)) {
            return Err(format!("proof: {both} is both granted and unneeded"));
        }
        Ok(())
    }

    /// One line for people: `proven sufficient by minimize (3 runs each,
    /// docker 20.10.24, 2026-…)`, or that the proof failed.
    pub fn summary(&self) -> String {
        let verdict = if self.sufficient {
            "proven sufficient"
        } else {
            "NOT proven: the workload failed with this allowlist"
        };
        // The fields come from an untrusted file: no hidden character
        // reaches a terminal.
        let clean = |s: &str| crate::text::line(s, 80);
        format!(
            "{verdict} by {} ({} run{} each, {}, {})",
            clean(&self.method),
            self.runs,
            if self.runs == 1 { "" } else { "s" },
            clean(&self.engine),
            clean(&self.at)
        )
    }
}
