//! `cargo xtask setup`: makes a fresh Debian 12 machine ready to build and
//! test capprof. Every step checks first and says whether it was already
//! satisfied, so running it again is cheap.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{note, run_checked, stdout_of, step, succeeds};

/// Debian packages the build, the tests and the cross-checks use.
const APT_PACKAGES: &[&str] = &[
    "docker.io",
    "runc",
    "busybox-static",
    "bpftrace",
    "bpftool",
    "podman",
    "qemu-system-x86",
    "cpio",
    // systemd-analyze, which checks the systemd export against a real unit.
    "systemd",
    // promtool, which checks the daemon's metrics.
    "prometheus",
    // The headless browser the report tests render HTML in.
    "chromium",
    // capsh and iputils ping, copied into the tools test image.
    "libcap2-bin",
    "iputils-ping",
    // The workload bench: nginx, copied into its image, and the load
    // generator run against it.
    "nginx-light",
    "wrk",
    // protoc, which k8s-cri's build compiles the CRI protobuf with.
    "protobuf-compiler",
    // `cargo xtask dist`: dpkg-shlibdeps works out the package's Depends:,
    // lintian checks the package, and mmdebstrap builds the clean Debian
    // 12 its install test runs in.
    "dpkg-dev",
    "lintian",
    "mmdebstrap",
];

/// Where bpf-linker finds nightly's libLLVM; its binary keeps an rpath here.
const DEFAULT_LLVM_PREFIX: &str = "/opt/capprof-llvm";

/// Pseudo-filesystems capprof needs: (fstype, source, mount point).
const MOUNTS: &[(&str, &str, &str)] = &[
    ("bpf", "bpf", "/sys/fs/bpf"),
    ("tracefs", "none", "/sys/kernel/tracing"),
    ("securityfs", "none", "/sys/kernel/security"),
];

/// `cargo xtask setup`.
pub fn run() -> Result<()> {
    ensure()?;
    // Only the fleet tests need it, so `demo` does not wait for its build.
    crate::kube::ensure_built()?;
    // Only `test` and `docs` build the book, so `demo` does not wait for it.
    crate::docs::ensure_mdbook()?;
    step("setup complete");
    Ok(())
}

/// Runs every setup check, installing or mounting only what is missing.
pub fn ensure() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root (apt-get, mount, loading eBPF); run it as root");
    }
    ensure_apt_packages()?;
    ensure_kubectl()?;
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(&sysroot)?;
    ensure_cargo_fuzz()?;
    ensure_mounts()?;
    Ok(())
}

/// cargo-fuzz, which builds the fuzz targets (`cargo xtask fuzz`, and
/// briefly in `cargo xtask test`).
pub fn ensure_cargo_fuzz() -> Result<()> {
    step("checking cargo-fuzz");
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        let version = stdout_of(Command::new("cargo").args(["fuzz", "--version"]))?;
        note(format_args!("already installed: {version}"));
        return Ok(());
    }
    step("installing cargo-fuzz (takes a minute or two)");
    run_checked(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("installing cargo-fuzz")
}

/// Debian's `kubernetes-client`, whose `kubectl patch --local` checks the
/// k8s-patch export, unless a kubectl is already installed: the package
/// ships /usr/bin/kubectl, so dpkg refuses it beside another package that
/// owns that path (Google Cloud SDK's `kubectl`, on these machines).
fn ensure_kubectl() -> Result<()> {
    step("checking kubectl");
    if succeeds(Command::new("kubectl").args(["version", "--client"])) {
        note("already installed");
        return Ok(());
    }
    note("installing Debian's kubernetes-client");
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "kubernetes-client"]),
    )
    .context("apt-get install kubernetes-client")
}

fn ensure_apt_packages() -> Result<()> {
    step("checking apt packages");
    ensure_packages(APT_PACKAGES)
}

/// Installs those of `packages` that dpkg does not have.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        note(format_args!("already installed: {}", packages.join(" ")));
        return Ok(());
    }
    step(format_args!(
        "installing apt packages: {}",
        missing.join(" ")
    ));
    run_checked(Command::new("apt-get").arg("update")).context("apt-get update")?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )
    .context("apt-get install")?;
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.as_slice() == b"install ok installed")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = stdout_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context(
            "the nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)",
        )?;
    Ok(PathBuf::from(sysroot))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    step("checking rust-src for the nightly toolchain");
    if sysroot.join("lib/rustlib/src").is_dir() {
        note("already installed");
        return Ok(());
    }
    step("installing rust-src for nightly");
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// Builds bpf-linker against nightly's own libLLVM (no prebuilt exists here).
fn ensure_bpf_linker(sysroot: &Path) -> Result<()> {
    step("checking bpf-linker");
    let prefix = env::var_os("CAPPROF_LLVM_PREFIX")
        .map_or_else(|| PathBuf::from(DEFAULT_LLVM_PREFIX), PathBuf::from);
    let (libllvm, major) = find_libllvm(&sysroot.join("lib"))?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    // bpf-linker links against `libLLVM.so` but records the library's soname
    // (`libLLVM.so.22.1-rust-…`) as NEEDED, and finds it through its rpath
    // into the prefix; so both names must be there.
    for name in [PathBuf::from("libLLVM.so"), PathBuf::from(file_name)] {
        ensure_symlink(&libllvm, &lib_dir.join(name))?;
    }
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        let version = stdout_of(Command::new("bpf-linker").arg("--version"))?;
        note(format_args!("already installed: {version}"));
        return Ok(());
    }
    step(format_args!(
        "installing bpf-linker against {} (takes about a minute)",
        libllvm.display()
    ));
    run_checked(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}")),
    )
    .context("building bpf-linker")?;
    let version = stdout_of(Command::new("bpf-linker").arg("--version"))
        .context("bpf-linker was installed but does not run")?;
    note(format_args!("installed: {version}"));
    Ok(())
}

/// Finds `libLLVM.so.<major>.<minor>-rust-<version>-nightly` in the nightly
/// sysroot's lib directory, and returns it with its LLVM major version.
fn find_libllvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", lib_dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(major) = libllvm_major(name) {
            return Ok((entry.path(), major));
        }
    }
    bail!(
        "no libLLVM.so.*-rust-*-nightly in {}; is the nightly toolchain complete?",
        lib_dir.display()
    )
}

/// `libLLVM.so.22.1-rust-1.97.0-nightly` → 22.
fn libllvm_major(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM.so.")?;
    if !rest.contains("-rust-") || !rest.ends_with("-nightly") {
        return None;
    }
    rest.split('.').next()?.parse().ok()
}

/// `ln -sf target link`, leaving a correct link alone.
fn ensure_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        note(format_args!(
            "{} → {} (already linked)",
            link.display(),
            target.display()
        ));
        return Ok(());
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("linking {} → {}", link.display(), target.display()))?;
    note(format_args!(
        "{} → {} (linked)",
        link.display(),
        target.display()
    ));
    Ok(())
}

fn ensure_mounts() -> Result<()> {
    step("checking pseudo-filesystems");
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    for &(fstype, source, target) in MOUNTS {
        if is_mounted(&mountinfo, fstype, target) {
            note(format_args!("{fstype} at {target}: already mounted"));
            continue;
        }
        step(format_args!("mounting {fstype} at {target}"));
        run_checked(Command::new("mount").args(["-t", fstype, source, target]))?;
    }
    Ok(())
}

/// Whether mountinfo has a mount of `fstype` at `target`.
///
/// A line reads `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS…] - FSTYPE SRC OPTS`.
fn is_mounted(mountinfo: &str, fstype: &str, target: &str) -> bool {
    mountinfo.lines().any(|line| {
        let mut halves = line.splitn(2, " - ");
        let (Some(head), Some(tail)) = (halves.next(), halves.next()) else {
            return false;
        };
        head.split(' ').nth(4) == Some(target) && tail.split(' ').next() == Some(fstype)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libllvm_major_reads_rust_builds_only() {
        assert_eq!(
            libllvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(libllvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(libllvm_major("libLLVM.so"), None);
        assert_eq!(libllvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
    }

    #[test]
    fn is_mounted_matches_fstype_and_mount_point() {
        let info = "\
35 24 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:14 - bpf bpf rw,mode=700
40 22 0:12 / /sys/kernel/tracing rw,relatime - tracefs none rw
";
        assert!(is_mounted(info, "bpf", "/sys/fs/bpf"));
        assert!(is_mounted(info, "tracefs", "/sys/kernel/tracing"));
        assert!(!is_mounted(info, "securityfs", "/sys/kernel/security"));
        assert!(!is_mounted(info, "tracefs", "/sys/fs/bpf"));
    }
}
