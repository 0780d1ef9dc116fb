//! Builds the eBPF object with aya-build, as aya-template does.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    stamp_git_commit();
    // An object built already, by this workspace's own build: the fuzz
    // targets (capprof/fuzz) use it rather than build the eBPF crate again
    // under their instrumentation flags.
    println!("cargo:rerun-if-env-changed=CAPPROF_EBPF_OBJECT");
    if let Some(object) = std::env::var_os("CAPPROF_EBPF_OBJECT") {
        let out =
            std::path::Path::new(&std::env::var_os("OUT_DIR").context("OUT_DIR")?).join("capprof");
        std::fs::copy(&object, &out)
            .with_context(|| format!("copying CAPPROF_EBPF_OBJECT {}", object.display()))?;
        println!("cargo:rerun-if-changed={}", object.display());
        return Ok(());
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "capprof-ebpf")
        .ok_or_else(|| anyhow!("capprof-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}

/// The variable `capprof --version` and `capprof doctor` read the commit
/// from (src/build_info.rs): set it to build outside a git checkout (from a
/// source tarball) with a known commit.
const COMMIT_VAR: &str = "CAPPROF_GIT_COMMIT";

/// Passes the commit this build comes from to the crate as
/// `CAPPROF_GIT_COMMIT`, so that a bug report carries it: the variable if
/// set, else `git rev-parse`, else "unknown". Cargo reruns this when HEAD
/// moves (a commit, a checkout or a rebase rewrites the HEAD reflog).
fn stamp_git_commit() {
    println!("cargo:rerun-if-env-changed={COMMIT_VAR}");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let commit = std::env::var(COMMIT_VAR)
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/logs/HEAD");
    }
    println!("cargo:rustc-env={COMMIT_VAR}={commit}");
}
