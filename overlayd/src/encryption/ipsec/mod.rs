//! IPsec between nodes: IKEv2 by strongSwan's `charon` ([`charon`]), driven by overlayd
//! only through its VICI socket ([`vici`]).
//!
//! For every peer lease that takes part (it publishes an `IPsec` part, see
//! [`crate::encryption::lease_data::IpsecAttrs`]) the engine loads one connection,
//! `ferro-<lease>`, whose single child SA's traffic selectors are exactly our pod subnets
//! and the peer's (v4 and v6): charon narrows nothing wider, and ESP drops what a peer sends
//! from outside its own subnets, so a node cannot send as another node's pods. IKE
//! authenticates each node with the node's identity key ([`crate::identity`], Ed25519,
//! published in its lease): charon gets our private key through `load-key` and the peer's
//! public key in the connection (`pubkeys`). No secret exists unless the cluster hands out a
//! pre-shared key, which is then used only for peers whose lease has no identity key.
//!
//! Of two nodes the one with the smaller identity key initiates; the other waits a moment
//! and then initiates as well (so a peer configured by hand, which may never initiate, is
//! reached). A connection whose child SA is installed is "up": the controller then moves
//! the peer's route onto charon's TUN device (kernel-libipsec) or, with kernel ESP, leaves
//! it on VXLAN where the XFRM policies catch the traffic. Connections are added and removed
//! as leases come and go; a charon that died is started again and re-programmed; a
//! restarted overlayd adopts the charon it finds (its SAs keep carrying traffic).

pub mod charon;
pub mod proposals;
pub mod vici;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ipnet::IpNet;
use serde_json::{Value, json};

use self::charon::{Charon, CharonPaths, Datapath};
use self::vici::{Client, Message};
use super::lease_data::IpsecAttrs;
use super::settings::EncryptionSettings;
use crate::identity::{Identity, PublicKey};
use crate::node::PeerSet;
use crate::subnet::SubnetKey;

/// The prefix of every connection overlayd loads (others in charon are left alone).
pub const CONN_PREFIX: &str = "ferro-";
/// How long the node that is not the designated initiator waits before initiating itself.
const FALLBACK_INITIATE: Duration = Duration::from_secs(2);
/// Between two initiations of one connection: this, doubling per attempt up to
/// [`REINITIATE_MAX`] (a peer that has not loaded our connection yet refuses the first).
const REINITIATE: Duration = Duration::from_millis(250);
const REINITIATE_MAX: Duration = Duration::from_secs(8);
/// After charon was restarted, every connection is initiated from our side at once for this
/// long: the peers still hold SAs with the charon that died.
const EAGER_AFTER_RESTART: Duration = Duration::from_secs(10);
/// After a failed start, the next try.
const RETRY_START: Duration = Duration::from_secs(5);
/// How long after disabling the `IPsec` part leaves the lease.
const UNPUBLISH_AFTER: Duration = Duration::from_secs(2);
/// How long a disabled engine keeps its SAs (peers that have not yet seen the change).
pub const LINGER: Duration = Duration::from_secs(15);

/// Fixed for the daemon's lifetime.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The state directory (`ipsec/` under it).
    pub state_dir: PathBuf,
    /// The charon binary.
    pub charon: PathBuf,
    /// A datapath forced by `--ipsec-datapath` (else detected).
    pub datapath: Option<Datapath>,
    /// The underlay MTU.
    pub underlay_mtu: u32,
    /// The VXLAN devices (loose reverse-path filtering with the TUN device).
    pub vxlan_devices: Vec<String>,
    /// This node's underlay families: a peer is reached in one of them.
    pub outer: crate::peer::Outer,
}

/// One peer's connection as loaded into charon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSpec {
    /// `ferro-<lease>`.
    pub name: String,
    /// The lease key.
    pub lease: String,
    /// Its underlay address.
    pub remote: IpAddr,
    /// Its identity key; `None`: authenticated with the pre-shared key.
    pub remote_key: Option<PublicKey>,
    /// Our pod subnets.
    pub local_ts: Vec<IpNet>,
    /// Its pod subnets.
    pub remote_ts: Vec<IpNet>,
    /// Whether we initiate first.
    pub initiator: bool,
    /// Proposals and lifetimes (part of the spec so that a change reloads it).
    pub ike: Vec<String>,
    /// ESP proposals.
    pub esp: Vec<String>,
    /// Rekey interval (`RotationPeriod`), else charon's defaults.
    pub rekey: Option<Duration>,
}

/// The connection name for a lease key.
pub fn conn_name(lease: &str) -> String {
    format!("{CONN_PREFIX}{}", lease.replace('&', "_"))
}

/// A public key as charon reads it (`pubkeys`): SubjectPublicKeyInfo PEM.
pub fn public_key_pem(k: &PublicKey) -> String {
    // RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING { key } }
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(&k.0);
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
}

fn nets(ts: &[IpNet]) -> Vec<String> {
    ts.iter().map(|n| n.to_string()).collect()
}

impl ConnSpec {
    /// The `load-conn` message.
    pub fn to_message(&self, own: &PublicKey) -> Message {
        let auth = |key: Option<&PublicKey>| match key {
            Some(k) => Message::new().kv("auth", "pubkey").list("pubkeys", [public_key_pem(k)]),
            None => Message::new().kv("auth", "psk"),
        };
        let (local, remote) = match &self.remote_key {
            Some(k) => (auth(Some(own)), auth(Some(k))),
            None => (auth(None), auth(None)),
        };
        let mut child = Message::new()
            .list("local_ts", nets(&self.local_ts))
            .list("remote_ts", nets(&self.remote_ts))
            .list("esp_proposals", &self.esp)
            .kv("mode", "tunnel")
            .kv("start_action", "none")
            .kv("close_action", "none")
            .kv("dpd_action", "clear");
        let mut conn = Message::new()
            .kv("version", "2")
            .list("remote_addrs", [self.remote.to_string()])
            .kv("encap", "yes")
            .kv("mobike", "no")
            .kv("unique", "replace")
            .kv("keyingtries", "1")
            .kv("dpd_delay", "10s")
            .kv("send_certreq", "no")
            .list("proposals", &self.ike);
        if let Some(r) = self.rekey {
            conn = conn.kv("rekey_time", format!("{}s", r.as_secs()));
            child = child.kv("rekey_time", format!("{}s", r.as_secs()));
        }
        let conn = conn
            .section("local", local)
            .section("remote", remote)
            .section("children", Message::new().section(&self.name, child));
        Message::new().section(&self.name, conn)
    }
}

/// What an SA listing says about one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaView {
    /// IKE_SA state (`ESTABLISHED`, `CONNECTING` …), the best of its IKE_SAs.
    pub ike: Option<String>,
    /// Whether a child SA is installed.
    pub installed: bool,
    /// Bytes in and out over its child SAs.
    pub bytes_in: u64,
    /// Out.
    pub bytes_out: u64,
    /// Remote traffic selectors of installed child SAs.
    pub remote_ts: Vec<String>,
    /// Established seconds ago.
    pub established: Option<u64>,
}

/// Parses `list-sa` events into one view per connection.
pub fn parse_sas(events: &[Message]) -> BTreeMap<String, SaView> {
    let mut out: BTreeMap<String, SaView> = BTreeMap::new();
    for e in events {
        for (name, v) in &e.0 {
            let vici::Value::Section(ike) = v else { continue };
            let view = out.entry(name.clone()).or_default();
            let state = ike.str("state").unwrap_or("").to_string();
            if view.ike.as_deref() != Some("ESTABLISHED") {
                view.ike = Some(state.clone());
            }
            if state == "ESTABLISHED" {
                view.established = ike.str("established").and_then(|s| s.parse().ok()).or(view.established);
            }
            let Some(children) = ike.sub("child-sas") else { continue };
            for (_, c) in &children.0 {
                let vici::Value::Section(c) = c else { continue };
                if c.str("state") == Some("INSTALLED") && state == "ESTABLISHED" {
                    view.installed = true;
                    view.remote_ts.extend(c.strs("remote-ts").iter().map(|s| s.to_string()));
                }
                view.bytes_in += c.str("bytes-in").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
                view.bytes_out += c.str("bytes-out").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    out
}

/// The engine's report to the controller after a step.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Peer subnets with an installed child SA.
    pub up: BTreeSet<IpNet>,
    /// The device their routes go into (kernel-libipsec's TUN); `None` with kernel ESP.
    pub device: Option<u32>,
    /// What to publish in our lease (`None`: nothing).
    pub publication: Option<IpsecAttrs>,
    /// The pod MTU this datapath needs, while running.
    pub mtu: Option<u32>,
    /// The datapath, while running.
    pub datapath: Option<Datapath>,
}

struct Run {
    charon: Charon,
    datapath: Datapath,
    ifindex: Option<u32>,
    own: SubnetKey,
    /// The `KeyGeneration` whose rekey is done.
    generation: u64,
    /// The pre-shared key loaded into charon.
    psk: Option<Vec<u8>>,
}

enum Phase {
    Off,
    On(Run),
    Leaving { run: Run, since: Instant, unpublished: bool },
}

/// The IPsec engine.
pub struct Engine {
    cfg: EngineConfig,
    paths: CharonPaths,
    nl: netkernel::Netlink,
    phase: Phase,
    /// Connections loaded into charon, by name.
    loaded: BTreeMap<String, ConnSpec>,
    sas: BTreeMap<String, SaView>,
    /// When each connection was last seen without an SA coming up (for the fallback).
    waiting_since: HashMap<String, Instant>,
    last_initiate: HashMap<String, (Instant, u32)>,
    eager_until: Option<Instant>,
    warned: HashMap<String, String>,
    failure: Option<String>,
    retry_at: Instant,
    detected: Option<Datapath>,
    charon_restarts: u64,
}

fn psk_bytes(s: &EncryptionSettings) -> Option<Vec<u8>> {
    s.ipsec.psk_text.as_ref().map(|t| t.as_bytes().to_vec()).or(s.preshared_key.map(|k| k.to_vec()))
}

impl Engine {
    /// An engine that has started nothing.
    pub fn new(cfg: EngineConfig, nl: netkernel::Netlink) -> Self {
        Engine {
            paths: CharonPaths::new(&cfg.state_dir),
            cfg,
            nl,
            phase: Phase::Off,
            loaded: BTreeMap::new(),
            sas: BTreeMap::new(),
            waiting_since: HashMap::new(),
            last_initiate: HashMap::new(),
            eager_until: None,
            warned: HashMap::new(),
            failure: None,
            retry_at: Instant::now(),
            detected: None,
            charon_restarts: 0,
        }
    }

    /// Whether charon is (still) in use.
    pub fn active(&self) -> bool {
        !matches!(self.phase, Phase::Off)
    }

    /// Whether a charon answers on the node's socket (a previous run's): the controller
    /// then starts the engine at once, adopting it.
    pub fn charon_present(&self) -> bool {
        Client::connect(&self.paths.vici(), Duration::from_millis(500)).is_ok()
    }

    /// The TUN device's routes a previous run left (kernel-libipsec).
    pub fn leftover_routes(&self) -> BTreeSet<IpNet> {
        super::device::routes_through(&self.nl, charon::LIBIPSEC_DEVICE).unwrap_or_default()
    }

    fn datapath(&mut self) -> Datapath {
        if let Some(d) = self.cfg.datapath {
            return d;
        }
        *self.detected.get_or_insert_with(charon::detect)
    }

    /// Moves the engine towards `want` and reports. Blocks (VICI, process start): call it
    /// through `crate::kernel::blocking`.
    pub fn step(
        &mut self,
        want: bool,
        s: &EncryptionSettings,
        own: Option<SubnetKey>,
        peers: &PeerSet,
        identity: &Identity,
    ) -> Report {
        let phase = std::mem::replace(&mut self.phase, Phase::Off);
        self.phase = match (phase, want, own) {
            (Phase::Off, true, Some(own)) if Instant::now() >= self.retry_at => {
                match self.start(s, own, identity) {
                    Ok(run) => {
                        self.failure = None;
                        Phase::On(run)
                    }
                    Err(e) => {
                        if self.failure.as_ref() != Some(&e) {
                            tracing::error!(error = %e, "cannot start IPsec; this node stays on its current mode");
                        }
                        self.failure = Some(e);
                        self.retry_at = Instant::now() + RETRY_START;
                        Phase::Off
                    }
                }
            }
            (Phase::Leaving { run, .. }, true, Some(_)) => {
                tracing::info!("IPsec enabled again while leaving; keeping charon");
                Phase::On(run)
            }
            (Phase::On(run), false, _) => {
                tracing::info!("IPsec no longer wanted: moving traffic off it");
                Phase::Leaving { run, since: Instant::now(), unpublished: false }
            }
            (p, _, _) => p,
        };
        let mut report = Report::default();
        let mut phase = std::mem::replace(&mut self.phase, Phase::Off);
        let mut stop = false;
        match &mut phase {
            Phase::Off => {}
            Phase::On(run) => {
                if let Some(own) = own
                    && own != run.own
                {
                    run.own = own;
                    self.setup_device(run);
                }
                if let Err(e) = self.keep_charon(run, s, identity) {
                    if self.failure.as_ref() != Some(&e) {
                        tracing::error!(error = %e, "charon is not available; retrying");
                    }
                    self.failure = Some(e);
                } else {
                    self.failure = None;
                    let specs = self.specs(peers, s, run, identity);
                    self.sync(run, specs, identity);
                    self.poll(run, s, true);
                }
                report.up = self.up_subnets();
                report.device = run.ifindex;
                report.publication = Some(IpsecAttrs { traffic_selectors: Vec::new() });
                report.mtu = Some(run.datapath.mtu(self.cfg.underlay_mtu));
                report.datapath = Some(run.datapath);
            }
            Phase::Leaving { run, since, unpublished } => {
                // Routes leave at once (nothing reported up); the lease keeps the part a
                // little longer; the SAs keep receiving until LINGER.
                if let Err(e) = self.keep_charon(run, s, identity) {
                    self.failure = Some(e);
                } else {
                    self.poll(run, s, false);
                }
                report.device = run.ifindex;
                if !*unpublished && since.elapsed() < UNPUBLISH_AFTER {
                    report.publication = Some(IpsecAttrs { traffic_selectors: Vec::new() });
                } else {
                    *unpublished = true;
                }
                report.datapath = Some(run.datapath);
                stop = since.elapsed() >= LINGER;
            }
        }
        self.phase = phase;
        if stop && let Phase::Leaving { mut run, .. } = std::mem::replace(&mut self.phase, Phase::Off) {
            tracing::info!("stopping charon: IPsec is off");
            self.unload_all(&run);
            run.charon.stop();
            self.loaded.clear();
            self.sas.clear();
            report.device = None;
        }
        report
    }

    fn start(&mut self, s: &EncryptionSettings, own: SubnetKey, identity: &Identity) -> Result<Run, String> {
        let datapath = self.datapath();
        let charon = Charon::ensure(&self.paths, &self.cfg.charon, datapath)?;
        tracing::info!(
            datapath = datapath.name(),
            version = %charon.version,
            pid = ?charon.pid,
            adopted = !charon.started_here,
            vici = %self.paths.vici().display(),
            "IPsec: charon up"
        );
        let mut run = Run { charon, datapath, ifindex: None, own, generation: s.key_generation, psk: None };
        self.program_charon(&mut run, s, identity)?;
        if !run.charon.started_here {
            // Adopted: learn what it has; connections not wanted any more go at the first sync.
            let mut c = run.charon.client().map_err(|e| e.to_string())?;
            let r = c.call("get-conns", Message::new()).map_err(|e| e.to_string())?;
            let names: Vec<String> = r
                .strs("conns")
                .into_iter()
                .filter(|n| n.starts_with(CONN_PREFIX))
                .map(String::from)
                .collect();
            tracing::info!(connections = names.len(), "adopted charon's connections");
            // Their content is unknown: mark them for a reload (same name: charon replaces the
            // config; established SAs stay up).
            for n in names {
                self.loaded.insert(n.clone(), ConnSpec::placeholder(&n));
            }
        }
        self.setup_device(&mut run);
        Ok(run)
    }

    /// Loads our private key (and the PSK) into charon.
    fn program_charon(
        &mut self,
        run: &mut Run,
        s: &EncryptionSettings,
        identity: &Identity,
    ) -> Result<(), String> {
        let pem =
            std::fs::read(identity.path()).map_err(|e| format!("{}: {e}", identity.path().display()))?;
        let mut c = run.charon.client().map_err(|e| e.to_string())?;
        c.call_ok("load-key", Message::new().kv("type", "any").kv("data", &pem))
            .map_err(|e| format!("loading the identity key into charon: {e}"))?;
        run.psk = None;
        self.sync_psk(run, s, &mut c)?;
        Ok(())
    }

    fn sync_psk(&mut self, run: &mut Run, s: &EncryptionSettings, c: &mut Client) -> Result<(), String> {
        let want = psk_bytes(s);
        if want == run.psk {
            return Ok(());
        }
        match &want {
            Some(k) => {
                c.call_ok(
                    "load-shared",
                    Message::new().kv("id", "ferro-psk").kv("type", "IKE").kv("data", k),
                )
                .map_err(|e| format!("loading the pre-shared key: {e}"))?;
            }
            None => {
                let _ = c.call("unload-shared", Message::new().kv("id", "ferro-psk"));
            }
        }
        run.psk = want;
        Ok(())
    }

    /// A charon that died is started again and re-programmed (its SAs are gone with it).
    fn keep_charon(
        &mut self,
        run: &mut Run,
        s: &EncryptionSettings,
        identity: &Identity,
    ) -> Result<(), String> {
        if run.charon.alive() {
            let mut c = run.charon.client().map_err(|e| e.to_string())?;
            return self.sync_psk(run, s, &mut c);
        }
        tracing::error!("charon died or stopped answering; starting it again");
        run.charon.stop();
        self.loaded.clear();
        self.sas.clear();
        self.charon_restarts += 1;
        run.charon = Charon::ensure(&self.paths, &self.cfg.charon, run.datapath)?;
        self.program_charon(run, s, identity)?;
        run.ifindex = None;
        self.setup_device(run);
        self.last_initiate.clear();
        self.eager_until = Some(Instant::now() + EAGER_AFTER_RESTART);
        tracing::info!(pid = ?run.charon.pid, "charon running again; re-programming it");
        Ok(())
    }

    fn setup_device(&mut self, run: &mut Run) {
        if run.datapath != Datapath::Libipsec {
            return;
        }
        // charon makes the TUN device when it starts; ours are its address and rp_filter.
        let mtu = run.datapath.mtu(self.cfg.underlay_mtu);
        match super::device::set_up(&self.nl, charon::LIBIPSEC_DEVICE, mtu, &run.own, &self.cfg.vxlan_devices)
        {
            Ok(i) => run.ifindex = Some(i),
            Err(e) => {
                tracing::warn!(device = charon::LIBIPSEC_DEVICE, error = %e, "setting up charon's TUN device");
                run.ifindex = None;
            }
        }
    }

    fn warn_once(&mut self, id: &str, why: String) {
        if self.warned.get(id) != Some(&why) {
            tracing::warn!(lease = %id, reason = %why, "peer's IPsec data ignored; its traffic stays off IPsec");
            self.warned.insert(id.to_string(), why);
        }
    }

    /// The connections the peers call for; hostile or malformed lease data skips the peer.
    fn specs(
        &mut self,
        peers: &PeerSet,
        s: &EncryptionSettings,
        run: &Run,
        identity: &Identity,
    ) -> BTreeMap<String, ConnSpec> {
        let me = identity.public();
        let psk = psk_bytes(s).is_some();
        let mut out = BTreeMap::new();
        let mut keys: HashMap<PublicKey, usize> = HashMap::new();
        for p in peers.values() {
            let id = p.key.to_string();
            let attrs = match &p.ipsec {
                Ok(Some(a)) => a,
                Ok(None) => {
                    self.warned.remove(&id);
                    continue;
                }
                Err(e) => {
                    self.warn_once(&id, e.clone());
                    continue;
                }
            };
            let lease_nets: Vec<IpNet> = p.families().map(|f| f.subnet).collect();
            if let Some(bad) =
                attrs.traffic_selectors.iter().find(|t| !lease_nets.iter().any(|n| n.contains(*t)))
            {
                self.warn_once(&id, format!("traffic selector {bad} is outside the lease's subnets"));
                continue;
            }
            let published =
                if attrs.traffic_selectors.is_empty() { &lease_nets } else { &attrs.traffic_selectors };
            // Only the families the network uses, paired with ours.
            let remote_ts: Vec<IpNet> = published
                .iter()
                .filter(|t| run.own.nets().any(|o| o.addr().is_ipv4() == t.addr().is_ipv4()))
                .copied()
                .collect();
            let local_ts: Vec<IpNet> = run
                .own
                .nets()
                .filter(|o| remote_ts.iter().any(|t| t.addr().is_ipv4() == o.addr().is_ipv4()))
                .collect();
            if remote_ts.is_empty() {
                self.warn_once(&id, "no traffic selector in a family of the network".into());
                continue;
            }
            let remote = match p.public_address(self.cfg.outer) {
                Some(ip) if !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback()) => ip,
                other => {
                    self.warn_once(&id, format!("public IP {other:?} cannot be an IKE peer"));
                    continue;
                }
            };
            // The key IKE checks is the one that signed the lease (and is pinned to the node's
            // ID): an `Identity` merely written into an unsigned lease proves nothing.
            let remote_key = match (p.identity, p.signed) {
                (Some(k), true) => Some(k),
                (Some(_), false) if !psk => {
                    self.warn_once(
                        &id,
                        "the lease is not signed by its identity key and the cluster has no pre-shared key"
                            .into(),
                    );
                    continue;
                }
                _ => None,
            };
            let initiator = match &remote_key {
                Some(k) if *k == me => {
                    self.warn_once(&id, "publishes this node's own identity key".into());
                    continue;
                }
                Some(k) => me.0 < k.0,
                None if psk => {
                    let ours = run.own.nets().next().map(|n| n.addr());
                    ours.is_some_and(|o| Some(o) < remote_ts.first().map(|t| t.addr()))
                }
                None => {
                    self.warn_once(
                        &id,
                        "no identity key in the lease and no pre-shared key in the cluster".into(),
                    );
                    continue;
                }
            };
            if let Some(k) = &remote_key {
                *keys.entry(*k).or_default() += 1;
            }
            self.warned.remove(&id);
            let name = conn_name(&id);
            out.insert(
                name.clone(),
                ConnSpec {
                    name,
                    lease: id,
                    remote,
                    remote_key,
                    local_ts,
                    remote_ts,
                    initiator,
                    ike: s.ipsec.ike(),
                    esp: s.ipsec.esp(),
                    rekey: s.rotation_period,
                },
            );
        }
        // One key is one node: a key claimed by two leases is trusted for neither.
        out.retain(|_, c| {
            let dup = c.remote_key.is_some_and(|k| keys.get(&k).copied().unwrap_or(0) > 1);
            if dup {
                tracing::warn!(lease = %c.lease, "identity key published by more than one lease; no IPsec with it");
            }
            !dup
        });
        out
    }

    /// Loads new and changed connections, unloads (and terminates) the ones gone.
    fn sync(&mut self, run: &mut Run, want: BTreeMap<String, ConnSpec>, identity: &Identity) {
        let Ok(mut c) = run.charon.client() else { return };
        let own = identity.public();
        let gone: Vec<String> = self.loaded.keys().filter(|n| !want.contains_key(*n)).cloned().collect();
        for name in gone {
            let _ =
                c.call("terminate", Message::new().kv("ike", &name).kv("timeout", "-1").kv("force", "yes"));
            match c.call_ok("unload-conn", Message::new().kv("name", &name)) {
                Ok(_) => tracing::info!(connection = %name, "IPsec connection removed"),
                Err(e) => tracing::warn!(connection = %name, error = %e, "unloading an IPsec connection"),
            }
            self.loaded.remove(&name);
            self.waiting_since.remove(&name);
            self.last_initiate.remove(&name);
        }
        for (name, spec) in want {
            if self.loaded.get(&name) == Some(&spec) {
                continue;
            }
            match c.call_ok("load-conn", spec.to_message(&own)) {
                Ok(_) => {
                    tracing::info!(connection = %name, peer = %spec.remote, initiator = spec.initiator, "IPsec connection loaded");
                    self.waiting_since.insert(name.clone(), Instant::now());
                    self.loaded.insert(name, spec);
                }
                Err(e) => {
                    // Nothing half-programmed: the connection is not recorded; retried next step.
                    tracing::warn!(connection = %name, error = %e, "charon refused an IPsec connection");
                    self.loaded.remove(&name);
                }
            }
        }
    }

    /// Lists the SAs, initiates what is missing, rekeys on a new `KeyGeneration`.
    fn poll(&mut self, run: &mut Run, s: &EncryptionSettings, initiate: bool) {
        let Ok(mut c) = run.charon.client() else { return };
        match c.stream("list-sas", "list-sa", Message::new().kv("noblock", "yes")) {
            Ok((events, _)) => self.sas = parse_sas(&events),
            Err(e) => {
                tracing::warn!(error = %e, "listing charon's SAs");
                return;
            }
        }
        let now = Instant::now();
        let leaving = !initiate;
        let eager = self.eager_until.is_some_and(|t| now < t);
        for (name, spec) in &self.loaded {
            let view = self.sas.get(name);
            if view.is_some_and(|v| v.installed) {
                self.waiting_since.insert(name.clone(), now);
                self.last_initiate.remove(name);
                continue;
            }
            if leaving || view.is_some_and(|v| v.ike.as_deref() == Some("CONNECTING")) {
                continue;
            }
            let waited = self.waiting_since.get(name).map_or(Duration::ZERO, |t| now.duration_since(*t));
            let attempts = self.last_initiate.get(name).map_or(0, |(_, n)| *n);
            let recently = self.last_initiate.get(name).is_some_and(|(t, n)| {
                now.duration_since(*t) < (REINITIATE * 2u32.saturating_pow(*n)).min(REINITIATE_MAX)
            });
            if recently || !(spec.initiator || eager || waited >= FALLBACK_INITIATE) {
                continue;
            }
            self.last_initiate.insert(name.clone(), (now, attempts + 1));
            let m =
                Message::new().kv("child", name).kv("ike", name).kv("timeout", "-1").kv("init-limits", "no");
            if let Err(e) = c.call_ok("initiate", m) {
                tracing::debug!(connection = %name, error = %e, "initiate");
            }
        }
        if s.key_generation > run.generation {
            // `overlayctl encryption rotate`: new keys for every SA we initiate (IKE and
            // child SAs, make-before-break: the old SA carries traffic until the new one is
            // installed). The identity key stays: it is the node's, not the session's.
            tracing::info!(generation = s.key_generation, "rekeying every IPsec SA");
            for (name, spec) in &self.loaded {
                if !spec.initiator || !self.sas.get(name).is_some_and(|v| v.installed) {
                    continue;
                }
                let _ = c.call_ok("rekey", Message::new().kv("ike", name));
                let _ = c.call_ok("rekey", Message::new().kv("child", name));
            }
            run.generation = s.key_generation;
        }
    }

    /// Whether a connection is still waiting for its SA (the controller then looks again
    /// sooner than its usual tick).
    pub fn pending(&self) -> bool {
        matches!(self.phase, Phase::On(_))
            && self.loaded.keys().any(|n| !self.sas.get(n).is_some_and(|v| v.installed))
    }

    fn up_subnets(&self) -> BTreeSet<IpNet> {
        let mut up = BTreeSet::new();
        for (name, spec) in &self.loaded {
            if self.sas.get(name).is_some_and(|v| v.installed) {
                up.extend(spec.remote_ts.iter().copied());
            }
        }
        up
    }

    fn unload_all(&mut self, run: &Run) {
        let Ok(mut c) = run.charon.client() else { return };
        for name in self.loaded.keys() {
            let _ =
                c.call("terminate", Message::new().kv("ike", name).kv("timeout", "-1").kv("force", "yes"));
            let _ = c.call("unload-conn", Message::new().kv("name", name));
        }
    }

    /// On daemon shutdown: charon keeps running (its SAs keep carrying traffic until the
    /// next overlayd adopts it) unless the node left the network.
    pub fn shutdown(&mut self, left: bool) {
        match std::mem::replace(&mut self.phase, Phase::Off) {
            Phase::On(mut run) | Phase::Leaving { mut run, .. } if left => {
                self.unload_all(&run);
                run.charon.stop();
            }
            _ if left => charon::stop_leftover(&self.paths),
            _ => {}
        }
    }

    /// `overlayctl encryption status`'s IPsec part.
    pub fn status(&self, routed: &BTreeSet<IpNet>) -> Value {
        let (run, phase) = match &self.phase {
            Phase::Off => (None, "off"),
            Phase::On(r) => (Some(r), "on"),
            Phase::Leaving { run, .. } => (Some(run), "leaving"),
        };
        let mut v = json!({
            "phase": phase,
            "charon_restarts": self.charon_restarts,
            "vici": self.paths.vici().display().to_string(),
        });
        if let Some(e) = &self.failure {
            v["error"] = json!(e);
        }
        if let Some(r) = run {
            v["datapath"] = json!(r.datapath.name());
            v["charon"] =
                json!({"pid": r.charon.pid, "version": r.charon.version, "adopted": !r.charon.started_here});
            v["device"] =
                json!(if r.datapath == Datapath::Libipsec { Some(charon::LIBIPSEC_DEVICE) } else { None });
            v["mtu"] = json!(r.datapath.mtu(self.cfg.underlay_mtu));
            let peers: Vec<Value> = self
                .loaded
                .values()
                .map(|spec| {
                    let sa = self.sas.get(&spec.name).cloned().unwrap_or_default();
                    json!({
                        "lease": spec.lease,
                        "connection": spec.name,
                        "endpoint": spec.remote.to_string(),
                        "auth": if spec.remote_key.is_some() { "pubkey" } else { "psk" },
                        "initiator": spec.initiator,
                        "ike_state": sa.ike,
                        "established": sa.installed,
                        "routed_through_tunnel": spec.remote_ts.iter().any(|n| routed.contains(n)),
                        "subnets": nets(&spec.remote_ts),
                        "established_seconds_ago": sa.established,
                        "rx_bytes": sa.bytes_in,
                        "tx_bytes": sa.bytes_out,
                    })
                })
                .collect();
            v["peers"] = Value::Array(peers);
        }
        v
    }
}

impl ConnSpec {
    /// A connection found in an adopted charon, content unknown (so it differs from any
    /// wanted spec and is reloaded).
    fn placeholder(name: &str) -> ConnSpec {
        ConnSpec {
            name: name.into(),
            lease: String::new(),
            remote: IpAddr::from([0, 0, 0, 0]),
            remote_key: None,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            initiator: false,
            ike: Vec::new(),
            esp: Vec::new(),
            rekey: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_is_exactly_the_two_subnets_and_the_two_keys() {
        let own = PublicKey([1; 32]);
        let peer = PublicKey([2; 32]);
        let spec = ConnSpec {
            name: conn_name("10.244.3.0-24&fd00::-64"),
            lease: "10.244.3.0-24&fd00::-64".into(),
            remote: "198.18.0.3".parse().unwrap(),
            remote_key: Some(peer),
            local_ts: vec!["10.244.1.0/24".parse().unwrap()],
            remote_ts: vec!["10.244.3.0/24".parse().unwrap()],
            initiator: true,
            ike: vec!["aes256gcm16-prfsha256-x25519".into()],
            esp: vec!["aes256gcm16".into()],
            rekey: Some(Duration::from_secs(3600)),
        };
        assert_eq!(spec.name, "ferro-10.244.3.0-24_fd00::-64");
        let m = spec.to_message(&own);
        let c = m.sub(&spec.name).unwrap();
        assert_eq!(c.strs("remote_addrs"), ["198.18.0.3"]);
        assert_eq!(c.str("encap"), Some("yes"));
        assert_eq!(c.str("rekey_time"), Some("3600s"));
        assert_eq!(c.sub("remote").unwrap().str("auth"), Some("pubkey"));
        assert_eq!(c.sub("remote").unwrap().strs("pubkeys"), [public_key_pem(&peer)]);
        assert_eq!(c.sub("local").unwrap().strs("pubkeys"), [public_key_pem(&own)]);
        let child = c.sub("children").unwrap().sub(&spec.name).unwrap();
        assert_eq!(child.strs("local_ts"), ["10.244.1.0/24"]);
        assert_eq!(child.strs("remote_ts"), ["10.244.3.0/24"]);
        assert_eq!(child.str("start_action"), Some("none"));
        // It encodes (fits VICI's limits).
        m.encode().unwrap();
        // PSK peers carry no key.
        let psk = ConnSpec { remote_key: None, ..spec };
        let c = psk.to_message(&own);
        assert_eq!(c.sub(&psk.name).unwrap().sub("remote").unwrap().str("auth"), Some("psk"));
    }

    #[test]
    fn the_pem_is_an_ed25519_subject_public_key_info() {
        // openssl pkey -pubout of an Ed25519 key has this 12-byte prefix (RFC 8410 §10.1).
        let pem = public_key_pem(&PublicKey([0x19; 32]));
        let b64 = pem.lines().nth(1).unwrap();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert_eq!(&der[..12], &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]);
        assert_eq!(der.len(), 44);
    }

    #[test]
    fn sa_listings_give_one_view_per_connection() {
        let child = |state: &str| {
            Message::new()
                .kv("name", "ferro-a")
                .kv("state", state)
                .kv("bytes-in", "100")
                .kv("bytes-out", "50")
                .list("remote-ts", ["10.244.3.0/24"])
        };
        let ike = |state: &str, c: Message| {
            Message::new().section(
                "ferro-a",
                Message::new()
                    .kv("state", state)
                    .kv("established", "7")
                    .section("child-sas", Message::new().section("ferro-a-1", c)),
            )
        };
        let v = parse_sas(&[ike("ESTABLISHED", child("INSTALLED")), ike("CONNECTING", child("CREATED"))]);
        let a = &v["ferro-a"];
        assert!(a.installed);
        assert_eq!(a.ike.as_deref(), Some("ESTABLISHED"));
        assert_eq!((a.bytes_in, a.bytes_out, a.established), (200, 100, Some(7)));
        let v = parse_sas(&[ike("ESTABLISHED", child("REKEYED"))]);
        assert!(!v["ferro-a"].installed);
        assert!(parse_sas(&[Message::new().kv("junk", "x")]).is_empty());
    }
}
