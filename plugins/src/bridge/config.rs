//! The bridge plugin's options: the reference's JSON keys and defaults, and its validations.

use cni_spec::config::{Dns, Ipam};
use cni_spec::{Request, parse};
use netkernel::link::{Mac, PortVlan};
use serde::Deserialize;

use super::error::BridgeError;

/// A `vlanTrunk` entry: one `id`, or a `minID`..`maxID` range.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct TrunkEntry {
    /// A single VLAN.
    #[serde(default, rename = "id")]
    pub id: Option<i64>,
    /// First VLAN of a range.
    #[serde(default, rename = "minID")]
    pub min_id: Option<i64>,
    /// Last VLAN of a range.
    #[serde(default, rename = "maxID")]
    pub max_id: Option<i64>,
}

fn default_bridge() -> String {
    "cni0".into()
}

/// The bridge's own keys.
const KEYS: &[&str] = &[
    "bridge",
    "isGateway",
    "isDefaultGateway",
    "forceAddress",
    "ipMasqBackend",
    "mtu",
    "hairpinMode",
    "promiscMode",
    "vlan",
    "vlanTrunk",
    "preserveDefaultVlan",
    "macspoofchk",
    "enabledad",
    "disableContainerInterface",
    "portIsolation",
];

/// The raw options, as in the reference's `NetConf`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default = "default_bridge")]
    bridge: String,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    ip_masq_backend: Option<String>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    #[serde(default)]
    vlan: i64,
    #[serde(default)]
    vlan_trunk: Vec<TrunkEntry>,
    #[serde(default)]
    preserve_default_vlan: bool,
    #[serde(default)]
    macspoofchk: bool,
    #[serde(default)]
    enabledad: bool,
    #[serde(default)]
    disable_container_interface: bool,
    #[serde(default)]
    port_isolation: bool,
    #[serde(default)]
    ipam: Option<Ipam>,
    #[serde(default)]
    dns: Option<Dns>,
}

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConf {
    /// Bridge name.
    pub bridge: String,
    /// Put the gateway address on the bridge and forward.
    pub is_gateway: bool,
    /// Add a default route via the gateway in the container.
    pub is_default_gateway: bool,
    /// Replace a conflicting bridge address.
    pub force_address: bool,
    /// Masquerade traffic leaving the subnet.
    pub ip_masq: bool,
    /// MTU of the bridge and both veth ends.
    pub mtu: Option<u32>,
    /// Hairpin mode on the host port.
    pub hairpin_mode: bool,
    /// Promiscuous bridge.
    pub promisc_mode: bool,
    /// Access VLAN (0 = none).
    pub vlan: u16,
    /// Trunk VLANs.
    pub vlan_trunk: Vec<PortVlan>,
    /// Keep VLAN 1 on the port.
    pub preserve_default_vlan: bool,
    /// Drop frames whose source MAC is not the container's.
    pub macspoofchk: bool,
    /// IPv6 duplicate address detection in the container.
    pub enabledad: bool,
    /// Leave the container interface down.
    pub disable_container_interface: bool,
    /// Isolate the host port.
    pub port_isolation: bool,
    /// The IPAM plugin's type, if any (L3); none means L2 only.
    pub ipam_type: Option<String>,
    /// DNS that overrides the IPAM result's.
    pub dns: Option<Dns>,
    /// The requested container MAC.
    pub mac: Option<Mac>,
}

impl BridgeConf {
    /// Parses and validates the request's config, as the reference does, and more
    /// strictly: every value that the kernel or the IPAM plugin would refuse later, or
    /// that would make an attachment other than the one asked for, is refused here.
    pub fn load(req: &Request) -> Result<Self, BridgeError> {
        let raw: Raw = req.parse_config()?;
        cni_spec::input::refuse_case_variants(&req.config.extra, KEYS, "")?;
        parse::ifname(&raw.bridge).map_err(|e| BridgeError::config("bridge", e))?;
        if !(0..=4094).contains(&raw.vlan) {
            return Err(BridgeError::config(
                "vlan",
                format!("invalid VLAN ID {} (must be between 0 and 4094)", raw.vlan),
            ));
        }
        let vlan_trunk = parse_trunks(&raw.vlan_trunk)?;
        if raw.hairpin_mode && raw.promisc_mode {
            return Err(BridgeError::config(
                "hairpinMode",
                "cannot set hairpin mode and promiscuous mode at the same time",
            ));
        }
        let ipam_type = match &raw.ipam {
            None => None,
            Some(ipam) if ipam.kind.is_empty() && ipam.extra.is_empty() => None,
            Some(ipam) if ipam.kind.is_empty() => {
                // The reference makes an attachment without an address here.
                return Err(BridgeError::config(
                    "ipam.type",
                    "missing: an ipam section with options needs the IPAM plugin's type (use {} for no IPAM)",
                ));
            }
            Some(ipam) => {
                parse::plugin_name(&ipam.kind).map_err(|e| BridgeError::config("ipam.type", e))?;
                Some(ipam.kind.clone())
            }
        };
        if raw.disable_container_interface && ipam_type.is_some() {
            return Err(BridgeError::config(
                "disableContainerInterface",
                "cannot use IPAM when DisableContainerInterface flag is set",
            ));
        }
        match raw.ip_masq_backend.as_deref() {
            None | Some("") | Some("iptables") | Some("nftables") => {}
            Some(other) => {
                return Err(BridgeError::config(
                    "ipMasqBackend",
                    format!("{other:?} is not supported (use \"nftables\" or \"iptables\")"),
                ));
            }
        }
        let mtu = match raw.mtu {
            None | Some(0) => None,
            Some(m) if (68..=65535).contains(&m) => Some(m as u32),
            Some(m) => return Err(BridgeError::config("mtu", format!("{m} is outside 68..65535"))),
        };
        if let Some(dns) = &raw.dns {
            dns.validate("dns")?;
        }
        req.env.args.check_known(&["MAC"])?;
        Ok(BridgeConf {
            bridge: raw.bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: raw.ip_masq,
            mtu,
            hairpin_mode: raw.hairpin_mode,
            promisc_mode: raw.promisc_mode,
            vlan: raw.vlan as u16,
            vlan_trunk,
            preserve_default_vlan: raw.preserve_default_vlan,
            macspoofchk: raw.macspoofchk,
            enabledad: raw.enabledad,
            disable_container_interface: raw.disable_container_interface,
            port_isolation: raw.port_isolation,
            ipam_type,
            dns: raw.dns,
            mac: container_mac(req)?,
        })
    }

    /// Whether VLAN filtering is needed on the bridge.
    pub fn vlan_filtering(&self) -> bool {
        self.vlan != 0 || !self.vlan_trunk.is_empty()
    }
}

/// The container MAC: `CNI_ARGS MAC=` < `args.cni.mac` < `runtimeConfig.mac` (later wins).
fn container_mac(req: &Request) -> Result<Option<Mac>, BridgeError> {
    let mut chosen: Option<(&str, String)> = req.env.args.get("MAC").map(|m| ("CNI_ARGS MAC", m.to_string()));
    if let Some(m) = req.config.args.as_ref().and_then(|a| a.cni.as_ref()).and_then(|c| c.mac.clone()) {
        chosen = Some(("args.cni.mac", m));
    }
    if let Some(m) = req.config.runtime_config.as_ref().and_then(|r| r.mac.clone()) {
        chosen = Some(("runtimeConfig.mac", m));
    }
    match chosen {
        None => Ok(None),
        // The CNI_ARGS MAC is an environment value: code 4 naming CNI_ARGS.
        Some(("CNI_ARGS MAC", m)) => {
            parse::unicast_mac(&m).map(Some).map_err(|e| BridgeError::env("CNI_ARGS", format!("MAC: {e}")))
        }
        Some((field, m)) => parse::unicast_mac(&m).map(Some).map_err(|e| BridgeError::config(field, e)),
    }
}

fn parse_trunks(entries: &[TrunkEntry]) -> Result<Vec<PortVlan>, BridgeError> {
    let check = |field: String, v: i64| -> Result<u16, BridgeError> {
        if (1..=4094).contains(&v) {
            Ok(v as u16)
        } else {
            Err(BridgeError::config(field, format!("invalid VLAN ID {v} (must be between 1 and 4094)")))
        }
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        match (e.id, e.min_id, e.max_id) {
            (Some(id), None, None) => {
                let v = check(format!("vlanTrunk[{i}].id"), id)?;
                out.push(PortVlan::Trunk(v, v));
            }
            (None, Some(min), Some(max)) => {
                let a = check(format!("vlanTrunk[{i}].minID"), min)?;
                let b = check(format!("vlanTrunk[{i}].maxID"), max)?;
                if a > b {
                    return Err(BridgeError::config(
                        format!("vlanTrunk[{i}]"),
                        "minID is greater than maxID",
                    ));
                }
                out.push(PortVlan::Trunk(a, b));
            }
            (None, Some(_), None) => {
                return Err(BridgeError::config(format!("vlanTrunk[{i}]"), "minID without maxID"));
            }
            (None, None, Some(_)) => {
                return Err(BridgeError::config(format!("vlanTrunk[{i}]"), "maxID without minID"));
            }
            (None, None, None) => {
                return Err(BridgeError::config(format!("vlanTrunk[{i}]"), "needs id or minID/maxID"));
            }
            _ => {
                return Err(BridgeError::config(
                    format!("vlanTrunk[{i}]"),
                    "id cannot be combined with minID/maxID",
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_spec::Environment;

    fn req(conf: &str, args: &str) -> Request {
        let env = Environment::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_NETNS" => Some("/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .unwrap();
        Request::new(env, conf.as_bytes().to_vec()).unwrap()
    }

    fn load(extra: &str) -> Result<BridgeConf, cni_spec::Error> {
        let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge"{extra}}}"#);
        // Some values are refused by the library already (the well-known fields).
        let env = req(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, "").env;
        let r = Request::new(env, conf.into_bytes())?;
        BridgeConf::load(&r).map_err(cni_spec::Error::from)
    }

    #[test]
    fn defaults() {
        let c = load("").unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && c.mtu.is_none() && c.ipam_type.is_none());
        assert!(load(r#","isDefaultGateway":true"#).unwrap().is_gateway);
    }

    #[test]
    fn rejections_name_the_field() {
        for (extra, field) in [
            (r#","vlan":4095"#, "vlan"),
            (r#","vlan":-1"#, "vlan"),
            (r#","hairpinMode":true,"promiscMode":true"#, "hairpinMode"),
            (
                r#","disableContainerInterface":true,"ipam":{"type":"host-local"}"#,
                "disableContainerInterface",
            ),
            (r#","ipMasqBackend":"pf""#, "ipMasqBackend"),
            (r#","mtu":20"#, "mtu"),
            (r#","bridge":"a-very-long-bridge-name""#, "bridge"),
            (r#","vlanTrunk":[{"id":0}]"#, "vlanTrunk[0].id"),
            (r#","vlanTrunk":[{"minID":5}]"#, "vlanTrunk[0]"),
            (r#","vlanTrunk":[{"maxID":5}]"#, "vlanTrunk[0]"),
            (r#","vlanTrunk":[{"minID":9,"maxID":5}]"#, "vlanTrunk[0]"),
            (r#","vlanTrunk":[{"id":1},{"minID":1,"maxID":4095}]"#, "vlanTrunk[1].maxID"),
            (r#","vlanTrunk":[{"id":3,"minID":1,"maxID":4}]"#, "vlanTrunk[0]"),
            (r#","isGateway":"yes""#, "isGateway"),
            (r#","bridge":"..""#, "bridge"),
            (r#","bridge":"h\u0000x""#, "bridge"),
            (r#","bridge":"br%d""#, "bridge"),
            (r#","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}"#, "ipam.type"),
            (r#","ipam":{"type":"../x"}"#, "ipam.type"),
            (r#","dns":[]"#, "dns"),
            (r#","dns":{"nameservers":["10.0.0.1\n"]}"#, "dns.nameservers[0]"),
            (r#","vlanTrunk":[[5]]"#, "vlanTrunk[0]"),
            (r#","runtimeConfig":{"mac":"01:00:5e:00:00:01"}"#, "runtimeConfig.mac"),
            (r#","args":{"cni":{"mac":"00:00:00:00:00:00"}}"#, "args.cni.mac"),
        ] {
            let e = load(extra).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
            assert!(e.msg.contains(field), "{extra}: {e}");
        }
    }

    #[test]
    fn trunks() {
        let c = load(r#","vlan":0,"vlanTrunk":[{"id":101},{"minID":200,"maxID":210}]"#).unwrap();
        assert_eq!(c.vlan_trunk, vec![PortVlan::Trunk(101, 101), PortVlan::Trunk(200, 210)]);
        assert!(c.vlan_filtering());
    }

    #[test]
    fn mac_precedence() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#;
        let load = |conf: &str, args: &str| BridgeConf::load(&req(conf, args)).map_err(cni_spec::Error::from);
        let c = load(conf, "MAC=0a:00:00:00:00:01").unwrap();
        assert_eq!(c.mac, Some([0x0a, 0, 0, 0, 0, 1]));
        let conf =
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","args":{"cni":{"mac":"0a:00:00:00:00:02"}}}"#;
        assert_eq!(load(conf, "MAC=0a:00:00:00:00:01").unwrap().mac.unwrap()[5], 2);
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","args":{"cni":{"mac":"0a:00:00:00:00:02"}},
            "runtimeConfig":{"mac":"0a:00:00:00:00:03"}}"#;
        assert_eq!(load(conf, "MAC=0a:00:00:00:00:01").unwrap().mac.unwrap()[5], 3);
        let e = load(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, "MAC=nope").unwrap_err();
        assert!(e.code == 4 && e.msg.contains("CNI_ARGS: MAC"), "{e}");
        let e = load(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, "FOO=1").unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            load(r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#, "FOO=1;IgnoreUnknown=1").is_ok()
        );
        // An empty ipam section, or one with an empty type alone, is layer 2 only.
        for ipam in [r#"{}"#, r#"{"type":""}"#] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{ipam}}}"#);
            assert!(load(&conf, "").unwrap().ipam_type.is_none());
        }
    }
}
