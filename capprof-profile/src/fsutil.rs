//! Writing files so that a crash or a full disk never leaves half a file:
//! write to a temporary file beside the target, fsync, rename, fsync the
//! directory; and opening the files capprof reads ([`open_regular`]).
//!
//! Only regular files are written. A device, FIFO, socket or directory at
//! the path is refused (so `--out /dev/full` never turns a device node into
//! a file). A symlink is written through on purpose: the file it points to
//! is replaced and the link stays. A file that is replaced keeps its mode
//! and owner; a new one is created 0600, since profiles hold evidence
//! (program names, paths, uids).

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// The regular file to write for `path`: the path itself, or what a
/// symlink there points to. Refuses anything that is not a regular file.
/// The nearest existing ancestor of `path` (not `path` itself) that is not
/// a directory: what is in the way when a path cannot be created, named
/// rather than the kernel's bare "Not a directory".
pub fn not_a_dir_above(path: &Path) -> Option<PathBuf> {
    path.ancestors().skip(1).find_map(|p| {
        if p.as_os_str().is_empty() {
            return None;
        }
        match fs::metadata(p) {
            Ok(meta) if !meta.is_dir() => Some(p.to_owned()),
            _ => None,
        }
    })
}

/// An error that names what stands in the way, if something does.
fn in_the_way(path: &Path) -> io::Result<()> {
    match not_a_dir_above(path) {
        Some(p) => Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", p.display()),
        )),
        None => Ok(()),
    }
}

fn target(path: &Path) -> io::Result<(PathBuf, Option<fs::Metadata>)> {
    in_the_way(path)?;
    let mut path = path.to_owned();
    // Follow a few links by hand, so that a dangling one still names its
    // target.
    for _ in 0..8 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = fs::read_link(&path)?;
                path = parent(&path).join(link);
            }
            Ok(meta) if meta.is_file() => return Ok((path, Some(meta))),
            Ok(meta) => {
                let what = describe(&meta.file_type());
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what}, not a regular file"),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((path, None)),
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

fn describe(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        "is a directory"
    } else if t.is_char_device() {
        "is a character device"
    } else if t.is_block_device() {
        "is a block device"
    } else if t.is_fifo() {
        "is a FIFO"
    } else if t.is_socket() {
        "is a socket"
    } else {
        "is a special file"
    }
}

/// Opens `path` for reading, refusing anything but a regular file. The
/// open itself is non-blocking, so that a FIFO with no writer cannot hang
/// it, and the type is checked on the open descriptor, so that nothing can
/// be swapped in between the check and the read. Every input file capprof
/// reads (profiles, the daemon's config) is opened here.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let what = describe(&meta.file_type());
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    Ok(file)
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut temp = name.to_os_string();
    temp.push(format!(".capprof-tmp.{}", std::process::id()));
    Ok(path.with_file_name(temp))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks up front that `path` can be written, so that a long profiling run
/// does not end in a write error.
pub fn check_writable(path: &Path) -> io::Result<()> {
    let (path, _) = target(path)?;
    let temp = temp_path(&path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)?;
    fs::remove_file(&temp)
}

/// Atomically replaces the regular file at `path` (or the one a symlink
/// there points to) with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let (path, existing) = target(path)?;
    let path = path.as_path();
    let temp = temp_path(path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        if let Some(old) = &existing {
            // The replacement keeps the old file's owner and mode.
            std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))?;
            file.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        File::open(parent(path))?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_refuses_bad_targets() {
        let dir = std::env::temp_dir().join(format!("capprof-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("p.json");
        check_writable(&target).unwrap();
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file is left"
        );
        assert!(check_writable(&dir).is_err());
        assert!(check_writable(&dir.join("missing/p.json")).is_err());
        assert!(write_atomic(&dir.join("missing/p.json"), b"x").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_regular_files_are_written_and_keep_their_mode() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};
        let dir = std::env::temp_dir().join(format!("capprof-fsutil2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        // New files are private.
        let new = dir.join("new.json");
        write_atomic(&new, b"x").unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o600);
        // A replaced file keeps its mode.
        fs::set_permissions(&new, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&new, b"y").unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o640);
        // A symlink is written through and stays a link.
        let link = dir.join("link.json");
        symlink("new.json", &link).unwrap();
        write_atomic(&link, b"through").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&new).unwrap(), b"through");
        // Devices and FIFOs are refused and left alone.
        for special in ["/dev/null", "/dev/full"] {
            let err = write_atomic(Path::new(special), b"x").unwrap_err();
            assert!(err.to_string().contains("character device"), "{err}");
            assert!(check_writable(Path::new(special)).is_err());
        }
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = write_atomic(&fifo, b"x").unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        use std::os::unix::fs::FileTypeExt as _;
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A FIFO with no writer would block a plain open forever: refused at
    /// once, as are devices and directories.
    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir().join(format!("capprof-fsutil3-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open_regular(&fifo).unwrap_err();
        assert_eq!(err.to_string(), "is a FIFO, not a regular file");
        for (special, what) in [("/dev/zero", "character device"), ("/tmp", "directory")] {
            let err = open_regular(Path::new(special)).unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
        }
        let file = dir.join("p.json");
        fs::write(&file, b"{}").unwrap();
        let mut text = String::new();
        io::Read::read_to_string(&mut open_regular(&file).unwrap(), &mut text).unwrap();
        assert_eq!(text, "{}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
