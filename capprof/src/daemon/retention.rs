//! How a daemon that runs for weeks keeps its state directory bounded.
//!
//! - **Gone containers.** On each flush, every container still taken for
//!   running has its cgroup directory looked at (one `stat` each): one
//!   that is gone died, whether or not an engine said so
//!   ([`Recorder::mark_gone`](crate::recorder::Recorder::mark_gone)), and
//!   is finalized like any other.
//! - **Retention.** An exited container's files (its state, and its
//!   profile unless a newer container of the same name owns that file)
//!   are removed once they are older than `retain_for`, and the oldest go
//!   first when more than `retain_max` exited containers are on disk.
//!   Running containers are never removed and never counted.
//!
//! The sweep reads the state directory's listing only when something may
//! be due: after a container exited, or once per `min(retain_for, 60 s)`.
//! An idle daemon with nothing exited does one listing a minute.

use std::time::{Duration, Instant, SystemTime};

use super::Aggregator;

/// The longest an idle daemon waits between two sweeps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The limits, from the config (`retain_for`, `retain_max`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: usize,
}

/// When the sweep last ran, and whether a container exited since.
#[derive(Debug)]
pub struct Sweeps {
    last: Instant,
    exited_since: bool,
}

impl Default for Sweeps {
    fn default() -> Self {
        Self {
            last: Instant::now(),
            // The first flush sweeps what an earlier run left.
            exited_since: true,
        }
    }
}

impl Sweeps {
    /// A container exited (or was found gone): its files may be due.
    pub fn exited(&mut self) {
        self.exited_since = true;
    }

    fn due(&self, retention: &Retention) -> bool {
        self.exited_since || self.last.elapsed() >= retention.max_age.min(SWEEP_EVERY)
    }
}

/// The containers whose files are due for removal, out of `written` (each
/// container's id and last write), leaving alone those `running` says
/// still run: first every one older than the maximum age, then the
/// oldest beyond the maximum count.
pub fn expired(
    mut written: Vec<(String, SystemTime)>,
    running: impl Fn(&str) -> bool,
    now: SystemTime,
    retention: &Retention,
) -> Vec<String> {
    written.retain(|(id, _)| !running(id));
    // Newest first; ties by id, so that the choice does not depend on the
    // directory's order.
    written.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    written
        .into_iter()
        .enumerate()
        .filter(|(rank, (_, at))| {
            let age = now.duration_since(*at).unwrap_or_default();
            *rank >= retention.max_count || age > retention.max_age
        })
        .map(|(_, (id, _))| id)
        .collect()
}

impl Aggregator {
    /// The flush's housekeeping: containers whose cgroups are gone are
    /// taken for dead, and exited ones past the limits are removed.
    pub(super) fn keep_bounded(&mut self) {
        if self.session.parts_mut().1.mark_gone() > 0 {
            self.sweeps.exited();
        }
        if !self.sweeps.due(&self.retention) {
            return;
        }
        self.sweeps = Sweeps {
            last: Instant::now(),
            exited_since: false,
        };
        let recorder = self.session.recorder();
        let running = |id: &str| recorder.get(id).is_some_and(|r| !r.exited);
        let doomed = expired(
            self.state.written(),
            running,
            SystemTime::now(),
            &self.retention,
        );
        for id in &doomed {
            self.forget(id);
        }
        if !doomed.is_empty() {
            tracing::info!(
                "removed the files of {} exited container(s) (older than {} or beyond the newest {})",
                doomed.len(),
                humantime::format_duration(self.retention.max_age),
                self.retention.max_count
            );
        }
    }

    /// Removes an exited container from disk and from memory.
    fn forget(&mut self, id: &str) {
        self.state.remove(id);
        let (observer, recorder) = self.session.parts_mut();
        let cgroups = recorder.evict(id);
        if !cgroups.is_empty() {
            let _ = observer.unwatch(0, &cgroups);
        }
        self.on_disk.remove(id);
        self.written.remove(id);
        self.flushed.remove(id);
        self.lines.remove(id);
        self.shadow_logged.retain(|(of, _), _| of != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_then_count_and_never_a_running_container() {
        let now = SystemTime::now();
        let ago = |secs| now - Duration::from_secs(secs);
        let written = vec![
            ("old".to_owned(), ago(100)),
            ("a".to_owned(), ago(1)),
            ("b".to_owned(), ago(2)),
            ("c".to_owned(), ago(3)),
            ("running".to_owned(), ago(1000)),
        ];
        let retention = Retention {
            max_age: Duration::from_secs(50),
            max_count: 2,
        };
        let mut out = expired(written, |id| id == "running", now, &retention);
        out.sort();
        assert_eq!(out, ["c", "old"]);
        let roomy = Retention {
            max_age: Duration::from_secs(500),
            max_count: 10,
        };
        assert!(expired(vec![("a".into(), ago(5))], |_| false, now, &roomy).is_empty());
    }
}
