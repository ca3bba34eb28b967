//! The plugin entry point: read the environment and stdin, answer `VERSION`, apply the
//! version gates, call the plugin, print its result or error on stdout.
//!
//! ```no_run
//! use cni_spec::{plugin, Error, Plugin, Request, SuccessResult};
//!
//! struct Noop;
//! impl Plugin for Noop {
//!     fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
//!         Ok(req.prev_result()?.unwrap_or_default())
//!     }
//!     fn del(&self, _: &Request) -> Result<(), Error> { Ok(()) }
//!     fn check(&self, _: &Request) -> Result<(), Error> { Ok(()) }
//! }
//!
//! fn main() -> std::process::ExitCode { plugin::run(&Noop) }
//! ```

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NetConf;
use crate::env::{Command, Environment};
use crate::error::{Code, Error};
use crate::result::SuccessResult;
use crate::version::{Version, VersionInfo, format_versions};
use crate::{input, json};

/// One attachment, as listed in a GC request's `cni.dev/valid-attachments`.
///
/// ```
/// let a = cni_spec::plugin::Attachment::new("c1", "eth0");
/// assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"containerID":"c1","ifname":"eth0"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

impl Attachment {
    /// An attachment.
    pub fn new(container_id: &str, ifname: &str) -> Self {
        Attachment { container_id: container_id.into(), ifname: ifname.into() }
    }
}

/// The GC key of the spec's errata, and the older one libcni also sends.
pub const VALID_ATTACHMENTS_KEY: &str = "cni.dev/valid-attachments";
/// The key of the original 1.1.0 text.
pub const LEGACY_ATTACHMENTS_KEY: &str = "cni.dev/attachments";

/// The config keys the spec defines (a key that differs from one only in case is refused).
const WELL_KNOWN: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "ipMasq",
    "ipam",
    "dns",
    "runtimeConfig",
    "args",
    "prevResult",
];

/// Everything one invocation brings: the environment, the parsed config and the raw bytes.
#[derive(Debug, Clone)]
pub struct Request {
    /// The validated `CNI_*` variables.
    pub env: Environment,
    /// The config's well-known fields.
    pub config: NetConf,
    /// The config exactly as received, for delegation and the plugin's own options.
    pub raw: Vec<u8>,
    /// The config's spec version.
    pub version: Version,
}

impl Request {
    /// Builds a request from an environment and a stdin config (see [`crate::input`] for
    /// the classes of fault): the config must decode (else code 6), be an object with a
    /// `cniVersion` (else code 7 naming it: runtimes always write one, so a config without
    /// it did not come from a runtime) that this library knows (else code 1), and its
    /// well-known fields must be right (else code 7 naming the field).
    ///
    /// ```
    /// use cni_spec::{Command, Environment, Request};
    /// let env = Environment::new(Command::Del).container("c1", None, "eth0");
    /// let req = Request::new(env.clone(), br#"{"cniVersion":"1.0.0","name":"n","type":"x"}"#.to_vec()).unwrap();
    /// assert_eq!(req.version, cni_spec::Version::V1_0_0);
    /// assert_eq!(Request::new(env.clone(), b" ".to_vec()).unwrap_err().code, 6);
    /// assert_eq!(Request::new(env.clone(), br#"{"a":1,"a":1}"#.to_vec()).unwrap_err().code, 6);
    /// let e = Request::new(env, br#"{"name":"n","type":"x"}"#.to_vec()).unwrap_err();
    /// assert_eq!((e.code, e.msg.contains("cniVersion")), (7, true));
    /// ```
    pub fn new(env: Environment, raw: Vec<u8>) -> Result<Self, Error> {
        let value = json::decode(&raw)?;
        let Some(obj) = value.as_object() else {
            return Err(Error::new(Code::InvalidConfig, "invalid network config: must be a JSON object"));
        };
        match obj.get("cniVersion") {
            None | Some(Value::Null) => return Err(Error::invalid_config("cniVersion", "missing")),
            Some(Value::String(s)) if s.is_empty() => {
                return Err(Error::invalid_config("cniVersion", "empty"));
            }
            Some(Value::String(_)) => {}
            Some(other) => {
                return Err(Error::invalid_config("cniVersion", format!("must be a string, got {other}")));
            }
        }
        input::refuse_case_variants(obj, WELL_KNOWN, "")?;
        let config: NetConf = json::from_value(value)?;
        config.validate()?;
        let version = config.version()?;
        Ok(Request { env, config, raw, version })
    }

    /// Parses the config into the plugin's own type (its options), strictly (see
    /// [`crate::input::from_slice`]): a decoding fault is code 6, a wrong field code 7
    /// naming it.
    pub fn parse_config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        json::from_slice(&self.raw)
    }

    /// `prevResult` in the config's version.
    pub fn prev_result(&self) -> Result<Option<SuccessResult>, Error> {
        self.config.prev_result()
    }

    /// GC's list of attachments that are still valid: `cni.dev/valid-attachments`, or the
    /// older `cni.dev/attachments` when only that is given. `None` when neither is present.
    pub fn valid_attachments(&self) -> Result<Option<Vec<Attachment>>, Error> {
        for key in [VALID_ATTACHMENTS_KEY, LEGACY_ATTACHMENTS_KEY] {
            match self.config.extra.get(key) {
                None | Some(Value::Null) => continue,
                Some(v) => {
                    return serde_json::from_value(v.clone())
                        .map(Some)
                        .map_err(|e| Error::invalid_config(key, e));
                }
            }
        }
        Ok(None)
    }

    /// The network name (required).
    pub fn network_name(&self) -> Result<&str, Error> {
        self.config.network_name()
    }
}

/// A CNI plugin. Implement the commands; [`run`] does the rest.
///
/// `status` and `gc` default to success with no output (what the Go skeleton does when a
/// plugin has none). `supported_versions` defaults to every version.
pub trait Plugin {
    /// Versions this plugin accepts.
    fn supported_versions(&self) -> &[Version] {
        &Version::ALL
    }

    /// A line about the plugin, printed on stderr when run without `CNI_COMMAND`.
    fn about(&self) -> String {
        "a CNI plugin".to_string()
    }

    /// Attach: returns the result (printed in the config's version).
    fn add(&self, req: &Request) -> Result<SuccessResult, Error>;

    /// Detach; must succeed when there is nothing left to remove.
    fn del(&self, req: &Request) -> Result<(), Error>;

    /// Verify the attachment against `prevResult`.
    fn check(&self, req: &Request) -> Result<(), Error>;

    /// Report readiness.
    fn status(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }

    /// Release what belongs to attachments not in [`Request::valid_attachments`].
    fn gc(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
}

/// What an invocation printed and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What goes to stdout (a result, a version reply, an error object, or nothing).
    pub stdout: String,
    /// The exit status: 0 on success, 1 on error.
    pub exit: u8,
}

/// Runs `plugin` on the process environment and stdin, prints to stdout, and returns the
/// exit code. Logs belong on stderr; nothing else is written to stdout.
pub fn run<P: Plugin + ?Sized>(plugin: &P) -> ExitCode {
    let env = |k: &str| input::env_var(k);
    // Run by hand, without a command: say what this is, and fail (code 4) as for any other
    // bad environment, without waiting for a stdin nobody will close.
    if env("CNI_COMMAND").is_none_or(|c| c.is_empty()) {
        let versions = format_versions(plugin.supported_versions());
        eprintln!("{}\nCNI protocol versions supported: {versions}", plugin.about());
        let e = Error::invalid_env("CNI_COMMAND", "missing (ADD, DEL, CHECK, STATUS, GC or VERSION)");
        return print(error_outcome(&e, None));
    }
    let read = if input::stdin_was_closed() {
        // VERSION needs no stdin; every other command needs its config.
        if env("CNI_COMMAND").as_deref() == Some("VERSION") {
            Ok(Vec::new())
        } else {
            Err(Error::new(Code::IoFailure, "reading the network config from stdin: stdin is closed"))
        }
    } else {
        input::read_stdin(std::io::stdin().lock())
    };
    let outcome = match read {
        Ok(stdin) => dispatch(plugin, env, stdin),
        Err(e) => error_outcome(&e, None),
    };
    print(outcome)
}

fn print(outcome: Outcome) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    ExitCode::from(outcome.exit)
}

/// Runs one invocation with an explicit environment and stdin; returns what to print.
/// A panic inside the plugin becomes an error object with code 999.
pub fn dispatch<P: Plugin + ?Sized>(
    plugin: &P,
    env: impl Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> Outcome {
    let mut version = None;
    let result = catch_unwind(AssertUnwindSafe(|| invoke(plugin, &env, stdin, &mut version)));
    match result {
        Ok(Ok(stdout)) => Outcome { stdout, exit: 0 },
        Ok(Err(e)) => error_outcome(&e, version),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            error_outcome(&Error::internal(format!("plugin panicked: {what}")), version)
        }
    }
}

fn error_outcome(e: &Error, version: Option<Version>) -> Outcome {
    Outcome { stdout: e.to_json(version), exit: 1 }
}

fn invoke<P: Plugin + ?Sized>(
    plugin: &P,
    env: &impl Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
    version_out: &mut Option<Version>,
) -> Result<String, Error> {
    let env = Environment::from_lookup(env)?;
    if env.command == Command::Version {
        return version_reply(plugin.supported_versions(), &stdin);
    }
    let req = Request::new(env, stdin).map_err(|e| with_supported(e, plugin.supported_versions()))?;
    *version_out = Some(req.version);
    gate(plugin.supported_versions(), req.env.command, req.version)?;
    // A `prevResult` that ADD or CHECK is given must be a result of the config's version
    // (code 7 naming it), whether or not the plugin reads it. DEL stays best-effort.
    if matches!(req.env.command, Command::Add | Command::Check) {
        req.prev_result()?;
    }
    match req.env.command {
        Command::Add => {
            let result = plugin.add(&req)?;
            result.to_json(req.version)
        }
        Command::Del => plugin.del(&req).map(|()| String::new()),
        Command::Check => plugin.check(&req).map(|()| String::new()),
        Command::Status => plugin.status(&req).map(|()| String::new()),
        Command::Gc => plugin.gc(&req).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

/// An unknown config version is reported with the versions of this plugin, not of the library.
fn with_supported(mut e: Error, supported: &[Version]) -> Error {
    const SUPPORTS: &str = "plugin supports ";
    if e.well_known() == Some(Code::IncompatibleVersion)
        && let Some(details) = e.details.as_mut()
        && let Some(at) = details.find(SUPPORTS)
    {
        details.truncate(at + SUPPORTS.len());
        details.push_str(&format_versions(supported));
    }
    e
}

/// The version gates of the spec: the config's version must be one the plugin supports;
/// CHECK needs 0.4.0, STATUS and GC need 1.1.0. Each failure is code 1.
///
/// ```
/// use cni_spec::{Command, Version};
/// assert!(cni_spec::plugin::gate(&Version::ALL, Command::Check, Version::V0_4_0).is_ok());
/// assert_eq!(cni_spec::plugin::gate(&Version::ALL, Command::Gc, Version::V1_0_0).unwrap_err().code, 1);
/// ```
pub fn gate(supported: &[Version], command: Command, version: Version) -> Result<(), Error> {
    if !supported.contains(&version) {
        return Err(Error::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
            format!("config is {:?}, plugin supports {}", version.as_str(), format_versions(supported)),
        ));
    }
    let allowed = match command {
        Command::Check => version.has_check(),
        Command::Status => version.has_status(),
        Command::Gc => version.has_gc(),
        _ => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(Error::new(
            Code::IncompatibleVersion,
            format!("config version {version} does not allow {command}"),
        ))
    }
}

/// The reply to `VERSION`, in the version the caller asked with when the plugin supports
/// it, else in the plugin's newest. No stdin at all is a person asking: the newest. Stdin
/// that does not decode is code 6, as for every other command.
fn version_reply(supported: &[Version], stdin: &[u8]) -> Result<String, Error> {
    let newest = supported.iter().copied().max().unwrap_or(Version::CURRENT);
    let asked = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        json::decode(stdin)?.get("cniVersion").and_then(Value::as_str).and_then(|v| v.parse::<Version>().ok())
    };
    let asked = asked.filter(|v| supported.contains(v)).unwrap_or(newest);
    Ok(serde_json::to_string(&VersionInfo::new(asked, supported)).expect("version info serializes"))
}
