//! Least privilege for capprof itself: once its programs are loaded,
//! attached and pinned, and its sockets bound, the daemon needs no
//! capability at all. Map reads and writes go through file descriptors it
//! already holds, the ring buffer is mmap'ed, its state directory and
//! sockets are its own. So it drops every capability from every set, and
//! sets no_new_privs so that nothing it could exec regains them.
//!
//! The bounding set is emptied too when the daemon holds CAP_SETPCAP,
//! which PR_CAPBSET_DROP needs. The DaemonSet and the systemd unit do not
//! grant it (their containers' bounding set is already the few they add),
//! and there it is left as it is: with the permitted set empty and
//! no_new_privs set, no execve can raise a capability from it, whatever
//! the file (the kernel caps the new permitted set at the old one).

use caps::{CapSet, Capability};

#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities: {0}")]
pub struct DropError(String);

/// Drops every capability; returns what is left (nothing, on success).
pub fn drop_all() -> Result<Vec<String>, DropError> {
    let err = |e: caps::errors::CapsError| DropError(e.to_string());
    // The bounding set first: dropping from it needs CAP_SETPCAP, which the
    // next steps remove.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::clear(None, CapSet::Effective).map_err(err)?;
    caps::clear(None, CapSet::Permitted).map_err(err)?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(DropError(std::io::Error::last_os_error().to_string()));
    }
    Ok(held())
}

/// The capabilities in this thread's effective set.
pub fn held() -> Vec<String> {
    let mut held: Vec<String> = caps::read(None, CapSet::Effective)
        .unwrap_or_default()
        .into_iter()
        .map(|c: Capability| c.to_string())
        .collect();
    held.sort();
    held
}
