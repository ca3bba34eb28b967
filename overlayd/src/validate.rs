//! The checks a remote lease must pass before it becomes a peer, and the typed peer it
//! becomes: judged once, here, with one rule for everyone downstream.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::attrs::{LeaseAttrs, MAX_VALUE, VxlanData};
use crate::config::NetworkConfig;
use crate::encryption::lease_data::{IpsecAttrs, TunnelAttrs};
use crate::identity::PublicKey;
use crate::peer::{Peer, PeerFamily};
use crate::subnet::{KeyError, SubnetKey};

/// Why a lease under `<prefix>/subnets/` is ignored.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum InvalidLease {
    /// The key is not a subnet key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Oversized value.
    #[error("value is {0} bytes, more than {MAX_VALUE}")]
    TooLarge(usize),
    /// Not lease JSON.
    #[error("value is not lease JSON: {0}")]
    Json(String),
    /// Subnet not inside the network or of the wrong length.
    #[error("subnet {subnet} is not a /{len} inside {network}")]
    Outside {
        /// The subnet.
        subnet: String,
        /// The network.
        network: String,
        /// Expected length.
        len: u8,
    },
    /// The network needs a family the key lacks.
    #[error("no {0} subnet, but the network has {0} enabled")]
    MissingFamily(&'static str),
    /// Another backend.
    #[error("backend type {got:?}, the network uses {want:?}")]
    BackendType {
        /// What the lease says.
        got: String,
        /// What the config says.
        want: String,
    },
    /// Backend data malformed.
    #[error("bad backend data: {0}")]
    BackendData(String),
    /// The identity key does not parse.
    #[error("Identity is not an Ed25519 public key (base64 of 32 bytes)")]
    Identity,
    /// Another VXLAN network.
    #[error("VNI {got}, the network uses {want}")]
    Vni {
        /// What the lease says.
        got: u32,
        /// What the config says.
        want: u32,
    },
    /// No usable underlay address.
    #[error("no usable public IP")]
    NoPublicIp,
    /// Claims (part of) our own subnet without being us.
    #[error("overlaps our own subnet {0}")]
    OverlapsOwn(String),
}

/// What a valid lease is, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Another node's, typed.
    Peer(Box<Peer>),
    /// One of ours (same node ID).
    Own(Box<LeaseAttrs>),
}

/// Checks remote leases against the network config and this node's identity.
#[derive(Debug, Clone)]
pub struct Validator {
    config: NetworkConfig,
    node_id: String,
}

impl Validator {
    /// For `config`, as node `node_id`.
    pub fn new(config: NetworkConfig, node_id: impl Into<String>) -> Self {
        Validator { config, node_id: node_id.into() }
    }

    /// The config it checks against.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Checks one key/value; `own` is this node's current subnet.
    pub fn check(
        &self,
        key: &SubnetKey,
        value: &[u8],
        own: Option<&SubnetKey>,
    ) -> Result<Verdict, InvalidLease> {
        if value.len() > MAX_VALUE {
            return Err(InvalidLease::TooLarge(value.len()));
        }
        let attrs: LeaseAttrs =
            serde_json::from_slice(value).map_err(|e| InvalidLease::Json(e.to_string()))?;
        if attrs.node_id.as_deref() == Some(self.node_id.as_str()) {
            return Ok(Verdict::Own(Box::new(attrs)));
        }
        self.check_subnets(key)?;
        if let Some(own) = own
            && own.overlaps(key)
        {
            return Err(InvalidLease::OverlapsOwn(own.to_string()));
        }
        let want = self.config.backend.type_name();
        if !attrs.backend_type.eq_ignore_ascii_case(want) {
            return Err(InvalidLease::BackendType {
                got: attrs.backend_type.chars().take(40).collect(),
                want: want.into(),
            });
        }
        let usable4 = attrs.public_ip.filter(|ip| {
            !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
        });
        let usable6 =
            attrs.public_ipv6.filter(|ip| !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast()));
        if usable4.is_none() && usable6.is_none() {
            return Err(InvalidLease::NoPublicIp);
        }
        let vni = self.config.vxlan().vni;
        let family = |subnet: Option<IpNet>, data: &Value, public: Option<IpAddr>| {
            let Some(subnet) = subnet else { return Ok(None) };
            let d = VxlanData::from_value(data).map_err(InvalidLease::BackendData)?;
            if d.vni != vni {
                return Err(InvalidLease::Vni { got: d.vni, want: vni });
            }
            let public = public.ok_or(InvalidLease::NoPublicIp)?;
            Ok(Some(PeerFamily { subnet: subnet.trunc(), public, vtep_mac: d.vtep_mac }))
        };
        // Only the families the network uses count; the IPv4 overlay runs over an IPv4
        // underlay, the IPv6 one over either.
        let v4 = match self.config.ipv4 {
            Some(_) => family(key.ipv4.map(IpNet::V4), &attrs.backend_data, usable4.map(IpAddr::V4))?,
            None => None,
        };
        let v6 = match self.config.ipv6 {
            // flannel's vxlan publishes v6 data separately when dual stack; IPv6-only leases
            // may carry it in BackendData.
            Some(_) => family(
                key.ipv6.map(IpNet::V6),
                if attrs.backend_v6_data.is_null() { &attrs.backend_data } else { &attrs.backend_v6_data },
                usable6.map(IpAddr::V6).or(usable4.map(IpAddr::V4)),
            )?,
            None => None,
        };
        let identity = match &attrs.identity {
            None => None,
            Some(s) => Some(PublicKey::parse(s).ok_or(InvalidLease::Identity)?),
        };
        let tunnel = TunnelAttrs::from_value(&attrs.encryption);
        let ipsec = IpsecAttrs::from_value(&attrs.encryption);
        Ok(Verdict::Peer(Box::new(Peer { key: *key, v4, v6, identity, tunnel, ipsec, attrs })))
    }

    /// The key's subnets fit the config (inside the network, the configured length).
    pub fn check_subnets(&self, key: &SubnetKey) -> Result<(), InvalidLease> {
        match (&self.config.ipv4, key.ipv4) {
            (Some(p), Some(n)) if !p.fits(&n.into()) => {
                return Err(InvalidLease::Outside {
                    subnet: n.to_string(),
                    network: p.network.to_string(),
                    len: p.subnet_len,
                });
            }
            (Some(_), None) => return Err(InvalidLease::MissingFamily("IPv4")),
            _ => {}
        }
        match (&self.config.ipv6, key.ipv6) {
            (Some(p), Some(n)) if !p.fits(&n.into()) => Err(InvalidLease::Outside {
                subnet: n.to_string(),
                network: p.network.to_string(),
                len: p.subnet_len,
            }),
            (Some(_), None) => Err(InvalidLease::MissingFamily("IPv6")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use crate::attrs::{LeaseAttrs, MAX_VALUE};

    fn validator() -> Validator {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap().config;
        Validator::new(c, "me")
    }

    fn key(s: &str) -> SubnetKey {
        SubnetKey::parse(s).unwrap()
    }

    const GOOD: &str = r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"NodeID":"n7"}"#;

    #[test]
    fn flannel_value_parses_and_round_trips() {
        // Documentation/reservations.md, without NodeID: a flannel node's lease.
        let v = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
        let a: LeaseAttrs = serde_json::from_str(v).unwrap();
        assert_eq!(a.public_ip, Some(Ipv4Addr::new(192, 168, 64, 3)));
        assert_eq!(a.node_id, None);
        let again: Value = serde_json::from_slice(&a.to_bytes()).unwrap();
        assert_eq!(again, serde_json::from_str::<Value>(v).unwrap());
        assert!(matches!(validator().check(&key("10.5.3.0-24"), v.as_bytes(), None), Ok(Verdict::Peer(_))));
    }

    #[test]
    fn hostile_values_are_rejected_with_reasons() {
        let v = validator();
        let own = key("10.5.9.0-24");
        let cases: &[(&str, &str, &str)] = &[
            ("10.5.3.0-24", "not json", "not lease JSON"),
            ("10.5.3.0-24", "[]", "not lease JSON"),
            ("10.5.3.0-24", r#"{"PublicIP":12,"BackendType":"vxlan"}"#, "not lease JSON"),
            ("10.6.3.0-24", GOOD, "not a /24 inside"),
            ("10.5.2.0-23", GOOD, "not a /24 inside"),
            ("10.5.9.0-24", GOOD, "overlaps our own"),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"192.0.2.7","BackendType":"udp","BackendData":null}"#,
                "backend type",
            ),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VNI":1}}"#,
                "VtepMAC missing",
            ),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VNI":99999999,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
                "24 bits",
            ),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}}"#,
                "unicast",
            ),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"192.0.2.7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f"}}"#,
                "not a MAC",
            ),
            (
                "10.5.3.0-24",
                r#"{"PublicIP":"0.0.0.0","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#,
                "public IP",
            ),
        ];
        for (k, val, why) in cases {
            let e = v.check(&key(k), val.as_bytes(), Some(&own)).unwrap_err();
            assert!(e.to_string().contains(why), "{k} {val}: {e}");
        }
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_VALUE));
        assert!(matches!(v.check(&key("10.5.3.0-24"), big.as_bytes(), None), Err(InvalidLease::TooLarge(_))));
    }

    fn peer(v: &Validator, key_s: &str, value: &str) -> Peer {
        match v.check(&key(key_s), value.as_bytes(), None) {
            Ok(Verdict::Peer(p)) => *p,
            other => panic!("{value}: {other:?}"),
        }
    }

    #[test]
    fn a_valid_lease_is_typed_once_and_the_same_rules_hold_everywhere() {
        let v = validator();
        // flannel writes "vxlan"; any case is the same backend, and the peer it gives is typed:
        // nothing downstream reads the JSON again.
        let upper = GOOD.replace("\"vxlan\"", "\"VXLAN\"");
        let p = peer(&v, "10.5.3.0-24", &upper);
        let f = p.v4.expect("the IPv4 family");
        assert_eq!(f.subnet, "10.5.3.0/24".parse::<IpNet>().unwrap());
        assert_eq!(f.public, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(f.vtep_mac, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(p.v6, None, "the network has no IPv6");
        assert_eq!(p.tunnel, Ok(None));

        // Another VNI is another network: refused here, not dropped later.
        let other_vni = GOOD.replace("\"VNI\":1", "\"VNI\":2");
        let e = v.check(&key("10.5.3.0-24"), other_vni.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::Vni { got: 2, want: 1 });

        // An IPv4 overlay needs an IPv4 underlay address.
        let v6_only =
            GOOD.replace("\"PublicIP\":\"192.0.2.7\",\"PublicIPv6\":null", "\"PublicIPv6\":\"2001:db8::7\"");
        let e = v.check(&key("10.5.3.0-24"), v6_only.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::NoPublicIp);

        // A family the network does not use gives the peer nothing in it.
        let p = peer(&v, "10.5.3.0-24&fd00::-64", GOOD);
        assert_eq!((p.v4.map(|f| f.subnet.to_string()), p.v6), (Some("10.5.3.0/24".into()), None));

        // Malformed tunnel data is carried as the reason; the lease itself stays valid.
        let bad_tunnel = GOOD.replace(
            "\"NodeID\"",
            "\"Encryption\":{\"Type\":\"wireguard\",\"PublicKey\":\"x\",\"Port\":1},\"NodeID\"",
        );
        let p = peer(&v, "10.5.3.0-24", &bad_tunnel);
        assert!(p.tunnel.is_err() && p.v4.is_some(), "{p:?}");
    }

    #[test]
    fn own_node_id_is_recognised() {
        let v = validator();
        let mine = GOOD.replace("n7", "me");
        assert!(matches!(
            v.check(&key("10.5.9.0-24"), mine.as_bytes(), Some(&key("10.5.9.0-24"))),
            Ok(Verdict::Own(_))
        ));
    }
}
