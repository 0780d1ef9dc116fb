//! The containers × capabilities matrix: for each profile and each
//! capability any of them saw, the class it was reported under and how
//! many checks it took.
//!
//! Classes are handled by name (`required`, `borrowed`, …), as they are
//! written in profiles, through one table, [`CLASSES`]: a new class is one
//! line there. A class this build has no line for is still shown, in a
//! neutral style, under its own name.

use serde::Serialize;

use crate::{
    capability::Cap,
    profile::{CapUsage, Profile},
};

/// How the report shows one class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassStyle {
    /// As written in profiles.
    pub key: &'static str,
    /// One or two letters for a matrix cell.
    pub short: &'static str,
    /// The cell's colour at full strength.
    pub colour: &'static str,
    /// What it means, for the legend.
    pub meaning: &'static str,
}

/// The key of checks the runtime made while setting a container up.
pub const SETUP: &str = "setup";

/// Every class the report knows, in legend order. One line per class.
#[rustfmt::skip]
pub const CLASSES: &[ClassStyle] = &[
    ClassStyle { key: "required", short: "R", colour: "#1d4ed8", meaning: "audited and granted: the workload needs it (allowlist)" },
    ClassStyle { key: "silent", short: "S", colour: "#7c3aed", meaning: "NOAUDIT check that can gate an operation (allowlist when granted)" },
    ClassStyle { key: "kept", short: "K", colour: "#be185d", meaning: "kept through capset for later use (allowlist)" },
    ClassStyle { key: "conditional", short: "C", colour: "#0f766e", meaning: "needed only where the runtime does not relax a sysctl" },
    ClassStyle { key: "denied", short: "D", colour: "#dc2626", meaning: "audited and refused: wanted, not granted" },
    ClassStyle { key: "ungrantable", short: "U", colour: "#111827", meaning: "targets an ancestor user namespace: no --cap-add can grant it" },
    ClassStyle { key: "borrowed", short: "B", colour: "#b45309", meaning: "made with the mounter's credentials (overlayfs copy-up): not the workload's" },
    ClassStyle { key: "advisory", short: "A", colour: "#6b7280", meaning: "NOAUDIT probe that decides nothing (mmap's SYS_ADMIN)" },
    ClassStyle { key: SETUP, short: "rt", colour: "#a8a29e", meaning: "runtime setup only: runc's checks before the workload's exec" },
];

/// The style of a class this build does not know.
const UNKNOWN: ClassStyle = ClassStyle {
    key: "unknown",
    short: "?",
    colour: "#4b5563",
    meaning: "a class this version of capprof does not know",
};

/// What a cell's count counts for the class named `key`.
pub fn unit(key: &str, count: u64) -> &'static str {
    match (key, count) {
        ("kept" | "conditional", 1) => "operation",
        ("kept" | "conditional", _) => "operations",
        (_, 1) => "check",
        _ => "checks",
    }
}

/// The style of the class named `key`.
pub fn style(key: &str) -> &'static ClassStyle {
    CLASSES.iter().find(|c| c.key == key).unwrap_or(&UNKNOWN)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub class: String,
    /// Checks of that class (all checks for runtime setup; the operations
    /// seen for kept and conditional, which make no check).
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatrixRow {
    pub label: String,
    /// One per column; `None` where the capability was not seen.
    pub cells: Vec<Option<Cell>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// The columns: every capability some profile saw, by number.
    pub capabilities: Vec<Cap>,
    pub rows: Vec<MatrixRow>,
}

/// The cells of one profile: its workload capabilities under their class,
/// the lists that are not checks (kept through capset, conditional on a
/// sysctl) and the ungrantable ones, then what only runtime setup used. A
/// new list in profiles is one more line here.
///
/// A capability has one cell, under the class that says most about what to
/// do with it: a check that puts it on the allowlist (required, silent)
/// first; then kept (on the allowlist without such a check); ungrantable
/// (no --cap-add helps); conditional (needed where a sysctl is not
/// relaxed); then what the check itself was.
pub(crate) fn cells(profile: &Profile) -> Vec<(Cap, Cell)> {
    let mut out: Vec<(Cap, Cell)> = profile.capabilities.iter().map(workload_cell).collect();
    let mut overlay =
        |cap: Cap, class: &str, count: u64| match out.iter_mut().find(|(c, _)| *c == cap) {
            Some((_, cell)) => {
                if !matches!(cell.class.as_str(), "required" | "silent") {
                    cell.class = class.to_owned();
                }
            }
            None => out.push((
                cap,
                Cell {
                    class: class.to_owned(),
                    count,
                },
            )),
        };
    // Least telling first: each later one wins over the earlier.
    for c in &profile.conditional {
        overlay(c.capability, "conditional", c.evidence.len() as u64);
    }
    for &cap in &profile.ungrantable {
        overlay(cap, "ungrantable", 0);
    }
    for k in &profile.kept {
        overlay(k.capability, "kept", k.evidence.len() as u64);
    }
    for usage in &profile.runtime_setup {
        if !out.iter().any(|(cap, _)| *cap == usage.name) {
            out.push((
                usage.name,
                Cell {
                    class: SETUP.to_owned(),
                    count: usage.granted.saturating_add(usage.denied),
                },
            ));
        }
    }
    out
}

fn workload_cell(usage: &CapUsage) -> (Cap, Cell) {
    let count = usage
        .by_class
        .get(&usage.class)
        .copied()
        .unwrap_or(usage.granted + usage.denied);
    (
        usage.name,
        Cell {
            class: usage.class.as_str().to_owned(),
            count,
        },
    )
}

/// The matrix of `profiles`, one row each, labelled by `labels`.
pub fn matrix<'a>(profiles: impl Iterator<Item = (&'a str, &'a Profile)>) -> Matrix {
    let rows: Vec<(String, Vec<(Cap, Cell)>)> = profiles
        .map(|(label, p)| (label.to_owned(), cells(p)))
        .collect();
    let mut capabilities: Vec<Cap> = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(|(cap, _)| *cap))
        .collect();
    capabilities.sort();
    capabilities.dedup();
    let rows = rows
        .into_iter()
        .map(|(label, mut cells)| {
            cells.sort_by_key(|(cap, _)| *cap);
            let mut iter = cells.into_iter().peekable();
            let cells = capabilities
                .iter()
                .map(|cap| iter.next_if(|(c, _)| c == cap).map(|(_, cell)| cell))
                .collect();
            MatrixRow { label, cells }
        })
        .collect();
    Matrix { capabilities, rows }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Class;

    #[test]
    fn every_class_of_this_build_has_a_style() {
        for class in [
            Class::Required,
            Class::Denied,
            Class::Silent,
            Class::Advisory,
        ] {
            let key = class.as_str().to_owned();
            assert_eq!(style(&key).key, key, "{class:?}");
        }
        // The classes other work is adding are ready.
        for key in ["borrowed", "conditional", "kept", "ungrantable", SETUP] {
            assert_eq!(style(key).key, key);
        }
        assert_eq!(style("teleported").key, "unknown");
        let mut shorts: Vec<&str> = CLASSES.iter().map(|c| c.short).collect();
        shorts.sort();
        shorts.dedup();
        assert_eq!(shorts.len(), CLASSES.len(), "short names are distinct");
    }
}
