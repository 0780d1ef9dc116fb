//! The observed-usage report: what a set of profiles shows, worked out once
//! ([`Report::build`]) and then rendered as one self-contained HTML page,
//! as Markdown for a pull-request comment, or as JSON.
//!
//! For each profile it works out:
//! - the runtime's default set against what was used: keep, drop, add;
//! - per capability, its class, its checks, its evidence, and whether it
//!   was used only at start-up (`phase.rs`);
//! - the exposure of the runtime default and of the allowlist (`score.rs`);
//! - the Pod Security level before and after (`score.rs`);
//! - how to deliver the allowlist to a non-root workload (`delivery.rs`);
//! - whether the profile was proven or only observed.
//!
//! Profiles are untrusted input: every string from one is escaped by the
//! renderers, never here.

pub mod catalogue;
pub mod delivery;
pub mod html;
pub mod markdown;
pub mod matrix;
pub mod phase;
pub mod score;

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use crate::{
    capability::Cap,
    caveat::Caveat,
    export::{self, Runtime},
    load::Loaded,
    profile::{Evidence, Observation, Profile, Proof, SubjectKind},
};

/// What the report is built with.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Compare with this runtime's defaults instead of each profile's own
    /// runtime (Docker when a profile names none).
    pub runtime: Option<Runtime>,
    /// The start-up window of the start-up rule (`phase.rs`).
    pub startup_window: Duration,
}

impl Default for Options {
    /// Each profile's own runtime, and a 10 s start-up window.
    fn default() -> Self {
        Self {
            runtime: None,
            startup_window: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub generator: String,
    pub matrix: matrix::Matrix,
    pub containers: Vec<Container>,
    /// Per capability, in how many of the profiles it is on the allowlist.
    pub allowlisted_in: BTreeMap<Cap, usize>,
}

/// Proven by re-running the workload, or only observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Observed,
    Proven,
    /// A proof was attempted and the allowlist was not enough.
    ProofFailed,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Observed => "observed",
            Status::Proven => "proven",
            Status::ProofFailed => "proof failed",
        }
    }
}

/// One capability of one profile: in the runtime's defaults, used, or both.
#[derive(Clone, Debug, Serialize)]
pub struct CapRow {
    pub capability: Cap,
    pub in_default: bool,
    pub on_allowlist: bool,
    /// `keep`, `drop`, `add`, or `-` (used but not needed, not a default).
    pub action: &'static str,
    /// The class it was reported under; `None` when the workload never
    /// asked for it.
    pub class: Option<String>,
    pub checks: u64,
    pub by_class: BTreeMap<String, u64>,
    pub phase: phase::WhenUsed,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    /// `(seen_in, of)` for a merged profile.
    pub seen_in: Option<(u64, u64)>,
    pub evidence: Vec<Evidence>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SetupUse {
    pub capability: Cap,
    pub checks: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Container {
    /// The subject's name, command or id, else the file's stem.
    pub label: String,
    /// The file it was read from.
    pub source: String,
    pub kind: SubjectKind,
    pub image: Option<String>,
    pub id: Option<String>,
    pub command: Option<Vec<String>>,
    pub observation: Observation,
    pub status: Status,
    pub proof: Option<Proof>,
    /// How many observations a merged profile stands for.
    pub merged_from: Option<u64>,
    pub runtime: Runtime,
    pub defaults: Vec<Cap>,
    /// What the engine says the container was started with, when it differs
    /// from the defaults.
    pub started_with: Option<Vec<Cap>>,
    pub allowlist: Vec<Cap>,
    pub keep: Vec<Cap>,
    pub drop: Vec<Cap>,
    pub add: Vec<Cap>,
    pub rows: Vec<CapRow>,
    pub runtime_setup: Vec<SetupUse>,
    pub exposure_default: score::Exposure,
    pub exposure_allowlist: score::Exposure,
    pub pod_security_default: score::PodSecurity,
    pub pod_security_allowlist: score::PodSecurity,
    pub phases: phase::Phases,
    /// Allowlisted capabilities used only at start-up.
    pub startup_only: Vec<Cap>,
    pub delivery: delivery::Delivery,
    /// `docker run` flags for the allowlist.
    pub docker_flags: String,
    /// What limits the profile: refusals, blind spots, lost records.
    pub warnings: Vec<String>,
}

impl Report {
    /// How many of the profiles `verify` or `minimize` proved.
    pub fn proven(&self) -> usize {
        self.containers
            .iter()
            .filter(|c| c.status == Status::Proven)
            .count()
    }

    pub fn build(inputs: &[Loaded], options: Options) -> Self {
        let labels = labels(inputs);
        let containers: Vec<Container> = inputs
            .iter()
            .zip(&labels)
            .map(|(input, label)| container(input, label, options))
            .collect();
        let matrix = matrix::matrix(
            labels
                .iter()
                .map(String::as_str)
                .zip(inputs.iter().map(|i| &i.profile)),
        );
        let mut allowlisted_in = BTreeMap::new();
        for input in inputs {
            for cap in &input.profile.allowlist {
                *allowlisted_in.entry(*cap).or_default() += 1;
            }
        }
        Report {
            generator: format!("capprof {}", env!("CARGO_PKG_VERSION")),
            matrix,
            containers,
            allowlisted_in,
        }
    }
}

/// Row labels: the subject's name, command or id, else the file's stem;
/// repeated labels get the file's path added.
fn labels(inputs: &[Loaded]) -> Vec<String> {
    let base: Vec<String> = inputs
        .iter()
        .map(|input| {
            let s = &input.profile.subject;
            let stem = || {
                std::path::Path::new(&input.source)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| input.source.clone())
            };
            [
                s.name.clone(),
                s.command.as_ref().map(|argv| argv.join(" ")),
                s.id.as_ref().map(|id| id.chars().take(12).collect()),
            ]
            .into_iter()
            .flatten()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(stem)
        })
        .collect();
    base.iter()
        .zip(inputs)
        .map(|(label, input)| {
            if base.iter().filter(|l| *l == label).count() > 1 {
                format!("{label} ({})", input.source)
            } else {
                label.clone()
            }
        })
        .collect()
}

fn status(proof: Option<&Proof>) -> Status {
    match proof {
        None => Status::Observed,
        Some(p) if p.sufficient => Status::Proven,
        Some(_) => Status::ProofFailed,
    }
}

fn runtime_of(profile: &Profile, options: Options) -> Runtime {
    use clap::ValueEnum as _;
    options.runtime.unwrap_or_else(|| {
        profile
            .subject
            .runtime
            .as_deref()
            .and_then(|r| Runtime::from_str(r, true).ok())
            .unwrap_or(Runtime::Docker)
    })
}

fn container(input: &Loaded, label: &str, options: Options) -> Container {
    let profile = &input.profile;
    let runtime = runtime_of(profile, options);
    let cmp = export::compare(profile, runtime);
    let phases = phase::phases(profile, options.startup_window);
    let rows = cap_rows(profile, &cmp, &phases);
    let startup_only = profile
        .allowlist
        .iter()
        .copied()
        .filter(|c| phases.of(*c) == phase::WhenUsed::StartupOnly)
        .collect();
    let started_with = profile.subject.capabilities.clone().filter(|caps| {
        let mut sorted = caps.clone();
        sorted.sort();
        sorted != cmp.defaults
    });
    // Before: the runtime's defaults, plus what the container was started
    // with beyond them; a pod spec adds exactly that beyond-the-defaults part.
    let granted_before = started_with.clone().unwrap_or_else(|| cmp.defaults.clone());
    let added_before: Vec<Cap> = granted_before
        .iter()
        .copied()
        .filter(|c| !cmp.defaults.contains(c))
        .collect();
    Container {
        label: label.to_owned(),
        source: input.source.clone(),
        kind: profile.subject.kind.clone(),
        image: profile.subject.image.clone(),
        id: profile.subject.id.clone(),
        command: profile.subject.command.clone(),
        observation: profile.observation.clone(),
        status: status(profile.proof.as_ref()),
        proof: profile.proof.clone(),
        merged_from: profile.coverage.as_ref().map(|c| c.profiles),
        runtime,
        defaults: cmp.defaults.clone(),
        started_with,
        allowlist: profile.allowlist.clone(),
        keep: cmp.keep.clone(),
        drop: cmp.drop.clone(),
        add: cmp.add.clone(),
        rows,
        runtime_setup: profile
            .runtime_setup
            .iter()
            .map(|u| SetupUse {
                capability: u.name,
                checks: u.granted + u.denied,
            })
            .collect(),
        exposure_default: score::exposure(&granted_before),
        exposure_allowlist: score::exposure(&profile.allowlist),
        pod_security_default: score::pod_security(&added_before, false),
        pod_security_allowlist: score::pod_security(&profile.allowlist, true),
        phases,
        startup_only,
        delivery: delivery::delivery(profile),
        docker_flags: export::render(profile, export::Format::Docker)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
        warnings: warnings(profile, &input.unknown_fields),
    }
}

/// One row per capability the report names: the runtime's defaults, every
/// class the matrix shows and the allowlist, each with what the export does
/// to it and what was seen of it.
fn cap_rows(profile: &Profile, cmp: &export::Comparison, phases: &phase::Phases) -> Vec<CapRow> {
    let coverage = crate::merge::coverage_of(profile);
    // Each capability's class as the matrix shows it: the kept, conditional
    // and ungrantable lists have their rows too, though they are not checks.
    let classes: BTreeMap<Cap, String> = matrix::cells(profile)
        .into_iter()
        .filter(|(_, cell)| cell.class != matrix::SETUP)
        .map(|(cap, cell)| (cap, cell.class))
        .collect();
    let mut caps: Vec<Cap> = cmp
        .defaults
        .iter()
        .copied()
        .chain(classes.keys().copied())
        .chain(profile.allowlist.iter().copied())
        .collect();
    caps.sort();
    caps.dedup();
    caps.into_iter()
        .map(|cap| {
            let usage = profile.capabilities.iter().find(|u| u.name == cap);
            let in_default = cmp.defaults.contains(&cap);
            let on_allowlist = profile.allowlist.contains(&cap);
            let action = match (in_default, on_allowlist) {
                (true, true) => "keep",
                (true, false) => "drop",
                (false, true) => "add",
                (false, false) => "-",
            };
            CapRow {
                capability: cap,
                in_default,
                on_allowlist,
                action,
                class: classes
                    .get(&cap)
                    .cloned()
                    .or_else(|| usage.map(|u| u.class.as_str().to_owned())),
                checks: usage.map_or(0, |u| u.granted + u.denied),
                by_class: usage
                    .map(|u| {
                        u.by_class
                            .iter()
                            .map(|(c, n)| (c.as_str().to_owned(), *n))
                            .collect()
                    })
                    .unwrap_or_default(),
                phase: if usage.is_some() {
                    phases.of(cap)
                } else {
                    phase::WhenUsed::Unknown
                },
                first_seen: usage.map(|u| u.first_seen.clone()),
                last_seen: usage.map(|u| u.last_seen.clone()),
                seen_in: coverage.get(&cap).copied(),
                evidence: usage.map(|u| u.evidence.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

fn warnings(profile: &Profile, unknown_fields: &[String]) -> Vec<String> {
    let mut out = vec![];
    if !unknown_fields.is_empty() {
        out.push(format!(
            "written by a newer capprof: this report ignores {}",
            unknown_fields.join(", ")
        ));
    }
    // The matrix shows ungrantable, conditional, transient and borrowed
    // capabilities in their own rows.
    out.extend(
        Caveat::of(profile)
            .into_iter()
            .filter(|c| {
                !matches!(
                    c,
                    Caveat::Ungrantable(_)
                        | Caveat::Conditional(_)
                        | Caveat::Transient(_)
                        | Caveat::Borrowed(_)
                )
            })
            .map(|c| c.to_string()),
    );
    if let Some(coverage) = &profile.coverage {
        let some: Vec<String> = coverage
            .capabilities
            .iter()
            .filter(|(cap, c)| c.seen_in < coverage.profiles && profile.allowlist.contains(cap))
            .map(|(cap, c)| format!("{cap} ({} of {})", c.seen_in, coverage.profiles))
            .collect();
        if !some.is_empty() {
            out.push(format!(
                "seen in only some of the merged observations: {}",
                some.join(", ")
            ));
        }
    }
    out
}

/// `CHOWN, SETUID`, or `none`.
pub fn short_names(caps: &[Cap]) -> String {
    if caps.is_empty() {
        "none".to_owned()
    } else {
        caps.iter()
            .map(|c| c.short_name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Lower-case names for setpriv: `-chown,-mknod`.
fn setpriv_list(caps: &[Cap]) -> String {
    caps.iter()
        .map(|c| format!("-{}", c.short_name().to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The entrypoint line that drops start-up-only capabilities before the
/// long-running program: `exec setpriv --inh-caps=-chown --bounding-set=-chown -- "$@"`.
pub fn setpriv_line(caps: &[Cap]) -> String {
    let list = setpriv_list(caps);
    format!("exec setpriv --inh-caps={list} --bounding-set={list} -- \"$@\"")
}

/// The same with libcap's capsh.
pub fn capsh_line(caps: &[Cap]) -> String {
    let list = caps
        .iter()
        .map(|c| format!("cap_{}", c.short_name().to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    format!("exec capsh --drop={list} -- -c 'exec \"$@\"' -- \"$@\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Loaded {
        Loaded::new(
            "fixture.json",
            Profile::from_json("fixture.json", json.as_bytes()).unwrap(),
        )
    }

    #[test]
    fn proof_makes_a_profile_proven() {
        assert_eq!(status(None), Status::Observed);
        let proven = Proof {
            sufficient: true,
            ..Default::default()
        };
        assert_eq!(status(Some(&proven)), Status::Proven);
        assert_eq!(status(Some(&Proof::default())), Status::ProofFailed);
        // A proof written by a future `minimize`, with fields this build does
        // not know, reads and survives a round trip.
        let json = r#"{
          "schema": "capprof.profile/v1", "generator": "capprof test",
          "subject": {"kind": "container", "name": "web", "runtime": "podman"},
          "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
          "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
          "capabilities": [],
          "proof": {"method": "minimize", "sufficient": true, "runs": 3, "engine": "docker",
                    "at": "2026-01-01T00:00:00Z", "needed": [], "observed": []}
        }"#;
        let input = load(json);
        let report = Report::build(std::slice::from_ref(&input), Options::default());
        let c = &report.containers[0];
        assert_eq!(c.status, Status::Proven);
        assert_eq!(c.runtime, Runtime::Podman, "the profile's own runtime");
        assert_eq!(c.defaults.len(), 11);
        let proof = c.proof.as_ref().unwrap();
        assert_eq!(proof.method, "minimize");
        let back = Profile::from_json("p.json", input.profile.to_json().as_bytes()).unwrap();
        assert_eq!(back, input.profile);
        // An empty profile says so.
        assert!(c.warnings.iter().any(|w| w.contains("no capability check")));
    }

    /// A capability on the allowlist only through capset, one needed only
    /// where a sysctl is not relaxed, and one no --cap-add can grant: each
    /// has its row and its matrix cell under its own class, not the class
    /// of whatever check it also made.
    #[test]
    fn kept_conditional_and_ungrantable_capabilities_are_shown() {
        let json = r#"{
          "schema": "capprof.profile/v1", "generator": "capprof test",
          "subject": {"kind": "container", "name": "web", "runtime": "docker"},
          "observation": {"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"},
          "allowlist": ["CAP_CHOWN", "CAP_SYS_NICE"], "required": ["CAP_CHOWN"],
          "denied": ["CAP_MKNOD"], "advisory": ["CAP_SYS_NICE"], "silent": [],
          "ungrantable": ["CAP_MKNOD"],
          "capabilities": [
            {"name": "CAP_CHOWN", "number": 0, "class": "required", "granted": 3, "denied": 0,
             "first_seen": "2025-01-01T00:00:01Z", "last_seen": "2025-01-01T00:00:02Z"},
            {"name": "CAP_MKNOD", "number": 27, "class": "denied", "granted": 0, "denied": 2,
             "ungrantable": 2, "first_seen": "2025-01-01T00:00:01Z", "last_seen": "2025-01-01T00:00:02Z"},
            {"name": "CAP_SYS_NICE", "number": 23, "class": "advisory", "granted": 1, "denied": 0,
             "first_seen": "2025-01-01T00:00:01Z", "last_seen": "2025-01-01T00:00:02Z"}
          ],
          "conditional": [{"capability": "CAP_NET_RAW", "operation": "icmp datagram socket",
            "sysctl": "net.ipv4.ping_group_range", "value": "0 2147483647",
            "evidence": [{"comm": "ping", "pid": 7, "uid": 0}, {"comm": "ping", "pid": 8, "uid": 0}]}],
          "kept": [{"capability": "CAP_SYS_NICE", "sets": ["permitted"],
            "evidence": [{"comm": "capsh", "pid": 5, "uid": 0}]}]
        }"#;
        let input = load(json);
        let report = Report::build(std::slice::from_ref(&input), Options::default());
        let c = &report.containers[0];
        let class = |cap: &str| {
            c.rows
                .iter()
                .find(|r| r.capability.to_string() == cap)
                .and_then(|r| r.class.clone())
        };
        assert_eq!(class("CAP_CHOWN").as_deref(), Some("required"));
        assert_eq!(
            class("CAP_SYS_NICE").as_deref(),
            Some("kept"),
            "kept wins over its advisory check"
        );
        assert_eq!(class("CAP_MKNOD").as_deref(), Some("ungrantable"));
        assert_eq!(class("CAP_NET_RAW").as_deref(), Some("conditional"));
        let m = &report.matrix;
        let cell = |cap: &str| {
            let i = m
                .capabilities
                .iter()
                .position(|c| c.to_string() == cap)
                .unwrap();
            m.rows[0].cells[i].clone().unwrap()
        };
        assert_eq!(cell("CAP_SYS_NICE").class, "kept");
        assert_eq!(
            cell("CAP_SYS_NICE").count,
            1,
            "its advisory check's count stays"
        );
        assert_eq!(cell("CAP_MKNOD").class, "ungrantable");
        assert_eq!(cell("CAP_MKNOD").count, 2);
        assert_eq!(cell("CAP_NET_RAW").class, "conditional");
        assert_eq!(cell("CAP_NET_RAW").count, 2, "two operations");
        assert_eq!(matrix::unit("conditional", 2), "operations");
        // The HTML and Markdown show them.
        let html = html::render(&report);
        for class in [
            "data-class=\"kept\"",
            "data-class=\"conditional\"",
            "data-class=\"ungrantable\"",
        ] {
            assert!(html.contains(class), "{class} missing from the HTML");
        }
    }

    #[test]
    fn labels_are_unique() {
        let json = |name: &str| {
            format!(
                r#"{{"schema": "capprof.profile/v1", "generator": "t",
                 "subject": {{"kind": "container", "name": "{name}"}},
                 "observation": {{"start": "", "end": "", "backend": "tp_btf", "classification": "call-site"}},
                 "allowlist": [], "required": [], "denied": [], "advisory": [], "silent": [],
                 "capabilities": []}}"#
            )
        };
        let mut a = load(&json("web"));
        a.source = "a/web.json".into();
        let mut b = load(&json("web"));
        b.source = "b/web.json".into();
        let c = load(&json(""));
        let got = labels(&[a, b, c]);
        assert_eq!(got, ["web (a/web.json)", "web (b/web.json)", "fixture"]);
    }

    #[test]
    fn entrypoint_lines() {
        let caps: Vec<Cap> = ["CHOWN", "MKNOD"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(
            setpriv_line(&caps),
            "exec setpriv --inh-caps=-chown,-mknod --bounding-set=-chown,-mknod -- \"$@\""
        );
        assert_eq!(
            capsh_line(&caps),
            "exec capsh --drop=cap_chown,cap_mknod -- -c 'exec \"$@\"' -- \"$@\""
        );
    }
}
