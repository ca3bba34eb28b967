//! Success results of every spec version and the conversions between them, as libcni does
//! them (`pkg/types/{020,040,100}`).
//!
//! [`SuccessResult`] is the 1.1.0 model. [`SuccessResult::to_value`] writes it in any
//! version (0.1.0/0.2.0 as `ip4`/`ip6`, 0.3.x/0.4.0 with `ips[].version`), and
//! [`SuccessResult::from_value`] reads any version into it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::parse::serde_strict as strict;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Dns, null_default};
use crate::error::{Code, Error};
use crate::json;
use crate::version::Version;

/// An interface in a result.
///
/// ```
/// let i = cni_spec::Interface::new("eth0").with_mac("99:88:77:66:55:44").with_sandbox("/var/run/netns/blue");
/// assert_eq!(i.sandbox.as_deref(), Some("/var/run/netns/blue"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// The interface's name.
    pub name: String,
    /// Its hardware address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; none for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// A socket path, for userspace datapaths (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_path: Option<String>,
    /// A PCI address (1.1.0).
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

impl Interface {
    /// An interface with only its name.
    pub fn new(name: impl Into<String>) -> Self {
        Interface { name: name.into(), ..Default::default() }
    }

    /// Sets the MAC.
    pub fn with_mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// Sets the sandbox (netns path).
    pub fn with_sandbox(mut self, sandbox: impl Into<String>) -> Self {
        self.sandbox = Some(sandbox.into());
        self
    }

    fn without_1_1_fields(&self) -> Interface {
        Interface { mtu: None, socket_path: None, pci_id: None, ..self.clone() }
    }
}

/// An address in a result: `address` keeps the host address and the prefix length.
///
/// ```
/// let ip = cni_spec::IpConfig::new("10.1.0.5/16".parse().unwrap()).with_gateway("10.1.0.1".parse().unwrap());
/// assert!(ip.is_v4());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpConfig {
    /// The address with its prefix length, e.g. `10.1.0.5/16`.
    #[serde(deserialize_with = "strict::prefix")]
    pub address: IpNet,
    /// The gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "strict::opt_ip")]
    pub gateway: Option<IpAddr>,
    /// The index into `interfaces` this address belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// An address with no gateway and no interface.
    pub fn new(address: IpNet) -> Self {
        IpConfig { address, gateway: None, interface: None }
    }

    /// Sets the gateway.
    pub fn with_gateway(mut self, gw: IpAddr) -> Self {
        self.gateway = Some(gw);
        self
    }

    /// Whether this is an IPv4 address.
    pub fn is_v4(&self) -> bool {
        matches!(self.address, IpNet::V4(_))
    }
}

/// A route in a result or an IPAM config.
///
/// ```
/// let r: cni_spec::Route = serde_json::from_str(r#"{"dst":"0.0.0.0/0","gw":"10.1.0.1","table":100}"#).unwrap();
/// assert_eq!(r.table, Some(100));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// The destination network.
    #[serde(deserialize_with = "strict::prefix")]
    pub dst: IpNet,
    /// The next hop; none means the address's gateway (or on-link).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "strict::opt_ip")]
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Advertised MSS (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    /// Route priority/metric (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    /// Routing table (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    /// Route scope: 0 global, 253 link, 254 host (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    /// A route to `dst`, optionally via `gw`.
    pub fn new(dst: IpNet, gw: Option<IpAddr>) -> Self {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

/// A success result (the 1.1.0 model), written and read in any spec version.
///
/// ```
/// use cni_spec::{SuccessResult, IpConfig, Version};
/// let mut r = SuccessResult::default();
/// r.ips.push(IpConfig::new("10.22.0.2/24".parse().unwrap()).with_gateway("10.22.0.1".parse().unwrap()));
/// let v = r.to_value(Version::V0_2_0).unwrap();
/// assert_eq!(v["ip4"]["ip"], "10.22.0.2/24");
/// let v = r.to_value(Version::V0_3_1).unwrap();
/// assert_eq!(v["ips"][0]["version"], "4");
/// assert_eq!(SuccessResult::from_value(v, Version::V0_3_1).unwrap(), r);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuccessResult {
    /// Interfaces created or used.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS information.
    pub dns: Dns,
}

impl SuccessResult {
    /// Reads a result. Its own `cniVersion` decides the shape; an empty or absent one
    /// means `default` (libcni's `fixupResultVersion`).
    pub fn from_value(value: Value, default: Version) -> Result<Self, Error> {
        let version = match value.get("cniVersion") {
            Some(Value::String(s)) if !s.is_empty() => s.parse()?,
            None | Some(Value::Null) | Some(Value::String(_)) => default,
            Some(other) => {
                return Err(Error::new(
                    Code::DecodingFailure,
                    format!("result cniVersion: expected a string, got {other}"),
                ));
            }
        };
        let mut value = value;
        let Some(obj) = value.as_object_mut() else {
            return Err(Error::new(Code::DecodingFailure, "a result must be a JSON object"));
        };
        // The shape's `cniVersion` field is required: fill in the one chosen above.
        obj.insert("cniVersion".into(), Value::String(version.to_string()));
        if version.has_legacy_result() {
            let legacy: Legacy = json::from_value(value)?;
            Ok(legacy.into_current())
        } else {
            let rich: Rich = json::from_value(value)?;
            rich.check_indices()?;
            Ok(rich.into_current())
        }
    }

    /// Reads a result from JSON bytes (see [`SuccessResult::from_value`]).
    pub fn from_slice(bytes: &[u8], default: Version) -> Result<Self, Error> {
        let value: Value = json::from_slice(bytes)?;
        Self::from_value(value, default)
    }

    /// Writes the result in `version`. 0.1.0 and 0.2.0 keep the first IPv4 and IPv6
    /// address, their routes split by family, and no interfaces; with no address at all
    /// it fails with code 1. 0.3.x and 0.4.0 drop the 1.1-only interface fields.
    pub fn to_value(&self, version: Version) -> Result<Value, Error> {
        let v = if version.has_legacy_result() {
            serde_json::to_value(Legacy::from_current(self, version)?)
        } else {
            serde_json::to_value(Rich::from_current(self, version))
        };
        Ok(v.expect("results always serialize"))
    }

    /// Writes the result as a JSON string in `version`.
    pub fn to_json(&self, version: Version) -> Result<String, Error> {
        Ok(self.to_value(version)?.to_string())
    }

    /// The result as it looks after a round trip through `version`: what a plugin of
    /// that version would hand on.
    pub fn converted(&self, version: Version) -> Result<Self, Error> {
        Self::from_value(self.to_value(version)?, version)
    }
}

/// The 0.3.0 to 1.1.0 wire shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rich {
    cni_version: Version,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    ips: Vec<RichIp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty", deserialize_with = "null_default")]
    dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct RichIp {
    /// "4" or "6"; required in 0.3.x/0.4.0, gone in 1.0.0 (and ignored when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(flatten)]
    ip: IpConfig,
}

impl Rich {
    fn from_current(r: &SuccessResult, version: Version) -> Rich {
        let old = version < Version::V1_0_0;
        Rich {
            cni_version: version,
            interfaces: r
                .interfaces
                .iter()
                .map(|i| if old { i.without_1_1_fields() } else { i.clone() })
                .collect(),
            ips: r
                .ips
                .iter()
                .map(|ip| RichIp {
                    version: version.has_ip_version().then(|| if ip.is_v4() { "4" } else { "6" }.to_string()),
                    ip: ip.clone(),
                })
                .collect(),
            routes: r.routes.clone(),
            dns: r.dns.clone(),
        }
    }

    fn check_indices(&self) -> Result<(), Error> {
        for (i, ip) in self.ips.iter().enumerate() {
            if let Some(v) = ip.version.as_deref() {
                let expected = if ip.ip.is_v4() { "4" } else { "6" };
                if v != expected {
                    return Err(Error::new(
                        Code::DecodingFailure,
                        format!("result ips[{i}].version is {v:?} but the address is IPv{expected}"),
                    ));
                }
            }
            if let Some(idx) = ip.ip.interface
                && idx >= self.interfaces.len()
            {
                return Err(Error::new(
                    Code::DecodingFailure,
                    format!("result ips[{i}].interface {idx} is out of range"),
                ));
            }
        }
        Ok(())
    }

    fn into_current(self) -> SuccessResult {
        SuccessResult {
            interfaces: self.interfaces,
            ips: self.ips.into_iter().map(|i| i.ip).collect(),
            routes: self.routes,
            dns: self.dns,
        }
    }
}

/// The 0.1.0/0.2.0 wire shape.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Legacy {
    cni_version: Version,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip4: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<LegacyIp>,
    #[serde(default, skip_serializing_if = "Dns::is_empty", deserialize_with = "null_default")]
    dns: Dns,
}

#[derive(Serialize, Deserialize)]
struct LegacyIp {
    #[serde(deserialize_with = "strict::prefix")]
    ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "strict::opt_ip")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_default")]
    routes: Vec<LegacyRoute>,
}

#[derive(Serialize, Deserialize)]
struct LegacyRoute {
    #[serde(deserialize_with = "strict::prefix")]
    dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "strict::opt_ip")]
    gw: Option<IpAddr>,
}

impl Legacy {
    fn from_current(r: &SuccessResult, version: Version) -> Result<Legacy, Error> {
        let family = |v4: bool| {
            r.ips.iter().find(|ip| ip.is_v4() == v4).map(|ip| LegacyIp {
                ip: ip.address,
                gateway: ip.gateway,
                routes: r
                    .routes
                    .iter()
                    .filter(|rt| matches!(rt.dst, IpNet::V4(_)) == v4)
                    .map(|rt| LegacyRoute { dst: rt.dst, gw: rt.gw })
                    .collect(),
            })
        };
        let (ip4, ip6) = (family(true), family(false));
        if ip4.is_none() && ip6.is_none() {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("cannot convert the result to {version}: no valid IP addresses"),
            ));
        }
        Ok(Legacy { cni_version: version, ip4, ip6, dns: r.dns.clone() })
    }

    fn into_current(self) -> SuccessResult {
        let mut out = SuccessResult { dns: self.dns, ..Default::default() };
        for ip in [self.ip4, self.ip6].into_iter().flatten() {
            out.ips.push(IpConfig { address: ip.ip, gateway: ip.gateway, interface: None });
            out.routes.extend(ip.routes.into_iter().map(|r| Route::new(r.dst, r.gw)));
        }
        out
    }
}
