//! Human-readable tables.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};

use crate::{
    caveat::{Caveat, Severity},
    profile::{CapUsage, Profile},
    text::{Visible, visible},
};

fn evidence_summary(usage: &CapUsage) -> String {
    let mut parts: Vec<String> = usage
        .evidence
        .iter()
        .map(|e| match &e.syscall {
            Some(sc) => format!("{} ({sc})", Visible(&e.comm)),
            None => visible(&e.comm),
        })
        .collect();
    parts.dedup();
    if parts.len() > 3 {
        let more = parts.len() - 3;
        parts.truncate(3);
        parts.push(format!("+{more}"));
    }
    parts.join(", ")
}

fn usage_table(usages: &[CapUsage]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(["CAPABILITY", "CLASS", "GRANTED", "DENIED", "EVIDENCE"]);
    for u in usages {
        table.add_row([
            u.name.to_string(),
            u.class.as_str().to_owned(),
            u.granted.to_string(),
            u.denied.to_string(),
            evidence_summary(u),
        ]);
    }
    table
}

/// The profile as a table plus a one-line summary.
pub fn render_profile(profile: &Profile) -> String {
    let mut out = String::new();
    let names = crate::capability::display_list;
    if profile.capabilities.is_empty() {
        out.push_str("no capability checks observed\n");
    } else {
        out.push_str(&usage_table(&profile.capabilities).to_string());
        out.push('\n');
    }
    if !profile.runtime_setup.is_empty() {
        out.push_str("runtime setup (not part of the allowlist):\n");
        out.push_str(&usage_table(&profile.runtime_setup).to_string());
        out.push('\n');
    }
    out.push_str(&format!("allowlist: {}\n", names(&profile.allowlist)));
    if !profile.denied.is_empty() {
        out.push_str(&format!("denied:    {}\n", names(&profile.denied)));
    }
    for k in &profile.kept {
        let programs: std::collections::BTreeSet<String> =
            k.evidence.iter().map(|e| visible(&e.comm)).collect();
        out.push_str(&format!(
            "kept:      {} through capset() by {}\n",
            k.capability,
            programs.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    // Those a check put on the allowlist anyway need no word here.
    let transient: Vec<_> = profile
        .transient
        .iter()
        .filter(|t| !profile.allowlist.contains(&t.capability))
        .collect();
    if !transient.is_empty() {
        let caps: Vec<_> = transient.iter().map(|t| t.capability).collect();
        let programs: std::collections::BTreeSet<&str> = transient
            .iter()
            .flat_map(|t| t.lost_at_exec_of.iter().map(String::as_str))
            .collect();
        out.push_str(&format!(
            "transient: {} kept through capset() and lost at the exec of {}, never checked \
             (not on the allowlist; minimize tries them)\n",
            names(&caps),
            programs.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    for c in &profile.conditional {
        out.push_str(&format!(
            "conditional: {} for {} ({}={} here; not on the allowlist, exports add it where needed)\n",
            c.capability,
            c.operation,
            c.sysctl.name(),
            c.value
        ));
    }
    if let Some(proof) = &profile.proof {
        out.push_str(&format!("proof:     {}\n", proof.summary()));
    }
    // The rows above say what was denied, and what conditional and
    // transient capabilities are.
    for caveat in Caveat::of(profile).into_iter().filter(|c| {
        !matches!(
            c,
            Caveat::Refused(_) | Caveat::NoChecks | Caveat::Conditional(_) | Caveat::Transient(_)
        )
    }) {
        let label = match caveat.severity() {
            Severity::Warning => "warning",
            Severity::Note => "note",
        };
        out.push_str(&format!("{label}: {caveat}\n"));
    }
    out
}
