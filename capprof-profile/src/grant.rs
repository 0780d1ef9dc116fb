//! What every export target grants for a profile, and the comment lines
//! it writes about that: the allowlist plus the conditional capabilities
//! the target's sysctls call for, and why. `export` (one runtime's flags or
//! manifest) and `k8s_patch` (a patch for many containers) both build on
//! this, so neither depends on the other's rendering.

use serde::Serialize;

use crate::{
    capability::Cap,
    conditional::{self, Decision, SysctlSetting, TargetSysctls},
    profile::{Class, Profile},
};

/// The conditional capabilities `target` needs beyond the allowlist.
pub fn decide(profile: &Profile, target: &TargetSysctls) -> Decision {
    conditional::decide(&profile.conditional, &profile.allowlist, target)
}

/// The allowlist plus the conditional capabilities `decision` adds, sorted
/// by number: what every format grants.
pub fn grant(profile: &Profile, decision: &Decision) -> Vec<Cap> {
    let mut grant = profile.allowlist.clone();
    grant.extend(decision.added_caps());
    grant.sort();
    grant.dedup();
    grant
}

/// One line per conditional capability added or left out, per sysctl to
/// relax, and per
/// capability on the allowlist only because a capset() kept it.
pub fn notes(profile: &Profile, decision: &Decision) -> Vec<String> {
    let exercised: Vec<Cap> = profile
        .capabilities
        .iter()
        .filter(|u| u.class != Class::Advisory && u.granted > 0)
        .map(|u| u.name)
        .collect();
    let added = decision
        .added
        .iter()
        .map(|(cap, why)| format!("{cap} added: {why}"));
    let left_out = decision
        .left_out
        .iter()
        .map(|(cap, why)| format!("{cap} left out: {why}"));
    let relax = decision
        .relax
        .iter()
        .map(|s| format!("{} set to {}: {}", s.sysctl().name(), s.value, s.why));
    added
        .chain(left_out)
        .chain(relax)
        .chain(
            conditional::kept_only(&profile.kept, &exercised)
                .into_iter()
                .map(|(_, why)| why),
        )
        .collect()
}

/// A `# capprof: …` comment line naming the subject, then one per note.
/// Both come from the profile, which is untrusted: control characters (a
/// newline would end the comment and inject configuration) are replaced and
/// the length is bounded.
pub fn header(profile: &Profile, notes: &[String]) -> String {
    const MAX_CHARS: usize = 120;
    let subject = &profile.subject;
    let label = [
        subject.name.clone(),
        subject.command.as_ref().map(|argv| argv.join(" ")),
        subject.id.clone(),
    ]
    .into_iter()
    .flatten()
    .find(|s| !s.trim().is_empty())
    .unwrap_or_else(|| "unnamed subject".to_owned());
    let clean = crate::text::line(&label, MAX_CHARS);
    let n = profile.allowlist.len();
    let plural = if n == 1 { "capability" } else { "capabilities" };
    let mut out = match &profile.proof {
        Some(proof) if proof.sufficient => {
            // The proof's fields are untrusted too.
            let how = crate::text::line(
                &format!(
                    "{}, {} run(s) per set, {}",
                    proof.method, proof.runs, proof.engine
                ),
                MAX_CHARS,
            );
            format!("# capprof: {n} {plural} proven sufficient for {clean} ({how})\n")
        }
        _ => format!("# capprof: {n} {plural} observed in use by {clean}\n"),
    };
    for note in notes {
        let clean = crate::text::line(note, 4 * MAX_CHARS);
        out.push_str(&format!("# capprof: {clean}\n"));
    }
    out
}

/// A pod's `securityContext` as the Kubernetes exports write it: only
/// the sysctls a caller needs relaxed.
#[derive(Serialize)]
pub(crate) struct K8sPodSecurityContext {
    pub(crate) sysctls: Vec<K8sSysctl>,
}

/// One of a pod's `securityContext.sysctls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct K8sSysctl {
    pub(crate) name: &'static str,
    pub(crate) value: String,
}

impl K8sSysctl {
    pub(crate) fn of(s: &SysctlSetting) -> Self {
        Self {
            name: s.sysctl().name(),
            value: s.value.to_string(),
        }
    }
}
