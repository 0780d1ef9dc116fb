//! One corpus entry: a Debian server, as one small declarative file,
//! `corpus/servers/NAME.toml`. Adding a server takes a file like this:
//!
//! ```toml
//! about = "nginx, the HTTP server and reverse proxy"
//! category = "web"
//! packages = ["nginx"]
//! client = ["curl"]
//! start = ["nginx", "-g", "daemon off;"]
//! probe = "curl -fsS http://127.0.0.1/ | grep -q nginx"
//! ports = [80]
//! ```
//!
//! The server starts as its package would, with the package's default
//! configuration and users; `setup` holds only what its systemd unit or
//! init script would have done before `start` (a runtime directory, a
//! generated key). The probe is a real client doing real work, run by `sh`
//! in a container of the same image that shares the server's network
//! namespace: its own cgroup, so it is never part of the profile.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

/// The categories the corpus covers (issue 20), so that a typo is caught.
pub const CATEGORIES: &[&str] = &[
    "web",
    "proxy",
    "dns",
    "mail",
    "database",
    "cache",
    "broker",
    "ftp",
    "ssh",
    "time",
    "logging",
    "directory",
    "vpn",
    "monitoring",
    "other",
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The file's stem.
    #[serde(skip)]
    pub name: String,
    /// What it is, in a few words.
    pub about: String,
    pub category: String,
    /// Debian packages of the server; the first is the one whose version
    /// the table reports.
    pub packages: Vec<String>,
    /// Debian packages the probe needs.
    #[serde(default)]
    pub client: Vec<String>,
    /// Shell lines run once in the image after the packages are installed.
    #[serde(default)]
    pub setup: Vec<String>,
    /// The server's command, in the foreground.
    #[serde(default)]
    pub start: Vec<String>,
    /// Capabilities beyond Docker's defaults that the server cannot start
    /// without (`docker run --cap-add`), as its unit would have them: a
    /// time server's SYS_TIME. The recording starts from Docker's defaults
    /// plus these; what it needs is then proven like everything else.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// `docker run --init`: for a server that cannot be PID 1 (it does
    /// not reap, or crashes when it gets SIGCHLD for an orphan). Its
    /// profile keeps it, so `minimize` and `verify` run it the same way.
    #[serde(default)]
    pub init: bool,
    /// `docker run --user`, when the package's unit sets `User=`.
    #[serde(default)]
    pub user: Option<String>,
    /// A shell command that passes when the server did real work.
    #[serde(default)]
    pub probe: String,
    /// The ports it serves (documentation, and the table).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Seconds the server gets to pass its first probe; also `minimize`'s
    /// and `verify`'s `--timeout`, so that a run without a capability the
    /// server needs, which often hangs rather than exits, costs no more.
    #[serde(default = "default_ready")]
    pub ready_seconds: u64,
    /// What its results need explained: where two runs differ, or where
    /// observation and proof disagree, and why (CORPUS.md's notes).
    #[serde(default)]
    pub note: Option<String>,
    /// Why it cannot run in a container here, if it cannot.
    #[serde(default)]
    pub unrunnable: Option<String>,
}

fn default_ready() -> u64 {
    20
}

impl Entry {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut entry: Entry =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        entry.name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("an entry's file name")?
            .to_owned();
        entry
            .check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(entry)
    }

    fn check(&self) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            bail!("the file name must be lowercase letters, digits and '-'");
        }
        if !CATEGORIES.contains(&self.category.as_str()) {
            bail!("category {:?} is not one of {CATEGORIES:?}", self.category);
        }
        if self.packages.is_empty() {
            bail!("packages must not be empty");
        }
        if self.unrunnable.is_none() && (self.start.is_empty() || self.probe.trim().is_empty()) {
            bail!("start and probe must not be empty, unless the entry is unrunnable");
        }
        let package_ok = |p: &String| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        };
        if !self
            .cap_add
            .iter()
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
        {
            bail!("cap_add holds capability names without the CAP_ prefix, such as SYS_TIME");
        }
        if !self.packages.iter().chain(&self.client).all(package_ok) {
            bail!("a package name holds a character Debian's names never do");
        }
        Ok(())
    }

    /// The first package: the one whose version is reported.
    pub fn package(&self) -> &str {
        &self.packages[0]
    }
}

/// Every entry under `dir`, by name; with `only`, just those (each must
/// exist).
pub fn read_all(dir: &Path, only: &[String]) -> Result<Vec<Entry>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut entries = paths
        .iter()
        .map(|p| Entry::read(p))
        .collect::<Result<Vec<_>>>()?;
    if !only.is_empty() {
        for name in only {
            if !entries.iter().any(|e| &e.name == name) {
                bail!("no corpus entry {name:?} in {}", dir.display());
            }
        }
        entries.retain(|e| only.contains(&e.name));
    }
    Ok(entries)
}
