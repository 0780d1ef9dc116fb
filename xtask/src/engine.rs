//! A Docker engine for the container tests: the one the environment already
//! points at, or a private dockerd under a temp dir that is stopped and
//! removed when the [`Engine`] is dropped.

use std::{
    env,
    fs::{self},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{
    fresh_service_dir, note, print_log_tail, spawn_logged, step, succeeds, terminate,
};

/// How long a private dockerd gets to answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a private dockerd gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of the private dockerd's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 40;
/// The private dockerd's storage driver: Docker's default, overlay2, unless
/// this variable names another (`vfs`, to compare). overlayfs copy-up makes
/// capability checks with the mounter's credentials from the container's
/// task, which profiles must not take for the workload's own.
const STORAGE_DRIVER_VAR: &str = "CAPPROF_TEST_STORAGE_DRIVER";
const DEFAULT_STORAGE_DRIVER: &str = "overlay2";

/// A Docker engine that answers.
pub struct Engine {
    /// `DOCKER_HOST` for the children, when we started the engine ourselves.
    host: Option<String>,
    /// The private dockerd, stopped on drop.
    private: Option<PrivateDockerd>,
}

impl Engine {
    /// Uses `DOCKER_HOST` or the system socket if an engine answers there,
    /// and otherwise starts a private dockerd.
    pub fn ensure() -> Result<Self> {
        step("looking for a Docker engine");
        if let Some(host) = env::var_os("DOCKER_HOST") {
            let host = host.to_string_lossy().into_owned();
            if !answers(None) {
                bail!("DOCKER_HOST={host} is set but no Docker engine answers there");
            }
            note(format_args!("using DOCKER_HOST={host}"));
            return Ok(Self {
                host: None,
                private: None,
            });
        }
        if answers(None) {
            note("using the engine at /var/run/docker.sock");
            return Ok(Self {
                host: None,
                private: None,
            });
        }
        let private = PrivateDockerd::start()?;
        Ok(Self {
            host: Some(private.host()),
            private: Some(private),
        })
    }

    /// The `DOCKER_HOST` value children must get, if the environment's own
    /// does not already do.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// A `docker` command talking to this engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        if let Some(host) = &self.host {
            cmd.env("DOCKER_HOST", host);
        }
        cmd
    }

    /// The value of `label` on `image`, or None when the engine has no
    /// such image (the images' version checks).
    pub fn image_label(&self, image: &str, label: &str) -> Option<String> {
        let format = format!("{{{{index .Config.Labels \"{label}\"}}}}");
        let out = self
            .docker()
            .args(["image", "inspect", "--format", &format, image])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Stops the private dockerd now, if there is one (dropping does the same).
    pub fn stop(mut self) {
        self.private.take();
    }
}

/// Whether `docker version` gets an answer from the server.
fn answers(host: Option<&str>) -> bool {
    let mut cmd = Command::new("docker");
    if let Some(host) = host {
        cmd.env("DOCKER_HOST", host);
    }
    succeeds(cmd.args(["version", "--format", "{{.Server.Version}}"]))
}

/// A dockerd we started, with everything it owns under `dir`.
struct PrivateDockerd {
    dir: PathBuf,
    child: Child,
}

impl PrivateDockerd {
    fn start() -> Result<Self> {
        let dir = fresh_service_dir("dockerd")?;
        step(format_args!(
            "starting a private dockerd in {}",
            dir.display()
        ));
        let sock = dir.join("docker.sock");
        let driver = env::var(STORAGE_DRIVER_VAR)
            .ok()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_STORAGE_DRIVER.to_owned());
        let mut cmd = Command::new("dockerd");
        cmd.args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .arg(format!("--storage-driver={driver}"))
            .arg(format!("--data-root={}", dir.join("root").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--pidfile")
            .arg(dir.join("pid"));
        let child = spawn_logged(&mut cmd, &dir.join("dockerd.log"))
            .context("could not start dockerd (apt-get install docker.io)")?;
        // From here on, Drop stops dockerd and removes the directory.
        let mut engine = Self { dir, child };
        engine.wait_until_ready()?;
        note(format_args!(
            "dockerd (pid {}, storage driver {driver}) answers at {}",
            engine.child.id(),
            engine.host()
        ));
        Ok(engine)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let host = self.host();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for dockerd")? {
                self.print_log_tail();
                bail!("dockerd exited during start-up ({status}); its log is above");
            }
            if answers(Some(&host)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.print_log_tail();
                bail!(
                    "dockerd did not answer at {host} within {} s; its log is above",
                    START_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    fn print_log_tail(&self) {
        print_log_tail(&self.dir.join("dockerd.log"), LOG_TAIL_LINES);
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        step(format_args!(
            "stopping the private dockerd (pid {})",
            self.child.id()
        ));
        terminate(&mut self.child, "dockerd", STOP_TIMEOUT);
        // dockerd leaves its default network namespace mounted here.
        let _ = Command::new("umount")
            .arg(self.dir.join("exec/netns/default"))
            .stderr(Stdio::null())
            .status();
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            note(format_args!(
                "could not remove {}: {err}",
                self.dir.display()
            ));
        }
    }
}
