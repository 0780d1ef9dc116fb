//! The guests' initramfs: busybox and its applet links, the init script, and
//! the test binaries at the same absolute paths as on the host, with the
//! shared libraries `ldd` names. Written in the kernel's `newc` cpio format
//! by a small writer of our own.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Read as _, Write},
    path::{Component, Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use super::kernel::Module;
use crate::util::{display, note, stdout_of, step};

/// Debian's busybox-static, copied to the same place in the guest.
const BUSYBOX: &str = "/bin/busybox";

/// Host tools the init script uses that busybox lacks, copied to the same
/// paths (over any applet link there) with their libraries. util-linux's
/// setpriv can drop a capability from the bounding set; busybox's cannot.
const HOST_TOOLS: &[&str] = &["/usr/bin/setpriv"];

/// The guest's PID 1. It reads `/etc/capprof-vm.env` and `/proc/cmdline`.
const INIT: &str = include_str!("init.sh");

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
";
const GROUP: &str = "\
root:x:0:
app:x:1000:
";

/// What the guest runs, by absolute host path; each is copied to the same
/// path in the guest, because the test executable has them baked in.
#[derive(Debug, Clone)]
pub struct Payload {
    /// The integration-test executable; the guest runs its run_actions
    /// module.
    pub test_exe: PathBuf,
    /// The `capprof` binary (`CARGO_BIN_EXE_capprof`).
    pub capprof: PathBuf,
    /// Other binaries the tests spawn by absolute path.
    pub helpers: Vec<PathBuf>,
    /// Kernel modules, each put at `/lib/modules/<release>/<name>.ko`
    /// (decompressed) for the init script to load on the kernel it was
    /// built for.
    pub modules: Vec<Module>,
}

/// Writes the initramfs for `payload` to `out`, and returns its size.
pub fn build(payload: &Payload, out: &Path) -> Result<u64> {
    step(format_args!("building the initramfs {}", out.display()));
    let mut archive = Archive::default();
    for dir in [
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/root",
        "/etc",
        "/home/app",
    ] {
        archive.dir(dir, 0o755);
    }
    archive.dir("/tmp", 0o1777);
    // The kernel opens /dev/console for init's stdio before anything is
    // mounted; devtmpfs later covers /dev.
    archive.char_device("/dev/console", 0o600, 5, 1);

    archive.file_from(BUSYBOX, BUSYBOX, 0o755)?;
    let applets = stdout_of(Command::new(BUSYBOX).arg("--list-full"))
        .with_context(|| format!("listing {BUSYBOX}'s applets"))?;
    let mut linked = 0;
    for applet in applets.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = Path::new("/").join(applet);
        // Linking the applet named busybox would replace the binary.
        if path.file_name().is_some_and(|n| n == "busybox") || archive.contains(&path) {
            continue;
        }
        archive.symlink(path, BUSYBOX);
        linked += 1;
    }
    note(format_args!("busybox with {linked} applet links"));

    let binaries: Vec<&Path> = [&payload.test_exe, &payload.capprof]
        .into_iter()
        .chain(&payload.helpers)
        .map(PathBuf::as_path)
        .chain(HOST_TOOLS.iter().map(Path::new))
        .collect();
    for &binary in &binaries {
        archive.file_from(binary, binary, 0o755)?;
        for lib in shared_libraries(binary)? {
            if !archive.contains(&lib) {
                archive.file_from(&lib, &lib, 0o755)?;
            }
        }
    }
    for module in &payload.modules {
        let name = module
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .context("a module file without a name")?;
        let name = name.strip_suffix(".xz").unwrap_or(name);
        archive.file_bytes(
            Path::new("/lib/modules").join(&module.release).join(name),
            module_bytes(&module.path)?,
            0o644,
        );
        note(format_args!("module {name} for {}", module.release));
    }
    archive.file_bytes("/init", INIT.as_bytes().to_vec(), 0o755);
    archive.file_bytes("/etc/capprof-vm.env", env_file(payload).into_bytes(), 0o644);
    archive.file_bytes("/etc/passwd", PASSWD.as_bytes().to_vec(), 0o644);
    archive.file_bytes("/etc/group", GROUP.as_bytes().to_vec(), 0o644);

    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let tmp = out.with_extension("tmp");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let size = archive
        .write_to(&mut writer)
        .with_context(|| format!("writing {}", tmp.display()))?;
    writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    note(format_args!(
        "{} entries, {} MiB, uncompressed",
        archive.entries.len(),
        size >> 20
    ));
    Ok(size)
}

/// A module's contents, decompressed when it is `.xz` (Debian's 6.12
/// compresses its modules; busybox's insmod loads plain ones only).
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.extension().is_none_or(|e| e != "xz") {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    }
    let mut cmd = Command::new("xz");
    cmd.arg("-dc").arg(path);
    let line = display(&cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}` (apt-get install xz-utils)"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Shell assignments the init script sources: the paths it runs.
fn env_file(payload: &Payload) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    format!(
        "TEST_EXE={}\nCAPPROF={}\n",
        quote(&payload.test_exe),
        quote(&payload.capprof)
    )
}

/// The absolute paths `ldd` prints for `binary`, the dynamic loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = stdout_of(Command::new("ldd").arg(binary))
        .with_context(|| format!("finding {}'s shared libraries", binary.display()))?;
    Ok(parse_ldd(&out))
}

/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)` give their paths; the vDSO has none.
fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line
                .split_once("=>")
                .map_or(line, |(_, right)| right.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The files of an initramfs, keyed by absolute path. Written in path order,
/// so that each directory comes before what it holds.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

#[derive(Debug)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Data },
    Symlink { target: PathBuf },
    CharDevice { mode: u32, major: u32, minor: u32 },
}

#[derive(Debug)]
enum Data {
    Bytes(Vec<u8>),
    /// Read from this host file (symlinks followed) when the archive is written.
    Host(PathBuf),
}

/// newc's file type bits.
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl Archive {
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    /// A directory (and its parents, 0755).
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(path.to_owned(), Entry::Dir { mode });
    }

    /// A file with `data`.
    pub fn file_bytes(&mut self, path: impl AsRef<Path>, data: Vec<u8>, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::File {
                mode,
                data: Data::Bytes(data),
            },
        );
    }

    /// A file with the contents of the host's `source`, read when written.
    pub fn file_from(
        &mut self,
        path: impl AsRef<Path>,
        source: impl AsRef<Path>,
        mode: u32,
    ) -> Result<()> {
        let (path, source) = (path.as_ref(), source.as_ref());
        ensure!(source.is_file(), "{} is not a file", source.display());
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::File {
                mode,
                data: Data::Host(source.to_owned()),
            },
        );
        Ok(())
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_owned(),
            Entry::Symlink {
                target: target.as_ref().to_owned(),
            },
        );
    }

    pub fn char_device(&mut self, path: impl AsRef<Path>, mode: u32, major: u32, minor: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries
            .insert(path.to_owned(), Entry::CharDevice { mode, major, minor });
    }

    /// Adds `path`'s missing ancestors as 0755 directories.
    fn parents(&mut self, path: &Path) {
        for ancestor in path.ancestors().skip(1) {
            if ancestor.parent().is_none() {
                break; // the root itself is the rootfs
            }
            self.entries
                .entry(ancestor.to_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// Writes the archive in newc format and returns the number of bytes.
    pub fn write_to(&self, w: &mut impl Write) -> Result<u64> {
        let mut out = Counter {
            inner: w,
            written: 0,
        };
        for (ino, (path, entry)) in (1_u32..).zip(&self.entries) {
            let name = archive_name(path)?;
            match entry {
                Entry::Dir { mode } => {
                    write_header(&mut out, ino, S_IFDIR | mode, 2, 0, (0, 0), &name)?;
                }
                Entry::File {
                    mode,
                    data: Data::Bytes(data),
                } => {
                    write_header(&mut out, ino, S_IFREG | mode, 1, data.len(), (0, 0), &name)?;
                    out.write_all(data)?;
                    pad(&mut out)?;
                }
                Entry::File {
                    mode,
                    data: Data::Host(source),
                } => {
                    let file = File::open(source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    let len = file
                        .metadata()
                        .with_context(|| format!("reading {}", source.display()))?
                        .len();
                    let len = usize::try_from(len).context("file too large")?;
                    write_header(&mut out, ino, S_IFREG | mode, 1, len, (0, 0), &name)?;
                    let copied = io::copy(&mut file.take(len as u64), &mut out)
                        .with_context(|| format!("copying {}", source.display()))?;
                    ensure!(
                        copied == len as u64,
                        "{} changed while it was copied",
                        source.display()
                    );
                    pad(&mut out)?;
                }
                Entry::Symlink { target } => {
                    let target = target.as_os_str().as_encoded_bytes();
                    write_header(
                        &mut out,
                        ino,
                        S_IFLNK | 0o777,
                        1,
                        target.len(),
                        (0, 0),
                        &name,
                    )?;
                    out.write_all(target)?;
                    pad(&mut out)?;
                }
                Entry::CharDevice { mode, major, minor } => {
                    write_header(&mut out, ino, S_IFCHR | mode, 1, 0, (*major, *minor), &name)?;
                }
            }
        }
        write_header(&mut out, 0, 0, 1, 0, (0, 0), b"TRAILER!!!")?;
        Ok(out.written)
    }
}

/// `/usr/bin/env` → `usr/bin/env`, as cpio archives name their files.
fn archive_name(path: &Path) -> Result<Vec<u8>> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => parts.push(part.as_encoded_bytes()),
            _ => bail!(
                "initramfs paths must be absolute and plain: {}",
                path.display()
            ),
        }
    }
    ensure!(!parts.is_empty(), "the root is not an archive entry");
    Ok(parts.join(&b'/'))
}

/// A newc header, "070701" and thirteen 8-digit hex fields, then the name
/// with its NUL, padded to 4 bytes. uid, gid and mtime are 0.
fn write_header(
    out: &mut Counter<'_, impl Write>,
    ino: u32,
    mode: u32,
    nlink: u32,
    file_size: usize,
    (rdev_major, rdev_minor): (u32, u32),
    name: &[u8],
) -> Result<()> {
    let file_size = u32::try_from(file_size).context("newc files must be under 4 GiB")?;
    let name_size = u32::try_from(name.len() + 1).context("name too long")?;
    let fields = [
        ino, mode, 0, 0, nlink, 0, file_size, 0, 0, rdev_major, rdev_minor, name_size, 0,
    ];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for field in fields {
        header.push_str(&format!("{field:08x}"));
    }
    out.write_all(header.as_bytes())?;
    out.write_all(name)?;
    out.write_all(&[0])?;
    pad(out)?;
    Ok(())
}

/// Zero bytes up to the next multiple of 4.
fn pad(out: &mut Counter<'_, impl Write>) -> io::Result<()> {
    let rem = (out.written % 4) as usize;
    if rem != 0 {
        out.write_all(&[0; 3][..4 - rem])?;
    }
    Ok(())
}

/// Counts what goes through, for newc's 4-byte alignment.
struct Counter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdev major, rdev minor, data).
    fn parse(mut bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut entries = Vec::new();
        let total = bytes.len();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                let hex = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                u32::from_str_radix(hex, 16).unwrap()
            };
            let (mode, size, major, minor, name_size) = (
                field(1),
                field(6) as usize,
                field(9),
                field(10),
                field(11) as usize,
            );
            let name = std::str::from_utf8(&bytes[110..110 + name_size - 1])
                .unwrap()
                .to_owned();
            assert_eq!(bytes[110 + name_size - 1], 0, "NUL after the name");
            let data_at = (110 + name_size).next_multiple_of(4);
            let data = bytes[data_at..data_at + size].to_vec();
            let next = (data_at + size).next_multiple_of(4);
            // Every header starts 4-aligned in the whole archive.
            assert_eq!((total - bytes.len()) % 4, 0);
            bytes = &bytes[next..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return entries;
            }
            entries.push((name, mode, major, minor, data));
        }
    }

    #[test]
    fn newc_round_trips_every_entry_kind() {
        let mut archive = Archive::default();
        archive.file_bytes("/usr/bin/hello", b"hello".to_vec(), 0o755);
        archive.symlink("/bin/sh", "/bin/busybox");
        archive.dir("/tmp", 0o1777);
        archive.char_device("/dev/console", 0o600, 5, 1);
        let mut bytes = Vec::new();
        let size = archive.write_to(&mut bytes).unwrap();
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(bytes.len() % 4, 0);

        let entries = parse(&bytes);
        let summary: Vec<(&str, u32)> = entries.iter().map(|e| (e.0.as_str(), e.1)).collect();
        // Parents first, then what they hold; parents are made 0755.
        assert_eq!(
            summary,
            [
                ("bin", 0o040_755),
                ("bin/sh", 0o120_777),
                ("dev", 0o040_755),
                ("dev/console", 0o020_600),
                ("tmp", 0o041_777),
                ("usr", 0o040_755),
                ("usr/bin", 0o040_755),
                ("usr/bin/hello", 0o100_755),
            ]
        );
        assert_eq!(entries[1].4, b"/bin/busybox");
        assert_eq!((entries[3].2, entries[3].3), (5, 1));
        assert_eq!(entries[7].4, b"hello");
    }

    #[test]
    fn newc_header_matches_the_format() {
        let mut archive = Archive::default();
        archive.file_bytes("/a", b"xyz".to_vec(), 0o644);
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).unwrap();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            header,
            concat!(
                "070701", "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000",
                "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
            )
        );
        // "a\0" ends at 112, data "xyz" + 1 pad byte, then the trailer.
        assert_eq!(&bytes[110..116], b"a\0xyz\0");
        assert_eq!(&bytes[116..122], b"070701");
    }

    #[test]
    #[ignore = "needs /usr/bin/cpio (cargo xtask setup installs it)"]
    fn system_cpio_reads_the_archive() {
        let mut archive = Archive::default();
        archive.file_bytes("/etc/hello", b"hi\n".to_vec(), 0o644);
        archive.symlink("/bin/sh", "busybox");
        let mut bytes = Vec::new();
        archive.write_to(&mut bytes).unwrap();
        let mut child = Command::new("/usr/bin/cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "bin\nbin/sh\netc\netc/hello\n"
        );
    }

    #[test]
    fn ldd_output_gives_libraries_and_loader() {
        let out = "\
\tlinux-vdso.so.1 (0x00007ffd5a9f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e1c000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e1be1f000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e1c6a9000)
";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn archive_names_are_relative() {
        assert_eq!(
            archive_name(Path::new("/usr/bin/env")).unwrap(),
            b"usr/bin/env"
        );
        assert!(archive_name(Path::new("/")).is_err());
        assert!(archive_name(Path::new("/a/../b")).is_err());
    }
}
