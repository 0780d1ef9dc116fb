//! A run's links, kept for the next run: pinned in the set's `links/`,
//! taken over whole by a run started within `LINGER`, and else detached
//! by a holder that the run forked (see the module above).

use std::{
    collections::HashMap as StdHashMap,
    ffi::CString,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::MetadataExt as _,
    },
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{
    Program,
    links::{FdLink, PinnedLink},
};

use super::{LINGER, WarmError, WarmSet, io_err, open_dir, programs_of, try_lock};
use crate::observer::{
    Backend,
    attach::{self, Attached},
    pin,
};

impl WarmSet {
    /// Detaches every link pinned in the set, now.
    pub(super) fn detach_links(&self) {
        let dir = self.dir.join("links");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            tracing::debug!("detaching {}", entry.path().display());
            let _ = pin::detach_pinned_link(&entry.path());
        }
    }

    /// Takes over the links that the run before left attached (see the
    /// module's doc) when they are those of this set's programs for
    /// `backend`, all of them, and pins them anew: the earlier run's holder
    /// then sees that they are no longer its own. Else detaches whatever
    /// links are pinned (None).
    pub fn adopt_links(
        &self,
        programs: &StdHashMap<&'static str, Program>,
        backend: Backend,
    ) -> Result<Option<Vec<(&'static str, PinnedLink)>>, WarmError> {
        let dir = self.dir.join("links");
        let pinned = fs::read_dir(&dir).map_err(io_err(&dir))?.count();
        if pinned == 0 {
            return Ok(None);
        }
        let names: Vec<&'static str> = programs_of(backend).map(|(name, _)| name).collect();
        let ours = |name: &'static str| -> Option<FdLink> {
            let link = FdLink::from(PinnedLink::from_pin(self.link_path(name)).ok()?);
            let program = programs.get(name)?.info().ok()?.id();
            (link.info().ok()?.program_id() == program).then_some(link)
        };
        let found: Vec<(&'static str, FdLink)> = names
            .iter()
            .map_while(|&name| ours(name).map(|link| (name, link)))
            .collect();
        if pinned != names.len() || found.len() != names.len() {
            drop(found);
            tracing::debug!("the links left in {} are not this set's", dir.display());
            self.detach_links();
            return Ok(None);
        }
        found
            .into_iter()
            .map(|(name, link)| {
                let path = self.link_path(name);
                fs::remove_file(&path).map_err(io_err(&path))?;
                let pinned = link.pin(&path).map_err(|e| WarmError::Link {
                    name,
                    why: e.to_string(),
                })?;
                Ok((name, pinned))
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Pins a run's links, just attached to the set's programs for
    /// `backend`, for the next run to take over. Nothing when some link
    /// would not pin (a kprobe's; a tracepoint's before 5.15, without
    /// `BPF_LINK_TYPE_PERF_EVENT`) or some hook did not attach: those
    /// links detach as the run ends, as unpinned links do.
    pub fn pin_links(
        &self,
        programs: &mut dyn attach::Programs,
        attached: &mut Vec<Attached>,
        backend: Backend,
    ) -> Result<Vec<(&'static str, PinnedLink)>, WarmError> {
        if backend == Backend::Kprobe
            || !aya::features().bpf_perf_link()
            || attached.len() != programs_of(backend).count()
        {
            return Ok(vec![]);
        }
        let pinned: Result<Vec<_>, _> = std::mem::take(attached)
            .into_iter()
            .map(|link| {
                let name = link.name;
                let failed = |why: String| WarmError::Link { name, why };
                let link = link
                    .into_fd_link(programs)
                    .map_err(|e| failed(e.to_string()))?
                    .ok_or_else(|| failed("cannot be pinned".to_owned()))?;
                let pinned = link
                    .pin(self.link_path(name))
                    .map_err(|e| failed(e.to_string()))?;
                Ok((name, pinned))
            })
            .collect();
        if pinned.is_err() {
            // No holder will come for the ones that were pinned.
            self.detach_links();
        }
        pinned
    }

    /// Forks the holder that detaches the `pinned` links once this run is
    /// over and `LINGER` has passed (see `Linger`), or None when it cannot.
    pub fn hold_links(&self, pinned: &[(&'static str, PinnedLink)]) -> Option<attach::Holder> {
        let linger = match Linger::new(self, pinned.iter().map(|(name, _)| *name)) {
            Ok(linger) => linger,
            Err(e) => {
                tracing::warn!("cannot keep the links for the next run: {e}");
                return None;
            }
        };
        // SAFETY: `Linger::finish` makes raw system calls only, and
        // allocates nothing.
        unsafe { attach::Holder::fork_then(&|fd, _| linger.keeps(fd), &|| linger.finish()) }
    }
}

/// What a run's holder needs to detach the run's pinned links once the
/// run is over: the set's directory, opened anew to be locked, and each
/// link's pin with the inode it was pinned as. A pin that is gone, or was
/// pinned anew by a run that took the links over, is not its own any more.
///
/// The holder keeps no link open: the pins keep the links attached, so
/// that when it opens, unpins and closes each, its close is the last
/// reference and detaches the link there and then, before the set's lock
/// goes with it. (A holder that kept links open would detach them only as
/// it exits, after a later run's holder had unpinned them, and a run in
/// between would attach anew beside links still attached.)
struct Linger {
    set: File,
    /// The set's `links/`, locked while the holder is at work.
    links: File,
    pins: Vec<(CString, u64)>,
}

impl Linger {
    fn new(set: &WarmSet, names: impl Iterator<Item = &'static str>) -> Result<Self, WarmError> {
        let pins = names
            .map(|name| {
                let path = set.link_path(name);
                let ino = fs::metadata(&path).map_err(io_err(&path))?.ino();
                let c_path = CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|e| io_err(&path)(io::Error::other(e)))?;
                Ok((c_path, ino))
            })
            .collect::<Result<_, WarmError>>()?;
        Ok(Self {
            set: open_dir(&set.dir)?,
            links: open_dir(&set.dir.join("links"))?,
            pins,
        })
    }

    /// The fds the holder keeps: the set and its links, to lock.
    fn keeps(&self, fd: RawFd) -> bool {
        fd == self.set.as_raw_fd() || fd == self.links.as_raw_fd()
    }

    /// In the holder, once the run is over: waits `LINGER`, then, if no
    /// run holds the set and the pins are still those it was given,
    /// detaches each link (see the type's doc). It locks `links/` first,
    /// so that a run that finds the set taken knows to wait for it; both
    /// locks go as it exits.
    ///
    /// Raw system calls only, no allocation: this runs in a forked child
    /// of a threaded process.
    fn finish(&self) {
        // nanosleep, again after a signal: nothing else.
        std::thread::sleep(LINGER);
        // SAFETY: system calls on an fd this process owns and on
        // NUL-terminated paths, with valid pointers.
        unsafe {
            while libc::flock(self.links.as_raw_fd(), libc::LOCK_EX) != 0 {
                if *libc::__errno_location() != libc::EINTR {
                    return;
                }
            }
            if libc::flock(self.set.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 {
                return;
            }
            for (path, ino) in &self.pins {
                let mut stat: libc::stat = std::mem::zeroed();
                if libc::stat(path.as_ptr(), &mut stat) != 0 || stat.st_ino != *ino {
                    return;
                }
            }
            for (path, _) in &self.pins {
                let link = bpf_obj_get(path);
                libc::unlink(path.as_ptr());
                if link >= 0 {
                    libc::close(link);
                }
            }
        }
    }
}

/// `BPF_OBJ_GET`: an fd of the object pinned at `path`, or -1. A raw
/// system call, for the holder.
///
/// # Safety
/// `path` must stay valid during the call (it does: it is borrowed).
unsafe fn bpf_obj_get(path: &CString) -> RawFd {
    /// `union bpf_attr` for `BPF_OBJ_*`: the pathname, `bpf_fd` and
    /// `file_flags`; the kernel takes the fields after them as zero.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: a valid attr of the size given, pointing at a C string.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &raw const attr,
            size_of::<ObjAttr>() as libc::c_uint,
        ) as RawFd
    }
}

/// Whether a run's holder is detaching links in the set at `dir`: it
/// holds the lock on `links/`.
pub(super) fn holder_at_work(dir: &Path) -> bool {
    let links = dir.join("links");
    File::open(&links).is_ok_and(|file| !try_lock(&file, &links).unwrap_or(true))
}

/// Whether no links are pinned in any set under `root`, and no holder is
/// detaching some: no run's links are lingering or going. (It never takes
/// a set's lock, which would send a holder away with its work undone.)
pub fn settled(root: &Path) -> bool {
    let Ok(sets) = fs::read_dir(root) else {
        return true;
    };
    sets.flatten().all(|set| {
        let path = set.path();
        let links = fs::read_dir(path.join("links")).map_or(0, Iterator::count);
        links == 0 && !holder_at_work(&path)
    })
}

/// Waits up to `timeout` for every set under `root` to be `settled`.
pub fn wait_settled(root: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    loop {
        if settled(root) {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
