//! The few kernel functions that calibration and the kernel side need by
//! address, and a cache of them per boot.
//!
//! Why: reading and parsing all of /proc/kallsyms (120,000 lines) cost
//! `capprof run` ~50 ms of kernel time and ~200 ms of wall time on a busy
//! machine, at every start, for some twenty functions. Their addresses
//! change only when the kernel is booted again (KASLR), so they are kept in
//! a small file keyed by the boot id and the kernel's build id.
//!
//! The file is never trusted on its word: it is used only when its key
//! matches this boot and every line parses into a known function with a
//! plausible range, and what calibration finds with it must still resolve
//! to the expected callers; when it does not, the caller reads
//! /proc/kallsyms again and rewrites the file.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use super::{calibrate, kallsyms::Kallsyms};

/// Where the cache lives unless `CAPPROF_CACHE_DIR` says otherwise.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/capprof";
const CACHE_FILE: &str = "kernel-functions-v1";
/// First line of the file: the format.
const MAGIC: &str = "capprof kernel functions v1";

/// Resolves return addresses to function names.
pub trait Resolver {
    /// The name of the function `addr` lies in.
    fn name_at(&self, addr: u64) -> Option<&str>;
}

impl Resolver for Kallsyms {
    fn name_at(&self, addr: u64) -> Option<&str> {
        self.resolve(addr).map(|(name, _)| name)
    }
}

/// The text ranges of the functions capprof looks for (`calibrate::known`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KnownFunctions {
    /// (name, start, end), in the order of `calibrate::known`.
    ranges: Vec<(&'static str, u64, u64)>,
}

impl Resolver for KnownFunctions {
    fn name_at(&self, addr: u64) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(_, start, end)| (*start..*end).contains(&addr))
            .map(|(name, ..)| *name)
    }
}

impl KnownFunctions {
    pub fn from_kallsyms(kallsyms: &Kallsyms) -> Self {
        let ranges = calibrate::known()
            .filter_map(|name| kallsyms.range(name).map(|(s, e)| (name, s, e)))
            .collect();
        Self { ranges }
    }

    /// `name+0xoffset` for an address in a known function, as
    /// `Kallsyms::symbolize` would put it.
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.ranges
            .iter()
            .find(|(_, start, end)| (*start..*end).contains(&addr))
            .map(|(name, start, _)| format!("{name}+{:#x}", addr - start))
    }

    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        self.ranges
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|(_, s, e)| (*s, *e))
    }

    fn render(&self, key: &str) -> String {
        let mut out = format!("{MAGIC}\n{key}\n");
        for (name, start, end) in &self.ranges {
            let _ = writeln!(out, "{name} {start:x} {end:x}");
        }
        out
    }

    /// Parses a cache file written for `key`; None unless all of it is
    /// well formed.
    fn parse(text: &str, key: &str) -> Option<Self> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC || lines.next()? != key {
            return None;
        }
        let mut ranges = vec![];
        for line in lines {
            let mut fields = line.split(' ');
            let (Some(name), Some(start), Some(end), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return None;
            };
            let name = calibrate::known().find(|k| *k == name)?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            // Kernel text: the upper half, and a function of under 1 MiB.
            if start >> 63 == 0 || end <= start || end - start >= 1 << 20 {
                return None;
            }
            ranges.push((name, start, end));
        }
        (!ranges.is_empty()).then_some(Self { ranges })
    }
}

/// The cache file for this boot of this kernel.
#[derive(Debug, Clone)]
pub struct Cache {
    path: PathBuf,
    key: String,
}

impl Cache {
    /// The cache in `CAPPROF_CACHE_DIR` or the default directory; None when
    /// this boot cannot be identified.
    pub fn for_this_boot() -> Option<Self> {
        let dir = std::env::var_os("CAPPROF_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR));
        Some(Self::new(&dir, &boot_key()?))
    }

    pub fn new(dir: &Path, key: &str) -> Self {
        Self {
            path: dir.join(CACHE_FILE),
            key: key.to_owned(),
        }
    }

    pub fn load(&self) -> Option<KnownFunctions> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let known = KnownFunctions::parse(&text, &self.key);
        if known.is_none() {
            tracing::debug!(
                "ignoring {}: not for this boot, or malformed",
                self.path.display()
            );
        }
        known
    }

    /// Writes the file atomically. A cache that cannot be written costs the
    /// next run time, nothing else: debug level.
    pub fn store(&self, known: &KnownFunctions) {
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                crate::fsutil::write_atomic(&self.path, known.render(&self.key).as_bytes())
            });
        if let Err(e) = written {
            tracing::debug!("cannot write {}: {e}", self.path.display());
        }
    }
}

/// The boot id and the kernel's build id (or, without one, its version
/// string): what the addresses are valid for.
fn boot_key() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let build = std::fs::read("/sys/kernel/notes")
        .ok()
        .and_then(|notes| gnu_build_id(&notes))
        .or_else(|| std::fs::read_to_string("/proc/version").ok())?;
    Some(format!("boot {} kernel {}", boot.trim(), build.trim()))
}

/// The GNU build id in an ELF notes section, in hex.
fn gnu_build_id(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(notes.get(at..at + 4)?.try_into().ok()?))
    };
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let (namesz, descsz, kind) = (word(at)? as usize, word(at + 4)? as usize, word(at + 8)?);
        let name = notes.get(at + 12..at + 12 + namesz)?;
        let desc_at = at + 12 + pad(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = desc_at + pad(descsz);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYMS: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 T security_capable
ffffffff81100080 t security_vm_enough_memory_mm
ffffffff81100100 T capable
ffffffff81100200 T ns_capable
ffffffff81100300 T other
";

    #[test]
    fn known_functions_resolve_like_kallsyms() {
        let k = Kallsyms::parse(SYMS).unwrap();
        let known = KnownFunctions::from_kallsyms(&k);
        for addr in [0xffffffff8110003b, 0xffffffff81100090, 0xffffffff8110012e] {
            assert_eq!(known.name_at(addr), k.name_at(addr), "{addr:x}");
        }
        assert_eq!(known.name_at(0xffffffff81100310), None);
        for addr in [0xffffffff8110003b, 0xffffffff8110012e] {
            assert_eq!(known.symbolize(addr), k.symbolize(addr), "{addr:x}");
        }
        assert_eq!(known.symbolize(0xffffffff81100310), None);
    }

    #[test]
    fn cache_round_trips_only_for_its_key() {
        let dir = std::env::temp_dir().join(format!("capprof-symbols-{}", std::process::id()));
        let known = KnownFunctions::from_kallsyms(&Kallsyms::parse(SYMS).unwrap());
        let cache = Cache::new(&dir, "boot a kernel b");
        assert_eq!(cache.load(), None);
        cache.store(&known);
        assert_eq!(cache.load(), Some(known));
        assert_eq!(Cache::new(&dir, "boot c kernel b").load(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_cache_is_ignored() {
        let key = "boot a kernel b";
        let good = format!("{MAGIC}\n{key}\ncapable ffffffff81100100 ffffffff81100200\n");
        assert!(KnownFunctions::parse(&good, key).is_some());
        for bad in [
            good.replace("capable ", "unknown_fn "),
            good.replace("ffffffff81100200", "ffffffff81100000"),
            good.replace("ffffffff81100100 ", "zz "),
            good.replace("ffffffff81100100", "81100100"),
            good.replace(MAGIC, "capprof kernel functions v0"),
            format!("{MAGIC}\n{key}\n"),
            format!("{good}capable 1\n"),
        ] {
            assert_eq!(KnownFunctions::parse(&bad, key), None, "{bad}");
        }
    }

    #[test]
    fn build_id_from_notes() {
        let mut notes = vec![];
        for (name, desc, kind) in [
            (&b"Xen\0"[..], &[1u8, 2][..], 1u32),
            (b"GNU\0", &[0xab, 0xcd, 0xef], 3),
        ] {
            notes.extend((name.len() as u32).to_ne_bytes());
            notes.extend((desc.len() as u32).to_ne_bytes());
            notes.extend(kind.to_ne_bytes());
            notes.extend(name);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
            notes.extend(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("abcdef"));
        assert_eq!(gnu_build_id(&notes[..20]), None);
    }
}
