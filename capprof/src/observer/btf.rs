//! What the running kernel offers, read from its BTF.

use std::path::Path;

use btf_rs::{Btf, Type};
use capprof_common::{config::CgroupNameOffsets, names};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Facts about the running kernel that choose and configure a backend.
#[derive(Debug, Clone, Default)]
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
}

#[derive(Debug, thiserror::Error)]
#[error("cannot parse {VMLINUX_BTF}: {0}")]
pub struct BtfError(pub String);

pub fn btf_present() -> bool {
    Path::new(VMLINUX_BTF).exists()
}

impl KernelBtf {
    pub fn read() -> Result<Self, BtfError> {
        let btf = Btf::from_file(VMLINUX_BTF).map_err(|e| BtfError(e.to_string()))?;
        let tracepoint = format!("btf_trace_{}", names::TRACEPOINT_NAME);
        let has = |name: &str| btf.resolve_ids_by_name(name).is_ok_and(|ids| !ids.is_empty());
        Ok(Self {
            has_cap_tracepoint: has(&tracepoint),
            has_cap_capable_func: btf
                .resolve_types_by_name(names::HOOK_FUNCTION)
                .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_)))),
            task_tgid_offset: member_offset(&btf, "task_struct", "tgid"),
            binprm_filename_offset: member_offset(&btf, "linux_binprm", "filename"),
            cgroup_name: cgroup_name_offsets(&btf),
        })
    }
}

fn cgroup_name_offsets(btf: &Btf) -> Option<CgroupNameOffsets> {
    Some(CgroupNameOffsets {
        task_cgroups: member_offset(btf, "task_struct", "cgroups")?,
        css_set_dfl_cgrp: member_offset(btf, "css_set", "dfl_cgrp")?,
        cgroup_kn: member_offset(btf, "cgroup", "kn")?,
        kernfs_node_name: member_offset(btf, "kernfs_node", "name")?,
        // Renamed to __parent in 6.15.
        kernfs_node_parent: member_offset(btf, "kernfs_node", "__parent")
            .or_else(|| member_offset(btf, "kernfs_node", "parent"))?,
        _pad: 0,
    })
}

/// Byte offset of `member` in `struct name`, looking through anonymous
/// unions and structs.
fn member_offset(btf: &Btf, name: &str, member: &str) -> Option<u32> {
    let types = btf.resolve_types_by_name(name).ok()?;
    let st = types.iter().find_map(|t| match t {
        Type::Struct(s) if !s.members.is_empty() => Some(s),
        _ => None,
    })?;
    find_member(btf, &st.members, member, 0).map(|bits| bits / 8)
}

fn find_member(btf: &Btf, members: &[btf_rs::Member], wanted: &str, base: u32) -> Option<u32> {
    for m in members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == wanted {
            return Some(base + m.bit_offset());
        }
        if name.is_empty() {
            // Anonymous struct/union: search inside it.
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(m) {
                if let Some(off) = find_member(btf, &inner.members, wanted, base + m.bit_offset()) {
                    return Some(off);
                }
            }
        }
    }
    None
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
    }
}
