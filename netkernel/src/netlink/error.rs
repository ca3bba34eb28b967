//! What can go wrong talking rtnetlink, independent of what was being done (the caller
//! wraps it in [`crate::KernelError::Netlink`] with that).

use std::fmt;
use std::io;

/// A failed netlink exchange.
#[derive(Debug)]
pub enum NetlinkError {
    /// The kernel refused the request (`NLMSG_ERROR` with a negative errno).
    Kernel {
        /// The positive errno.
        errno: i32,
        /// The kernel's own explanation (extended ACK), when it gave one.
        message: Option<String>,
    },
    /// A dump kept coming back with `NLM_F_DUMP_INTR` (the table changed while it was being
    /// read) or overflowed the socket, `attempts` times in a row.
    DumpInterrupted {
        /// How many times the dump was tried.
        attempts: u32,
    },
    /// The socket's receive queue overflowed (ENOBUFS) and replies were lost, more often
    /// than the request could be repeated.
    Overrun,
    /// The socket itself failed.
    Io(io::Error),
    /// A reply could not be decoded, or was not the kind of reply the request expects.
    Protocol(String),
}

impl NetlinkError {
    /// The positive errno behind the failure, if there is one: the kernel's for
    /// [`NetlinkError::Kernel`], EINTR for an interrupted dump, ENOBUFS for an overrun.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::DumpInterrupted { .. } => Some(libc::EINTR),
            NetlinkError::Overrun => Some(libc::ENOBUFS),
            NetlinkError::Io(e) => e.raw_os_error(),
            NetlinkError::Protocol(_) => None,
        }
    }

    /// Whether repeating the whole dump can help.
    pub(crate) fn dump_retriable(&self) -> bool {
        matches!(self, NetlinkError::Overrun)
            // A new dump while the kernel still runs an abandoned one on this socket.
            || matches!(self, NetlinkError::Kernel { errno, .. } if *errno == libc::EBUSY)
    }
}

impl fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetlinkError::Kernel { errno, message } => {
                write!(f, "netlink error: {}", io::Error::from_raw_os_error(*errno))?;
                match message {
                    Some(m) => write!(f, " ({m})"),
                    None => Ok(()),
                }
            }
            NetlinkError::DumpInterrupted { attempts } => write!(
                f,
                "the dump was interrupted {attempts} times in a row (NLM_F_DUMP_INTR: the kernel's \
                 table kept changing while it was being read)"
            ),
            NetlinkError::Overrun => {
                f.write_str("the netlink receive queue kept overflowing (ENOBUFS): replies were lost")
            }
            NetlinkError::Io(e) => write!(f, "netlink socket: {e}"),
            NetlinkError::Protocol(m) => write!(f, "netlink protocol: {m}"),
        }
    }
}

impl std::error::Error for NetlinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NetlinkError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for NetlinkError {
    fn from(e: io::Error) -> Self {
        NetlinkError::Io(e)
    }
}
