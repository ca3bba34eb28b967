//! The bridge plugin's errors, turned into CNI error objects only at the plugin's edge
//! ([`From`] below).

use cni_spec::{Code, Error};
use netkernel::KernelError;

/// Everything that can go wrong in the bridge plugin.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A config field is wrong (code 7, naming the field).
    #[error("invalid network config: {field}: {why}")]
    Config { field: String, why: String },

    /// An environment variable is wrong (code 4, naming it).
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },

    /// A field asks for something this host cannot do (code 2, naming the field).
    #[error("{field}: {why}")]
    Unsupported { field: &'static str, why: String },

    /// The host's state is in the way of the config (code 999, as the reference).
    #[error("{0}")]
    Conflict(String),

    /// CHECK found the attachment differs from `prevResult` (code 999, as the reference).
    #[error("CHECK: {0}")]
    Check(String),

    /// Another ADD on the same bridge held it too long (code 11: try again).
    #[error("bridge {0:?} is busy: another ADD held it for too long")]
    Busy(String),

    /// A kernel operation failed (code 999, with what was being done).
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<KernelError>,
    },

    /// Several independent failures (GC keeps going and reports them all).
    #[error("{}", .0.join("; "))]
    Many(Vec<String>),

    /// An error from the CNI library or from the IPAM plugin, passed through as it is.
    #[error("{0}")]
    Cni(#[from] Error),
}

impl BridgeError {
    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, why: impl ToString) -> Self {
        BridgeError::Config { field: field.into(), why: why.to_string() }
    }

    /// An environment error naming `var`.
    pub fn env(var: &'static str, why: impl ToString) -> Self {
        BridgeError::Env { var, why: why.to_string() }
    }

    /// A kernel error, for `map_err`: `.map_err(BridgeError::kernel("creating the veth"))`.
    pub fn kernel(what: impl std::fmt::Display) -> impl Fn(KernelError) -> BridgeError {
        move |source| BridgeError::Kernel { what: what.to_string(), source: Box::new(source) }
    }

    /// The CNI code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            BridgeError::Config { .. } => Code::InvalidConfig as u32,
            BridgeError::Env { .. } => Code::InvalidEnvironment as u32,
            BridgeError::Unsupported { .. } => Code::UnsupportedField as u32,
            BridgeError::Busy(_) => Code::TryAgainLater as u32,
            BridgeError::Conflict(_)
            | BridgeError::Check(_)
            | BridgeError::Kernel { .. }
            | BridgeError::Many(_) => Code::Internal as u32,
            BridgeError::Cni(e) => e.code,
        }
    }
}

impl From<BridgeError> for Error {
    fn from(e: BridgeError) -> Error {
        match e {
            BridgeError::Config { field, why } => Error::invalid_config(&field, why),
            BridgeError::Env { var, why } => Error::invalid_env(var, why),
            BridgeError::Cni(e) => e,
            other => Error::with_code(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let e: Error = BridgeError::config("bridge", "\"..\" must not be . or ..").into();
        assert_eq!(
            (e.code, e.msg.as_str()),
            (7, "invalid network config: bridge: \"..\" must not be . or ..")
        );
        assert_eq!(Error::from(BridgeError::env("CNI_NETNS", "gone")).code, 4);
        assert_eq!(Error::from(BridgeError::Busy("cni0".into())).code, 11);
        let e = Error::from(BridgeError::Unsupported { field: "vlan", why: "no".into() });
        assert_eq!((e.code, e.msg.as_str()), (2, "vlan: no"));
        let ipam = Error::with_code(102, "no IP addresses available");
        assert_eq!(Error::from(BridgeError::Cni(ipam.clone())), ipam);
    }
}
