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
    names::GENERATION,
];

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot mount bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot use pin directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
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
    fn pin_paths_carry_the_abi_version() {
        let dir = pin_dir(Path::new("/sys/fs/bpf"));
        assert_eq!(
            dir,
            PathBuf::from(format!("/sys/fs/bpf/capprof/v{MAP_ABI_VERSION}"))
        );
        assert_eq!(map_path(&dir, "COUNTS"), dir.join("maps/COUNTS"));
    }
}
