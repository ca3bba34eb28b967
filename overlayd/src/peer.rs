//! Another node as the rest of the daemon sees it: validated once, when its lease is read,
//! and typed, so that no backend or controller parses lease JSON again (two parsers with two
//! rules once let a lease pass one and silently miss the other).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use netkernel::link::Mac;

use crate::attrs::LeaseAttrs;
use crate::encryption::lease_data::{IpsecAttrs, TunnelAttrs};
use crate::identity::PublicKey;
use crate::subnet::SubnetKey;

/// The valid peers, by subnet: one map built once per batch of lease changes (by the
/// watcher, its one owner) and shared by every reader; the peers themselves are shared, not
/// copied.
pub type PeerSet = Arc<BTreeMap<SubnetKey, Arc<Peer>>>;

/// One address family of a peer's pods (the inner family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFamily {
    /// Its pod subnet in this family.
    pub subnet: IpNet,
}

/// One of a peer's VXLAN endpoints: a device on one underlay family (the outer family),
/// which carries pod traffic of either inner family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vtep {
    /// Its underlay address in that family.
    pub public: IpAddr,
    /// The MAC of its device for that family.
    pub mac: Mac,
}

/// Which underlay (outer) families a node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outer {
    /// An IPv4 underlay address.
    pub v4: bool,
    /// An IPv6 underlay address.
    pub v6: bool,
}

/// A valid remote lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its subnets (the lease's key).
    pub key: SubnetKey,
    /// The IPv4 overlay, when the network has IPv4.
    pub v4: Option<PeerFamily>,
    /// The IPv6 overlay, when the network has IPv6.
    pub v6: Option<PeerFamily>,
    /// Its VXLAN endpoint on the IPv4 underlay (`PublicIP` + `BackendData`).
    pub vtep4: Option<Vtep>,
    /// Its VXLAN endpoint on the IPv6 underlay (`PublicIPv6` + `BackendV6Data`).
    pub vtep6: Option<Vtep>,
    /// Its identity key, when it publishes one (every overlayd does; flannel does not).
    pub identity: Option<PublicKey>,
    /// Its lease is signed by that key (and the key is pinned to its node ID).
    pub signed: bool,
    /// Its tunnel for encryption: `Ok(None)` when it publishes none, `Err` (why) when what it
    /// publishes is malformed — which costs only the tunnel to it, never its lease.
    pub tunnel: Result<Option<TunnelAttrs>, String>,
    /// Its IPsec participation: `Ok(None)` when it does not do IPsec, `Err` (why) when what
    /// it publishes is malformed (again costing only the encryption to it).
    pub ipsec: Result<Option<IpsecAttrs>, String>,
    /// The lease as published, for display.
    pub attrs: LeaseAttrs,
}

impl Peer {
    /// The families present, IPv4 first.
    pub fn families(&self) -> impl Iterator<Item = &PeerFamily> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The underlay family both ends have to carry pod traffic of inner family `v6`: the
    /// same family as the inner one when both have it (flannel's layout), else the other;
    /// `None` when the two nodes share no underlay family.
    pub fn outer_for(&self, inner_v6: bool, own: Outer) -> Option<Vtep> {
        let v4 = self.vtep4.filter(|_| own.v4);
        let v6 = self.vtep6.filter(|_| own.v6);
        if inner_v6 { v6.or(v4) } else { v4.or(v6) }
    }

    /// The address its tunnel is reached at: in a family this node's underlay has, IPv4
    /// first; `None` when there is no common family.
    pub fn public_address(&self, own: Outer) -> Option<IpAddr> {
        let v4 = self.attrs.public_ip.map(IpAddr::V4).filter(|_| own.v4);
        let v6 = self.attrs.public_ipv6.map(IpAddr::V6).filter(|_| own.v6);
        v4.or(v6)
    }
}

/// A change in the set of peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// A new peer.
    Added(Arc<Peer>),
    /// Same subnet, new attributes (public IP, VTEP MAC …).
    Changed {
        /// Before.
        old: Arc<Peer>,
        /// After.
        new: Arc<Peer>,
    },
    /// Gone (deleted, expired, or no longer valid).
    Removed(Arc<Peer>),
}

impl PeerEvent {
    /// The subnet concerned.
    pub fn key(&self) -> &SubnetKey {
        match self {
            PeerEvent::Added(p) | PeerEvent::Removed(p) => &p.key,
            PeerEvent::Changed { new, .. } => &new.key,
        }
    }
}
