//! Builds the benchmark's copy of the eBPF object: capprof's programs plus
//! the benchmark's own (capprof-ebpf's `bench` feature), which the object
//! capprof embeds leaves out.

fn main() -> anyhow::Result<()> {
    let ebpf = aya_build::Package {
        name: "capprof-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../../capprof-ebpf"),
        features: &["bench"],
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
