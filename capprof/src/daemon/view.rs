//! What `capprof ps` and `capprof profile` read: a view of every container
//! that the aggregator publishes after each flush and each finalization,
//! through a watch channel. The API answers these two from it, on a thread
//! of its own, so neither waits behind a flush: when every query queued
//! behind the owner, `ps` took 627 ms at p99 during a churn of 1,000
//! containers (issue 21).
//!
//! Publishing is cheap: a container's line and profile are rebuilt only
//! when its digest changed ([`Recorder::digest`]), and the view shares
//! them with the aggregator's cache through `Arc`s. An exited container
//! whose state is on disk is evicted from memory at once (see
//! [`Aggregator::evict`](super::Aggregator)); the view keeps its `ps` line
//! only, and its profile is read back from disk when asked for.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::body::Bytes;
use tokio::sync::watch;

use super::{
    Aggregator,
    query::{ContainerSummary, Lookup},
    state::StateDir,
};
use crate::{profile::Profile, recorder::CountIndex};

/// The aggregator's side of the view.
pub type ViewTx = watch::Sender<Arc<View>>;
/// The API's side of the view.
pub type ViewRx = watch::Receiver<Arc<View>>;

/// Every container as of the last publication.
#[derive(Debug, Default)]
pub struct View {
    /// `ps`, by name then id.
    list: Vec<Arc<ContainerSummary>>,
    /// Every container a profile can be asked for.
    entries: Vec<ViewEntry>,
    /// Where an evicted container's profile is read from.
    state: Option<Arc<StateDir>>,
    /// `ps` as the API sends it, encoded by the first query after a
    /// publication and shared by the others: with 1,200 lines the encoding
    /// is half a megabyte, and a loop of clients asking `ps` during a churn
    /// re-encoded it for each (None: it cannot be encoded).
    list_json: OnceLock<Option<Bytes>>,
}

/// A container a profile can be asked for.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    pub id: String,
    pub name: Option<String>,
    /// Its profile when it is in memory; None when it is on disk only.
    pub profile: Option<Arc<Profile>>,
    /// Its cgroup directory while the daemon has not seen it exit.
    pub cgroup: Option<PathBuf>,
}

impl View {
    /// `list` is `ps`, in the order shown.
    pub fn new(
        list: Vec<Arc<ContainerSummary>>,
        entries: Vec<ViewEntry>,
        state: Option<Arc<StateDir>>,
    ) -> Self {
        Self {
            list,
            entries,
            state,
            list_json: OnceLock::new(),
        }
    }

    /// [`View::list`] as pretty JSON with a final newline, encoded once
    /// per view.
    pub fn list_json(&self) -> Option<Bytes> {
        self.list_json
            .get_or_init(|| {
                let mut body = serde_json::to_vec_pretty(&self.list()).ok()?;
                body.push(b'\n');
                Some(Bytes::from(body))
            })
            .clone()
    }

    /// `capprof ps`.
    pub fn list(&self) -> Vec<&ContainerSummary> {
        self.list.iter().map(|line| &**line).collect()
    }

    /// One container's profile, by name (a name several containers had is
    /// ambiguous) or by an id prefix of at least 4 characters.
    ///
    /// `NotFound` (ask the owner) also when the published copy may lack
    /// the container's last checks: it was running when published, and
    /// its cgroup has emptied since. The daemon finalizes a container a
    /// grace period after the engine's `die` event, and publishes then:
    /// until that, a client that has just stopped a container would read
    /// a profile without what it did while it stopped. The owner answers
    /// from the kernel's counters as they are now.
    pub fn profile(&self, key: &str) -> Result<Profile, Lookup> {
        let name = key.trim_start_matches('/');
        let mut found: Vec<&ViewEntry> = self
            .entries
            .iter()
            .filter(|e| e.name.as_deref() == Some(name))
            .collect();
        if found.is_empty() {
            found = self
                .entries
                .iter()
                .filter(|e| name.len() >= 4 && e.id.starts_with(name))
                .collect();
        }
        match found.as_slice() {
            [] => Err(Lookup::NotFound),
            [one] if one.cgroup.as_deref().is_some_and(emptied) => Err(Lookup::NotFound),
            [one] => match &one.profile {
                Some(profile) => Some(Profile::clone(profile)),
                None => self
                    .state
                    .as_ref()
                    .and_then(|s| s.read(&one.id))
                    .and_then(|p| p.current),
            }
            .ok_or(Lookup::NotFound),
            _ => {
                let mut ids: Vec<String> = found.iter().map(|e| e.id.clone()).collect();
                ids.sort();
                Err(Lookup::Ambiguous(ids))
            }
        }
    }
}

/// Whether a container's cgroup has no process left (or is gone): the
/// kernel's `cgroup.events`. Unreadable for another reason: not known to
/// have emptied.
fn emptied(cgroup: &Path) -> bool {
    match crate::cgroup::populated(cgroup) {
        Ok(populated) => !populated,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// What was last published of a container, with the digest it was built
/// at.
#[derive(Debug, Clone)]
struct Published {
    digest: u64,
    line: Option<Arc<ContainerSummary>>,
    profile: Option<Arc<Profile>>,
    /// The container left memory: only its line is kept.
    evicted: bool,
}

/// The aggregator's cache of published lines and profiles. The lines of
/// evicted (exited, on disk) containers stay for `ps`, at most `max` of
/// them, the oldest evicted going first: memory does not grow with the
/// containers a node has seen.
#[derive(Debug)]
pub struct Lines {
    by_id: HashMap<String, Published>,
    /// Evicted containers, oldest first (one taken back since stays
    /// listed until it comes first).
    evicted: VecDeque<String>,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            evicted: VecDeque::new(),
            max,
        }
    }

    /// Keeps only the line of a container leaving memory: its profile is
    /// on disk.
    fn evicted(&mut self, id: &str) {
        if let Some(p) = self.by_id.get_mut(id) {
            p.profile = None;
            p.evicted = true;
            self.evicted.push_back(id.to_owned());
        }
        while self.evicted.len() > self.max {
            if let Some(old) = self.evicted.pop_front()
                && self.by_id.get(&old).is_some_and(|p| p.evicted)
            {
                self.by_id.remove(&old);
            }
        }
    }

    pub fn remove(&mut self, id: &str) {
        self.by_id.remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

impl Aggregator {
    /// Brings the cached line and profile of container `id` up to date
    /// with the live counts in `index`.
    fn refresh_line(&mut self, id: &str, index: &CountIndex) {
        let (recorder, observer) = (self.session.recorder(), self.session.observer());
        let Some(rec) = recorder.get(id) else {
            return;
        };
        let counts = recorder.counts_of(id, index);
        let Some(digest) = recorder.digest(id, &counts) else {
            return;
        };
        if self.lines.by_id.get(id).is_some_and(|p| p.digest == digest) {
            return;
        }
        let profile = recorder.snapshot(id, observer, &counts);
        let line = (!rec.cgroup_ids.is_empty())
            .then(|| self.summary(id, profile.as_ref()))
            .flatten()
            .map(Arc::new);
        let published = Published {
            digest,
            line,
            profile: profile.map(Arc::new),
            evicted: false,
        };
        self.lines.by_id.insert(id.to_owned(), published);
    }

    /// Keeps the `ps` line of a container that leaves memory.
    pub(super) fn line_evicted(&mut self, id: &str, index: &CountIndex) {
        self.refresh_line(id, index);
        self.lines.evicted(id);
    }

    /// Publishes the view of every container, as of `index`.
    pub(super) fn publish(&mut self, index: &CountIndex) {
        let started = Instant::now();
        let ids = self.session.recorder().ids();
        for id in &ids {
            self.refresh_line(id, index);
        }
        let in_memory: HashSet<&str> = ids.iter().map(String::as_str).collect();
        // A container gone from memory but not evicted (taken back, then
        // gone again without a finalization) has no line left.
        self.lines
            .by_id
            .retain(|id, p| p.evicted || in_memory.contains(id.as_str()));
        let mut list: Vec<Arc<ContainerSummary>> = self
            .lines
            .by_id
            .values()
            .filter_map(|p| p.line.clone())
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        let recorder = self.session.recorder();
        let mut entries: Vec<ViewEntry> = recorder
            .records()
            .map(|rec| ViewEntry {
                id: rec.id.clone(),
                name: rec.info.name.clone(),
                cgroup: rec
                    .cgroup
                    .as_deref()
                    .filter(|_| !rec.exited)
                    .map(|cg| recorder.cgroup_dir(cg)),
                profile: self
                    .lines
                    .by_id
                    .get(&rec.id)
                    .and_then(|p| p.profile.clone()),
            })
            .collect();
        entries.extend(
            self.on_disk
                .iter()
                .filter(|(id, _)| !in_memory.contains(id.as_str()))
                .map(|(id, filed)| ViewEntry {
                    id: id.clone(),
                    name: filed.name.clone(),
                    profile: None,
                    cgroup: None,
                }),
        );
        let view = View::new(list, entries, Some(self.state.clone()));
        self.view.send_replace(Arc::new(view));
        tracing::debug!(
            "published the view of {} container(s) ({} in memory) in {} µs",
            self.on_disk.len().max(ids.len()),
            ids.len(),
            started.elapsed().as_micros()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> Published {
        Published {
            digest: 1,
            line: None,
            profile: Some(Arc::new(profile_of("x"))),
            evicted: false,
        }
    }

    /// However many containers come and go, the lines of evicted ones stay
    /// at most `max`, the oldest going first, and none keeps its profile.
    #[test]
    fn evicted_lines_are_bounded_and_keep_no_profile() {
        let mut lines = Lines::new(3);
        for i in 0..1000 {
            let id = format!("{i:064}");
            lines.by_id.insert(id.clone(), line());
            lines.evicted(&id);
        }
        assert_eq!(lines.len(), 3);
        assert!(lines.by_id.values().all(|p| p.profile.is_none()));
        assert!(lines.by_id.contains_key(&format!("{:064}", 999)));
        assert!(!lines.by_id.contains_key(&format!("{:064}", 996)));
        lines.remove(&format!("{:064}", 999));
        assert_eq!(lines.len(), 2);
        // One taken back into memory is not dropped as evicted.
        let back = format!("{:064}", 997);
        lines.by_id.insert(back.clone(), line());
        for i in 1000..1003 {
            let id = format!("{i:064}");
            lines.by_id.insert(id.clone(), line());
            lines.evicted(&id);
        }
        assert!(lines.by_id.get(&back).is_some_and(|p| p.profile.is_some()));
        assert_eq!(lines.len(), 4);
    }

    fn profile_of(id: &str) -> Profile {
        crate::profile::with_allowlist(
            &["CAP_CHOWN"],
            crate::profile::Subject {
                kind: "container".into(),
                id: Some(id.to_owned()),
                ..Default::default()
            },
        )
    }

    fn entry(id: &str, name: &str) -> ViewEntry {
        ViewEntry {
            id: id.to_owned(),
            name: Some(name.to_owned()),
            profile: Some(Arc::new(profile_of(id))),
            cgroup: None,
        }
    }

    /// A running container's published profile is not the answer once its
    /// cgroup has emptied: the owner gives the profile from the counters
    /// as they are now, with what it did while it stopped.
    #[test]
    fn a_container_whose_cgroup_emptied_is_asked_of_the_owner() {
        let dir = std::env::temp_dir().join(format!("capprof-view-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let id = "d".repeat(64);
        let view = |cgroup: Option<PathBuf>| {
            let mut e = entry(&id, "web");
            e.cgroup = cgroup;
            View::new(vec![], vec![e], None)
        };
        let events = dir.join("cgroup.events");
        std::fs::write(&events, "populated 1\nfrozen 0\n").unwrap();
        assert!(view(Some(dir.clone())).profile("web").is_ok(), "running");
        std::fs::write(&events, "populated 0\nfrozen 0\n").unwrap();
        assert_eq!(
            view(Some(dir.clone())).profile("web"),
            Err(Lookup::NotFound),
            "emptied"
        );
        assert!(view(None).profile("web").is_ok(), "seen to exit: final");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            view(Some(dir)).profile("web"),
            Err(Lookup::NotFound),
            "removed"
        );
    }

    #[test]
    fn a_profile_is_found_by_name_or_id_prefix() {
        let (a, b, c) = ("a".repeat(64), "ab".repeat(32), "c".repeat(64));
        let view = View::new(
            vec![],
            vec![entry(&a, "web"), entry(&b, "web"), entry(&c, "db")],
            None,
        );
        let found = |key| view.profile(key).map(|p| p.subject.id.unwrap());
        assert_eq!(found("db"), Ok(c.clone()));
        assert_eq!(found("/db"), Ok(c.clone()));
        assert_eq!(found("cccc"), Ok(c));
        assert_eq!(found("ccc"), Err(Lookup::NotFound));
        assert_eq!(
            found("web"),
            Err(Lookup::Ambiguous(vec![a.clone(), b.clone()]))
        );
        assert_eq!(found("aaaa"), Ok(a));
        assert_eq!(found("abab"), Ok(b));
    }
}
