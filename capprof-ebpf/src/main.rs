//! capprof's kernel side: observers of `cap_capable`, one file per hook
//! family, sharing one aggregation path (`observe.rs`).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only atomic add on BPF"
)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go by reference: aya-ebpf's `impl Borrow<K>` takes either, \
              and by value a struct would be copied onto the 512-byte BPF stack, on the hot path"
)]

// The benchmark's programs, only in capprof-bench's copy of the object.
#[cfg(feature = "bench")]
mod bench;
mod calibrate;
mod fexit;
mod helpers;
mod kprobe;
mod lsm;
mod maps;
mod observe;
mod process;
mod syscalls;
mod tp_btf;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: any panic path left in the code makes the
    // verifier reject the program, which is how we find it.
    loop {}
}
