//! The ring buffer reader: one task drains records as they arrive
//! (`AsyncFd`, never sleep-polling) and hands them on through a bounded
//! channel.

use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};

use super::{
    Observer, ObserverError,
    events::{Record, cstr, decode},
};

/// How many decoded records may wait for their consumer.
const CHANNEL: usize = 4096;

/// The reader task of a loaded observer.
pub struct EventReader {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("the ring buffer reader failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the ring buffer reader task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl EventReader {
    /// Takes the observer's ring buffer and starts reading it; records come
    /// out of the returned channel. Must run inside a tokio runtime.
    pub fn spawn(
        observer: &mut Observer,
    ) -> Result<(Self, mpsc::Receiver<Received>), ObserverError> {
        let ring = observer.take_events()?;
        let (stop, stop_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(read_events(ring, tx, stop_rx));
        Ok((Self { stop, task }, rx))
    }

    /// Stops reading once what the ring buffer holds now is drained, and
    /// waits for that. The channel then ends after its last record.
    pub async fn stop(self) -> Result<(), ReaderError> {
        let _ = self.stop.send(());
        Ok(self.task.await??)
    }
}

/// A record, and what could only be learned while its process lived.
#[derive(Debug, Clone)]
pub struct Received {
    pub record: Record,
    /// For evidence: the executable, from the kernel's exec record, else
    /// from /proc/PID/exe.
    pub exe: Option<String>,
}

/// Names executables: from the kernel's exec records (so a process that has
/// already exited is still named), else from /proc.
#[derive(Default)]
struct ExeNames(HashMap<u32, String>);

impl ExeNames {
    fn name(&mut self, bytes: &[u8]) -> Option<Received> {
        let Some(record) = decode(bytes) else {
            tracing::debug!("undecodable record of {} bytes", bytes.len());
            return None;
        };
        let exe = match record {
            Record::Exec(e) => {
                let name = cstr(&e.filename);
                if !name.is_empty() {
                    if self.0.len() > 65536 {
                        self.0.clear();
                    }
                    self.0.insert(e.tgid, name);
                }
                None
            }
            _ => record.profiled_tgid().and_then(|tgid| {
                self.0.get(&tgid).cloned().or_else(|| {
                    std::fs::read_link(format!("/proc/{tgid}/exe"))
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned())
                })
            }),
        };
        Some(Received { record, exe })
    }
}

/// Reads the ring buffer until `stop`, then drains what is left and
/// returns. Records go to `tx`; a full channel makes the reader wait, and
/// the kernel counts what the ring buffer then cannot take.
async fn read_events(
    events: RingBuf<MapData>,
    tx: mpsc::Sender<Received>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // until the AsyncFd (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)? };
    let mut names = ExeNames::default();
    loop {
        let mut batch = vec![];
        let stopping = tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    batch.extend(names.name(&item));
                }
                guard.clear_ready();
                false
            }
            _ = &mut stop => {
                let ring = fd.get_mut();
                while let Some(item) = ring.next() {
                    batch.extend(names.name(&item));
                }
                true
            }
        };
        for r in batch {
            if tx.send(r).await.is_err() {
                return Ok(());
            }
        }
        if stopping {
            return Ok(());
        }
    }
}
