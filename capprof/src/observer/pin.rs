//! Pinning in bpffs, so that the daemon's maps and programs outlive it:
//! checks made while it is down (even after `kill -9`) are still counted.
//!
//! Layout: `<bpffs>/capprof/v<MAP_ABI_VERSION>/maps/<MAP>` and
//! `…/links/<PROGRAM>`. The version in the path keeps a capprof with another
//! map layout away from these pins; within a version, every pinned map is
//! still checked against the object's definition before reuse, because aya
//! reopens a pin by name without looking at its shape.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::maps::{MapData, MapInfo};
use capprof_common::{MAP_ABI_VERSION, names};

/// The maps that carry state across restarts. `CALIB` and `INFLIGHT` are
/// scratch and `HOT` a cache of this load's decisions, private to each load.
/// The syscall hooks' `OPS_SEEN` and `SOCKETS_PENDING` are pinned with
/// their programs' links: a restart neither re-sends every operation nor
/// loses a socket() between its entry and its exit; their backlogs hold
/// what the ring buffer had no room for while nothing read it; and
/// `CAPSET_RAISES` lets an exec after a restart settle a capset() made
/// before it.
pub const PINNED_MAPS: &[&str] = &[
    names::WATCH_ROOTS,
    names::CGROUPS,
    names::CONFIG,
    names::SITES,
    names::COUNTS,
    names::EVIDENCE_SEEN,
    names::EVENTS,
    names::STATS,
    names::TASKS,
    names::TASK_EXECS,
    names::GENERATION,
    names::OPS_SEEN,
    names::SOCKETS_PENDING,
    names::CONDITIONAL_BACKLOG,
    names::CAPSET_BACKLOG,
    names::CAPSET_EXEC_BACKLOG,
    names::CAPSET_RAISES,
];

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot mount bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot use pin directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "another capprof daemon{} uses the pins in {}: stop it first, or give this one its own --bpffs",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    Busy { path: PathBuf, pid: Option<u32> },
}

/// An exclusive hold on a bpffs mount's capprof pins, for as long as it
/// lives: two daemons sharing pins would each drain the other's counts.
#[derive(Debug)]
pub struct PinLock {
    _dir: fs::File,
}

/// Takes the pins of `bpffs` for this process, or says who has them. The
/// lock is a `flock` on the `capprof` directory itself (bpffs holds no
/// regular files), so the kernel drops it when the holder dies, even by
/// `kill -9`.
pub fn lock(bpffs: &Path) -> Result<PinLock, PinError> {
    use std::os::fd::AsRawFd as _;
    let path = bpffs.join("capprof");
    let dir_err = |source| PinError::Dir {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(&path).map_err(dir_err)?;
    let dir = fs::File::open(&path).map_err(dir_err)?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(dir_err(err));
        }
        let pid = holder(&dir);
        return Err(PinError::Busy { path, pid });
    }
    Ok(PinLock { _dir: dir })
}

/// The pid holding a flock on `file`, from /proc/locks.
fn holder(file: &fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = file.metadata().ok()?;
    let inode = meta.ino();
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let wanted = format!("{major:02x}:{minor:02x}:{inode}");
    // "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"
    fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            (fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&wanted.as_str()))
                .then(|| fields.get(4)?.parse().ok())
                .flatten()
        })
}

/// The versioned pin directory under a bpffs mount.
pub fn pin_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("capprof").join(format!("v{MAP_ABI_VERSION}"))
}

pub fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("maps").join(name)
}

pub fn link_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("links").join(name)
}

fn is_bpffs_mounted(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        right.split_ascii_whitespace().next() == Some("bpf")
            && left.split_ascii_whitespace().nth(4).map(Path::new) == Some(path)
    })
}

/// Mounts bpffs at `path` unless it already is.
pub fn ensure_bpffs(path: &Path) -> Result<(), PinError> {
    if is_bpffs_mounted(path) {
        return Ok(());
    }
    fs::create_dir_all(path).map_err(|source| PinError::Mount {
        path: path.to_owned(),
        source,
    })?;
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| PinError::Mount {
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PinError::Mount {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted bpffs at {}", path.display());
    Ok(())
}

/// Creates the directories pins go into.
pub fn prepare(dir: &Path) -> Result<(), PinError> {
    for sub in ["maps", "links"] {
        let path = dir.join(sub);
        fs::create_dir_all(&path).map_err(|source| PinError::Dir { path, source })?;
    }
    Ok(())
}

/// Why an existing pin cannot be reused, if it cannot.
pub fn incompatibility(dir: &Path, object: &aya_obj::Object) -> Option<String> {
    for name in PINNED_MAPS {
        let path = map_path(dir, name);
        if !path.exists() {
            continue;
        }
        let Some(def) = object.maps.get(*name) else {
            return Some(format!("{name}: not in this build's object"));
        };
        let info = match MapData::from_pin(&path).and_then(|m| m.info()) {
            Ok(info) => info,
            Err(e) => return Some(format!("{name}: cannot open the pin: {e}")),
        };
        if let Some(reason) = mismatch(&info, def) {
            return Some(format!("{name}: {reason}"));
        }
    }
    None
}

fn mismatch(info: &MapInfo, def: &aya_obj::Map) -> Option<String> {
    let expected = (def.key_size(), def.value_size(), def.max_entries());
    let found = (info.key_size(), info.value_size(), info.max_entries());
    // Ring buffers have no key or value; their size is max_entries.
    (expected != found).then(|| {
        format!(
            "key/value/max_entries {}/{}/{} where this build has {}/{}/{}",
            found.0, found.1, found.2, expected.0, expected.1, expected.2
        )
    })
}

/// Removes the pin directory when dropped, unless disarmed (`dir: None`):
/// a load or a daemon that fails leaves no pin behind it.
#[derive(Debug)]
pub struct Cleanup {
    pub dir: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir
            && let Err(e) = reset(dir)
        {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

/// Removes every pin: unpinning the links detaches the programs once no
/// process holds them.
pub fn reset(dir: &Path) -> io::Result<bool> {
    if !dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(dir)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_named() {
        // Any directory shows the flock logic; bpffs is only where it is used.
        let root = std::env::temp_dir().join(format!("capprof-pinlock-{}", std::process::id()));
        let first = lock(&root).unwrap();
        // A second open file description conflicts even in one process.
        let err = lock(&root).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::Busy { .. }), "{msg}");
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        drop(first);
        lock(&root).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn pin_paths_carry_the_abi_version() {
        let dir = pin_dir(Path::new("/sys/fs/bpf"));
        assert_eq!(
            dir,
            PathBuf::from(format!("/sys/fs/bpf/capprof/v{MAP_ABI_VERSION}"))
        );
        assert_eq!(map_path(&dir, "COUNTS"), dir.join("maps/COUNTS"));
    }
}
