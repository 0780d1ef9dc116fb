//! Builds the eBPF object with aya-build, as aya-template does.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
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
