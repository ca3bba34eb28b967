//! The value of a lease key: flannel's `LeaseAttrs` JSON plus our `NodeID`, and vxlan's
//! backend data. What a remote one must pass to become a peer is `crate::validate`.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::MAX_VNI;

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
}

impl LeaseAttrs {
    /// The JSON stored in the key.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("lease attributes serialize")
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
    fn mac_parsing_is_strict() {
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff"), Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]));
        for bad in ["aa:bb:cc:dd:ee", "aa:bb:cc:dd:ee:ff:00", "a:bb:cc:dd:ee:ff", "zz:bb:cc:dd:ee:ff"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(format_mac(&[0xaa, 1, 2, 3, 4, 0xff]), "aa:01:02:03:04:ff");
    }
}
