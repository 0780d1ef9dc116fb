//! A ring buffer consumer, as capprof's or a streaming tool's would be.

use std::{
    collections::HashSet,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
};

use aya::maps::{MapData, RingBuf};
use capprof_common::event::EVENT_EVIDENCE;

/// What a finished reader hands back: the (cgroup, cap) pairs of the
/// evidence records it read, and the ring buffer itself.
pub type Finished = (HashSet<(u64, u32)>, RingBuf<MapData>);

/// Reads a ring buffer as a real consumer would: poll, drain, repeat.
pub struct Reader {
    pub stop: Arc<AtomicBool>,
    pub records: Arc<AtomicU64>,
    pub handle: Option<JoinHandle<Finished>>,
}

impl Reader {
    /// With `pairs`, remembers the (cgroup, cap) of every evidence record.
    pub fn spawn(mut ring: RingBuf<MapData>, pairs: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(AtomicU64::new(0));
        let (stop2, records2) = (stop.clone(), records.clone());
        let handle = thread::spawn(move || {
            let mut seen = HashSet::new();
            loop {
                let done = stop2.load(Ordering::Relaxed);
                let mut pfd = libc::pollfd {
                    fd: ring.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
                let mut n = 0;
                while let Some(item) = ring.next() {
                    n += 1;
                    if pairs && item.len() >= 16 {
                        let word = |at: usize| {
                            u32::from_ne_bytes([item[at], item[at + 1], item[at + 2], item[at + 3]])
                        };
                        if word(0) == EVENT_EVIDENCE {
                            let mut id = [0u8; 8];
                            id.copy_from_slice(&item[8..16]);
                            seen.insert((u64::from_ne_bytes(id), word(4)));
                        }
                    }
                }
                records2.fetch_add(n, Ordering::Relaxed);
                if done {
                    return (seen, ring);
                }
            }
        });
        Self {
            stop,
            records,
            handle: Some(handle),
        }
    }

    /// Stops after a last drain; returns the (cgroup, cap) pairs seen (with
    /// `pairs`) and the ring buffer, for the caller to read on its own.
    pub fn finish(mut self) -> Option<Finished> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
