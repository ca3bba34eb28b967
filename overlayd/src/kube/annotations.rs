//! A Node object as a lease, both ways, with flannel's annotations so that a node running
//! flanneld and one running overlayd read each other:
//!
//! | annotation (default prefix `flannel.alpha.coreos.com/`) | lease field |
//! |---|---|
//! | `kube-subnet-manager: "true"` | the Node is a lease at all |
//! | `spec.podCIDRs` (else `spec.podCIDR`) | the key (`10.244.3.0-24&fd00:…-64`) |
//! | `backend-type`, `backend-data`, `backend-v6-data` | `BackendType`, `BackendData`, `BackendV6Data` |
//! | `public-ip`, `public-ipv6` (an admin's `public-ip-overwrite` / `public-ipv6-overwrite` wins) | `PublicIP`, `PublicIPv6` |
//! | `metadata.name` | `NodeID` |
//! | `overlayd.ferrocni.io/identity`, `…/encryption`, `…/signature` | `Identity`, `Encryption`, `Signature` |
//!
//! What does not parse (a podCIDR, an IP, backend data that is not JSON, an oversized value)
//! makes no lease: [`Translation::Invalid`] says why. Everything that does becomes the lease
//! JSON etcd would hold, which the validator then judges like any other.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde_json::{Map, Value, json};

use super::nodes::NodeLite;
use crate::attrs::{LeaseAttrs, MAX_VALUE};
use crate::subnet::SubnetKey;

/// The prefix of the annotations flannel has none for.
pub const OWN_PREFIX: &str = "overlayd.ferrocni.io/";

/// The annotation names for one `--kube-annotation-prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotations {
    /// `kube-subnet-manager`.
    pub kube_subnet_manager: String,
    /// `backend-type`.
    pub backend_type: String,
    /// `backend-data`.
    pub backend_data: String,
    /// `backend-v6-data`.
    pub backend_v6_data: String,
    /// `public-ip`.
    pub public_ip: String,
    /// `public-ipv6`.
    pub public_ipv6: String,
    /// `public-ip-overwrite` (set by an admin).
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite` (set by an admin).
    pub public_ipv6_overwrite: String,
    /// Our identity key.
    pub identity: String,
    /// Our tunnel (encryption).
    pub encryption: String,
    /// Our lease signature.
    pub signature: String,
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations::new("flannel.alpha.coreos.com").expect("the default prefix is valid")
    }
}

impl Annotations {
    /// Names under `prefix`, by flannel's rule: a prefix without a slash gets `/`; one
    /// ending in neither `/` nor `-` gets `-` (`example.com/foo` → `example.com/foo-backend-data`).
    pub fn new(prefix: &str) -> Result<Self, String> {
        let mut p = prefix.to_string();
        match p.matches('/').count() {
            0 => p.push('/'),
            1 => {}
            _ => return Err(format!("annotation prefix {prefix:?} has more than one '/'")),
        }
        if !p.ends_with('/') && !p.ends_with('-') {
            p.push('-');
        }
        let domain = p.split('/').next().unwrap_or_default();
        if domain.is_empty()
            || domain.len() > 253
            || !domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        {
            return Err(format!("annotation prefix {prefix:?} does not start with a DNS name"));
        }
        let n = |s: &str| format!("{p}{s}");
        let o = |s: &str| format!("{OWN_PREFIX}{s}");
        Ok(Annotations {
            kube_subnet_manager: n("kube-subnet-manager"),
            backend_type: n("backend-type"),
            backend_data: n("backend-data"),
            backend_v6_data: n("backend-v6-data"),
            public_ip: n("public-ip"),
            public_ipv6: n("public-ipv6"),
            public_ip_overwrite: n("public-ip-overwrite"),
            public_ipv6_overwrite: n("public-ipv6-overwrite"),
            identity: o("identity"),
            encryption: o("encryption"),
            signature: o("signature"),
        })
    }

    /// Whether the Node says it is leased by a kube subnet manager (flannel's test).
    pub fn managed(&self, node: &NodeLite) -> bool {
        node.annotation(&self.kube_subnet_manager) == Some("true")
    }

    /// The annotations that publish `attrs` (a merge patch: `null` removes one).
    pub fn publish(&self, attrs: &LeaseAttrs) -> Map<String, Value> {
        let mut m = Map::new();
        let text = |v: &Value| if v.is_null() { Value::Null } else { Value::String(v.to_string()) };
        m.insert(self.kube_subnet_manager.clone(), json!("true"));
        m.insert(self.backend_type.clone(), json!(attrs.backend_type));
        m.insert(self.backend_data.clone(), text(&attrs.backend_data));
        m.insert(self.backend_v6_data.clone(), text(&attrs.backend_v6_data));
        m.insert(self.public_ip.clone(), attrs.public_ip.map_or(Value::Null, |ip| json!(ip.to_string())));
        m.insert(self.public_ipv6.clone(), attrs.public_ipv6.map_or(Value::Null, |ip| json!(ip.to_string())));
        m.insert(self.identity.clone(), attrs.identity.as_ref().map_or(Value::Null, |s| json!(s)));
        m.insert(self.encryption.clone(), text(&attrs.encryption));
        m.insert(self.signature.clone(), attrs.signature.as_ref().map_or(Value::Null, |s| json!(s)));
        m
    }

    /// The patch that withdraws the node (`overlayctl leave`): peers stop using it.
    pub fn withdraw(&self) -> Map<String, Value> {
        let mut m = self.publish(&LeaseAttrs::default());
        for v in m.values_mut() {
            *v = Value::Null;
        }
        m
    }

    /// Whether `node` already carries what `wanted` (from [`Annotations::publish`]) says.
    pub fn carries(&self, node: &NodeLite, wanted: &Map<String, Value>) -> bool {
        wanted.iter().all(|(k, v)| match v {
            Value::Null => node.annotation(k).is_none(),
            Value::String(s) => node.annotation(k) == Some(s.as_str()),
            _ => false,
        })
    }

    /// The admin's public address overrides on `node`, when they parse.
    pub fn overwrites(&self, node: &NodeLite) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        (
            node.annotation(&self.public_ip_overwrite).and_then(|s| s.trim().parse().ok()),
            node.annotation(&self.public_ipv6_overwrite).and_then(|s| s.trim().parse().ok()),
        )
    }
}

/// What a Node is, as a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Translation {
    /// Not leased by a kube subnet manager (no `kube-subnet-manager: "true"`).
    NotManaged,
    /// Managed, but no podCIDR assigned yet.
    NoPodCidr,
    /// A lease: the key, and the value as etcd would hold it.
    Lease {
        /// The subnets.
        key: SubnetKey,
        /// Lease JSON.
        value: Vec<u8>,
    },
    /// Managed, but something does not parse: no lease.
    Invalid {
        /// The key, when the podCIDRs parse.
        key: Option<SubnetKey>,
        /// Short CamelCase reason, for the Event.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The podCIDRs as a lease key: one IPv4 and at most one IPv6 network, each written as its
/// network address (`10.244.3.0/24`, not `10.244.3.7/24`).
pub fn pod_cidr_key(cidrs: &[String]) -> Result<Option<SubnetKey>, String> {
    let mut key = SubnetKey { ipv4: None, ipv6: None };
    for c in cidrs {
        let shown: String = c.chars().take(64).collect();
        let net: IpNet = c.trim().parse().map_err(|_| format!("podCIDR {shown:?} is not a CIDR"))?;
        if net.trunc() != net {
            return Err(format!("podCIDR {shown} has host bits set (network address {})", net.trunc()));
        }
        match net {
            IpNet::V4(n) => set_once(&mut key.ipv4, n, &shown)?,
            IpNet::V6(n) => set_once(&mut key.ipv6, n, &shown)?,
        }
    }
    Ok((key.ipv4.is_some() || key.ipv6.is_some()).then_some(key))
}

fn set_once<N: Copy>(slot: &mut Option<N>, n: N, shown: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("more than one podCIDR of the family of {shown}"));
    }
    *slot = Some(n);
    Ok(())
}

/// The node's subnets as generic networks (for the conflict index).
pub fn nets(key: &SubnetKey) -> Vec<IpNet> {
    key.ipv4.map(IpNet::V4).into_iter().chain(key.ipv6.map(IpNet::V6)).collect()
}

/// `node` as a lease.
pub fn translate(node: &NodeLite, a: &Annotations) -> Translation {
    if !a.managed(node) {
        return Translation::NotManaged;
    }
    let key = match pod_cidr_key(&node.pod_cidrs) {
        Ok(Some(k)) => k,
        Ok(None) => return Translation::NoPodCidr,
        Err(message) => return Translation::Invalid { key: None, reason: "InvalidPodCIDR", message },
    };
    let invalid = |reason, message| Translation::Invalid { key: Some(key), reason, message };
    if let Some((k, len)) = node.oversized.first() {
        return invalid(
            "AnnotationTooLarge",
            format!("annotation {k} is {len} bytes, more than {MAX_VALUE}"),
        );
    }
    // The admin's overwrite wins over what the node published (flannel's rule).
    let ip = |over: &str, plain: &str| -> Option<(String, String)> {
        [over, plain].into_iter().find_map(|name| {
            node.annotation(name)
                .filter(|s| !s.trim().is_empty())
                .map(|s| (name.to_string(), s.trim().to_string()))
        })
    };
    let bad_ip = |name: &str, s: &str, family: &str| {
        let shown: String = s.chars().take(64).collect();
        invalid("InvalidPublicIP", format!("annotation {name} is not an {family} address: {shown:?}"))
    };
    let public_ip = match ip(&a.public_ip_overwrite, &a.public_ip) {
        None => Value::Null,
        Some((name, s)) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => json!(ip.to_string()),
            Err(_) => return bad_ip(&name, &s, "IPv4"),
        },
    };
    let public_ipv6 = match ip(&a.public_ipv6_overwrite, &a.public_ipv6) {
        None => Value::Null,
        Some((name, s)) => match s.parse::<Ipv6Addr>() {
            Ok(ip) => json!(ip.to_string()),
            Err(_) => return bad_ip(&name, &s, "IPv6"),
        },
    };
    let json_of = |name: &str| -> Result<Value, String> {
        match node.annotation(name) {
            None => Ok(Value::Null),
            Some(s) => serde_json::from_str(s).map_err(|e| format!("annotation {name} is not JSON: {e}")),
        }
    };
    let backend_data = match json_of(&a.backend_data) {
        Ok(v) => v,
        Err(m) => return invalid("InvalidBackendData", m),
    };
    let backend_v6_data = match json_of(&a.backend_v6_data) {
        Ok(v) => v,
        Err(m) => return invalid("InvalidBackendData", m),
    };
    // A tunnel that does not parse costs only the tunnel (as with etcd): kept as a string
    // that the encryption controller refuses.
    let encryption = json_of(&a.encryption)
        .unwrap_or_else(|_| Value::String(node.annotation(&a.encryption).unwrap_or_default().into()));
    let mut m = Map::new();
    m.insert("PublicIP".into(), public_ip);
    m.insert("PublicIPv6".into(), public_ipv6);
    m.insert("BackendType".into(), json!(node.annotation(&a.backend_type).unwrap_or_default()));
    m.insert("BackendData".into(), backend_data);
    if !backend_v6_data.is_null() {
        m.insert("BackendV6Data".into(), backend_v6_data);
    }
    m.insert("NodeID".into(), json!(node.name()));
    if let Some(s) = node.annotation(&a.identity) {
        m.insert("Identity".into(), json!(s));
    }
    if !encryption.is_null() {
        m.insert("Encryption".into(), encryption);
    }
    if let Some(s) = node.annotation(&a.signature) {
        m.insert("Signature".into(), json!(s));
    }
    let value = serde_json::to_vec(&Value::Object(m)).expect("JSON values serialize");
    if value.len() > MAX_VALUE {
        return invalid(
            "AnnotationTooLarge",
            format!("the lease is {} bytes, more than {MAX_VALUE}", value.len()),
        );
    }
    Translation::Lease { key, value }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::attrs::VxlanData;

    fn node(name: &str, cidrs: &[&str], ann: &[(&str, &str)]) -> NodeLite {
        let mut n = NodeLite::default();
        n.metadata.name = Some(name.into());
        n.pod_cidrs = cidrs.iter().map(|s| s.to_string()).collect();
        let m: BTreeMap<String, String> = ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        n.metadata.annotations = Some(m);
        n
    }

    const FLANNEL: &[(&str, &str)] = &[
        ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
        ("flannel.alpha.coreos.com/backend-type", "vxlan"),
        ("flannel.alpha.coreos.com/backend-data", r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#),
        ("flannel.alpha.coreos.com/public-ip", "192.168.64.3"),
    ];

    #[test]
    fn prefixes_follow_flannel() {
        assert_eq!(Annotations::default().backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(Annotations::new("example.com/foo").unwrap().backend_data, "example.com/foo-backend-data");
        assert_eq!(Annotations::new("example.com/foo-").unwrap().public_ip, "example.com/foo-public-ip");
        assert!(Annotations::new("a/b/c").is_err());
        assert!(Annotations::new("Not A Domain").is_err());
    }

    #[test]
    fn a_flannel_node_is_the_lease_flannel_would_write() {
        let a = Annotations::default();
        let t = translate(&node("w1", &["10.244.3.0/24"], FLANNEL), &a);
        let Translation::Lease { key, value } = t else { panic!("{t:?}") };
        assert_eq!(key.to_string(), "10.244.3.0-24");
        let attrs: LeaseAttrs = serde_json::from_slice(&value).unwrap();
        assert_eq!(attrs.public_ip, Some("192.168.64.3".parse().unwrap()));
        assert_eq!(attrs.backend_type, "vxlan");
        assert_eq!(VxlanData::from_value(&attrs.backend_data).unwrap().vni, 1);
        assert_eq!(attrs.node_id.as_deref(), Some("w1"));
    }

    #[test]
    fn what_we_publish_reads_back_the_same() {
        let a = Annotations::default();
        let attrs = LeaseAttrs {
            public_ip: Some("198.18.0.1".parse().unwrap()),
            public_ipv6: Some("2001:db8::1".parse().unwrap()),
            backend_type: "vxlan".into(),
            backend_data: VxlanData { vni: 1, vtep_mac: [2, 1, 2, 3, 4, 5] }.to_value(),
            backend_v6_data: VxlanData { vni: 1, vtep_mac: [2, 1, 2, 3, 4, 6] }.to_value(),
            node_id: Some("w2".into()),
            identity: Some("aWRlbnRpdHk=".into()),
            signature: Some("c2lnbmF0dXJl".into()),
            encryption: json!({"Type": "wireguard", "PublicKey": "k", "Port": 51820}),
        };
        let patch = a.publish(&attrs);
        let ann: Vec<(String, String)> =
            patch.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect();
        let ann: Vec<(&str, &str)> = ann.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let n = node("w2", &["10.244.4.0/24", "fd00:1::/64"], &ann);
        assert!(a.carries(&n, &patch));
        let Translation::Lease { key, value } = translate(&n, &a) else { panic!() };
        assert_eq!(key.to_string(), "10.244.4.0-24&fd00:1::-64");
        let back: LeaseAttrs = serde_json::from_slice(&value).unwrap();
        assert_eq!(back, attrs);
        // Withdrawing removes every one of them.
        let w = a.withdraw();
        assert!(w.values().all(Value::is_null) && w.len() == patch.len());
    }

    #[test]
    fn overwrite_wins_over_the_published_address() {
        let a = Annotations::default();
        let mut ann = FLANNEL.to_vec();
        ann.push(("flannel.alpha.coreos.com/public-ip-overwrite", "203.0.113.9"));
        let Translation::Lease { value, .. } = translate(&node("w", &["10.244.3.0/24"], &ann), &a) else {
            panic!()
        };
        let back: LeaseAttrs = serde_json::from_slice(&value).unwrap();
        assert_eq!(back.public_ip, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn what_does_not_parse_is_no_lease_and_says_why() {
        let a = Annotations::default();
        assert_eq!(translate(&node("w", &["10.244.3.0/24"], &[]), &a), Translation::NotManaged);
        assert_eq!(translate(&node("w", &[], FLANNEL), &a), Translation::NoPodCidr);
        let reason = |cidrs: &[&str], ann: &[(&str, &str)]| match translate(&node("w", cidrs, ann), &a) {
            Translation::Invalid { reason, message, .. } => format!("{reason}: {message}"),
            other => panic!("{other:?}"),
        };
        assert!(reason(&["10.244.3.7/24"], FLANNEL).contains("host bits"));
        assert!(reason(&["banana"], FLANNEL).contains("InvalidPodCIDR"));
        assert!(reason(&["10.244.3.0/24", "10.244.4.0/24"], FLANNEL).contains("more than one"));
        let with = |k: &str, v: &'static str| {
            let mut ann: Vec<(&str, &str)> =
                FLANNEL.iter().filter(|(x, _)| !x.ends_with(k)).copied().collect();
            ann.push((Box::leak(format!("flannel.alpha.coreos.com/{k}").into_boxed_str()), v));
            ann
        };
        assert!(
            reason(&["10.244.3.0/24"], &with("backend-data", "{not json")).contains("InvalidBackendData")
        );
        assert!(reason(&["10.244.3.0/24"], &with("public-ip", "300.1.1.1")).contains("InvalidPublicIP"));
        assert!(reason(&["10.244.3.0/24"], &with("public-ip", "2001:db8::1")).contains("not an IPv4"));
        let mut big = node("w", &["10.244.3.0/24"], FLANNEL);
        big.oversized.push(("flannel.alpha.coreos.com/backend-data".into(), 300_000));
        assert!(matches!(translate(&big, &a), Translation::Invalid { reason: "AnnotationTooLarge", .. }));
    }

    #[test]
    fn pod_cidrs() {
        let k = |c: &[&str]| pod_cidr_key(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(k(&[]).unwrap(), None);
        assert_eq!(k(&["fd00::/64"]).unwrap().unwrap().to_string(), "fd00::-64");
        assert!(k(&["fd00::/64", "fd01::/64"]).is_err());
    }
}
