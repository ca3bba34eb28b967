//! The CNI error object and its well-known codes.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// The well-known error codes of the spec (0–99 are reserved; 100 and up belong to plugins).
///
/// ```
/// use cni_spec::Code;
/// assert_eq!(Code::InvalidConfig as u32, 7);
/// assert_eq!(Code::from_u32(11), Some(Code::TryAgainLater));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    IoFailure = 5,
    /// 6: failed to decode content.
    DecodingFailure = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (cannot service ADD).
    NotAvailable = 50,
    /// 51: not available, and existing containers may have limited connectivity.
    LimitedConnectivity = 51,
    /// 999: an internal error (the Go skeleton's `ErrInternal`), used for panics and
    /// errors that carry no code of their own.
    Internal = 999,
}

impl Code {
    /// The code for a number, if it is a well-known one.
    pub fn from_u32(n: u32) -> Option<Code> {
        use Code::*;
        [
            IncompatibleVersion,
            UnsupportedField,
            UnknownContainer,
            InvalidEnvironment,
            IoFailure,
            DecodingFailure,
            InvalidConfig,
            TryAgainLater,
            NotAvailable,
            LimitedConnectivity,
            Internal,
        ]
        .into_iter()
        .find(|c| *c as u32 == n)
    }
}

/// A CNI error: what a plugin prints on stdout (with a non-zero exit) when a command fails,
/// and what a runtime gets back from a failed plugin.
///
/// ```
/// use cni_spec::{Code, Error};
/// let e = Error::new(Code::InvalidConfig, "invalid field \"mtu\"").with_details("must be > 0");
/// assert_eq!(e.code, 7);
/// let json = e.to_json(Some(cni_spec::Version::V1_0_0));
/// assert_eq!(json, r#"{"cniVersion":"1.0.0","code":7,"msg":"invalid field \"mtu\"","details":"must be > 0"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// The numeric code (see [`Code`]).
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer explanation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl Error {
    /// An error with a well-known code.
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Error { code: code as u32, msg: msg.into(), details: None }
    }

    /// An error with a plugin-specific code (100 and up) or any other number.
    pub fn with_code(code: u32, msg: impl Into<String>) -> Self {
        Error { code, msg: msg.into(), details: None }
    }

    /// Adds `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// Code 7 for a config field: the message names the field.
    ///
    /// ```
    /// let e = cni_spec::Error::invalid_config("ipam.subnet", "not a CIDR");
    /// assert_eq!(e.msg, "invalid network config: ipam.subnet: not a CIDR");
    /// ```
    pub fn invalid_config(field: &str, why: impl fmt::Display) -> Self {
        Error::new(Code::InvalidConfig, format!("invalid network config: {field}: {why}"))
    }

    /// Code 4 for an environment variable: the message names it.
    ///
    /// ```
    /// let e = cni_spec::Error::invalid_env("CNI_IFNAME", "missing");
    /// assert_eq!((e.code, e.msg.as_str()), (4, "CNI_IFNAME: missing"));
    /// ```
    pub fn invalid_env(var: &str, why: impl fmt::Display) -> Self {
        Error::new(Code::InvalidEnvironment, format!("{var}: {why}"))
    }

    /// Code 5, from an I/O error and what was being done.
    pub fn io(what: impl fmt::Display, err: &std::io::Error) -> Self {
        Error::new(Code::IoFailure, format!("{what}: {err}"))
    }

    /// Code 999 for an error that has no code of its own.
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(Code::Internal, msg)
    }

    /// The well-known code, if this is one.
    pub fn well_known(&self) -> Option<Code> {
        Code::from_u32(self.code)
    }

    /// The JSON a plugin prints, with `cniVersion` when it is known.
    pub fn to_json(&self, version: Option<Version>) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            cni_version: Option<Version>,
            #[serde(flatten)]
            err: &'a Error,
        }
        serde_json::to_string(&Out { cni_version: version, err: self })
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"unprintable error\"}}", self.code))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if let Some(d) = self.details.as_deref().filter(|d| !d.is_empty()) {
            write!(f, "; {d}")?;
        }
        write!(f, " (code {})", self.code)
    }
}

impl std::error::Error for Error {}
