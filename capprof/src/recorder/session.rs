//! One recording session: the loop that feeds a `Recorder` from the kernel's
//! ring buffer and the engine's events and inspect replies, and finalizes
//! the containers that exit. `capprof record` and the daemon both run one,
//! each adding its own arms (signals, a deadline, API queries) around
//! `Session::next`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use tokio::{sync::mpsc, time::Interval};

use super::{
    Recorder,
    source::{Events, Source},
};
use crate::{
    engine::{ContainerEvent, ContainerInfo, Engine},
    observer::{
        Observer, ObserverError,
        reader::{EventReader, ReaderError, Received},
    },
    profile::Profile,
};

/// How long a dead container waits for its last records to arrive.
const GRACE: Duration = Duration::from_millis(300);
/// How long a dead container's profile waits for the engine's inspect
/// reply (Podman answers only after its cleanup).
const INSPECT_WAIT: Duration = Duration::from_secs(5);

/// A container that exited and was finalized.
#[derive(Debug)]
pub struct Finalized {
    pub id: String,
    /// Its profile; None when nothing was new since the last finalization.
    pub profile: Result<Option<Profile>, ObserverError>,
}

pub struct Session {
    observer: Observer,
    recorder: Recorder,
    reader: Option<EventReader>,
    records: mpsc::Receiver<Received>,
    source: Option<Arc<Source>>,
    events: Option<Events>,
    inspect_tx: mpsc::Sender<(String, Option<ContainerInfo>)>,
    inspect_rx: mpsc::Receiver<(String, Option<ContainerInfo>)>,
    /// Containers whose inspect is in flight, since when.
    inspecting: HashMap<String, Instant>,
    tick: Interval,
}

impl Session {
    /// Starts reading the observer's records, follows the engine's events,
    /// and takes in the containers that already run. `tick` is how often
    /// exited containers are looked for.
    pub async fn start(
        observer: Observer,
        recorder: Recorder,
        engine: Option<Engine>,
        tick: Duration,
    ) -> Result<Self, ObserverError> {
        Self::start_with(observer, recorder, engine.map(Source::Engine), tick).await
    }

    /// [`Session::start`] with any source of names: an engine or a CRI
    /// runtime.
    pub async fn start_with(
        mut observer: Observer,
        mut recorder: Recorder,
        source: Option<Source>,
        tick: Duration,
    ) -> Result<Self, ObserverError> {
        let (reader, records) = EventReader::spawn(&mut observer)?;
        // Events from just before the list of what runs, so that a
        // container started between the two is named (a start seen twice
        // is harmless: its inspect reply is taken in again).
        let since = std::time::SystemTime::now() - Duration::from_millis(100);
        if let Some(source) = &source {
            let running = source.running().await;
            for id in &running {
                if let Some(info) = source.inspect(id).await {
                    recorder.on_preexisting(info);
                }
            }
            for id in recorder.live_ids() {
                if !running.contains(&id) {
                    let info = source.inspect(&id).await;
                    recorder.on_not_running(&id, info);
                }
            }
        }
        let events = source.as_ref().map(|s| s.events(since));
        let (inspect_tx, inspect_rx) = mpsc::channel(256);
        Ok(Self {
            observer,
            recorder,
            reader: Some(reader),
            records,
            source: source.map(Arc::new),
            events,
            inspect_tx,
            inspect_rx,
            inspecting: HashMap::new(),
            tick: {
                let mut tick = tokio::time::interval(tick);
                // Armed only while a container is dying: after an idle
                // spell, one tick, not a burst of missed ones.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            },
        })
    }

    pub fn observer(&self) -> &Observer {
        &self.observer
    }

    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Both halves, for work that reads the kernel for a container.
    pub fn parts_mut(&mut self) -> (&mut Observer, &mut Recorder) {
        (&mut self.observer, &mut self.recorder)
    }

    pub fn engine(&self) -> Option<&Engine> {
        self.source.as_deref().and_then(Source::engine)
    }

    /// Takes in whatever comes next: a record, an engine event, an inspect
    /// reply, or the tick, which finalizes the containers that died more
    /// than a grace period ago (and whose inspect is not still on its way).
    /// Returns those. Cancel-safe: each source is read only once chosen.
    ///
    /// The tick runs only while a container is dying, so an idle session
    /// sleeps until the kernel, the engine or the caller has something.
    pub async fn next(&mut self) -> Vec<Finalized> {
        let events = async {
            match self.events.as_mut() {
                Some(events) => events.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(r) = self.records.recv() => self.recorder.on_record(r),
            ev = events => match ev {
                Some(ev) => self.on_engine_event(ev),
                None => {
                    tracing::warn!("the engine's event stream ended; containers are finalized on stop only");
                    self.events = None;
                }
            },
            Some((id, info)) = self.inspect_rx.recv() => {
                self.inspecting.remove(&id);
                if let Some(info) = info {
                    self.recorder.on_inspect(info);
                }
            }
            _ = self.tick.tick(), if self.recorder.has_dying() => return self.finalize_due(),
        }
        vec![]
    }

    fn on_engine_event(&mut self, ev: ContainerEvent) {
        if ev.action == "start"
            && let Some(engine) = self.source.clone()
        {
            let (tx, id) = (self.inspect_tx.clone(), ev.id.clone());
            self.inspecting.insert(id.clone(), Instant::now());
            tokio::spawn(async move {
                let info = engine.inspect(&id).await;
                let _ = tx.send((id, info)).await;
            });
        }
        self.recorder.on_engine_event(ev);
    }

    fn finalize_due(&mut self) -> Vec<Finalized> {
        let mut done = vec![];
        for id in self.recorder.due(GRACE, INSPECT_WAIT + GRACE) {
            if self
                .inspecting
                .get(&id)
                .is_some_and(|t| t.elapsed() < INSPECT_WAIT)
            {
                continue;
            }
            let profile = self.recorder.finalize(&id, &mut self.observer);
            done.push(Finalized { id, profile });
        }
        done
    }

    /// Stops reading, and takes in the records and inspect replies still on
    /// their way. The session can still be read and finalized afterwards.
    pub async fn stop(&mut self) -> Result<(), ReaderError> {
        let Some(reader) = self.reader.take() else {
            return Ok(());
        };
        let stopped = reader.stop();
        tokio::pin!(stopped);
        // Keep taking records while the reader drains the ring buffer, so
        // that a full channel cannot hold it up.
        let result = loop {
            tokio::select! {
                result = &mut stopped => break result,
                Some(r) = self.records.recv() => self.recorder.on_record(r),
            }
        };
        while let Ok(r) = self.records.try_recv() {
            self.recorder.on_record(r);
        }
        while let Ok((_, info)) = self.inspect_rx.try_recv() {
            if let Some(info) = info {
                self.recorder.on_inspect(info);
            }
        }
        result
    }

    /// Finalizes one container now, whether or not it exited.
    pub fn finalize(&mut self, id: &str) -> Result<Option<Profile>, ObserverError> {
        self.recorder.finalize(id, &mut self.observer)
    }
}
