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
//! A sampler that looks every 50 ms sees a process at some moment of its
//! life, not at the same moment in every run: `setpriv` as root before its
//! setresuid(), or as uid 1000 after; a server's main process before or
//! after it drops to its own user. So a process is kept as *stages*, one
//! per program it runs (its command name changes at exec), each with every
//! distinct state seen; a stage is *settled* when its last state was seen
//! in `SETTLED_AFTER` samples in a row, which a state held for an instant
//! before an exec or a drop never is.
//!
//! A process of a run is matched with the baseline's processes at the same
//! place in the process tree: the chain of command names from the
//! workload's first process (`nginx/nginx` for a worker, `nginx` for its
//! master). Failing that, with the baseline's processes of the same name;
//! failing that, with all of them. Only a real gain of privilege counts:
//! holding the namespace's root uid or gid (in any of the four positions)
//! or its root group where the baseline did not, any capability in any set
//! beyond it, no_new_privs off where it was on, or a weaker seccomp mode.
//! Another non-root user is no gain: removing a capability can make a drop
//! fail, never pick another user.
//!
//! - A settled stage that gained over the final states of the baseline's
//!   settled matches (all of their final states, when none settled)
//!   *drifted*: it stayed where the baseline moved on from, such as root.
//! - A stage seen only in passing whose last state gained over every state
//!   the baseline's matches were ever seen in is *inconclusive*: it may be
//!   a moment the baseline's sampler missed. `search` runs again rather
//!   than keep a capability for it.
//!
//! This is one general rule, with no list of programs or capabilities.
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

/// How many samples in a row a stage's last state must be seen in to be
/// where the process settled (about 100 ms at one sample per 50 ms).
pub const SETTLED_AFTER: u32 = 3;

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
    /// The uid and gid that are root in the process's user namespace, as
    /// the sampler sees them (0 and 0 without a user namespace).
    pub root_ids: [u32; 2],
}

/// One stage of a process (one program it ran), as seen in a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcSample {
    pub pid: u32,
    /// The chain of command names from the workload's first process.
    pub path: String,
    pub comm: String,
    /// The last state seen.
    pub creds: Creds,
    /// Every distinct state seen at this stage, in order (`creds` last).
    pub seen: Vec<Creds>,
    /// Whether `creds` is where the stage settled (see the module's
    /// comment).
    pub settled: bool,
    /// The first process of its chain: the workload's first process, or an
    /// exec session's.
    pub root: u32,
}

impl ProcSample {
    /// One sample of a process, settled: for tests and for callers that
    /// have no history.
    pub fn settled(pid: u32, path: &str, creds: Creds) -> Self {
        ProcSample {
            pid,
            path: path.to_owned(),
            comm: path.rsplit('/').next().unwrap_or(path).to_owned(),
            seen: vec![creds.clone()],
            creds,
            settled: true,
            root: pid,
        }
    }
}

/// A process of a run that ended up more privileged than the matching
/// processes of the baseline (or, inconclusive, was seen so in passing).
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
            && let Some(mut parsed) = parse_status(&text)
        {
            let map = |file: &str| fs::read_to_string(format!("/proc/{pid}/{file}"));
            parsed.2.root_ids = [
                map("uid_map").map_or(0, |m| root_of_map(&m)),
                map("gid_map").map_or(0, |m| root_of_map(&m)),
            ];
            seen.insert(pid, parsed);
        }
    }
    with_paths(&seen)
}

/// The id that is 0 inside a user namespace, from its `uid_map` or
/// `gid_map` (`inside outside count` lines) as the reader sees it; 0 when
/// no line maps 0.
pub fn root_of_map(text: &str) -> u32 {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_ascii_whitespace().map(|w| w.parse::<u32>().ok());
            match (words.next()??, words.next()??) {
                (0, outside) => Some(outside),
                _ => None,
            }
        })
        .next()
        .unwrap_or(0)
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
                seen: vec![creds.clone()],
                settled: false,
                root,
            }
        })
        .collect()
}

/// The processes of one run: each one's stages, with every state seen.
#[derive(Clone, Debug, Default)]
pub struct CredLog {
    by_pid: BTreeMap<u32, Vec<Stage>>,
}

#[derive(Clone, Debug)]
struct Stage {
    /// As first seen (its path is then the most complete), with the last
    /// state and every state seen.
    sample: ProcSample,
    /// Samples in a row that saw the last state.
    repeats: u32,
}

impl CredLog {
    /// Adds one sampling round.
    pub fn add(&mut self, samples: Vec<ProcSample>) {
        for s in samples {
            let stages = self.by_pid.entry(s.pid).or_default();
            match stages.last_mut() {
                Some(stage) if stage.sample.comm == s.comm => {
                    if stage.sample.creds == s.creds {
                        stage.repeats += 1;
                        continue;
                    }
                    stage.repeats = 1;
                    if !stage.sample.seen.contains(&s.creds) {
                        stage.sample.seen.push(s.creds.clone());
                    }
                    stage.sample.creds = s.creds;
                }
                // A new program (exec), or a new process.
                _ => stages.push(Stage {
                    sample: s,
                    repeats: 1,
                }),
            }
        }
    }

    /// Every stage of every process seen, but those of the sessions rooted
    /// at `outsiders` (the probe's exec sessions). Only the last stage of
    /// a process can be settled: an exec ended the others.
    pub fn processes(&self, outsiders: &[u32]) -> Vec<ProcSample> {
        let mut out = vec![];
        for stages in self.by_pid.values() {
            for (i, stage) in stages.iter().enumerate() {
                if outsiders.contains(&stage.sample.root) {
                    continue;
                }
                let last = i + 1 == stages.len();
                out.push(ProcSample {
                    settled: last && stage.repeats >= SETTLED_AFTER,
                    ..stage.sample.clone()
                });
            }
        }
        out
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

/// The privilege `a` holds that `b` does not; empty when `b` holds at
/// least as much. Of ids, only root's count: root in a position (real,
/// effective, saved, filesystem) where `b` is not, or the root group among
/// the supplementary ones. Another non-root id is not more privilege.
pub fn gained(a: &Creds, b: &Creds) -> Vec<String> {
    let mut out = vec![];
    let [a_uid, a_gid] = a.root_ids;
    let [b_uid, b_gid] = b.root_ids;
    let root_where_not = |a: &[u32; 4], a_root: u32, b: &[u32; 4], b_root: u32| {
        a.iter().zip(b).any(|(x, y)| *x == a_root && *y != b_root)
    };
    if root_where_not(&a.uids, a_uid, &b.uids, b_uid) {
        out.push("uid 0".to_owned());
    }
    if root_where_not(&a.gids, a_gid, &b.gids, b_gid) {
        out.push("gid 0".to_owned());
    }
    if a.groups.contains(&a_gid) && !b.groups.contains(&b_gid) {
        out.push("group 0".to_owned());
    }
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

/// What comparing a run's processes with the baseline's found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drifts {
    /// Settled processes more privileged than the baseline's: a drop that
    /// failed.
    pub drift: Vec<Drift>,
    /// Processes seen in passing with what the baseline was never seen
    /// with: the two cannot be compared.
    pub inconclusive: Vec<Drift>,
}

/// Compares the processes of `run` with `baseline`'s (see the module's
/// comment for the matching and the rule).
pub fn compare(baseline: &[ProcSample], run: &[ProcSample]) -> Drifts {
    let mut found = Drifts::default();
    for p in run {
        let candidates = matches(baseline, p);
        if candidates.is_empty() {
            continue;
        }
        let (against, into): (Vec<&Creds>, _) = if p.settled {
            let settled: Vec<&Creds> = candidates
                .iter()
                .filter(|b| b.settled)
                .map(|b| &b.creds)
                .collect();
            let finals = if settled.is_empty() {
                candidates.iter().map(|b| &b.creds).collect()
            } else {
                settled
            };
            (finals, &mut found.drift)
        } else {
            let states = candidates.iter().flat_map(|b| &b.seen).collect();
            (states, &mut found.inconclusive)
        };
        let gained = against
            .iter()
            .map(|b| gained(&p.creds, b))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        if !gained.is_empty() {
            into.push(Drift {
                pid: p.pid,
                process: p.path.clone(),
                gained,
            });
        }
    }
    found
}

/// The baseline's stages `p` compares with: the same place in the tree,
/// else the same program, else all.
fn matches<'a>(baseline: &'a [ProcSample], p: &ProcSample) -> Vec<&'a ProcSample> {
    let by_path: Vec<&ProcSample> = baseline.iter().filter(|b| b.path == p.path).collect();
    if !by_path.is_empty() {
        return by_path;
    }
    let by_comm: Vec<&ProcSample> = baseline.iter().filter(|b| b.comm == p.comm).collect();
    if !by_comm.is_empty() {
        return by_comm;
    }
    baseline.iter().collect()
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
        ProcSample::settled(pid, path, creds)
    }

    fn drift(baseline: &[ProcSample], run: &[ProcSample]) -> Vec<Drift> {
        compare(baseline, run).drift
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
        for _ in 0..SETTLED_AFTER {
            log.add(with_paths(&seen));
        }
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

    fn user(uid: u32) -> Creds {
        Creds {
            uids: [uid; 4],
            gids: [uid; 4],
            cap_bnd: 0xa80425fb,
            seccomp: 2,
            ..Default::default()
        }
    }

    /// `setpriv` between setresuid() (KEEPCAPS: permitted kept, effective
    /// cleared) and its capset(), and after it.
    fn kept_caps(raised: bool) -> Creds {
        Creds {
            cap_prm: 0xa80425fb,
            cap_eff: if raised { 0xa80425fb } else { 0 },
            ..user(1000)
        }
    }

    fn glimpse(pid: u32, path: &str, seen: &[Creds]) -> ProcSample {
        ProcSample {
            seen: seen.to_vec(),
            creds: seen.last().unwrap().clone(),
            settled: false,
            ..sample(pid, path, Creds::default())
        }
    }

    /// (what, baseline, run, drifted, inconclusive).
    type Case = (&'static str, Vec<ProcSample>, Vec<ProcSample>, bool, bool);

    /// The comparisons from issue 23 and their neighbours.
    #[test]
    fn only_a_real_gain_over_a_comparable_stage_counts() {
        let cases: Vec<Case> = vec![
            (
                "sh/id dropped from root to 1000: a drop, not a kept uid",
                vec![sample(1, "sh", root())],
                vec![sample(9494, "sh/id", user(1000))],
                false,
                false,
            ),
            (
                "a server's main process on its own user, baseline root",
                vec![sample(1, "srv", root())],
                vec![sample(7, "srv", user(102))],
                false,
                false,
            ),
            (
                "another non-root user is not more privilege",
                vec![sample(1, "srv", user(102))],
                vec![sample(7, "srv", user(1000))],
                false,
                false,
            ),
            (
                "stays root where the baseline dropped",
                vec![sample(1, "sh/sleep", user(1000))],
                vec![sample(7, "sh/sleep", root())],
                true,
                false,
            ),
            (
                "root kept as saved uid",
                vec![sample(1, "srv", user(102))],
                vec![sample(
                    7,
                    "srv",
                    Creds {
                        uids: [102, 102, 0, 102],
                        ..user(102)
                    },
                )],
                true,
                false,
            ),
            (
                "settled root beats a baseline glimpse of its pre-drop moment",
                vec![
                    glimpse(1, "srv", &[root(), user(102)]),
                    sample(2, "srv", user(102)),
                ],
                vec![sample(7, "srv", root())],
                true,
                false,
            ),
            (
                "setpriv glimpsed after capset(), baseline glimpsed before it",
                vec![glimpse(1, "sh/setpriv", &[kept_caps(false)])],
                vec![glimpse(7, "sh/setpriv", &[kept_caps(true)])],
                false,
                true,
            ),
            (
                "setpriv glimpsed as root, baseline saw it root once",
                vec![glimpse(1, "sh/setpriv", &[root(), kept_caps(true)])],
                vec![glimpse(7, "sh/setpriv", &[root()])],
                false,
                false,
            ),
            (
                "a glimpse of less than the baseline",
                vec![sample(1, "sh/setpriv", root())],
                vec![glimpse(7, "sh/setpriv", &[kept_caps(true)])],
                false,
                false,
            ),
        ];
        for (what, baseline, run, drifted, inconclusive) in cases {
            let found = compare(&baseline, &run);
            assert_eq!(!found.drift.is_empty(), drifted, "{what}: {found:?}");
            assert_eq!(
                !found.inconclusive.is_empty(),
                inconclusive,
                "{what}: {found:?}"
            );
        }
    }

    /// A process is kept as stages: an exec starts a new one (and ends the
    /// last one's chance to settle); a state must be seen SETTLED_AFTER
    /// times in a row to be where it settled.
    #[test]
    fn stages_settle_only_when_held() {
        let at = |comm: &str, creds: Creds| {
            let mut seen = BTreeMap::new();
            seen.insert(9, (comm.to_owned(), 1, creds));
            with_paths(&seen)
        };
        let mut log = CredLog::default();
        log.add(at("setpriv", root()));
        log.add(at("setpriv", root()));
        log.add(at("setpriv", root()));
        log.add(at("id", user(1000)));
        let stages = log.processes(&[]);
        assert_eq!(stages.len(), 2);
        assert!(!stages[0].settled, "an exec ended it: {stages:?}");
        assert!(!stages[1].settled, "seen once: {stages:?}");
        log.add(at("id", kept_caps(true)));
        log.add(at("id", kept_caps(true)));
        log.add(at("id", kept_caps(true)));
        let stages = log.processes(&[]);
        assert!(stages[1].settled);
        assert_eq!(stages[1].seen, [user(1000), kept_caps(true)]);
        assert_eq!(stages[1].creds, kept_caps(true));
    }

    #[test]
    fn root_ids_come_from_the_namespace_map() {
        assert_eq!(root_of_map("         0          0 4294967295\n"), 0);
        assert_eq!(root_of_map("0 100000 65536\n"), 100000);
        assert_eq!(root_of_map("1000 1000 1\n"), 0);
        // Root of a remapped container is not a gain over another remapped
        // root, and a remapped root is one over its own users.
        let remapped = |uid: u32| Creds {
            root_ids: [100000, 100000],
            ..user(uid)
        };
        assert!(gained(&remapped(100000), &remapped(100000)).is_empty());
        assert_eq!(
            gained(&remapped(100000), &remapped(101000)),
            ["uid 0", "gid 0"]
        );
    }
}
