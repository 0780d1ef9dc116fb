//! What the test harness (libtest) says at the end of each test binary:
//! `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 5 filtered
//! out; …`, added up over binaries (`test`) or over a guest's pass
//! (`vm-test`).

use std::{fmt, ops::AddAssign};

/// Totals over `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub filtered: u64,
}

impl Counts {
    /// The counts of one `test result:` line; None for any other line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let (_, fields) = rest.split_once(". ")?;
        let mut counts = Self::default();
        for field in fields.split(';') {
            let mut words = field.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                "ignored" => counts.ignored += n,
                "filtered" => counts.filtered += n,
                _ => {}
            }
        }
        Some(counts)
    }
}

impl Counts {
    /// Moves the tests named in a skip log (`test name\treason` a line,
    /// written by tests/it/common's `skip`) from passed to skipped: libtest
    /// counted them passed, but they tested nothing. Each test once.
    pub fn skipped_at_run_time(&mut self, log: &str) -> u64 {
        let mut names: Vec<&str> = log.lines().filter_map(|l| l.split('\t').next()).collect();
        names.sort_unstable();
        names.dedup();
        let n = (names.len() as u64).min(self.passed);
        self.passed -= n;
        self.ignored += n;
        n
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.filtered += other.filtered;
    }
}

/// The summary line `cargo xtask test` ends with. Ignored tests are the
/// skipped ones: those run with `--include-ignored` count as passed or
/// failed.
impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.ignored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_ok_and_failed_results() {
        let mut counts = Counts::default();
        for line in [
            "running 3 tests",
            "test foo ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 5 filtered out; finished in 1.20s\n",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            if let Some(c) = Counts::parse(line) {
                counts += c;
            }
        }
        assert_eq!(
            counts,
            Counts {
                passed: 5,
                failed: 1,
                ignored: 1,
                filtered: 5,
            }
        );
        assert_eq!(counts.to_string(), "5 passed, 1 failed, 1 skipped");
    }

    #[test]
    fn other_lines_are_not_results() {
        for line in [
            "test result_parsing ... ok",
            "",
            "error: test failed, to rerun pass `-p capprof --test run_actions`",
        ] {
            assert_eq!(Counts::parse(line), None, "{line:?}");
        }
    }

    #[test]
    fn tests_skipped_at_run_time_count_as_skipped() {
        let mut counts = Counts {
            passed: 10,
            failed: 1,
            ignored: 2,
            filtered: 0,
        };
        let log = "syscall_a\tno tracepoint\nsyscall_b\tno tracepoint\nsyscall_a\tagain\n";
        assert_eq!(counts.skipped_at_run_time(log), 2);
        assert_eq!(counts.to_string(), "8 passed, 1 failed, 4 skipped");
    }
}
