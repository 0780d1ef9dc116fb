//! Capability names: parsing, validation and display. (Not named `caps`,
//! which would shadow the `caps` crate the daemon uses to drop its own.)

use std::{fmt, str::FromStr};

use capprof_common::cap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Linux capability, known to this build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cap(u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown capability {0:?}")]
pub struct UnknownCap(pub String);

impl Cap {
    pub fn from_number(number: u32) -> Option<Self> {
        cap::name(number).map(|_| Self(number))
    }

    pub fn number(self) -> u32 {
        self.0
    }

    /// Without the `CAP_` prefix: `CHOWN`.
    pub fn short_name(self) -> &'static str {
        cap::NAMES[self.0 as usize]
    }

    /// With the prefix: `CAP_CHOWN`.
    pub fn name(self) -> String {
        format!("CAP_{}", self.short_name())
    }

    pub fn all() -> impl Iterator<Item = Cap> {
        (0..=cap::CAP_LAST_CAP).map(Cap)
    }

    /// The capabilities whose bits are set in a kernel mask, in order.
    pub fn in_mask(mask: u64) -> impl Iterator<Item = Cap> {
        Cap::all().filter(move |cap| mask & (1 << cap.number()) != 0)
    }
}

/// Capabilities as every human-facing line shows them (`record`'s and
/// `run`'s tables, `verify`, `minimize`): `CAP_CHOWN CAP_SETUID`, or
/// `(none)`. Exports keep their target's own spelling (docker's `CHOWN`).
pub fn display_list(caps: &[Cap]) -> String {
    if caps.is_empty() {
        return "(none)".to_owned();
    }
    caps.iter()
        .map(Cap::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", self.short_name())
    }
}

impl FromStr for Cap {
    type Err = UnknownCap;

    /// Accepts `CAP_CHOWN`, `CHOWN` and `chown`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let upper = s.trim().to_ascii_uppercase();
        let short = upper.strip_prefix("CAP_").unwrap_or(&upper);
        cap::NAMES
            .iter()
            .position(|name| *name == short)
            .map(|i| Cap(i as u32))
            .ok_or_else(|| UnknownCap(s.to_owned()))
    }
}

impl Serialize for Cap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        // Profiles use the full `CAP_` name; be strict when reading them.
        if !s.starts_with("CAP_") {
            return Err(serde::de::Error::custom(format!(
                "capability {s:?} must be spelled CAP_…"
            )));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!("CAP_CHOWN".parse::<Cap>().unwrap().number(), 0);
        assert_eq!("net_raw".parse::<Cap>().unwrap().number(), 13);
        assert_eq!("SYS_ADMIN".parse::<Cap>().unwrap().number(), 21);
        assert_eq!(
            "CAP_CHECKPOINT_RESTORE".parse::<Cap>().unwrap().number(),
            40
        );
        assert!("CAP_FLY".parse::<Cap>().is_err());
        assert!("".parse::<Cap>().is_err());
    }

    #[test]
    fn names_round_trip() {
        for cap in Cap::all() {
            assert_eq!(cap.name().parse::<Cap>().unwrap(), cap);
            let json = serde_json::to_string(&cap).unwrap();
            assert_eq!(serde_json::from_str::<Cap>(&json).unwrap(), cap);
        }
        assert_eq!(Cap::from_number(41), None);
        assert!(serde_json::from_str::<Cap>("\"CHOWN\"").is_err());
    }
}
