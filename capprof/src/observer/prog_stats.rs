//! What the kernel counts about capprof's own programs: `recursion_misses`
//! from `bpf_prog_info`, the runs it skipped because the program was already
//! running on that CPU (a capability check made, say, from an interrupt
//! that came while capprof's program ran, or by another BPF program that
//! capprof's own triggered). Each miss is a check nobody counted.
//!
//! aya 0.14's `ProgramInfo` keeps its `bpf_prog_info` private and has no
//! accessor for the field, so this module asks the kernel itself with
//! `BPF_OBJ_GET_INFO_BY_FD`, through `libc::syscall`.

use std::{
    io,
    mem::{offset_of, size_of},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
};

use aya_obj::generated::{bpf_cmd, bpf_prog_info};

/// The `info` member of `union bpf_attr`, BPF_OBJ_GET_INFO_BY_FD's
/// argument (include/uapi/linux/bpf.h).
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `recursion_misses` of the program behind `fd`: `Ok(None)` when the kernel
/// does not report it (before Linux 5.12).
pub fn recursion_misses(fd: BorrowedFd<'_>) -> io::Result<Option<u64>> {
    // SAFETY: bpf_prog_info is plain integers, valid when zeroed.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for this command,
    // and its size is passed: the kernel reads that many bytes and treats
    // the rest as zero. It writes at most `info_len` bytes to `info`, a live
    // buffer of that size, and the length it filled back into `attr`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &raw mut attr,
            size_of::<InfoByFd>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel fills what it knows of the struct and says how much.
    let known = attr.info_len as usize;
    let end = offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();
    Ok((known >= end).then_some(info.recursion_misses))
}

/// One capprof program loaded in the kernel, found by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedProgram {
    pub id: u32,
    /// The kernel's copy of the name, cut at 15 bytes.
    pub name: String,
    pub recursion_misses: Option<u64>,
}

/// Every program loaded on this host whose name says it is capprof's (this
/// process's and any other capprof's, a daemon's pinned ones included).
/// For `capprof doctor`.
pub fn capprof_programs() -> Vec<LoadedProgram> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| {
            let name = info.name_as_str()?.to_owned();
            if !name.starts_with("capprof_") {
                return None;
            }
            let recursion_misses = info
                .fd()
                .ok()
                .and_then(|fd| recursion_misses(fd.as_fd()).ok().flatten());
            Some(LoadedProgram {
                id: info.id(),
                name,
                recursion_misses,
            })
        })
        .collect()
}
