//! Root integration tests: `capprof run` starts warm from the verified
//! programs and maps an earlier run kept in bpffs (observer/warm.rs), and
//! a warm start never changes a profile: not when it follows another run
//! at once (taking over its links), not beside a run that holds the set,
//! not from a damaged set, not with a wrong kernel-functions cache. A
//! run's links stay attached a moment after it, and then go, even when
//! the run was killed.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use aya::programs::{ProgramInfo, loaded_links};
use capprof::observer::warm::{self, LINGER};
use serde_json::Value;

use crate::{
    common::*,
    startup_cache::{CACHE_FILE, shift_addresses},
};

/// One `capprof run` of `cmd`, its profile in `out`, with the debug log.
fn run(extra: &[&str], cache_dir: &Path, out: &Path, cmd: &[&str]) -> Command {
    let mut command = Command::new(CAPPROF);
    command
        .env("CAPPROF_LOG", "capprof=debug")
        .env("CAPPROF_CACHE_DIR", cache_dir)
        .args(["run", "--quiet", "--out", out.to_str().unwrap()])
        .args(extra)
        .arg("--")
        .args(cmd);
    command
}

/// A finished run: its profile, whether it started warm (and from which
/// set), and whether it took over the links of the run before.
struct Ran {
    profile: Value,
    warm_from: Option<PathBuf>,
    took_over: bool,
}

fn finished(out: Output, file: &Path) -> Ran {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "capprof run failed: {stderr}");
    let profile = serde_json::from_str(&std::fs::read_to_string(file).unwrap())
        .unwrap_or_else(|e| panic!("no profile ({e}): {stderr}"));
    let warm_from = stderr.lines().find_map(|l| {
        l.split_once("started warm from ")
            .map(|(_, d)| d.trim().into())
    });
    let took_over = stderr.contains("took over the links of the run before");
    Ran {
        profile,
        warm_from,
        took_over,
    }
}

/// How many links the kernel has attached to the programs of `set`.
fn links_on(set: &Path) -> usize {
    let programs: BTreeSet<u32> = std::fs::read_dir(set.join("progs"))
        .unwrap()
        .flatten()
        .map(|pin| ProgramInfo::from_pin(pin.path()).unwrap().id())
        .collect();
    assert!(!programs.is_empty(), "no programs in {}", set.display());
    loaded_links()
        .filter_map(Result::ok)
        .filter(|link| programs.contains(&link.program_id()))
        .count()
}

/// Waits for a run started in the background to have pinned a link per
/// program of `set`, and for `ready`.
fn wait_attached(set: &Path, ready: impl Fn() -> bool) {
    let programs = std::fs::read_dir(set.join("progs")).unwrap().count();
    let started = Instant::now();
    while pinned_links(set) < programs || !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run never attached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many links are pinned in `set`.
fn pinned_links(set: &Path) -> usize {
    std::fs::read_dir(set.join("links")).unwrap().count()
}

/// Waits up to `within` for the links on `set`'s programs to be gone, and
/// says how long that took. Their holder holds the set's lock a moment
/// after the last one: it then waits for that too, so that what the test
/// does next starts from a settled set.
fn links_gone(set: &Path, within: Duration) -> Duration {
    let started = Instant::now();
    while links_on(set) > 0 {
        assert!(
            started.elapsed() < within,
            "{} links still attached to {} after {within:?}, {} pinned",
            links_on(set),
            set.display(),
            pinned_links(set)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let gone = started.elapsed();
    let root = set.parent().unwrap();
    assert!(
        warm::wait_settled(root, within),
        "{} still busy after its links went",
        set.display()
    );
    gone
}

struct Bench {
    scratch: Scratch,
    cache_dir: PathBuf,
    target: PathBuf,
}

impl Bench {
    fn new(tag: &str) -> Self {
        let scratch = Scratch::new(tag);
        let target = scratch.path("target");
        fixture_file(&target, 0, 0, 0o644);
        Self {
            cache_dir: scratch.path("cache"),
            target,
            scratch,
        }
    }

    /// The command every run profiles: two chowns of a root-owned file.
    fn cmd(&self) -> Vec<String> {
        let t = self.target.to_str().unwrap();
        vec![
            "sh".into(),
            "-c".into(),
            format!("{ACTION} chown {t} && {ACTION} chown {t}"),
        ]
    }

    /// A cold run's profile, then a run that started warm (the one before
    /// it may have made the set), and the set it started from.
    fn cold_then_warm(&self) -> (Value, Ran, PathBuf) {
        let cold = self.run(&["--cold"], 0);
        self.run(&[], 1);
        let warm = self.run(&[], 2);
        let set = warm.warm_from.clone().expect("started warm");
        (cold.profile, warm, set)
    }

    fn run(&self, extra: &[&str], n: usize) -> Ran {
        let file = self.scratch.path(&format!("profile-{n}.json"));
        let cmd = self.cmd();
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = run(extra, &self.cache_dir, &file, &cmd)
            .output()
            .expect("capprof runs");
        finished(out, &file)
    }
}

/// What a warm start must not change: the lists, and each capability's
/// class, count and named call sites.
fn essentials(profile: &Value) -> Value {
    let caps: Vec<Value> = profile["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let sites: Vec<&Value> = c["evidence"]
                .as_array()
                .map(|e| e.iter().map(|e| &e["call_site"]).collect())
                .unwrap_or_default();
            serde_json::json!([
                c["name"],
                c["class"],
                c["granted"],
                c["denied"],
                c["by_class"],
                sites
            ])
        })
        .collect();
    serde_json::json!({
        "allowlist": profile["allowlist"],
        "required": profile["required"],
        "capabilities": caps,
        "classification": profile["observation"]["classification"],
        "lost": profile["observation"]["lost_records"],
    })
}

fn assert_same(cold: &Value, warm: &Ran, what: &str) {
    assert_eq!(
        essentials(cold),
        essentials(&warm.profile),
        "{what}: the warm profile differs from the cold one"
    );
    let chown = capability(&warm.profile, "CAP_CHOWN");
    assert_eq!(chown["class"], "required", "{what}: {chown}");
}

#[test]
#[ignore = "needs root"]
fn a_warm_run_profiles_as_a_cold_one_even_right_after_another() {
    require_root();
    let bench = Bench::new("warm-same");
    let cold = bench.run(&["--cold"], 0);
    assert!(cold.warm_from.is_none(), "--cold started warm");
    assert_eq!(names(&cold.profile, "required"), ["CAP_CHOWN"]);
    // The first may make the set; the next ones start from it, each at
    // once after the one before, taking over its links: a check counted
    // twice (by links of both runs, or one left from a run before) would
    // show as a count of 4.
    bench.run(&[], 1);
    for n in 2..5 {
        let warm = bench.run(&[], n);
        assert!(warm.warm_from.is_some(), "run {n} did not start warm");
        assert!(warm.took_over, "run {n} did not take over the links");
        assert_same(&cold.profile, &warm, &format!("run {n}"));
    }
}

#[test]
#[ignore = "needs root"]
fn a_runs_links_stay_a_moment_then_go_even_when_it_was_killed() {
    require_root();
    let bench = Bench::new("warm-linger");
    let (cold, _, set) = bench.cold_then_warm();
    // Right after the run, its links are still attached, for the next.
    let programs = std::fs::read_dir(set.join("progs")).unwrap().count();
    assert_eq!(pinned_links(&set), programs, "a link per program pinned");
    assert_eq!(links_on(&set), programs, "a link per program attached");
    // Then they go, by the holder the run forked, not before `LINGER`.
    let gone = links_gone(&set, LINGER * 5);
    assert!(gone >= LINGER / 2, "the links went after {gone:?}");
    assert_eq!(pinned_links(&set), 0);
    let after = bench.run(&[], 3);
    assert!(!after.took_over, "took over links that were gone");
    assert_same(&cold, &after, "after the links went");
    links_gone(&set, LINGER * 5);

    // A run killed by SIGKILL cannot say so: its holder sees it die.
    let pid_file = bench.scratch.path("cmd.pid");
    let cmd = format!("echo $$ > {} && exec sleep 60", pid_file.display());
    let out = bench.scratch.path("killed.json");
    let mut killed = run(&[], &bench.cache_dir, &out, &["sh", "-c", &cmd])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("capprof runs");
    wait_attached(&set, || pid_file.exists());
    killed.kill().unwrap();
    killed.wait().unwrap();
    let sleeper = std::fs::read_to_string(&pid_file).unwrap();
    let _ = Command::new("kill").args(["-9", sleeper.trim()]).status();
    links_gone(&set, LINGER * 5);
    assert_eq!(pinned_links(&set), 0, "the killed run's pins stayed");
    remove_leftover_cgroups(killed.id());
    let last = bench.run(&[], 4);
    assert_same(&cold, &last, "after a killed run");
}

/// A holder detaching the links of a run before holds the set's lock,
/// and `links/`'s to say so: a run waits for it rather than load cold,
/// unlike beside a run, which holds the set's lock alone.
#[test]
#[ignore = "needs root"]
fn a_run_waits_for_a_holder_detaching_links_rather_than_load_cold() {
    use std::os::fd::AsRawFd as _;
    require_root();
    let bench = Bench::new("warm-wait");
    let (cold, _, set) = bench.cold_then_warm();
    links_gone(&set, LINGER * 5);
    // As a holder at work holds them: `links/`, then the set.
    let lock = |path: &Path| {
        let dir = std::fs::File::open(path).unwrap();
        // SAFETY: flock on an fd we own.
        let locked = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(locked, 0, "cannot lock {}", path.display());
        dir
    };
    let links = lock(&set.join("links"));
    let busy = lock(&set);
    let out = bench.scratch.path("waited.json");
    let cmd = bench.cmd();
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let waiting = run(&[], &bench.cache_dir, &out, &cmd)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capprof runs");
    std::thread::sleep(Duration::from_millis(500));
    drop((links, busy));
    let waited = finished(waiting.wait_with_output().unwrap(), &out);
    assert_eq!(waited.warm_from.as_ref(), Some(&set), "loaded cold");
    assert_same(&cold, &waited, "after waiting");
}

/// Ctrl-C signals the terminal's whole foreground process group: the
/// run, its command and, unless it left the group, the holder that is to
/// detach the run's links later. Without a holder they would stay attached.
#[test]
#[ignore = "needs root"]
fn ctrl_c_on_a_runs_process_group_leaves_no_links_behind() {
    use std::os::unix::process::CommandExt as _;
    require_root();
    let bench = Bench::new("warm-ctrl-c");
    let (cold, _, set) = bench.cold_then_warm();
    links_gone(&set, LINGER * 5);
    let out = bench.scratch.path("interrupted.json");
    let mut run = run(&[], &bench.cache_dir, &out, &["sleep", "60"]);
    let interrupted = run
        .process_group(0)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capprof runs");
    wait_attached(&set, || true);
    // As the terminal does: the whole group.
    // SAFETY: signalling a process group we made.
    unsafe { libc::kill(-(interrupted.id() as i32), libc::SIGINT) };
    let output = interrupted.wait_with_output().unwrap();
    assert!(
        !output.status.success(),
        "sleep was not interrupted: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    links_gone(&set, LINGER * 5);
    assert_eq!(pinned_links(&set), 0, "the interrupted run's pins stayed");
    let after = bench.run(&[], 3);
    assert_same(&cold, &after, "after an interrupted run");
}

/// Removes the cgroups of a killed `capprof run` with this pid.
fn remove_leftover_cgroups(pid: u32) {
    let mount = capprof::cgroup::cgroup2_mount().unwrap();
    let prefix = format!("run-{pid}-");
    for entry in std::fs::read_dir(mount.join("capprof")).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let started = Instant::now();
            while std::fs::remove_dir(entry.path()).is_err()
                && started.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
#[ignore = "needs root"]
fn a_run_beside_one_that_holds_the_set_loads_cold_and_both_see_their_own() {
    require_root();
    let bench = Bench::new("warm-beside");
    let cold = bench.run(&["--cold"], 0);
    bench.run(&[], 1);
    // The first holds the set for a second; the second cannot have it.
    let slow_file = bench.scratch.path("slow.json");
    let t = bench.target.to_str().unwrap();
    let slow_cmd = format!("{ACTION} chown {t} && {ACTION} chown {t} && sleep 1");
    let slow = run(&[], &bench.cache_dir, &slow_file, &["sh", "-c", &slow_cmd])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("capprof runs");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let beside = bench.run(&[], 2);
    let slow = finished(slow.wait_with_output().unwrap(), &slow_file);
    assert!(slow.warm_from.is_some(), "the first run did not start warm");
    assert!(
        beside.warm_from.is_none(),
        "the second run shared the set the first one held"
    );
    // Its command runs `sleep` too: only its chowns compare.
    let chown = |p: &Value| {
        essentials(p)["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c[0] == "CAP_CHOWN")
            .cloned()
    };
    assert_eq!(chown(&cold.profile), chown(&slow.profile));
    assert_eq!(names(&slow.profile, "required"), ["CAP_CHOWN"]);
    assert_same(&cold.profile, &beside, "the run beside it");
}

#[test]
#[ignore = "needs root"]
fn a_damaged_set_or_a_wrong_cache_never_changes_a_profile() {
    require_root();
    let bench = Bench::new("warm-damaged");
    let (cold, warm, set) = bench.cold_then_warm();
    assert_same(&cold, &warm, "warm");

    // A program gone: the set is made again by a cold load.
    std::fs::remove_file(set.join("progs/capprof_exec")).unwrap();
    let remade = bench.run(&[], 3);
    assert!(remade.warm_from.is_none(), "started warm from a broken set");
    assert_same(&cold, &remade, "after a program was removed");
    assert!(
        set.join("progs/capprof_exec").exists(),
        "the set was not made again"
    );
    let again = bench.run(&[], 4);
    assert_eq!(again.warm_from.as_ref(), Some(&set));
    assert_same(&cold, &again, "from the set made again");

    // A kernel-functions cache that is not the one the set was calibrated
    // with: call sites are named from /proc/kallsyms instead.
    let cache = bench.cache_dir.join(CACHE_FILE);
    let written = std::fs::read_to_string(&cache).expect("a cache");
    std::fs::write(&cache, shift_addresses(&written)).unwrap();
    let shifted = bench.run(&[], 5);
    assert!(shifted.warm_from.is_some());
    assert_same(&cold, &shifted, "with a wrong cache");
}
