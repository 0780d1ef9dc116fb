//! CORPUS.md, written from the committed results (`corpus/results/`):
//! one row per server, and the headline figures.

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{EntryResult, write_atomically};
use crate::util::note;

/// Docker's default capabilities, without the prefix.
const DOCKER_DEFAULTS: usize = 14;

/// One line for the console.
pub fn one_line(r: &EntryResult) -> String {
    let Some(first) = r.passes.first() else {
        return format!(
            "{}: not run: {}",
            r.name,
            r.unrunnable.as_deref().unwrap_or("?")
        );
    };
    match &first.failure {
        Some(why) => format!("{}: failed: {why}", r.name),
        None => format!(
            "{}: needs {} ({}), k8s export {}, {}",
            r.name,
            list(&first.minimal),
            if first.proven { "proven" } else { "NOT proven" },
            if first.k8s_serves { "serves" } else { "FAILS" },
            if r.stable { "stable" } else { "UNSTABLE" },
        ),
    }
}

fn list(caps: &[String]) -> String {
    if caps.is_empty() {
        return "nothing".to_owned();
    }
    caps.iter()
        .map(|c| c.trim_start_matches("CAP_"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads every result under `out/corpus/results` and writes `out/CORPUS.md`.
pub fn write(out: &Path, servers: &Path, took: Duration) -> Result<()> {
    let dir = out.join("corpus").join("results");
    let mut results = vec![];
    for file in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = file?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let text = fs::read_to_string(&path)?;
            let mut r: EntryResult = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            // The entry's note as it reads now, not as it read when run.
            let entry = servers.join(format!("{}.toml", r.name));
            if let Ok(e) = super::entry::Entry::read(&entry) {
                r.note = e.note;
            }
            results.push(r);
        }
    }
    results.sort_by(|a, b| (&a.category, &a.name).cmp(&(&b.category, &b.name)));
    let mut md = String::new();
    md.push_str(HEADER);
    summary(&mut md, &results);
    let _ = writeln!(
        md,
        "\n## Servers\n\n| server | category | package | version | needs (of Docker's {DOCKER_DEFAULTS}) | minimal set | classes seen | proven | k8s export, port start 1024 | stable | time |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &results {
        row(&mut md, r);
    }
    let notes: Vec<_> = results
        .iter()
        .filter_map(|r| Some((r, r.note.as_ref()?)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for (r, note) in notes {
            let _ = writeln!(md, "- **{}**: {note}", r.name);
        }
    }
    let seconds: u64 = results
        .iter()
        .flat_map(|r| &r.passes)
        .filter_map(|p| p.seconds)
        .sum();
    let _ = writeln!(
        md,
        "\nThe passes took {} minutes in all, one after another, on this 2-core machine \
         (image builds not counted).",
        seconds / 60
    );
    if !took.is_zero() {
        note(format_args!("this run of the corpus took {took:.0?}"));
    }
    write_atomically(&out.join("CORPUS.md"), md.as_bytes())
}

const HEADER: &str = "# The capability corpus\n\n\
Real Debian 12 servers, each installed by apt-get with its package's default configuration and \
users, started as its package starts it, and worked by a real client. Each was recorded under \
`capprof daemon` on overlay2, minimized with `capprof minimize --runs 3`, ablated with \
`capprof verify --ablate --runs 3`, and re-run with exactly its Kubernetes export on Docker with \
the kernel's default `net.ipv4.ip_unprivileged_port_start` (1024). Every entry ran twice. \
Written by `cargo xtask corpus` from `corpus/results/`; the profiles and proofs are under \
`corpus/profiles/` (schema `capprof.corpus/v1`, profiles `capprof.profile/v1`). In the minimal \
set, † marks a capability the server used that `minimize` keeps without trying, as \
security-relevant (its loss can leave a server running but less safe). The `capprof report` of \
every proven profile is [corpus/report.html](corpus/report.html). Images are built with \
`--no-install-recommends`; an entry lists what its unit needs beyond that.\n\n";

fn summary(md: &mut String, results: &[EntryResult]) {
    let ran: Vec<_> = results
        .iter()
        .filter_map(|r| {
            r.passes
                .first()
                .filter(|p| p.failure.is_none())
                .map(|p| (r, p))
        })
        .collect();
    let mut needed: Vec<usize> = ran.iter().map(|(_, p)| p.minimal.len()).collect();
    needed.sort_unstable();
    let median = needed.get(needed.len() / 2).copied().unwrap_or(0);
    let none = needed.iter().filter(|n| **n == 0).count();
    let mut by_cap: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p) in &ran {
        for c in &p.minimal {
            *by_cap.entry(c.trim_start_matches("CAP_")).or_default() += 1;
        }
    }
    let mut top: Vec<_> = by_cap.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let conditional = ran
        .iter()
        .filter(|(_, p)| p.classes.iter().any(|c| c == "conditional"))
        .count();
    let kept = ran
        .iter()
        .filter(|(_, p)| p.classes.iter().any(|c| c == "kept"))
        .count();
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "- Servers: {} listed, {} ran.",
        results.len(),
        ran.len()
    );
    let _ = writeln!(
        md,
        "- Median needed: {median} of Docker's {DOCKER_DEFAULTS}; {none} need none at all."
    );
    let _ = writeln!(
        md,
        "- Most needed: {}.",
        top.iter()
            .take(6)
            .map(|(c, n)| format!("{c} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "- {conditional} would break under Kubernetes' default sysctl without a conditional capability."
    );
    let _ = writeln!(md, "- {kept} need a capability kept through capset().");
    let unproven = ran.iter().filter(|(_, p)| !p.proven).count();
    let k8s_fails = ran.iter().filter(|(_, p)| !p.k8s_serves).count();
    let unstable = ran.iter().filter(|(r, _)| !r.stable).count();
    let _ = writeln!(
        md,
        "- Not proven minimal: {unproven}; Kubernetes export fails: {k8s_fails}; differ between runs: {unstable}."
    );
}

/// The minimal set, a capability kept untried as security-relevant marked
/// with a dagger, one left inconclusive with a question mark.
fn marked(p: &super::run::Outcome) -> String {
    if p.minimal.is_empty() {
        return "nothing".to_owned();
    }
    p.minimal
        .iter()
        .map(|c| {
            let verdict = p
                .ablation
                .iter()
                .find(|(a, _)| a == c)
                .map(|(_, v)| v.as_str());
            let mark = match verdict {
                Some("kept (security-relevant)") => "†",
                Some(v) if v.starts_with("kept") => "?",
                _ => "",
            };
            format!("{}{mark}", c.trim_start_matches("CAP_"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn row(md: &mut String, r: &EntryResult) {
    let Some(p) = r.passes.first() else {
        let _ = writeln!(
            md,
            "| {} | {} | {} | | not run: {} | | | | | | |",
            r.name,
            r.category,
            r.package,
            r.unrunnable.as_deref().unwrap_or("")
        );
        return;
    };
    if let Some(why) = &p.failure {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | failed: {} | | | | | | |",
            r.name,
            r.category,
            r.package,
            r.version,
            why.replace('|', "\\|")
        );
        return;
    }
    let _ = writeln!(
        md,
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} s |",
        r.name,
        r.category,
        r.package,
        r.version,
        p.minimal.len(),
        marked(p),
        if p.classes.is_empty() {
            "-".to_owned()
        } else {
            p.classes.join(", ")
        },
        if p.proven { "yes" } else { "no" },
        if p.k8s_serves && !p.k8s_sysctls.is_empty() {
            format!(
                "serves (adds {}; pod sysctl {})",
                list(&p.k8s_add),
                p.k8s_sysctls.join(", ")
            )
        } else if p.k8s_serves {
            format!("serves (adds {})", list(&p.k8s_add))
        } else {
            "fails".to_owned()
        },
        if r.stable { "yes" } else { "no" },
        r.passes.iter().filter_map(|p| p.seconds).sum::<u64>(),
    );
}
