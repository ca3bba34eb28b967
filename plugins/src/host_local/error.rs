//! host-local's errors, mapped to CNI error objects only at the edge ([`From`] below).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use cni_spec::{Code, Error};

/// Plugin-specific error codes (the spec reserves 0–99; the reference uses 999 for all of
/// these, which tells a runtime nothing).
pub mod code {
    /// The attachment already holds an address in the range set.
    pub const DUPLICATE_ALLOCATION: u32 = 100;
    /// A requested address is already leased.
    pub const REQUESTED_IP_UNAVAILABLE: u32 = 101;
    /// A range set has no free address left.
    pub const RANGE_EXHAUSTED: u32 = 102;
    /// CHECK: the attachment's allocation is missing or differs from `prevResult`.
    pub const CHECK_FAILED: u32 = 103;
}

/// Everything that can go wrong in host-local.
#[derive(Debug, thiserror::Error)]
pub enum HostLocalError {
    /// A config field is wrong (code 7, the message names the field).
    #[error("invalid network config: {field}: {why}")]
    Config { field: String, why: String },

    /// An environment variable is wrong (code 4, the message names it).
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },

    /// The attachment already holds an address in this set (the reference's wording).
    #[error(
        "failed to allocate for range {set}: {ip} has been allocated to {id}, duplicate allocation is not allowed"
    )]
    Duplicate { set: usize, ip: IpAddr, id: String },

    /// A requested address is leased to someone else.
    #[error(
        "failed to allocate for range {set}: requested IP address {ip} is not available in range set {range}"
    )]
    RequestedUnavailable { set: usize, ip: IpAddr, range: String },

    /// No free address in a range set.
    #[error("failed to allocate for range {set}: no IP addresses available in range set: {range}")]
    Exhausted { set: usize, range: String },

    /// CHECK found no address for the attachment.
    #[error("host-local: Failed to find address added by container {id}")]
    NotFound { id: String },

    /// CHECK found addresses that differ from `prevResult`.
    #[error("host-local: {0}")]
    CheckMismatch(String),

    /// STATUS: a range set is full, so ADD cannot succeed (code 50).
    #[error("range set {set} has no free address: {range}")]
    NotAvailable { set: usize, range: String },

    /// A file system operation failed (code 5).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Several independent failures (DEL and GC keep going and report them all).
    #[error("{}", join(.0))]
    Many(Vec<HostLocalError>),

    /// An error from the CNI library (e.g. a malformed `prevResult`), passed through.
    #[error("{0}")]
    Spec(#[from] Error),
}

fn join(errors: &[HostLocalError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

impl HostLocalError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, why: impl ToString) -> Self {
        HostLocalError::Config { field: field.into(), why: why.to_string() }
    }

    /// An I/O error on `path`.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        HostLocalError::Io { what, path: path.into(), source }
    }

    /// Whether this is an I/O error on a path that cannot exist: a component is a file, a
    /// name is too long, or symbolic links loop.
    pub fn is_unusable_path(&self) -> bool {
        matches!(self, HostLocalError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOTDIR | libc::ENAMETOOLONG | libc::ELOOP | libc::EEXIST)))
    }

    /// An I/O error on a path that cannot exist becomes a config error naming
    /// `ipam.dataDir` (the only path the store is made of besides the network name, which
    /// is checked before).
    pub fn data_dir_fault(self) -> Self {
        match &self {
            HostLocalError::Io { path, source, .. } if self.is_unusable_path() => {
                HostLocalError::config("ipam.dataDir", format!("{} cannot be used: {source}", path.display()))
            }
            _ => self,
        }
    }

    /// The CNI code this error is reported with.
    pub fn code(&self) -> u32 {
        use HostLocalError::*;
        match self {
            Config { .. } => Code::InvalidConfig as u32,
            Env { .. } => Code::InvalidEnvironment as u32,
            Duplicate { .. } => code::DUPLICATE_ALLOCATION,
            RequestedUnavailable { .. } => code::REQUESTED_IP_UNAVAILABLE,
            Exhausted { .. } => code::RANGE_EXHAUSTED,
            NotFound { .. } | CheckMismatch(_) => code::CHECK_FAILED,
            NotAvailable { .. } => Code::NotAvailable as u32,
            Io { .. } => Code::IoFailure as u32,
            Many(all) => all.first().map_or(Code::Internal as u32, HostLocalError::code),
            Spec(e) => e.code,
        }
    }
}

impl From<HostLocalError> for Error {
    fn from(e: HostLocalError) -> Error {
        match &e {
            // Reuse the library's wording for the spec's field/variable errors.
            HostLocalError::Config { field, why } => Error::invalid_config(field, why),
            HostLocalError::Env { var, why } => Error::invalid_env(var, why),
            HostLocalError::Spec(e) => e.clone(),
            _ => Error::with_code(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_messages() {
        let e: Error = HostLocalError::config("ipam.ranges[0][1].subnet", "missing").into();
        assert_eq!(e.code, 7);
        assert_eq!(e.msg, "invalid network config: ipam.ranges[0][1].subnet: missing");

        let e: Error = HostLocalError::Env { var: "CNI_ARGS", why: "bad".into() }.into();
        assert_eq!((e.code, e.msg.as_str()), (4, "CNI_ARGS: bad"));

        let e: Error = HostLocalError::Exhausted { set: 0, range: "10.0.0.2-10.0.0.2".into() }.into();
        assert_eq!(e.code, code::RANGE_EXHAUSTED);
        assert!(e.msg.contains("no IP addresses available in range set: 10.0.0.2-10.0.0.2"));

        let e: Error = HostLocalError::NotAvailable { set: 1, range: "x".into() }.into();
        assert_eq!(e.code, 50);

        let many = HostLocalError::Many(vec![
            HostLocalError::io("removing", "/a", io::Error::other("boom")),
            HostLocalError::NotFound { id: "c".into() },
        ]);
        assert_eq!(many.code(), 5);
        assert_eq!(
            many.to_string(),
            "removing /a: boom; host-local: Failed to find address added by container c"
        );
    }
}
