//! What no capability check shows, in a profile, and what each export
//! target makes of it (the records come from capprof-ebpf/src/syscalls.rs).
//!
//! - `conditional`: operations that made no check only because a sysctl of
//!   the container's network namespace allowed them: a bind below 1024
//!   (`CAP_NET_BIND_SERVICE`, `net.ipv4.ip_unprivileged_port_start`) and an
//!   ICMP datagram socket (`CAP_NET_RAW`, `net.ipv4.ping_group_range`; the
//!   program falls back to a raw socket where the range shuts it out).
//!   They are not on the allowlist: an export adds them for a target that
//!   leaves the kernel's defaults, and leaves them out for one that relaxes
//!   the sysctl as the recording's namespace did (`TargetSysctls`).
//! - `kept`: capabilities a process kept through capset(), which makes no
//!   check for them. They are on the allowlist, because the capset() fails
//!   without them, but apart from `required`: nothing was seen to exercise
//!   them.
//! - `transient`: capabilities a capset() kept that the same process lost
//!   at its next exec (a non-root program with no file or ambient
//!   capabilities gets none). `setpriv --reuid=1000 … CMD` raises its whole
//!   effective set after setresuid() and execs CMD, which loses all of it.
//!   A check made between the capset() and the exec is recorded as a need
//!   of its own, so what is left was never used: not on the allowlist.
//!   `minimize` still tries them, for a program whose capset() asks for a
//!   fixed set and fails without it.

use std::collections::{BTreeMap, BTreeSet};

use capprof_common::syscalls::PROT_SOCK;
use serde::{Deserialize, Serialize};

use crate::{MAX_EVIDENCE, capability::Cap};

/// A sysctl of the network namespace that can stand in for a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Sysctl {
    /// Binds below it need `CAP_NET_BIND_SERVICE` (kernel default 1024).
    #[serde(rename = "net.ipv4.ip_unprivileged_port_start")]
    UnprivilegedPortStart,
    /// The groups that may open ICMP datagram sockets (kernel default
    /// `1 0`, nobody); a program outside it needs a raw socket, `CAP_NET_RAW`.
    #[serde(rename = "net.ipv4.ping_group_range")]
    PingGroupRange,
}

impl Sysctl {
    pub fn name(self) -> &'static str {
        match self {
            Sysctl::UnprivilegedPortStart => "net.ipv4.ip_unprivileged_port_start",
            Sysctl::PingGroupRange => "net.ipv4.ping_group_range",
        }
    }

    /// The capability a namespace with the kernel's default needs instead.
    pub fn capability(self) -> Cap {
        Cap::from_number(match self {
            Sysctl::UnprivilegedPortStart => 10, // CAP_NET_BIND_SERVICE
            Sysctl::PingGroupRange => 13,        // CAP_NET_RAW
        })
        .expect("both capabilities are known")
    }
}

/// Who made an operation the profile reports without a capability check.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OperationEvidence {
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    pub pid: u32,
    pub uid: u32,
    /// The effective gid: what `ping_group_range` is compared with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// An operation that needs `capability` wherever `sysctl` keeps the
/// kernel's default, and that made no check where it was recorded because
/// the sysctl was `value` there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conditional {
    pub capability: Cap,
    /// `bind tcp port 80`, `icmp datagram socket`, …
    pub operation: String,
    pub sysctl: Sysctl,
    /// The sysctl as /proc/sys shows it in the container's network
    /// namespace (`0`, `0 2147483647`), read when the operation was made;
    /// `unknown` when it could not be read.
    pub value: String,
    /// For a bind, the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub evidence: Vec<OperationEvidence>,
    /// Some caller made the operation without `capability` in its
    /// effective set although the runtime had granted it (it was in the
    /// bounding set): a non-root process with no file or ambient
    /// capability. Granting the capability cannot help it where the
    /// sysctl keeps the kernel's default: a container's add list reaches a
    /// non-root process only through ambient capabilities, which Docker,
    /// containerd and CRI-O never set (kubernetes#56374, moby#8460). The
    /// target must relax the sysctl instead. False when unknown (a record
    /// from before capprof read it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_capability: bool,
}

/// Why a capability was kept: the set it was left in, or, for
/// `CAP_SETPCAP`, `inheritable` when the call added to the inheritable set
/// beyond the old permitted set, which takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CapSet {
    Permitted,
    Effective,
    Inheritable,
}

/// A capability a process asked to keep through capset().
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub capability: Cap,
    pub sets: BTreeSet<CapSet>,
    pub evidence: Vec<OperationEvidence>,
}

/// A capability a capset() kept and the same process lost at its next
/// exec, with no check of it in between: nothing needed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transient {
    pub capability: Cap,
    /// Who kept it through capset().
    pub evidence: Vec<OperationEvidence>,
    /// The programs they exec'd, which lost it.
    pub lost_at_exec_of: Vec<String>,
}

/// What the syscall hooks found for one profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub conditional: Vec<Conditional>,
    pub kept: Vec<Kept>,
    pub transient: Vec<Transient>,
}

fn merge_evidence(into: &mut Vec<OperationEvidence>, more: &[OperationEvidence]) {
    let mut all: BTreeSet<OperationEvidence> = into.drain(..).collect();
    all.extend(more.iter().cloned());
    *into = all.into_iter().take(MAX_EVIDENCE).collect();
}

/// `a` and `b` as one list: one entry per (capability, operation, sysctl,
/// value), sorted, evidence merged.
pub fn merge_conditional(a: &[Conditional], b: &[Conditional]) -> Vec<Conditional> {
    let mut by_key: BTreeMap<(Cap, Sysctl, Option<u16>, String, String), Conditional> =
        BTreeMap::new();
    for c in a.iter().chain(b) {
        let key = (
            c.capability,
            c.sysctl,
            c.port,
            c.operation.clone(),
            c.value.clone(),
        );
        match by_key.get_mut(&key) {
            Some(acc) => {
                merge_evidence(&mut acc.evidence, &c.evidence);
                acc.without_capability |= c.without_capability;
            }
            None => {
                by_key.insert(key, c.clone());
            }
        }
    }
    by_key.into_values().collect()
}

/// `a` and `b` as one list, one entry per capability.
pub fn merge_kept(a: &[Kept], b: &[Kept]) -> Vec<Kept> {
    let mut by_cap: BTreeMap<Cap, Kept> = BTreeMap::new();
    for k in a.iter().chain(b) {
        match by_cap.get_mut(&k.capability) {
            Some(acc) => {
                acc.sets.extend(k.sets.iter().copied());
                merge_evidence(&mut acc.evidence, &k.evidence);
            }
            None => {
                by_cap.insert(k.capability, k.clone());
            }
        }
    }
    by_cap.into_values().collect()
}

/// `a` and `b` as one list, one entry per capability, without the
/// capabilities `kept` holds: kept anywhere is kept.
pub fn merge_transient(a: &[Transient], b: &[Transient], kept: &[Kept]) -> Vec<Transient> {
    let mut by_cap: BTreeMap<Cap, Transient> = BTreeMap::new();
    for t in a.iter().chain(b) {
        if kept.iter().any(|k| k.capability == t.capability) {
            continue;
        }
        match by_cap.get_mut(&t.capability) {
            Some(acc) => {
                merge_evidence(&mut acc.evidence, &t.evidence);
                let mut programs: BTreeSet<String> = acc.lost_at_exec_of.drain(..).collect();
                programs.extend(t.lost_at_exec_of.iter().cloned());
                acc.lost_at_exec_of = programs.into_iter().take(MAX_EVIDENCE).collect();
            }
            None => {
                by_cap.insert(t.capability, t.clone());
            }
        }
    }
    by_cap.into_values().collect()
}

/// What a runtime sets in a container's network namespace, for the two
/// sysctls that stand in for a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TargetSysctls {
    /// Who has these values, for comments: "docker (not with --network
    /// host)", "a runtime that keeps the kernel's default", …
    #[serde(skip)]
    pub source: &'static str,
    pub ip_unprivileged_port_start: u32,
    /// `[low, high]`; empty when low > high.
    pub ping_group_range: [u32; 2],
    /// Whether the target raises what it grants into a non-root process's
    /// ambient set (systemd's `AmbientCapabilities=`), so that granting a
    /// capability reaches a caller that did not hold it. No container
    /// runtime does.
    #[serde(skip)]
    pub grants_ambient: bool,
}

impl TargetSysctls {
    /// What the kernel gives a new network namespace, and what runc,
    /// CRI-O, containerd 1.x's CRI (`enable_unprivileged_ports` and
    /// `enable_unprivileged_icmp` are off) and systemd units leave.
    pub const KERNEL: Self = Self {
        source: "a runtime that keeps the kernel's default",
        ip_unprivileged_port_start: PROT_SOCK as u32,
        ping_group_range: [1, 0],
        grants_ambient: false,
    };
    /// Docker Engine, and so compose: every container network namespace it
    /// creates (not `--network host`, which is the host's own) gets
    /// `ip_unprivileged_port_start=0` and `ping_group_range=0 2147483647`
    /// (checked on this machine's engine: see the book, docs/src/reference/profile.md).
    pub const DOCKER: Self = Self {
        source: "docker (not with --network host)",
        ip_unprivileged_port_start: 0,
        ping_group_range: [0, 2_147_483_647],
        grants_ambient: false,
    };
    /// Podman 4.3, checked on this machine: it leaves
    /// `ip_unprivileged_port_start` at 1024 and sets `ping_group_range` to
    /// `0 0` (containers.conf `default_sysctls`): only gid 0 may open ICMP
    /// datagram sockets.
    pub const PODMAN: Self = Self {
        source: "podman 4",
        ip_unprivileged_port_start: PROT_SOCK as u32,
        ping_group_range: [0, 0],
        grants_ambient: false,
    };

    /// Whether `c` goes through without its capability under these values.
    pub fn allows(&self, c: &Conditional) -> bool {
        match c.sysctl {
            Sysctl::UnprivilegedPortStart => c
                .port
                .is_some_and(|port| port as u32 >= self.ip_unprivileged_port_start),
            Sysctl::PingGroupRange => {
                let [low, high] = self.ping_group_range;
                !c.evidence.is_empty()
                    && c.evidence
                        .iter()
                        .all(|e| e.gid.is_some_and(|gid| low <= gid && gid <= high))
            }
        }
    }

    /// The value as /proc/sys shows it.
    pub fn value(&self, sysctl: Sysctl) -> String {
        match sysctl {
            Sysctl::UnprivilegedPortStart => self.ip_unprivileged_port_start.to_string(),
            Sysctl::PingGroupRange => {
                format!("{} {}", self.ping_group_range[0], self.ping_group_range[1])
            }
        }
    }
}

/// The user's say on what the target runtime sets (`--target-sysctls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SysctlsChoice {
    /// It relaxes them as Docker does: `ip_unprivileged_port_start=0`,
    /// `ping_group_range=0 2147483647`. Conditional capabilities stay out.
    Relaxed,
    /// It leaves the kernel's defaults (1024, `1 0`). Conditional
    /// capabilities are added.
    Kernel,
}

impl SysctlsChoice {
    pub fn sysctls(self) -> TargetSysctls {
        match self {
            SysctlsChoice::Relaxed => TargetSysctls {
                source: "a target that relaxes them as Docker does (--target-sysctls relaxed)",
                ..TargetSysctls::DOCKER
            },
            SysctlsChoice::Kernel => TargetSysctls {
                source: "a target that keeps the kernel's default (--target-sysctls kernel)",
                ..TargetSysctls::KERNEL
            },
        }
    }
}

/// The conditional capabilities of a profile, decided for one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Needed there and not on the allowlist: to add, with why ("bind tcp
    /// port 80 made no capability check where …").
    pub added: Vec<(Cap, String)>,
    /// Not needed there (the target relaxes the sysctl), with why.
    pub left_out: Vec<(Cap, String)>,
    /// Sysctls the target must relax, because a caller that needs them did
    /// not hold the capability and no grant can reach it
    /// (`Conditional::without_capability`).
    pub relax: Vec<SysctlSetting>,
}

/// A value of one of the sysctls, typed: which sysctl it is follows from
/// it, so a value can never be given to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlValue {
    /// `ip_unprivileged_port_start`: binds from this port up need no
    /// capability.
    PortStart(u16),
    /// `ping_group_range`: the gids, first and last, that may open ICMP
    /// datagram sockets.
    GroupRange(u32, u32),
}

impl SysctlValue {
    pub fn sysctl(self) -> Sysctl {
        match self {
            SysctlValue::PortStart(_) => Sysctl::UnprivilegedPortStart,
            SysctlValue::GroupRange(..) => Sysctl::PingGroupRange,
        }
    }

    /// A value that lets through everything both do: the lower port start,
    /// the range that spans both. Values of two sysctls are not joined:
    /// the first is kept.
    fn widen(self, other: SysctlValue) -> SysctlValue {
        match (self, other) {
            (SysctlValue::PortStart(a), SysctlValue::PortStart(b)) => {
                SysctlValue::PortStart(a.min(b))
            }
            (SysctlValue::GroupRange(al, ah), SysctlValue::GroupRange(bl, bh)) => {
                SysctlValue::GroupRange(al.min(bl), ah.max(bh))
            }
            (mine, _) => mine,
        }
    }
}

/// As /proc/sys takes it: `53`, `0 2147483647`.
impl std::fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SysctlValue::PortStart(port) => write!(f, "{port}"),
            SysctlValue::GroupRange(first, last) => write!(f, "{first} {last}"),
        }
    }
}

impl Serialize for SysctlValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A namespaced sysctl to set, and why. Which sysctl follows from the
/// value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysctlSetting {
    pub value: SysctlValue,
    pub why: String,
}

/// `{"sysctl": NAME, "value": TEXT, "why": …}`.
impl Serialize for SysctlSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("SysctlSetting", 3)?;
        st.serialize_field("sysctl", &self.sysctl())?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("why", &self.why)?;
        st.end()
    }
}

impl SysctlSetting {
    pub fn sysctl(&self) -> Sysctl {
        self.value.sysctl()
    }

    /// One setting per sysctl that lets through everything each of
    /// `settings` does (the containers of one pod share its sysctls): the
    /// lowest port start, the widest group range.
    pub fn combine(settings: impl IntoIterator<Item = SysctlSetting>) -> Vec<SysctlSetting> {
        let mut by: BTreeMap<Sysctl, SysctlSetting> = BTreeMap::new();
        for s in settings {
            match by.get_mut(&s.sysctl()) {
                None => {
                    by.insert(s.sysctl(), s);
                }
                Some(acc) => {
                    acc.value = acc.value.widen(s.value);
                    acc.why = format!("{}; {}", acc.why, s.why);
                }
            }
        }
        by.into_values().collect()
    }
}

impl Decision {
    pub fn added_caps(&self) -> Vec<Cap> {
        let caps: BTreeSet<Cap> = self.added.iter().map(|(c, _)| *c).collect();
        caps.into_iter().collect()
    }
}

/// Which conditional capabilities `target` needs beyond `allowlist`, and
/// which sysctls it must relax for callers no capability reaches.
pub fn decide(conditional: &[Conditional], allowlist: &[Cap], target: &TargetSysctls) -> Decision {
    let mut decision = Decision::default();
    let mut needed: BTreeMap<Cap, Vec<&Conditional>> = BTreeMap::new();
    let mut covered: BTreeMap<Cap, Vec<&Conditional>> = BTreeMap::new();
    let mut relax: BTreeMap<Sysctl, Vec<&Conditional>> = BTreeMap::new();
    for c in conditional {
        if target.allows(c) {
            covered.entry(c.capability).or_default().push(c);
        } else if c.without_capability && !target.grants_ambient {
            relax.entry(c.sysctl).or_default().push(c);
        } else {
            needed.entry(c.capability).or_default().push(c);
        }
    }
    for (cap, cs) in &needed {
        if allowlist.contains(cap) {
            continue;
        }
        let sysctl = cs[0].sysctl;
        decision.added.push((
            *cap,
            format!(
                "{} made no capability check where it was recorded ({}={} there); \
                 {} has {}={}",
                operations(cs),
                sysctl.name(),
                cs[0].value,
                target.source,
                sysctl.name(),
                target.value(sysctl)
            ),
        ));
    }
    for (cap, cs) in &covered {
        if allowlist.contains(cap) || needed.contains_key(cap) {
            continue;
        }
        let sysctl = cs[0].sysctl;
        decision.left_out.push((
            *cap,
            format!(
                "{} needs no capability where {} has {}={}",
                operations(cs),
                target.source,
                sysctl.name(),
                target.value(sysctl)
            ),
        ));
    }
    for (sysctl, cs) in &relax {
        let value = relaxed_value(*sysctl, cs);
        decision.relax.push(SysctlSetting {
            why: format!(
                "{} by a process without {} in its effective set, which no granted \
                 capability reaches (no container runtime sets ambient capabilities); {} has \
                 {}={}",
                operations(cs),
                sysctl.capability(),
                target.source,
                sysctl.name(),
                target.value(*sysctl),
            ),
            value,
        });
    }
    decision
}

/// The narrowest value of `sysctl` that lets every operation in `cs`
/// through: the lowest port bound, or the range of the callers' gids (all
/// groups when a gid is unknown, as Docker sets it).
fn relaxed_value(sysctl: Sysctl, cs: &[&Conditional]) -> SysctlValue {
    match sysctl {
        Sysctl::UnprivilegedPortStart => {
            SysctlValue::PortStart(cs.iter().filter_map(|c| c.port).min().unwrap_or(0))
        }
        Sysctl::PingGroupRange => {
            let gids: Option<Vec<u32>> =
                cs.iter().flat_map(|c| &c.evidence).map(|e| e.gid).collect();
            match gids.filter(|g| !g.is_empty()) {
                Some(g) => SysctlValue::GroupRange(
                    g.iter().copied().min().unwrap_or(0),
                    g.iter().copied().max().unwrap_or(0),
                ),
                None => SysctlValue::GroupRange(0, 2_147_483_647),
            }
        }
    }
}

fn operations(cs: &[&Conditional]) -> String {
    let ops: BTreeSet<&str> = cs.iter().map(|c| c.operation.as_str()).collect();
    ops.into_iter().collect::<Vec<_>>().join(", ")
}

/// Capabilities on the allowlist only because a capset() kept them, with
/// the programs, for comments.
pub fn kept_only(kept: &[Kept], exercised: &[Cap]) -> Vec<(Cap, String)> {
    kept.iter()
        .filter(|k| !exercised.contains(&k.capability))
        .map(|k| {
            let programs: BTreeSet<&str> = k.evidence.iter().map(|e| e.comm.as_str()).collect();
            (
                k.capability,
                format!(
                    "{} kept through capset() by {}; no check was seen to exercise it",
                    k.capability,
                    programs.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
        })
        .collect()
}
