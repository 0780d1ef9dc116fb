//! The errors a user can see, each one line, each with an exit status that
//! scripts can trust: 2 for bad input or a missing prerequisite, 1 for a
//! failure of capprof itself.

use capprof::{
    export::ExportError, load::LoadError, merge::MergeError, observer::ObserverError,
    profile::ProfileError, proof::ProofError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input or an environment that lacks a prerequisite (exit 2).
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Observer(#[from] ObserverError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// Stopped by Ctrl-C or SIGTERM (exit 130), after cleaning up.
    #[error("{0}")]
    Interrupted(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Error::Internal(msg.into())
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_)
            | Error::Profile(_)
            | Error::Export(_)
            | Error::Load(_)
            | Error::Merge(_) => 2,
            Error::Observer(err) if err.is_prerequisite() => 2,
            Error::Proof(err) if err.is_bad_input() => 2,
            Error::Interrupted(_) => 130,
            Error::Observer(_) | Error::Proof(_) | Error::Internal(_) => 1,
        }
    }
}
