//! Reads a guest's console back: the init script's CAPPROF-VM-* markers,
//! `capprof doctor`'s JSON, and each pass's test harness output.

use std::time::Duration;

use serde_json::Value;

use super::qemu::Line;
use crate::libtest::Counts;

/// What one guest said.
#[derive(Debug, Default)]
pub struct Report {
    /// `uname -r` in the guest.
    pub release: Option<String>,
    /// When init started, from qemu's start.
    pub booted_at: Option<Duration>,
    pub doctor: Option<Doctor>,
    pub passes: Vec<Pass>,
    /// Kernel lines that report a bug (BUG:, Oops, WARNING:, call traces).
    pub kernel_trouble: Vec<String>,
}

/// `capprof doctor --format json`'s verdict.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Doctor {
    pub backend: Option<String>,
    pub reason: Option<String>,
    pub classification: Option<String>,
    pub load_ms: Option<u64>,
    pub missing: Vec<String>,
    /// The `bpf lsm` check: whether the lsm backend is available, and why.
    pub bpf_lsm: Option<(bool, String)>,
    /// Set when the JSON could not be read; holds what was printed instead.
    pub unreadable: Option<String>,
}

/// One run of the tests with one backend.
#[derive(Debug, Default)]
pub struct Pass {
    pub backend: String,
    /// `Some(true)` for the PASS marker, `Some(false)` for FAIL, `None` when
    /// the guest never got to either.
    pub passed: Option<bool>,
    pub counts: Counts,
    pub failures: Vec<Failure>,
    pub started: Duration,
    pub ended: Option<Duration>,
}

impl Pass {
    /// PASS only with the marker and at least one test passed.
    pub fn ok(&self) -> bool {
        self.passed == Some(true) && self.counts.passed > 0
    }
}

/// A failed test and the start of its panic message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub test: String,
    pub message: String,
}

/// Lines of a panic message kept for the summary; the log has them all.
const MESSAGE_LINES: usize = 4;
/// Characters kept of each of those lines.
const MESSAGE_WIDTH: usize = 400;

pub fn parse(lines: &[Line]) -> Report {
    let mut report = Report::default();
    let mut doctor_text: Option<Vec<String>> = None;
    // The test whose `---- NAME stdout ----` section is being read, and
    // whether its `panicked at` line has been seen.
    let mut section: Option<(String, bool)> = None;
    for line in lines {
        let text = strip_ansi(&line.text);
        let text = text.as_str();
        if let Some(rest) = text.strip_prefix("CAPPROF-VM-") {
            if let Some(rest) = rest.strip_prefix("BOOTED: ") {
                report.release = rest.split_whitespace().next().map(str::to_owned);
                report.booted_at = Some(line.at);
            } else if rest == "DOCTOR-BEGIN" {
                doctor_text = Some(Vec::new());
            } else if rest.starts_with("DOCTOR-END") {
                report.doctor = doctor_text.take().map(|t| parse_doctor(&t.join("\n")));
            } else if let Some(backend) = rest.strip_prefix("PASS-BEGIN: ") {
                section = None;
                report.passes.push(Pass {
                    backend: backend.trim().to_owned(),
                    started: line.at,
                    ..Pass::default()
                });
            } else if let Some(rest) = rest.strip_prefix("RESULT: ") {
                section = None;
                if let Some(pass) = report.passes.last_mut() {
                    pass.passed = Some(rest.split_whitespace().nth(1) == Some("PASS"));
                    pass.ended = Some(line.at);
                }
            }
            continue;
        }
        if let Some(t) = &mut doctor_text {
            t.push(text.to_owned());
            continue;
        }
        if is_kernel_trouble(text) {
            report.kernel_trouble.push(text.to_owned());
        }
        let Some(pass) = report.passes.last_mut().filter(|p| p.passed.is_none()) else {
            continue;
        };
        if let Some(counts) = Counts::parse(text) {
            pass.counts += counts;
        } else if let Some(name) = text
            .strip_prefix("test ")
            .and_then(|t| t.strip_suffix(" ... FAILED"))
        {
            if !pass.failures.iter().any(|f| f.test == name) {
                pass.failures.push(Failure {
                    test: name.to_owned(),
                    message: String::new(),
                });
            }
        } else if let Some(name) = text
            .strip_prefix("---- ")
            .and_then(|t| t.strip_suffix(" stdout ----"))
        {
            section = Some((name.to_owned(), false));
        } else if let Some((name, seen_panic)) = &mut section {
            if text.starts_with("thread '") && text.contains("panicked at") {
                *seen_panic = true;
            } else if *seen_panic {
                if text.trim().is_empty()
                    || text.starts_with("note: run with")
                    || text == "failures:"
                {
                    section = None;
                    continue;
                }
                let Some(failure) = pass.failures.iter_mut().find(|f| &f.test == name) else {
                    continue;
                };
                if failure.message.lines().count() < MESSAGE_LINES {
                    if !failure.message.is_empty() {
                        failure.message.push('\n');
                    }
                    failure.message.extend(text.chars().take(MESSAGE_WIDTH));
                }
            }
        }
    }
    // A guest killed during doctor still shows what it printed.
    if let Some(t) = doctor_text {
        report.doctor = Some(parse_doctor(&t.join("\n")));
    }
    report
}

/// `text` without terminal colour sequences (ESC [ … final byte).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn is_kernel_trouble(text: &str) -> bool {
    // Console lines may carry a `[    1.234567] ` timestamp.
    let body = text
        .strip_prefix('[')
        .and_then(|t| t.split_once("] "))
        .map_or(text, |(_, body)| body);
    [
        "BUG:",
        "Oops:",
        "WARNING:",
        "Call Trace:",
        "general protection fault",
        "Kernel panic",
    ]
    .iter()
    .any(|p| body.starts_with(p))
}

fn parse_doctor(text: &str) -> Doctor {
    // capprof may log to stderr around the JSON; the object is the part from
    // the first line that opens it to the last that closes it.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.iter().position(|l| l.starts_with('{'));
    let end = lines.iter().rposition(|l| l.starts_with('}'));
    let json = match (start, end) {
        (Some(s), Some(e)) if s <= e => lines[s..=e].join("\n"),
        _ => String::new(),
    };
    let Ok(value) = serde_json::from_str::<Value>(&json) else {
        return Doctor {
            unreadable: Some(text.trim().to_owned()),
            ..Doctor::default()
        };
    };
    let string = |key: &str| value[key].as_str().map(str::to_owned);
    Doctor {
        backend: string("backend"),
        reason: string("reason"),
        classification: string("classification"),
        load_ms: value["load_ms"].as_u64(),
        bpf_lsm: value["checks"].as_array().and_then(|checks| {
            checks.iter().find(|c| c["name"] == "bpf lsm").map(|c| {
                (
                    c["ok"].as_bool().unwrap_or(false),
                    c["detail"].as_str().unwrap_or("").to_owned(),
                )
            })
        }),
        missing: value["missing"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        unreadable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Line> {
        text.lines()
            .enumerate()
            .map(|(i, t)| Line {
                at: Duration::from_secs(i as u64),
                text: t.to_owned(),
            })
            .collect()
    }

    const CONSOLE: &str = r#"[    0.000000] Linux version 6.1.0-57-cloud-amd64
CAPPROF-VM-BOOTED: 6.1.0-57-cloud-amd64 uptime 3.10s
lsm: lockdown,capability,landlock,yama,apparmor,tomoyo,bpf
CAPPROF-VM-DOCTOR-BEGIN
{
  "kernel": "6.1.0-57-cloud-amd64",
  "backend": "fexit",
  "reason": "no cap_capable tracepoint (before 6.14); cap_capable is in BTF",
  "classification": "opts",
  "load_ms": 412,
  "checks": [{"name": "bpf lsm", "ok": true, "detail": "active (capability,bpf)"}],
  "missing": []
}
CAPPROF-VM-DOCTOR-END: exit 0
CAPPROF-VM-PASS-BEGIN: fexit

running 3 tests
test chown_needs_chown ... FAILED
test mknod_needs_mknod ... ok
test python_needs_nothing ... ignored
[   40.100000] WARNING: CPU: 0 PID: 1 at kernel/foo.c:1 bar+0x1/0x2

failures:

---- chown_needs_chown stdout ----

thread 'chown_needs_chown' panicked at capprof/tests/run_actions.rs:20:5:
assertion `left == right` failed: ["/x/capprof-test-action", "chown", "/tmp/f"]: []
  left: ["CAP_CHOWN", "CAP_FOWNER"]
 right: ["CAP_CHOWN"]
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    chown_needs_chown

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 2 filtered out; finished in 30.01s

CAPPROF-VM-RESULT: fexit FAIL (exit 101)
CAPPROF-VM-PASS-BEGIN: kprobe
running 1 test
test mknod_needs_mknod ... ok
"#;

    #[test]
    fn parses_markers_doctor_counts_and_failures() {
        let report = parse(&lines(CONSOLE));
        assert_eq!(report.release.as_deref(), Some("6.1.0-57-cloud-amd64"));
        assert_eq!(report.booted_at, Some(Duration::from_secs(1)));
        let doctor = report.doctor.unwrap();
        assert_eq!(doctor.backend.as_deref(), Some("fexit"));
        assert_eq!(doctor.classification.as_deref(), Some("opts"));
        assert_eq!(doctor.load_ms, Some(412));
        assert_eq!(
            doctor.bpf_lsm,
            Some((true, "active (capability,bpf)".to_owned()))
        );
        assert!(doctor.missing.is_empty() && doctor.unreadable.is_none());

        assert_eq!(report.passes.len(), 2);
        let fexit = &report.passes[0];
        assert_eq!(
            (fexit.backend.as_str(), fexit.passed),
            ("fexit", Some(false))
        );
        assert!(!fexit.ok());
        assert_eq!(
            fexit.counts,
            Counts {
                passed: 1,
                failed: 1,
                ignored: 1,
                filtered: 2
            }
        );
        assert_eq!(
            fexit.failures,
            [Failure {
                test: "chown_needs_chown".into(),
                message: "assertion `left == right` failed: [\"/x/capprof-test-action\", \"chown\", \"/tmp/f\"]: []\n  left: [\"CAP_CHOWN\", \"CAP_FOWNER\"]\n right: [\"CAP_CHOWN\"]".into(),
            }]
        );
        // The guest stopped during the second pass: no verdict.
        let kprobe = &report.passes[1];
        assert_eq!(
            (kprobe.backend.as_str(), kprobe.passed, kprobe.ended),
            ("kprobe", None, None)
        );
        assert_eq!(report.kernel_trouble.len(), 1);
    }

    #[test]
    fn colour_codes_are_dropped() {
        assert_eq!(
            strip_ansi("\x1b[33m WARN\x1b[0m calibration failed"),
            " WARN calibration failed"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn unreadable_doctor_output_is_kept() {
        let report = parse(&lines(
            "CAPPROF-VM-DOCTOR-BEGIN\ncapprof: error: boom\nCAPPROF-VM-DOCTOR-END: exit 1\n",
        ));
        let doctor = report.doctor.unwrap();
        assert_eq!(doctor.unreadable.as_deref(), Some("capprof: error: boom"));
    }

    #[test]
    fn a_pass_with_nothing_passed_is_not_ok() {
        let report = parse(&lines(
            "CAPPROF-VM-PASS-BEGIN: fexit\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 20 filtered out; finished in 0.00s\nCAPPROF-VM-RESULT: fexit PASS\n",
        ));
        assert_eq!(report.passes[0].passed, Some(true));
        assert!(!report.passes[0].ok());
    }
}
