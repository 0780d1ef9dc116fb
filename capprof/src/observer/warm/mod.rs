//! `capprof run`'s warm start: this executable's verified programs and
//! their maps, kept loaded in bpffs between runs, attached only during one.
//!
//! A cold start spends most of its time verifying (the tracepoint backend
//! alone is 33,056 verified instructions, 130-180 ms here) and parsing the
//! kernel's BTF. Neither result changes while the kernel and the capprof
//! executable stay the same. So the first run pins its programs and maps
//! under `<bpffs>/capprof-run/<key>/` (`progs/`, `maps/`), and a later run
//! of the same executable reopens them, empties the maps, and attaches:
//! no BTF, no verifier, no calibration (its result is in the `CONFIG` map).
//!
//! **Links linger, then go.** A run pins its links under `links/` too, and
//! they stay attached for `LINGER` after it ends, watching no cgroup: a run
//! started meanwhile (a script's next command) takes them over rather than
//! attach anew, which would first wait out the grace periods of the links
//! just closed (~100 ms here). A holder that each run forks as it starts
//! (`Linger`) detaches them once the run is over and `LINGER` has passed,
//! unless a run holds the set or took them over; it is kept alive by the
//! run itself, so a run killed by SIGKILL is covered too. Then, between
//! runs, nothing is attached: the programs cost kernel memory (their maps),
//! and no check pays for them. `capprof run --cold` neither uses nor makes
//! a set; removing `<bpffs>/capprof-run` frees every set (and detaches any
//! lingering links).
//!
//! **The key** is the executable's identity (device, inode, size and
//! modification time): another build, even with the same eBPF object, may
//! compute a different configuration, so it gets its own set, and the
//! first run of a new build removes the sets no run is using.
//!
//! **One run at a time** uses a set, by two `flock`s that the kernel drops
//! when their holder dies, even by `kill -9`:
//! - on the set's directory, held while a run uses the set: a second run
//!   at the same time loads cold rather than wait;
//! - on its `links/` directory, held by a run's holder (below) while it
//!   detaches that run's links: a run that finds the set's lock taken
//!   waits for such a holder, and loads cold only beside another run;
//! - on its `progs/` directory, held while a run's unpinned links are
//!   attached (kprobes, and tracepoints before 5.15, cannot be pinned).
//!   That run's detach holder (`Observer::drop_in_background`) keeps it
//!   until the last link is closed, and the next run waits for that (tens
//!   of ms): two runs' links on the same programs would count each check
//!   twice. For the same reason, pinned links are detached only by one
//!   that holds the set's lock, and a run attaches anew only after it
//!   found no links to take over.
//!
//! **Trust.** The directories must be root's and writable by nobody else.
//! A set that is incomplete, or whose maps do not open with this build's
//! types, is emptied and made again by a cold load.

use std::{
    collections::HashMap as StdHashMap,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd as _, RawFd},
        unix::fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Pod,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf},
    programs::{BtfTracePoint, FExit, KProbe, Lsm, ProbeKind, Program, ProgramError, TracePoint},
};
use capprof_common::{
    check::{CheckKey, CheckStats, EvidenceKey, Inflight, generations, stat},
    config::Config,
    event::{CapsetEvent, CapsetExecEvent, ConditionalEvent, ExecEvent},
    names,
    syscalls::{CapsetRaise, OperationKey, PendingSocket},
};

use super::{Backend, Classification, attach, backend_programs, calibrate, hook_programs, symbols};

mod links;

pub use links::{settled, wait_settled};

/// Where `capprof run` keeps its warm sets.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/capprof-run";

/// bpffs's `f_type` (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How long a run waits for the previous run's links to be closed.
const ATTACHED_WAIT: Duration = Duration::from_secs(2);

/// How long a run's links stay attached after it, for the next run to
/// take over.
pub const LINGER: Duration = Duration::from_secs(2);

/// Backends in the order a complete set is looked for.
const BACKENDS: [Backend; 4] = [
    Backend::TpBtf,
    Backend::Fexit,
    Backend::Lsm,
    Backend::Kprobe,
];

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("{}: not on a bpffs mount", .0.display())]
    NotBpffs(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not root's, or writable by others", .0.display())]
    NotPrivate(PathBuf),
    #[error("another capprof run is using {}", .0.display())]
    InUse(PathBuf),
    #[error("the previous run's links on {} were not closed within {ATTACHED_WAIT:?}", .0.display())]
    StillAttached(PathBuf),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("program {0}: the pin is not a program of its type")]
    WrongType(&'static str),
    #[error("the set was made without calibrated call sites")]
    Uncalibrated,
    #[error("link {name}: {why}")]
    Link { name: &'static str, why: String },
}

/// A warm set this run holds: its directory, locked.
#[derive(Debug)]
pub struct WarmSet {
    dir: PathBuf,
    /// Held while this run uses the set.
    _in_use: File,
    /// Held while this run's links are attached (and by its detach holder).
    attached: File,
}

/// What a run does with the warm set it claimed.
#[derive(Debug)]
pub enum Claim {
    /// Reopen the complete set, made for `Backend`.
    Reopen(WarmSet, Backend),
    /// Load cold, pinning maps and programs into the (emptied) set.
    Create(WarmSet),
}

impl WarmSet {
    /// Claims this executable's set under `root` for `backend` (None: the
    /// best the kernel offers), or says why a run must load cold.
    pub fn claim(root: &Path, backend: Option<Backend>) -> Result<Claim, WarmError> {
        on_bpffs(root.parent().unwrap_or(root))?;
        private_dir(root)?;
        let dir = root.join(key(backend)?);
        private_dir(&dir)?;
        let in_use = open_dir(&dir)?;
        if !try_lock(&in_use, &dir)? {
            // A holder detaching the links of a run before holds it for
            // the links' grace periods only: worth waiting for, unlike a run.
            if !links::holder_at_work(&dir) {
                return Err(WarmError::InUse(dir));
            }
            wait_lock(&in_use, &dir)?;
        }
        for sub in ["maps", "progs", "links"] {
            private_dir(&dir.join(sub))?;
        }
        let progs = dir.join("progs");
        let attached = open_dir(&progs)?;
        wait_lock(&attached, &progs)?;
        let set = Self {
            dir,
            _in_use: in_use,
            attached,
        };
        Ok(match set.complete(backend) {
            Some(backend) => Claim::Reopen(set, backend),
            None => {
                set.empty()?;
                remove_unused_siblings(root, &set.dir);
                Claim::Create(set)
            }
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The fd of the lock that a detach holder must keep.
    pub fn attached_fd(&self) -> RawFd {
        self.attached.as_raw_fd()
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn prog_path(&self, name: &str) -> PathBuf {
        self.dir.join("progs").join(name)
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    /// The maps to pin when making the set: all of them.
    pub fn map_pins(&self) -> Vec<(&'static str, PathBuf)> {
        names::ALL_MAPS
            .iter()
            .map(|&name| (name, self.map_path(name)))
            .collect()
    }

    /// The backend whose set is complete, if one is: every map, the
    /// backend's programs, and every hook.
    fn complete(&self, wanted: Option<Backend>) -> Option<Backend> {
        let has = |path: PathBuf| path.exists();
        if !names::ALL_MAPS.iter().all(|m| has(self.map_path(m))) {
            return None;
        }
        if !hook_programs().all(|(name, _)| has(self.prog_path(name))) {
            return None;
        }
        BACKENDS
            .into_iter()
            .filter(|b| wanted.is_none_or(|w| w == *b))
            .find(|b| {
                backend_programs(*b)
                    .iter()
                    .all(|(name, _)| has(self.prog_path(name)))
            })
    }

    /// Detaches the links pinned in the set, then removes every pin,
    /// keeping its (locked) directories.
    pub fn empty(&self) -> Result<(), WarmError> {
        self.detach_links();
        for sub in ["maps", "progs"] {
            let path = self.dir.join(sub);
            let entries = fs::read_dir(&path).map_err(io_err(&path))?;
            for entry in entries.flatten() {
                let pin = entry.path();
                fs::remove_file(&pin).map_err(io_err(&pin))?;
            }
        }
        Ok(())
    }

    /// Pins the programs of a cold load that attached `backend` and every
    /// hook, calibrated, making the set complete (true); else empties it.
    pub fn keep(
        &self,
        ebpf: &mut aya::Ebpf,
        backend: Backend,
        classification: &Classification,
        attached: usize,
    ) -> bool {
        let programs: Vec<_> = programs_of(backend).collect();
        let calibrated = matches!(
            classification,
            Classification::CallSite { .. } | Classification::Opts { call_site: Some(_) }
        );
        let kept = if !calibrated {
            Err("call sites are not calibrated".to_owned())
        } else if attached != programs.len() {
            Err(format!(
                "{attached} of {} programs attached",
                programs.len()
            ))
        } else {
            programs.iter().try_for_each(|&(name, _)| {
                let path = self.prog_path(name);
                ebpf.program_mut(name)
                    .ok_or_else(|| format!("no program {name}"))?
                    .pin(&path)
                    .map_err(|e| format!("cannot pin {}: {e}", path.display()))
            })
        };
        match kept {
            Ok(()) => {
                tracing::debug!("kept a warm set in {}", self.dir.display());
                true
            }
            Err(why) => {
                tracing::debug!("no warm set kept ({why})");
                if let Err(e) = self.empty() {
                    tracing::warn!("cannot empty {}: {e}", self.dir.display());
                }
                false
            }
        }
    }
}

/// The programs a set for `backend` keeps: the backend's and every hook's.
fn programs_of(backend: Backend) -> impl Iterator<Item = (&'static str, attach::Hook)> {
    backend_programs(backend)
        .iter()
        .copied()
        .chain(hook_programs())
}

/// A complete set's maps and programs, reopened.
pub struct Reopened {
    pub maps: StdHashMap<&'static str, Map>,
    pub programs: StdHashMap<&'static str, Program>,
}

impl attach::Programs for Reopened {
    fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        self.programs.get_mut(name)
    }
}

impl Reopened {
    /// Opens every map and `backend`'s and the hooks' programs.
    pub fn open(set: &WarmSet, backend: Backend) -> Result<Self, WarmError> {
        let mut maps = StdHashMap::new();
        for &name in names::ALL_MAPS {
            let map = MapData::from_pin(set.map_path(name))
                .and_then(Map::from_map_data)
                .map_err(|source| WarmError::Map { name, source })?;
            maps.insert(name, map);
        }
        let mut programs = StdHashMap::new();
        for (name, hook) in programs_of(backend) {
            programs.insert(name, open_program(&set.prog_path(name), name, hook)?);
        }
        Ok(Self { maps, programs })
    }

    /// The configuration the cold load that made the set wrote: this
    /// kernel's layout and the calibration.
    pub fn config(&self) -> Result<Config, WarmError> {
        let config: Array<_, Config> =
            Array::try_from(self.map(names::CONFIG)?).map_err(map_err(names::CONFIG))?;
        config.get(&0, 0).map_err(map_err(names::CONFIG))
    }

    /// Leaves the maps as a fresh load's would be, but for `CONFIG` (this
    /// kernel's layout and calibration) and the generations (bumped): no
    /// watched root first, so that nothing new is recorded while the rest
    /// empties; then every table; then the ring buffer's unread records.
    pub fn reset(&mut self) -> Result<(), WarmError> {
        clear::<u64, u32>(self.map_mut(names::WATCH_ROOTS)?, names::WATCH_ROOTS)?;
        let mut generation: Array<_, u32> = Array::try_from(self.map_mut(names::GENERATION)?)
            .map_err(map_err(names::GENERATION))?;
        for i in 0..generations::COUNT {
            let now = generation.get(&i, 0).map_err(map_err(names::GENERATION))?;
            generation
                .set(i, now.wrapping_add(1), 0)
                .map_err(map_err(names::GENERATION))?;
        }
        clear::<u64, u32>(self.map_mut(names::CGROUPS)?, names::CGROUPS)?;
        clear::<u64, u32>(self.map_mut(names::SITES)?, names::SITES)?;
        clear::<CheckKey, CheckStats>(self.map_mut(names::COUNTS)?, names::COUNTS)?;
        clear::<EvidenceKey, u8>(self.map_mut(names::EVIDENCE_SEEN)?, names::EVIDENCE_SEEN)?;
        clear::<u32, Inflight>(self.map_mut(names::INFLIGHT)?, names::INFLIGHT)?;
        clear::<u32, u8>(self.map_mut(names::TASKS)?, names::TASKS)?;
        clear::<u32, [u8; size_of::<ExecEvent>()]>(
            self.map_mut(names::TASK_EXECS)?,
            names::TASK_EXECS,
        )?;
        clear::<OperationKey, u8>(self.map_mut(names::OPS_SEEN)?, names::OPS_SEEN)?;
        clear::<u32, PendingSocket>(
            self.map_mut(names::SOCKETS_PENDING)?,
            names::SOCKETS_PENDING,
        )?;
        clear::<OperationKey, ConditionalEvent>(
            self.map_mut(names::CONDITIONAL_BACKLOG)?,
            names::CONDITIONAL_BACKLOG,
        )?;
        clear::<OperationKey, CapsetEvent>(
            self.map_mut(names::CAPSET_BACKLOG)?,
            names::CAPSET_BACKLOG,
        )?;
        clear::<OperationKey, CapsetExecEvent>(
            self.map_mut(names::CAPSET_EXEC_BACKLOG)?,
            names::CAPSET_EXEC_BACKLOG,
        )?;
        clear::<u32, CapsetRaise>(self.map_mut(names::CAPSET_RAISES)?, names::CAPSET_RAISES)?;
        self.zero_stats()?;
        let mut events =
            RingBuf::try_from(self.map_mut(names::EVENTS)?).map_err(map_err(names::EVENTS))?;
        while events.next().is_some() {}
        Ok(())
    }

    /// Zeroes every CPU's kernel counters (`STATS`).
    fn zero_stats(&mut self) -> Result<(), WarmError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, source)| WarmError::Io {
            path: PathBuf::from("/sys/devices/system/cpu/possible"),
            source,
        })?;
        let mut stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map_mut(names::STATS)?).map_err(map_err(names::STATS))?;
        for i in 0..stat::COUNT {
            let zeros =
                PerCpuValues::try_from(vec![0u64; cpus]).map_err(|source| WarmError::Io {
                    path: PathBuf::from(names::STATS),
                    source,
                })?;
            stats.set(i, zeros, 0).map_err(map_err(names::STATS))?;
        }
        Ok(())
    }

    fn map(&self, name: &'static str) -> Result<&Map, WarmError> {
        self.maps.get(name).ok_or(WarmError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_owned(),
            },
        })
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map, WarmError> {
        self.maps.get_mut(name).ok_or(WarmError::Map {
            name,
            source: MapError::InvalidName {
                name: name.to_owned(),
            },
        })
    }
}

/// How checks are classified, from the calibration in `config`.
pub fn classification(config: &Config, backend: Backend) -> Result<Classification, WarmError> {
    if !config.calibrated() {
        return Err(WarmError::Uncalibrated);
    }
    let slots = calibrate::Slots {
        caller: config.slot_caller,
        outer: config.slot_outer,
    };
    Ok(match backend {
        Backend::TpBtf => Classification::CallSite {
            caller_slot: slots.caller,
            outer_slot: slots.outer,
        },
        _ => Classification::Opts {
            call_site: Some(slots),
        },
    })
}

/// This boot's cached kernel functions, to name call sites with, when
/// they are the ones the set was calibrated with: their ranges are those
/// in `config`. Else None, and call sites are named from /proc/kallsyms.
pub fn confirmed_functions(config: &Config) -> Option<symbols::KnownFunctions> {
    let known = symbols::Cache::for_this_boot()?.load()?;
    let confirmed = config.ranges.get(..config.nr_ranges as usize)?;
    (calibrate::ranges(&known) == confirmed).then_some(known)
}

/// Deletes every entry of a hash map whose keys are `K` and values `V`
/// (aya checks both sizes against the map's).
fn clear<K: Pod, V: Pod>(map: &mut Map, name: &'static str) -> Result<(), WarmError> {
    let mut table: HashMap<_, K, V> = HashMap::try_from(map).map_err(map_err(name))?;
    let keys: Vec<K> = table.keys().filter_map(Result::ok).collect();
    for key in &keys {
        // An entry the kernel evicted meanwhile is gone already.
        let _ = table.remove(key);
    }
    Ok(())
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> WarmError {
    move |source| WarmError::Map { name, source }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WarmError + '_ {
    move |source| WarmError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens the pinned program `name` for `hook`, checking its type.
fn open_program(path: &Path, name: &'static str, hook: attach::Hook) -> Result<Program, WarmError> {
    use attach::Hook;
    use aya_obj::generated::bpf_prog_type as t;
    let failed = |source| WarmError::Program { name, source };
    let (program, expected) = match hook {
        Hook::TpBtf(_) => (
            Program::BtfTracePoint(BtfTracePoint::from_pin(path).map_err(failed)?),
            t::BPF_PROG_TYPE_TRACING,
        ),
        Hook::Fexit(_) => (
            Program::FExit(FExit::from_pin(path).map_err(failed)?),
            t::BPF_PROG_TYPE_TRACING,
        ),
        Hook::Lsm(_) => (
            Program::Lsm(Lsm::from_pin(path).map_err(failed)?),
            t::BPF_PROG_TYPE_LSM,
        ),
        Hook::Kprobe(_) => {
            let kind = if name == names::PROG_KRETPROBE {
                ProbeKind::Return
            } else {
                ProbeKind::Entry
            };
            (
                Program::KProbe(KProbe::from_pin(path, kind).map_err(failed)?),
                t::BPF_PROG_TYPE_KPROBE,
            )
        }
        Hook::TracePoint(..) => (
            Program::TracePoint(TracePoint::from_pin(path).map_err(failed)?),
            t::BPF_PROG_TYPE_TRACEPOINT,
        ),
    };
    let found = program.info().map_err(failed)?.program_type();
    if found != expected {
        return Err(WarmError::WrongType(name));
    }
    Ok(program)
}

/// The set's name: the executable's identity and the backend asked for.
fn key(backend: Option<Backend>) -> Result<String, WarmError> {
    use std::hash::{Hash as _, Hasher as _};
    let exe = Path::new("/proc/self/exe");
    let meta = fs::metadata(exe).map_err(io_err(exe))?;
    let mut hasher = std::hash::DefaultHasher::new();
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
        .hash(&mut hasher);
    let backend = backend.map_or_else(|| "auto".to_owned(), |b| b.to_string());
    Ok(format!("{:016x}-{backend}", hasher.finish()))
}

fn on_bpffs(path: &Path) -> Result<(), WarmError> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io_err(path)(io::Error::other(e)))?;
    // SAFETY: statfs into a zeroed struct, with a NUL-terminated path.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io_err(path)(io::Error::last_os_error()));
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        return Err(WarmError::NotBpffs(path.to_owned()));
    }
    Ok(())
}

/// Creates `path` (0700) unless it exists, and checks that it is a
/// directory of root's that nobody else can write.
fn private_dir(path: &Path) -> Result<(), WarmError> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(path)(e)),
    }
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(WarmError::NotPrivate(path.to_owned()));
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<File, WarmError> {
    File::open(path).map_err(io_err(path))
}

/// Takes an exclusive `flock` on `file` if nobody holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool, WarmError> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(io_err(path)(err))
}

/// Takes the lock on `file`, waiting up to `ATTACHED_WAIT` for its holder
/// (the previous run's detach holder) to go.
fn wait_lock(file: &File, path: &Path) -> Result<(), WarmError> {
    let started = Instant::now();
    while !try_lock(file, path)? {
        if started.elapsed() > ATTACHED_WAIT {
            return Err(WarmError::StillAttached(path.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let waited = started.elapsed();
    if waited > Duration::from_millis(1) {
        tracing::debug!("waited {waited:.1?} for the previous run's links to close");
    }
    Ok(())
}

/// Removes the other sets under `root` that no run is using: those of
/// other builds, which no run of this one will reopen.
fn remove_unused_siblings(root: &Path, ours: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path == ours {
            continue;
        }
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        if try_lock(&dir, &path).unwrap_or(false) {
            match fs::remove_dir_all(&path) {
                Ok(()) => tracing::debug!("removed the unused warm set {}", path.display()),
                Err(e) => tracing::debug!("cannot remove {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key names the backend asked for and is stable within a build.
    #[test]
    fn key_is_stable_and_names_the_backend() {
        let auto = key(None).unwrap();
        assert_eq!(auto, key(None).unwrap());
        assert!(auto.ends_with("-auto"), "{auto}");
        let tp = key(Some(Backend::TpBtf)).unwrap();
        assert_eq!(auto.split('-').next(), tp.split('-').next());
        assert_ne!(auto, tp);
    }

    /// A directory others can write is refused: its pins could be anyone's.
    #[test]
    fn a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("capprof-warm-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let owned_by_us = private_dir(&dir);
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            owned_by_us.unwrap();
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(private_dir(&dir), Err(WarmError::NotPrivate(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Not bpffs, no warm set.
    #[test]
    fn a_set_lives_only_on_bpffs() {
        let err = on_bpffs(&std::env::temp_dir()).unwrap_err();
        assert!(matches!(err, WarmError::NotBpffs(_)), "{err}");
    }
}
