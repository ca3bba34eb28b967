//! What a node publishes about its tunnel in its lease, and the checks a peer's must pass
//! before it reaches the tunnel: `"Encryption": {"Type":"wireguard","PublicKey":"<base64>",
//! "Port":51820}`, or for IPsec `"Encryption": {"Type":"ipsec","IPsec":{"TrafficSelectors":
//! ["10.244.3.0/24"]}}` (IKE authenticates the node with the `Identity` key of its lease;
//! without `TrafficSelectors` the selectors are the lease's subnets, which is what overlayd
//! publishes).
//! While a node switches engines it publishes both parts; `Type` names the one it moves to.
//! A malformed one costs only the tunnel to that node (its VXLAN entries stay, unless the
//! cluster is strict); it never touches the rest of the lease.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use serde_json::{Value, json};

use super::settings::{decode_key, encode_key};

/// A node's tunnel, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelAttrs {
    /// The node's WireGuard public key.
    pub public_key: [u8; 32],
    /// Its UDP port.
    pub port: u16,
}

impl TunnelAttrs {
    /// The lease's `Encryption` value.
    pub fn to_value(&self) -> Value {
        json!({"Type": "wireguard", "PublicKey": encode_key(&self.public_key), "Port": self.port})
    }

    /// Parses a lease's `Encryption` value: `Ok(None)` when the node publishes none.
    pub fn from_value(v: &Value) -> Result<Option<TunnelAttrs>, String> {
        if v.is_null() {
            return Ok(None);
        }
        let o = v.as_object().ok_or_else(|| format!("Encryption is not an object: {}", short(v)))?;
        match o.get("Type").and_then(Value::as_str) {
            Some("wireguard") => {}
            // An IPsec node publishes a WireGuard part only while it switches over.
            Some("ipsec") if !o.contains_key("PublicKey") => return Ok(None),
            Some("ipsec") => {}
            Some("none") | None if !o.contains_key("PublicKey") => return Ok(None),
            other => {
                let other = other.map(|t| short_str(t).to_string());
                return Err(format!("Encryption.Type {other:?} is not \"wireguard\" or \"ipsec\""));
            }
        }
        let key = o.get("PublicKey").and_then(Value::as_str).ok_or("Encryption.PublicKey missing")?;
        let public_key = decode_key(key).ok_or_else(|| {
            format!("Encryption.PublicKey {:?} is not a WireGuard key (base64 of 32 bytes)", short_str(key))
        })?;
        if public_key == [0; 32] {
            return Err("Encryption.PublicKey is the all-zero key".into());
        }
        let port =
            o.get("Port").and_then(Value::as_u64).filter(|p| (1..=u16::MAX as u64).contains(p)).ok_or_else(
                || format!("Encryption.Port {} is not a port", o.get("Port").map_or("missing".into(), short)),
            )?;
        Ok(Some(TunnelAttrs { public_key, port: port as u16 }))
    }
}

/// A node's IPsec participation, as published: the traffic selectors it protects (its pod
/// subnets). IKE authenticates it with its lease's `Identity` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecAttrs {
    /// Its pod subnets, as it will negotiate them (checked against its lease by the reader);
    /// empty: the lease's subnets.
    pub traffic_selectors: Vec<IpNet>,
}

/// At most this many selectors are read from a lease (one per family is the norm).
const MAX_SELECTORS: usize = 4;

impl IpsecAttrs {
    /// The `IPsec` part of the lease's `Encryption` value.
    pub fn to_value(&self) -> Value {
        if self.traffic_selectors.is_empty() {
            return json!({});
        }
        let ts: Vec<String> = self.traffic_selectors.iter().map(|n| n.to_string()).collect();
        json!({"TrafficSelectors": ts})
    }

    /// Parses a lease's `Encryption` value: `Ok(None)` when the node does not do IPsec.
    pub fn from_value(v: &Value) -> Result<Option<IpsecAttrs>, String> {
        let Some(o) = v.as_object() else { return Ok(None) };
        let Some(ip) = o.get("IPsec") else { return Ok(None) };
        let ip = ip.as_object().ok_or_else(|| format!("Encryption.IPsec is not an object: {}", short(ip)))?;
        let Some(list) = ip.get("TrafficSelectors") else {
            return Ok(Some(IpsecAttrs { traffic_selectors: Vec::new() }));
        };
        let list = list.as_array().ok_or("Encryption.IPsec.TrafficSelectors is not a list")?;
        if list.is_empty() || list.len() > MAX_SELECTORS {
            return Err(format!("Encryption.IPsec.TrafficSelectors: 1 to {MAX_SELECTORS} expected"));
        }
        let mut traffic_selectors = Vec::new();
        for t in list {
            let n: IpNet = t
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("Encryption.IPsec.TrafficSelectors: {} is not a subnet", short(t)))?;
            traffic_selectors.push(n.trunc());
        }
        Ok(Some(IpsecAttrs { traffic_selectors }))
    }
}

/// The lease's `Encryption` value for what this node runs: `Null` when nothing.
pub fn publication(target: &str, wg: Option<&TunnelAttrs>, ipsec: Option<&IpsecAttrs>) -> Value {
    match (wg, ipsec) {
        (None, None) => Value::Null,
        (Some(w), None) => {
            let mut v = w.to_value();
            v["Type"] = json!(target);
            v
        }
        (w, Some(i)) => {
            let mut v = w.map(TunnelAttrs::to_value).unwrap_or_else(|| json!({}));
            v["Type"] = json!(target);
            v["IPsec"] = i.to_value();
            v
        }
    }
}

fn short(v: &Value) -> String {
    short_str(&v.to_string()).to_string()
}

fn short_str(s: &str) -> &str {
    // Hostile values can be long; a log line needs only the start.
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Where a peer's tunnel listens: its public IP (already validated with the lease) and its
/// published port; an address no tunnel can be at is refused.
pub fn endpoint(public: Option<IpAddr>, attrs: &TunnelAttrs) -> Result<SocketAddr, String> {
    let ip = public.ok_or("no public IP")?;
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_loopback()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if bad {
        return Err(format!("public IP {ip} cannot be a tunnel endpoint"));
    }
    Ok(SocketAddr::new(ip, attrs.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_absent() {
        let a = TunnelAttrs { public_key: [9; 32], port: 51820 };
        assert_eq!(TunnelAttrs::from_value(&a.to_value()), Ok(Some(a)));
        assert_eq!(TunnelAttrs::from_value(&Value::Null), Ok(None));
        assert_eq!(TunnelAttrs::from_value(&json!({"Type": "none"})), Ok(None));
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,60}".prop_map(Value::String),
            Just(Value::String(encode_key(&[7; 32]))),
            Just(Value::String("wireguard".into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (
                        prop_oneof![
                            Just("Type".to_string()),
                            Just("PublicKey".into()),
                            Just("Port".into()),
                            "[a-z]{1,6}"
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever a lease holds, parsing answers (never panics) and what it accepts is usable.
        #[test]
        fn any_value_is_answered_and_accepted_ones_are_sound(v in any_json()) {
            if let Ok(Some(a)) = TunnelAttrs::from_value(&v) {
                proptest::prop_assert!(a.port > 0 && a.public_key != [0; 32]);
                proptest::prop_assert_eq!(TunnelAttrs::from_value(&a.to_value()), Ok(Some(a)));
            }
        }
    }

    #[test]
    fn ipsec_parts_and_both_engines_during_a_switch() {
        let wg = TunnelAttrs { public_key: [9; 32], port: 51820 };
        let ip = IpsecAttrs { traffic_selectors: vec!["10.244.3.0/24".parse().unwrap()] };
        let both = publication("ipsec", Some(&wg), Some(&ip));
        assert_eq!(TunnelAttrs::from_value(&both), Ok(Some(wg)));
        assert_eq!(IpsecAttrs::from_value(&both), Ok(Some(ip.clone())));
        let only = publication("ipsec", None, Some(&ip));
        assert_eq!(TunnelAttrs::from_value(&only), Ok(None));
        assert_eq!(IpsecAttrs::from_value(&only), Ok(Some(ip)));
        assert_eq!(IpsecAttrs::from_value(&wg.to_value()), Ok(None));
        assert_eq!(publication("none", None, None), Value::Null);
        let implied = publication("ipsec", None, Some(&IpsecAttrs { traffic_selectors: vec![] }));
        assert_eq!(implied, json!({"Type": "ipsec", "IPsec": {}}));
        assert_eq!(IpsecAttrs::from_value(&implied), Ok(Some(IpsecAttrs { traffic_selectors: vec![] })));
        for bad in [
            json!({"Type": "ipsec", "IPsec": 1}),
            json!({"Type": "ipsec", "IPsec": {"TrafficSelectors": "10.0.0.0/24"}}),
            json!({"Type": "ipsec", "IPsec": {"TrafficSelectors": []}}),
            json!({"Type": "ipsec", "IPsec": {"TrafficSelectors": ["10.0.0.0/33"]}}),
            json!({"Type": "ipsec", "IPsec": {"TrafficSelectors": [7]}}),
            json!({"Type": "ipsec", "IPsec": {"TrafficSelectors": vec!["10.0.0.0/24"; 9]}}),
        ] {
            assert!(IpsecAttrs::from_value(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_values_are_errors_naming_the_field() {
        let key = encode_key(&[9; 32]);
        for (v, field) in [
            (json!("wireguard"), "Encryption"),
            (json!({"Type": "ipsek", "PublicKey": key, "Port": 1}), "Encryption.Type"),
            (json!({"Type": "wireguard", "Port": 1}), "Encryption.PublicKey"),
            (json!({"Type": "wireguard", "PublicKey": "abc", "Port": 1}), "Encryption.PublicKey"),
            (json!({"Type": "wireguard", "PublicKey": "x".repeat(5000), "Port": 1}), "Encryption.PublicKey"),
            (
                json!({"Type": "wireguard", "PublicKey": encode_key(&[0; 32]), "Port": 1}),
                "Encryption.PublicKey",
            ),
            (json!({"Type": "wireguard", "PublicKey": key, "Port": 0}), "Encryption.Port"),
            (json!({"Type": "wireguard", "PublicKey": key, "Port": 65536}), "Encryption.Port"),
            (json!({"Type": "wireguard", "PublicKey": key, "Port": "1"}), "Encryption.Port"),
            (json!({"Type": "wireguard", "PublicKey": key}), "Encryption.Port"),
        ] {
            let e = TunnelAttrs::from_value(&v).unwrap_err();
            assert!(e.starts_with(field), "{v}: {e}");
            assert!(e.len() < 200, "hostile values are cut short in messages: {e}");
        }
    }
}
