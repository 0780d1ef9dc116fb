//! Node scale (issue 16): the release daemon watching many long-running
//! containers while short-lived ones come and go. Reports its RSS, its CPU
//! while the long-running ones sit idle (from /proc/PID/stat over a
//! window), the latency of `capprof ps` and `capprof profile` during the
//! churn, and whether every short-lived container's profile is there
//! afterwards, with the capability it used.

use std::{
    fs,
    path::Path,
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::{
    daemon::Daemon,
    stats::Summary,
    targets::Verdict,
    workload_image::{self, IMAGE},
};
use crate::{
    engine::Engine,
    util::{note, stdout_of, step},
};

/// Parallel `docker run`s (the engine serialises much of the work anyway).
const STARTERS: usize = 4;
const RSS_TARGET_MB: f64 = 40.0;
/// The daemon's peak RSS (VmHWM) over the whole run (issue 21).
const RSS_PEAK_TARGET_MB: f64 = 48.0;
const IDLE_CPU_TARGET: f64 = 0.002;
const API_P99_TARGET_MS: f64 = 50.0;

pub struct ScalePlan {
    pub long: usize,
    pub short: usize,
    pub idle_secs: u64,
}

#[derive(Default)]
pub struct ScaleResults {
    pub long: usize,
    pub short_started: usize,
    pub churn_secs: f64,
    pub idle_secs: f64,
    pub rss_idle_mb: f64,
    pub rss_after_mb: f64,
    pub hwm_mb: f64,
    pub idle_cpu: f64,
    /// Whole `capprof ps` / `capprof profile` processes.
    pub ps_ms: Vec<f64>,
    pub profile_ms: Vec<f64>,
    /// The same two answers asked on the socket from this process: what
    /// the daemon's API takes, without a client process's start-up.
    pub ps_api_ms: Vec<f64>,
    pub profile_api_ms: Vec<f64>,
    pub api_errors: usize,
    /// Short-lived containers whose profile the daemon could not show, or
    /// showed without CAP_CHOWN.
    pub profiles_missing: usize,
    pub smaps: String,
}

pub fn run(plan: &ScalePlan, capprof: &Path, bench: &Path) -> Result<ScaleResults> {
    let engine = Engine::ensure()?;
    let engine_url = engine.host().map_or_else(
        || std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
        str::to_owned,
    );
    workload_image::ensure(&engine, bench)?;
    let daemon = Daemon::start(capprof, &engine_url, "scale")?;
    let mut r = ScaleResults {
        long: plan.long,
        ..Default::default()
    };
    let label = format!("capprof-bench-scale={}", std::process::id());
    let result = measure(plan, &engine, &daemon, &label, &mut r);
    step("scale: removing the containers");
    let _ = remove_labelled(&engine, &label);
    daemon.stop();
    result.map(|()| r)
}

/// The phases, in order: long-running containers started, the daemon idle
/// beside them, short-lived ones churned while the API is timed, then each
/// short-lived container's profile and the daemon's memory.
fn measure(
    plan: &ScalePlan,
    engine: &Engine,
    daemon: &Daemon,
    label: &str,
    r: &mut ScaleResults,
) -> Result<()> {
    let long_ids = start_long(plan, engine, label)?;
    // Let the daemon catch up with the starts before measuring idle.
    thread::sleep(Duration::from_secs(5));
    measure_idle(plan, daemon, r)?;
    let short = churn(plan, engine, daemon, label, &long_ids, r);
    if short.failed > 0 {
        note(format_args!(
            "{} short-lived containers failed to run",
            short.failed
        ));
    }
    // The daemon finalizes a profile once the container's last records
    // are in.
    thread::sleep(Duration::from_secs(5));
    step("scale: every short-lived container's profile, from the daemon");
    for id in &short.ids {
        let shown = stdout_of(
            daemon
                .client("profile")
                .args([id.as_str(), "--format", "json"]),
        );
        if !shown.is_ok_and(|p| p.contains("CAP_CHOWN")) {
            r.profiles_missing += 1;
        }
    }
    r.rss_after_mb = status_kb(daemon.pid(), "VmRSS:")? / 1024.0;
    r.hwm_mb = status_kb(daemon.pid(), "VmHWM:")? / 1024.0;
    r.smaps =
        fs::read_to_string(format!("/proc/{}/smaps_rollup", daemon.pid())).unwrap_or_default();
    Ok(())
}

/// Starts `plan.long` long-running containers; their ids.
fn start_long(plan: &ScalePlan, engine: &Engine, label: &str) -> Result<Vec<String>> {
    step(format_args!(
        "scale: starting {} long-running containers",
        plan.long
    ));
    let started = run_many(engine, plan.long, label, |_| {
        vec!["-d".into(), IMAGE.into(), "sleep".into(), "1000000".into()]
    });
    if started.ids.len() < plan.long {
        bail!(
            "only {} of {} long-running containers started",
            started.ids.len(),
            plan.long
        );
    }
    Ok(started.ids)
}

/// The daemon's CPU share and RSS while the containers sit idle.
fn measure_idle(plan: &ScalePlan, daemon: &Daemon, r: &mut ScaleResults) -> Result<()> {
    step(format_args!(
        "scale: the daemon's CPU while {} containers sit idle, over {} s",
        plan.long, plan.idle_secs
    ));
    let t0 = cpu_ticks(daemon.pid())?;
    let w0 = Instant::now();
    thread::sleep(Duration::from_secs(plan.idle_secs));
    let t1 = cpu_ticks(daemon.pid())?;
    r.idle_secs = w0.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    r.idle_cpu = (t1 - t0) as f64 / hz / r.idle_secs;
    r.rss_idle_mb = status_kb(daemon.pid(), "VmRSS:")? / 1024.0;
    Ok(())
}

/// `plan.short` short-lived containers (each chowns a file), run while
/// `capprof ps` and `capprof profile` are timed.
fn churn(
    plan: &ScalePlan,
    engine: &Engine,
    daemon: &Daemon,
    label: &str,
    long_ids: &[String],
    r: &mut ScaleResults,
) -> Started {
    step(format_args!(
        "scale: {} short-lived containers (each chowns a file), while `capprof ps` and `capprof profile` are timed",
        plan.short
    ));
    let done = AtomicBool::new(false);
    let api = ApiTimes::default();
    let w = Instant::now();
    let short = thread::scope(|s| {
        s.spawn(|| api.poll(daemon, long_ids, &done));
        let short = run_many(engine, plan.short, label, |_| {
            vec![
                "--rm".into(),
                IMAGE.into(),
                "sh".into(),
                "-c".into(),
                "touch /tmp/f && chown 1000 /tmp/f".into(),
            ]
        });
        done.store(true, Ordering::Relaxed);
        short
    });
    r.churn_secs = w.elapsed().as_secs_f64();
    r.short_started = short.ids.len();
    r.ps_ms = api.ps_ms.into_inner().unwrap();
    r.profile_ms = api.profile_ms.into_inner().unwrap();
    r.ps_api_ms = api.ps_api_ms.into_inner().unwrap();
    r.profile_api_ms = api.profile_api_ms.into_inner().unwrap();
    r.api_errors = api.errors.into_inner();
    short
}

/// How long `capprof ps` and `capprof profile` took, as whole processes
/// and on the socket, and how often any of them failed.
#[derive(Default)]
struct ApiTimes {
    ps_ms: Mutex<Vec<f64>>,
    profile_ms: Mutex<Vec<f64>>,
    ps_api_ms: Mutex<Vec<f64>>,
    profile_api_ms: Mutex<Vec<f64>>,
    errors: AtomicUsize,
}

impl ApiTimes {
    /// Times `ps`, then `profile` of one of `long_ids` in turn, as
    /// processes and then on the socket, every 100 ms until `done`.
    fn poll(&self, daemon: &Daemon, long_ids: &[String], done: &AtomicBool) {
        let mut i = 0;
        while !done.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = daemon
                .client("ps")
                .args(["--format", "json"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            self.ps_ms
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1e3);
            let id = &long_ids[i % long_ids.len()];
            let t = Instant::now();
            let ok2 = daemon
                .client("profile")
                .args([&id[..12], "--format", "json"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            self.profile_ms
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let ok3 = api_get(&daemon.socket(), "/v1/containers");
            self.ps_api_ms
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let ok4 = api_get(&daemon.socket(), &format!("/v1/containers/{}", &id[..12]));
            self.profile_api_ms
                .lock()
                .unwrap()
                .push(t.elapsed().as_secs_f64() * 1e3);
            if !(ok && ok2 && ok3 && ok4) {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
            thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Started {
    ids: Vec<String>,
    failed: usize,
}

/// `n` × `docker run --label L --network none ARGS…`, STARTERS at a time;
/// the ids of those that ran (`-d` prints it; otherwise `--cidfile`).
fn run_many(
    engine: &Engine,
    n: usize,
    label: &str,
    args: impl Fn(usize) -> Vec<String> + Sync,
) -> Started {
    let next = AtomicUsize::new(0);
    let ids = Mutex::new(vec![]);
    let failed = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("capprof-bench-cid-{}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    thread::scope(|s| {
        for _ in 0..STARTERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let cidfile = dir.join(format!("{i}-{}", Instant::now().elapsed().as_nanos()));
                    let _ = fs::remove_file(&cidfile);
                    let ok = engine
                        .docker()
                        .args(["run", "--label", label, "--network", "none", "--cidfile"])
                        .arg(&cidfile)
                        .args(args(i))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    match fs::read_to_string(&cidfile) {
                        Ok(id) if ok && id.len() >= 12 => ids.lock().unwrap().push(id),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let _ = fs::remove_file(&cidfile);
                }
            });
        }
    });
    let _ = fs::remove_dir_all(&dir);
    Started {
        ids: ids.into_inner().unwrap(),
        failed: failed.into_inner(),
    }
}

fn remove_labelled(engine: &Engine, label: &str) -> Result<()> {
    let ids =
        stdout_of(
            engine
                .docker()
                .args(["ps", "-aq", "--filter", &format!("label={label}")]),
        )?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for chunk in ids.chunks(50) {
        let _ = engine
            .docker()
            .args(["rm", "-f"])
            .args(chunk)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    Ok(())
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command, which may hold spaces, in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // state is field 3; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    Ok(utime + stime)
}

/// A `kB` line of /proc/PID/status.
fn status_kb(pid: u32, key: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no {key} in /proc/{pid}/status"))
}

/// One `GET path` on the daemon's socket, from connect to the answer's
/// last byte; whether it was a 200.
fn api_get(socket: &Path, path: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut answer = vec![];
    write!(stream, "GET {path} HTTP/1.0\r\nHost: capprof\r\n\r\n").is_ok()
        && stream.read_to_end(&mut answer).is_ok()
        && answer.get(8..13) == Some(b" 200 ".as_slice())
}

fn p99(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64) * 0.99).ceil() as usize;
    Some(v[i.clamp(1, v.len()) - 1])
}

impl ScaleResults {
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let show = |v: &[f64]| {
            let s = Summary::of(v);
            match (s, p99(v)) {
                (Some(s), Some(p)) => format!(
                    "p99 {p:.1}, median {:.1}, max {:.1} (n = {})",
                    s.median, s.max, s.n
                ),
                _ => "–".into(),
            }
        };
        let _ = writeln!(out, "\n### Node scale\n");
        let _ = writeln!(
            out,
            "The release daemon watched {} long-running containers while {} short-lived ones \
             (`sh -c 'touch /tmp/f && chown 1000 /tmp/f'`, {STARTERS} `docker run`s at a time) came \
             and went over {:.0} s.\n",
            self.long, self.short_started, self.churn_secs
        );
        let _ = writeln!(out, "| measure | value |");
        let _ = writeln!(out, "|---|---|");
        let _ = writeln!(
            out,
            "| RSS with {} containers idle | {:.1} MB |",
            self.long, self.rss_idle_mb
        );
        let _ = writeln!(
            out,
            "| RSS after the churn | {:.1} MB (peak {:.1} MB) |",
            self.rss_after_mb, self.hwm_mb
        );
        let _ = writeln!(
            out,
            "| CPU while {} containers sit idle (/proc/PID/stat over {:.0} s) | {:.3}% of a core |",
            self.long,
            self.idle_secs,
            self.idle_cpu * 100.0
        );
        let _ = writeln!(
            out,
            "| `capprof ps --format json` during the churn, ms | {} |",
            show(&self.ps_ms)
        );
        let _ = writeln!(
            out,
            "| `capprof profile ID --format json` during the churn, ms | {} |",
            show(&self.profile_ms)
        );
        let _ = writeln!(
            out,
            "| `GET /v1/containers` on the socket (no client process) during the churn, ms | {} |",
            show(&self.ps_api_ms)
        );
        let _ = writeln!(
            out,
            "| `GET /v1/containers/ID` on the socket (no client process) during the churn, ms | {} |",
            show(&self.profile_api_ms)
        );
        let _ = writeln!(out, "| API calls that failed | {} |", self.api_errors);
        let _ = writeln!(
            out,
            "| short-lived containers without their profile (or without CAP_CHOWN in it) | {} of {} |",
            self.profiles_missing, self.short_started
        );
        if !self.smaps.is_empty() {
            let _ = writeln!(out, "\n/proc/PID/smaps_rollup after the churn:\n\n```");
            for l in self.smaps.lines().filter(|l| !l.ends_with(" 0 kB")) {
                let _ = writeln!(out, "{l}");
            }
            let _ = writeln!(out, "```");
        }
    }

    pub fn targets(&self) -> Vec<Verdict> {
        let rss = self.rss_idle_mb.max(self.rss_after_mb);
        let (ps, profile) = (p99(&self.ps_api_ms), p99(&self.profile_api_ms));
        let api = ps.into_iter().chain(profile).fold(0.0, f64::max);
        let (ps_cli, profile_cli) = (p99(&self.ps_ms), p99(&self.profile_ms));
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.1} ms"));
        vec![
            Verdict {
                name: format!("scale: daemon RSS ≤ {RSS_TARGET_MB} MB"),
                shown: format!("{rss:.1} MB (peak {:.1} MB)", self.hwm_mb),
                pass: rss <= RSS_TARGET_MB,
                enforced: true,
            },
            Verdict {
                name: format!("scale: daemon peak RSS (VmHWM) ≤ {RSS_PEAK_TARGET_MB} MB"),
                shown: format!("{:.1} MB", self.hwm_mb),
                pass: self.hwm_mb > 0.0 && self.hwm_mb <= RSS_PEAK_TARGET_MB,
                enforced: false,
            },
            Verdict {
                name: "scale: no profile lost".into(),
                shown: format!(
                    "{} of {} short-lived containers without their profile; {} API calls failed",
                    self.profiles_missing, self.short_started, self.api_errors
                ),
                pass: self.profiles_missing == 0 && self.short_started > 0 && self.api_errors == 0,
                enforced: true,
            },
            Verdict {
                name: format!(
                    "scale: idle CPU ≤ {:.1}% of a core",
                    IDLE_CPU_TARGET * 100.0
                ),
                shown: format!("{:.3}%", self.idle_cpu * 100.0),
                pass: self.idle_cpu <= IDLE_CPU_TARGET,
                enforced: true,
            },
            Verdict {
                name: format!(
                    "scale: API p99 ≤ {API_P99_TARGET_MS} ms during the churn (`ps`, `profile`, on the socket)"
                ),
                shown: format!(
                    "ps {}, profile {} (whole `capprof` processes: ps {}, profile {})",
                    ms(ps),
                    ms(profile),
                    ms(ps_cli),
                    ms(profile_cli)
                ),
                pass: api > 0.0 && api <= API_P99_TARGET_MS,
                enforced: false,
            },
        ]
    }
}
