//! The node's live state, in one place: the facts fixed for the daemon's life, and the live
//! values, each with exactly one writer and published as a watch channel. Tasks get a
//! [`Node`] to read and only the writer of what they own ([`NodeWriters`], split up by the
//! wiring in `daemon`).
//!
//! | value | written by |
//! |---|---|
//! | `config` | the config follower (`config_watch`) |
//! | `keeper` | the lease keeper (`lease::run_keeper`) |
//! | `own` | the lease outputs (`outputs`), once `subnet.env` says so |
//! | `peers` | the peer follower (`peer_set`) |
//! | `mtu` | the encryption controller (its initial value: [`pod_mtu`]) |
//! | `encryption` | the encryption controller |
//! | `datapath` | the backend runner (`backend::run_backend`) |
//! | `readiness`, `ready` | the readiness check (`readiness`) |

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::backend::DatapathReport;
use crate::config::NetworkConfig;
use crate::identity::PublicKey;
use crate::lease::{KeeperCommand, KeeperStatus};
use crate::metrics::{Gauges, Metrics};
pub use crate::peer::PeerSet;
use crate::pins::SharedPins;
use crate::readiness::Confirmation;
use crate::store::SharedStore;
use crate::subnet::{KeyLayout, SubnetKey};
use crate::underlay::Underlay;
use crate::validate::Validator;
use crate::vxlan::{V4_OVERHEAD, V6_OVERHEAD};

/// The pod MTU when nothing else says (a 1500-byte underlay minus VXLAN's overhead).
pub const FALLBACK_MTU: u32 = 1450;

/// What the node knows and how it is doing. Cheap to clone: every field is shared.
#[derive(Clone)]
pub struct Node {
    /// This node's persistent identity.
    pub id: String,
    /// The store.
    pub store: SharedStore,
    /// Key layout in the store.
    pub layout: KeyLayout,
    /// The underlay found at start.
    pub underlay: Underlay,
    /// Whether this daemon masquerades pod traffic (then the bridge plugin must not).
    pub ip_masq: bool,
    /// Where `subnet.env` goes.
    pub subnet_file: PathBuf,
    /// Start time.
    pub started: Instant,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// This node's identity key (public half).
    pub identity: PublicKey,
    /// Node IDs pinned to identity keys: pinned by the watcher on first sight, forgotten
    /// only by the operator (`overlayctl identity forget`).
    pub pins: SharedPins,
    /// The network config in effect, once there is one.
    pub config: watch::Receiver<Option<NetworkConfig>>,
    /// The lease keeper's status.
    pub keeper: watch::Receiver<KeeperStatus>,
    /// Our subnets, once adopted (`subnet.env` written for them).
    pub own: watch::Receiver<Option<SubnetKey>>,
    /// The valid peers.
    pub peers: watch::Receiver<PeerSet>,
    /// The pod MTU handed to the CNI plugin and written to `subnet.env`.
    pub mtu: watch::Receiver<u32>,
    /// The encryption controller's status (`overlayctl encryption status`).
    pub encryption: watch::Receiver<Value>,
    /// What the datapath has applied.
    pub datapath: watch::Receiver<DatapathReport>,
    /// The readiness check's outcome for the current lease.
    pub readiness: watch::Receiver<Option<Confirmation>>,
    /// Ready (see `readiness`).
    pub ready: watch::Receiver<bool>,
    /// To the lease keeper (`leave`, what to publish).
    pub commands: mpsc::Sender<KeeperCommand>,
    /// True once the daemon is stopping.
    pub shutdown: watch::Receiver<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("id", &self.id).finish()
    }
}

/// The writing ends, one per owner.
pub struct NodeWriters {
    /// For the config follower.
    pub config: watch::Sender<Option<NetworkConfig>>,
    /// For the lease keeper.
    pub keeper: watch::Sender<KeeperStatus>,
    /// For the lease outputs.
    pub own: watch::Sender<Option<SubnetKey>>,
    /// For the peer follower.
    pub peers: watch::Sender<PeerSet>,
    /// For the encryption controller.
    pub mtu: watch::Sender<u32>,
    /// For the encryption controller.
    pub encryption: watch::Sender<Value>,
    /// For the backend runner.
    pub datapath: watch::Sender<DatapathReport>,
    /// For the readiness check.
    pub readiness: watch::Sender<Option<Confirmation>>,
    /// For the readiness check.
    pub ready: watch::Sender<bool>,
    /// The lease keeper's command queue.
    pub commands: mpsc::Receiver<KeeperCommand>,
    /// The daemon's stop switch.
    pub shutdown: watch::Sender<bool>,
}

/// The fixed facts a [`Node`] is made from.
#[derive(Clone)]
pub struct NodeFacts {
    /// Node ID.
    pub id: String,
    /// Store.
    pub store: SharedStore,
    /// Key layout.
    pub layout: KeyLayout,
    /// Underlay.
    pub underlay: Underlay,
    /// Masquerading here.
    pub ip_masq: bool,
    /// `subnet.env`'s path.
    pub subnet_file: PathBuf,
    /// Pinned identities.
    pub pins: SharedPins,
    /// The identity's public half.
    pub identity: PublicKey,
}

impl Node {
    /// A node with nothing live yet, and the writers of its live values.
    pub fn new(facts: NodeFacts) -> (Node, NodeWriters) {
        let (config_tx, config) = watch::channel(None);
        let (keeper_tx, keeper) = watch::channel(KeeperStatus::default());
        let (own_tx, own) = watch::channel(None);
        let (peers_tx, peers) = watch::channel(PeerSet::default());
        let (mtu_tx, mtu) = watch::channel(FALLBACK_MTU);
        let (encryption_tx, encryption) = watch::channel(Value::Null);
        let (datapath_tx, datapath) = watch::channel(DatapathReport::default());
        let (readiness_tx, readiness) = watch::channel(None);
        let (ready_tx, ready) = watch::channel(false);
        let (commands_tx, commands_rx) = mpsc::channel(4);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let node = Node {
            id: facts.id,
            store: facts.store,
            layout: facts.layout,
            underlay: facts.underlay,
            ip_masq: facts.ip_masq,
            subnet_file: facts.subnet_file,
            started: Instant::now(),
            metrics: Arc::default(),
            pins: facts.pins,
            identity: facts.identity,
            config,
            keeper,
            own,
            peers,
            mtu,
            encryption,
            datapath,
            readiness,
            ready,
            commands: commands_tx,
            shutdown,
        };
        let writers = NodeWriters {
            config: config_tx,
            keeper: keeper_tx,
            own: own_tx,
            peers: peers_tx,
            mtu: mtu_tx,
            encryption: encryption_tx,
            datapath: datapath_tx,
            readiness: readiness_tx,
            ready: ready_tx,
            commands: commands_rx,
            shutdown: shutdown_tx,
        };
        (node, writers)
    }

    /// The config in effect, if loaded.
    pub fn config(&self) -> Option<NetworkConfig> {
        self.config.borrow().clone()
    }

    /// The lease checks of this node under the config in effect (None before there is one):
    /// the same for the watcher and for what the API shows.
    pub fn validator(&self) -> Option<Validator> {
        let config = self.config()?;
        let own = [self.underlay.public_ip.map(IpAddr::V4), self.underlay.public_ipv6.map(IpAddr::V6)];
        Some(
            Validator::new(config, self.id.clone())
                .with_identity(self.identity)
                .with_own_addresses(own.into_iter().flatten().collect())
                .with_pins(self.pins.clone()),
        )
    }

    /// Whether the node is ready.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Scrape-time values.
    pub fn gauges(&self) -> Gauges {
        let k = self.keeper.borrow();
        Gauges {
            ready: self.is_ready(),
            has_lease: k.lease.is_some(),
            store_ok: k.store_ok,
            peers: self.peers.borrow().len(),
            subnet_changes: k.subnet_changes,
            ops: self.store.ops(),
        }
    }
}

/// The pod MTU: `--mtu` when given; else the config's `Backend.MTU`; else the underlay's
/// minus VXLAN's overhead; else [`FALLBACK_MTU`]. While the cluster encrypts (and no
/// `--mtu` forces a value) pods must fit the tunnel too: at most `encrypted`.
pub fn pod_mtu(
    explicit: Option<u32>,
    config: &NetworkConfig,
    underlay_mtu: Option<u32>,
    ipv6_underlay: bool,
    encrypted: Option<u32>,
) -> u32 {
    if let Some(m) = explicit {
        return m;
    }
    let base =
        match config.vxlan() {
            Some(vx) => (vx.mtu > 0)
                .then_some(vx.mtu)
                // One MTU for the pods whichever device carries their packets: the larger overhead
                // of the underlay families this node has.
                .or(underlay_mtu
                    .map(|m| m.saturating_sub(if ipv6_underlay { V6_OVERHEAD } else { V4_OVERHEAD }))),
            // host-gw does not encapsulate: pods get the underlay's MTU.
            None => underlay_mtu,
        }
        .unwrap_or(FALLBACK_MTU);
    encrypted.map_or(base, |e| base.min(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mtu_sources_in_order() {
        let plain = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap().config;
        let with_mtu =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":1300}}"#)
                .unwrap()
                .config;
        assert_eq!(
            pod_mtu(Some(1200), &with_mtu, Some(9000), false, Some(1000)),
            1200,
            "--mtu wins over all"
        );
        assert_eq!(pod_mtu(None, &with_mtu, Some(9000), false, None), 1300);
        assert_eq!(pod_mtu(None, &plain, Some(9000), false, None), 8950);
        assert_eq!(pod_mtu(None, &plain, Some(1500), true, None), 1430, "an IPv6 underlay costs 20 more");
        assert_eq!(pod_mtu(None, &plain, None, false, None), FALLBACK_MTU);
        assert_eq!(pod_mtu(None, &plain, Some(1500), false, Some(1420)), 1420, "encryption lowers it");
        assert_eq!(pod_mtu(None, &with_mtu, Some(1500), false, Some(1420)), 1300, "never raises it");
        let host_gw =
            NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#).unwrap().config;
        assert_eq!(pod_mtu(None, &host_gw, Some(9000), true, None), 9000, "host-gw does not encapsulate");
    }
}
