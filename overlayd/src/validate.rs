//! The checks a remote lease must pass before it becomes a peer, and the typed peer it
//! becomes: judged once, here, with one rule for everyone downstream.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::attrs::{LeaseAttrs, MAX_VALUE, VxlanData};
use crate::config::NetworkConfig;
use crate::encryption::lease_data::{IpsecAttrs, TunnelAttrs};
use crate::identity::PublicKey;
use crate::peer::{Peer, PeerFamily, Vtep};
use crate::pins::SharedPins;
use crate::store::KeyValue;
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
    /// Written without a store lease: it would never expire.
    #[error("written without a store lease (it would never expire)")]
    NoStoreLease,
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
    /// The key has a family the network does not use.
    #[error("an {0} subnet, but the network has no {0}")]
    UnusedFamily(&'static str),
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
    /// A signature that does not verify.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// Unsigned, where signatures are required (`RequireSignedLeases`, or a pinned node).
    #[error("not signed, and {0}")]
    Unsigned(&'static str),
    /// Signed by another key than the one its node ID is pinned to.
    #[error("node {node} is pinned to identity {pinned}; this lease is signed by {signer}")]
    IdentityMismatch {
        /// The node ID.
        node: String,
        /// The pinned key.
        pinned: String,
        /// Who signed.
        signer: String,
    },
    /// Carries this node's ID without this node's signature.
    #[error("carries this node's ID but was not written by this node")]
    Forged,
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
    /// A public address no peer may be sent to.
    #[error("public IP {ip} is {why}")]
    PublicIp {
        /// The address.
        ip: IpAddr,
        /// What it is.
        why: &'static str,
    },
    /// Claims (part of) our own subnet without being us.
    #[error("overlaps our own subnet {0}")]
    OverlapsOwn(String),
    /// Claims a subnet an older lease holds.
    #[error("overlaps {0}, an older lease")]
    OverlapsOlder(String),
}

/// What a valid lease is, seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Another node's, typed.
    Peer(Box<Peer>),
    /// One of ours (same node ID, and our signature when we have an identity).
    Own(Box<LeaseAttrs>),
}

/// Checks remote leases against the network config and this node's identity.
#[derive(Debug, Clone)]
pub struct Validator {
    config: NetworkConfig,
    node_id: String,
    identity: Option<PublicKey>,
    own_addresses: Vec<IpAddr>,
    pins: Option<SharedPins>,
}

/// Why an underlay address cannot be a peer's, if it cannot. IPv4-mapped and -compatible
/// IPv6 forms are refused outright: a `PublicIPv6` must be an IPv6 underlay address.
pub fn unusable_public_ip(ip: IpAddr, own: &[IpAddr]) -> Option<&'static str> {
    if own.contains(&ip) {
        return Some("this node's own address");
    }
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_unspecified() || o[0] == 0 {
                Some("in 0.0.0.0/8")
            } else if a.is_loopback() {
                Some("a loopback address")
            } else if a.is_link_local() {
                Some("link-local (169.254.0.0/16)")
            } else if a.is_multicast() {
                Some("multicast")
            } else if o[0] >= 240 {
                Some("reserved (240.0.0.0/4) or broadcast")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let seg = a.segments();
            if a.is_unspecified() || a.is_loopback() {
                Some("unspecified or loopback")
            } else if a.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if a.to_ipv4_mapped().is_some() || (seg[..6] == [0; 6]) {
                Some("an IPv4 address in IPv6 form")
            } else {
                None
            }
        }
    }
}

impl Validator {
    /// For `config`, as node `node_id`.
    pub fn new(config: NetworkConfig, node_id: impl Into<String>) -> Self {
        Validator { config, node_id: node_id.into(), identity: None, own_addresses: Vec::new(), pins: None }
    }

    /// This node's identity key: a lease with our node ID counts as ours only when it signed
    /// it.
    pub fn with_identity(mut self, identity: PublicKey) -> Self {
        self.identity = Some(identity);
        self
    }

    /// This node's own underlay addresses: never a peer's.
    pub fn with_own_addresses(mut self, addrs: Vec<IpAddr>) -> Self {
        self.own_addresses = addrs;
        self
    }

    /// The pinned identities to hold signed leases to.
    pub fn with_pins(mut self, pins: SharedPins) -> Self {
        self.pins = Some(pins);
        self
    }

    /// The config it checks against.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Follows the operator's `RequireSignedLeases` (applied live: callers judge every
    /// lease again afterwards).
    pub fn set_require_signed_leases(&mut self, on: bool) {
        self.config.require_signed_leases = on;
    }

    /// The pins, if any.
    pub fn pins(&self) -> Option<&SharedPins> {
        self.pins.as_ref()
    }

    /// Checks one stored lease: as [`Validator::check`], and it must be bound to a store lease
    /// (a key written without one would never expire).
    pub fn check_stored(
        &self,
        key: &SubnetKey,
        kv: &KeyValue,
        own: Option<&SubnetKey>,
    ) -> Result<Verdict, InvalidLease> {
        if kv.lease == 0 {
            return Err(InvalidLease::NoStoreLease);
        }
        self.check(key, &kv.value, own)
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
        let signer = attrs.signer(key).map_err(InvalidLease::BadSignature)?;
        if attrs.node_id.as_deref() == Some(self.node_id.as_str()) {
            return match (self.identity, signer) {
                (Some(me), Some(s)) if s != me => Err(InvalidLease::Forged),
                (Some(_), None) if self.config.require_signed_leases => Err(InvalidLease::Forged),
                _ => Ok(Verdict::Own(Box::new(attrs))),
            };
        }
        let pinned = match (&self.pins, &attrs.node_id) {
            (Some(p), Some(n)) => p.read().ok().and_then(|p| p.get(n)),
            _ => None,
        };
        match (pinned, signer) {
            (Some(p), Some(s)) if p != s => {
                return Err(InvalidLease::IdentityMismatch {
                    node: attrs.node_id.clone().unwrap_or_default().chars().take(64).collect(),
                    pinned: p.to_string(),
                    signer: s.to_string(),
                });
            }
            (Some(_), None) => return Err(InvalidLease::Unsigned("its node ID is pinned to an identity")),
            (None, None) if self.config.require_signed_leases => {
                return Err(InvalidLease::Unsigned("the network requires signed leases"));
            }
            _ => {}
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
        for ip in attrs.public_ip.map(IpAddr::V4).into_iter().chain(attrs.public_ipv6.map(IpAddr::V6)) {
            if let Some(why) = unusable_public_ip(ip, &self.own_addresses) {
                return Err(InvalidLease::PublicIp { ip, why });
            }
        }
        let (usable4, usable6) = (attrs.public_ip, attrs.public_ipv6);
        if usable4.is_none() && usable6.is_none() {
            return Err(InvalidLease::NoPublicIp);
        }
        // host-gw publishes no backend data (flannel writes null): the public addresses are
        // all a peer needs, and the backend reads them from the attributes.
        let (vtep4, vtep6) = match self.config.vxlan() {
            None => (None, None),
            Some(vx) => {
                let vni = vx.vni;
                let vtep = |data: &Value, public: IpAddr| {
                    let d = VxlanData::from_value(data).map_err(InvalidLease::BackendData)?;
                    if d.vni != vni {
                        return Err(InvalidLease::Vni { got: d.vni, want: vni });
                    }
                    Ok(Vtep { public, mac: d.vtep_mac })
                };
                // One device per underlay family, each carrying either pod family: `PublicIP`
                // with `BackendData` is its IPv4-underlay device, `PublicIPv6` with
                // `BackendV6Data` its IPv6 one (a node on an IPv6-only underlay may publish it
                // in `BackendData` only).
                let vtep4 = usable4.map(|ip| vtep(&attrs.backend_data, IpAddr::V4(ip))).transpose()?;
                let data6 = if attrs.backend_v6_data.is_null() {
                    &attrs.backend_data
                } else {
                    &attrs.backend_v6_data
                };
                let vtep6 = usable6.map(|ip| vtep(data6, IpAddr::V6(ip))).transpose()?;
                (vtep4, vtep6)
            }
        };
        // Only the families the network uses count (check_subnets made sure they are there).
        let v4 = self.config.ipv4.as_ref().and(key.ipv4).map(|n| PeerFamily { subnet: IpNet::V4(n).trunc() });
        let v6 = self.config.ipv6.as_ref().and(key.ipv6).map(|n| PeerFamily { subnet: IpNet::V6(n).trunc() });
        let identity = match (signer, &attrs.identity) {
            (Some(s), _) => Some(s),
            (None, None) => None,
            (None, Some(s)) => Some(PublicKey::parse(s).ok_or(InvalidLease::Identity)?),
        };
        let tunnel = TunnelAttrs::from_value(&attrs.encryption);
        let ipsec = IpsecAttrs::from_value(&attrs.encryption);
        Ok(Verdict::Peer(Box::new(Peer {
            key: *key,
            v4,
            v6,
            vtep4,
            vtep6,
            identity,
            signed: signer.is_some(),
            tunnel,
            ipsec,
            attrs,
        })))
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
            (None, Some(_)) => return Err(InvalidLease::UnusedFamily("IPv4")),
            _ => {}
        }
        match (&self.config.ipv6, key.ipv6) {
            (Some(p), Some(n)) if !p.fits(&n.into()) => Err(InvalidLease::Outside {
                subnet: n.to_string(),
                network: p.network.to_string(),
                len: p.subnet_len,
            }),
            (Some(_), None) => Err(InvalidLease::MissingFamily("IPv6")),
            (None, Some(_)) => Err(InvalidLease::UnusedFamily("IPv6")),
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
    fn a_flannel_host_gw_lease_is_a_peer_of_a_host_gw_network() {
        let c =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap().config;
        let v = Validator::new(c, "me");
        // What flanneld's host-gw writes: no backend data.
        let lease =
            r#"{"PublicIP":"192.0.2.7","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#;
        let Ok(Verdict::Peer(p)) = v.check(&key("10.5.3.0-24"), lease.as_bytes(), None) else {
            panic!("refused")
        };
        assert_eq!(p.attrs.public_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert!(p.vtep4.is_none());
        // A vxlan lease is another backend's.
        assert!(matches!(
            v.check(&key("10.5.3.0-24"), GOOD.as_bytes(), None),
            Err(InvalidLease::BackendType { .. })
        ));
        let no_ip = r#"{"BackendType":"host-gw","BackendData":null}"#;
        assert_eq!(v.check(&key("10.5.3.0-24"), no_ip.as_bytes(), None), Err(InvalidLease::NoPublicIp));
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
        let vtep = Vtep { public: "192.0.2.7".parse().unwrap(), mac: [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44] };
        assert_eq!((p.vtep4, p.vtep6), (Some(vtep), None));
        assert_eq!(p.v6, None, "the network has no IPv6");
        assert_eq!(p.tunnel, Ok(None));

        // Another VNI is another network: refused here, not dropped later.
        let other_vni = GOOD.replace("\"VNI\":1", "\"VNI\":2");
        let e = v.check(&key("10.5.3.0-24"), other_vni.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::Vni { got: 2, want: 1 });

        // An IPv4 overlay over an IPv6-only underlay: the device is the IPv6 one.
        let v6_only =
            GOOD.replace("\"PublicIP\":\"192.0.2.7\",\"PublicIPv6\":null", "\"PublicIPv6\":\"2001:db8::7\"");
        let p = peer(&v, "10.5.3.0-24", &v6_only);
        assert_eq!(p.vtep4, None);
        assert_eq!(p.vtep6.map(|t| t.public), Some("2001:db8::7".parse().unwrap()));
        assert!(p.v4.is_some());
        let none = GOOD.replace("\"PublicIP\":\"192.0.2.7\",", "");
        let e = v.check(&key("10.5.3.0-24"), none.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::NoPublicIp);

        // A family the network does not use is refused (it would be a range nobody checks).
        let e = v.check(&key("10.5.3.0-24&fd00::-64"), GOOD.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::UnusedFamily("IPv6"));

        // Malformed tunnel data is carried as the reason; the lease itself stays valid.
        let bad_tunnel = GOOD.replace(
            "\"NodeID\"",
            "\"Encryption\":{\"Type\":\"wireguard\",\"PublicKey\":\"x\",\"Port\":1},\"NodeID\"",
        );
        let p = peer(&v, "10.5.3.0-24", &bad_tunnel);
        assert!(p.tunnel.is_err() && p.v4.is_some(), "{p:?}");
    }

    #[test]
    fn an_ipv6_only_network_refuses_an_ipv4_part() {
        // `0.0.0.0-0&…` would be a peer for 0.0.0.0/0 if the unused family went unchecked.
        let c =
            NetworkConfig::parse(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:81::/56"}"#)
                .unwrap()
                .config;
        let v = Validator::new(c, "me");
        let e = v.check(&key("0.0.0.0-0&fd00:81:0:3::-64"), GOOD.as_bytes(), None).unwrap_err();
        assert_eq!(e, InvalidLease::UnusedFamily("IPv4"));
        assert_eq!(v.check_subnets(&key("fd00:81:0:3::-64")), Ok(()));
    }

    #[test]
    fn public_addresses_no_peer_may_be_sent_to_are_refused() {
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        let v = validator().with_own_addresses(vec![me]);
        for bad in [
            "192.0.2.1",
            "127.0.0.1",
            "0.1.2.3",
            "169.254.169.254",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            let val = GOOD.replace("192.0.2.7", bad);
            let e = v.check(&key("10.5.3.0-24"), val.as_bytes(), None).unwrap_err();
            assert!(matches!(e, InvalidLease::PublicIp { .. }), "{bad}: {e}");
        }
        for bad6 in ["::ffff:127.0.0.1", "::ffff:192.0.2.9", "fe80::1", "::1", "ff02::1", "::192.0.2.9"] {
            let val = GOOD.replace("\"PublicIPv6\":null", &format!("\"PublicIPv6\":\"{bad6}\""));
            let e = v.check(&key("10.5.3.0-24"), val.as_bytes(), None).unwrap_err();
            assert!(matches!(e, InvalidLease::PublicIp { .. }), "{bad6}: {e}");
        }
        assert!(v.check(&key("10.5.3.0-24"), GOOD.as_bytes(), None).is_ok());
    }

    #[test]
    fn signed_leases_pinned_identities_and_forgeries() {
        use crate::identity::Identity;
        use crate::pins::Pins;
        let dir = |_| tempfile::tempdir().unwrap();
        let (d1, d2, d3) = (dir(1), dir(2), dir(3));
        let (me, n7, thief) = (
            Identity::load_or_create(d1.path()).unwrap(),
            Identity::load_or_create(d2.path()).unwrap(),
            Identity::load_or_create(d3.path()).unwrap(),
        );
        let pins = Pins::in_memory().shared();
        let v = validator().with_identity(me.public()).with_pins(pins.clone());
        let k = key("10.5.3.0-24");
        let attrs: LeaseAttrs = serde_json::from_str(GOOD).unwrap();
        let signed_by = |id: &Identity, a: &LeaseAttrs| a.signed(&k, id).to_bytes();

        // A signed lease is a peer with its identity; the watcher pins it.
        let p = peer(&v, "10.5.3.0-24", std::str::from_utf8(&signed_by(&n7, &attrs)).unwrap());
        assert!(p.signed && p.identity == Some(n7.public()));
        pins.write().unwrap().pin("n7", n7.public());
        // From then on n7's leases must be signed by n7's key: not another's, not unsigned.
        let e = v.check(&k, &signed_by(&thief, &attrs), None).unwrap_err();
        assert!(matches!(e, InvalidLease::IdentityMismatch { .. }), "{e}");
        let e = v.check(&k, GOOD.as_bytes(), None).unwrap_err();
        assert!(matches!(e, InvalidLease::Unsigned(_)), "{e}");
        // A signature that does not verify is refused whatever the pins say.
        let mut tampered: LeaseAttrs = serde_json::from_slice(&signed_by(&n7, &attrs)).unwrap();
        tampered.public_ip = Some("192.0.2.66".parse().unwrap());
        let e = v.check(&k, &tampered.to_bytes(), None).unwrap_err();
        assert!(matches!(e, InvalidLease::BadSignature(_)), "{e}");
        // A lease with our node ID that we did not sign is a forgery, not ours.
        let mine = LeaseAttrs { node_id: Some("me".into()), ..attrs.clone() };
        assert!(matches!(v.check(&k, &signed_by(&me, &mine), None), Ok(Verdict::Own(_))));
        assert_eq!(v.check(&k, &signed_by(&thief, &mine), None).unwrap_err(), InvalidLease::Forged);

        // RequireSignedLeases: unsigned leases of unpinned nodes are refused too.
        let strict =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","RequireSignedLeases":true}"#).unwrap().config;
        let v = Validator::new(strict, "me").with_identity(me.public());
        let other = LeaseAttrs { node_id: Some("n8".into()), ..attrs.clone() };
        assert!(matches!(v.check(&k, &other.to_bytes(), None), Err(InvalidLease::Unsigned(_))));
        assert!(v.check(&k, &signed_by(&thief, &other), None).is_ok());
        assert_eq!(v.check(&k, &mine.to_bytes(), None).unwrap_err(), InvalidLease::Forged);
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
