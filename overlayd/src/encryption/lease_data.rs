//! What a node publishes about its tunnel in its lease, and the checks a peer's must pass
//! before it reaches the tunnel: `"Encryption": {"Type":"wireguard","PublicKey":"<base64>",
//! "Port":51820}`. A malformed one costs only the tunnel to that node (its VXLAN entries
//! stay, unless the cluster is strict); it never touches the rest of the lease.

use std::net::{IpAddr, SocketAddr};

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
            Some("none") | None if !o.contains_key("PublicKey") => return Ok(None),
            other => return Err(format!("Encryption.Type {other:?} is not \"wireguard\"")),
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
    fn malformed_values_are_errors_naming_the_field() {
        let key = encode_key(&[9; 32]);
        for (v, field) in [
            (json!("wireguard"), "Encryption"),
            (json!({"Type": "ipsec", "PublicKey": key, "Port": 1}), "Encryption.Type"),
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
