//! The ring buffer reader: one task drains records as they arrive
//! (`AsyncFd`, never sleep-polling) and hands them on through a bounded
//! channel. After each drain it also takes what the syscall hooks had to
//! leave in their backlogs while the ring buffer was full.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use capprof_common::{
    event::{CapsetEvent, CapsetExecEvent, ConditionalEvent},
    syscalls::OperationKey,
};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};

use super::{
    Observer, ObserverError,
    events::{RingEvent, cstr, decode},
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
        let backlogs = observer.take_backlogs()?;
        let (stop, stop_rx) = oneshot::channel();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(read_events(ring, backlogs, tx, stop_rx));
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
    pub record: RingEvent,
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
        Some(self.named(record))
    }

    fn named(&mut self, record: RingEvent) -> Received {
        let exe = match record {
            RingEvent::Exec(e) => {
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
        Received { record, exe }
    }
}

/// The syscall hooks' backlogs (capprof-ebpf's maps.rs).
pub struct Backlogs {
    pub conditional: BpfHashMap<MapData, OperationKey, ConditionalEvent>,
    pub capset: BpfHashMap<MapData, OperationKey, CapsetEvent>,
    pub capset_exec: BpfHashMap<MapData, OperationKey, CapsetExecEvent>,
}

impl Backlogs {
    /// Takes every record out of the backlogs. Each is removed before it is
    /// handed on; the kernel's `OPS_SEEN` still holds its key, so it is
    /// never sent twice.
    fn drain(&mut self, names: &mut ExeNames) -> Vec<Received> {
        let mut out = vec![];
        drain_one(
            &mut self.conditional,
            RingEvent::Conditional,
            names,
            &mut out,
        );
        drain_one(&mut self.capset, RingEvent::capset, names, &mut out);
        drain_one(
            &mut self.capset_exec,
            RingEvent::CapsetExec,
            names,
            &mut out,
        );
        out
    }
}

/// Takes every record out of one backlog, as `wrap` makes it a record.
fn drain_one<T: aya::Pod>(
    map: &mut BpfHashMap<MapData, OperationKey, T>,
    wrap: fn(T) -> RingEvent,
    names: &mut ExeNames,
    out: &mut Vec<Received>,
) {
    let keys: Vec<OperationKey> = map.keys().filter_map(Result::ok).collect();
    for key in keys {
        if let Ok(event) = map.get(&key, 0)
            && map.remove(&key).is_ok()
        {
            out.push(names.named(wrap(event)));
        }
    }
}

/// Reads the ring buffer until `stop`, then drains what is left and
/// returns. Records go to `tx`; a full channel makes the reader wait, and
/// what the ring buffer then cannot take goes to the backlogs, drained
/// after the ring buffer each time (and first, for what a run before this
/// one left).
async fn read_events(
    events: RingBuf<MapData>,
    mut backlogs: Backlogs,
    tx: mpsc::Sender<Received>,
    mut stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same
    // until the AsyncFd (which owns the ring buffer) is dropped.
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE)? };
    let mut names = ExeNames::default();
    // What an earlier run left: the ring buffer first, then the backlogs
    // (filled only once the ring buffer was full), without waiting for a
    // new record to wake the reader.
    let mut first = true;
    loop {
        let mut batch = vec![];
        let stopping = if std::mem::take(&mut first) {
            let ring = fd.get_mut();
            while let Some(item) = ring.next() {
                batch.extend(names.name(&item));
            }
            false
        } else {
            tokio::select! {
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
            }
        };
        // A record the kernel puts in a backlog just after this drain waits
        // for the next record's wake-up, or the stop; it is pinned, so
        // never lost.
        batch.extend(backlogs.drain(&mut names));
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
