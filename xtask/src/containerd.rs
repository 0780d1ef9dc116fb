//! A private containerd 1.6 with its CRI plugin, for the CRI tests: its own
//! root, state and sockets under a temp dir, stopped and removed when the
//! [`Containerd`] is dropped. The tests drive it through the CRI the way the
//! kubelet does (`CAPPROF_TEST_CRI`), with host-network pods so that no CNI
//! is needed.
//!
//! What it takes on this kind of machine (ENVIRONMENT.md):
//! `restrict_oom_score_adj = true` (root lacks CAP_SYS_RESOURCE, so the
//! sandbox's oom_score_adj of -998 would fail), the `native` snapshotter,
//! an empty CNI directory, and a sandbox image that is imported, not
//! pulled: [`PAUSE_IMAGE`], the test image with `PATH` and a command that
//! waits.

use std::{
    fs::{self},
    path::PathBuf,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    engine::Engine,
    image::TEST_IMAGE,
    util::{
        fresh_service_dir, note, print_log_tail, run_checked, spawn_logged, step, succeeds,
        terminate,
    },
};

/// The sandbox (pause) image: the test image with a PATH and a command
/// that waits, as the CRI plugin needs of a sandbox image.
pub const PAUSE_IMAGE: &str = "capprof-pause:test";
/// The containerd namespace the CRI plugin uses.
const NAMESPACE: &str = "k8s.io";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts containerd and imports [`TEST_IMAGE`] and [`PAUSE_IMAGE`]
    /// from `engine` into it. `tag` names its directory: the fleet tests
    /// run two, one per node.
    pub fn start(engine: &Engine, tag: &str) -> Result<Self> {
        let dir = fresh_service_dir(tag)?;
        step(format_args!(
            "starting a private containerd with the CRI plugin in {}",
            dir.display()
        ));
        let cni = dir.join("cni");
        fs::create_dir_all(&cni).with_context(|| format!("creating {}", cni.display()))?;
        let config = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{d}/cni"
    bin_dir = "{d}/cni"
"#
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        let child = spawn_logged(&mut cmd, &dir.join("containerd.log"))
            .context("could not start containerd (it comes with apt-get install docker.io)")?;
        let mut me = Self { dir, child };
        me.wait_until_ready()?;
        me.import(engine)?;
        Ok(me)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The CRI endpoint, as the tests get it in `CAPPROF_TEST_CRI`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a").arg(self.socket()).args(["-n", NAMESPACE]);
        cmd
    }

    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.print_log_tail();
                bail!("containerd exited during start-up ({status})");
            }
            let mut version = Command::new("ctr");
            version.arg("-a").arg(self.socket()).arg("version");
            if succeeds(&mut version) {
                note(format_args!(
                    "containerd (pid {}) answers at {}",
                    self.child.id(),
                    self.endpoint()
                ));
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.print_log_tail();
                bail!(
                    "containerd did not answer within {} s",
                    START_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker save` of the test images, `ctr images import` of the tar.
    fn import(&self, engine: &Engine) -> Result<()> {
        step(format_args!(
            "importing {TEST_IMAGE} and {PAUSE_IMAGE} into it"
        ));
        if !succeeds(engine.docker().args(["image", "inspect", PAUSE_IMAGE])) {
            let name = format!("capprof-pause-{}", std::process::id());
            run_checked(
                engine
                    .docker()
                    .args(["create", "--name", &name, TEST_IMAGE]),
            )?;
            let committed = run_checked(engine.docker().args([
                "commit",
                "--change",
                "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                r#"CMD ["/bin/sleep", "2147483647"]"#,
                &name,
                PAUSE_IMAGE,
            ]));
            let _ = engine.docker().args(["rm", &name]).output();
            committed?;
        }
        let tar = self.dir.join("images.tar");
        run_checked(
            engine
                .docker()
                .args(["save", "-o"])
                .arg(&tar)
                .args([TEST_IMAGE, PAUSE_IMAGE]),
        )?;
        run_checked(self.ctr().args(["images", "import"]).arg(&tar))?;
        fs::remove_file(&tar)?;
        Ok(())
    }

    fn print_log_tail(&self) {
        print_log_tail(&self.dir.join("containerd.log"), 40);
    }

    /// Removes every pod and container the tests left, so that no shim
    /// outlives the run.
    fn remove_containers(&self) {
        let list = |what: &str| -> Vec<String> {
            self.ctr()
                .args([what, "list", "-q"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        for task in list("tasks") {
            let _ = self
                .ctr()
                .args(["tasks", "kill", "-s", "SIGKILL", &task])
                .output();
        }
        thread::sleep(Duration::from_millis(300));
        for task in list("tasks") {
            let _ = self.ctr().args(["tasks", "delete", "-f", &task]).output();
        }
        for container in list("containers") {
            let _ = self
                .ctr()
                .args(["containers", "delete", &container])
                .output();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        step(format_args!(
            "stopping the private containerd (pid {})",
            self.child.id()
        ));
        self.remove_containers();
        terminate(&mut self.child, "containerd", STOP_TIMEOUT);
        // The native snapshotter's and the runtime's mounts must go first.
        if let Ok(mounts) = fs::read_to_string("/proc/self/mounts") {
            let prefix = self.dir.display().to_string();
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| m.starts_with(&prefix))
                .collect();
            ours.reverse();
            for m in ours {
                let _ = Command::new("umount").arg("-l").arg(m).output();
            }
        }
        // A shim may still be letting go of its files: try a few times.
        let mut removed = fs::remove_dir_all(&self.dir);
        for _ in 0..10 {
            if removed.is_ok() || !self.dir.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(300));
            removed = fs::remove_dir_all(&self.dir);
        }
        if let Err(err) = removed {
            note(format_args!(
                "could not remove {}: {err}",
                self.dir.display()
            ));
        }
    }
}
