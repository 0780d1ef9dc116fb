//! Shadow mode (`capprof daemon --shadow PROFILES`): each container is
//! compared with a *candidate* allowlist, the one a team means to enforce,
//! without enforcing anything. Every check that enforcing it would refuse
//! (a granted `required` or `silent` check of a capability the candidate
//! lacks) is a violation: reported in the API, counted in
//! `capprof_shadow_violations_total`, and logged. A container with none is
//! "safe to enforce since T", T being when capprof began observing it:
//! that is the signal a team waits for.
//!
//! Candidates are profiles (`capprof record`, `minimize`, …): each applies
//! to the container of its `subject.name` and, failing a name match, to
//! every container of its `subject.image`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    capability::Cap,
    load::LoadError,
    profile::{Class, Profile},
};

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot read shadow profiles in {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shadow profile {}: names neither a container nor an image", path.display())]
    Unmatchable { path: PathBuf },
    #[error("no shadow profile (*.json) in {}", path.display())]
    Empty { path: PathBuf },
}

/// One candidate allowlist.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The file it came from.
    pub source: String,
    pub allowlist: Vec<Cap>,
    pub proven: bool,
}

/// Every candidate, by container name and by image.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    by_name: BTreeMap<String, Candidate>,
    by_image: BTreeMap<String, Candidate>,
}

/// A capability a container used that its candidate lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub capability: Cap,
    /// Checks enforcing the candidate would have refused.
    pub checks: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// How a container fares against its candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStatus {
    /// The candidate profile's file.
    pub candidate: String,
    /// `name` or `image`.
    pub matched_by: String,
    pub candidate_allowlist: Vec<Cap>,
    #[serde(default)]
    pub candidate_proven: bool,
    #[serde(default)]
    pub violations: Vec<Violation>,
    /// With no violation: since when every check fits the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_since: Option<String>,
}

impl Candidates {
    /// Loads the profiles named: files, and the `*.json` files of
    /// directories.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ShadowError> {
        let mut candidates = Self::default();
        for path in paths {
            let files = if path.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|source| ShadowError::Dir {
                        path: path.clone(),
                        source,
                    })?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
                    .collect();
                files.sort();
                if files.is_empty() {
                    return Err(ShadowError::Empty { path: path.clone() });
                }
                files
            } else {
                vec![path.clone()]
            };
            for file in files {
                candidates.add(&file)?;
            }
        }
        Ok(candidates)
    }

    fn add(&mut self, file: &Path) -> Result<(), ShadowError> {
        let shown = file.display().to_string();
        let profile = crate::load::load_one(&shown)?.profile;
        let candidate = Candidate {
            source: shown,
            allowlist: profile.allowlist.clone(),
            proven: profile.proof.as_ref().is_some_and(|p| p.sufficient),
        };
        let subject = &profile.subject;
        if subject.name.is_none() && subject.image.is_none() {
            return Err(ShadowError::Unmatchable {
                path: file.to_owned(),
            });
        }
        if let Some(name) = &subject.name {
            self.by_name.insert(name.clone(), candidate.clone());
        }
        if let Some(image) = &subject.image {
            self.by_image.insert(image.clone(), candidate);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.by_name.len().max(self.by_image.len())
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_image.is_empty()
    }

    /// The candidate for a container, and how it matched.
    pub fn find(&self, name: Option<&str>, image: Option<&str>) -> Option<(&Candidate, &str)> {
        name.and_then(|n| self.by_name.get(n))
            .map(|c| (c, "name"))
            .or_else(|| {
                image
                    .and_then(|i| self.by_image.get(i))
                    .map(|c| (c, "image"))
            })
    }

    /// How `profile` (a container's, as of now) fares against its
    /// candidate; None when it has none.
    pub fn status(
        &self,
        name: Option<&str>,
        image: Option<&str>,
        profile: Option<&Profile>,
    ) -> Option<ShadowStatus> {
        let (candidate, matched_by) = self.find(name, image)?;
        let violations = profile.map(|p| violations(p, &candidate.allowlist));
        let violations = violations.unwrap_or_default();
        let safe_since = violations
            .is_empty()
            .then(|| profile.map(|p| p.observation.start.clone()))
            .flatten()
            .filter(|s| !s.is_empty());
        Some(ShadowStatus {
            candidate: candidate.source.clone(),
            matched_by: matched_by.to_owned(),
            candidate_allowlist: candidate.allowlist.clone(),
            candidate_proven: candidate.proven,
            violations,
            safe_since,
        })
    }
}

/// The checks of `profile` that an allowlist of `allowed` would refuse:
/// granted audited checks, and granted silent ones (they gate an
/// operation too), of capabilities not allowed.
pub fn violations(profile: &Profile, allowed: &[Cap]) -> Vec<Violation> {
    profile
        .capabilities
        .iter()
        .filter(|u| !allowed.contains(&u.name))
        .filter_map(|u| {
            let checks = u.by_class.get(&Class::Required).copied().unwrap_or(0) + u.silent_granted;
            (checks > 0).then(|| Violation {
                capability: u.name,
                checks,
                first_seen: u.first_seen.clone(),
                last_seen: u.last_seen.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Subject, with_allowlist};

    /// A directory of its own, removed when the test ends.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("capprof-shadow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn candidates_match_by_name_then_image() {
        let scratch_dir = scratch("match");
        let dir = scratch_dir.0.clone();
        let web = with_allowlist(
            &["CAP_CHOWN"],
            Subject {
                kind: "container".into(),
                name: Some("web".into()),
                image: Some("nginx:1".into()),
                ..Default::default()
            },
        );
        let other = with_allowlist(
            &["CAP_CHOWN", "CAP_SETUID"],
            Subject {
                kind: "container".into(),
                image: Some("busybox:1".into()),
                ..Default::default()
            },
        );
        std::fs::write(dir.join("web.json"), web.to_json()).unwrap();
        std::fs::write(dir.join("other.json"), other.to_json()).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a profile").unwrap();
        let c = Candidates::load(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(c.find(Some("web"), Some("busybox:1")).unwrap().1, "name");
        assert_eq!(c.find(Some("job"), Some("busybox:1")).unwrap().1, "image");
        assert_eq!(c.find(Some("web2"), Some("nginx:1")).unwrap().1, "image");
        assert!(c.find(Some("job"), Some("alpine")).is_none());

        // The container used SETUID too: that is a violation of web's
        // candidate, and it is not safe to enforce.
        let mut used = with_allowlist(&["CAP_CHOWN", "CAP_SETUID"], Subject::default());
        used.observation.start = "2026-01-01T00:00:00.000Z".into();
        let status = c.status(Some("web"), None, Some(&used)).unwrap();
        assert_eq!(status.violations.len(), 1);
        assert_eq!(status.violations[0].capability.short_name(), "SETUID");
        assert_eq!(status.safe_since, None);
        let fine = c
            .status(Some("job"), Some("busybox:1"), Some(&used))
            .unwrap();
        assert!(fine.violations.is_empty());
        assert!(fine.safe_since.is_some());

        let err = Candidates::load(&[dir.join("notes.txt")]).unwrap_err();
        assert!(err.to_string().contains("not a capprof profile"), "{err}");
        let empty = scratch("empty");
        assert!(matches!(
            Candidates::load(std::slice::from_ref(&empty.0)).unwrap_err(),
            ShadowError::Empty { .. }
        ));
    }
}
