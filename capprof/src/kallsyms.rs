//! Kernel text symbols from /proc/kallsyms, to resolve return addresses.

use std::{fs, io};

#[derive(Debug, thiserror::Error)]
pub enum KallsymsError {
    #[error("cannot read /proc/kallsyms: {0}")]
    Read(#[from] io::Error),
    #[error("/proc/kallsyms shows no addresses (kptr_restrict?)")]
    Hidden,
}

#[derive(Debug, Default)]
pub struct Kallsyms {
    /// (address, name), sorted by address; text symbols only.
    symbols: Vec<(u64, String)>,
}

impl Kallsyms {
    pub fn load() -> Result<Self, KallsymsError> {
        Self::parse(&fs::read_to_string("/proc/kallsyms")?)
    }

    pub fn parse(text: &str) -> Result<Self, KallsymsError> {
        let mut symbols = Vec::with_capacity(200_000);
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !matches!(ty, "t" | "T") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            symbols.push((addr, name.to_owned()));
        }
        if symbols.iter().all(|(addr, _)| *addr == 0) {
            return Err(KallsymsError::Hidden);
        }
        symbols.sort_unstable_by_key(|(addr, _)| *addr);
        Ok(Self { symbols })
    }

    /// The function containing `addr`, and the offset into it.
    pub fn resolve(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.symbols.partition_point(|(a, _)| *a <= addr);
        let (start, name) = self.symbols.get(i.checked_sub(1)?)?;
        // Past the last symbol of a region is not a function.
        let end = self.symbols.get(i).map_or(u64::MAX, |(a, _)| *a);
        (addr < end && addr - start < 1 << 20).then(|| (name.as_str(), addr - start))
    }

    pub fn symbolize(&self, addr: u64) -> Option<String> {
        self.resolve(addr).map(|(name, off)| format!("{name}+{off:#x}"))
    }

    /// The text range of function `name`: from its address to the next
    /// symbol's.
    pub fn range(&self, name: &str) -> Option<(u64, u64)> {
        let (i, (start, _)) = self.symbols.iter().enumerate().find(|(_, (_, n))| n == name)?;
        let end = self.symbols[i + 1..].iter().map(|(a, _)| *a).find(|a| a > start)?;
        Some((*start, end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81100000 T security_capable
ffffffff81100080 t security_vm_enough_memory_mm
ffffffff81100100 T capable
ffffffff81100100 T capable_alias
ffffffff81100180 d some_data
ffffffff81100200 T ns_capable
ffffffff81100300 T ns_capable_noaudit [kvm]
";

    #[test]
    fn resolves_and_ranges() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        assert_eq!(k.resolve(0xffffffff8110003b), Some(("security_capable", 0x3b)));
        assert_eq!(k.symbolize(0xffffffff8110012e).unwrap(), "capable_alias+0x2e");
        assert_eq!(k.range("capable"), Some((0xffffffff81100100, 0xffffffff81100200)));
        assert_eq!(k.range("ns_capable_noaudit"), None);
        assert_eq!(k.resolve(0x10), None);
    }

    #[test]
    fn hidden_addresses_are_an_error() {
        let hidden = "0000000000000000 T _stext\n0000000000000000 T capable\n";
        assert!(matches!(Kallsyms::parse(hidden), Err(KallsymsError::Hidden)));
    }
}
