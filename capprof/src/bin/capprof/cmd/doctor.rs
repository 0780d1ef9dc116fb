//! `capprof doctor`: what this kernel offers, which backend capprof would
//! choose and why, and what is missing.

use std::{fs, process::ExitCode};

use capprof::{
    build_info, cgroup,
    observer::{
        Backend, COMPAT, LSM_LIST, Observer, ObserverError, bpf_lsm_active,
        btf::{self, KernelBtf},
        choose_backend,
        prog_stats::{self, LoadedProgram},
    },
};
use serde::Serialize;

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorFormat {
    Table,
    Json,
}

/// Check what this kernel offers capprof: kernel, BTF, tracepoint, cgroup v2,
/// privileges, and which backend would be used and why. As root it also
/// loads and calibrates the observer to prove it works. Exits 2 when a
/// prerequisite is missing.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[arg(long, short, value_enum, default_value_t = DoctorFormat::Table, env = "CAPPROF_DOCTOR_FORMAT")]
    pub format: DoctorFormat,
    /// Only inspect; do not load the eBPF programs.
    #[arg(long)]
    pub no_load: bool,
    /// Check this backend instead of the one capprof would choose.
    #[arg(long, value_enum, env = "CAPPROF_BACKEND")]
    pub backend: Option<Backend>,
}

/// What one check is about. Its name is what the table and the JSON
/// report show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckId {
    Root,
    Btf,
    CapTracepoint,
    CapCapableInBtf,
    TaskTgid,
    CredentialOffsets,
    Cgroup2,
    Bpffs,
    /// The chosen backend's load, calibration and attach.
    Load,
    RecursionMisses,
    /// Whether the kernel takes a backend other than the one in use.
    OtherBackend(Backend),
}

impl CheckId {
    fn name(self) -> &'static str {
        match self {
            CheckId::Root => "root",
            CheckId::Btf => "btf",
            CheckId::CapTracepoint => "cap_capable tracepoint",
            CheckId::CapCapableInBtf => "cap_capable in BTF",
            CheckId::TaskTgid => "task_struct.tgid",
            CheckId::CredentialOffsets => "credential offsets",
            CheckId::Cgroup2 => "cgroup2",
            CheckId::Bpffs => "bpffs",
            CheckId::Load => "load",
            CheckId::RecursionMisses => "recursion misses",
            CheckId::OtherBackend(Backend::TpBtf) => "backend tp_btf",
            CheckId::OtherBackend(Backend::Fexit) => "backend fexit",
            CheckId::OtherBackend(Backend::Kprobe) => "backend kprobe",
            CheckId::OtherBackend(Backend::Lsm) => "bpf lsm",
        }
    }

    /// What every backend needs; the backend's own load is `Load`.
    fn required(self) -> bool {
        matches!(
            self,
            CheckId::Root | CheckId::Btf | CheckId::Cgroup2 | CheckId::Load
        )
    }
}

impl Serialize for CheckId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(Debug, Serialize)]
struct Check {
    name: CheckId,
    ok: bool,
    /// Whether the backend in use needs it: a failed check that is not
    /// required does not stop `ready`.
    required: bool,
    /// False when the check was not made (not root, `--no-load`): `ok` is
    /// then false without meaning a failure.
    tried: bool,
    detail: String,
}

impl Check {
    fn new(name: CheckId, ok: bool, detail: String) -> Self {
        Self {
            name,
            ok,
            required: name.required(),
            tried: true,
            detail,
        }
    }

    fn not_tried(name: CheckId, detail: String) -> Self {
        Self {
            tried: false,
            ..Self::new(name, false, detail)
        }
    }

    fn marker(&self) -> &'static str {
        match (self.ok, self.tried, self.required) {
            (true, _, _) => " ok ",
            (false, false, _) => "skip",
            (false, true, true) => "FAIL",
            (false, true, false) => " no ",
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    /// This build (`capprof --version`), so that a pasted report says
    /// which capprof it is about.
    version: &'static str,
    commit: &'static str,
    map_abi: u32,
    kernel: String,
    backend: Option<String>,
    reason: Option<String>,
    classification: Option<String>,
    load_ms: Option<u128>,
    checks: Vec<Check>,
    missing: Vec<String>,
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn mounted(fstype: &str) -> Option<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_ascii_whitespace().next()? == fstype).then(|| {
            left.split_ascii_whitespace()
                .nth(4)
                .unwrap_or("")
                .to_owned()
        })
    })
}

pub fn main(args: DoctorArgs) -> Result<ExitCode, Error> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let (mut checks, kernel) = host_checks(root);
    let (backend, reason) = match &kernel {
        Some(k) => {
            let (backend, reason) = chosen_backend(k, args.backend);
            (Some(backend), Some(reason))
        }
        None => (None, None),
    };
    let can_load = root && btf::btf_present() && !args.no_load;
    let tried = try_load(backend, can_load, args.no_load, &mut checks);
    if root {
        checks.push(recursion_check(
            tried.programs.unwrap_or_else(prog_stats::capprof_programs),
        ));
    }
    checks.extend(tried.others);
    let missing: Vec<String> = checks
        .iter()
        .filter(|c| !c.ok && c.required && c.tried)
        .map(|c| format!("{}: {}", c.name.name(), c.detail))
        .collect();
    let report = Report {
        version: build_info::VERSION,
        commit: build_info::COMMIT,
        map_abi: build_info::MAP_ABI,
        kernel: kernel_release(),
        backend: backend.map(|b| b.to_string()),
        reason,
        classification: tried.classification,
        load_ms: tried.load_ms,
        checks,
        missing,
    };
    let text = match args.format {
        DoctorFormat::Json => {
            let mut json = serde_json::to_string_pretty(&report)
                .map_err(|e| Error::internal(e.to_string()))?;
            json.push('\n');
            json
        }
        DoctorFormat::Table => render_report(&report),
    };
    super::write_stdout(&text)?;
    Ok(if report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// What the host offers before anything is loaded: root, BTF and what the
/// kernel's BTF says (the tracepoint, cap_capable, the offsets), cgroup v2
/// and bpffs. The kernel's BTF is `None` when it is absent or unreadable.
fn host_checks(root: bool) -> (Vec<Check>, Option<KernelBtf>) {
    let mut checks = vec![];
    checks.push(Check::new(
        CheckId::Root,
        root,
        if root {
            "running as root".into()
        } else {
            "capprof needs root".into()
        },
    ));
    let has_btf = btf::btf_present();
    checks.push(Check::new(CheckId::Btf, has_btf, btf::VMLINUX_BTF.into()));
    let kernel = if has_btf {
        KernelBtf::read().ok()
    } else {
        None
    };
    if let Some(k) = &kernel {
        checks.push(Check::new(
            CheckId::CapTracepoint,
            k.has_cap_tracepoint,
            if k.has_cap_tracepoint {
                "present (6.14+)".into()
            } else {
                "absent (before 6.14)".into()
            },
        ));
        checks.push(Check::new(
            CheckId::CapCapableInBtf,
            k.has_cap_capable_func,
            "the function fexit and kprobe hook; whether they load is tried below".into(),
        ));
        checks.push(Check::new(
            CheckId::TaskTgid,
            k.task_tgid_offset.is_some(),
            k.task_tgid_offset.map_or(
                "not found: forks in containers are not followed".into(),
                |o| format!("offset {o}"),
            ),
        ));
        checks.push(Check::new(
            CheckId::CredentialOffsets,
            k.creds.is_some(),
            k.creds.map_or(
                "not found: checks made with borrowed credentials (overlayfs copy-up) count as \
                 the workload's, and user namespaces are not told apart"
                    .into(),
                |c| {
                    format!(
                        "task_struct.real_cred {}, cred.user_ns {}: borrowed credentials and \
                         target user namespaces are told apart",
                        c.task_real_cred, c.cred_user_ns
                    )
                },
            ),
        ));
    }
    let cg2 = cgroup::cgroup2_mount();
    checks.push(Check::new(
        CheckId::Cgroup2,
        cg2.is_ok(),
        match &cg2 {
            Ok(p) => p.display().to_string(),
            Err(e) => e.to_string(),
        },
    ));
    let bpffs = mounted("bpf");
    checks.push(Check::new(
        CheckId::Bpffs,
        bpffs.is_some(),
        bpffs.unwrap_or_else(|| "not mounted (needed only by the daemon's pins)".into()),
    ));
    (checks, kernel)
}

/// The backend capprof would use here, or the forced one, and why.
fn chosen_backend(kernel: &KernelBtf, forced: Option<Backend>) -> (Backend, String) {
    let (chosen, why) = choose_backend(kernel);
    let reason = match forced {
        Some(Backend::Lsm) => {
            "forced by --backend; it cannot see refused or advisory checks".to_owned()
        }
        Some(_) => "forced by --backend".to_owned(),
        None => why.to_owned(),
    };
    (forced.unwrap_or(chosen), reason)
}

/// What loading the observer showed; all `None` when it was not tried or
/// failed.
struct Tried {
    classification: Option<String>,
    load_ms: Option<u128>,
    /// capprof's programs in the kernel while this load's were there.
    programs: Option<Vec<LoadedProgram>>,
    /// Whether the kernel takes each other backend.
    others: Vec<Check>,
}

/// Loads, calibrates and attaches `backend` when `can_load` (root, BTF and
/// no `--no-load`), adding the `load` check, then tries the other backends
/// with the loaded observer.
fn try_load(
    backend: Option<Backend>,
    can_load: bool,
    no_load: bool,
    checks: &mut Vec<Check>,
) -> Tried {
    // Not required: the lsm backend is only ever forced. Whether the kernel
    // also loads BPF-LSM programs is known after loading, below.
    let lsm = bpf_lsm_active().map_err(|e| e.to_string());
    let lsm_list = fs::read_to_string(LSM_LIST)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let (mut classification, mut load_ms) = (None, None);
    let mut programs = None;
    let lsm = lsm.map(|()| format!("active ({lsm_list})"));
    let others = if can_load {
        match Observer::load(backend) {
            Ok(mut observer) => {
                classification = Some(describe_classification(&observer));
                load_ms = Some(observer.load_time().as_millis());
                // While this load's own programs are still in the kernel.
                programs = Some(prog_stats::capprof_programs());
                checks.push(Check::new(
                    CheckId::Load,
                    true,
                    format!("{} attached", observer.backend()),
                ));
                other_backends(backend, Some(&mut observer), &lsm, "")
            }
            Err(err) => {
                checks.push(Check::new(CheckId::Load, false, err.to_string()));
                other_backends(backend, None, &lsm, "not tried: the observer did not load")
            }
        }
    } else {
        let why = if no_load {
            "not tried (--no-load)"
        } else {
            "not tried (needs root and BTF)"
        };
        checks.push(Check::not_tried(CheckId::Load, why.to_owned()));
        other_backends(backend, None, &lsm, why)
    };
    Tried {
        classification,
        load_ms,
        programs,
        others,
    }
}

/// How the loaded observer classifies checks, in a few words.
fn describe_classification(observer: &Observer) -> String {
    use capprof::observer::Classification;
    match observer.classification() {
        Classification::Opts {
            call_site: Some(slots),
        } if observer.backend() == Backend::Lsm => format!(
            "opts, call sites at slots {}/{} (granted checks only)",
            slots.caller, slots.outer
        ),
        Classification::CallSite {
            caller_slot,
            outer_slot,
        } => format!("call-site (slots {caller_slot}/{outer_slot})"),
        Classification::Opts {
            call_site: Some(slots),
        } => format!(
            "opts, advisory probes by call site (slots {}/{})",
            slots.caller, slots.outer
        ),
        Classification::Opts { call_site: None } => {
            "opts (call sites uncalibrated: advisory probes count as silent)".into()
        }
        other => other.to_string(),
    }
}

/// Whether the kernel takes each backend other than the one in use: each
/// is tried with the loaded observer (its calibration program loaded and
/// unloaded), or said to be not tried. None of them is required: they are
/// only for `--backend`. The lsm one keeps its name, `bpf lsm`.
fn other_backends(
    used: Option<Backend>,
    mut observer: Option<&mut Observer>,
    lsm: &Result<String, String>,
    not_tried: &str,
) -> Vec<Check> {
    let all = [
        Backend::TpBtf,
        Backend::Fexit,
        Backend::Kprobe,
        Backend::Lsm,
    ];
    let mut checks = vec![];
    for backend in all.into_iter().filter(|b| Some(*b) != used) {
        let name = CheckId::OtherBackend(backend);
        let check = match (&mut observer, backend, lsm) {
            (_, Backend::Lsm, Err(why)) => Check::new(
                name,
                false,
                format!("{why}: `--backend lsm` is unavailable"),
            ),
            (None, _, _) => Check::not_tried(name, not_tried.to_owned()),
            (Some(observer), _, _) => match observer.probe_backend(backend) {
                Ok(()) => Check::new(
                    name,
                    true,
                    format!("the kernel loads it: `--backend {backend}` works"),
                ),
                Err(ObserverError::BackendUnavailable { reason, .. }) => Check::new(
                    name,
                    false,
                    format!("{reason}: `--backend {backend}` is unavailable here"),
                ),
                Err(other) => Check::new(
                    name,
                    false,
                    format!("{other}: `--backend {backend}` is unavailable here"),
                ),
            },
        };
        checks.push(check);
    }
    checks
}

/// `recursion_misses` of every capprof program loaded on this host: this
/// doctor's own (when it loaded one) and any running capprof's, a daemon's
/// included. Not a prerequisite, but each miss is a check nobody counted.
fn recursion_check(programs: Vec<LoadedProgram>) -> Check {
    let reported: Vec<&LoadedProgram> = programs
        .iter()
        .filter(|p| p.recursion_misses.is_some())
        .collect();
    let misses: u64 = reported.iter().filter_map(|p| p.recursion_misses).sum();
    let detail = if programs.is_empty() {
        "no capprof program is loaded".to_owned()
    } else if reported.is_empty() {
        format!(
            "{} capprof program(s) loaded; this kernel does not report recursion misses (5.12+)",
            programs.len()
        )
    } else {
        let worst: Vec<String> = reported
            .iter()
            .filter(|p| p.recursion_misses > Some(0))
            .map(|p| {
                format!(
                    "{} (id {}): {}",
                    p.name,
                    p.id,
                    p.recursion_misses.unwrap_or(0)
                )
            })
            .collect();
        if worst.is_empty() {
            format!(
                "0 across {} capprof program(s) loaded: every check reached them",
                reported.len()
            )
        } else {
            format!(
                "{misses} checks not counted: the kernel skipped {}",
                worst.join(", ")
            )
        }
    };
    Check::new(CheckId::RecursionMisses, misses == 0, detail)
}

fn render_report(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "capprof:  {} (commit {}, map ABI {})",
        r.version, r.commit, r.map_abi
    );
    let _ = writeln!(out, "kernel:   {}", r.kernel);
    if let (Some(b), Some(why)) = (&r.backend, &r.reason) {
        let _ = writeln!(out, "backend:  {b} ({why})");
    }
    if let Some(c) = &r.classification {
        let _ = writeln!(out, "classify: {c}");
    }
    if let Some(ms) = r.load_ms {
        let _ = writeln!(out, "load:     {ms} ms (load, calibrate, attach)");
    }
    for c in &r.checks {
        let _ = writeln!(out, "  [{}] {:<24} {}", c.marker(), c.name.name(), c.detail);
    }
    let _ = writeln!(out, "backends by preference:");
    for (b, since, needs) in COMPAT {
        let _ = writeln!(out, "  {b:<7} Linux {since:<5} needs {needs}");
    }
    let loaded = r.checks.iter().any(|c| c.name == CheckId::Load && c.ok);
    if r.missing.is_empty() {
        let backend = r.backend.as_deref().unwrap_or("the chosen backend");
        let _ = if loaded {
            writeln!(
                out,
                "ready: capprof records with {backend} here (it needs root, BTF, cgroup2 and \
                 loading {backend}: all ok); a backend marked `no` matters only with --backend"
            )
        } else {
            writeln!(
                out,
                "not known: root, BTF and cgroup2 are ok, but loading {backend} was not tried"
            )
        };
    } else {
        let _ = writeln!(out, "missing: {}", r.missing.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_reads_as_its_name_and_only_the_prerequisites_are_required() {
        let check = Check::new(CheckId::OtherBackend(Backend::Lsm), false, "x".into());
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["name"], "bpf lsm");
        assert_eq!(json["required"], false);
        let required: Vec<&str> = [
            CheckId::Root,
            CheckId::Btf,
            CheckId::Cgroup2,
            CheckId::Bpffs,
            CheckId::Load,
            CheckId::RecursionMisses,
        ]
        .into_iter()
        .filter(|c| c.required())
        .map(CheckId::name)
        .collect();
        assert_eq!(required, ["root", "btf", "cgroup2", "load"]);
    }
}
