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

/// One address family of a peer's overlay: where its pods are and how to reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFamily {
    /// Its pod subnet in this family.
    pub subnet: IpNet,
    /// Its underlay address that carries this family's overlay traffic.
    pub public: IpAddr,
    /// Its VTEP MAC for this family.
    pub vtep_mac: Mac,
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

    /// The address its tunnel is reached at: its IPv4 public address, else its IPv6 one.
    pub fn public_address(&self) -> Option<IpAddr> {
        self.attrs.public_ip.map(IpAddr::V4).or(self.attrs.public_ipv6.map(IpAddr::V6))
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
