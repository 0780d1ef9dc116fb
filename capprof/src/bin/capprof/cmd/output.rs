//! Where the report, merge and diff commands put their output: stdout, or
//! a file replaced atomically, never half-written.

use std::{
    io::{self, Write as _},
    path::Path,
};

use capprof::fsutil;

use crate::error::Error;

/// Writes `text` to `out` (atomically), or to stdout when `out` is `None`
/// or `-`. An existing target that is not a regular file (a device, a FIFO,
/// a directory) is refused rather than replaced.
pub fn write(out: Option<&Path>, text: &str) -> Result<(), Error> {
    let Some(path) = out.filter(|p| p.as_os_str() != "-") else {
        return write_stdout(text);
    };
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(Error::usage(format!(
            "cannot write {}: not a regular file",
            path.display()
        )));
    }
    fsutil::write_atomic(path, text.as_bytes())
        .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn write_stdout(text: &str) -> Result<(), Error> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(Error::internal(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}
