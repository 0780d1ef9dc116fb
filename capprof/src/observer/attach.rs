//! Loading, attaching, detaching and pinning programs: one helper for every
//! program type capprof uses, so that each caller names a program and its
//! hook once.

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

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, AttachError> {
    ebpf.program_mut(name).ok_or(AttachError::Missing(name))
}

fn failed(name: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    move |source| AttachError::Program { name, source }
}

/// Loads program `name` for `hook`: the verifier runs here.
pub fn load(ebpf: &mut Ebpf, btf: &Btf, name: &'static str, hook: Hook) -> Result<(), AttachError> {
    let prog = program(ebpf, name)?;
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
pub fn attach(ebpf: &mut Ebpf, name: &'static str, hook: Hook) -> Result<Attached, AttachError> {
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

/// Loads program `name` and attaches it to `hook`.
pub fn load_and_attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    hook: Hook,
) -> Result<Attached, AttachError> {
    load(ebpf, btf, name, hook)?;
    attach(ebpf, name, hook)
}

/// Unloads program `name`, detaching whatever links it still has.
pub fn unload(ebpf: &mut Ebpf, name: &'static str, hook: Hook) -> Result<(), AttachError> {
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
    pub fn detach(self, ebpf: &mut Ebpf) -> Result<(), AttachError> {
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
    fn into_owned(self, ebpf: &mut Ebpf) -> Result<OwnedLink, AttachError> {
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
    pub fn into_fd_link(self, ebpf: &mut Ebpf) -> Result<Option<FdLink>, AttachError> {
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
pub fn detach_concurrently(ebpf: &mut Ebpf, attached: Vec<Attached>) {
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
