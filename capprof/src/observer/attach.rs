//! Loading, attaching, detaching and pinning programs: one helper for every
//! program type capprof uses, so that each caller names a program and its
//! hook once.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, FExit, KProbe, Lsm, Program, ProgramError, TracePoint,
        fexit::{FExitLink, FExitLinkId},
        kprobe::{KProbeError, KProbeLink, KProbeLinkId},
        links::FdLink,
        lsm::{LsmLink, LsmLinkId},
        tp_btf::{BtfTracePointLink, BtfTracePointLinkId},
        trace_point::{TracePointLink, TracePointLinkId},
    },
};

/// Where a program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BTF tracepoint (`tp_btf`), by tracepoint name.
    TpBtf(&'static str),
    /// fexit on a kernel function.
    Fexit(&'static str),
    /// A kprobe or kretprobe (the program says which) on a kernel function.
    Kprobe(&'static str),
    /// A BPF-LSM hook, by hook name.
    Lsm(&'static str),
    /// A classic tracepoint, by category and name.
    TracePoint(&'static str, &'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the eBPF object lacks program {0}")]
    Missing(&'static str),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl AttachError {
    /// Why the kernel refused the program, in one line.
    pub fn refusal(&self) -> String {
        match self {
            AttachError::Missing(_) => self.to_string(),
            AttachError::Program { source, .. } => refusal(source),
        }
    }
}

/// Why the kernel refused a program, in one line.
pub fn refusal(err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            match log.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
                Some(last) => format!("the verifier refused the program ({io_error}): {last}"),
                None => format!("the kernel refused to load the program: {io_error}"),
            }
        }
        ProgramError::KProbeError(KProbeError::FileError { filename, io_error }) => {
            format!(
                "kprobes are not available ({}: {io_error})",
                filename.display()
            )
        }
        other => other
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// An attached program's link, until it is detached or pinned.
#[derive(Debug)]
pub struct Attached {
    pub name: &'static str,
    link: Link,
}

#[derive(Debug)]
enum Link {
    TpBtf(BtfTracePointLinkId),
    Fexit(FExitLinkId),
    Kprobe(KProbeLinkId),
    Lsm(LsmLinkId),
    TracePoint(TracePointLinkId),
}

/// Where programs are found by name: an object loaded now, or the
/// programs of a warm set reopened from bpffs (`warm`).
pub trait Programs {
    fn program_mut(&mut self, name: &str) -> Option<&mut Program>;
}

impl Programs for Ebpf {
    fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        Ebpf::program_mut(self, name)
    }
}

fn program<'a>(
    programs: &'a mut dyn Programs,
    name: &'static str,
) -> Result<&'a mut Program, AttachError> {
    programs.program_mut(name).ok_or(AttachError::Missing(name))
}

fn failed(name: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    move |source| AttachError::Program { name, source }
}

/// Loads program `name` for `hook`: the verifier runs here.
pub fn load(
    ebpf: &mut dyn Programs,
    btf: &Btf,
    name: &'static str,
    hook: Hook,
) -> Result<(), AttachError> {
    load_program(program(ebpf, name)?, btf, name, hook)
}

/// Loads one program, found by the caller.
fn load_program(
    prog: &mut Program,
    btf: &Btf,
    name: &'static str,
    hook: Hook,
) -> Result<(), AttachError> {
    match hook {
        Hook::TpBtf(tp) => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.load(tp, btf)),
        Hook::Fexit(func) => <&mut FExit>::try_from(prog).and_then(|p| p.load(func, btf)),
        Hook::Kprobe(_) => <&mut KProbe>::try_from(prog).and_then(|p| p.load()),
        Hook::Lsm(lsm) => <&mut Lsm>::try_from(prog).and_then(|p| p.load(lsm, btf)),
        Hook::TracePoint(..) => <&mut TracePoint>::try_from(prog).and_then(|p| p.load()),
    }
    .map_err(failed(name))
}

/// Attaches a loaded program to `hook`.
pub fn attach(
    ebpf: &mut dyn Programs,
    name: &'static str,
    hook: Hook,
) -> Result<Attached, AttachError> {
    let prog = program(ebpf, name)?;
    let link = match hook {
        Hook::TpBtf(_) => <&mut BtfTracePoint>::try_from(prog)
            .and_then(|p| p.attach())
            .map(Link::TpBtf),
        Hook::Fexit(_) => <&mut FExit>::try_from(prog)
            .and_then(|p| p.attach())
            .map(Link::Fexit),
        Hook::Kprobe(func) => <&mut KProbe>::try_from(prog)
            .and_then(|p| p.attach(func, 0))
            .map(Link::Kprobe),
        Hook::Lsm(_) => <&mut Lsm>::try_from(prog)
            .and_then(|p| p.attach())
            .map(Link::Lsm),
        Hook::TracePoint(category, tracepoint) => <&mut TracePoint>::try_from(prog)
            .and_then(|p| p.attach(category, tracepoint))
            .map(Link::TracePoint),
    }
    .map_err(failed(name))?;
    Ok(Attached { name, link })
}

/// What `load_concurrently` made of each program, by name.
pub type AttachResults = std::collections::HashMap<&'static str, Result<(), AttachError>>;

/// Loads the programs of `first` on a thread of their own and those of
/// `rest` on this one. The verifier runs in the loading thread, and the
/// backend's program alone costs it 80-130 ms here: verified side by side
/// with the hooks', the two lists take the longer one's time, not the sum.
pub fn load_concurrently(
    ebpf: &mut Ebpf,
    btf: &Btf,
    first: &[(&'static str, Hook)],
    rest: &[(&'static str, Hook)],
) -> AttachResults {
    let mut programs: std::collections::HashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut take = |list: &[(&'static str, Hook)]| -> Vec<_> {
        list.iter()
            .map(|&(name, hook)| (name, hook, programs.remove(name)))
            .collect()
    };
    let (first, rest) = (take(first), take(rest));
    let load_all = |list: Vec<(&'static str, Hook, Option<&mut Program>)>| -> Vec<_> {
        list.into_iter()
            .map(|(name, hook, prog)| {
                let loaded = prog
                    .ok_or(AttachError::Missing(name))
                    .and_then(|prog| load_program(prog, btf, name, hook));
                (name, loaded)
            })
            .collect::<Vec<_>>()
    };
    // Whichever thread takes `first` loads it: the spawned one, or this one
    // when no thread could start.
    let first = std::sync::Mutex::new(Some(first));
    let load_first = || {
        let taken = first.lock().ok().and_then(|mut f| f.take());
        taken.map(load_all).unwrap_or_default()
    };
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("verify".into())
            .spawn_scoped(scope, load_first);
        let mut loaded: AttachResults = load_all(rest).into_iter().collect();
        match spawned.map(|thread| thread.join()) {
            Ok(Ok(done)) => loaded.extend(done),
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => loaded.extend(load_first()),
        }
        loaded
    })
}

/// Attaches program `name`, which `load_concurrently` loaded (or failed to).
pub fn attach_loaded(
    ebpf: &mut dyn Programs,
    loaded: &mut AttachResults,
    name: &'static str,
    hook: Hook,
) -> Result<Attached, AttachError> {
    loaded
        .remove(name)
        .unwrap_or(Err(AttachError::Missing(name)))?;
    attach(ebpf, name, hook)
}

/// Loads program `name` and attaches it to `hook`.
pub fn load_and_attach(
    ebpf: &mut dyn Programs,
    btf: &Btf,
    name: &'static str,
    hook: Hook,
) -> Result<Attached, AttachError> {
    load(ebpf, btf, name, hook)?;
    attach(ebpf, name, hook)
}

/// Unloads program `name`, detaching whatever links it still has.
pub fn unload(ebpf: &mut dyn Programs, name: &'static str, hook: Hook) -> Result<(), AttachError> {
    let prog = program(ebpf, name)?;
    match hook {
        Hook::TpBtf(_) => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.unload()),
        Hook::Fexit(_) => <&mut FExit>::try_from(prog).and_then(|p| p.unload()),
        Hook::Kprobe(_) => <&mut KProbe>::try_from(prog).and_then(|p| p.unload()),
        Hook::Lsm(_) => <&mut Lsm>::try_from(prog).and_then(|p| p.unload()),
        Hook::TracePoint(..) => <&mut TracePoint>::try_from(prog).and_then(|p| p.unload()),
    }
    .map_err(failed(name))
}

impl Attached {
    /// Detaches the program (it stays loaded).
    pub fn detach(self, ebpf: &mut dyn Programs) -> Result<(), AttachError> {
        let name = self.name;
        let prog = program(ebpf, name)?;
        match self.link {
            Link::TpBtf(id) => <&mut BtfTracePoint>::try_from(prog).and_then(|p| p.detach(id)),
            Link::Fexit(id) => <&mut FExit>::try_from(prog).and_then(|p| p.detach(id)),
            Link::Kprobe(id) => <&mut KProbe>::try_from(prog).and_then(|p| p.detach(id)),
            Link::Lsm(id) => <&mut Lsm>::try_from(prog).and_then(|p| p.detach(id)),
            Link::TracePoint(id) => <&mut TracePoint>::try_from(prog).and_then(|p| p.detach(id)),
        }
        .map_err(failed(name))
    }

    /// Takes the link out of the program's keeping, to be dropped elsewhere.
    fn into_owned(self, ebpf: &mut dyn Programs) -> Result<OwnedLink, AttachError> {
        let name = self.name;
        let prog = program(ebpf, name)?;
        match self.link {
            Link::TpBtf(id) => <&mut BtfTracePoint>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(OwnedLink::TpBtf),
            Link::Fexit(id) => <&mut FExit>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(OwnedLink::Fexit),
            Link::Kprobe(id) => <&mut KProbe>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(OwnedLink::Kprobe),
            Link::Lsm(id) => <&mut Lsm>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(OwnedLink::Lsm),
            Link::TracePoint(id) => <&mut TracePoint>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(OwnedLink::TracePoint),
        }
        .map_err(failed(name))
    }

    /// Takes the link out of the program's keeping, to be pinned: it then
    /// outlives this process. kprobe links are not pinned: None. A classic
    /// tracepoint's is a perf-event link, which pins (and keeps its perf
    /// event open) where the kernel has `BPF_LINK_TYPE_PERF_EVENT` (5.15+);
    /// an older kernel's legacy attachment cannot be pinned: None.
    pub fn into_fd_link(self, ebpf: &mut dyn Programs) -> Result<Option<FdLink>, AttachError> {
        let name = self.name;
        let prog = program(ebpf, name)?;
        let link = match self.link {
            Link::TracePoint(id) => {
                let link = <&mut TracePoint>::try_from(prog)
                    .and_then(|p| p.take_link(id))
                    .map_err(failed(name))?;
                return Ok(FdLink::try_from(link).ok());
            }
            Link::TpBtf(id) => <&mut BtfTracePoint>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(FdLink::from),
            Link::Fexit(id) => <&mut FExit>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(FdLink::from),
            Link::Lsm(id) => <&mut Lsm>::try_from(prog)
                .and_then(|p| p.take_link(id))
                .map(FdLink::from),
            Link::Kprobe(_) => return Ok(None),
        }
        .map_err(failed(name))?;
        Ok(Some(link))
    }
}

/// A link taken out of its program: detached when dropped.
#[derive(Debug)]
#[allow(dead_code)] // Held only to be dropped.
enum OwnedLink {
    TpBtf(BtfTracePointLink),
    Fexit(FExitLink),
    Kprobe(KProbeLink),
    Lsm(LsmLink),
    TracePoint(TracePointLink),
}

/// Detaches every link at once, each on a thread of its own.
///
/// Closing a classic tracepoint's perf event, the last on its event, waits
/// for RCU grace periods (`perf_trace_event_unreg` calls
/// `tracepoint_synchronize_unregister`): 50-70 ms each on a busy machine.
/// One after the other, the four syscall hooks made `capprof run` wait
/// ~250 ms at exit; waits that run together share their grace periods.
/// Links that cannot be taken are left to go with the object.
pub fn detach_concurrently(ebpf: &mut dyn Programs, attached: Vec<Attached>) {
    let links: Vec<OwnedLink> = attached
        .into_iter()
        .filter_map(|a| a.into_owned(ebpf).ok())
        .collect();
    std::thread::scope(|scope| {
        for link in links {
            let spawned = std::thread::Builder::new()
                .name("detach".into())
                .spawn_scoped(scope, move || drop(link));
            // Without a thread, the link is dropped here, in turn.
            drop(spawned);
        }
    });
}

/// A forked process that holds a copy of some of this process's fds until
/// the `Holder` is dropped (or this process exits), and then exits. The
/// last close of those files is then its: links that this process drops
/// meanwhile detach on its time, not ours (see
/// `Observer::drop_in_background`). It closes every other fd at once, so
/// that it keeps no lock, pipe or output of ours open.
#[derive(Debug)]
pub struct Holder {
    /// The holder exits when it reads the end of this pipe.
    _release: OwnedFd,
}

impl Holder {
    /// Forks the holder of the fds that `keep` picks, given each open fd
    /// and what /proc/self/fd says it is (through a child that exits at
    /// once, so that the holder is nobody's child to reap), or None when
    /// it cannot.
    pub fn fork(keep: &dyn Fn(RawFd, &Path) -> bool) -> Option<Self> {
        // SAFETY: doing nothing is async-signal-safe.
        unsafe { Self::fork_then(keep, &|| {}) }
    }

    /// Like `fork`, and once released the holder calls `then` before it
    /// exits.
    ///
    /// # Safety
    /// `then` runs in a forked child of a threaded process: it may only
    /// make async-signal-safe calls (raw system calls), and must not
    /// allocate or take a lock.
    pub unsafe fn fork_then(
        keep: &dyn Fn(RawFd, &Path) -> bool,
        then: &(dyn Fn() + Sync),
    ) -> Option<Self> {
        let mut fds = [0; 2];
        // SAFETY: a valid array of two fds.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: pipe2 just opened both, and nothing else owns them.
        let (wait_end, release) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wait_fd = wait_end.as_raw_fd();
        // Decided before the fork: the child must not allocate.
        let to_close: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let fd: RawFd = entry.file_name().to_str()?.parse().ok()?;
                let target = std::fs::read_link(entry.path()).unwrap_or_default();
                (fd != wait_fd && !keep(fd, &target)).then_some(fd)
            })
            .collect();
        // SAFETY: the children call only fork, setsid, close, read and
        // _exit, which are async-signal-safe, as a fork of a threaded
        // process must, and `then`, whose caller promised the same.
        match unsafe { libc::fork() } {
            -1 => None,
            0 => unsafe {
                if libc::fork() == 0 {
                    // A session of its own: Ctrl-C on the terminal signals
                    // the whole foreground group, which must not take the
                    // holder (and what it was to detach) with it.
                    libc::setsid();
                    hold(wait_fd, &to_close);
                    then();
                }
                // The first child leaves at once; the holder leaves here.
                libc::_exit(0)
            },
            child => {
                let mut status = 0;
                // SAFETY: waiting for our own child, with a valid pointer.
                while unsafe { libc::waitpid(child, &mut status, 0) } == -1
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                }
                Some(Self { _release: release })
            }
        }
    }
}

/// Whether /proc/self/fd's `target` is a BPF link or a perf event (a
/// tracepoint or kprobe attached the legacy way): what detaches on close.
pub fn is_link(target: &Path) -> bool {
    matches!(
        target.to_str(),
        Some("anon_inode:bpf_link" | "anon_inode:[perf_event]")
    )
}

/// The holder: closes `to_close` (the pipe's write end among them) and
/// waits for the end of the pipe. Its caller then exits, closing what it
/// kept.
///
/// # Safety
/// Only in a forked child.
unsafe fn hold(wait_fd: RawFd, to_close: &[RawFd]) {
    // SAFETY: closing and reading fds this process owns.
    unsafe {
        for &fd in to_close {
            libc::close(fd);
        }
        let mut byte = 0u8;
        while libc::read(wait_fd, (&raw mut byte).cast(), 1) == -1
            && *libc::__errno_location() == libc::EINTR
        {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// A pipe's write end that this process drops stays open in the holder
    /// until the holder is dropped: only then does the read end see EOF.
    #[test]
    fn holder_keeps_files_open_until_dropped() {
        let (mut reader, writer) = std::io::pipe().unwrap();
        let kept = writer.as_raw_fd();
        let holder = Holder::fork(&|fd, _| fd == kept).expect("fork");
        drop(writer);
        // SAFETY: polling an fd we own, with a valid pollfd.
        let readable = |timeout_ms| unsafe {
            let mut pfd = libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            libc::poll(&mut pfd, 1, timeout_ms) == 1
        };
        assert!(!readable(200), "EOF while the holder holds the write end");
        drop(holder);
        assert!(readable(5_000), "no EOF after the holder was dropped");
        let mut rest = vec![];
        assert_eq!(reader.read_to_end(&mut rest).unwrap(), 0);
    }
}
