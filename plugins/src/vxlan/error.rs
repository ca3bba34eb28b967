//! The vxlan plugin's errors, turned into CNI error objects only at the plugin's edge.

use cni_spec::{Code, Error};

/// Everything that can go wrong in the vxlan plugin.
#[derive(Debug, thiserror::Error)]
pub enum VxlanError {
    /// A config field is wrong (code 7, naming the field).
    #[error("invalid network config: {field}: {why}")]
    Config { field: String, why: String },

    /// An environment variable is wrong (code 4, naming it).
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },

    /// The node daemon does not answer, or has no subnet yet (code 11: try again later).
    #[error("{0}")]
    TryAgain(String),

    /// The node daemon is not ready (STATUS, code 50).
    #[error("{0}")]
    NotAvailable(String),

    /// An answer or a saved file that does not decode (code 6).
    #[error("{0}")]
    Decode(String),

    /// A file of the plugin's data directory could not be used (code 5).
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// CHECK of an attachment that was never added (code 3).
    #[error("{0}")]
    Unknown(String),

    /// Several independent failures (GC keeps going).
    #[error("{}", .0.join("; "))]
    Many(Vec<String>),

    /// An error from the CNI library or from the delegate, passed through as it is.
    #[error("{0}")]
    Cni(#[from] Error),
}

impl VxlanError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, why: impl ToString) -> Self {
        VxlanError::Config { field: field.into(), why: why.to_string() }
    }

    /// The CNI code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            VxlanError::Config { .. } => Code::InvalidConfig as u32,
            VxlanError::Env { .. } => Code::InvalidEnvironment as u32,
            VxlanError::TryAgain(_) => Code::TryAgainLater as u32,
            VxlanError::NotAvailable(_) => Code::NotAvailable as u32,
            VxlanError::Decode(_) => Code::DecodingFailure as u32,
            VxlanError::Io { .. } => Code::IoFailure as u32,
            VxlanError::Unknown(_) => Code::UnknownContainer as u32,
            VxlanError::Many(_) => Code::Internal as u32,
            VxlanError::Cni(e) => e.code,
        }
    }
}

impl From<VxlanError> for Error {
    fn from(e: VxlanError) -> Error {
        match e {
            VxlanError::Config { field, why } => Error::invalid_config(&field, why),
            VxlanError::Env { var, why } => Error::invalid_env(var, why),
            VxlanError::Cni(e) => e,
            other => Error::with_code(other.code(), other.to_string()),
        }
    }
}
