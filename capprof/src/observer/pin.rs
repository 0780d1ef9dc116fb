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
    #[error(
        "{} holds the pins of a capprof with map ABI {found}, still attached; this one has \
         map ABI {MAP_ABI_VERSION} and cannot take them over: run `capprof daemon --reset{}` \
         (it detaches them and drops the counts not yet saved; profiles stay), then start again",
        path.display(),
        reset_flag(path)
    )]
    OtherAbi { path: PathBuf, found: u32 },
}

/// The `--bpffs` a reset of `pins` (`<bpffs>/capprof/v<N>`) needs, when it
/// is not the default mount.
fn reset_flag(pins: &Path) -> String {
    match pins.parent().and_then(Path::parent) {
        Some(bpffs) if bpffs != Path::new(DEFAULT_BPFFS) => {
            format!(" --bpffs {}", bpffs.display())
        }
        _ => String::new(),
    }
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

/// Every capprof pin directory under a bpffs mount, this build's and other
/// map ABIs' (`<bpffs>/capprof/v<N>`), with its ABI version.
pub fn all_pin_dirs(bpffs: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = fs::read_dir(bpffs.join("capprof")) else {
        return vec![];
    };
    let mut dirs: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let abi = name.to_str()?.strip_prefix('v')?.parse().ok()?;
            Some((abi, entry.path()))
        })
        .collect();
    dirs.sort();
    dirs
}

/// Refuses pins that another map ABI left attached: this build cannot
/// read their maps, and loading beside them would count every check
/// twice, once in programs nobody drains. An upgrade within one ABI
/// reuses the pins instead; across ABIs, `capprof daemon --reset` removes
/// them first.
pub fn check_other_abis(bpffs: &Path) -> Result<(), PinError> {
    let stale = all_pin_dirs(bpffs)
        .into_iter()
        .filter(|(abi, _)| *abi != MAP_ABI_VERSION)
        .find(|(_, dir)| {
            ["maps", "links"]
                .iter()
                .any(|sub| has_entries(&dir.join(sub)))
        });
    match stale {
        Some((found, path)) => Err(PinError::OtherAbi { path, found }),
        None => Ok(()),
    }
}

fn has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

pub fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("maps").join(name)
}

pub fn link_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("links").join(name)
}

/// Detaches the link pinned at `path`, now: opened, unpinned, and closed
/// here as its last reference (removing the pin alone would leave the
/// detach to a kernel worker, later). A pin that does not open as a link
/// is removed all the same, and said why.
pub fn detach_pinned_link(path: &Path) -> Result<(), aya::programs::links::LinkError> {
    match aya::programs::links::PinnedLink::from_pin(path) {
        Ok(link) => {
            drop(link.unpin());
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
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
pub struct PinGuard {
    pub dir: Option<PathBuf>,
}

impl Drop for PinGuard {
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
    fn pins_of_another_abi_are_refused_with_the_reset_to_run() {
        // Plain directories stand in for bpffs: only names are read.
        let root = std::env::temp_dir().join(format!("capprof-otherabi-{}", std::process::id()));
        let ours = pin_dir(&root);
        fs::create_dir_all(ours.join("maps/COUNTS")).unwrap();
        let old = root.join("capprof/v1");
        // An empty directory of another ABI holds nothing attached.
        fs::create_dir_all(old.join("links")).unwrap();
        check_other_abis(&root).unwrap();
        fs::create_dir_all(old.join("links/capprof_cap")).unwrap();
        let err = check_other_abis(&root).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PinError::OtherAbi { found: 1, .. }), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.contains(&format!(
                "capprof daemon --reset --bpffs {}",
                root.display()
            )),
            "{msg}"
        );
        assert_eq!(all_pin_dirs(&root), [(1, old), (MAP_ABI_VERSION, ours)]);
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
