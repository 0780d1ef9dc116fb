//! The command-line reference (docs/src/reference/cli.md) against what the
//! binary says: each subcommand `capprof --help` lists has a section
//! `` ## `capprof NAME` `` whose table rows name exactly the long flags
//! `capprof NAME --help` prints, and no section names a subcommand the
//! binary lacks. `--help` itself is left out on both sides.

use std::collections::{BTreeMap, BTreeSet};

/// The long flags of each subcommand (`--out`, …).
pub type Flags = BTreeMap<String, BTreeSet<String>>;

/// The subcommands `capprof --help` lists under `Commands:`, without
/// `help`.
pub fn subcommands(top_help: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in top_help.lines() {
        if line.trim_end() == "Commands:" {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        if !line.starts_with("  ") {
            break;
        }
        if let Some(name) = line.split_whitespace().next()
            && name != "help"
        {
            names.push(name.to_owned());
        }
    }
    names
}

/// The long flags `capprof NAME --help` prints: option lines are indented
/// by at most six spaces and start with `-`; their descriptions (and the
/// `- value:` lines of possible values) are indented further.
pub fn help_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|line| {
            let indent = line.len() - line.trim_start().len();
            (1..=6).contains(&indent) && line.trim_start().starts_with('-')
        })
        .flat_map(long_flags)
        .filter(|flag| flag != "--help")
        .collect()
}

/// The flags each `` ## `capprof NAME` `` section of the reference lists in
/// the first cell of its table rows.
pub fn reference_flags(reference: &str) -> Flags {
    let mut flags = Flags::new();
    let mut current: Option<String> = None;
    for line in reference.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = heading
                .trim()
                .strip_prefix("`capprof ")
                .and_then(|h| h.strip_suffix('`'))
                .map(str::to_owned);
            if let Some(name) = &current {
                flags.entry(name.clone()).or_default();
            }
            continue;
        }
        let (Some(name), Some(row)) = (&current, line.strip_prefix("| ")) else {
            continue;
        };
        let first_cell = row.split(" | ").next().unwrap_or("");
        flags
            .entry(name.clone())
            .or_default()
            .extend(long_flags(first_cell));
    }
    flags
}

/// Every `--name` word of `text`.
fn long_flags(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || "`,<>=[]|".contains(c))
        .filter(|word| {
            word.starts_with("--")
                && word[2..].starts_with(|c: char| c.is_ascii_alphanumeric())
                && word[2..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        .map(str::to_owned)
        .collect()
}

/// Each disagreement between the binary (`help`, per subcommand) and the
/// reference, as one line a contributor can act on.
pub fn compare(help: &Flags, reference: &Flags, reference_path: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (command, flags) in help {
        let Some(documented) = reference.get(command) else {
            problems.push(format!(
                "{reference_path} has no section \"## `capprof {command}`\" (capprof --help lists \
                 the command)"
            ));
            continue;
        };
        for flag in flags.difference(documented) {
            problems.push(format!(
                "{reference_path} lacks `capprof {command} {flag}`, which `capprof {command} \
                 --help` has"
            ));
        }
        for flag in documented.difference(flags) {
            problems.push(format!(
                "{reference_path} documents `capprof {command} {flag}`, which `capprof {command} \
                 --help` does not have"
            ));
        }
    }
    for command in reference.keys().filter(|c| !help.contains_key(*c)) {
        problems.push(format!(
            "{reference_path} has a section for `capprof {command}`, which capprof --help does \
             not list"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "Usage: capprof <COMMAND>\n\nCommands:\n  run     Run a command\n  \
                       record  Record\n  help    Print this message\n\nOptions:\n  -h, --help  \
                       Print help\n";

    const RUN_HELP: &str = "Usage: capprof run [OPTIONS] <CMD>...\n\nOptions:\n  -o, --out \
                            <FILE>\n          Write the profile\n\n      --backend <BACKEND>\n          \
                            Use this backend\n\n          Possible values:\n          - tp-btf: \
                            see --out\n\n  -q, --quiet\n          Quiet\n\n  -h, --help\n          \
                            Print help\n";

    fn set(flags: &[&str]) -> BTreeSet<String> {
        flags.iter().map(|f| (*f).to_owned()).collect()
    }

    #[test]
    fn reads_subcommands_and_their_flags_from_help() {
        assert_eq!(subcommands(TOP), vec!["run", "record"]);
        assert_eq!(
            help_flags(RUN_HELP),
            set(&["--out", "--backend", "--quiet"])
        );
    }

    #[test]
    fn reads_the_flags_of_each_reference_section() {
        let reference = "# Reference\n\n## `capprof run`\n\n| flag | meaning |\n| --- | --- \
                         |\n| `-o`, `--out <FILE>` | with `--quiet` too |\n| `--caps <LIST>` | x \
                         |\n\n## `capprof record`\n\n| `--engine <unix://PATH>` | y |\n";
        let flags = reference_flags(reference);
        assert_eq!(flags["run"], set(&["--out", "--caps"]));
        assert_eq!(flags["record"], set(&["--engine"]));
    }

    #[test]
    fn says_which_flag_is_missing_on_which_side() {
        let help = Flags::from([
            ("run".to_owned(), set(&["--out", "--quiet"])),
            ("ps".to_owned(), set(&[])),
        ]);
        let reference = Flags::from([
            ("run".to_owned(), set(&["--out", "--caps"])),
            ("gone".to_owned(), set(&[])),
        ]);
        let problems = compare(&help, &reference, "cli.md");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("has no section") && p.contains("ps"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("lacks `capprof run --quiet`"))
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("documents `capprof run --caps`"))
        );
        assert!(problems.iter().any(|p| p.contains("`capprof gone`")));
    }
}
