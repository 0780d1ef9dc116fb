//! cgroup v2: finding the mount, making a cgroup for one command, and ids.

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("cannot read /proc/self/mountinfo: {0}")]
    MountInfo(io::Error),
    #[error("cannot create cgroup {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot read cgroup {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// Whether any process is left in the cgroup at `dir` or below it: the
/// `populated` line of the kernel's `cgroup.events` (`InvalidData`
/// without one).
pub fn populated(dir: &Path) -> io::Result<bool> {
    let events = fs::read_to_string(dir.join("cgroup.events"))?;
    events
        .lines()
        .find_map(|l| l.strip_prefix("populated "))
        .map(|n| n.trim() != "0")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no populated line"))
}

/// Where cgroup2 is mounted: /sys/fs/cgroup on unified hosts,
/// /sys/fs/cgroup/unified on hybrid ones.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::MountInfo)?;
    cgroup2_mount_in(&info).ok_or(CgroupError::NoCgroup2)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    // 36 35 0:30 / /sys/fs/cgroup/unified rw,… shared:9 - cgroup2 cgroup2 rw,…
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_ascii_whitespace().next()?;
        let mount_point = left.split_ascii_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(unescape(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup v2 id of a cgroup directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns.
pub fn cgroup_id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Read {
            path: path.to_owned(),
            source,
        })
}

/// A cgroup capprof created, removed on drop.
#[derive(Debug)]
pub struct OwnedCgroup {
    path: PathBuf,
    relative: String,
    id: u64,
}

impl OwnedCgroup {
    /// Creates `<mount>/capprof/<name>`.
    pub fn create(mount: &Path, name: &str) -> Result<Self, CgroupError> {
        let parent = mount.join("capprof");
        let path = parent.join(name);
        fs::create_dir_all(&path).map_err(|source| CgroupError::Create {
            path: path.clone(),
            source,
        })?;
        let id = cgroup_id(&path)?;
        Ok(Self {
            relative: format!("/capprof/{name}"),
            path,
            id,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path relative to the cgroup2 mount.
    pub fn relative(&self) -> &str {
        &self.relative
    }

    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Whether any process is left in the cgroup or below it.
    pub fn populated(&self) -> bool {
        populated(&self.path).unwrap_or(false)
    }

    /// The ids of this cgroup and of every cgroup below it.
    pub fn subtree_ids(&self) -> Vec<u64> {
        let mut ids = vec![];
        let mut stack = vec![self.path.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(meta) = fs::metadata(&dir) {
                ids.push(meta.ino());
            }
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        ids
    }

    /// Kills whatever is left (used when capprof itself is interrupted).
    pub fn kill_all(&self) {
        let kill = self.path.join("cgroup.kill");
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(kill) {
            let _ = f.write_all(b"1");
        }
    }

    fn remove(&self) {
        // Children first; rmdir fails while processes are still leaving.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut dirs = vec![];
            let mut stack = vec![self.path.clone()];
            while let Some(dir) = stack.pop() {
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                dirs.push(dir);
            }
            let ok = dirs
                .iter()
                .rev()
                .all(|d| fs::remove_dir(d).is_ok() || !d.exists());
            if ok || Instant::now() > deadline {
                if !ok {
                    tracing::warn!("could not remove cgroup {}", self.path.display());
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OwnedCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_mountinfo() {
        let hybrid = "\
25 24 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
";
        assert_eq!(
            cgroup2_mount_in(hybrid).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(unified).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        let escaped = "30 1 0:26 / /mnt/my\\040cgroup rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount_in(escaped).unwrap(),
            PathBuf::from("/mnt/my cgroup")
        );
        assert_eq!(
            cgroup2_mount_in("25 24 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs ro\n"),
            None
        );
    }
}
