//! Network configuration: config lists (`.conflist`), legacy single configs (`.conf`), and the
//! per-plugin request config a plugin reads on stdin.
//!
//! Unknown keys are kept (`extra`) and written back unchanged, so a runtime passes every
//! plugin-specific option through.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::json;
use crate::result::SuccessResult;
use crate::version::{self, Version};

/// A JSON object, as kept for unknown keys.
pub type Object = Map<String, Value>;

/// Whether `name` is a valid network name or container ID: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
///
/// ```
/// assert!(cni_spec::config::is_valid_name("my-net.1"));
/// assert!(!cni_spec::config::is_valid_name("-bad"));
/// assert!(!cni_spec::config::is_valid_name("a/b"));
/// ```
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// DNS settings, as in configs (`dns`) and results.
///
/// ```
/// let d: cni_spec::Dns = serde_json::from_str(r#"{"nameservers":["10.1.0.1"]}"#).unwrap();
/// assert_eq!(d.nameservers, ["10.1.0.1"]);
/// assert!(!d.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers, in priority order (IP addresses: see [`Dns::validate`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub options: Vec<String>,
}

impl Dns {
    /// Checks DNS settings from a config (`field` names where they are): every name
    /// server is an IP address, and no value is empty or holds whitespace or control
    /// characters (they would end up in a resolv.conf line).
    ///
    /// ```
    /// let d: cni_spec::Dns = serde_json::from_str(r#"{"nameservers":["10.0.0.1\n"]}"#).unwrap();
    /// let e = d.validate("dns").unwrap_err();
    /// assert_eq!((e.code, e.msg.contains("dns.nameservers[0]")), (7, true));
    /// ```
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        for (i, ns) in self.nameservers.iter().enumerate() {
            crate::parse::ip(ns)
                .map_err(|e| Error::invalid_config(&format!("{field}.nameservers[{i}]"), e))?;
        }
        let word = |name: String, v: &str| -> Result<(), Error> {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::invalid_config(&name, format!("{v:?} is not a resolver word")));
            }
            Ok(())
        };
        if let Some(d) = &self.domain {
            word(format!("{field}.domain"), d)?;
        }
        for (i, s) in self.search.iter().enumerate() {
            word(format!("{field}.search[{i}]"), s)?;
        }
        for (i, o) in self.options.iter().enumerate() {
            word(format!("{field}.options[{i}]"), o)?;
        }
        Ok(())
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.as_deref().is_none_or(str::is_empty)
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The `ipam` section: the IPAM plugin's `type` and its own options.
///
/// ```
/// let i: cni_spec::config::Ipam =
///     serde_json::from_str(r#"{"type":"host-local","subnet":"10.1.0.0/16"}"#).unwrap();
/// assert_eq!(i.kind, "host-local");
/// assert_eq!(i.extra["subnet"], "10.1.0.0/16");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ipam {
    /// The IPAM plugin's binary name; empty means "no IPAM" (an L2-only config).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Every other key, for the IPAM plugin.
    #[serde(flatten)]
    pub extra: Object,
}

/// A port mapping (capability `portMappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    /// The port on the host.
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
    /// `tcp`, `udp` or `sctp`.
    #[serde(default)]
    pub protocol: String,
    /// The host address to bind, if not all.
    #[serde(rename = "hostIP", default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// One IP range, as in host-local's `ranges` and capability `ipRanges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    /// The subnet in CIDR notation.
    pub subnet: String,
    /// The first address to hand out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_start: Option<String>,
    /// The last address to hand out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_end: Option<String>,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// Traffic shaping (capability `bandwidth`), in bits per second and bits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    /// Ingress rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<u64>,
    /// Ingress burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<u64>,
    /// Egress rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate: Option<u64>,
    /// Egress burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<u64>,
}

/// DNS from the runtime (capability `dns`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeDns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    /// Options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// `runtimeConfig`: the values of the conventional capabilities the runtime passed.
///
/// ```
/// let rc: cni_spec::config::RuntimeConfig = serde_json::from_str(
///     r#"{"mac":"00:11:22:33:44:66","ips":["10.1.0.9/24"],"custom":1}"#).unwrap();
/// assert_eq!(rc.mac.as_deref(), Some("00:11:22:33:44:66"));
/// assert_eq!(rc.extra["custom"], 1);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// `portMappings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_mappings: Option<Vec<PortMapping>>,
    /// `ipRanges`: range sets, as host-local's `ranges`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_ranges: Option<Vec<Vec<IpRange>>>,
    /// `bandwidth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
    /// `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<RuntimeDns>,
    /// `ips`: requested addresses (with or without prefix length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// `mac`: the requested container MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// `aliases`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aliases: Option<Vec<String>>,
    /// `infinibandGUID`.
    #[serde(rename = "infinibandGUID", default, skip_serializing_if = "Option::is_none")]
    pub infiniband_guid: Option<String>,
    /// `deviceID`.
    #[serde(rename = "deviceID", default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// `cgroupPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    /// Any other capability.
    #[serde(flatten)]
    pub extra: Object,
}

/// The `args.cni` conventions: `ips`, `mac`, `labels`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniConventionArgs {
    /// Requested addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// Requested MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Labels, `{"key":…,"value":…}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<Value>>,
    /// Anything else under `args.cni`.
    #[serde(flatten)]
    pub extra: Object,
}

/// The `args` section.
///
/// ```
/// let a: cni_spec::config::Args =
///     serde_json::from_str(r#"{"cni":{"ips":["10.0.0.7"]}}"#).unwrap();
/// assert_eq!(a.cni.unwrap().ips.unwrap(), ["10.0.0.7"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Args {
    /// `args.cni`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni: Option<CniConventionArgs>,
    /// Other namespaces of args.
    #[serde(flatten)]
    pub extra: Object,
}

/// The config a plugin receives on stdin: a plugin object plus `cniVersion`, `name`, and for
/// ADD/DEL/CHECK `runtimeConfig` and `prevResult`. Also the shape of a legacy `.conf` file.
///
/// ```
/// let c = cni_spec::NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","mtu":1400}"#).unwrap();
/// assert_eq!((c.kind.as_str(), c.version().unwrap()), ("bridge", cni_spec::Version::V1_0_0));
/// assert_eq!(c.extra["mtu"], 1400);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of this config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    /// The network's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin's binary name.
    #[serde(rename = "type")]
    pub kind: String,
    /// Capabilities the plugin supports (a runtime may leave them in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<BTreeMap<String, bool>>,
    /// `ipMasq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    /// The IPAM section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Ipam>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Values of the capabilities the runtime passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<RuntimeConfig>,
    /// Per-attachment args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Args>,
    /// The previous plugin's result (or the cached final result on DEL/CHECK), raw:
    /// use [`NetConf::prev_result`] to read it in this config's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// Every other key, passed through.
    #[serde(flatten)]
    pub extra: Object,
}

impl NetConf {
    /// Parses and validates a plugin config: malformed JSON is code 6, a wrong or missing
    /// well-known field code 7 naming it, an unknown `cniVersion` code 1.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let conf: NetConf = json::from_slice(bytes)?;
        conf.validate()?;
        Ok(conf)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.version()?;
        if crate::parse::plugin_name(&self.kind).is_err() {
            return Err(Error::invalid_config("type", format!("{:?} is not a plugin name", self.kind)));
        }
        if let Some(name) = &self.name
            && !is_valid_name(name)
        {
            return Err(Error::invalid_config("name", format!("{name:?} is not a valid network name")));
        }
        Ok(())
    }

    /// The spec version (no `cniVersion` means 0.1.0).
    pub fn version(&self) -> Result<Version, Error> {
        self.cni_version.as_deref().unwrap_or("").parse()
    }

    /// The network name, or an error naming `name` if it is missing.
    pub fn network_name(&self) -> Result<&str, Error> {
        self.name.as_deref().ok_or_else(|| Error::invalid_config("name", "missing"))
    }

    /// `prevResult`, parsed as a result of this config's version (as libcni does). A
    /// `prevResult` that is not a result of that version is code 7 naming it, by the
    /// faulty field's full path where there is one.
    ///
    /// ```
    /// let conf: cni_spec::NetConf = serde_json::from_value(serde_json::json!({"cniVersion": "1.0.0",
    ///     "name": "n", "type": "t", "prevResult": {"interfaces": [{"name": 7}]}})).unwrap();
    /// let e = conf.prev_result().unwrap_err();
    /// assert_eq!(e.code, 7);
    /// assert!(e.msg.starts_with("invalid network config: prevResult.interfaces[0].name: "), "{e}");
    /// ```
    pub fn prev_result(&self) -> Result<Option<SuccessResult>, Error> {
        use crate::error::Code;
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => SuccessResult::from_value(v.clone(), self.version()?).map(Some).map_err(|e| {
                match e.well_known() {
                    Some(Code::IncompatibleVersion) => e,
                    // Named by its full path: `prevResult.interfaces[0].name`.
                    Some(Code::InvalidConfig) => crate::input::nested_at(e, "prevResult"),
                    _ => Error::invalid_config("prevResult", e.msg),
                }
            }),
        }
    }

    /// The IPAM plugin's type, if the config has one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref().map(|i| i.kind.as_str()).filter(|k| !k.is_empty())
    }
}

/// A network configuration list (`.conflist`).
///
/// ```
/// let l = cni_spec::NetConfList::parse(br#"{"cniVersion":"1.0.0","cniVersions":["1.1.0"],
///   "name":"net","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#).unwrap();
/// assert_eq!(l.version().unwrap(), cni_spec::Version::V1_1_0);
/// assert_eq!(l.plugin_types(), ["bridge", "portmap"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConfList {
    /// The list's `cniVersion`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    /// `cniVersions` (1.1.0): the highest supported of these and `cniVersion` is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    pub cni_versions: Vec<String>,
    /// The network's name.
    pub name: String,
    /// Never call CHECK on this network.
    #[serde(default, skip_serializing_if = "is_false", deserialize_with = "bool_or_string")]
    pub disable_check: bool,
    /// Never call GC on this network.
    #[serde(
        rename = "disableGC",
        default,
        skip_serializing_if = "is_false",
        deserialize_with = "bool_or_string"
    )]
    pub disable_gc: bool,
    /// Do not load plugin configs from `<confdir>/<name>/`.
    #[serde(default, skip_serializing_if = "is_false", deserialize_with = "bool_or_string")]
    pub load_only_inlined_plugins: bool,
    /// The plugin objects, raw, so every key reaches its plugin unchanged.
    #[serde(default, deserialize_with = "null_default")]
    pub plugins: Vec<Object>,
    /// Every other key.
    #[serde(flatten)]
    pub extra: Object,
    /// The bytes the list was parsed from, kept because libcni caches them verbatim.
    #[serde(skip)]
    pub source: Option<Vec<u8>>,
}

impl NetConfList {
    /// Parses and validates a config list.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let mut list: NetConfList = json::from_slice(bytes)?;
        list.validate()?;
        list.source = Some(bytes.to_vec());
        Ok(list)
    }

    /// Checks the name, the version and every plugin's `type`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.name.is_empty() {
            return Err(Error::invalid_config("name", "missing"));
        }
        if !is_valid_name(&self.name) {
            return Err(Error::invalid_config(
                "name",
                format!("{:?} is not a valid network name", self.name),
            ));
        }
        self.version()?;
        if self.load_only_inlined_plugins && self.plugins.is_empty() {
            return Err(Error::invalid_config(
                "plugins",
                "loadOnlyInlinedPlugins is set but the list has no plugins",
            ));
        }
        for (i, p) in self.plugins.iter().enumerate() {
            match p.get("type") {
                Some(Value::String(t)) if !t.is_empty() && !t.contains('/') => {}
                Some(other) => {
                    return Err(Error::invalid_config(
                        &format!("plugins[{i}].type"),
                        format!("{other} is not a plugin name"),
                    ));
                }
                None => {
                    return Err(Error::invalid_config(&format!("plugins[{i}].type"), "missing"));
                }
            }
        }
        Ok(())
    }

    /// The version to run the list with (see [`version::negotiate`]).
    pub fn version(&self) -> Result<Version, Error> {
        version::negotiate(self.cni_version.as_deref(), &self.cni_versions)
    }

    /// The plugins' types, in order.
    pub fn plugin_types(&self) -> Vec<&str> {
        self.plugins.iter().filter_map(|p| p.get("type").and_then(Value::as_str)).collect()
    }

    /// Turns a legacy single config (`.conf`) into a one-plugin list, as libcni does.
    ///
    /// ```
    /// let l = cni_spec::NetConfList::from_conf(br#"{"cniVersion":"0.2.0","name":"old","type":"bridge"}"#).unwrap();
    /// assert_eq!((l.name.as_str(), l.plugins.len()), ("old", 1));
    /// ```
    pub fn from_conf(bytes: &[u8]) -> Result<Self, Error> {
        let conf = NetConf::parse(bytes)?;
        let name = conf.network_name()?.to_string();
        let plugin: Object = json::from_slice(bytes)?;
        let list = NetConfList {
            cni_version: conf.cni_version.clone(),
            name,
            plugins: vec![plugin],
            ..Default::default()
        };
        list.validate()?;
        Ok(list)
    }

    /// The list as bytes: the source it was parsed from, else serialized anew.
    pub fn to_bytes(&self) -> Vec<u8> {
        match &self.source {
            Some(bytes) => bytes.clone(),
            None => serde_json::to_vec(self).expect("a config list always serializes"),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// libcni accepts `true`/`false` and the strings `"true"`/`"false"` for its list flags.
fn bool_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(b) => Ok(b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        Value::Null => Ok(false),
        other => Err(serde::de::Error::custom(format!("expected a boolean, got {other}"))),
    }
}

/// `null` reads as the default (Go's encoder writes nil slices as `null`).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
