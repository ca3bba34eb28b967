//! The errors of the chained plugins (loopback, tuning, portmap, firewall, bandwidth),
//! turned into CNI error objects only at the plugin's edge ([`From`] below), with the spec's
//! code for each class of fault.

use cni_spec::{Code, Error};
use netkernel::KernelError;

/// Everything that can go wrong in a chained plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A config field is wrong (code 7, naming the field).
    #[error("invalid network config: {field}: {why}")]
    Config { field: String, why: String },

    /// An environment variable is wrong (code 4, naming it).
    #[error("{var}: {why}")]
    Env { var: &'static str, why: String },

    /// A field asks for something this plugin does not do (code 2, naming the field).
    #[error("{field}: {why}")]
    Unsupported { field: String, why: String },

    /// The host's state is in the way of the config (code 999, as the reference).
    #[error("{0}")]
    Conflict(String),

    /// CHECK found the attachment differs from what ADD made (code 999, as the reference).
    #[error("CHECK: {0}")]
    Check(String),

    /// A kernel operation failed (code 999, with what was being done).
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: Box<KernelError>,
    },

    /// A file of the plugin's own state could not be read or written (code 5).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// Several independent failures (DEL and GC keep going and report them all).
    #[error("{}", .0.join("; "))]
    Many(Vec<String>),

    /// An error from the CNI library, passed through as it is.
    #[error("{0}")]
    Cni(#[from] Error),
}

impl PluginError {
    /// The `prevResult` a chained plugin (`plugin`) needs, or the config error naming it.
    pub fn require_prev(
        req: &cni_spec::Request,
        plugin: &str,
    ) -> Result<cni_spec::SuccessResult, PluginError> {
        req.prev_result()?.ok_or_else(|| {
            PluginError::config(
                "prevResult",
                format!("missing: {plugin} runs chained after an interface plugin"),
            )
        })
    }

    /// A config error naming `field`.
    pub fn config(field: impl Into<String>, why: impl ToString) -> Self {
        PluginError::Config { field: field.into(), why: why.to_string() }
    }

    /// An environment error naming `var`.
    pub fn env(var: &'static str, why: impl ToString) -> Self {
        PluginError::Env { var, why: why.to_string() }
    }

    /// An unsupported-field error naming `field`.
    pub fn unsupported(field: impl Into<String>, why: impl ToString) -> Self {
        PluginError::Unsupported { field: field.into(), why: why.to_string() }
    }

    /// A kernel error, for `map_err`: `.map_err(PluginError::kernel("setting the MTU"))`.
    pub fn kernel(what: impl std::fmt::Display) -> impl Fn(KernelError) -> PluginError {
        move |source| PluginError::Kernel { what: what.to_string(), source: Box::new(source) }
    }

    /// An I/O error, for `map_err`.
    pub fn io(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> PluginError {
        move |source| PluginError::Io { what: what.to_string(), source }
    }

    /// The CNI code this error is reported with.
    pub fn code(&self) -> u32 {
        match self {
            PluginError::Config { .. } => Code::InvalidConfig as u32,
            PluginError::Env { .. } => Code::InvalidEnvironment as u32,
            PluginError::Unsupported { .. } => Code::UnsupportedField as u32,
            PluginError::Io { .. } => Code::IoFailure as u32,
            PluginError::Conflict(_)
            | PluginError::Check(_)
            | PluginError::Kernel { .. }
            | PluginError::Many(_) => Code::Internal as u32,
            PluginError::Cni(e) => e.code,
        }
    }
}

impl From<PluginError> for Error {
    fn from(e: PluginError) -> Error {
        match e {
            PluginError::Config { field, why } => Error::invalid_config(&field, why),
            PluginError::Env { var, why } => Error::invalid_env(var, why),
            PluginError::Cni(e) => e,
            other => Error::with_code(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let e: Error = PluginError::config("sysctl", "no").into();
        assert_eq!((e.code, e.msg.as_str()), (7, "invalid network config: sysctl: no"));
        assert_eq!(Error::from(PluginError::env("CNI_NETNS", "gone")).code, 4);
        let e = Error::from(PluginError::unsupported("conditionsV4", "no"));
        assert_eq!((e.code, e.msg.as_str()), (2, "conditionsV4: no"));
        let io = std::io::Error::other("x");
        assert_eq!(Error::from(PluginError::io("saving")(io)).code, 5);
        assert_eq!(Error::from(PluginError::Check("x".into())).code, 999);
    }
}
