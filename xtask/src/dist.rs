//! `cargo xtask dist`: what a user installs, in `target/dist/`:
//! - `capprof_<version>_<arch>.deb`, built with `dpkg-deb` from the layout
//!   below, its `Depends:` worked out by `dpkg-shlibdeps` from what the
//!   binary links (dist/deb.rs);
//! - `capprof-<version>-<arch>.tar.gz`, the same files for other
//!   distributions, under one top directory laid out like `/`;
//! - `capprof-image-<version>.tar`, the DaemonSet's image (`cargo xtask
//!   image`), saved with `docker save`;
//! - `SHA256SUMS` of the three, for `sha256sum -c`.
//!
//! Nothing is published: the artefacts stay in the target directory.
//!
//! The installed layout (the .deb's and the tarball's):
//! - `/usr/bin/capprof`, the release binary (its eBPF object is embedded),
//!   stripped of its symbols;
//! - `/lib/systemd/system/capprof.service`, deploy/capprof.service with the
//!   packaged binary's path; not enabled;
//! - `/usr/share/man/man1/capprof.1.gz` and `capprof-COMMAND.1.gz` per
//!   subcommand, and the bash, zsh and fish completions, all generated from
//!   the clap definitions by the binary itself (`capprof dist-files`);
//! - `/usr/share/doc/capprof/`: README.md, the licence (Debian's
//!   machine-readable `copyright`) and the changelog.

mod deb;

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    capprof_image::{CAPPROF_IMAGE, ensure_capprof_image},
    engine::Engine,
    util::{build_release, note, run_checked, stdout_of, step, target_dir, workspace_root},
};

/// capprof's version, the packages' too.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The checksum file's name in `target/dist/`.
pub const SUMS: &str = "SHA256SUMS";
/// Where the systemd unit goes: Debian 12's systemd reads /lib, and lintian
/// 2.116 expects units there.
const UNIT: &str = "lib/systemd/system/capprof.service";
/// The unit's binary in the source tree, and in the packages.
const SOURCE_BINARY: &str = "/usr/local/bin/capprof";
const PACKAGED_BINARY: &str = "/usr/bin/capprof";

#[derive(Debug, Args)]
pub struct DistArgs {}

/// The artefacts one `dist` run wrote.
#[derive(Debug)]
pub struct Artefacts {
    pub deb: PathBuf,
    pub tarball: PathBuf,
    pub image: PathBuf,
}

/// `cargo xtask dist`.
pub fn run(_args: &DistArgs) -> Result<()> {
    let engine = Engine::ensure()?;
    ensure_capprof_image(&engine)?;
    let artefacts = build(&engine)?;
    engine.stop();
    step(format_args!("done: {}", dist_dir().display()));
    for file in [&artefacts.deb, &artefacts.tarball, &artefacts.image] {
        let size = fs::metadata(file).map(|m| m.len()).unwrap_or_default();
        note(format_args!("{} ({} KiB)", file.display(), size / 1024));
    }
    note(format_args!(
        "install: apt-get install ./{}",
        file_name(&artefacts.deb)
    ));
    Ok(())
}

/// `target/dist`.
pub fn dist_dir() -> PathBuf {
    target_dir().join("dist")
}

/// Writes every artefact into [`dist_dir`], replacing an older run's. The
/// image must already be in `engine` ([`ensure_capprof_image`]): `cargo
/// xtask test` builds it for its own tests first.
pub fn build(engine: &Engine) -> Result<Artefacts> {
    let release = build_release(&["capprof"])?;
    let out = dist_dir();
    let stage = out.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    step(format_args!(
        "laying out the package in {}",
        stage.display()
    ));
    // Where debhelper would put it, so that dpkg-shlibdeps finds it there.
    let root = stage.join("debian/capprof");
    lay_out(&root, &release.join("capprof"), &stage.join("generated"))?;
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let deb = deb::build(&stage, &root, &arch, &out)?;
    let tarball = out.join(format!("capprof-{VERSION}-{arch}.tar.gz"));
    tar(&root, &tarball, &format!("capprof-{VERSION}-{arch}"))?;
    let image = out.join(format!("capprof-image-{VERSION}.tar"));
    step(format_args!(
        "saving {CAPPROF_IMAGE} to {}",
        image.display()
    ));
    run_checked(
        engine
            .docker()
            .args(["save", "-o"])
            .arg(&image)
            .arg(CAPPROF_IMAGE),
    )
    .context("docker save")?;
    write_sums(&out, &[&deb, &tarball, &image])?;
    Ok(Artefacts {
        deb,
        tarball,
        image,
    })
}

/// The installed files under `root`, as `/` has them after installing.
fn lay_out(root: &Path, binary: &Path, generated: &Path) -> Result<()> {
    let bin = root.join(PACKAGED_BINARY.trim_start_matches('/'));
    install(binary, &bin, 0o755)?;
    // As dh_strip does: the symbols and the notes go, the embedded eBPF
    // object (data in .rodata) stays.
    run_checked(
        Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note"])
            .arg(&bin),
    )
    .context("strip")?;
    let unit = fs::read_to_string(workspace_root().join("deploy/capprof.service"))
        .context("reading deploy/capprof.service")?;
    write(&root.join(UNIT), &packaged_unit(&unit), 0o644)?;

    run_checked(Command::new(binary).arg("dist-files").arg(generated))
        .context("capprof dist-files")?;
    let man1 = root.join("usr/share/man/man1");
    let mut pages = 0;
    for page in fs::read_dir(generated.join("man")).context("reading the man pages")? {
        let page = page?.path();
        let name = format!("{}.gz", file_name(&page));
        gzip(&page, &man1.join(name))?;
        pages += 1;
    }
    note(format_args!("{pages} man pages"));
    for (name, dest) in [
        ("capprof", "usr/share/bash-completion/completions/capprof"),
        ("_capprof", "usr/share/zsh/vendor-completions/_capprof"),
        (
            "capprof.fish",
            "usr/share/fish/vendor_completions.d/capprof.fish",
        ),
    ] {
        install(
            &generated.join("completions").join(name),
            &root.join(dest),
            0o644,
        )?;
    }
    let doc = root.join("usr/share/doc/capprof");
    gzip(
        &workspace_root().join("README.md"),
        &doc.join("README.md.gz"),
    )?;
    write(&doc.join("copyright"), &deb::copyright()?, 0o644)?;
    let changelog = doc.join("changelog");
    write(&changelog, &deb::changelog()?, 0o644)?;
    gzip(&changelog, &doc.join("changelog.gz"))?;
    fs::remove_file(&changelog).context("removing the uncompressed changelog")?;
    Ok(())
}

/// deploy/capprof.service as the packages install it: the packaged
/// binary's path, and a header that says how to enable it.
fn packaged_unit(source: &str) -> String {
    let body = source
        .split_once("\n\n")
        .map_or(source, |(_header, body)| body);
    format!(
        "# capprof daemon: always-on capability profiling of every container on this\n\
         # host. Installed by the capprof package, not enabled: run\n\
         #   systemctl enable --now capprof\n\
         # Query it with `capprof ps` and `capprof profile NAME` (as root).\n\n{}",
        body.replace(SOURCE_BINARY, PACKAGED_BINARY)
    )
}

/// Copies `from` to `to` (creating its directory) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_bytes(to, &bytes, mode)
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    write_bytes(to, text.as_bytes(), mode)
}

fn write_bytes(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().context("a file path has a parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

/// `gzip -9n` (no name, no timestamp: the same input gives the same
/// bytes, as Debian wants of man pages and documentation).
fn gzip(from: &Path, to: &Path) -> Result<()> {
    let compressed = Command::new("gzip")
        .args(["-9nc"])
        .arg(from)
        .output()
        .context("could not start gzip")?;
    if !compressed.status.success() {
        anyhow::bail!("gzip {} failed ({})", from.display(), compressed.status);
    }
    write_bytes(to, &compressed.stdout, 0o644)
}

/// A tarball of `root` under `top/`, owned by root, sorted, with the
/// modification times of the files as they are.
fn tar(root: &Path, tarball: &Path, top: &str) -> Result<()> {
    step(format_args!("writing {}", tarball.display()));
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
            // The package's control files are not the tarball's.
            .arg("--exclude=./DEBIAN")
            .arg(format!("--transform=s,^\\.,{top},"))
            .arg("-czf")
            .arg(tarball)
            .arg("."),
    )
    .context("tar")
}

/// `sha256sum` of `files`, by their names, into `dir/SHA256SUMS`.
fn write_sums(dir: &Path, files: &[&Path]) -> Result<()> {
    step(format_args!("writing {}", dir.join(SUMS).display()));
    let sums = stdout_of(
        Command::new("sha256sum")
            .current_dir(dir)
            .args(files.iter().map(|f| file_name(f))),
    )?;
    fs::write(dir.join(SUMS), sums).context("writing SHA256SUMS")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
