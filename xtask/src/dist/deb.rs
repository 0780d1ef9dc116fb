//! The Debian package: `DEBIAN/` beside the installed layout, then
//! `dpkg-deb --build`. No debian/ source tree and no debhelper: what
//! debhelper would work out is worked out here with the same tools
//! (`dpkg-shlibdeps` for `Depends:`, `md5sums`, `Installed-Size:`), and the
//! maintainer scripts are written out in full below.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{PACKAGED_BINARY, VERSION, write};
use crate::util::{note, run_checked, stdout_of, step, workspace_root};

const MAINTAINER: &str = "capprof developers <dev@capprof.invalid>";

/// Debian's section for system administration tools.
const SECTION: &str = "admin";

const DESCRIPTION: &str = "\
per-container Linux capability profiler (eBPF)
 capprof records which Linux capabilities each container cgroup asks for,
 with eBPF on the kernel's cap_capable hook, and turns that into a minimal
 allowlist. It exports the allowlist as Docker flags, Compose, Kubernetes,
 Podman, OCI or systemd settings, and proves it by running the container
 again with exactly that allowlist.
 .
 The capprof daemon (capprof.service, installed but not enabled) profiles
 every container on the host, always on.";

/// Tells systemd about the unit, and restarts a daemon that runs, so that
/// the new binary takes over its pins (the same map ABI), or says in the
/// journal in one line that `capprof daemon --reset` is needed. The unit
/// is not enabled here: profiling every container is the administrator's
/// choice.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    systemctl try-restart capprof.service || true
fi
";

/// On removal, not on upgrade: stops the daemon and removes its pins,
/// which detaches its programs, so that nothing of capprof stays in the
/// kernel. The profiles in /var/lib/capprof are the administrator's.
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop capprof.service || true
    fi
    if [ -d /sys/fs/bpf/capprof ]; then
        capprof daemon --reset || true
    fi
fi
# capprof run's warm sets: verified programs kept idle, never attached
# between runs; another build cannot reuse them.
rm -rf /sys/fs/bpf/capprof-run
";

/// Forgets the removed unit.
const POSTRM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
";

/// Writes `root/DEBIAN` and builds `out/capprof_<version>_<arch>.deb`.
/// `stage` holds the scratch `debian/control` that `dpkg-shlibdeps` reads.
pub fn build(stage: &Path, root: &Path, arch: &str, out: &Path) -> Result<PathBuf> {
    let depends = depends(stage, root)?;
    note(format_args!("Depends: {depends}"));
    let installed_kib = stdout_of(Command::new("du").args(["-sk"]).arg(root))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    let md5sums = md5sums(root)?;
    let control = root.join("DEBIAN");
    write(
        &control.join("control"),
        &format!(
            "Package: capprof\nVersion: {VERSION}\nArchitecture: {arch}\n\
             Maintainer: {MAINTAINER}\nInstalled-Size: {installed_kib}\n\
             Depends: {depends}\nSuggests: docker.io | podman\n\
             Section: {SECTION}\nPriority: optional\nDescription: {DESCRIPTION}\n"
        ),
        0o644,
    )?;
    write(&control.join("md5sums"), &md5sums, 0o644)?;
    for (name, script) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        write(&control.join(name), script, 0o755)?;
    }
    let deb = out.join(format!("capprof_{VERSION}_{arch}.deb"));
    step(format_args!("building {}", deb.display()));
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(root)
            .arg(&deb),
    )
    .context("dpkg-deb --build")?;
    Ok(deb)
}

/// `Depends:` from the libraries the binary links, with the versions its
/// symbols need: `dpkg-shlibdeps`, as debhelper's `${shlibs:Depends}`.
fn depends(stage: &Path, root: &Path) -> Result<String> {
    write(
        &stage.join("debian/control"),
        "Source: capprof\n\nPackage: capprof\nArchitecture: any\n",
        0o644,
    )?;
    let binary = root.join(PACKAGED_BINARY.trim_start_matches('/'));
    let line = stdout_of(
        Command::new("dpkg-shlibdeps")
            .current_dir(stage)
            .arg("-O")
            .arg(&binary),
    )
    .context("dpkg-shlibdeps (Debian's dpkg-dev)")?;
    match line.trim().strip_prefix("shlibs:Depends=") {
        Some(depends) if !depends.is_empty() => Ok(depends.to_owned()),
        _ => bail!("dpkg-shlibdeps gave no dependencies: {line:?}"),
    }
}

/// `DEBIAN/md5sums`: every installed file, by its path without the
/// leading slash, sorted.
fn md5sums(root: &Path) -> Result<String> {
    let mut files = vec![];
    collect_files(root, root, &mut files)?;
    files.sort();
    stdout_of(Command::new("md5sum").current_dir(root).args(&files))
}

fn collect_files(root: &Path, dir: &Path, files: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, files)?;
        } else {
            let relative = path.strip_prefix(root).context("a file under the root")?;
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Debian's machine-readable copyright file: capprof is MIT (Debian's
/// name for it is Expat) or Apache-2.0, at the user's choice, as
/// Cargo.toml says; the Apache licence's text is in every Debian system's
/// common-licenses.
pub fn copyright() -> Result<String> {
    let mit =
        fs::read_to_string(workspace_root().join("LICENSE-MIT")).context("reading LICENSE-MIT")?;
    let body: Vec<String> = mit
        .lines()
        .skip_while(|line| !line.starts_with("Permission"))
        .map(|line| {
            if line.trim().is_empty() {
                " .".to_owned()
            } else {
                format!(" {line}")
            }
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: capprof\n\n\
         Files: *\n\
         Copyright: 2026 the capprof developers\n\
         License: Expat or Apache-2.0\n\n\
         License: Expat\n{}\n\n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0,\n \
         is in /usr/share/common-licenses/Apache-2.0.\n",
        body.join("\n")
    ))
}

/// A one-entry Debian changelog naming the commit, dated by it, so that
/// the same commit gives the same package contents.
pub fn changelog() -> Result<String> {
    let git = |args: &[&str]| {
        stdout_of(Command::new("git").current_dir(workspace_root()).args(args))
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).context("git rev-parse")?;
    let date = git(&[
        "log",
        "-1",
        "--date=format:%a, %d %b %Y %H:%M:%S %z",
        "--format=%cd",
    ])
    .context("git log")?;
    Ok(format!(
        "capprof ({VERSION}) unstable; urgency=medium\n\n  \
         * Built by `cargo xtask dist` from commit {commit}.\n\n \
         -- {MAINTAINER}  {date}\n"
    ))
}
