//! Errors of kernel operations.

use std::path::PathBuf;

/// What went wrong in a kernel operation; each variant says what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The operation.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotNetns(PathBuf),
    /// A name was rejected before anything was done.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        why: &'static str,
    },
}

impl KernelError {
    pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> KernelError {
        let what = what.into();
        move |source| KernelError::Sys { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KernelError {
        let what = what.into();
        move |source| KernelError::Io { what, source }
    }

    /// Whether the error means "does not exist" (ENOENT), e.g. a netns already gone.
    pub fn is_not_found(&self) -> bool {
        match self {
            KernelError::Sys { source, .. } => *source == nix::Error::ENOENT,
            KernelError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Results of kernel operations.
pub type Result<T> = std::result::Result<T, KernelError>;
