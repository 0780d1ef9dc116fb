//! One module per subcommand.

pub mod daemon;
pub mod diff;
pub mod dist_files;
pub mod doctor;
pub mod export;
pub mod kube;
pub mod merge;
pub mod minimize;
pub mod output;
pub mod profile;
pub mod ps;
pub mod record;
pub mod report;
pub mod rerun;
pub mod run;
pub mod verify;

use std::io::{self, Write as _};

use crate::error::Error;

/// Writes a command's output to stdout. A reader that went away (`| head`)
/// ends the output quietly, as in other command-line tools.
pub(crate) fn write_stdout(text: &str) -> Result<(), Error> {
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
