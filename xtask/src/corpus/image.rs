//! The corpus's images, with no registry: Debian 12's minimal base (the
//! rootfs `debian::ensure_rootfs` caches), then per entry its server and
//! client packages installed by apt-get as a user would, in a build
//! container on the host's network. The packages apt downloads are kept
//! in a cache outside the clone, so that a rebuild fetches nothing.
//!
//! An image is labelled with a hash of its entry's file, and rebuilt when
//! the file changes.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash as _, Hasher as _},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result, bail};

use super::entry::Entry;
use crate::{
    debian,
    engine::Engine,
    util::{note, print_log_tail, run_checked, spawn_logged, stdout_of, step},
};

const BASE_IMAGE: &str = "capprof-corpus-base:test";
/// Bumped whenever the base below changes.
const BASE_VERSION: &str = "2";
const LABEL: &str = "capprof.corpus";
/// apt's downloaded packages, shared by every build.
const APT_CACHE: &str = "/var/cache/capprof/corpus/apt";

/// What the base adds to minbase: apt that accepts this machine's mirror
/// (its Release files may be past their Valid-Until, as the host's apt
/// allows), no service started by a package's postinst (policy-rc.d), and
/// fresh package lists.
const BASE_SETUP: &str = r#"set -e
echo 'Acquire::Check-Valid-Until "false";' > /etc/apt/apt.conf.d/99capprof
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 755 /usr/sbin/policy-rc.d
rm -f /etc/apt/apt.conf.d/docker-clean
apt-get update -q
"#;

/// The image of `entry`, built unless it is there and current.
pub fn ensure(engine: &Engine, entry: &Entry) -> Result<String> {
    let _one_at_a_time = BuildLock::take()?;
    ensure_base(engine)?;
    let image = format!("capprof-corpus-{}:test", entry.name);
    let mut script = String::from("set -e\nexport DEBIAN_FRONTEND=noninteractive\n");
    script.push_str("apt-get install -y -q --no-install-recommends");
    for p in entry.packages.iter().chain(&entry.client) {
        script.push(' ');
        script.push_str(p);
    }
    script.push('\n');
    for line in &entry.setup {
        script.push_str(line);
        script.push('\n');
    }
    // The label is what the image is built from, so that editing an
    // entry's probe or note does not rebuild it.
    let mut hasher = DefaultHasher::new();
    (BASE_VERSION, &script).hash(&mut hasher);
    let version = format!("{:016x}", hasher.finish());
    if engine.image_label(&image, LABEL).as_deref() == Some(version.as_str()) {
        return Ok(image);
    }
    step(format_args!("building {image} (apt-get install)"));
    build(engine, BASE_IMAGE, &image, &version, &script)?;
    Ok(image)
}

/// The Debian version of `package` in `image`.
pub fn package_version(engine: &Engine, image: &str, package: &str) -> Result<String> {
    stdout_of(engine.docker().args([
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "dpkg-query",
        image,
        "-W",
        "-f",
        "${Version}",
        package,
    ]))
}

fn ensure_base(engine: &Engine) -> Result<()> {
    if engine.image_label(BASE_IMAGE, LABEL).as_deref() == Some(BASE_VERSION) {
        return Ok(());
    }
    let tarball = debian::ensure_rootfs()?;
    step(format_args!(
        "importing {} as the corpus base",
        tarball.display()
    ));
    let bare = "capprof-corpus-minbase:test";
    run_checked(engine.docker().arg("import").arg(&tarball).arg(bare)).context("docker import")?;
    build(engine, bare, BASE_IMAGE, BASE_VERSION, BASE_SETUP)
}

/// Runs `script` in a container of `from` on the host's network, with
/// apt's cache mounted, and commits it as `image` labelled `version`.
fn build(engine: &Engine, from: &str, image: &str, version: &str, script: &str) -> Result<()> {
    fs::create_dir_all(APT_CACHE).with_context(|| format!("creating {APT_CACHE}"))?;
    let builder = format!(
        "capprof-corpus-build-{}-{}",
        image.split(':').next().unwrap_or(image),
        std::process::id()
    );
    let _ = stdout_of(engine.docker().args(["rm", "-f", &builder]));
    // apt's output goes to a log, shown only when the build fails.
    let log = std::env::temp_dir().join(format!("{builder}.log"));
    let ran = spawn_logged(
        engine
            .docker()
            .args(["run", "--name", &builder, "--network", "host", "-v"])
            .arg(format!("{APT_CACHE}:/var/cache/apt/archives"))
            .args([from, "/bin/sh", "-c", script]),
        &log,
    )
    .and_then(|mut child| Ok(child.wait()?))
    .and_then(|status| {
        if status.success() {
            return Ok(());
        }
        print_log_tail(&log, 30);
        bail!("the build container exited with {status}")
    });
    let _ = fs::remove_file(&log);
    let committed = ran.and_then(|()| {
        run_checked(
            engine
                .docker()
                .args(["commit", "--change", &format!("LABEL {LABEL}={version}")])
                .args(["--change", "CMD [\"/bin/sh\"]"])
                .args([&builder, image]),
        )
    });
    let _ = stdout_of(engine.docker().args(["rm", "-f", &builder]));
    committed.with_context(|| format!("building {image}"))?;
    note(format_args!("built {image}"));
    Ok(())
}

/// Builds run one at a time, in this process and any other: they share
/// apt's cache, which apt locks and fails on rather than waits for. An
/// flock on a file beside the cache, released when dropped (or when the
/// process dies).
struct BuildLock {
    /// Held open: closing it releases the lock.
    _file: fs::File,
}

impl BuildLock {
    fn take() -> Result<Self> {
        fs::create_dir_all(APT_CACHE).with_context(|| format!("creating {APT_CACHE}"))?;
        let path = format!("{APT_CACHE}.lock");
        let file = fs::File::create(&path).with_context(|| format!("creating {path}"))?;
        // SAFETY: flock on a descriptor we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {path}"));
        }
        Ok(BuildLock { _file: file })
    }
}
