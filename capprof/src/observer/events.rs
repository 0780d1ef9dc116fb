//! Decoding ring buffer records.

use std::mem::size_of;

use capprof_common::event::{
    CapsetEvent, CapsetExecEvent, CgroupEvent, ConditionalEvent, EVENT_CAPSET, EVENT_CAPSET_EXEC,
    EVENT_CAPSET_REFUSED, EVENT_CGROUP, EVENT_CONDITIONAL, EVENT_EVIDENCE, EVENT_EXEC,
    EvidenceEvent, ExecEvent,
};

#[derive(Debug, Clone, Copy)]
pub enum RingEvent {
    Evidence(EvidenceEvent),
    Cgroup(CgroupEvent),
    Exec(ExecEvent),
    Conditional(ConditionalEvent),
    Capset(CapsetEvent),
    /// A capset() the kernel refuses: it keeps nothing, so no profile
    /// reads it; the proof does (`proof::refusals`).
    CapsetRefused(CapsetEvent),
    CapsetExec(CapsetExecEvent),
}

impl RingEvent {
    /// The process a record names, for those that go into a profile with
    /// their program (`Received::exe`).
    pub fn profiled_tgid(&self) -> Option<u32> {
        match self {
            RingEvent::Evidence(e) => Some(e.tgid),
            RingEvent::Conditional(c) => Some(c.tgid),
            RingEvent::Capset(c) | RingEvent::CapsetRefused(c) => Some(c.tgid),
            RingEvent::CapsetExec(c) => Some(c.tgid),
            RingEvent::Cgroup(_) | RingEvent::Exec(_) => None,
        }
    }

    /// The cgroup of a record that goes into a profile.
    pub fn profiled_cgroup(&self) -> Option<u64> {
        match self {
            RingEvent::Evidence(e) => Some(e.cgroup_id),
            RingEvent::Conditional(c) => Some(c.cgroup_id),
            RingEvent::Capset(c) | RingEvent::CapsetRefused(c) => Some(c.cgroup_id),
            RingEvent::CapsetExec(c) => Some(c.cgroup_id),
            RingEvent::Cgroup(_) | RingEvent::Exec(_) => None,
        }
    }
}

impl RingEvent {
    /// A capset() record as the ring buffer or its backlog holds it: both
    /// kinds share `CapsetEvent`, told apart by its `event`.
    pub fn capset(e: CapsetEvent) -> Self {
        match e.event {
            EVENT_CAPSET_REFUSED => RingEvent::CapsetRefused(e),
            _ => RingEvent::Capset(e),
        }
    }
}

/// Decodes one record; None for a record this build does not know or one
/// that is too short (never trust sizes).
pub fn decode(bytes: &[u8]) -> Option<RingEvent> {
    let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
    match kind {
        EVENT_EVIDENCE => read::<EvidenceEvent>(bytes).map(RingEvent::Evidence),
        EVENT_CGROUP => read::<CgroupEvent>(bytes).map(RingEvent::Cgroup),
        EVENT_EXEC => read::<ExecEvent>(bytes).map(RingEvent::Exec),
        EVENT_CONDITIONAL => read::<ConditionalEvent>(bytes).map(RingEvent::Conditional),
        EVENT_CAPSET => read::<CapsetEvent>(bytes).map(RingEvent::Capset),
        EVENT_CAPSET_REFUSED => read::<CapsetEvent>(bytes).map(RingEvent::CapsetRefused),
        EVENT_CAPSET_EXEC => read::<CapsetExecEvent>(bytes).map(RingEvent::CapsetExec),
        _ => None,
    }
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: T is a repr(C) integer-only record valid for any bits, and
        // the length is checked; read_unaligned copes with any alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A NUL-padded comm as text.
pub fn comm_str(comm: &[u8; 16]) -> String {
    cstr(comm)
}

/// A NUL-terminated kernel string as text.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_known_records_and_rejects_short_ones() {
        let mut ev = CgroupEvent {
            event: EVENT_CGROUP,
            tgid: 7,
            cgroup_id: 42,
            ts_ns: 1,
            comm: *b"sh\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            name: [0; 96],
            parent: [0; 96],
        };
        ev.name[..6].copy_from_slice(b"abc123");
        // SAFETY: viewing a repr(C) value as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<CgroupEvent>())
        };
        match decode(bytes) {
            Some(RingEvent::Cgroup(c)) => {
                assert_eq!(c.cgroup_id, 42);
                assert_eq!(comm_str(&c.comm), "sh");
                assert_eq!(cstr(&c.name), "abc123");
                assert_eq!(cstr(&c.parent), "");
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(&bytes[..10]).is_none());
        assert!(decode(&[9, 0, 0, 0, 1, 2, 3]).is_none());
        assert!(decode(&[]).is_none());
    }
}
