//! What the running kernel offers, read from its BTF.
//!
//! capprof needs a handful of facts from the 5–6 MB of vmlinux BTF: whether
//! two names exist, and the offsets of about a dozen struct members. Building every
//! type (btf-rs, or aya's own parse) costs tens to hundreds of milliseconds
//! at every start; this reader makes one pass over the raw type section that
//! only records where each type starts, then decodes just the structs it is
//! asked about. BTF is a header, a flat array of variable-length type
//! records (type id = index + 1) and a string section
//! (Documentation/bpf/btf.rst).

use std::path::Path;

use capprof_common::{
    config::{CgroupNameOffsets, CredOffsets},
    names,
    syscalls::SyscallOffsets,
};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Facts about the running kernel that choose and configure a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelBtf {
    /// The `capability:cap_capable` tracepoint (Linux 6.14+).
    pub has_cap_tracepoint: bool,
    /// `cap_capable` is a function in BTF (fexit needs that).
    pub has_cap_capable_func: bool,
    /// Offset of `task_struct.tgid`, for following forks.
    pub task_tgid_offset: Option<u32>,
    /// Offset of `linux_binprm.filename`, for naming executables.
    pub binprm_filename_offset: Option<u32>,
    /// The path from a task to its cgroup's name.
    pub cgroup_name: Option<CgroupNameOffsets>,
    /// What the syscall hooks read: the network namespace's sysctls, the
    /// task's capability sets, a descriptor's socket.
    pub syscalls: SyscallOffsets,
    /// What tells borrowed credentials and the target user namespace.
    pub creds: Option<CredOffsets>,
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {VMLINUX_BTF}: {0}")]
    Read(#[source] std::io::Error),
    #[error("cannot parse {VMLINUX_BTF}: {0}")]
    Malformed(&'static str),
    #[error("cannot parse {VMLINUX_BTF}: unknown BTF kind {kind} at byte {at}")]
    UnknownKind { kind: u32, at: usize },
    #[error("cannot parse {VMLINUX_BTF}: {0}")]
    Aya(#[source] aya::BtfError),
}

pub fn btf_present() -> bool {
    Path::new(VMLINUX_BTF).exists()
}

/// Reads the raw vmlinux BTF, to be handed to [`KernelBtf::parse`] and to
/// aya without reading the file twice.
pub fn read_vmlinux() -> Result<Vec<u8>, BtfError> {
    std::fs::read(VMLINUX_BTF).map_err(BtfError::Read)
}

impl KernelBtf {
    pub fn read() -> Result<Self, BtfError> {
        Self::parse(&read_vmlinux()?)
    }

    /// The facts, from raw BTF in this machine's byte order.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let tracepoint = format!("btf_trace_{}", names::TRACEPOINT_NAME);
        let wanted: Vec<&str> = WANTED
            .iter()
            .copied()
            .chain([tracepoint.as_str()])
            .collect();
        let btf = RawBtf::parse(data, &wanted)?;
        Ok(Self {
            has_cap_tracepoint: btf.ids_named(&tracepoint).next().is_some(),
            has_cap_capable_func: btf
                .ids_named(names::HOOK_FUNCTION)
                .any(|id| btf.header(id).is_some_and(|h| h.kind() == kind::FUNC)),
            task_tgid_offset: btf.member_offset("task_struct", "tgid"),
            binprm_filename_offset: btf.member_offset("linux_binprm", "filename"),
            cgroup_name: cgroup_name_offsets(&btf),
            syscalls: syscall_offsets(&btf),
            creds: cred_offsets(&btf),
        })
    }
}

/// The struct and function names `KernelBtf::parse` looks up, besides the
/// tracepoint's typedef.
const WANTED: &[&str] = &[
    names::HOOK_FUNCTION,
    "task_struct",
    "linux_binprm",
    "css_set",
    "cgroup",
    "kernfs_node",
    // The syscall hooks' (`syscall_offsets`).
    "nsproxy",
    "net",
    "netns_ipv4",
    "ping_group_range",
    "cred",
    "files_struct",
    "fdtable",
    "file",
    "socket",
    "sock",
    // Borrowed credentials and target user namespaces (`cred_offsets`).
    "user_namespace",
];

/// The syscall hooks' offsets; each is u32::MAX when its member is missing
/// or is a bitfield.
fn syscall_offsets(btf: &RawBtf<'_>) -> SyscallOffsets {
    syscall_offsets_from(|name, member| btf.plain_member_offset(name, member))
}

fn cred_offsets(btf: &RawBtf<'_>) -> Option<CredOffsets> {
    cred_offsets_from(|name, member| btf.member_offset(name, member))
}

fn cgroup_name_offsets(btf: &RawBtf<'_>) -> Option<CgroupNameOffsets> {
    cgroup_name_offsets_from(|name, member| btf.member_offset(name, member))
}

/// Which members the syscall hooks read, given `at(struct, member)`; the
/// tests give the reference reader's offsets to the same table.
fn syscall_offsets_from(at: impl Fn(&str, &str) -> Option<u32>) -> SyscallOffsets {
    let or_max = |name: &str, member: &str| at(name, member).unwrap_or(u32::MAX);
    let ping_range = at("netns_ipv4", "ping_group_range")
        .zip(at("ping_group_range", "range"))
        .map_or(u32::MAX, |(a, b)| a + b);
    SyscallOffsets {
        task_nsproxy: or_max("task_struct", "nsproxy"),
        nsproxy_net_ns: or_max("nsproxy", "net_ns"),
        net_ipv4: or_max("net", "ipv4"),
        ipv4_prot_sock: or_max("netns_ipv4", "sysctl_ip_prot_sock"),
        ipv4_ping_range: ping_range,
        task_cred: or_max("task_struct", "cred"),
        cred_cap_permitted: or_max("cred", "cap_permitted"),
        cred_cap_effective: or_max("cred", "cap_effective"),
        cred_egid: or_max("cred", "egid"),
        task_files: or_max("task_struct", "files"),
        files_fdt: or_max("files_struct", "fdt"),
        fdt_max_fds: or_max("fdtable", "max_fds"),
        fdt_fd: or_max("fdtable", "fd"),
        file_private_data: or_max("file", "private_data"),
        socket_type: or_max("socket", "type"),
        socket_sk: or_max("socket", "sk"),
        sock_protocol: or_max("sock", "sk_protocol"),
        cred_cap_inheritable: or_max("cred", "cap_inheritable"),
        cred_cap_bset: or_max("cred", "cap_bset"),
        _pad: 0,
    }
}

fn cred_offsets_from(at: impl Fn(&str, &str) -> Option<u32>) -> Option<CredOffsets> {
    Some(CredOffsets {
        task_real_cred: at("task_struct", "real_cred")?,
        cred_user_ns: at("cred", "user_ns")?,
        user_ns_level: at("user_namespace", "level")?,
        user_ns_parent: at("user_namespace", "parent")?,
    })
}

fn cgroup_name_offsets_from(at: impl Fn(&str, &str) -> Option<u32>) -> Option<CgroupNameOffsets> {
    Some(CgroupNameOffsets {
        task_cgroups: at("task_struct", "cgroups")?,
        css_set_dfl_cgrp: at("css_set", "dfl_cgrp")?,
        cgroup_kn: at("cgroup", "kn")?,
        kernfs_node_name: at("kernfs_node", "name")?,
        // Renamed to __parent in 6.15.
        kernfs_node_parent: at("kernfs_node", "__parent")
            .or_else(|| at("kernfs_node", "parent"))?,
        _pad: 0,
    })
}

/// BTF kinds (include/uapi/linux/btf.h).
mod kind {
    pub const INT: u32 = 1;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const DECL_TAG: u32 = 17;
    pub const ENUM64: u32 = 19;
}

const MAGIC: u16 = 0xeb9f;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_HEADER: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER: usize = 12;

/// `struct btf_type` of one type.
#[derive(Debug, Clone, Copy)]
struct TypeHeader {
    info: u32,
}

impl TypeHeader {
    fn kind(self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(self) -> bool {
        self.info >> 31 != 0
    }
}

/// The raw sections, and where each type's record starts.
struct RawBtf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of type id `i + 1`.
    starts: Vec<u32>,
    /// The types called one of the names asked for, in id order.
    index: Vec<(String, u32)>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> RawBtf<'a> {
    /// Parses the sections and indexes the types called one of `wanted`.
    fn parse(data: &'a [u8], wanted: &[&str]) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        let magic = data.get(..2).map(|m| u16::from_ne_bytes([m[0], m[1]]));
        if magic != Some(MAGIC) {
            return Err(bad("not BTF in this machine's byte order"));
        }
        let field = |i: usize| {
            u32_at(data, 4 + 4 * i)
                .map(|v| v as usize)
                .ok_or_else(|| bad("short header"))
        };
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        let section = |off: usize, len: usize, what: &'static str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| data.get(range))
                .ok_or_else(|| bad(what))
        };
        let types = section(type_off, type_len, "type section out of bounds")?;
        let strings = section(str_off, str_len, "string section out of bounds")?;
        let mut starts = Vec::with_capacity(types.len() / 32);
        let mut index = vec![];
        let mut at = 0;
        while at < types.len() {
            let (Some(name_off), Some(info)) = (u32_at(types, at), u32_at(types, at + 4)) else {
                return Err(bad("truncated type"));
            };
            let header = TypeHeader { info };
            let vlen = header.vlen();
            let extra = match header.kind() {
                kind::INT | kind::VAR | kind::DECL_TAG => 4,
                kind::ARRAY => 12,
                kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * vlen,
                kind::ENUM | kind::FUNC_PROTO => 8 * vlen,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT,
                // TYPE_TAG.
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(BtfError::UnknownKind { kind: other, at }),
            };
            starts.push(at as u32);
            if name_off != 0 {
                // Compare in place, name and terminator, without scanning
                // for the NUL.
                let rest = strings.get(name_off as usize..).unwrap_or_default();
                for name in wanted {
                    if rest.get(name.len()) == Some(&0) && rest.starts_with(name.as_bytes()) {
                        index.push((name.to_string(), starts.len() as u32));
                    }
                }
            }
            at += TYPE_HEADER + extra;
        }
        if at != types.len() {
            return Err(bad("truncated type"));
        }
        Ok(Self {
            types,
            strings,
            starts,
            index,
        })
    }

    fn record(&self, id: u32) -> Option<&'a [u8]> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)? as usize;
        self.types.get(start..)
    }

    fn header(&self, id: u32) -> Option<TypeHeader> {
        Some(TypeHeader {
            info: u32_at(self.record(id)?, 4)?,
        })
    }

    /// The NUL-terminated name at `off`, without the NUL.
    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    /// Ids of every type called `name`, in id order.
    fn ids_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = u32> + 's {
        self.index
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, id)| *id)
    }

    /// Byte offset of `member` in `struct name` (the first such struct with
    /// members), looking through anonymous unions and structs.
    fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        self.member_bits(name, member).map(|(bits, _)| bits / 8)
    }

    /// Like `member_offset`, but None for a bitfield (`sock.sk_protocol`
    /// was one before 5.6), which a byte offset cannot address.
    fn plain_member_offset(&self, name: &str, member: &str) -> Option<u32> {
        match self.member_bits(name, member)? {
            (bits, 0) if bits % 8 == 0 => Some(bits / 8),
            _ => None,
        }
    }

    /// Bit offset and bitfield size (0 for a plain member) of `member`.
    fn member_bits(&self, name: &str, member: &str) -> Option<(u32, u32)> {
        let id = self.ids_named(name).find(|&id| {
            self.header(id)
                .is_some_and(|h| h.kind() == kind::STRUCT && h.vlen() > 0)
        })?;
        self.find_member(id, member.as_bytes(), 0, 0)
    }

    /// Bit offset of `wanted` in the struct or union `id`, plus `base`, and
    /// its bitfield size.
    fn find_member(&self, id: u32, wanted: &[u8], base: u32, depth: u32) -> Option<(u32, u32)> {
        let header = self.header(id)?;
        if !matches!(header.kind(), kind::STRUCT | kind::UNION) || depth > 32 {
            return None;
        }
        let rec = self.record(id)?;
        for i in 0..header.vlen() {
            let at = TYPE_HEADER + i * MEMBER;
            let (name_off, ty, offset) =
                (u32_at(rec, at)?, u32_at(rec, at + 4)?, u32_at(rec, at + 8)?);
            // With kind_flag, the top 8 bits hold a bitfield's size.
            let (bit_offset, bitfield) = if header.kind_flag() {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            let name = self.name(name_off);
            if name == wanted {
                return Some((base + bit_offset, bitfield));
            }
            // Anonymous struct/union: search inside it.
            if name.is_empty()
                && let Some(off) = self.find_member(ty, wanted, base + bit_offset, depth + 1)
            {
                return Some(off);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF: every kernel capprof supports has it.
    #[test]
    fn reads_running_kernel_btf() {
        if !btf_present() {
            eprintln!("skipped: this kernel has no {VMLINUX_BTF}");
            return;
        }
        let k = KernelBtf::read().unwrap();
        assert!(k.has_cap_capable_func);
        let tgid = k.task_tgid_offset.expect("task_struct.tgid");
        // tgid lives well inside task_struct on every x86_64 build.
        assert!(tgid > 1000 && tgid < 8192, "{tgid}");
        assert!(k.binprm_filename_offset.is_some());
        assert!(k.cgroup_name.is_some());
        // Every offset the syscall hooks read is found.
        let o = k.syscalls;
        let all = [
            o.task_nsproxy,
            o.nsproxy_net_ns,
            o.net_ipv4,
            o.ipv4_prot_sock,
            o.ipv4_ping_range,
            o.task_cred,
            o.cred_cap_permitted,
            o.cred_cap_effective,
            o.cred_egid,
            o.task_files,
            o.files_fdt,
            o.fdt_max_fds,
            o.fdt_fd,
            o.file_private_data,
            o.socket_type,
            o.socket_sk,
            o.sock_protocol,
            o.cred_cap_inheritable,
            o.cred_cap_bset,
        ];
        assert!(all.iter().all(|&off| off != u32::MAX), "{o:?}");
        let creds = k.creds.expect("cred offsets");
        // real_cred comes just before cred in task_struct.
        assert!(creds.task_real_cred > tgid, "{creds:?}");
        assert_ne!(creds.user_ns_level, creds.user_ns_parent);
    }

    /// The same facts as btf-rs's full parse, which capprof used before.
    #[test]
    fn agrees_with_btf_rs() {
        if !btf_present() {
            eprintln!("skipped: this kernel has no {VMLINUX_BTF}");
            return;
        }
        assert_eq!(KernelBtf::read().unwrap(), btf_rs_reference::read());
    }

    /// Missing names and members are None, not errors.
    #[test]
    fn absent_things_are_none() {
        if !btf_present() {
            eprintln!("skipped: this kernel has no {VMLINUX_BTF}");
            return;
        }
        let data = read_vmlinux().unwrap();
        let btf = RawBtf::parse(&data, &["task_struct", "task_struc"]).unwrap();
        assert_eq!(btf.member_offset("task_struct", "no_such_member"), None);
        assert_eq!(btf.member_offset("no_such_struct", "tgid"), None);
        assert_eq!(btf.ids_named("no_such_name").next(), None);
        // A prefix of a real name is not that name.
        assert_eq!(btf.ids_named("task_struc").next(), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(b"").is_err());
        assert!(KernelBtf::parse(&[0u8; 64]).is_err());
        // A valid header whose sections lie past the end.
        let mut h = vec![];
        h.extend_from_slice(&MAGIC.to_ne_bytes());
        h.extend_from_slice(&[1, 0]);
        for v in [24u32, 0, 1000, 1000, 10] {
            h.extend_from_slice(&v.to_ne_bytes());
        }
        assert!(KernelBtf::parse(&h).is_err());
    }

    /// The previous implementation, on btf-rs, kept as the reference.
    mod btf_rs_reference {
        use btf_rs::{Btf, Type};

        use super::super::*;

        pub fn read() -> KernelBtf {
            let btf = Btf::from_file(VMLINUX_BTF).unwrap();
            let tracepoint = format!("btf_trace_{}", names::TRACEPOINT_NAME);
            let has = |name: &str| {
                btf.resolve_ids_by_name(name)
                    .is_ok_and(|ids| !ids.is_empty())
            };
            KernelBtf {
                has_cap_tracepoint: has(&tracepoint),
                has_cap_capable_func: btf
                    .resolve_types_by_name(names::HOOK_FUNCTION)
                    .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_)))),
                task_tgid_offset: member_offset(&btf, "task_struct", "tgid"),
                binprm_filename_offset: member_offset(&btf, "linux_binprm", "filename"),
                cgroup_name: cgroup_name_offsets_from(|name, member| {
                    member_offset(&btf, name, member)
                }),
                syscalls: syscall_offsets_from(|name, member| member_offset(&btf, name, member)),
                creds: cred_offsets_from(|name, member| member_offset(&btf, name, member)),
            }
        }

        fn member_offset(btf: &Btf, name: &str, member: &str) -> Option<u32> {
            let types = btf.resolve_types_by_name(name).ok()?;
            let st = types.iter().find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })?;
            find_member(btf, &st.members, member, 0).map(|bits| bits / 8)
        }

        fn find_member(
            btf: &Btf,
            members: &[btf_rs::Member],
            wanted: &str,
            base: u32,
        ) -> Option<u32> {
            for m in members {
                let name = btf.resolve_name(m).unwrap_or_default();
                if name == wanted {
                    return Some(base + m.bit_offset());
                }
                if name.is_empty()
                    && let Ok(Type::Struct(inner) | Type::Union(inner)) =
                        btf.resolve_chained_type(m)
                    && let Some(off) =
                        find_member(btf, &inner.members, wanted, base + m.bit_offset())
                {
                    return Some(off);
                }
            }
            None
        }
    }
}
