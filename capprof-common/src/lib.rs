//! Types shared by the capprof eBPF programs and userspace.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`,
//! built from fixed-width integers with explicit padding, and has its size
//! asserted at compile time, so both sides agree on the layout by
//! construction. The `user` feature adds aya's `Pod` impls and serde.
#![no_std]

pub mod cap;
pub mod check;
pub mod config;
pub mod event;
pub mod names;
pub mod syscalls;

#[cfg(feature = "user")]
pub mod user;

/// Version of the map ABI: the layout of every map key and value below.
/// Pins live under a directory carrying this number, so that a capprof built
/// with another layout never reuses them. Bump it on any layout change.
///
/// 7: `CAPSET_RAISES` (what capset() kept, per process, until its exec).
/// 8: `SyscallOffsets::cred_cap_bset` in `CONFIG`.
/// 9: refused capset() calls in `CAPSET_BACKLOG` (`EVENT_CAPSET_REFUSED`).
pub const MAP_ABI_VERSION: u32 = 9;
