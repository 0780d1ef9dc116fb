//! `cargo xtask image`: capprof's own container image, the one
//! deploy/daemonset.yaml runs, built with no registry and no Dockerfile:
//! the release binary (which embeds the eBPF object), the shared libraries
//! `ldd` names, and a minimal filesystem, imported with `docker import`.
//! No shell and no package manager: `kubectl exec ds/capprof -- capprof ps`
//! needs neither.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    engine::Engine,
    image::{TempDir, copy_with_libraries, import, make_dir},
    util::{build_release, note, run_checked, step},
};

/// The image's name: the tag deploy/daemonset.yaml names (its test checks
/// that they agree).
pub const CAPPROF_IMAGE: &str = concat!("capprof:", env!("CARGO_PKG_VERSION"));
/// Where the image keeps capprof (the manifest's `command`).
const BINARY: &str = "/usr/local/bin/capprof";

const PASSWD: &str = "root:x:0:0:root:/root:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\n";

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Also write the image as a tarball (`docker save`), for
    /// `ctr -n k8s.io images import FILE` on nodes. Needed when no Docker
    /// engine answers here: the private one the build starts goes away.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
}

/// `cargo xtask image`.
pub fn run(args: &ImageArgs) -> Result<()> {
    let engine = Engine::ensure()?;
    if engine.host().is_some() && args.save.is_none() {
        bail!(
            "no Docker engine answers at DOCKER_HOST or /var/run/docker.sock, and the private \
             one started here goes away with the image: pass --save FILE to keep it"
        );
    }
    ensure_capprof_image(&engine)?;
    if let Some(file) = &args.save {
        step(format_args!("saving {CAPPROF_IMAGE} to {}", file.display()));
        run_checked(
            engine
                .docker()
                .args(["save", "-o"])
                .arg(file)
                .arg(CAPPROF_IMAGE),
        )
        .context("docker save")?;
    }
    step("load it onto each node's containerd (the kubelet's image store):");
    let from = match &args.save {
        Some(file) => format!("ctr -n k8s.io images import {}", file.display()),
        None => format!("docker save {CAPPROF_IMAGE} | ctr -n k8s.io images import -"),
    };
    note(format_args!(
        "{from}   (as root on the node, or through ssh)"
    ));
    note("then: kubectl apply -k deploy/");
    Ok(())
}

/// Builds capprof (release) and imports [`CAPPROF_IMAGE`] into `engine`,
/// replacing an older one.
pub fn ensure_capprof_image(engine: &Engine) -> Result<()> {
    let release = build_release(&["capprof"])?;
    let rootfs =
        TempDir(std::env::temp_dir().join(format!("capprof-image-{}", std::process::id())));
    step(format_args!(
        "building the capprof rootfs in {}",
        rootfs.0.display()
    ));
    build_rootfs(&rootfs.0, &release.join("capprof"))?;
    step(format_args!("importing it as {CAPPROF_IMAGE}"));
    let changes = [
        format!(r#"ENTRYPOINT ["{BINARY}"]"#),
        r#"CMD ["daemon"]"#.to_owned(),
        // containerd's CRI runs an image's processes with the image's PATH.
        "ENV PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
        format!(
            "LABEL org.opencontainers.image.title=capprof org.opencontainers.image.version={}",
            env!("CARGO_PKG_VERSION")
        ),
    ];
    import(engine, &rootfs.0, CAPPROF_IMAGE, &changes)
}

/// The binary and its libraries; /etc/passwd and /etc/group with root
/// only; and the directories the DaemonSet mounts over, so that a
/// read-only root filesystem needs no mount point created.
fn build_rootfs(root: &Path, capprof: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing stale {}", root.display()))?;
    }
    copy_with_libraries(root, capprof, Path::new(BINARY))?;
    let size = fs::metadata(capprof)
        .with_context(|| format!("reading {}", capprof.display()))?
        .len();
    note(format_args!(
        "{} ({} MiB) as {BINARY}, with its libraries",
        capprof.display(),
        size / (1 << 20)
    ));
    let etc = root.join("etc");
    fs::create_dir_all(&etc).context("creating /etc in the rootfs")?;
    fs::write(etc.join("passwd"), PASSWD).context("writing /etc/passwd")?;
    fs::write(etc.join("group"), GROUP).context("writing /etc/group")?;
    make_dir(&root.join("tmp"), 0o1777, None)?;
    for dir in [
        "root",
        "proc",
        "dev",
        "sys",
        "etc/capprof",
        "run/capprof",
        "host/run",
        "var/lib/capprof",
    ] {
        make_dir(&root.join(dir), 0o755, None)?;
    }
    Ok(())
}
