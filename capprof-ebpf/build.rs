use which::which;

/// Building this crate needs `bpf-linker`, which cargo cannot express as a
/// dependency. Rebuild when the linker binary changes, as aya-template does.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
