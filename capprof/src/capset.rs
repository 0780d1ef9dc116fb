//! Limiting a process to an allowlist of capabilities: `capprof run --caps`,
//! and the re-runs of `run` profiles by `capprof verify` and `minimize`.
//!
//! [`CapLimit::apply`] runs in the child between fork and exec, so it makes
//! raw syscalls only (`prctl`, `capget`, `capset`): no allocation, no lock,
//! nothing that is not async-signal-safe. Everything it needs (the mask,
//! the kernel's last capability) is worked out before the fork.

use crate::capability::Cap;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("cannot read /proc/sys/kernel/cap_last_cap: {0}")]
    LastCap(#[source] std::io::Error),
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The capability sets a process may keep: bounding, permitted, effective,
/// inheritable and ambient are all cut down to `allowed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapLimit {
    allowed: u64,
    /// The highest capability the running kernel knows (it may know more
    /// than this build: those are dropped too).
    last_cap: u32,
}

impl CapLimit {
    pub fn new(allowed: &[Cap]) -> Result<Self, LimitError> {
        let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .map_err(LimitError::LastCap)?;
        let last_cap = text.trim().parse::<u32>().map_err(|e| {
            LimitError::LastCap(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })?;
        Ok(Self {
            allowed: mask_of(allowed),
            last_cap: last_cap.min(63),
        })
    }

    pub fn allowed(&self) -> u64 {
        self.allowed
    }

    /// Cuts the calling process's capabilities down to the allowlist:
    ///
    /// 1. every other capability leaves the bounding set (this needs
    ///    CAP_SETPCAP, so it comes first), so no later exec of a setuid-root
    ///    or file-capability program can regain one;
    /// 2. permitted, effective and inheritable become the allowlist (as far
    ///    as the process holds it);
    /// 3. the ambient set becomes exactly that too, so that the allowlist
    ///    survives the exec of a program run by a non-root user, as it
    ///    survives a root exec through the bounding set.
    ///
    /// Async-signal-safe: call it from `pre_exec`.
    pub fn apply(&self) -> std::io::Result<()> {
        // SAFETY: prctl, capget and capset with valid arguments and
        // pointers to live locals; no allocation.
        unsafe {
            for cap in 0..=self.last_cap {
                if self.allowed & (1 << cap) != 0 {
                    continue;
                }
                if libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            let mut header = CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let permitted = u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32);
            let keep = permitted & self.allowed;
            for (i, word) in data.iter_mut().enumerate() {
                let bits = (keep >> (32 * i)) as u32;
                *word = CapData {
                    effective: bits,
                    permitted: bits,
                    inheritable: bits,
                };
            }
            header.version = CAPABILITY_VERSION_3;
            header.pid = 0;
            if libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for cap in 0..=self.last_cap {
                if keep & (1 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                        cap as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// The capabilities as a bit mask (bit N is capability N).
pub fn mask_of(caps: &[Cap]) -> u64 {
    caps.iter()
        .filter(|c| c.number() < 64)
        .fold(0, |mask, c| mask | (1 << c.number()))
}

/// Why a `--caps` list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CapListError {
    /// An empty string is more likely a shell variable that was not set
    /// than a wish for no capability: that is spelt `none`.
    #[error("empty list; write `none` for no capabilities")]
    Empty,
    #[error("`none` means no capabilities and cannot be combined with {0}")]
    NoneWithNames(String),
    #[error("empty name in the list (a stray comma?)")]
    EmptyName,
    #[error(transparent)]
    Unknown(#[from] crate::capability::UnknownCap),
}

/// Parses `--caps`: `none` alone for no capability at all, or capability
/// names separated by commas (`CHOWN`, `CAP_CHOWN` or `chown`). An empty
/// list, an empty name, and `none` among names are refused.
pub fn parse_list(list: &str) -> Result<Vec<Cap>, CapListError> {
    let trimmed = list.trim();
    if trimmed.is_empty() {
        return Err(CapListError::Empty);
    }
    let items: Vec<&str> = trimmed.split(',').map(str::trim).collect();
    if items.iter().any(|s| s.is_empty()) {
        return Err(CapListError::EmptyName);
    }
    let is_none = |s: &str| s.eq_ignore_ascii_case("none");
    match items.iter().filter(|s| is_none(s)).count() {
        0 => {}
        n if n == items.len() => return Ok(vec![]),
        _ => {
            let names: Vec<&str> = items.iter().filter(|s| !is_none(s)).copied().collect();
            return Err(CapListError::NoneWithNames(names.join(",")));
        }
    }
    let mut caps = items
        .into_iter()
        .map(str::parse::<Cap>)
        .collect::<Result<Vec<_>, _>>()?;
    caps.sort();
    caps.dedup();
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse() {
        let caps = parse_list("NET_RAW, cap_chown,CHOWN").unwrap();
        assert_eq!(
            caps.iter().map(|c| c.short_name()).collect::<Vec<_>>(),
            ["CHOWN", "NET_RAW"]
        );
        assert!(parse_list("none").unwrap().is_empty());
        assert!(parse_list(" NONE ").unwrap().is_empty());
        assert!(parse_list("CHOWN,FLY").is_err());
        assert_eq!(mask_of(&caps), (1 << 0) | (1 << 13));
    }

    /// `none` is the one way to say no capability: an empty list (an unset
    /// shell variable) and `none` among names are refused, each saying why.
    #[test]
    fn ambiguous_lists_are_refused() {
        assert_eq!(parse_list(""), Err(CapListError::Empty));
        assert_eq!(parse_list("  "), Err(CapListError::Empty));
        assert_eq!(
            parse_list("none,CHOWN"),
            Err(CapListError::NoneWithNames("CHOWN".into()))
        );
        assert_eq!(parse_list("CHOWN,,NET_RAW"), Err(CapListError::EmptyName));
        assert_eq!(parse_list("CHOWN,"), Err(CapListError::EmptyName));
        assert_eq!(
            parse_list("none,CHOWN").unwrap_err().to_string(),
            "`none` means no capabilities and cannot be combined with CHOWN"
        );
    }
}
