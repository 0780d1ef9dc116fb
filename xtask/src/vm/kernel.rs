//! Debian's cloud kernels for the VM tests: found with apt-cache, fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x` into a cache outside the
//! repository, and reused from there on later runs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::util::{note, run_checked, stdout_of, step};

/// Where unpacked kernels are kept between runs, unless
/// `CAPPROF_KERNEL_CACHE` says otherwise. Never inside the repository.
const DEFAULT_CACHE: &str = "/var/cache/capprof/kernels";

/// The apt sources file this module owns; it adds bookworm-backports.
const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/capprof-bookworm-backports.sources";
const BACKPORTS_ENTRY: &str = "\
# Added by capprof's `cargo xtask vm-test` for Debian's 6.12 cloud kernel.
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";

/// Written last into an unpacked kernel's directory, so that a half-done
/// unpack is never mistaken for a cached kernel.
const COMPLETE_STAMP: &str = ".complete";

/// A kernel series the VM tests boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    /// `6.1`, `6.12`: what `--kernel` takes and what the summary says.
    pub name: &'static str,
    /// Package names are `{prefix}{N}{suffix}`; the highest N wins.
    prefix: &'static str,
    /// Accepted endings after N (backports builds were once `+bpo`).
    suffixes: &'static [&'static str],
    /// Whether the series comes from bookworm-backports.
    backports: bool,
    /// The backends to run the tests with, each in its own pass.
    pub backends: &'static [&'static str],
}

/// bookworm's 6.1: kprobes, BTF and BPF LSM, no cap_capable tracepoint.
/// fexit is what capprof would choose; kprobe is its fallback, and lsm the
/// opt-in BPF-LSM backend.
pub const LINUX_6_1: Series = Series {
    name: "6.1",
    prefix: "linux-image-6.1.0-",
    suffixes: &["-cloud-amd64-unsigned"],
    backports: false,
    backends: &["fexit", "kprobe", "lsm"],
};

/// 6.12 from bookworm-backports (bookworm-security carries it too): the
/// newest kernel before the tracepoint, so fexit; and the opt-in lsm.
pub const LINUX_6_12: Series = Series {
    name: "6.12",
    prefix: "linux-image-6.12.",
    suffixes: &["+deb12-cloud-amd64-unsigned", "+bpo-cloud-amd64-unsigned"],
    backports: true,
    backends: &["fexit", "lsm"],
};

pub const ALL: &[Series] = &[LINUX_6_1, LINUX_6_12];

/// An unpacked kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: Series,
    /// The Debian package it came from.
    pub package: String,
    /// `boot/vmlinuz-…` inside the cache.
    pub vmlinuz: PathBuf,
}

/// A module the guests load at boot, from its kernel's package.
#[derive(Debug, Clone)]
pub struct Module {
    /// The kernel release it was built for (`uname -r` in the guest).
    pub release: String,
    /// The module file in the unpacked package (`.ko` or `.ko.xz`).
    pub path: PathBuf,
}

/// Where overlayfs lives in a kernel package's module tree. Debian builds it
/// as a module (`CONFIG_OVERLAY_FS=m` in 6.1 and 6.12), and the tests mount
/// one to see copy-up's borrowed credentials.
const OVERLAY_MODULE: &str = "kernel/fs/overlayfs/overlay.ko";

impl Kernel {
    /// The package's overlayfs module, if it has one (a kernel with
    /// overlayfs built in has none, and needs none).
    pub fn overlay_module(&self) -> Result<Option<Module>> {
        // boot/vmlinuz-… → the unpacked package.
        let Some(root) = self.vmlinuz.parent().and_then(Path::parent) else {
            return Ok(None);
        };
        let modules = root.join("lib/modules");
        let Ok(releases) = fs::read_dir(&modules) else {
            return Ok(None);
        };
        for release in releases {
            let release = release.with_context(|| format!("reading {}", modules.display()))?;
            for name in [OVERLAY_MODULE.to_owned(), format!("{OVERLAY_MODULE}.xz")] {
                let path = release.path().join(name);
                if path.is_file() {
                    return Ok(Some(Module {
                        release: release.file_name().to_string_lossy().into_owned(),
                        path,
                    }));
                }
            }
        }
        Ok(None)
    }
}

impl Series {
    /// N in `{prefix}{N}{suffix}`, for a package name of this series.
    fn number_of(&self, package: &str) -> Option<u32> {
        let rest = package.strip_prefix(self.prefix)?;
        self.suffixes
            .iter()
            .find_map(|s| rest.strip_suffix(s))?
            .parse()
            .ok()
    }

    /// The newest package of this series among `names`.
    fn newest<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        names
            .into_iter()
            .filter_map(|n| Some((self.number_of(n)?, n)))
            .max()
            .map(|(_, n)| n)
    }
}

/// The cache directory for unpacked kernels.
pub fn cache_dir() -> PathBuf {
    env::var_os("CAPPROF_KERNEL_CACHE").map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from)
}

/// Returns `series`' newest kernel, from the cache when it is there, and
/// otherwise downloaded and unpacked into it.
pub fn ensure(series: Series) -> Result<Kernel> {
    step(format_args!(
        "finding Debian's {} cloud kernel",
        series.name
    ));
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    let mut updated = false;
    if series.backports && ensure_backports_source()? {
        apt_update()?;
        updated = true;
    }
    let mut package = newest_available(series)?;
    if package.is_none() && !updated {
        note("no candidate in apt's lists; refreshing them");
        apt_update()?;
        updated = true;
        package = newest_available(series)?;
    }
    let Some(package) = package else {
        // Offline, or the lists were cleaned: a kernel cached earlier will do.
        if let Some(kernel) = newest_cached(series, &cache)? {
            note(format_args!(
                "apt knows no {} cloud kernel; using the cached {}",
                series.name, kernel.package
            ));
            return Ok(kernel);
        }
        bail!(
            "apt-cache knows no package like {}N{} (is bookworm{} in apt's sources?)",
            series.prefix,
            series.suffixes[0],
            if series.backports { "-backports" } else { "" }
        );
    };
    note(format_args!("newest package: {package}"));
    match from_cache_or_download(series, &package, &cache) {
        Ok(kernel) => Ok(kernel),
        Err(err) if !updated => {
            // Stale lists can name a .deb the mirror has dropped.
            note(format_args!(
                "{err:#}; refreshing apt's lists and retrying once"
            ));
            apt_update()?;
            let package = newest_available(series)?
                .with_context(|| format!("no {} cloud kernel after apt-get update", series.name))?;
            from_cache_or_download(series, &package, &cache)
        }
        Err(err) => Err(err),
    }
}

/// `package` unpacked in `cache`, downloading it first if it is not there.
fn from_cache_or_download(series: Series, package: &str, cache: &Path) -> Result<Kernel> {
    let dir = cache.join(package);
    let cached = dir.join(COMPLETE_STAMP).is_file();
    if !cached {
        download_and_unpack(package, cache, &dir)?;
    }
    let vmlinuz = find_vmlinuz(&dir)?;
    note(format_args!(
        "{}: {}",
        if cached { "cached" } else { "unpacked" },
        vmlinuz.display()
    ));
    Ok(Kernel {
        series,
        package: package.to_owned(),
        vmlinuz,
    })
}

/// Adds bookworm-backports in a sources file of its own, unless some source
/// already lists it. Returns whether anything changed (apt then needs an
/// update).
fn ensure_backports_source() -> Result<bool> {
    let path = Path::new(BACKPORTS_SOURCES);
    if fs::read_to_string(path).is_ok_and(|text| text == BACKPORTS_ENTRY) {
        note(format_args!(
            "bookworm-backports: already in {BACKPORTS_SOURCES}"
        ));
        return Ok(false);
    }
    if let Some(other) = other_source_with_backports(path) {
        note(format_args!(
            "bookworm-backports: already in {}",
            other.display()
        ));
        return Ok(false);
    }
    step(format_args!(
        "adding bookworm-backports to apt in {BACKPORTS_SOURCES}"
    ));
    fs::write(path, BACKPORTS_ENTRY).with_context(|| format!("writing {BACKPORTS_SOURCES}"))?;
    Ok(true)
}

/// Another apt sources file that already names bookworm-backports, if any.
fn other_source_with_backports(ours: &Path) -> Option<PathBuf> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "list" || ext == "sources")
                }),
        );
    }
    files.into_iter().filter(|f| f != ours).find(|f| {
        fs::read_to_string(f).is_ok_and(|text| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.split_whitespace().any(|w| w == "bookworm-backports"))
        })
    })
}

fn apt_update() -> Result<()> {
    run_checked(Command::new("apt-get").arg("update")).context("apt-get update")
}

/// The newest package of `series` that apt's lists know.
fn newest_available(series: Series) -> Result<Option<String>> {
    let names = stdout_of(Command::new("apt-cache").args(["pkgnames", series.prefix]))
        .context("listing kernel packages with apt-cache")?;
    Ok(series
        .newest(names.lines().map(str::trim))
        .map(str::to_owned))
}

/// The newest kernel of `series` already unpacked in `cache`.
fn newest_cached(series: Series, cache: &Path) -> Result<Option<Kernel>> {
    let names: Vec<String> = fs::read_dir(cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(COMPLETE_STAMP).is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let Some(package) = series.newest(names.iter().map(String::as_str)) else {
        return Ok(None);
    };
    let vmlinuz = find_vmlinuz(&cache.join(package))?;
    Ok(Some(Kernel {
        series,
        package: package.to_owned(),
        vmlinuz,
    }))
}

/// `apt-get download PACKAGE` into a scratch directory of the cache, then
/// `dpkg-deb -x` into `dir`; the .deb is removed afterwards.
fn download_and_unpack(package: &str, cache: &Path, dir: &Path) -> Result<()> {
    step(format_args!("downloading {package}"));
    let scratch = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let result = (|| {
        run_checked(
            Command::new("apt-get")
                .current_dir(&scratch)
                .args(["download", package]),
        )?;
        let deb = fs::read_dir(&scratch)
            .with_context(|| format!("reading {}", scratch.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download left no .deb in {}", scratch.display()))?;
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        step(format_args!("unpacking into {}", dir.display()));
        run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir))?;
        fs::write(dir.join(COMPLETE_STAMP), package)
            .with_context(|| format!("marking {} complete", dir.display()))
    })();
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// The one `boot/vmlinuz-*` in an unpacked kernel package.
fn find_vmlinuz(dir: &Path) -> Result<PathBuf> {
    let boot = dir.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_compares_numbers_not_strings() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-58-cloud-amd64", // signed: not ours
            "linux-image-6.1.0-59-cloud-amd64-dbg",
            "linux-image-6.1.0-60-amd64-unsigned",
        ];
        assert_eq!(
            LINUX_6_1.newest(names),
            Some("linux-image-6.1.0-57-cloud-amd64-unsigned")
        );
    }

    #[test]
    fn newest_6_12_takes_deb12_and_bpo_builds() {
        let names = [
            "linux-image-6.12.9+bpo-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned-dbg",
            "linux-image-6.12.120+deb12-cloud-amd64",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
        ];
        assert_eq!(
            LINUX_6_12.newest(names),
            Some("linux-image-6.12.117+deb12-cloud-amd64-unsigned")
        );
        assert_eq!(
            LINUX_6_12.newest(["linux-image-6.12.9+bpo-cloud-amd64-unsigned"]),
            Some("linux-image-6.12.9+bpo-cloud-amd64-unsigned")
        );
        assert_eq!(
            LINUX_6_1.newest(["linux-image-6.12.117+deb12-cloud-amd64-unsigned"]),
            None
        );
    }
}
