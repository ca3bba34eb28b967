//! The value of a lease key: flannel's `LeaseAttrs` JSON plus our `NodeID`, and vxlan's
//! backend data. What a remote one must pass to become a peer is `crate::validate`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::config::MAX_VNI;
use crate::identity::{Identity, PublicKey};
use crate::subnet::SubnetKey;

/// Values larger than this are not leases (a hostile writer could store megabytes).
pub const MAX_VALUE: usize = 16 * 1024;

/// What a node publishes about itself. Field names are flannel's, so flannel and overlayd
/// can read each other's leases; `NodeID` is ours (Go ignores unknown fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    /// Underlay IPv4 address.
    #[serde(rename = "PublicIP", default)]
    pub public_ip: Option<Ipv4Addr>,
    /// Underlay IPv6 address.
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// Backend type, e.g. `vxlan`.
    #[serde(rename = "BackendType")]
    pub backend_type: String,
    /// Backend data for IPv4 (vxlan: `{"VNI":1,"VtepMAC":"…"}`).
    #[serde(rename = "BackendData", default)]
    pub backend_data: Value,
    /// Backend data for IPv6.
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "Value::is_null")]
    pub backend_v6_data: Value,
    /// Persistent node identity (not in flannel: it used the public IP).
    #[serde(rename = "NodeID", default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The node's identity key (Ed25519 public key, base64; `crate::identity`): what signs
    /// its lease and authenticates it in IKE.
    #[serde(rename = "Identity", default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// The node's tunnel (`{"Type":"wireguard","PublicKey":…,"Port":…}`), when it takes part
    /// in encryption. Kept raw here: a malformed one must cost only the tunnel to that node,
    /// never the lease (see `encryption::lease_data`).
    #[serde(rename = "Encryption", default, skip_serializing_if = "Value::is_null")]
    pub encryption: Value,
    /// The node's signature (Ed25519 by its `Identity`, base64) over [`LeaseAttrs::signed_message`]:
    /// proves the lease was written by that node and no one else, for this key only.
    #[serde(rename = "Signature", default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// Tells a lease signature apart from any other use of the identity key.
const SIGNED_TAG: &[u8] = b"ferrocni-lease-v1\0";

impl LeaseAttrs {
    /// The JSON stored in the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease attributes serialize")
    }

    /// What the node signs for the lease at `key`: a tag, the key (a signed value cannot be
    /// moved to another subnet), and these attributes without the signature, as this
    /// serializer writes them (a verifier parses and writes them again: fields in a fixed
    /// order, unknown fields dropped).
    pub fn signed_message(&self, key: &SubnetKey) -> Vec<u8> {
        let unsigned = LeaseAttrs { signature: None, ..self.clone() };
        let mut m = SIGNED_TAG.to_vec();
        m.extend_from_slice(key.to_string().as_bytes());
        m.push(0);
        m.extend_from_slice(&unsigned.to_bytes());
        m
    }

    /// These attributes with `identity`'s key and signature for the lease at `key`.
    pub fn signed(&self, key: &SubnetKey, identity: &Identity) -> LeaseAttrs {
        let mut a = LeaseAttrs { identity: Some(identity.public_b64()), signature: None, ..self.clone() };
        a.signature = Some(B64.encode(identity.sign(&a.signed_message(key))));
        a
    }

    /// Who signed the lease at `key`: `Ok(None)` when it is not signed, the key when the
    /// signature is valid, `Err` when it is present but wrong (or has no `Identity`).
    pub fn signer(&self, key: &SubnetKey) -> Result<Option<PublicKey>, &'static str> {
        let Some(sig) = &self.signature else { return Ok(None) };
        let identity = self.identity.as_deref().ok_or("Signature without an Identity")?;
        let public = PublicKey::parse(identity).ok_or("Identity is not an Ed25519 public key")?;
        let sig = B64.decode(sig.as_bytes()).map_err(|_| "Signature is not base64")?;
        if public.verifies(&self.signed_message(key), &sig) {
            Ok(Some(public))
        } else {
            Err("Signature does not verify for this key and value")
        }
    }
}

/// vxlan's backend data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    /// VNI.
    pub vni: u32,
    /// VTEP MAC.
    pub vtep_mac: [u8; 6],
}

impl VxlanData {
    /// As published: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
    pub fn to_value(&self) -> Value {
        serde_json::json!({"VNI": self.vni, "VtepMAC": format_mac(&self.vtep_mac)})
    }

    /// Parses and checks published data.
    pub fn from_value(v: &Value) -> Result<Self, String> {
        let o = v.as_object().ok_or_else(|| format!("not an object: {v}"))?;
        let vni = o.get("VNI").and_then(Value::as_u64).ok_or("VNI missing or not an unsigned integer")?;
        if vni > MAX_VNI as u64 {
            return Err(format!("VNI {vni} does not fit in 24 bits"));
        }
        let mac = o.get("VtepMAC").and_then(Value::as_str).ok_or("VtepMAC missing or not a string")?;
        let vtep_mac = parse_mac(mac).ok_or_else(|| format!("VtepMAC {mac:?} is not a MAC"))?;
        if vtep_mac[0] & 1 == 1 || vtep_mac == [0; 6] {
            return Err(format!("VtepMAC {mac} is not a unicast address"));
        }
        Ok(VxlanData { vni: vni as u32, vtep_mac })
    }
}

/// MACs are read and written by the kernel layer's helpers (one implementation).
pub use netkernel::link::{format_mac, parse_mac};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_the_value_to_its_key_and_signer() {
        let dir = tempfile::tempdir().unwrap();
        let me = Identity::load_or_create(dir.path()).unwrap();
        let key = SubnetKey::parse("10.5.3.0-24").unwrap();
        let attrs = LeaseAttrs {
            public_ip: Some(Ipv4Addr::new(192, 0, 2, 7)),
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}),
            node_id: Some("n7".into()),
            ..Default::default()
        };
        let signed = attrs.signed(&key, &me);
        // Through the store and back: bytes parsed again verify.
        let read: LeaseAttrs = serde_json::from_slice(&signed.to_bytes()).unwrap();
        assert_eq!(read.signer(&key), Ok(Some(me.public())));
        assert_eq!(attrs.signer(&key), Ok(None), "unsigned");
        // Moved to another key, or any field changed: refused.
        assert!(read.signer(&SubnetKey::parse("10.5.4.0-24").unwrap()).is_err());
        let mut moved_ip = read.clone();
        moved_ip.public_ip = Some(Ipv4Addr::new(192, 0, 2, 66));
        assert!(moved_ip.signer(&key).is_err());
        let mut other_mac = read.clone();
        other_mac.backend_data["VtepMAC"] = "c6:d2:32:6f:8f:45".into();
        assert!(other_mac.signer(&key).is_err());
        // Another node's key with this node's signature: refused.
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        let mut swapped = read.clone();
        swapped.identity = Some(other.public_b64());
        assert!(swapped.signer(&key).is_err());
        let mut no_identity = read.clone();
        no_identity.identity = None;
        assert!(no_identity.signer(&key).is_err());
        // Unknown fields are dropped before verifying (flannel ignores them too).
        let mut v: serde_json::Value = serde_json::from_slice(&signed.to_bytes()).unwrap();
        v["Extra"] = "x".into();
        let with_extra: LeaseAttrs = serde_json::from_value(v).unwrap();
        assert_eq!(with_extra.signer(&key), Ok(Some(me.public())));
    }

    #[test]
    fn mac_parsing_is_strict() {
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff"), Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]));
        for bad in ["aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "a:bb:cc:dd:ee:ff", "zz:bb:cc:dd:ee:ff"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(format_mac(&[0xaa, 1, 2, 3, 4, 0xff]), "aa:01:02:03:04:ff");
    }
}
