//! What this build of capprof is: its version, the commit it was built
//! from and the map ABI its eBPF object speaks. `capprof --version`,
//! `capprof doctor` and the daemon's API carry them, so that a bug report
//! says which build it is about, and so that an upgrade can tell whether
//! the pins a running daemon left behind are ones this build can reuse.

use capprof_common::MAP_ABI_VERSION;

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit this build comes from, 12 hex digits, from build.rs:
/// `CAPPROF_GIT_COMMIT` when it was set at build time, else `git
/// rev-parse`, else "unknown" (a build outside a checkout).
pub const COMMIT: &str = env!("CAPPROF_GIT_COMMIT");

/// The eBPF map ABI version: pins live under `<bpffs>/capprof/v<ABI>`.
pub const MAP_ABI: u32 = MAP_ABI_VERSION;

/// `0.1.0 (commit 0123456789ab, map ABI 7)`: the one line
/// `capprof --version` prints after the program's name.
pub fn version_line() -> String {
    format!("{VERSION} (commit {COMMIT}, map ABI {MAP_ABI})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_line_names_version_commit_and_abi() {
        let line = version_line();
        assert!(line.starts_with(VERSION), "{line}");
        assert!(
            line.contains(&format!("map ABI {MAP_ABI_VERSION}")),
            "{line}"
        );
        assert!(
            COMMIT == "unknown"
                || (COMMIT.len() >= 7 && COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
            "{COMMIT}"
        );
    }
}
