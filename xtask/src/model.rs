//! `cargo xtask model`, run by `cargo xtask test` after the lints: builds
//! and tests capprof-profile (the profile model) the way a user of the
//! library would, with only stable Rust. No nightly, no bpf-linker, no
//! protoc: the child sees a PATH that holds cargo, rustc, rustup and the C
//! linker and nothing else, `RUSTUP_TOOLCHAIN=stable`, and a `PROTOC` that
//! does not exist. It has its own target directory, so nothing built with
//! nightly or for the eBPF object is reused.
//!
//! It fails first, with the package's name, when the crate's dependency
//! tree holds anything of the agent's (aya, tokio, the engine, cluster and
//! CRI clients, protobuf builds), and then when the build or a test fails.

use std::{
    env,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo_bin_dir, run_checked, stdout_of, step, target_dir, workspace_root};

/// The model crate.
const PACKAGE: &str = "capprof-profile";

/// Packages the model must never depend on, by name prefix: what only the
/// agent (capprof) needs.
const FORBIDDEN: &[&str] = &[
    "aya",
    "bpf-linker",
    "tokio",
    "bollard",
    "tonic",
    "prost",
    "protoc",
    "k8s-",
    "kube",
    "hyper",
    "axum",
    "capprof-ebpf",
];

/// The only programs the stable build may find on PATH: cargo and rustc
/// (rustup's proxies), and the C compiler and linker rustc links with.
const TOOLS: &[(&str, ToolDir)] = &[
    ("cargo", ToolDir::Cargo),
    ("rustc", ToolDir::Cargo),
    ("rustup", ToolDir::Cargo),
    ("cc", ToolDir::System),
    ("ld", ToolDir::System),
    ("as", ToolDir::System),
];

#[derive(Clone, Copy)]
enum ToolDir {
    Cargo,
    System,
}

/// Environment variables the child keeps: where rustup and cargo live, and
/// how to reach the registry.
const KEEP_ENV: &[&str] = &[
    "HOME",
    "RUSTUP_HOME",
    "CARGO_HOME",
    "CARGO_NET_OFFLINE",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// `cargo xtask model`.
pub fn check() -> Result<()> {
    let dir = target_dir().join("model-stable");
    let bin = shadow_path(&dir.join("bin"))?;
    step(format_args!(
        "{PACKAGE}: its dependency tree holds nothing of the agent's"
    ));
    let tree = stdout_of(
        stable_cargo(&bin, &dir)
            .args(["tree", "-p", PACKAGE, "-e", "normal,build,dev"])
            .args(["--prefix", "none", "--format", "{p}"]),
    )
    .context("listing capprof-profile's dependencies")?;
    let bad = forbidden(&tree);
    if !bad.is_empty() {
        bail!(
            "{PACKAGE} depends on {} (the model must build without the agent's \
             dependencies)",
            bad.join(", ")
        );
    }
    step(format_args!(
        "{PACKAGE}: cargo test on stable alone (no nightly, bpf-linker or protoc on PATH)"
    ));
    run_checked(stable_cargo(&bin, &dir).args(["test", "--locked", "-p", PACKAGE]))
        .context("capprof-profile does not build or pass its tests on stable alone")
}

/// The forbidden packages named in `cargo tree --prefix none --format {p}`
/// output (one `name vX.Y.Z (path)` a line), each once.
fn forbidden(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| FORBIDDEN.iter().any(|f| name.starts_with(f)))
        .map(str::to_owned)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// `cargo` on stable, in a clean environment whose PATH is `bin` alone.
fn stable_cargo(bin: &Path, target: &Path) -> Command {
    let mut cmd = Command::new(bin.join("cargo"));
    cmd.env_clear();
    for name in KEEP_ENV {
        if let Some(value) = env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("PATH", bin)
        .env("RUSTUP_TOOLCHAIN", "stable")
        .env("CARGO_TARGET_DIR", target)
        .env("PROTOC", "/nonexistent/protoc")
        .current_dir(workspace_root());
    cmd
}

/// A directory of links to the few tools the stable build may use.
fn shadow_path(bin: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(bin).with_context(|| format!("creating {}", bin.display()))?;
    for (tool, dir) in TOOLS {
        let link = bin.join(tool);
        let _ = std::fs::remove_file(&link);
        let source = match dir {
            ToolDir::Cargo => cargo_bin_dir().join(tool),
            ToolDir::System => on_path(tool).with_context(|| format!("{tool} is not on PATH"))?,
        };
        symlink(&source, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(bin.to_owned())
}

/// The first `PATH` entry that holds `tool`.
fn on_path(tool: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_dependencies_are_named() {
        let tree = "capprof-profile v0.1.0 (/w/capprof-profile)\n\
                    serde v1.0.229\n\
                    capprof v0.1.0 (/w/capprof)\n\
                    aya v0.14.0\n\
                    tokio v1.54.0\n\
                    aya v0.14.0\n\
                    k8s-cri v0.11.0\n";
        assert_eq!(forbidden(tree), ["aya", "k8s-cri", "tokio"]);
        assert!(forbidden("capprof-profile v0.1.0\nserde v1\ncapprof-common v0.1.0\n").is_empty());
    }
}
