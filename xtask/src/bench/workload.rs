//! Workload overhead (issue 16): what a service and an exec-heavy container
//! lose while capprof profiles them, next to nothing attached and to
//! bpftrace's `count()` one-liner on the same tracepoint.
//!
//! Two containers on the test engine, from the workload image
//! (`workload_image`): nginx on the host's network, loaded by `wrk` from
//! the host, and a busybox container in which `docker exec` runs the
//! check-heavy loops: 3,000 `/bin/true` execs from a shell (every exec
//! runs capprof's exec, fork and exit hooks and makes advisory SYS_ADMIN
//! checks), and mmap/munmap churn (`capprof-bench churn`, one advisory
//! check per pair). Each round sets the three configurations up in turn, in
//! a rotated order, and runs every workload under each; the report pairs
//! each configuration with the same round's `nothing`.
//!
//! bpf_stats stay off during the rounds (they add two clock reads to every
//! run). A last pass under the daemon turns them on to price each process
//! hook per run.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    daemon::Daemon,
    host::{cgroup2_mount, read_sysctl, set_sysctl},
    workload_image::{self, BENCH_BIN, IMAGE, NGINX, NGINX_CONF, NGINX_PORT},
};
use crate::{
    engine::Engine,
    util::{note, stdout_of, step},
};

const NGINX_CONTAINER: &str = "capprof-bench-nginx";
const LOOP_CONTAINER: &str = "capprof-bench-loop";
/// bpftrace's one-liner, as in the per-check bench.
const BPFTRACE_SCRIPT: &str =
    "tracepoint:capability:cap_capable { @[cgroup, args->cap] = count(); }";

/// The configurations, in the order of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Attach {
    Nothing,
    Capprof,
    Bpftrace,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::Nothing => "nothing attached",
            Attach::Capprof => "capprof daemon",
            Attach::Bpftrace => "bpftrace count()",
        }
    }
}

/// What one configuration measured in one round.
#[derive(Debug, Clone)]
pub struct Sample {
    pub attach: Attach,
    pub round: usize,
    pub rps: f64,
    pub p99_ms: f64,
    pub execs_per_s: f64,
    pub churn_per_s: f64,
    /// CPU time the container's cgroup used (cpu.stat `usage_usec`, all
    /// its processes, user and kernel, hooks included) per request, per
    /// exec and per mmap/munmap pair. Scheduling on a busy machine moves
    /// the rates; it moves these much less.
    pub nginx_cpu_us: f64,
    pub exec_cpu_us: f64,
    pub churn_cpu_ns: f64,
}

/// bpf_stats of one of the daemon's programs over one loop.
#[derive(Debug, Clone)]
pub struct HookCost {
    pub program: String,
    pub during: &'static str,
    pub runs: u64,
    pub ns_per_run: f64,
}

pub struct WorkloadPlan {
    pub rounds: usize,
    pub wrk_secs: u32,
    pub execs: u32,
    pub churn_iters: u64,
}

#[derive(Default)]
pub struct WorkloadResults {
    pub samples: Vec<Sample>,
    pub hooks: Vec<HookCost>,
    /// Whether the daemon listed both containers, in every capprof round.
    pub profiled: bool,
    pub failures: Vec<String>,
}

/// Runs every round; failures are collected, not fatal.
pub fn run(
    plan: &WorkloadPlan,
    capprof: &Path,
    bench: &Path,
    have_bpftrace: bool,
) -> Result<WorkloadResults> {
    for tool in ["wrk", "bpftool"] {
        if !super::host::which(tool) {
            bail!("{tool} is not installed (cargo xtask setup installs it)");
        }
    }
    let engine = Engine::ensure()?;
    let engine_url = engine.host().map_or_else(
        || std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into()),
        str::to_owned,
    );
    workload_image::ensure(&engine, bench)?;
    let containers = Containers::start(&engine)?;
    let mut results = WorkloadResults {
        profiled: true,
        ..Default::default()
    };
    let mut attaches = vec![Attach::Nothing, Attach::Capprof];
    if have_bpftrace {
        attaches.push(Attach::Bpftrace);
    }
    // Warm nginx, the page cache and the image's files up once.
    let _ = wrk(1);
    let _ = exec_loop(&engine, 300);
    for round in 0..plan.rounds {
        for i in 0..attaches.len() {
            let attach = attaches[(i + round) % attaches.len()];
            step(format_args!(
                "workload round {}/{}: {}",
                round + 1,
                plan.rounds,
                attach.name()
            ));
            match measure_one(
                plan,
                &engine,
                &engine_url,
                capprof,
                attach,
                round,
                &containers,
            ) {
                Ok((sample, listed)) => {
                    results.profiled &= listed;
                    results.samples.push(sample);
                }
                Err(err) => {
                    note(format_args!("error: {err:#}"));
                    results.failures.push(format!(
                        "workload round {}: {}: {err:#}",
                        round + 1,
                        attach.name()
                    ));
                }
            }
        }
    }
    step("workload: the process hooks' cost per run under the daemon (bpf_stats)");
    match hook_costs(plan, &engine, &engine_url, capprof) {
        Ok(hooks) => results.hooks = hooks,
        Err(err) => {
            note(format_args!("error: {err:#}"));
            results.failures.push(format!("hook costs: {err:#}"));
        }
    }
    drop(containers);
    Ok(results)
}

/// One configuration, one round: set up, run the three workloads, tear
/// down. Also says whether the daemon (if it is the configuration) listed
/// both containers.
fn measure_one(
    plan: &WorkloadPlan,
    engine: &Engine,
    engine_url: &str,
    capprof: &Path,
    attach: Attach,
    round: usize,
    containers: &Containers,
) -> Result<(Sample, bool)> {
    let guard = Attached::start(attach, capprof, engine_url)?;
    let cpu0 = containers.cpu_usec(0)?;
    let (rps, p99_ms) = wrk(plan.wrk_secs)?;
    let nginx_cpu_us = (containers.cpu_usec(0)? - cpu0) / (rps * plan.wrk_secs as f64);
    let cpu0 = containers.cpu_usec(1)?;
    let execs_per_s = exec_loop(engine, plan.execs)?;
    let cpu1 = containers.cpu_usec(1)?;
    let churn_per_s = churn(engine, plan.churn_iters)?;
    let cpu2 = containers.cpu_usec(1)?;
    let exec_cpu_us = (cpu1 - cpu0) / plan.execs as f64;
    let churn_cpu_ns = (cpu2 - cpu1) * 1000.0 / plan.churn_iters as f64;
    let listed = match &guard {
        Attached::Daemon(d) => containers.listed_by(d),
        _ => true,
    };
    drop(guard);
    Ok((
        Sample {
            attach,
            round,
            rps,
            p99_ms,
            execs_per_s,
            churn_per_s,
            nginx_cpu_us,
            exec_cpu_us,
            churn_cpu_ns,
        },
        listed,
    ))
}

/// The two long-running containers, removed on drop.
struct Containers {
    ids: Vec<String>,
    /// Their cgroup2 directories.
    cgroups: Vec<PathBuf>,
    docker: Box<dyn Fn() -> Command>,
}

impl Containers {
    fn start(engine: &Engine) -> Result<Self> {
        let host = engine.host().map(str::to_owned);
        let docker = move || {
            let mut cmd = Command::new("docker");
            if let Some(h) = &host {
                cmd.env("DOCKER_HOST", h);
            }
            cmd
        };
        for name in [NGINX_CONTAINER, LOOP_CONTAINER] {
            let _ = docker()
                .args(["rm", "-f", name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let mut this = Self {
            ids: vec![],
            cgroups: vec![],
            docker: Box::new(docker),
        };
        let nginx = stdout_of(
            (this.docker)()
                .args(["run", "-d", "--name", NGINX_CONTAINER, "--network", "host"])
                .args([IMAGE, NGINX, "-e", "stderr", "-c", NGINX_CONF]),
        )?;
        this.ids.push(nginx);
        let looper = stdout_of(
            (this.docker)()
                .args(["run", "-d", "--name", LOOP_CONTAINER, "--network", "none"])
                .args([IMAGE, "sleep", "1000000"]),
        )?;
        this.ids.push(looper);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", NGINX_PORT)).is_err() {
            if Instant::now() > deadline {
                let logs = (this.docker)()
                    .args(["logs", NGINX_CONTAINER])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                bail!(
                    "nginx did not listen on 127.0.0.1:{NGINX_PORT}: {}",
                    logs.trim()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        for id in &this.ids {
            let cgroup = this.cgroup_of(id)?;
            this.cgroups.push(cgroup);
        }
        note(format_args!(
            "{NGINX_CONTAINER} serves 127.0.0.1:{NGINX_PORT}; {LOOP_CONTAINER} waits for docker exec"
        ));
        Ok(this)
    }

    /// The cgroup2 directory of a container, from its init's
    /// /proc/PID/cgroup (`0::/docker/<id>`).
    fn cgroup_of(&self, id: &str) -> Result<PathBuf> {
        let pid = stdout_of((self.docker)().args(["inspect", "-f", "{{.State.Pid}}", id]))?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let path = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .with_context(|| format!("no cgroup2 line in /proc/{pid}/cgroup"))?;
        let mount = cgroup2_mount().context("no cgroup2 mount")?;
        Ok(mount.join(path.trim_start_matches('/')))
    }

    /// CPU time container `i` has used, in µs (cgroup2 `cpu.stat`, which
    /// the core keeps with no controller enabled).
    fn cpu_usec(&self, i: usize) -> Result<f64> {
        let path = self.cgroups[i].join("cpu.stat");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no usage_usec in {}", path.display()))
    }

    /// Whether `capprof ps` lists both containers.
    fn listed_by(&self, daemon: &Daemon) -> bool {
        let Ok(out) = stdout_of(daemon.client("ps").args(["--format", "json"])) else {
            return false;
        };
        self.ids.iter().all(|id| out.contains(&id[..12]))
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = (self.docker)()
                .args(["rm", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A configuration while it is set up; dropping it tears it down.
enum Attached {
    Nothing,
    Daemon(Daemon),
    Bpftrace(#[expect(dead_code, reason = "held for its Drop")] Bpftrace),
}

impl Attached {
    fn start(attach: Attach, capprof: &Path, engine_url: &str) -> Result<Self> {
        Ok(match attach {
            Attach::Nothing => Attached::Nothing,
            Attach::Capprof => {
                let daemon = Daemon::start(capprof, engine_url, "workload")?;
                // Let it inspect the running containers and start watching.
                thread::sleep(Duration::from_millis(500));
                Attached::Daemon(daemon)
            }
            Attach::Bpftrace => Attached::Bpftrace(Bpftrace::start()?),
        })
    }
}

/// bpftrace running the one-liner; interrupted on drop.
struct Bpftrace {
    child: Child,
    drain: Option<thread::JoinHandle<()>>,
}

impl Bpftrace {
    fn start() -> Result<Self> {
        let mut child = Command::new("bpftrace")
            .args(["-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        let stdout = child.stdout.take().context("bpftrace has no stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        // "Attaching 1 probe..." once the probe is attached.
        reader.read_line(&mut first)?;
        if !first.starts_with("Attaching") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bpftrace did not attach: {first:?}");
        }
        let drain = thread::spawn(move || {
            let mut rest = vec![];
            let _ = reader.read_to_end(&mut rest);
        });
        Ok(Self {
            child,
            drain: Some(drain),
        })
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = self.drain.take() {
            let _ = d.join();
        }
    }
}

/// `wrk` against nginx for `secs`: (requests/s, p99 latency in ms).
fn wrk(secs: u32) -> Result<(f64, f64)> {
    let out = stdout_of(Command::new("wrk").args([
        "-t2",
        "-c16",
        &format!("-d{secs}s"),
        "--latency",
        &format!("http://127.0.0.1:{NGINX_PORT}/"),
    ]))?;
    parse_wrk(&out).with_context(|| format!("unexpected wrk output: {out}"))
}

fn parse_wrk(out: &str) -> Option<(f64, f64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_ms(v.trim()))?;
    Some((rps, p99))
}

/// wrk's `1.23ms`, `456.00us`, `1.01s` in ms.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// `n` execs of /bin/true from a busybox shell in the loop container:
/// execs per second, timed inside with /proc/uptime (10 ms resolution).
fn exec_loop(engine: &Engine, n: u32) -> Result<f64> {
    let script = format!(
        "i=0; s=$(cut -d' ' -f1 /proc/uptime); while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done; \
         e=$(cut -d' ' -f1 /proc/uptime); echo $s $e"
    );
    let out = stdout_of(
        engine
            .docker()
            .args(["exec", LOOP_CONTAINER, "sh", "-c", &script]),
    )?;
    let mut it = out.split_whitespace().map(str::parse::<f64>);
    let (Some(Ok(s)), Some(Ok(e))) = (it.next(), it.next()) else {
        bail!("unexpected exec loop output: {out}");
    };
    if e <= s {
        bail!("exec loop took no measurable time: {out}");
    }
    Ok(n as f64 / (e - s))
}

/// mmap/munmap pairs per second in the loop container.
fn churn(engine: &Engine, iters: u64) -> Result<f64> {
    let out = stdout_of(engine.docker().args([
        "exec",
        LOOP_CONTAINER,
        BENCH_BIN,
        "churn",
        "--iters",
        &iters.to_string(),
    ]))?;
    let v: Value = serde_json::from_str(&out).with_context(|| format!("churn printed {out}"))?;
    v["per_s"]
        .as_f64()
        .with_context(|| format!("churn printed {out}"))
}

/// Under a fresh daemon, with bpf_stats on: each of its programs' cost per
/// run over the exec loop and over the churn.
fn hook_costs(
    plan: &WorkloadPlan,
    engine: &Engine,
    engine_url: &str,
    capprof: &Path,
) -> Result<Vec<HookCost>> {
    let daemon = Daemon::start(capprof, engine_url, "stats")?;
    thread::sleep(Duration::from_millis(500));
    let before = read_sysctl();
    set_sysctl("1");
    let result = (|| {
        let mut costs = vec![];
        let a = daemon_progs(&daemon)?;
        exec_loop(engine, plan.execs)?;
        let b = daemon_progs(&daemon)?;
        churn(engine, plan.churn_iters)?;
        let c = daemon_progs(&daemon)?;
        for (during, from, to) in [("exec loop", &a, &b), ("mmap churn", &b, &c)] {
            for (id, (name, t1, n1)) in to {
                let Some((_, t0, n0)) = from.get(id) else {
                    continue;
                };
                let runs = n1.saturating_sub(*n0);
                if runs == 0 {
                    continue;
                }
                costs.push(HookCost {
                    program: name.clone(),
                    during,
                    runs,
                    ns_per_run: t1.saturating_sub(*t0) as f64 / runs as f64,
                });
            }
        }
        Ok(costs)
    })();
    set_sysctl(before.as_deref().unwrap_or("0"));
    daemon.stop();
    result
}

/// The programs the daemon's pinned links hold: id -> (name,
/// run_time_ns, run_cnt), from bpftool.
pub fn daemon_progs(daemon: &Daemon) -> Result<BTreeMap<u32, (String, u64, u64)>> {
    let mut found = BTreeMap::new();
    for link in daemon.pinned_links() {
        let out = stdout_of(
            Command::new("bpftool")
                .args(["link", "show", "pinned"])
                .arg(&link)
                .arg("--json"),
        )?;
        let v: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
        let Some(id) = v["prog_id"].as_u64() else {
            continue;
        };
        let out = stdout_of(Command::new("bpftool").args([
            "prog",
            "show",
            "id",
            &id.to_string(),
            "--json",
        ]))?;
        let p: Value = serde_json::from_str(&out).context("bpftool's JSON")?;
        found.insert(
            id as u32,
            (
                p["name"].as_str().unwrap_or("?").to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ),
        );
    }
    if found.is_empty() {
        bail!("the daemon pinned no links");
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_reads_as_rate_and_p99() {
        let out = "Running 5s test @ http://127.0.0.1:18088/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.47us  300.12us  10.00ms   90.00%
  Latency Distribution
     50%  564.00us
     75%  700.00us
     90%  850.00us
     99%    1.53ms
  130000 requests in 5.00s, 100.00MB read
Requests/sec:  26000.12
Transfer/sec:     20.00MB";
        let (rps, p99) = parse_wrk(out).unwrap();
        assert_eq!(rps, 26000.12);
        assert!((p99 - 1.53).abs() < 1e-9);
        assert_eq!(duration_ms("456.00us"), Some(0.456));
        assert_eq!(duration_ms("1.01s"), Some(1010.0));
        assert!(parse_wrk("Requests/sec: 5").is_none());
    }
}
