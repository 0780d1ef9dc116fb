//! Userspace-only impls: aya's `Pod` for every map type.

use crate::{
    check::{CheckKey, CheckStats, EvidenceKey, HotCache, Inflight},
    config::{CalibSample, Config},
    syscalls::{CapsetRaise, OperationKey, PendingSocket},
};

// SAFETY: all of these are #[repr(C)], Copy, made of integers with explicit
// padding, and valid for any bit pattern.
unsafe impl aya::Pod for CheckKey {}
unsafe impl aya::Pod for CheckStats {}
unsafe impl aya::Pod for EvidenceKey {}
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for CalibSample {}
unsafe impl aya::Pod for Inflight {}
unsafe impl aya::Pod for HotCache {}
unsafe impl aya::Pod for OperationKey {}
unsafe impl aya::Pod for PendingSocket {}
unsafe impl aya::Pod for crate::event::ConditionalEvent {}
unsafe impl aya::Pod for crate::event::CapsetEvent {}
unsafe impl aya::Pod for crate::event::CapsetExecEvent {}
unsafe impl aya::Pod for CapsetRaise {}
