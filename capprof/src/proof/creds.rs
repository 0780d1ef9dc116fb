//! The credentials a workload's processes end up with, and whether a run
//! left any process more privileged than the baseline did.
//!
//! A probe that passes is not enough: a web server whose SETGID drop fails
//! may log it and keep serving, with its workers as root. So every run
//! samples `/proc/PID/status` of every process in the workload's cgroup
//! (and below), keeping each process's last sample: its uids, gids,
//! supplementary groups, five capability sets, no_new_privs and seccomp
//! mode.
//!
//! A process of a run is matched with the baseline's processes of the same
//! place in the process tree: the chain of command names from the
//! workload's first process (`nginx/nginx` for a worker, `nginx` for its
//! master). Failing that, with the baseline's processes of the same name;
//! failing that, with all of them. It *drifted* when no matching baseline
//! process held at least what it holds: any uid, gid or group the baseline
//! did not have, any capability in any set, no_new_privs off where it was
//! on, or a weaker seccomp mode. This is one general rule, with no list of
//! programs or capabilities.
//!
//! A probe run inside the container (`--probe-exec`) shares the workload's
//! cgroup but is not the workload: its process trees, found by the pid the
//! engine gives for each exec session, are left out.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use crate::capability::Cap;

/// What a process holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Creds {
    /// Real, effective, saved and filesystem uids.
    pub uids: [u32; 4],
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
}

/// One process, as last seen in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    /// The chain of command names from the workload's first process.
    pub path: String,
    pub comm: String,
    pub creds: Creds,
    /// The first process of its chain: the workload's first process, or an
    /// exec session's.
    pub root: u32,
}

/// A process of a run that ended up more privileged than any matching
/// process of the baseline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub pid: u32,
    pub process: String,
    /// What it held beyond the closest baseline process.
    pub gained: Vec<String>,
}

/// Parses `/proc/PID/status`: the command name, the parent pid and the
/// credentials.
pub fn parse_status(text: &str) -> Option<(String, u32, Creds)> {
    let mut comm = None;
    let mut ppid = None;
    let mut creds = Creds::default();
    let (mut have_uid, mut have_gid) = (false, false);
    let four = |v: &str| -> Option<[u32; 4]> {
        let ids: Vec<u32> = v
            .split_ascii_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        ids.try_into().ok()
    };
    let hex = |v: &str| u64::from_str_radix(v.trim(), 16).ok();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => comm = Some(value.to_owned()),
            "PPid" => ppid = value.parse().ok(),
            "Uid" => {
                creds.uids = four(value)?;
                have_uid = true;
            }
            "Gid" => {
                creds.gids = four(value)?;
                have_gid = true;
            }
            "Groups" => {
                let mut groups: Vec<u32> = value
                    .split_ascii_whitespace()
                    .filter_map(|g| g.parse().ok())
                    .collect();
                groups.sort_unstable();
                groups.dedup();
                creds.groups = groups;
            }
            "CapInh" => creds.cap_inh = hex(value)?,
            "CapPrm" => creds.cap_prm = hex(value)?,
            "CapEff" => creds.cap_eff = hex(value)?,
            "CapBnd" => creds.cap_bnd = hex(value)?,
            "CapAmb" => creds.cap_amb = hex(value)?,
            "NoNewPrivs" => creds.no_new_privs = value == "1",
            "Seccomp" => creds.seccomp = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    (have_uid && have_gid).then_some(())?;
    Some((comm?, ppid?, creds))
}

/// The container runtime's own processes (`runc init` while it starts the
/// workload or an exec), which are not the workload's.
fn is_runtime(comm: &str) -> bool {
    comm.starts_with("runc") || comm == "crun" || comm.starts_with("conmon")
}

/// Every process in the cgroup `dir` and below, with its parent and
/// credentials, as one consistent set: each one's path is its chain of
/// ancestors inside the set.
pub fn sample_cgroup(dir: &Path) -> Vec<ProcSample> {
    let mut pids = BTreeSet::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    let mut seen: BTreeMap<u32, (String, u32, Creds)> = BTreeMap::new();
    for pid in pids {
        if let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(parsed) = parse_status(&text)
        {
            seen.insert(pid, parsed);
        }
    }
    with_paths(&seen)
}

fn with_paths(seen: &BTreeMap<u32, (String, u32, Creds)>) -> Vec<ProcSample> {
    seen.iter()
        .filter(|(_, (comm, _, _))| !is_runtime(comm))
        .map(|(&pid, (comm, _, creds))| {
            let mut chain = vec![comm.as_str()];
            let mut at = pid;
            let mut root = pid;
            // Bounded: a pid cycle cannot happen, but the set is untrusted.
            for _ in 0..64 {
                let Some((_, ppid, _)) = seen.get(&at) else {
                    break;
                };
                match seen.get(ppid) {
                    Some((parent, _, _)) if *ppid != at => {
                        chain.push(parent.as_str());
                        at = *ppid;
                        root = at;
                    }
                    _ => break,
                }
            }
            chain.reverse();
            ProcSample {
                pid,
                path: chain.join("/"),
                comm: comm.clone(),
                creds: creds.clone(),
                root,
            }
        })
        .collect()
}

/// The processes of one run, each as last seen.
#[derive(Clone, Debug, Default)]
pub struct CredLog {
    by_pid: BTreeMap<u32, ProcSample>,
}

impl CredLog {
    pub fn add(&mut self, samples: Vec<ProcSample>) {
        for s in samples {
            self.by_pid.insert(s.pid, s);
        }
    }

    /// Every process seen, but those of the sessions rooted at `outsiders`
    /// (the probe's exec sessions).
    pub fn processes(&self, outsiders: &[u32]) -> Vec<ProcSample> {
        self.by_pid
            .values()
            .filter(|s| !outsiders.contains(&s.root))
            .cloned()
            .collect()
    }
}

fn bits(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| match Cap::from_number(b) {
            Some(c) => c.to_string(),
            None => format!("capability {b}"),
        })
        .collect()
}

/// What `a` holds that `b` does not; empty when `b` holds at least as much.
pub fn gained(a: &Creds, b: &Creds) -> Vec<String> {
    let mut out = vec![];
    let ids = |what: &str, a: &[u32], b: &[u32], out: &mut Vec<String>| {
        let b: BTreeSet<&u32> = b.iter().collect();
        let extra: BTreeSet<&u32> = a.iter().filter(|x| !b.contains(x)).collect();
        for x in extra {
            out.push(format!("{what} {x}"));
        }
    };
    ids("uid", &a.uids, &b.uids, &mut out);
    ids("gid", &a.gids, &b.gids, &mut out);
    ids("group", &a.groups, &b.groups, &mut out);
    for (set, x, y) in [
        ("CapEff", a.cap_eff, b.cap_eff),
        ("CapPrm", a.cap_prm, b.cap_prm),
        ("CapInh", a.cap_inh, b.cap_inh),
        ("CapBnd", a.cap_bnd, b.cap_bnd),
        ("CapAmb", a.cap_amb, b.cap_amb),
    ] {
        for cap in bits(x & !y) {
            out.push(format!("{set} {cap}"));
        }
    }
    if b.no_new_privs && !a.no_new_privs {
        out.push("no_new_privs off".into());
    }
    if a.seccomp < b.seccomp {
        out.push(format!(
            "seccomp mode {} (baseline {})",
            a.seccomp, b.seccomp
        ));
    }
    out
}

/// The processes of `run` that hold more than every matching process of
/// `baseline` (see the module's comment for the matching).
pub fn drift(baseline: &[ProcSample], run: &[ProcSample]) -> Vec<Drift> {
    let mut drifts = vec![];
    for p in run {
        let by_path: Vec<&ProcSample> = baseline.iter().filter(|b| b.path == p.path).collect();
        let by_comm: Vec<&ProcSample> = baseline.iter().filter(|b| b.comm == p.comm).collect();
        let candidates: Vec<&ProcSample> = if !by_path.is_empty() {
            by_path
        } else if !by_comm.is_empty() {
            by_comm
        } else {
            baseline.iter().collect()
        };
        // The closest baseline process: the one it gained least over.
        let least = candidates
            .iter()
            .map(|b| gained(&p.creds, &b.creds))
            .min_by_key(Vec::len);
        let gained = match least {
            Some(g) => g,
            // No baseline process at all: nothing to compare with.
            None => continue,
        };
        if !gained.is_empty() {
            drifts.push(Drift {
                pid: p.pid,
                process: p.path.clone(),
                gained,
            });
        }
    }
    drifts
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "\
Name:\thttpd
Umask:\t0022
State:\tS (sleeping)
Tgid:\t42
Pid:\t42
PPid:\t7
Uid:\t1000\t1000\t1000\t1000
Gid:\t1000\t1000\t1000\t1000
Groups:\t1000 27
CapInh:\t0000000000000000
CapPrm:\t0000000000000000
CapEff:\t0000000000000000
CapBnd:\t00000000a80425fb
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t2
";

    fn sample(pid: u32, path: &str, creds: Creds) -> ProcSample {
        ProcSample {
            pid,
            path: path.into(),
            comm: path.rsplit('/').next().unwrap().into(),
            creds,
            root: pid,
        }
    }

    fn root() -> Creds {
        Creds {
            cap_eff: 0xa80425fb,
            cap_prm: 0xa80425fb,
            cap_bnd: 0xa80425fb,
            seccomp: 2,
            ..Default::default()
        }
    }

    #[test]
    fn status_parses() {
        let (comm, ppid, creds) = parse_status(STATUS).unwrap();
        assert_eq!((comm.as_str(), ppid), ("httpd", 7));
        assert_eq!(creds.uids, [1000; 4]);
        assert_eq!(creds.groups, [27, 1000]);
        assert_eq!(creds.cap_bnd, 0xa80425fb);
        assert_eq!(creds.seccomp, 2);
        assert!(parse_status("Name:\tx\nPPid:\t1\n").is_none());
    }

    #[test]
    fn paths_follow_parents_inside_the_set() {
        let mut seen = BTreeMap::new();
        seen.insert(10, ("nginx".to_owned(), 3, root()));
        seen.insert(11, ("nginx".to_owned(), 10, root()));
        seen.insert(12, ("runc:[2:INIT]".to_owned(), 3, root()));
        let paths: Vec<(String, u32)> = with_paths(&seen)
            .into_iter()
            .map(|s| (s.path, s.root))
            .collect();
        assert_eq!(
            paths,
            [("nginx".to_owned(), 10), ("nginx/nginx".to_owned(), 10)]
        );
    }

    #[test]
    fn a_probe_exec_session_is_not_the_workload() {
        // The workload (10) dropped to a user; the probe's exec session (20,
        // and its child 21) runs as root beside it, in the same cgroup.
        let user = parse_status(STATUS).unwrap().2;
        let mut seen = BTreeMap::new();
        seen.insert(10, ("httpd".to_owned(), 3, user.clone()));
        seen.insert(20, ("sh".to_owned(), 3, root()));
        seen.insert(21, ("wget".to_owned(), 20, root()));
        let mut log = CredLog::default();
        log.add(with_paths(&seen));
        let pids = |v: Vec<ProcSample>| v.into_iter().map(|s| s.pid).collect::<Vec<_>>();
        assert_eq!(pids(log.processes(&[])), [10, 20, 21]);
        assert_eq!(pids(log.processes(&[20])), [10]);
        let baseline = [sample(1, "httpd", user)];
        assert!(drift(&baseline, &log.processes(&[20])).is_empty());
        assert!(!drift(&baseline, &log.processes(&[])).is_empty());
    }

    #[test]
    fn a_worker_left_as_root_drifts_though_its_master_is_root() {
        let user = parse_status(STATUS).unwrap().2;
        let baseline = [
            sample(1, "httpd", root()),
            sample(2, "httpd/httpd", user.clone()),
        ];
        let same = [sample(5, "httpd", root()), sample(6, "httpd/httpd", user)];
        assert!(drift(&baseline, &same).is_empty());
        let mut less = root();
        less.cap_eff &= !1;
        less.cap_prm &= !1;
        less.cap_bnd &= !1;
        let dropped_failed = [
            sample(5, "httpd", less.clone()),
            sample(6, "httpd/httpd", less),
        ];
        let drifts = drift(&baseline, &dropped_failed);
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(drifts[0].process, "httpd/httpd");
        assert!(drifts[0].gained.contains(&"uid 0".to_owned()), "{drifts:?}");
        assert!(drifts[0].gained.iter().any(|g| g.starts_with("CapEff")));
    }

    #[test]
    fn a_process_elsewhere_in_the_tree_is_matched_by_name() {
        let user = parse_status(STATUS).unwrap().2;
        // The baseline forked `sleep` as app; the failing run exec'd it in
        // place of the shell, as root.
        let baseline = [sample(1, "sh", root()), sample(2, "sh/sleep", user)];
        let drifts = drift(&baseline, &[sample(9, "sleep", root())]);
        assert_eq!(drifts.len(), 1);
        assert!(drifts[0].gained.contains(&"uid 0".to_owned()));
    }

    #[test]
    fn weaker_confinement_is_a_gain() {
        let mut confined = root();
        confined.no_new_privs = true;
        let mut loose = root();
        loose.seccomp = 0;
        let gained = gained(&loose, &confined);
        assert!(
            gained.contains(&"no_new_privs off".to_owned()),
            "{gained:?}"
        );
        assert!(
            gained.iter().any(|g| g.starts_with("seccomp")),
            "{gained:?}"
        );
    }
}
