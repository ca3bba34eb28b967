//! The encryption controller: follows the cluster's `Encryption` settings live and drives
//! this node's tunnel.
//!
//! Enabling: make or load the key, start the tunnel (or re-attach to the one a previous run
//! left: the device persists, so do the routes through it), publish the public key and port
//! in our lease, give the tunnel every peer that publishes one, and move a peer's route onto
//! the tunnel only once a handshake with it has completed — both ends are then ready and no
//! packet is lost. Disabling goes back the same way: routes first, then (a little later) the
//! key leaves the lease, and the tunnel keeps receiving for [`LINGER`] before it is removed.
//! A key rotation keeps the old session sending until the new one is up.
//!
//! IPsec (`"Type": "ipsec"`) is the second engine ([`super::ipsec`]): the same moves, with a
//! peer's route going onto charon's TUN device once its child SA is installed. A switch
//! between the engines in a running cluster keeps the engine being left up, published and
//! carrying each peer's traffic until that peer is up on the new one (or [`HANDOVER_MAX`]
//! has passed), so no peer falls back to plaintext on the way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netkernel::strict::StrictRules;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use wgtunnel::{PeerSpec, Tunnel, TunnelConfig};

use super::device;
use super::ipsec::{self, Engine as IpsecEngine, charon::Datapath};
use super::keys::{KeyStore, NodeKey};
use super::lease_data::{TunnelAttrs, endpoint, publication};
use super::routes::{SharedRoutes, TunnelRoutes};
use super::settings::{EncryptionSettings, Kind};
use crate::backend::BackendEvent;
use crate::config::NetworkConfig;
use crate::identity::Identity;
use crate::kernel;
use crate::lease::KeeperCommand;
use crate::node::{Node, PeerSet};
use crate::subnet::SubnetKey;

/// The tunnel device.
pub const DEVICE: &str = "ferro-wg";
/// The nft table of strict mode.
pub const STRICT_TABLE: &str = "ferrocni_strict";
/// WireGuard's overhead over the underlay MTU (flannel's figure: IPv6 header, UDP, WireGuard).
pub const OVERHEAD: u32 = 80;
/// How long a disabled tunnel keeps receiving (peers that have not yet seen the change).
pub const LINGER: Duration = Duration::from_secs(15);
/// How long after moving routes back the key is taken out of the lease.
const UNPUBLISH_AFTER: Duration = Duration::from_secs(2);
/// A route stays on the tunnel this long after the peer's session was last seen up
/// (rotations and a peer's restart re-handshake within it).
const GRACE: Duration = Duration::from_secs(10);
/// After our own restart, routes found on the tunnel stay there this long while the new
/// sessions come up.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// A switch between WireGuard and IPsec waits at most this long for every peer to come up
/// on the new engine before the old one is taken down.
pub const HANDOVER_MAX: Duration = Duration::from_secs(30);

/// What the controller reads, and the node values it owns.
pub struct ControllerIo {
    /// The live network config.
    pub config: watch::Receiver<Option<NetworkConfig>>,
    /// Our lease's subnets.
    pub own: watch::Receiver<Option<SubnetKey>>,
    /// The valid peers (a new map on every change).
    pub peers: watch::Receiver<PeerSet>,
    /// The rest of the node (the keeper's status).
    pub node: Node,
    /// To the backend: `Resync` when the routing choice changed.
    pub backend: mpsc::Sender<BackendEvent>,
    /// To the lease keeper: what to publish.
    pub keeper: mpsc::Sender<KeeperCommand>,
    /// Owned: the pod MTU handed to the CNI plugin (lowered while encrypting).
    pub mtu: watch::Sender<u32>,
    /// Owned: the status `overlayctl encryption status` shows.
    pub status: watch::Sender<Value>,
    /// Shutdown switch.
    pub shutdown: watch::Receiver<bool>,
}

/// Fixed for the daemon's lifetime.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    /// The state directory (key file).
    pub state_dir: std::path::PathBuf,
    /// The underlay MTU.
    pub underlay_mtu: u32,
    /// The VXLAN devices (strict mode drops all traffic on them).
    pub vxlan_devices: Vec<String>,
    /// This node does not take part (`--no-encryption`): it never publishes a key.
    pub opt_out: bool,
    /// Tunnel worker threads (0 = one per CPU).
    pub threads: usize,
    /// The pod MTU was set by hand (`--mtu`): encryption does not lower it.
    pub fixed_mtu: bool,
    /// This node's underlay families: a peer's tunnel endpoint is taken in one of them.
    pub outer: crate::peer::Outer,
    /// The charon binary (IPsec).
    pub charon: std::path::PathBuf,
    /// IPsec's datapath, when forced (`--ipsec-datapath`); else detected.
    pub ipsec_datapath: Option<Datapath>,
}

struct Running {
    tunnel: Tunnel,
    /// Changes when the tunnel accepted a newer peer timestamp (to be saved).
    stamps: watch::Receiver<u64>,
    key: NodeKey,
    port: u16,
    ifindex: u32,
    own: SubnetKey,
}

enum Phase {
    Off,
    On(Running),
    Leaving { run: Running, since: Instant, unpublished: bool },
}

/// The controller's state.
pub struct Controller {
    cfg: ControllerSettings,
    /// The controller's own netlink handle, for the tunnel device.
    nl: netkernel::Netlink,
    keys: KeyStore,
    routes: SharedRoutes,
    phase: Phase,
    published: Option<Value>,
    last_peers: Vec<PeerSpec>,
    /// What `last_peers` was computed from: the peer set (by identity), settings, our key.
    specs_from: Option<(PeerSet, EncryptionSettings, [u8; 32])>,
    last_good: HashMap<String, Instant>,
    warned: HashMap<String, String>,
    seeded: BTreeMap<IpNet, u32>,
    started: Instant,
    /// The IPsec engine.
    ipsec: IpsecEngine,
    /// Its last report.
    ipsec_report: ipsec::Report,
    /// The node's identity (IKE authenticates with it).
    identity: Option<Identity>,
    /// Since when the wanted engine differs from one still running (a switch).
    switch_since: Option<Instant>,
    strict_on: Option<bool>,
    /// The rules the strict table was last made from.
    strict_rules: Option<StrictRules>,
    strict_checked: Instant,
    cleaned_leftover: bool,
}

/// The `Encryption` value for our lease and the key to run with, computed before the lease
/// is first written so that a restart publishes the same value (no flap).
pub fn initial_publication(
    state_dir: &Path,
    settings: &EncryptionSettings,
    opt_out: bool,
) -> std::io::Result<Value> {
    if !settings.enabled || opt_out {
        return Ok(Value::Null);
    }
    if settings.kind == Kind::Ipsec {
        let part = super::lease_data::IpsecAttrs { traffic_selectors: Vec::new() };
        return Ok(publication("ipsec", None, Some(&part)));
    }
    let (key, _) = KeyStore::new(state_dir).current(settings.key_generation, settings.rotation_period)?;
    Ok(TunnelAttrs { public_key: key.public, port: settings.port }.to_value())
}

/// The pod MTU with encryption on: the underlay's minus [`OVERHEAD`].
pub fn encrypted_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(OVERHEAD)
}

impl Controller {
    /// A controller writing its routing choice into `routes`. Routes a previous run left on
    /// the tunnel are kept there for a moment (see [`RESTART_GRACE`]).
    pub fn new(cfg: ControllerSettings, routes: SharedRoutes) -> Result<Self, netkernel::KernelError> {
        let nl = netkernel::Netlink::current()?;
        let mut seeded = BTreeMap::new();
        for dev in [DEVICE, ipsec::charon::LIBIPSEC_DEVICE] {
            let found = kernel::blocking(|| {
                let i = nl.link(dev).ok()??.index;
                Some((i, device::routes_through(&nl, dev)?))
            });
            if let Some((i, nets)) = found {
                if !nets.is_empty() {
                    tracing::info!(
                        device = dev,
                        routes = nets.len(),
                        "found routes on a tunnel from a previous run"
                    );
                }
                seeded.extend(nets.into_iter().map(|n| (n, i)));
            }
        }
        let identity = match Identity::load_or_create(&cfg.state_dir) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!(error = %e, "the node's identity key: IPsec is not available");
                None
            }
        };
        let ipsec = IpsecEngine::new(
            ipsec::EngineConfig {
                state_dir: cfg.state_dir.clone(),
                charon: cfg.charon.clone(),
                datapath: cfg.ipsec_datapath,
                underlay_mtu: cfg.underlay_mtu,
                vxlan_devices: cfg.vxlan_devices.clone(),
                outer: cfg.outer,
            },
            netkernel::Netlink::current()?,
        );
        Ok(Controller {
            ipsec,
            ipsec_report: ipsec::Report::default(),
            identity,
            switch_since: None,
            nl,
            keys: KeyStore::new(&cfg.state_dir),
            cfg,
            routes,
            phase: Phase::Off,
            published: None,
            last_peers: Vec::new(),
            specs_from: None,
            last_good: HashMap::new(),
            warned: HashMap::new(),
            seeded,
            started: Instant::now(),
            strict_on: None,
            strict_rules: None,
            strict_checked: Instant::now(),
            cleaned_leftover: false,
        })
    }

    /// The routing choice to use before the first step (so the backend's first
    /// reconciliation does not pull a restarted node's routes off the tunnel).
    pub fn seed_routes(&self) {
        if self.seeded.is_empty() {
            return;
        }
        if let Ok(mut r) = self.routes.write() {
            *r = TunnelRoutes {
                devices: self.seeded.values().copied().collect(),
                encrypted: self.seeded.clone(),
                strict: None,
            };
        }
    }

    /// Runs until shutdown. The tunnel device outlives the daemon (so do its routes), so
    /// a restart does not drop encrypted traffic to plaintext or to nothing for long.
    pub async fn run(mut self, mut io: ControllerIo) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.step(&mut io).await;
            let mut changes = match &self.phase {
                Phase::On(r) | Phase::Leaving { run: r, .. } => Some(r.tunnel.changes()),
                Phase::Off => None,
            };
            let mut stamps = match &self.phase {
                Phase::On(r) | Phase::Leaving { run: r, .. } => Some(r.stamps.clone()),
                Phase::Off => None,
            };
            tokio::select! {
                r = io.config.changed() => if r.is_err() { break },
                r = io.own.changed() => if r.is_err() { break },
                r = io.peers.changed() => if r.is_err() { break },
                _ = async { changes.as_mut().unwrap().changed().await }, if changes.is_some() => {}
                _ = async { stamps.as_mut().unwrap().changed().await }, if stamps.is_some() => {}
                _ = tick.tick() => {}
                // IPsec connections waiting for their SAs: look again sooner.
                _ = tokio::time::sleep(Duration::from_millis(100)), if self.ipsec.pending() => {}
                _ = io.shutdown.changed() => break,
            }
        }
        let left = io.node.keeper.borrow().released;
        kernel::blocking(|| self.ipsec.shutdown(left));
        match std::mem::replace(&mut self.phase, Phase::Off) {
            Phase::On(mut r) | Phase::Leaving { run: mut r, .. } => {
                self.save_timestamps(&mut r);
                kernel::blocking(|| r.tunnel.stop());
            }
            Phase::Off => {}
        }
        if left {
            // This node left the network: nothing of the tunnel stays behind.
            kernel::blocking(|| device::delete(&self.nl, DEVICE));
            let _ = kernel::blocking(|| netkernel::strict::remove(STRICT_TABLE));
        }
        tracing::info!("encryption controller stopped");
    }

    /// Whether the switch to `to` is complete: every peer whose subnet is routed into the
    /// other engine's device is up on `to` or does not take part in it.
    fn handover_done(
        &self,
        to: Kind,
        to_up: &BTreeSet<IpNet>,
        from_dev: Option<u32>,
        peers: &PeerSet,
    ) -> bool {
        if self.switch_since.is_some_and(|t| t.elapsed() >= HANDOVER_MAX) {
            return true;
        }
        let routed = self.routes.read().map(|r| r.encrypted.clone()).unwrap_or_default();
        peers.values().all(|p| {
            let takes_part = match to {
                Kind::Ipsec => matches!(p.ipsec, Ok(Some(_))),
                Kind::WireGuard => matches!(p.tunnel, Ok(Some(_))),
            };
            let on_old =
                p.families().any(|f| from_dev.is_some() && routed.get(&f.subnet).copied() == from_dev);
            !takes_part || !on_old || p.families().all(|f| to_up.contains(&f.subnet))
        })
    }

    async fn step(&mut self, io: &mut ControllerIo) {
        let config = io.config.borrow().clone();
        let Some(config) = config else { return };
        let settings = config.encryption_settings();
        let own = *io.own.borrow();
        let peers = io.peers.borrow().clone();
        let want = settings.enabled && !self.cfg.opt_out;
        let want_ipsec_kind = want && settings.kind == Kind::Ipsec && self.identity.is_some();
        let want_wg_kind = want && settings.kind == Kind::WireGuard;
        // A switch: the engine being left stays until the peers are up on the new one.
        let switching = (want_ipsec_kind && matches!(self.phase, Phase::On(_)))
            || (want_wg_kind && self.ipsec.active() && self.ipsec_report.publication.is_some());
        if switching {
            self.switch_since.get_or_insert_with(Instant::now);
        } else {
            self.switch_since = None;
        }
        let wg_dev = match &self.phase {
            Phase::On(r) | Phase::Leaving { run: r, .. } => Some(r.ifindex),
            Phase::Off => None,
        };
        let want_wg = want_wg_kind
            || (want_ipsec_kind
                && switching
                && !self.handover_done(Kind::Ipsec, &self.ipsec_report.up.clone(), wg_dev, &peers));
        let want_ipsec = want_ipsec_kind
            || (want_wg_kind && switching && {
                let wg_up = self.wg_up();
                !self.handover_done(Kind::WireGuard, &wg_up, self.ipsec_report.device, &peers)
            });
        if want && settings.kind == Kind::Ipsec && self.identity.is_none() {
            tracing::error!(
                "IPsec needs the node's identity key, which could not be loaded; staying on the current mode"
            );
        }

        // IPsec first (it may block briefly on charon): its report feeds the routing choice.
        self.ipsec_report = match &self.identity {
            Some(id) => {
                let (engine, report_peers) = (&mut self.ipsec, &peers);
                kernel::blocking(|| engine.step(want_ipsec, &settings, own, report_peers, id))
            }
            None => ipsec::Report::default(),
        };

        let phase = std::mem::replace(&mut self.phase, Phase::Off);
        self.phase = match (phase, want_wg, own) {
            (Phase::Off, true, Some(own)) => match self.start(&settings, own) {
                Ok(r) => Phase::On(r),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the encryption tunnel; traffic stays on VXLAN");
                    Phase::Off
                }
            },
            (Phase::Leaving { run, .. }, true, Some(_)) => {
                tracing::info!("encryption enabled again while leaving; keeping the tunnel");
                Phase::On(run)
            }
            (Phase::On(run), false, _) => {
                tracing::info!("WireGuard disabled: moving its traffic off the tunnel");
                Phase::Leaving { run, since: Instant::now(), unpublished: false }
            }
            (p, _, _) => p,
        };

        let mut wg_pub = None;
        let mut wg_set = BTreeSet::new();
        let mut stop = false;
        let mut mtu_floor = None;
        let mut phase = std::mem::replace(&mut self.phase, Phase::Off);
        match &mut phase {
            Phase::Off => {
                if !want && !self.cleaned_leftover {
                    // A tunnel left by a run that had encryption on, which is off now.
                    self.cleaned_leftover = true;
                    kernel::blocking(|| device::delete(&self.nl, DEVICE));
                    if !self.ipsec.active() {
                        let paths = ipsec::charon::CharonPaths::new(&self.cfg.state_dir);
                        kernel::blocking(|| ipsec::charon::stop_leftover(&paths));
                    }
                }
            }
            Phase::On(run) => {
                self.save_timestamps(run);
                if let Some(own) = own
                    && own != run.own
                {
                    // A new subnet: the device's address follows.
                    run.own = own;
                    let _ = kernel::blocking(|| self.setup_device(run));
                }
                if let Err(e) = self.follow_settings(run, &settings) {
                    tracing::error!(error = %e, "updating the tunnel's key");
                }
                wg_pub = Some(TunnelAttrs { public_key: run.key.public, port: run.port });
                // Leases are parsed again only when the peers, the settings or our key changed,
                // not on every tick.
                let unchanged = self.specs_from.as_ref().is_some_and(|(p, s, k)| {
                    Arc::ptr_eq(p, &peers) && *s == settings && *k == run.key.public
                });
                if !unchanged {
                    let specs = self.peer_specs(&peers, &settings, &run.key);
                    if specs != self.last_peers {
                        run.tunnel.set_peers(specs.clone());
                        self.last_peers = specs;
                    }
                    self.specs_from = Some((peers.clone(), settings.clone(), run.key.public));
                }
                wg_set = self.choose_routes(run);
                mtu_floor = Some(encrypted_mtu(self.cfg.underlay_mtu));
            }
            Phase::Leaving { run, since, unpublished } => {
                self.save_timestamps(run);
                // Routes go back at once (nothing chosen); the key leaves the lease a little
                // later, once our routes no longer point into the tunnel.
                if !*unpublished && since.elapsed() >= UNPUBLISH_AFTER {
                    *unpublished = true;
                }
                if !*unpublished {
                    wg_pub = Some(TunnelAttrs { public_key: run.key.public, port: run.port });
                }
                stop = since.elapsed() >= LINGER;
            }
        }
        // Waiting for the lease to start the tunnel (a restart): the routes a previous run
        // left on the tunnel stay there, never moved to VXLAN (plaintext) in the meantime.
        let waiting = matches!(phase, Phase::Off) && want && own.is_none() && !self.ipsec.active();
        self.phase = phase;
        if let Some(m) = self.ipsec_report.mtu {
            mtu_floor = Some(mtu_floor.map_or(m, |f: u32| f.min(m)));
        }
        if let Some(enc) = mtu_floor
            && !self.cfg.fixed_mtu
        {
            // New pods get the encrypted MTU; older ones learn it by path MTU discovery.
            io.mtu.send_if_modified(|m| {
                let lower = *m > enc;
                if lower {
                    *m = enc;
                }
                lower
            });
        }

        // The routing choice: each peer subnet into the wanted engine's device when it is up
        // there, else into the other engine's while that one still carries it.
        let ipsec_dev = self.ipsec_report.device;
        let wg_dev = match &self.phase {
            Phase::On(r) | Phase::Leaving { run: r, .. } => Some(r.ifindex),
            Phase::Off => None,
        };
        let restarting = self.started.elapsed() < RESTART_GRACE;
        let mut ipsec_set = self.ipsec_report.up.clone();
        if restarting && let Some(d) = ipsec_dev {
            // Our own restart with charon's SAs up: keep what the previous run routed there.
            ipsec_set.extend(self.seeded.iter().filter(|(_, i)| **i == d).map(|(n, _)| *n));
        }
        let (first, second) = if settings.kind == Kind::Ipsec {
            ((ipsec_set, ipsec_dev), (wg_set, wg_dev))
        } else {
            ((wg_set, wg_dev), (ipsec_set, ipsec_dev))
        };
        let mut choice = TunnelRoutes::default();
        choice.devices.extend(wg_dev);
        choice.devices.extend(ipsec_dev);
        for (set, dev) in [first, second] {
            // With kernel ESP (no device) the XFRM policies encrypt on the VXLAN route.
            let Some(dev) = dev else { continue };
            for net in set {
                choice.encrypted.entry(net).or_insert(dev);
            }
        }
        if want && settings.strict {
            choice.strict = match settings.kind {
                Kind::WireGuard => match &self.phase {
                    Phase::On(r) => Some(r.ifindex),
                    _ => None,
                },
                Kind::Ipsec => ipsec_dev,
            };
        }
        if !waiting {
            self.set_routes(choice, io).await;
        }
        let strict = (want && settings.strict).then(|| self.strict_rules(&config, own));
        self.set_strict(strict).await;
        io.status.send_replace(self.status_json(&settings, want));

        // Our lease: the parts of the engines running, `Type` the one wanted.
        let target = if want {
            settings.kind.name()
        } else if wg_pub.is_some() {
            "wireguard"
        } else {
            "ipsec"
        };
        let value = publication(target, wg_pub.as_ref(), self.ipsec_report.publication.as_ref());
        // While waiting for a lease (or after a failed start) a restarted node's published
        // data stays, so peers see no flap; off by choice, it goes.
        if !value.is_null() || !want {
            self.publish(value, io).await;
        }
        if stop && let Phase::Leaving { run, .. } = std::mem::replace(&mut self.phase, Phase::Off) {
            tracing::info!("removing the encryption tunnel");
            self.last_peers.clear();
            self.specs_from = None;
            self.last_good.clear();
            kernel::blocking(|| {
                run.tunnel.stop();
                device::delete(&self.nl, DEVICE);
            });
            let mut r = self.routes.read().map(|r| r.clone()).unwrap_or_default();
            r.devices.remove(&run.ifindex);
            r.encrypted.retain(|_, d| *d != run.ifindex);
            if r.strict == Some(run.ifindex) {
                r.strict = None;
            }
            self.set_routes(r, io).await;
        }
    }

    /// Peer subnets with a WireGuard session for the current keys.
    fn wg_up(&self) -> BTreeSet<IpNet> {
        let Phase::On(run) = &self.phase else { return BTreeSet::new() };
        let status: HashMap<String, bool> =
            run.tunnel.status().into_iter().map(|st| (st.id, st.established)).collect();
        self.last_peers
            .iter()
            .filter(|sp| status.get(&sp.id).copied().unwrap_or(false))
            .flat_map(|sp| sp.allowed.iter().copied())
            .collect()
    }

    fn status_json(&self, s: &EncryptionSettings, want: bool) -> Value {
        let routed = self.routes.read().map(|r| r.encrypted.clone()).unwrap_or_default();
        let on_tunnel: BTreeSet<IpNet> = match &self.phase {
            Phase::On(r) | Phase::Leaving { run: r, .. } => {
                routed.iter().filter(|(_, d)| **d == r.ifindex).map(|(n, _)| *n).collect()
            }
            Phase::Off => BTreeSet::new(),
        };
        let on_ipsec: BTreeSet<IpNet> = match self.ipsec_report.device {
            Some(d) => routed.iter().filter(|(_, x)| **x == d).map(|(n, _)| *n).collect(),
            // Kernel ESP: encrypted on the VXLAN route by the XFRM policies.
            None => self.ipsec_report.up.clone(),
        };
        let (run, phase) = match &self.phase {
            Phase::Off => (None, "off"),
            Phase::On(r) => (Some(r), "on"),
            Phase::Leaving { run, .. } => (Some(run), "leaving"),
        };
        let mut v = serde_json::json!({
            "enabled": s.enabled,
            "type": if s.enabled { s.kind.name() } else { "none" },
            "participating": want,
            "phase": phase,
            "strict": s.strict,
            "port": s.port,
            "key_generation": s.key_generation,
            "preshared_key": s.preshared_key.is_some(),
            "device": DEVICE,
            "ipsec": self.ipsec.status(&on_ipsec),
        });
        if let Some(r) = run {
            let now = Instant::now();
            let peers: Vec<Value> = r
                .tunnel
                .status()
                .into_iter()
                .map(|p| {
                    let subnets: Vec<String> = self
                        .last_peers
                        .iter()
                        .find(|sp| sp.id == p.id)
                        .map(|sp| sp.allowed.iter().map(|n| n.to_string()).collect())
                        .unwrap_or_default();
                    let routed = self
                        .last_peers
                        .iter()
                        .find(|sp| sp.id == p.id)
                        .is_some_and(|sp| sp.allowed.iter().any(|n| on_tunnel.contains(n)));
                    serde_json::json!({
                        "lease": p.id,
                        "public_key": super::settings::encode_key(&p.public_key),
                        "endpoint": p.endpoint.map(|e| e.to_string()),
                        "established": p.established,
                        "routed_through_tunnel": routed,
                        "subnets": subnets,
                        "last_handshake_seconds_ago": p.last_handshake.map(|t| now.duration_since(t).as_secs()),
                        "rx_bytes": p.rx_bytes,
                        "tx_bytes": p.tx_bytes,
                    })
                })
                .collect();
            v["public_key"] = Value::String(super::settings::encode_key(&r.key.public));
            v["key_age_seconds"] = r.key.age().as_secs().into();
            v["peers"] = Value::Array(peers);
            let st = r.tunnel.stats();
            v["stats"] = serde_json::json!({
                "rx_packets": st.rx_packets,
                "tx_packets": st.tx_packets,
                "dropped_no_peer": st.dropped_no_peer,
                "dropped_bad_source": st.dropped_bad_source,
                "dropped_invalid": st.dropped_invalid,
                "dropped_io": st.dropped_io,
                "handshakes_completed": st.handshakes_completed,
                "dropped_replayed": st.dropped_replayed,
                "dropped_rate_limited": st.dropped_rate_limited,
                "cookie_replies": st.cookie_replies,
            });
        }
        v
    }

    fn setup_device(&self, run: &mut Running) -> Result<(), netkernel::KernelError> {
        run.ifindex = device::set_up(
            &self.nl,
            DEVICE,
            encrypted_mtu(self.cfg.underlay_mtu),
            &run.own,
            &self.cfg.vxlan_devices,
        )?;
        Ok(())
    }

    fn start(&mut self, s: &EncryptionSettings, own: SubnetKey) -> Result<Running, String> {
        let (key, new) = self
            .keys
            .current(s.key_generation, s.rotation_period)
            .map_err(|e| format!("key file {}: {e}", self.keys.path().display()))?;
        if new {
            tracing::info!(generation = key.generation, "made a new WireGuard key");
        }
        let cfg =
            TunnelConfig { name: DEVICE.into(), port: s.port, threads: self.cfg.threads, persist: true };
        let tunnel = kernel::blocking(|| Tunnel::start(cfg, key.private))
            .map_err(|e| format!("starting the tunnel: {e}"))?;
        // Before any peer is set (until then no initiation is answered).
        match self.keys.load_timestamps() {
            Ok(saved) => tunnel.restore_handshake_timestamps(&saved),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable peer timestamps; initiations recorded before this start could be answered once")
            }
        }
        let stamps = tunnel.handshake_timestamps_changed();
        let mut run = Running { ifindex: tunnel.ifindex(), tunnel, stamps, key, port: s.port, own };
        kernel::blocking(|| self.setup_device(&mut run)).map_err(|e| format!("setting up {DEVICE}: {e}"))?;
        tracing::info!(device = DEVICE, port = s.port, public_key = %super::settings::encode_key(&run.key.public), "encryption tunnel up");
        Ok(run)
    }

    /// Key rotation (a new generation or an expired period) and port changes.
    fn follow_settings(&mut self, run: &mut Running, s: &EncryptionSettings) -> Result<(), String> {
        if s.port != run.port {
            // A new port needs a new socket: restart the tunnel on it (sessions re-handshake).
            tracing::info!(old = run.port, new = s.port, "tunnel port changed; restarting the tunnel");
            let cfg =
                TunnelConfig { name: DEVICE.into(), port: s.port, threads: self.cfg.threads, persist: true };
            let old = std::mem::replace(
                &mut run.tunnel,
                kernel::blocking(|| {
                    // The old one must release the port range first only if equal; ports differ here.
                    Tunnel::start(cfg, run.key.private)
                })
                .map_err(|e| format!("restarting the tunnel: {e}"))?,
            );
            run.tunnel.restore_handshake_timestamps(&old.handshake_timestamps());
            run.stamps = run.tunnel.handshake_timestamps_changed();
            kernel::blocking(|| old.stop());
            run.port = s.port;
            self.last_peers.clear();
            self.specs_from = None;
        }
        // The key in memory is the file's; only a new generation or an expired period sends
        // us to the file (not every step).
        if !run.key.due(s.key_generation, s.rotation_period) {
            return Ok(());
        }
        let (key, new) = self
            .keys
            .current(s.key_generation, s.rotation_period)
            .map_err(|e| format!("key file {}: {e}", self.keys.path().display()))?;
        if new || key.private != run.key.private {
            tracing::info!(generation = key.generation, public_key = %super::settings::encode_key(&key.public), "rotating this node's WireGuard key");
            run.tunnel.set_private_key(key.private);
            run.key = key;
        }
        Ok(())
    }

    /// Saves the peers' newest handshake timestamps when the tunnel accepted a newer one.
    fn save_timestamps(&self, run: &mut Running) {
        if !run.stamps.has_changed().unwrap_or(false) {
            return;
        }
        run.stamps.mark_unchanged();
        let stamps = run.tunnel.handshake_timestamps();
        if let Err(e) = kernel::blocking(|| self.keys.save_timestamps(&stamps)) {
            tracing::error!(file = %self.keys.timestamps_path().display(), error = %e, "saving the peers' handshake timestamps");
        }
    }

    fn warn_once(&mut self, id: &str, why: String) {
        if self.warned.get(id) != Some(&why) {
            tracing::warn!(lease = %id, reason = %why, "peer's tunnel data ignored; its traffic stays off the tunnel");
            self.warned.insert(id.to_string(), why);
        }
    }

    fn peer_specs(&mut self, peers: &PeerSet, s: &EncryptionSettings, me: &NodeKey) -> Vec<PeerSpec> {
        let mut specs = Vec::new();
        let mut seen_keys: HashMap<[u8; 32], usize> = HashMap::new();
        for p in peers.values() {
            let id = p.key.to_string();
            let attrs = match &p.tunnel {
                Ok(Some(a)) => *a,
                Ok(None) => {
                    self.warned.remove(&id);
                    continue;
                }
                Err(e) => {
                    self.warn_once(&id, e.clone());
                    continue;
                }
            };
            let Some(public) = p.public_address(self.cfg.outer) else {
                self.warn_once(
                    &id,
                    "no common underlay family: it has none of this node's address families".into(),
                );
                continue;
            };
            let ep = match endpoint(Some(public), &attrs) {
                Ok(ep) => ep,
                Err(e) => {
                    self.warn_once(&id, e);
                    continue;
                }
            };
            if attrs.public_key == me.public {
                self.warn_once(&id, "publishes this node's own public key".into());
                continue;
            }
            self.warned.remove(&id);
            *seen_keys.entry(attrs.public_key).or_default() += 1;
            // Exactly the families the network uses (a key's other family is no pod range).
            let allowed: Vec<IpNet> = p.families().map(|f| f.subnet).collect();
            specs.push(PeerSpec {
                id,
                public_key: attrs.public_key,
                endpoint: ep,
                allowed,
                preshared_key: s.preshared_key,
                keepalive: s.persistent_keepalive,
            });
        }
        // One key is one node: a key claimed by two leases is trusted for neither.
        specs.retain(|sp| {
            let dup = seen_keys.get(&sp.public_key).copied().unwrap_or(0) > 1;
            if dup {
                tracing::warn!(lease = %sp.id, "public key published by more than one lease; ignored");
            }
            !dup
        });
        specs
    }

    fn choose_routes(&mut self, run: &Running) -> BTreeSet<IpNet> {
        let now = Instant::now();
        let status: HashMap<String, (bool, bool)> =
            run.tunnel.status().into_iter().map(|st| (st.id, (st.established, st.can_send))).collect();
        let before: BTreeSet<IpNet> = self
            .routes
            .read()
            .map(|r| r.encrypted.iter().filter(|(_, d)| **d == run.ifindex).map(|(n, _)| *n).collect())
            .unwrap_or_default();
        let restarting = self.started.elapsed() < RESTART_GRACE;
        let mut encrypted = BTreeSet::new();
        for spec in &self.last_peers {
            // `established`: a session for the current keys; `can_send`: some session still
            // carries traffic (the old one, during a key change).
            let (up, can_send) = status.get(&spec.id).copied().unwrap_or((false, false));
            if up {
                self.last_good.insert(spec.id.clone(), now);
            }
            let recently = self.last_good.get(&spec.id).is_some_and(|t| now.duration_since(*t) < GRACE);
            for net in &spec.allowed {
                let was = before.contains(net);
                // Onto the tunnel only with a session for the current keys; it stays while
                // traffic can flow or the peer re-handshakes (after its restart).
                let seeded = self.seeded.get(net) == Some(&run.ifindex);
                let keep = up || (was && (can_send || recently)) || (restarting && seeded);
                if keep {
                    encrypted.insert(*net);
                }
            }
        }
        if restarting {
            // Also before the peers are listed: what a previous run left on the tunnel stays
            // there (never moved to VXLAN, i.e. plaintext, for a moment).
            encrypted.extend(self.seeded.iter().filter(|(_, i)| **i == run.ifindex).map(|(n, _)| *n));
        }
        self.last_good.retain(|id, _| self.last_peers.iter().any(|p| &p.id == id));
        encrypted
    }

    async fn set_routes(&mut self, choice: TunnelRoutes, io: &ControllerIo) {
        let changed = match self.routes.write() {
            Ok(mut r) if *r != choice => {
                let moved_on =
                    choice.encrypted.iter().filter(|(n, d)| r.encrypted.get(*n) != Some(*d)).count();
                let moved_off = r.encrypted.keys().filter(|n| !choice.encrypted.contains_key(*n)).count();
                if moved_on + moved_off > 0 {
                    tracing::info!(
                        onto_tunnel = moved_on,
                        off_tunnel = moved_off,
                        encrypted = choice.encrypted.len(),
                        "moving routes"
                    );
                }
                *r = choice;
                true
            }
            _ => false,
        };
        if changed {
            let _ = io.backend.send(BackendEvent::Resync).await;
        }
    }

    /// The strict table's rules: plaintext overlay devices closed, and pod-network sources
    /// accepted only from the tunnel (remote pods) or along their route (our own pods).
    fn strict_rules(&self, config: &NetworkConfig, own: Option<SubnetKey>) -> StrictRules {
        let own_v4 = own.and_then(|o| o.ipv4).map(IpNet::V4);
        let own_v6 = own.and_then(|o| o.ipv6).map(IpNet::V6);
        StrictRules {
            plaintext_devices: self.cfg.vxlan_devices.clone(),
            // Both engines' devices: during a switch a peer's packets come in through either.
            tunnels: vec![DEVICE.into(), ipsec::charon::LIBIPSEC_DEVICE.into()],
            xfrm: self.ipsec_report.datapath == Some(Datapath::Kernel),
            pod_networks: [&config.ipv4, &config.ipv6].into_iter().flatten().map(|p| p.network).collect(),
            own_subnets: own_v4.into_iter().chain(own_v6).collect(),
        }
    }

    async fn set_strict(&mut self, want: Option<StrictRules>) {
        let on = want.is_some();
        // While on, checked every 10 s too, so a hand-deleted table comes back; once known
        // removed there is nothing to watch (no nft process per tick on plain clusters).
        let recheck = on && self.strict_checked.elapsed() >= crate::backend::RESYNC_EVERY;
        if self.strict_on == Some(on) && self.strict_rules == want && !recheck {
            return;
        }
        let same = self.strict_on == Some(true) && self.strict_rules == want;
        let r = kernel::blocking(|| match &want {
            Some(rules) => {
                if same && netkernel::strict::present(STRICT_TABLE)? {
                    return Ok(());
                }
                netkernel::strict::ensure(STRICT_TABLE, rules)
            }
            None => netkernel::strict::remove(STRICT_TABLE),
        });
        self.strict_checked = Instant::now();
        match r {
            Ok(()) => {
                // Quiet at start-up when off: only changes are news.
                if self.strict_on != Some(on) && (on || self.strict_on.is_some()) {
                    tracing::info!(strict = on, "strict encryption rules");
                }
                self.strict_on = Some(on);
                self.strict_rules = want;
            }
            Err(e) => tracing::error!(error = %e, "strict encryption rules"),
        }
    }

    async fn publish(&mut self, value: Value, io: &ControllerIo) {
        if self.published.as_ref() == Some(&value) {
            return;
        }
        if io.node.keeper.borrow().lease.is_none() {
            // The keeper is acquiring and reads no commands; the next step tries again.
            return;
        }
        let (tx, rx) = oneshot::channel();
        if io.keeper.try_send(KeeperCommand::SetEncryption(value.clone(), tx)).is_err() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(()))) => {
                if !value.is_null() {
                    tracing::info!("published our tunnel in the lease");
                } else if self.published.is_some() {
                    tracing::info!("took our tunnel out of the lease");
                }
                self.published = Some(value);
            }
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "publishing the tunnel in our lease; retrying"),
            _ => {}
        }
    }
}
