//! The `CNI_*` environment a plugin is called with, validated as the spec asks.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::config::is_valid_name;
use crate::error::Error;

/// A CNI command (`CNI_COMMAND`).
///
/// ```
/// use cni_spec::Command;
/// assert_eq!("GC".parse::<Command>().unwrap(), Command::Gc);
/// assert_eq!(Command::Status.to_string(), "STATUS");
/// assert_eq!("add".parse::<Command>().unwrap_err().code, 4);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Report readiness (1.1.0).
    Status,
    /// Reclaim resources of stale attachments (1.1.0).
    Gc,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Whether the command concerns one attachment (needs the container variables).
    pub fn is_per_container(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(Error::invalid_env(
                    "CNI_COMMAND",
                    format!(
                        "unknown CNI_COMMAND {other:?} (expected ADD, DEL, CHECK, STATUS, GC or VERSION)"
                    ),
                ));
            }
        })
    }
}

/// `CNI_ARGS`: `K1=V1;K2=V2`, in order.
///
/// ```
/// let a = cni_spec::CniArgs::parse("IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=web").unwrap();
/// assert_eq!(a.get("IP"), Some("10.0.0.5"));
/// assert!(a.check_known(&["IP"]).is_ok()); // unknown keys allowed by IgnoreUnknown
/// assert_eq!(cni_spec::CniArgs::parse("IP").unwrap_err().code, 4);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// The pairs, in order.
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// Parses the variable; every pair must be exactly `K=V` with a non-empty key.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((k, v)) if !k.is_empty() && !v.contains('=') => {
                    pairs.push((k.to_string(), v.to_string()))
                }
                _ => {
                    return Err(Error::invalid_env(
                        "CNI_ARGS",
                        format!("invalid pair {part:?}: expected KEY=VALUE"),
                    ));
                }
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The last value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Whether `IgnoreUnknown` is `1` or `true`.
    pub fn ignore_unknown(&self) -> bool {
        self.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }

    /// Fails with code 4 naming the first key not in `known`, unless `IgnoreUnknown` is set
    /// (the behaviour of Go's `types.LoadArgs`).
    pub fn check_known(&self, known: &[&str]) -> Result<(), Error> {
        if self.ignore_unknown() {
            return Ok(());
        }
        match self.pairs.iter().find(|(k, _)| k != "IgnoreUnknown" && !known.contains(&k.as_str())) {
            Some((k, _)) => Err(Error::invalid_env(
                "CNI_ARGS",
                format!("unknown key {k:?} (set IgnoreUnknown=1 to allow it)"),
            )),
            None => Ok(()),
        }
    }

    /// The `K=V;…` form.
    pub fn encode(&self) -> String {
        self.pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";")
    }
}

/// The longest container ID a plugin takes. The spec sets no limit; runtimes use 64 hex
/// digits. A bound keeps every place that stores the ID (lease files, tags, file names)
/// able to hold it whole.
///
/// ```
/// let long = "a".repeat(cni_spec::env::MAX_CONTAINER_ID + 1);
/// let e = cni_spec::Environment::from_lookup(|k| match k {
///     "CNI_COMMAND" => Some("DEL".into()),
///     "CNI_CONTAINERID" => Some(long.clone()),
///     "CNI_IFNAME" => Some("eth0".into()),
///     _ => None,
/// }).unwrap_err();
/// assert_eq!(e.code, 4);
/// ```
pub const MAX_CONTAINER_ID: usize = 1024;

/// The validated environment of one invocation.
///
/// ```
/// use cni_spec::{Command, Environment};
/// let env = Environment::from_lookup(|k| match k {
///     "CNI_COMMAND" => Some("ADD".into()),
///     "CNI_CONTAINERID" => Some("c1".into()),
///     "CNI_NETNS" => Some("/run/netns/x".into()),
///     "CNI_IFNAME" => Some("eth0".into()),
///     "CNI_PATH" => Some("/opt/cni/bin:/usr/lib/cni".into()),
///     _ => None,
/// }).unwrap();
/// assert_eq!(env.command, Command::Add);
/// assert_eq!(env.path.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS, GC and VERSION).
    pub container_id: String,
    /// `CNI_NETNS`: required for ADD and CHECK, optional on DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for STATUS, GC and VERSION).
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl Environment {
    /// Reads and validates the process environment.
    pub fn from_process() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads and validates an environment given as a lookup function.
    /// Every problem is code 4 and names the variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let command: Command = get("CNI_COMMAND")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid_env("CNI_COMMAND", "missing"))?
            .parse()?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let per_container = command.is_per_container();

        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        if per_container {
            if container_id.is_empty() {
                return Err(Error::invalid_env("CNI_CONTAINERID", "missing"));
            }
            if container_id.len() > MAX_CONTAINER_ID {
                return Err(Error::invalid_env(
                    "CNI_CONTAINERID",
                    format!("longer than {MAX_CONTAINER_ID} bytes ({} bytes)", container_id.len()),
                ));
            }
            if !is_valid_name(&container_id) {
                let shown: String = container_id.chars().take(80).collect();
                return Err(Error::invalid_env(
                    "CNI_CONTAINERID",
                    format!("{shown:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
                ));
            }
        }

        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(Error::invalid_env("CNI_NETNS", format!("missing (required for {command})")));
        }
        if per_container
            && let Some(p) = &netns
            && let Err(why) = crate::parse::abs_path(&p.to_string_lossy())
        {
            return Err(Error::invalid_env("CNI_NETNS", why));
        }

        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        if per_container {
            validate_ifname(&ifname)?;
        }

        let args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;

        let path: Vec<PathBuf> = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if command == Command::Gc && path.is_empty() {
            return Err(Error::invalid_env("CNI_PATH", "missing (required for GC)"));
        }

        Ok(Environment { command, container_id, netns, ifname, args, path })
    }
}

/// Checks an interface name (see [`crate::parse::ifname`]: 1–15 bytes of printable ASCII,
/// not `.` or `..`, no `/`, `:`, `%` or whitespace). Code 4 naming `CNI_IFNAME`.
///
/// ```
/// assert!(cni_spec::env::validate_ifname("eth0").is_ok());
/// assert!(cni_spec::env::validate_ifname("a-very-long-name0").is_err());
/// assert_eq!(cni_spec::env::validate_ifname("eth\u{200b}0").unwrap_err().code, 4);
/// ```
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::invalid_env("CNI_IFNAME", "missing"));
    }
    crate::parse::ifname(name).map_err(|why| Error::invalid_env("CNI_IFNAME", why))
}
