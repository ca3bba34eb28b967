//! The portmap plugin's options and port mappings: the reference's JSON keys, validated
//! before anything is changed.

use std::net::IpAddr;

use cni_spec::{Request, SuccessResult, parse};
use ipnet::IpNet;
use netkernel::portmap::Proto;
use serde::Deserialize;
use serde_json::Value;

use crate::error::PluginError;

/// The reference's default masquerade mark bit.
pub const DEFAULT_MARK_BIT: u8 = 13;

/// The portmap plugin's own keys.
const KEYS: &[&str] =
    &["snat", "conditionsV4", "conditionsV6", "masqAll", "markMasqBit", "externalSetMarkChain", "backend"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    snat: Option<bool>,
    #[serde(default, rename = "conditionsV4")]
    conditions_v4: Option<Vec<String>>,
    #[serde(default, rename = "conditionsV6")]
    conditions_v6: Option<Vec<String>>,
    #[serde(default)]
    masq_all: Option<bool>,
    #[serde(default)]
    mark_masq_bit: Option<i64>,
    #[serde(default)]
    external_set_mark_chain: Option<String>,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    runtime_config: Option<RawRuntime>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRuntime {
    #[serde(default)]
    port_mappings: Option<Vec<RawMapping>>,
}

/// A mapping as given: numbers as JSON numbers, checked here with the field named.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMapping {
    host_port: Value,
    container_port: Value,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<String>,
}

/// One requested mapping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mapping {
    /// Protocol.
    pub proto: Proto,
    /// Host port.
    pub host_port: u16,
    /// Container port.
    pub container_port: u16,
    /// The host address; `Some(0.0.0.0)` or `Some(::)` means any address of that family.
    pub host_ip: Option<IpAddr>,
}

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortmapConf {
    /// Masquerade hairpin and localhost traffic.
    pub snat: bool,
    /// The masquerade mark bit (accepted for compatibility; see the docs).
    pub mark_bit: u8,
    /// The mappings of `runtimeConfig.portMappings`.
    pub mappings: Vec<Mapping>,
}

fn port(v: &Value, field: String) -> Result<u16, PluginError> {
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) => Ok(p as u16),
        _ => Err(PluginError::config(field, format!("{v} is not a port number (1..65535)"))),
    }
}

impl PortmapConf {
    /// Parses and validates the request's options and mappings.
    pub fn load(req: &Request) -> Result<Self, PluginError> {
        let raw: Raw = req.parse_config()?;
        cni_spec::input::refuse_case_variants(&req.config.extra, KEYS, "")?;
        for (field, c) in [("conditionsV4", &raw.conditions_v4), ("conditionsV6", &raw.conditions_v6)] {
            if c.as_ref().is_some_and(|c| !c.is_empty()) {
                return Err(PluginError::unsupported(
                    field,
                    "iptables match conditions are not supported: every port mapping applies to all traffic to the node",
                ));
            }
        }
        if raw.masq_all == Some(true) {
            return Err(PluginError::unsupported(
                "masqAll",
                "masquerading all host-port traffic is not supported",
            ));
        }
        if raw.mark_masq_bit.is_some() && raw.external_set_mark_chain.is_some() {
            return Err(PluginError::config("externalSetMarkChain", "cannot be given with markMasqBit"));
        }
        let mark_bit = match raw.mark_masq_bit {
            None => DEFAULT_MARK_BIT,
            Some(b) if (0..=31).contains(&b) => b as u8,
            Some(b) => {
                return Err(PluginError::config("markMasqBit", format!("{b} is not between 0 and 31")));
            }
        };
        if let Some(chain) = &raw.external_set_mark_chain
            && (chain.is_empty()
                || chain.len() > 64
                || !chain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(PluginError::config(
                "externalSetMarkChain",
                format!("{chain:?} is not a chain name"),
            ));
        }
        match raw.backend.as_deref() {
            None | Some("") | Some("iptables") | Some("nftables") => {}
            Some(other) => {
                return Err(PluginError::config(
                    "backend",
                    format!("{other:?} is not supported (use \"nftables\" or \"iptables\")"),
                ));
            }
        }
        let mut mappings = Vec::new();
        let raw_maps = raw.runtime_config.and_then(|r| r.port_mappings).unwrap_or_default();
        for (i, m) in raw_maps.iter().enumerate() {
            let at = |f: &str| format!("runtimeConfig.portMappings[{i}].{f}");
            let host_port = port(&m.host_port, at("hostPort"))?;
            let container_port = port(&m.container_port, at("containerPort"))?;
            let proto = match m.protocol.as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("") | Some("tcp") => Proto::Tcp,
                Some("udp") => Proto::Udp,
                Some("sctp") => Proto::Sctp,
                Some(_) => {
                    return Err(PluginError::config(
                        at("protocol"),
                        format!("{:?} is not tcp, udp or sctp", m.protocol.as_deref().unwrap_or_default()),
                    ));
                }
            };
            let host_ip = match m.host_ip.as_deref() {
                None | Some("") => None,
                Some(h) => Some(parse::ip(h).map_err(|e| PluginError::config(at("hostIP"), e))?),
            };
            let new = Mapping { proto, host_port, container_port, host_ip };
            // One host port of one protocol (and address) can go to one place only.
            if let Some(old) = mappings.iter().find(|o: &&Mapping| {
                o.proto == new.proto && o.host_port == new.host_port && o.host_ip == new.host_ip
            }) && old != &new
            {
                return Err(PluginError::config(
                    at("hostPort"),
                    format!("{}/{} is mapped twice", host_port, proto.name()),
                ));
            }
            if !mappings.contains(&new) {
                mappings.push(new);
            }
        }
        Ok(PortmapConf { snat: raw.snat.unwrap_or(true), mark_bit, mappings })
    }
}

/// The container's addresses (with their prefix), as the reference finds them in
/// `prevResult`: the first IPv4 and the first IPv6 address that belong to `ifname` in a
/// sandbox (or to no interface).
pub fn container_ips(prev: &SuccessResult, ifname: &str) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    for ip in &prev.ips {
        let addr = ip.address.addr();
        if out.iter().any(|o| o.addr().is_ipv4() == addr.is_ipv4()) {
            continue;
        }
        if let Some(i) = ip.interface
            && let Some(iface) = prev.interfaces.get(i)
            && (iface.name != ifname || iface.sandbox.as_deref().is_none_or(str::is_empty))
        {
            continue;
        }
        out.push(ip.address);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_spec::Environment;

    fn load(extra: &str) -> Result<PortmapConf, cni_spec::Error> {
        let env = Environment::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_NETNS" => Some("/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            _ => None,
        })
        .unwrap();
        let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"portmap"{extra}}}"#);
        let req = Request::new(env, conf.into_bytes())?;
        PortmapConf::load(&req).map_err(cni_spec::Error::from)
    }

    #[test]
    fn mappings_and_defaults() {
        let c = load("").unwrap();
        assert!(c.snat && c.mappings.is_empty() && c.mark_bit == 13);
        let c = load(
            r#","snat":false,"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"TCP"},
            {"hostPort":53,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"},
            {"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#,
        )
        .unwrap();
        assert!(!c.snat);
        assert_eq!(c.mappings.len(), 2, "duplicates are one mapping");
        assert_eq!(c.mappings[1].host_ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn rejections_name_the_field() {
        for (extra, code, field) in [
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}"#,
                7,
                "portMappings[0].hostPort",
            ),
            (r#","runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}"#, 7, "hostPort"),
            (r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":-1}]}"#, 7, "containerPort"),
            (r#","runtimeConfig":{"portMappings":[{"hostPort":"80","containerPort":80}]}"#, 7, "hostPort"),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}"#,
                7,
                "protocol",
            ),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"1.2.3"}]}"#,
                7,
                "hostIP",
            ),
            (
                r#","runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}]}"#,
                7,
                "portMappings[1].hostPort",
            ),
            (r#","runtimeConfig":{"portMappings":[{"containerPort":80}]}"#, 7, "hostPort"),
            (r#","markMasqBit":32"#, 7, "markMasqBit"),
            (r#","markMasqBit":1,"externalSetMarkChain":"KUBE-MARK-MASQ""#, 7, "externalSetMarkChain"),
            (r#","externalSetMarkChain":"a b""#, 7, "externalSetMarkChain"),
            (r#","conditionsV4":["-s","1.2.3.4"]"#, 2, "conditionsV4"),
            (r#","masqAll":true"#, 2, "masqAll"),
            (r#","backend":"pf""#, 7, "backend"),
            (r#","snat":"yes""#, 7, "snat"),
            (r#","SNAT":true"#, 7, "SNAT"),
        ] {
            let e = load(extra).unwrap_err();
            assert_eq!(e.code, code, "{extra}: {e}");
            assert!(e.msg.contains(field), "{extra}: {e}");
        }
        assert!(load(r#","externalSetMarkChain":"KUBE-MARK-MASQ","conditionsV4":[]"#).is_ok());
    }
}
