//! A clean Debian 12 for the package's install test (tests/it/install.rs):
//! Debian's minimal base with `man-db` and `bash-completion`, what a user
//! who types `man` and TAB has, and no Rust. Built once with mmdebstrap,
//! which fetches through apt (debootstrap's own downloader fails to
//! validate this machine's mirror), cached as a tarball outside the clone
//! like the kube binaries, and imported into the engine as
//! [`DEBIAN_IMAGE`].

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    engine::Engine,
    util::{note, run_checked, step},
};

/// The image tests/it/install.rs installs the .deb in (`CAPPROF_DEBIAN_IMAGE`).
pub const DEBIAN_IMAGE: &str = "capprof-debian12:test";
/// Bumped whenever the rootfs below changes; kept in the image's label and
/// in the cached tarball's name.
const IMAGE_VERSION: &str = "1";
const VERSION_LABEL: &str = "capprof.image-version";
const CACHE_DIR: &str = "/var/cache/capprof/debian12";
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// Beyond `minbase` (Priority: required, and apt).
const INCLUDE: &str = "man-db,bash-completion";

/// Imports [`DEBIAN_IMAGE`] into `engine` unless it is there, building the
/// cached rootfs first if it is missing (about a minute).
pub fn ensure_debian_image(engine: &Engine) -> Result<()> {
    step(format_args!("checking the test image {DEBIAN_IMAGE}"));
    if engine.image_label(DEBIAN_IMAGE, VERSION_LABEL).as_deref() == Some(IMAGE_VERSION) {
        note("already present");
        return Ok(());
    }
    let tarball = ensure_rootfs()?;
    step(format_args!(
        "importing {} as {DEBIAN_IMAGE}",
        tarball.display()
    ));
    run_checked(
        engine
            .docker()
            .args(["import", "--change", r#"CMD ["/bin/bash"]"#, "--change"])
            .arg(format!("LABEL {VERSION_LABEL}={IMAGE_VERSION}"))
            .arg(&tarball)
            .arg(DEBIAN_IMAGE),
    )
    .context("docker import")
}

/// The cached rootfs tarball, built with mmdebstrap if missing.
pub fn ensure_rootfs() -> Result<PathBuf> {
    let cache = PathBuf::from(CACHE_DIR);
    let tarball = cache.join(format!("rootfs-v{IMAGE_VERSION}.tar"));
    if tarball.exists() {
        note(format_args!("rootfs cached in {}", tarball.display()));
        return Ok(tarball);
    }
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    // Written under a temporary name and renamed: an interrupted build
    // leaves no tarball that looks complete.
    let partial = cache.join(format!(".rootfs-v{IMAGE_VERSION}.tar.partial"));
    step(format_args!(
        "building a Debian 12 rootfs with mmdebstrap into {} (about a minute)",
        tarball.display()
    ));
    run_checked(
        Command::new("mmdebstrap")
            .args(["--variant=minbase", "--format=tar"])
            .arg(format!("--include={INCLUDE}"))
            // The mirror's Release files may be older than their
            // Valid-Until, as the host's apt configuration allows.
            .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
            .arg(SUITE)
            .arg(&partial)
            .arg(format!("deb {MIRROR} {SUITE} main")),
    )
    .context("mmdebstrap (apt-get install mmdebstrap)")?;
    fs::rename(&partial, &tarball).context("renaming the rootfs tarball")?;
    Ok(tarball)
}
