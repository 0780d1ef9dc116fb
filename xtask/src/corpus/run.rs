//! One pass over one entry, with capprof's own commands, as a user would
//! run them: record the server under the daemon while a real client works
//! it, `capprof minimize` the profile, `capprof verify --ablate` the
//! result, then re-run the server with exactly its Kubernetes export, on
//! Docker with the kernel's default `ip_unprivileged_port_start` (1024),
//! as a Kubernetes runtime leaves it.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::entry::Entry;
use crate::{engine::Engine, util::note};

/// Probes after the first that passed, while recording: the real work.
const WORK_PROBES: usize = 3;
/// Runs per tried set in `minimize` and `verify --ablate`.
pub const RUNS: u32 = 3;
/// How long one probe may take, in the client container.
const PROBE_TIMEOUT_SECONDS: u32 = 30;
/// The classes the table shows, in the profile's own names.
const CLASSES: &[&str] = &[
    "borrowed",
    "kept",
    "conditional",
    "transient",
    "advisory",
    "denied",
];

/// What one pass found. Two passes must agree on everything but time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The daemon's allowlist.
    pub observed: Vec<String>,
    /// The classes with something in them.
    pub classes: Vec<String>,
    /// `minimize`'s allowlist.
    pub minimal: Vec<String>,
    /// `verify --ablate` on the minimal set: (capability, verdict).
    pub ablation: Vec<(String, String)>,
    /// Minimal proven: sufficient, and every capability of it needed.
    pub proven: bool,
    /// The Kubernetes export's `add` list.
    pub k8s_add: Vec<String>,
    /// The sysctls the export sets on the pod (`NAME=VALUE`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub k8s_sysctls: Vec<String>,
    /// Whether the server passed its probe with exactly that export.
    pub k8s_serves: bool,
    /// Why the pass stopped early, if it did.
    pub failure: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

impl Outcome {
    /// The outcome without its timing, to compare two passes.
    pub fn result(&self) -> Outcome {
        Outcome {
            seconds: None,
            ..self.clone()
        }
    }
}

pub struct Pass<'a> {
    pub engine: &'a Engine,
    pub capprof: &'a Path,
    pub socket: &'a Path,
    pub entry: &'a Entry,
    pub image: &'a str,
    /// Everything this pass writes.
    pub dir: PathBuf,
}

impl Pass<'_> {
    /// Runs the pass; a step that fails ends it, said in `failure`.
    pub fn run(&self) -> Outcome {
        let started = Instant::now();
        let mut outcome = Outcome::default();
        if let Err(e) = self.steps(&mut outcome) {
            outcome.failure = Some(format!("{e:#}"));
        }
        outcome.seconds = Some(started.elapsed().as_secs());
        outcome
    }

    fn steps(&self, outcome: &mut Outcome) -> Result<()> {
        fs::create_dir_all(&self.dir)?;
        let probe = self.write_probe()?;
        let recorded = self.record(&probe)?;
        let profile: Value = read_json(&recorded)?;
        outcome.observed = names(&profile["allowlist"]);
        outcome.classes = CLASSES
            .iter()
            .filter(|c| profile[**c].as_array().is_some_and(|a| !a.is_empty()))
            .map(|c| c.to_string())
            .collect();

        let minimized = self.dir.join("minimized.json");
        note(format_args!("{}: capprof minimize", self.entry.name));
        self.capprof_to_file(
            &["minimize", "--runs", &RUNS.to_string(), "--format", "json"],
            &probe,
            &["--out", path_str(&minimized)?, path_str(&recorded)?],
            &self.dir.join("minimize.json"),
        )?;
        let min: Value = read_json(&minimized)?;
        outcome.minimal = names(&min["allowlist"]);

        note(format_args!("{}: capprof verify --ablate", self.entry.name));
        let verify = self.dir.join("verify.json");
        self.capprof_to_file(
            &[
                "verify",
                "--ablate",
                "--runs",
                &RUNS.to_string(),
                "-f",
                "json",
            ],
            &probe,
            &[path_str(&minimized)?],
            &verify,
        )?;
        let verified: Value = read_json(&verify)?;
        outcome.ablation = verified["ablation"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| {
                        (
                            v["capability"].as_str().unwrap_or("?").to_owned(),
                            v["verdict"].as_str().unwrap_or("?").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Each capability needed, or kept untried as security-relevant
        // (minimize and verify keep one the workload used: its loss can
        // leave a server running but less safe; the table says which).
        outcome.proven = verified["sufficient"] == true
            && outcome
                .ablation
                .iter()
                .all(|(_, v)| v.starts_with("needed") || v == "kept (security-relevant)");

        let (add, sysctls, flags) = self.k8s_flags(&minimized)?;
        outcome.k8s_add = add;
        outcome.k8s_sysctls = sysctls;
        note(format_args!(
            "{}: re-run with the Kubernetes export",
            self.entry.name
        ));
        outcome.k8s_serves = self.serves_with(&flags, &probe)?;
        Ok(())
    }

    /// The probe, as a host command for `capprof --probe`: a container of
    /// the entry's image in the server's network namespace, which the
    /// engine names in `CAPPROF_CONTAINER_NAME`.
    fn write_probe(&self) -> Result<PathBuf> {
        let path = self.dir.join("probe.sh");
        let quoted = self.entry.probe.replace('\'', r"'\''");
        let host = match self.engine.host() {
            Some(h) => format!("export DOCKER_HOST='{h}'\n"),
            None => String::new(),
        };
        let script = format!(
            "#!/bin/sh\n{host}exec docker run --rm --network \"container:$CAPPROF_CONTAINER_NAME\" \
             --entrypoint timeout {image} {PROBE_TIMEOUT_SECONDS} /bin/sh -c '{quoted}'\n",
            image = self.image,
        );
        fs::write(&path, script)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    fn container(&self) -> String {
        format!("capprof-corpus-{}", self.entry.name)
    }

    /// Starts the server under the daemon, works it, stops it, and writes
    /// the daemon's profile of it.
    fn record(&self, probe: &Path) -> Result<PathBuf> {
        let name = self.container();
        self.remove(&name);
        note(format_args!(
            "{}: recording under the daemon",
            self.entry.name
        ));
        // The daemon keeps every container that had the name: ask by id.
        let beyond: Vec<String> = self
            .entry
            .cap_add
            .iter()
            .map(|c| format!("--cap-add={c}"))
            .collect();
        let id = self.start(&name, &beyond)?;
        let worked = self.wait_serving(&name, probe).and_then(|()| {
            for _ in 0..WORK_PROBES {
                self.probe_once(&name, probe)?;
            }
            Ok(())
        });
        thread::sleep(Duration::from_millis(500));
        let _ = self
            .engine
            .docker()
            .args(["stop", "-t", "10", &name])
            .output();
        self.wait_exited(&id)?;
        let out = Command::new(self.capprof)
            .args([
                "profile",
                "--socket",
                path_str(self.socket)?,
                "-f",
                "json",
                &id,
            ])
            .output()
            .context("running capprof profile")?;
        if let Err(e) = worked {
            self.keep_logs(&name);
            self.remove(&name);
            return Err(e);
        }
        self.remove(&name);
        checked(&out, "capprof profile")?;
        let path = self.dir.join("recorded.json");
        fs::write(&path, &out.stdout)?;
        Ok(path)
    }

    /// Waits until the daemon has seen container `id` exit, so that the
    /// profile asked for next is the finalized one, with the evidence
    /// records that arrive in the grace after `die`. (Before the daemon's
    /// view took emptied cgroups to its owner, the profile asked for at
    /// once lacked what the server did while it stopped: snmpd's unlink
    /// of its persistent file as its own user.)
    fn wait_exited(&self, id: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = Command::new(self.capprof)
                .args(["ps", "--socket", path_str(self.socket)?, "-f", "json"])
                .output()
                .context("running capprof ps")?;
            let listed: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let exited = listed.as_array().is_some_and(|all| {
                all.iter()
                    .any(|c| c["id"].as_str() == Some(id) && c["state"] == "exited")
            });
            if exited {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the daemon did not see container {id} exit within 15 s");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the server detached as `name`; its id.
    fn start(&self, name: &str, flags: &[String]) -> Result<String> {
        let mut cmd = self.engine.docker();
        cmd.args(["run", "-d", "--name", name, "--network", "none"]);
        if self.entry.init {
            cmd.arg("--init");
        }
        if let Some(user) = &self.entry.user {
            cmd.args(["--user", user]);
        }
        cmd.args(flags).arg(self.image).args(&self.entry.start);
        let out = cmd.output().context("running docker run")?;
        checked(&out, "docker run")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Probes until one passes, or the container exits, or `ready_seconds`.
    fn wait_serving(&self, name: &str, probe: &Path) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.entry.ready_seconds);
        loop {
            let last = match self.probe_once(name, probe) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let running = self
                .engine
                .docker()
                .args(["inspect", "-f", "{{.State.Running}}", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
                .unwrap_or(false);
            if !running {
                bail!("the server exited before its probe passed ({last:#})");
            }
            if Instant::now() >= deadline {
                bail!(
                    "the probe did not pass within {} s: {last:#}",
                    self.entry.ready_seconds
                );
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn probe_once(&self, name: &str, probe: &Path) -> Result<()> {
        let out = Command::new(probe)
            .env("CAPPROF_CONTAINER_NAME", name)
            .stdin(Stdio::null())
            .output()
            .context("running the probe")?;
        checked(&out, "the probe")
    }

    /// `capprof ARGS --probe PROBE REST`, its stdout written to `out`;
    /// its stderr (the progress) goes to a log beside it.
    fn capprof_to_file(
        &self,
        args: &[&str],
        probe: &Path,
        rest: &[&str],
        out: &Path,
    ) -> Result<()> {
        let log = out.with_extension("log");
        let result = Command::new(self.capprof)
            .args(args)
            .arg("--timeout")
            .arg(self.entry.ready_seconds.to_string())
            .arg("--probe")
            .arg(probe)
            .args(rest)
            .envs(self.engine.host().map(|h| ("DOCKER_HOST", h)))
            .stdin(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .output()
            .with_context(|| format!("running capprof {}", args[0]))?;
        fs::write(out, &result.stdout)?;
        if !result.status.success() {
            bail!(
                "capprof {} exited with {} (see {})",
                args[0],
                result.status,
                log.display()
            );
        }
        Ok(())
    }

    /// `docker run` flags that do exactly what the Kubernetes export says,
    /// and its `add` list. A field the export gains that is not mapped here
    /// fails the pass rather than be ignored.
    fn k8s_flags(&self, profile: &Path) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
        let out = Command::new(self.capprof)
            .args(["export", "--format", "k8s"])
            .arg(profile)
            .stderr(Stdio::null())
            .output()
            .context("running capprof export")?;
        checked(&out, "capprof export --format k8s")?;
        let text = String::from_utf8_lossy(&out.stdout);
        fs::write(self.dir.join("k8s.yaml"), text.as_bytes())?;
        let doc: serde_norway::Value =
            serde_norway::from_str(&text).context("parsing the k8s export")?;
        let mut set = std::collections::BTreeMap::new();
        let mut flags = vec![];
        let mut add = vec![];
        let top = doc
            .as_mapping()
            .context("the k8s export is not a mapping")?;
        for (key, value) in top {
            match key.as_str().unwrap_or_default() {
                "securityContext" => add = container_flags(value, &mut flags)?,
                // The pod's securityContext: what a pod can set, a
                // container runs with too.
                "podSecurityContext" => pod_sysctls(value, &mut set)?,
                other => bail!("the k8s export sets {other}, which the corpus cannot map yet"),
            }
        }
        let mut sysctls = std::collections::BTreeMap::from([(
            "net.ipv4.ip_unprivileged_port_start".to_owned(),
            "1024".to_owned(),
        )]);
        sysctls.extend(set.clone());
        for (name, value) in sysctls {
            flags.push("--sysctl".to_owned());
            flags.push(format!("{name}={value}"));
        }
        let set = set.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        Ok((add, set, flags))
    }

    fn serves_with(&self, flags: &[String], probe: &Path) -> Result<bool> {
        let name = format!("{}-k8s", self.container());
        self.remove(&name);
        self.start(&name, flags)?;
        let served = self.wait_serving(&name, probe);
        if let Err(e) = &served {
            note(format_args!(
                "{}: with the k8s export: {e:#}",
                self.entry.name
            ));
            self.keep_logs(&name);
        }
        self.remove(&name);
        Ok(served.is_ok())
    }

    fn keep_logs(&self, name: &str) {
        if let Ok(out) = self.engine.docker().args(["logs", name]).output() {
            let mut text = out.stdout;
            text.extend(out.stderr);
            let _ = fs::write(self.dir.join(format!("{name}.log")), text);
        }
    }

    fn remove(&self, name: &str) {
        let _ = self.engine.docker().args(["rm", "-f", name]).output();
    }
}

fn checked(out: &Output, what: &str) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    bail!("{what} failed ({}): {last}", out.status)
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().context("a non-UTF-8 path")
}

/// `docker run` flags for a container's `securityContext`, and its `add`
/// list. A field not mapped here fails the pass rather than be ignored.
fn container_flags(ctx: &serde_norway::Value, flags: &mut Vec<String>) -> Result<Vec<String>> {
    let ctx = ctx
        .as_mapping()
        .context("the k8s export's securityContext is not a mapping")?;
    let mut add = vec![];
    for (key, value) in ctx {
        match key.as_str().unwrap_or_default() {
            "capabilities" => {
                let list = |k: &str| -> Vec<String> {
                    value
                        .get(k)
                        .and_then(|v| v.as_sequence())
                        .map(|s| {
                            s.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                for cap in list("drop") {
                    flags.push(format!("--cap-drop={cap}"));
                }
                add = list("add");
                for cap in &add {
                    flags.push(format!("--cap-add={cap}"));
                }
            }
            "allowPrivilegeEscalation" if value.as_bool() == Some(false) => {
                flags.push("--security-opt=no-new-privileges".to_owned());
            }
            other => bail!(
                "the k8s export sets securityContext.{other}, which the corpus cannot map yet"
            ),
        }
    }
    Ok(add)
}

/// The pod's `sysctls`, into `sysctls`.
fn pod_sysctls(
    ctx: &serde_norway::Value,
    sysctls: &mut std::collections::BTreeMap<String, String>,
) -> Result<()> {
    let ctx = ctx
        .as_mapping()
        .context("the k8s export's podSecurityContext is not a mapping")?;
    for (key, value) in ctx {
        match key.as_str().unwrap_or_default() {
            "sysctls" => {
                for s in value.as_sequence().context("sysctls is not a list")? {
                    let (Some(name), Some(value)) = (
                        s.get("name").and_then(|v| v.as_str()),
                        s.get("value").and_then(|v| v.as_str()),
                    ) else {
                        bail!("a sysctl of the k8s export lacks its name or value");
                    };
                    sysctls.insert(name.to_owned(), value.to_owned());
                }
            }
            other => bail!(
                "the k8s export sets podSecurityContext.{other}, which the corpus cannot map yet"
            ),
        }
    }
    Ok(())
}
