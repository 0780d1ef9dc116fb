//! What each capability grants, how much a workload that holds it exposes
//! (the weights of the exposure score, see `score.rs`), and which ones are
//! escape-relevant: a compromised workload holding one of them alone has a
//! known way to reach the host or other containers.
//!
//! The descriptions follow capabilities(7); the weights are capprof's
//! judgement, documented here and in the book (docs/src/reference/report-rules.md) so that anyone can disagree
//! with a specific number.

use serde::Serialize;

use crate::capability::Cap;

/// One capability's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `CHOWN`, without the prefix.
    pub name: &'static str,
    /// The chance, in percent, that holding this capability alone lets a
    /// compromised workload escape its container or take over the host or
    /// its neighbours.
    pub weight: u8,
    /// Marked in the report: a known escape or host-takeover primitive.
    pub escape: bool,
    /// What it grants, in one sentence.
    pub grants: &'static str,
}

const fn e(name: &'static str, weight: u8, escape: bool, grants: &'static str) -> Entry {
    Entry {
        name,
        weight,
        escape,
        grants,
    }
}

/// Indexed by capability number (checked by a test against the kernel's
/// names in capprof-common).
const ENTRIES: [Entry; 41] = [
    e("CHOWN", 8, false, "Change the owner and group of any file."),
    e(
        "DAC_OVERRIDE",
        15,
        false,
        "Bypass read, write and execute permission checks on any file.",
    ),
    e(
        "DAC_READ_SEARCH",
        60,
        true,
        "Bypass read and search permission checks, and open files by handle (open_by_handle_at): the \"Shocker\" escape reads host files this way.",
    ),
    e(
        "FOWNER",
        8,
        false,
        "Act as the owner of any file: chmod, utimes, ACLs and extended attributes.",
    ),
    e(
        "FSETID",
        4,
        false,
        "Keep set-user-ID and set-group-ID bits when a file is changed.",
    ),
    e(
        "KILL",
        4,
        false,
        "Send signals to processes of other users.",
    ),
    e(
        "SETGID",
        8,
        false,
        "Set any group ID and supplementary groups; forge gids in socket credentials.",
    ),
    e(
        "SETUID",
        8,
        false,
        "Set any user ID; forge uids in socket credentials.",
    ),
    e(
        "SETPCAP",
        4,
        false,
        "Drop capabilities from the bounding set and raise inheritable ones; set securebits.",
    ),
    e(
        "LINUX_IMMUTABLE",
        5,
        false,
        "Set and clear the immutable and append-only file attributes.",
    ),
    e(
        "NET_BIND_SERVICE",
        1,
        false,
        "Bind sockets to ports below 1024.",
    ),
    e(
        "NET_BROADCAST",
        1,
        false,
        "Broadcast and listen to multicast (unused by the kernel).",
    ),
    e(
        "NET_ADMIN",
        40,
        true,
        "Configure interfaces, routes and firewall rules; opens the large netfilter and traffic-control attack surface, and with the host network, the host's.",
    ),
    e(
        "NET_RAW",
        12,
        false,
        "Open RAW and PACKET sockets: craft and spoof any packet on the container's network.",
    ),
    e(
        "IPC_LOCK",
        3,
        false,
        "Lock memory (mlock, mlockall) and use huge pages without limits.",
    ),
    e(
        "IPC_OWNER",
        5,
        false,
        "Bypass permission checks on System V IPC objects.",
    ),
    e(
        "SYS_MODULE",
        99,
        true,
        "Load and unload kernel modules: the kernel itself.",
    ),
    e(
        "SYS_RAWIO",
        90,
        true,
        "Raw I/O: ioperm and iopl, /dev/mem and /dev/kmem, raw SCSI commands.",
    ),
    e(
        "SYS_CHROOT",
        4,
        false,
        "Use chroot(2) and change mount namespaces with setns(2).",
    ),
    e(
        "SYS_PTRACE",
        70,
        true,
        "Trace and read or write the memory of any process it can see; with the host's PID namespace, the host's processes.",
    ),
    e("SYS_PACCT", 5, false, "Turn process accounting on and off."),
    e(
        "SYS_ADMIN",
        95,
        true,
        "Mount filesystems, administer namespaces, devices and much more: the \"new root\", and the usual way out of a container.",
    ),
    e(
        "SYS_BOOT",
        60,
        true,
        "Reboot, and load a new kernel with kexec_load.",
    ),
    e(
        "SYS_NICE",
        5,
        false,
        "Raise priorities, set real-time scheduling and the CPU affinity of any process.",
    ),
    e(
        "SYS_RESOURCE",
        10,
        false,
        "Override resource limits, quotas and reserved filesystem space.",
    ),
    e(
        "SYS_TIME",
        30,
        false,
        "Set the system clock, which no namespace isolates: the host's time.",
    ),
    e(
        "SYS_TTY_CONFIG",
        5,
        false,
        "Configure terminals and call vhangup.",
    ),
    e("MKNOD", 10, false, "Create device files with mknod(2)."),
    e("LEASE", 2, false, "Take leases on files it does not own."),
    e(
        "AUDIT_WRITE",
        2,
        false,
        "Write records to the kernel's audit log.",
    ),
    e(
        "AUDIT_CONTROL",
        30,
        false,
        "Turn kernel auditing on and off and change its rules.",
    ),
    e(
        "SETFCAP",
        10,
        false,
        "Set file capabilities; map uid 0 when creating a user namespace.",
    ),
    e(
        "MAC_OVERRIDE",
        50,
        true,
        "Override Mandatory Access Control (Smack).",
    ),
    e(
        "MAC_ADMIN",
        60,
        true,
        "Change Mandatory Access Control policy and labels (Smack, AppArmor, SELinux).",
    ),
    e(
        "SYSLOG",
        30,
        false,
        "Read and clear the kernel log, and see kernel addresses (a KASLR bypass).",
    ),
    e(
        "WAKE_ALARM",
        2,
        false,
        "Set alarms that wake the system up.",
    ),
    e(
        "BLOCK_SUSPEND",
        3,
        false,
        "Keep the system from suspending.",
    ),
    e(
        "AUDIT_READ",
        10,
        false,
        "Read the audit log through a multicast netlink socket.",
    ),
    e(
        "PERFMON",
        50,
        true,
        "Monitor performance with perf_event_open, the kernel included: a rich source of kernel leaks and exploits.",
    ),
    e(
        "BPF",
        80,
        true,
        "Load BPF programs and create maps; with PERFMON, read kernel memory.",
    ),
    e(
        "CHECKPOINT_RESTORE",
        20,
        false,
        "Checkpoint and restore: choose PIDs, read other processes' mappings.",
    ),
];

/// The entry of `cap`.
pub fn entry(cap: Cap) -> &'static Entry {
    &ENTRIES[cap.number() as usize]
}

/// Every capability with its entry, by number.
pub fn all() -> impl Iterator<Item = (Cap, &'static Entry)> {
    Cap::all().map(|cap| (cap, entry(cap)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_capability_in_kernel_order() {
        assert_eq!(ENTRIES.len(), Cap::all().count());
        for (cap, entry) in all() {
            assert_eq!(entry.name, cap.short_name());
            assert!((1..=99).contains(&entry.weight), "{cap}");
            assert!(entry.grants.ends_with('.'), "{cap}");
        }
        let escape: Vec<&str> = all()
            .filter(|(_, e)| e.escape)
            .map(|(_, e)| e.name)
            .collect();
        for name in [
            "SYS_ADMIN",
            "SYS_PTRACE",
            "SYS_MODULE",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "SYS_RAWIO",
            "BPF",
            "PERFMON",
        ] {
            assert!(escape.contains(&name), "{name} is escape-relevant");
        }
        // Every escape-relevant capability weighs more than any other.
        let min_escape = all().filter(|(_, e)| e.escape).map(|(_, e)| e.weight).min();
        let max_other = all()
            .filter(|(_, e)| !e.escape)
            .map(|(_, e)| e.weight)
            .max();
        assert!(min_escape > max_other, "{min_escape:?} {max_other:?}");
    }
}
