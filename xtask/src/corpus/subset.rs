//! The corpus inside `cargo xtask test`: a rotating subset of the
//! committed entries, one pass each under a fresh daemon, each checked
//! against its committed result (`corpus/results/NAME.json`). The full
//! corpus, two passes per entry, stays with `cargo xtask corpus`.
//!
//! - **Which entries.** Those the last full run found runnable, proven,
//!   serving under their Kubernetes export and stable across its passes,
//!   whose passes took at most `MAX_PASS_SECONDS`. Sorted by name, a window
//!   of `SUBSET` of them moves by `SUBSET` each day (UTC), so that every
//!   such entry is run within a few days. `CAPPROF_CORPUS_SUBSET=a,b,…`
//!   picks them by hand, to re-run a failure.
//! - **What must match.** Everything a pass finds but its time: the
//!   observed allowlist, the classes, the minimal set, the ablation, proven,
//!   the Kubernetes export and whether the server serves with it.
//! - **A difference** is run once more, because a difference that does not
//!   come back is the corpus's "not stable", not a changed result: it is
//!   reported, and fails only when the second pass differs too.

use std::{
    fs,
    path::Path,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use super::{Daemon, EntryResult, entry, image, run::Pass};
use crate::{
    engine::Engine,
    util::{note, step, target_dir, workspace_root},
};

/// Entries per run.
pub const SUBSET: usize = 5;
/// The longest pass (in the committed results) an entry may take to be in
/// the rotation: five such entries keep the stage within minutes.
const MAX_PASS_SECONDS: u64 = 60;

/// Runs `only`, else today's subset. False when an entry's result differs
/// from the committed one twice in a row.
pub fn check(engine: &Engine, capprof: &Path, only: &[String]) -> Result<bool> {
    let root = workspace_root();
    let committed = committed(&root.join("corpus").join("results"))?;
    let names = match std::env::var("CAPPROF_CORPUS_SUBSET") {
        _ if !only.is_empty() => only.to_vec(),
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|s| s.trim().to_owned()).collect()
        }
        _ => rotation(&committed, days_since_epoch()),
    };
    let entries = entry::read_all(&root.join("corpus").join("servers"), &names)?;
    step(format_args!(
        "corpus subset: {} (re-run one with CAPPROF_CORPUS_SUBSET=NAME or cargo xtask corpus --only NAME)",
        names.join(", ")
    ));
    let started = Instant::now();
    let daemon = Daemon::start(engine, capprof)?;
    let scratch = target_dir().join("corpus-subset");
    let mut ok = true;
    for entry in &entries {
        let expected = committed
            .iter()
            .find(|r| r.name == entry.name)
            .and_then(|r| r.passes.first())
            .with_context(|| format!("{}: no committed result to compare with", entry.name))?
            .result();
        let image = image::ensure(engine, entry)?;
        let mut differed = false;
        for attempt in 1..=2 {
            step(format_args!(
                "corpus subset: {} (pass {attempt})",
                entry.name
            ));
            let dir = scratch.join(&entry.name).join(format!("pass{attempt}"));
            let _ = fs::remove_dir_all(&dir);
            let found = Pass {
                engine,
                capprof,
                socket: &daemon.socket,
                entry,
                image: &image,
                dir: dir.clone(),
            }
            .run()
            .result();
            let diff = differences(&expected, &found);
            if diff.is_empty() {
                if differed {
                    note(format_args!(
                        "{}: matched on the second pass: not stable, as the full corpus would say",
                        entry.name
                    ));
                } else {
                    note(format_args!("{}: as committed", entry.name));
                }
                break;
            }
            for line in &diff {
                note(format_args!("{}: {line}", entry.name));
            }
            if differed {
                note(format_args!(
                    "error: {}: differs from corpus/results/{}.json twice (profiles in {})",
                    entry.name,
                    entry.name,
                    dir.display()
                ));
                ok = false;
            }
            differed = true;
        }
    }
    drop(daemon);
    step(format_args!(
        "corpus subset: {} entries in {:.0?}",
        entries.len(),
        started.elapsed()
    ));
    Ok(ok)
}

/// The committed results, sorted by name.
fn committed(dir: &Path) -> Result<Vec<EntryResult>> {
    let mut out = vec![];
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = fs::read_to_string(&path)?;
            let result: EntryResult = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            out.push(result);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Today's window of `SUBSET` eligible entries.
fn rotation(committed: &[EntryResult], day: u64) -> Vec<String> {
    let eligible: Vec<&EntryResult> = committed.iter().filter(|r| eligible(r)).collect();
    if eligible.is_empty() {
        return vec![];
    }
    let start = (day as usize * SUBSET) % eligible.len();
    (0..SUBSET.min(eligible.len()))
        .map(|i| eligible[(start + i) % eligible.len()].name.clone())
        .collect()
}

fn eligible(r: &EntryResult) -> bool {
    r.unrunnable.is_none()
        && r.stable
        && !r.passes.is_empty()
        && r.passes.iter().all(|p| {
            p.proven
                && p.k8s_serves
                && p.failure.is_none()
                && p.seconds.is_some_and(|s| s <= MAX_PASS_SECONDS)
        })
}

fn days_since_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400)
}

/// One line per field that differs.
fn differences(expected: &super::run::Outcome, found: &super::run::Outcome) -> Vec<String> {
    let (e, f) = (
        serde_json::to_value(expected).unwrap_or_default(),
        serde_json::to_value(found).unwrap_or_default(),
    );
    let (Some(e), Some(f)) = (e.as_object(), f.as_object()) else {
        return vec!["cannot compare".to_owned()];
    };
    let mut keys: Vec<&String> = e.keys().chain(f.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| e.get(*k) != f.get(*k))
        .map(|k| {
            format!(
                "{k}: committed {}, found {}",
                e.get(k).map_or("nothing".to_owned(), |v| v.to_string()),
                f.get(k).map_or("nothing".to_owned(), |v| v.to_string())
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::run::Outcome;

    fn result(name: &str, seconds: u64, stable: bool) -> EntryResult {
        EntryResult {
            schema: super::super::SCHEMA.to_owned(),
            name: name.to_owned(),
            about: String::new(),
            category: String::new(),
            package: String::new(),
            version: String::new(),
            ports: vec![],
            unrunnable: None,
            note: None,
            passes: vec![Outcome {
                proven: true,
                k8s_serves: true,
                seconds: Some(seconds),
                ..Outcome::default()
            }],
            stable,
        }
    }

    #[test]
    fn the_window_moves_each_day_over_eligible_entries_only() {
        let all: Vec<EntryResult> = (0..12)
            .map(|i| result(&format!("s{i:02}"), 30, true))
            .chain([result("slow", 300, true), result("unstable", 30, false)])
            .collect();
        let day0 = rotation(&all, 0);
        assert_eq!(day0, ["s00", "s01", "s02", "s03", "s04"]);
        assert_eq!(rotation(&all, 1), ["s05", "s06", "s07", "s08", "s09"]);
        assert_eq!(rotation(&all, 2), ["s10", "s11", "s00", "s01", "s02"]);
        for day in 0..30 {
            let names = rotation(&all, day);
            assert_eq!(names.len(), SUBSET);
            assert!(!names.iter().any(|n| n == "slow" || n == "unstable"));
        }
    }

    #[test]
    fn differences_name_each_field() {
        let a = Outcome {
            minimal: vec!["SETUID".into()],
            proven: true,
            ..Outcome::default()
        };
        let mut b = a.clone();
        assert!(differences(&a, &b).is_empty());
        b.minimal.push("SETGID".into());
        b.k8s_serves = true;
        let d = differences(&a, &b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].starts_with("k8s_serves: committed false, found true"),
            "{d:?}"
        );
        assert!(d[1].contains("minimal"), "{d:?}");
    }
}
