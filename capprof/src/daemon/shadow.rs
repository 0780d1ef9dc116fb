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
//!
//! A container never has two candidates, and none is picked for it by
//! load order: two profiles for the same container name, or two profiles
//! without a name for the same image, refuse the start
//! ([`ShadowError::Ambiguous`]). Profiles that name different containers of
//! one image leave that image without a fallback (other containers of it
//! get no candidate), which the daemon says at start ([`Candidates::notes`]).

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
    #[error(
        "shadow profiles {first} and {second} are both candidates for {key}: pass only one (capprof merge combines profiles)"
    )]
    Ambiguous {
        /// `container "web"` or `image "nginx:1"`.
        key: String,
        first: String,
        second: String,
    },
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
    by_image: BTreeMap<String, ImageCandidates>,
    /// The files loaded, canonical: one named twice is read once.
    files: std::collections::BTreeSet<PathBuf>,
}

/// The candidates that could apply to a container of one image that no
/// name matched.
#[derive(Debug, Clone, Default)]
struct ImageCandidates {
    /// A profile without a name: meant for every container of the image.
    explicit: Option<Candidate>,
    /// Profiles of named containers of the image: a fallback only when
    /// there is exactly one.
    named: Vec<Candidate>,
}

impl ImageCandidates {
    fn fallback(&self) -> Option<&Candidate> {
        match (&self.explicit, self.named.as_slice()) {
            (Some(c), _) | (None, [c]) => Some(c),
            _ => None,
        }
    }
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
        let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
        if !self.files.insert(canonical) {
            return Ok(());
        }
        let shown = file.display().to_string();
        let profile = crate::load::load_one(&shown)?.profile;
        let candidate = Candidate {
            source: shown,
            allowlist: profile.allowlist.clone(),
            proven: profile.proof.as_ref().is_some_and(|p| p.sufficient),
        };
        let subject = &profile.subject;
        let ambiguous = |key: String, first: &Candidate| ShadowError::Ambiguous {
            key,
            first: first.source.clone(),
            second: candidate.source.clone(),
        };
        match (&subject.name, &subject.image) {
            (None, None) => {
                return Err(ShadowError::Unmatchable {
                    path: file.to_owned(),
                });
            }
            (Some(name), _) => {
                if let Some(first) = self.by_name.get(name) {
                    return Err(ambiguous(format!("container {name:?}"), first));
                }
                self.by_name.insert(name.clone(), candidate.clone());
            }
            (None, Some(image)) => {
                if let Some(first) = self.by_image.get(image).and_then(|i| i.explicit.as_ref()) {
                    return Err(ambiguous(format!("image {image:?}"), first));
                }
            }
        }
        if let Some(image) = &subject.image {
            let entry = self.by_image.entry(image.clone()).or_default();
            match subject.name {
                Some(_) => entry.named.push(candidate),
                None => entry.explicit = Some(candidate),
            }
        }
        Ok(())
    }

    /// How many candidate profiles there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
            + self
                .by_image
                .values()
                .filter(|i| i.explicit.is_some())
                .count()
    }

    /// What the user should know about how candidates apply: each image
    /// whose containers, unless named, get none because several named
    /// profiles of it could.
    pub fn notes(&self) -> Vec<String> {
        self.by_image
            .iter()
            .filter(|(_, i)| i.fallback().is_none() && i.named.len() > 1)
            .map(|(image, i)| {
                format!(
                    "image {image:?}: {} each name one container; other containers of it get no candidate",
                    i.named
                        .iter()
                        .map(|c| c.source.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect()
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
                    .and_then(|i| self.by_image.get(i)?.fallback())
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

    fn subject(name: Option<&str>, image: &str) -> Subject {
        Subject {
            kind: "container".into(),
            name: name.map(str::to_owned),
            image: Some(image.into()),
            ..Default::default()
        }
    }

    /// Two candidates for one container refuse the start, naming both;
    /// named profiles of one image leave its other containers without one.
    #[test]
    fn ambiguous_candidates_are_refused_not_picked_by_order() {
        let scratch_dir = scratch("ambiguous");
        let dir = scratch_dir.0.clone();
        let write = |file: &str, caps: &[&str], s: Subject| {
            std::fs::write(dir.join(file), with_allowlist(caps, s).to_json()).unwrap();
            dir.join(file)
        };
        let a = write("a.json", &["CAP_CHOWN"], subject(Some("web"), "nginx:1"));
        let b = write("b.json", &[], subject(Some("web"), "nginx:2"));
        let err = Candidates::load(&[a.clone(), b.clone()]).unwrap_err();
        let line = err.to_string();
        assert!(matches!(err, ShadowError::Ambiguous { .. }), "{line}");
        assert!(line.contains("a.json") && line.contains("b.json"), "{line}");
        assert!(line.contains("\"web\""), "{line}");

        let c = write("c.json", &[], subject(None, "job:1"));
        let d = write("d.json", &["CAP_KILL"], subject(None, "job:1"));
        let line = Candidates::load(&[c, d]).unwrap_err().to_string();
        assert!(line.contains("c.json") && line.contains("d.json"), "{line}");
        assert!(line.contains("image \"job:1\""), "{line}");

        let e = write("e.json", &["CAP_KILL"], subject(Some("api"), "nginx:1"));
        let both = Candidates::load(&[a, e]).unwrap();
        assert_eq!(both.find(Some("api"), Some("nginx:1")).unwrap().1, "name");
        assert!(both.find(Some("other"), Some("nginx:1")).is_none());
        let notes = both.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("a.json") && notes[0].contains("e.json"));
        // An image's own candidate (no name) applies over named ones.
        let f = write("f.json", &[], subject(None, "nginx:1"));
        let all = Candidates::load(&[dir.join("a.json"), dir.join("e.json"), f]).unwrap();
        let (found, how) = all.find(Some("other"), Some("nginx:1")).unwrap();
        assert!(found.source.ends_with("f.json") && how == "image");
        assert!(all.notes().is_empty());
    }

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

        // The same file named twice is one candidate, not two.
        let twice = Candidates::load(&[dir.join("web.json"), dir.clone()]).unwrap();
        assert_eq!(twice.len(), 2);

        let err = Candidates::load(&[dir.join("notes.txt")]).unwrap_err();
        assert!(err.to_string().contains("not a capprof profile"), "{err}");
        let empty = scratch("empty");
        assert!(matches!(
            Candidates::load(std::slice::from_ref(&empty.0)).unwrap_err(),
            ShadowError::Empty { .. }
        ));
    }
}
