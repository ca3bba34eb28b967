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
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The operation.
        what: String,
        /// The positive errno, when the kernel sent one.
        errno: Option<i32>,
        /// The error.
        #[source]
        source: crate::netlink::NetlinkError,
    },
    /// A link exists but is of another kind than asked for.
    #[error("{name:?} already exists but is a {found}, not a {wanted}")]
    WrongKind {
        /// The link name.
        name: String,
        /// What was asked for.
        wanted: &'static str,
        /// What it is.
        found: String,
    },
    /// A link that must exist does not.
    #[error("link {0:?} not found")]
    NoSuchLink(String),
    /// An external command (`nft`) failed.
    #[error("{what}: {stderr}")]
    Command {
        /// The operation.
        what: String,
        /// What the command printed on stderr.
        stderr: String,
    },
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotNetns(PathBuf),
    /// A sysctl key names no file in this namespace.
    #[error("sysctl {0:?} does not exist in this network namespace")]
    NoSuchSysctl(String),
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
            KernelError::Netlink { errno, .. } => {
                matches!(*errno, Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH))
            }
            KernelError::NoSuchLink(_) => true,
            _ => false,
        }
    }
}

impl KernelError {
    /// The errno of a failed system call or netlink request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KernelError::Sys { source, .. } => Some(*source as i32),
            KernelError::Io { source, .. } => source.raw_os_error(),
            KernelError::Netlink { errno, .. } => *errno,
            _ => None,
        }
    }

    /// Whether the error is EEXIST: the object is already there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// Results of kernel operations.
pub type Result<T> = std::result::Result<T, KernelError>;
