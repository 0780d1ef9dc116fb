//! The daemon's state directory: one file per container, written
//! atomically; a corrupt or truncated file is moved aside, never fatal.

use std::{
    fs,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::{
    engine::{is_container_id, safe_name},
    fsutil,
    profile::Profile,
    recorder::{PersistedContainer, STATE_SCHEMA},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {}: {what} is not a directory", root.display())]
    NotADir { root: PathBuf, what: String },
    #[error("cannot use state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
pub struct StateDir {
    containers: PathBuf,
    profiles: PathBuf,
}

impl StateError {
    /// Whether the user's `--state-dir` is at fault (exit 2), not a write
    /// that failed later.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, StateError::NotADir { .. } | StateError::Dir { .. })
    }
}

impl StateDir {
    pub fn open(root: &Path) -> Result<Self, StateError> {
        let containers = root.join("containers");
        let profiles = root.join("profiles");
        for dir in [root, &containers, &profiles] {
            // Say which path is in the way rather than the kernel's "File
            // exists" or "Not a directory".
            let blocker = match fs::metadata(dir) {
                Ok(meta) if !meta.is_dir() => Some(dir.to_path_buf()),
                _ => fsutil::not_a_dir_above(dir),
            };
            if let Some(blocker) = blocker {
                let what = if blocker == root {
                    "it exists and".to_owned()
                } else {
                    blocker.display().to_string()
                };
                return Err(StateError::NotADir {
                    root: root.to_owned(),
                    what,
                });
            }
            fs::create_dir_all(dir).map_err(|source| StateError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(Self {
            containers,
            profiles,
        })
    }

    /// Every readable container state; unreadable ones are moved aside.
    /// Returns the states and how many files were set aside.
    pub fn load_all(&self) -> (Vec<PersistedContainer>, usize) {
        let mut out = vec![];
        let mut corrupt = 0;
        let Ok(entries) = fs::read_dir(&self.containers) else {
            return (out, 0);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match parse(&path) {
                Ok(state) => out.push(state),
                Err(reason) => {
                    corrupt += 1;
                    let stamp = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0);
                    let aside = path.with_extension(format!("json.corrupt-{stamp}"));
                    tracing::warn!(
                        "state file {} is unreadable ({reason}); moved aside to {}",
                        path.display(),
                        aside.display()
                    );
                    let _ = fs::rename(&path, &aside);
                }
            }
        }
        (out, corrupt)
    }

    pub fn write(&self, state: &PersistedContainer) -> Result<(), StateError> {
        let path = self.containers.join(format!("{}.json", state.id));
        let mut json = serde_json::to_string_pretty(state).expect("state always serializes");
        json.push('\n');
        fsutil::write_atomic(&path, json.as_bytes())
            .map_err(|source| StateError::Write { path, source })?;
        // A pod's sandbox (pause) container is the runtime's: no profile.
        if let Some(current) = state.current.as_ref().filter(|_| !state.sandbox) {
            let path = self.profile_path(state);
            let made = path.parent().map_or(Ok(()), fs::create_dir_all);
            made.and_then(|()| fsutil::write_atomic(&path, current.to_json().as_bytes()))
                .map_err(|source| StateError::Write { path, source })?;
        }
        Ok(())
    }

    /// Where a container's profile is written: a pod's container under
    /// `profiles/<namespace>/<pod>/<container>.json`, any other under its
    /// name (or short id).
    fn profile_path(&self, state: &PersistedContainer) -> PathBuf {
        if let Some(path) = state
            .k8s
            .as_ref()
            .zip(state.name.as_deref())
            .and_then(|(k8s, name)| crate::cri::profile_path(&self.profiles, k8s, name))
        {
            return path;
        }
        let stem = state
            .name
            .as_deref()
            .and_then(safe_name)
            .unwrap_or_else(|| crate::engine::short_id(&state.id));
        self.profiles.join(format!("{stem}.json"))
    }

    /// Every container's state file: its id and when it was last written.
    pub fn written(&self) -> Vec<(String, SystemTime)> {
        let Ok(entries) = fs::read_dir(&self.containers) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let id = name.to_str()?.strip_suffix(".json")?;
                let at = e.metadata().ok()?.modified().ok()?;
                is_container_id(id).then(|| (id.to_owned(), at))
            })
            .collect()
    }

    /// Removes a container's files: its state, and its profile unless that
    /// file is now another container's (a name re-used after it exited).
    pub fn remove(&self, id: &str) {
        if !is_container_id(id) {
            return;
        }
        let state_file = self.containers.join(format!("{id}.json"));
        if let Ok(state) = parse(&state_file) {
            let profile = self.profile_path(&state);
            if profile_subject_id(&profile).as_deref() == Some(id) {
                if let Err(e) = fs::remove_file(&profile) {
                    tracing::warn!("cannot remove {}: {e}", profile.display());
                }
                // A pod's directories go with its last profile.
                for dir in profile.ancestors().skip(1) {
                    if dir == self.profiles || fs::remove_dir(dir).is_err() {
                        break;
                    }
                }
            }
        }
        if let Err(e) = fs::remove_file(&state_file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", state_file.display());
        }
    }

    /// Reads one container back (an evicted one, for the API).
    pub fn read(&self, id: &str) -> Option<PersistedContainer> {
        if !is_container_id(id) {
            return None;
        }
        parse(&self.containers.join(format!("{id}.json"))).ok()
    }

    pub fn ids(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.containers) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned)
            })
            .filter(|id| is_container_id(id))
            .collect()
    }
}

/// The container id a profile file names, if it is one.
fn profile_subject_id(path: &Path) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Head {
        subject: HeadSubject,
    }
    #[derive(serde::Deserialize)]
    struct HeadSubject {
        id: Option<String>,
    }
    let bytes = fs::read(path).ok()?;
    serde_json::from_slice::<Head>(&bytes).ok()?.subject.id
}

/// Why a state file was not taken back.
#[derive(Debug, thiserror::Error)]
pub enum BadState {
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error("not a state file: {0}")]
    Json(#[source] serde_json::Error),
    #[error("schema {0:?} is not {STATE_SCHEMA:?}")]
    Schema(String),
    #[error("{0:?} is not a container id")]
    Id(String),
    #[error(transparent)]
    Profile(#[from] crate::profile::ProfileError),
}

/// Parses a state file without trusting it: schema, id, and the profiles
/// inside must all validate.
fn parse(path: &Path) -> Result<PersistedContainer, BadState> {
    let bytes = fs::read(path).map_err(BadState::Read)?;
    let state: PersistedContainer = serde_json::from_slice(&bytes).map_err(BadState::Json)?;
    if state.schema != STATE_SCHEMA {
        return Err(BadState::Schema(state.schema));
    }
    if !is_container_id(&state.id) {
        return Err(BadState::Id(state.id));
    }
    for profile in [&state.base, &state.current].into_iter().flatten() {
        let json = serde_json::to_vec(profile).map_err(BadState::Json)?;
        Profile::from_json(&path.display().to_string(), &json)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_files_are_moved_aside() {
        let root = std::env::temp_dir().join(format!("capprof-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = StateDir::open(&root).unwrap();
        let id = "a".repeat(64);
        let good = PersistedContainer {
            schema: STATE_SCHEMA.into(),
            id: id.clone(),
            runtime: "docker".into(),
            cgroup: Some(format!("/docker/{id}")),
            cgroup_ids: vec![7],
            name: Some("web".into()),
            image: None,
            capabilities: None,
            k8s: None,
            sandbox: false,
            exited: true,
            started: None,
            partial: None,
            base: None,
            current: None,
        };
        dir.write(&good).unwrap();
        fs::write(
            root.join("containers")
                .join(format!("{}.json", "b".repeat(64))),
            b"{\"schema\": \"capprof.st",
        )
        .unwrap();
        let (states, corrupt) = dir.load_all();
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].name.as_deref(), Some("web"));
        assert_eq!(corrupt, 1);
        let aside = fs::read_dir(root.join("containers"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
        assert!(dir.read(&id).is_some());
        assert!(dir.read("../etc/passwd").is_none());
        fs::remove_dir_all(&root).unwrap();
    }

    /// Removing a container keeps a profile file that a newer container
    /// of the same name has taken over.
    #[test]
    fn removing_keeps_a_reused_names_profile() {
        use crate::profile::{Subject, with_allowlist};
        let root = std::env::temp_dir().join(format!("capprof-state-rm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = StateDir::open(&root).unwrap();
        let state = |id: String| {
            let profile = with_allowlist(
                &["CAP_CHOWN"],
                Subject {
                    kind: "container".into(),
                    id: Some(id.clone()),
                    name: Some("web".into()),
                    ..Default::default()
                },
            );
            PersistedContainer {
                schema: STATE_SCHEMA.into(),
                id,
                runtime: "docker".into(),
                cgroup: None,
                cgroup_ids: vec![],
                name: Some("web".into()),
                image: None,
                capabilities: None,
                k8s: None,
                sandbox: false,
                exited: true,
                started: None,
                partial: None,
                base: None,
                current: Some(profile),
            }
        };
        let (old, new) = ("a".repeat(64), "b".repeat(64));
        dir.write(&state(old.clone())).unwrap();
        dir.write(&state(new.clone())).unwrap();
        let profile = root.join("profiles/web.json");
        dir.remove(&old);
        assert!(profile.exists(), "the newer container's profile went too");
        assert!(dir.read(&old).is_none());
        assert_eq!(dir.written().len(), 1);
        dir.remove(&new);
        assert!(!profile.exists());
        assert!(dir.written().is_empty());
        fs::remove_dir_all(&root).unwrap();
    }
}
