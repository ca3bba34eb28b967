//! Remote leases as the node's peer set: list, then watch from the listing's revision;
//! resume after a broken stream from the last revision seen; list again and diff when the
//! store says the revision was compacted (flannel's hot loop, #2470). Every value is
//! validated into a typed [`Peer`] once, here; invalid ones are skipped with a warning.
//!
//! The watcher is the one owner of the peer set: after each batch it publishes the new set
//! (built once per batch), then hands the batch's events to the backend, and after a full
//! listing says [`BackendEvent::Synced`] on the same channel, so that never overtakes the
//! listing's events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::backend::BackendEvent;
use crate::config::NetworkConfig;
use crate::lease::OwnKeyChange;
use crate::metrics::Metrics;
use crate::peer::PeerSet;
pub use crate::peer::{Peer, PeerEvent};
use crate::retry::Backoff;
use crate::store::{KeyValue, Revision, SharedStore, StoreError, WatchEvent, WatchMessage};
use crate::subnet::{KeyLayout, SubnetKey};
use crate::validate::{InvalidLease, Validator, Verdict};

/// A lease that passed every check of its own, before it meets the others.
#[derive(Debug, Clone)]
struct Candidate {
    peer: Arc<Peer>,
    create_revision: Revision,
}

/// The known peers and the rules that make them; no I/O, so it is tested directly.
///
/// Each lease is first judged alone (crate::validate), then against the others: of two
/// leases claiming one subnet (in either family) or one tunnel key, the older (lower create
/// revision) keeps it; the newer loses the subnet's routes (it is no peer) or the tunnel to
/// it (its VXLAN entries stay). A hostile writer cannot take over what a node already holds.
#[derive(Debug, Clone)]
pub struct LeaseView {
    validator: Validator,
    layout: KeyLayout,
    own: Option<SubnetKey>,
    candidates: BTreeMap<SubnetKey, Candidate>,
    peers: PeerSet,
    /// Invalid keys and the revision already warned about (one warning per write).
    invalid: HashMap<String, (Revision, String)>,
    /// Candidates that lost a conflict, and why (warned once per reason).
    refused: HashMap<SubnetKey, String>,
    invalid_seen: u64,
}

/// What applying a batch produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Peer events, in order.
    pub events: Vec<PeerEvent>,
    /// Writes seen on our own key: their revision, `None` for a deletion (the lease keeper
    /// tells its own writes from anyone else's).
    pub own_writes: Vec<Option<Revision>>,
}

impl Applied {
    /// Whether our own key was written or deleted.
    pub fn own_touched(&self) -> bool {
        !self.own_writes.is_empty()
    }
}

impl LeaseView {
    /// An empty view.
    pub fn new(validator: Validator, layout: KeyLayout, own: Option<SubnetKey>) -> Self {
        LeaseView {
            validator,
            layout,
            own,
            candidates: BTreeMap::new(),
            peers: PeerSet::default(),
            invalid: HashMap::new(),
            refused: HashMap::new(),
            invalid_seen: 0,
        }
    }

    /// Current peers, as published.
    pub fn peer_set(&self) -> PeerSet {
        self.peers.clone()
    }

    /// Current peers.
    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.peers.values()
    }

    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// No peers.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Invalid keys currently in the store, with the reason (conflicts included).
    pub fn invalid(&self) -> impl Iterator<Item = (String, &str)> {
        self.invalid
            .iter()
            .map(|(k, (_, why))| (k.clone(), why.as_str()))
            .chain(self.refused.iter().map(|(k, why)| (self.layout.lease(k), why.as_str())))
    }

    /// Invalid writes and lost conflicts seen so far.
    pub fn invalid_seen(&self) -> u64 {
        self.invalid_seen
    }

    /// Our own subnet (for the overlap check).
    pub fn own(&self) -> Option<SubnetKey> {
        self.own
    }

    /// Takes the config's live lease rules (`RequireSignedLeases`); true when they changed,
    /// and callers list again so that every lease is judged by the new rules.
    pub fn follow_config(&mut self, config: &NetworkConfig) -> bool {
        let on = config.require_signed_leases;
        if self.validator.config().require_signed_leases == on {
            return false;
        }
        self.validator.set_require_signed_leases(on);
        true
    }

    /// Sets our subnet; callers list again afterwards so that the overlap check is redone.
    pub fn set_own(&mut self, own: Option<SubnetKey>) {
        self.own = own;
    }

    fn judge(&mut self, kv: &KeyValue) -> Option<Result<Candidate, ()>> {
        let verdict = self
            .layout
            .parse_lease(&kv.key)
            .map_err(InvalidLease::from)
            .and_then(|key| self.validator.check_stored(&key, kv, self.own.as_ref()));
        match verdict {
            Ok(Verdict::Peer(peer)) => {
                self.invalid.remove(&kv.key);
                if peer.signed
                    && let (Some(node), Some(identity), Some(pins)) =
                        (&peer.attrs.node_id, peer.identity, self.validator.pins())
                    && let Ok(mut pins) = pins.write()
                {
                    pins.pin(node, identity);
                }
                Some(Ok(Candidate { peer: Arc::new(*peer), create_revision: kv.create_revision }))
            }
            Ok(Verdict::Own(_)) => {
                self.invalid.remove(&kv.key);
                None
            }
            Err(why) => {
                let why = why.to_string();
                if self.invalid.get(&kv.key).map(|(r, _)| *r) != Some(kv.mod_revision) {
                    self.invalid_seen += 1;
                    tracing::warn!(
                        key = %crate::logsafe::excerpt(kv.key.as_bytes()),
                        bytes = kv.value.len(),
                        reason = %why,
                        "ignoring invalid lease"
                    );
                }
                self.invalid.insert(kv.key.clone(), (kv.mod_revision, why));
                Some(Err(()))
            }
        }
    }

    /// Replaces the view with a full listing; returns the difference as events.
    pub fn reset(&mut self, kvs: &[KeyValue]) -> Applied {
        let own_key = self.own.map(|o| self.layout.lease(&o));
        let mut own_writes = vec![None];
        let mut fresh = BTreeMap::new();
        let mut still_invalid = HashMap::new();
        for kv in kvs {
            if own_key.as_deref() == Some(kv.key.as_str()) {
                own_writes = vec![Some(kv.mod_revision)];
            }
            match self.judge(kv) {
                Some(Ok(c)) => {
                    fresh.insert(c.peer.key, c);
                }
                Some(Err(())) => {
                    if let Some(v) = self.invalid.remove(&kv.key) {
                        still_invalid.insert(kv.key.clone(), v);
                    }
                }
                None => {}
            }
        }
        self.invalid = still_invalid;
        self.candidates = fresh;
        let events = self.rebuild();
        Applied { events, own_writes: if self.own.is_some() { own_writes } else { Vec::new() } }
    }

    /// Applies watch events in order.
    pub fn apply(&mut self, evs: &[WatchEvent]) -> Applied {
        let own_key = self.own.map(|o| self.layout.lease(&o));
        let mut out = Applied::default();
        for ev in evs {
            let (key, kv) = match ev {
                WatchEvent::Put(kv) => (&kv.key, Some(kv)),
                WatchEvent::Delete { key, .. } => (key, None),
            };
            if own_key.as_deref() == Some(key.as_str()) {
                out.own_writes.push(kv.map(|kv| kv.mod_revision));
            }
            let now = match kv {
                Some(kv) => match self.judge(kv) {
                    Some(Ok(c)) => Some(c),
                    _ => None,
                },
                None => {
                    self.invalid.remove(key);
                    None
                }
            };
            // Only a canonical key can be a peer (crate::subnet), so this finds it.
            let Ok(subnet) = self.layout.parse_lease(key) else { continue };
            match now {
                Some(c) => {
                    self.candidates.insert(subnet, c);
                }
                None => {
                    self.candidates.remove(&subnet);
                }
            }
        }
        out.events = self.rebuild();
        out
    }

    /// The peer set from the candidates, oldest first taking what it claims; the events
    /// that turn the previous set into it. Peers that did not change keep their shared value.
    fn rebuild(&mut self) -> Vec<PeerEvent> {
        let mut order: Vec<&Candidate> = self.candidates.values().collect();
        order.sort_by_key(|c| (c.create_revision, c.peer.key));
        let mut subnets: HashMap<ipnet::IpNet, SubnetKey> = HashMap::new();
        let mut tunnel_keys: HashMap<[u8; 32], SubnetKey> = HashMap::new();
        let mut fresh: BTreeMap<SubnetKey, Arc<Peer>> = BTreeMap::new();
        let mut refused = HashMap::new();
        for c in order {
            let key = c.peer.key;
            if let Some(older) = c.peer.families().find_map(|f| subnets.get(&f.subnet)) {
                refused.insert(key, InvalidLease::OverlapsOlder(older.to_string()).to_string());
                continue;
            }
            for f in c.peer.families() {
                subnets.insert(f.subnet, key);
            }
            let mut peer = c.peer.clone();
            if let Ok(Some(t)) = &peer.tunnel {
                match tunnel_keys.get(&t.public_key) {
                    Some(older) => {
                        let why =
                            format!("its WireGuard key is already published by {older}, an older lease");
                        refused.insert(key, why.clone());
                        peer = Arc::new(Peer { tunnel: Err(why), ..(*peer).clone() });
                    }
                    None => {
                        tunnel_keys.insert(t.public_key, key);
                    }
                }
            }
            fresh.insert(key, peer);
        }
        for (key, why) in &refused {
            if self.refused.get(key) != Some(why) {
                self.invalid_seen += 1;
                tracing::warn!(lease = %key, reason = %why, "lease refused");
            }
        }
        self.refused = refused;

        let mut events = Vec::new();
        for (k, p) in self.peers.iter() {
            match fresh.get_mut(k) {
                None => events.push(PeerEvent::Removed(p.clone())),
                Some(n) if Arc::ptr_eq(n, p) => {}
                Some(n) if **n == **p => *n = p.clone(),
                Some(n) => events.push(PeerEvent::Changed { old: p.clone(), new: n.clone() }),
            }
        }
        for (k, p) in &fresh {
            if !self.peers.contains_key(k) {
                events.push(PeerEvent::Added(p.clone()));
            }
        }
        self.peers = Arc::new(fresh);
        events
    }
}

/// Drives a [`LeaseView`] from the store.
pub struct Watcher {
    store: SharedStore,
    layout: KeyLayout,
    view: LeaseView,
    /// Last revision fully applied.
    revision: Revision,
    synced: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("revision", &self.revision).field("peers", &self.view.len()).finish()
    }
}

/// Where a watcher publishes, and what it listens to.
#[derive(Debug)]
pub struct WatcherIo {
    /// The peer set, after every batch.
    pub peers: watch::Sender<PeerSet>,
    /// To the backend: batches of peer events (never empty), and `Synced` after each full
    /// listing's events.
    pub events: mpsc::Sender<BackendEvent>,
    /// Our subnet, as the node adopted it.
    pub own: watch::Receiver<Option<SubnetKey>>,
    /// To the lease keeper: every write seen on our own key.
    pub own_key: mpsc::Sender<OwnKeyChange>,
    /// The network config in effect: its `RequireSignedLeases` is followed live.
    pub config: watch::Receiver<Option<NetworkConfig>>,
    /// Becomes true on shutdown.
    pub shutdown: watch::Receiver<bool>,
}

impl Watcher {
    /// A watcher that has not listed yet.
    pub fn new(store: SharedStore, view: LeaseView, metrics: Arc<Metrics>) -> Self {
        let layout = view.layout.clone();
        Watcher { store, layout, view, revision: 0, synced: false, metrics }
    }

    /// The view.
    pub fn view(&self) -> &LeaseView {
        &self.view
    }

    /// The last revision applied.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Whether the first listing is done.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Lists and diffs.
    pub async fn sync(&mut self) -> Result<Applied, StoreError> {
        let listing = self.store.list(&self.layout.subnets()).await?;
        self.metrics.inc(&self.metrics.relists);
        let before = self.view.invalid_seen();
        let applied = self.view.reset(&listing.kvs);
        self.metrics.add(&self.metrics.invalid_leases, self.view.invalid_seen() - before);
        self.revision = listing.revision;
        self.synced = true;
        Ok(applied)
    }

    /// Publishes the set, then the events; false when the backend is gone.
    async fn emit(&self, applied: Applied, io: &WatcherIo) -> bool {
        if let Some(key) = self.view.own() {
            for revision in &applied.own_writes {
                // A full queue already holds a change the keeper will check the key for.
                let _ = io.own_key.try_send(OwnKeyChange { key, revision: *revision });
            }
        }
        if applied.events.is_empty() {
            return true;
        }
        for e in &applied.events {
            let m = &self.metrics;
            m.inc(match e {
                PeerEvent::Added(_) => &m.peers_added,
                PeerEvent::Changed { .. } => &m.peers_changed,
                PeerEvent::Removed(_) => &m.peers_removed,
            });
        }
        io.peers.send_replace(self.view.peer_set());
        io.events.send(BackendEvent::Peers(applied.events)).await.is_ok()
    }

    /// Runs until shutdown (or until the event receiver is gone). May be called again
    /// later: it resumes from the revision it reached.
    pub async fn run(&mut self, io: &mut WatcherIo) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            if *io.shutdown.borrow() {
                return;
            }
            let own = *io.own.borrow_and_update();
            if own != self.view.own() {
                // A new own subnet changes what overlaps it: judge everything again.
                self.view.set_own(own);
                self.synced = false;
            }
            if !self.synced {
                match self.sync().await {
                    Ok(applied) => {
                        // The listing's events first: `Synced` lets the backend remove what
                        // is not in it, so it must never arrive before them (that flushed
                        // the datapath of a restarted daemon).
                        if !self.emit(applied, io).await
                            || io.events.send(BackendEvent::Synced).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listing leases failed; retrying");
                        if !sleep_or_shutdown(backoff.delay(), &mut io.shutdown).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            // The operator's pin changes make every lease's verdict stale.
            let mut pin_changes = match self.view.validator.pins() {
                Some(p) => p.read().unwrap_or_else(|e| e.into_inner()).operator_changes(),
                None => watch::Sender::new(0).subscribe(),
            };
            let mut w = match self.store.watch(&self.layout.subnets(), self.revision + 1).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "watching leases failed; retrying");
                    if !sleep_or_shutdown(backoff.delay(), &mut io.shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            loop {
                tokio::select! {
                    m = w.next() => match m {
                        Some(Ok(WatchMessage::Events(evs))) => {
                            backoff.reset();
                            self.revision = evs.iter().map(|e| e.revision()).max().unwrap_or(self.revision).max(self.revision);
                            let before = self.view.invalid_seen();
                            let applied = self.view.apply(&evs);
                            self.metrics.add(&self.metrics.invalid_leases, self.view.invalid_seen() - before);
                            if !self.emit(applied, io).await {
                                return;
                            }
                        }
                        Some(Ok(WatchMessage::Progress(r))) => {
                            backoff.reset();
                            self.revision = self.revision.max(r);
                        }
                        Some(Ok(WatchMessage::Compacted(c))) => {
                            tracing::warn!(from = self.revision + 1, compacted = c, "watch fell behind a compaction; listing again");
                            self.metrics.inc(&self.metrics.relists_compacted);
                            self.synced = false;
                            break;
                        }
                        Some(Err(e)) => {
                            tracing::info!(error = %e, revision = self.revision, "lease watch broke; resuming");
                            self.metrics.inc(&self.metrics.watch_restarts);
                            break;
                        }
                        None => {
                            self.metrics.inc(&self.metrics.watch_restarts);
                            break;
                        }
                    },
                    r = io.own.changed() => {
                        if r.is_err() { return; }
                        break;
                    }
                    Ok(()) = pin_changes.changed() => {
                        tracing::info!("the operator changed a pinned identity; judging every lease again");
                        self.synced = false;
                        break;
                    }
                    Ok(()) = io.config.changed() => {
                        let config = io.config.borrow_and_update().clone();
                        if let Some(config) = config
                            && self.view.follow_config(&config)
                        {
                            tracing::info!(
                                require_signed_leases = config.require_signed_leases,
                                "the operator changed RequireSignedLeases; judging every lease again"
                            );
                            self.synced = false;
                            break;
                        }
                    }
                    _ = io.shutdown.changed() => return,
                }
            }
            drop(w);
            if !sleep_or_shutdown(backoff.delay(), &mut io.shutdown).await {
                return;
            }
        }
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => !*shutdown.borrow(),
        _ = shutdown.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(own: &str) -> LeaseView {
        let c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap().config;
        LeaseView::new(Validator::new(c, "me"), KeyLayout::new("/p"), Some(SubnetKey::parse(own).unwrap()))
    }

    fn val(node: &str, ip: &str) -> Vec<u8> {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}},"NodeID":"{node}"}}"#
        )
        .into_bytes()
    }

    fn kv(key: &str, value: Vec<u8>, rev: Revision) -> KeyValue {
        KeyValue {
            key: format!("/p/subnets/{key}"),
            value,
            create_revision: rev,
            mod_revision: rev,
            lease: 1,
        }
    }

    fn kinds(a: &Applied) -> Vec<String> {
        a.events
            .iter()
            .map(|e| match e {
                PeerEvent::Added(p) => format!("+{}", p.key),
                PeerEvent::Changed { new, .. } => format!("~{}", new.key),
                PeerEvent::Removed(p) => format!("-{}", p.key),
            })
            .collect()
    }

    #[test]
    fn reset_diffs_and_skips_own_and_invalid() {
        let mut v = view("10.5.1.0-24");
        let a = v.reset(&[
            kv("10.5.1.0-24", val("me", "192.0.2.1"), 2),
            kv("10.5.2.0-24", val("b", "192.0.2.2"), 3),
            kv("10.5.3.0-24", b"garbage".to_vec(), 4),
            kv("10.9.3.0-24", val("c", "192.0.2.3"), 5),
        ]);
        assert_eq!(kinds(&a), ["+10.5.2.0-24"]);
        // The keeper is told the revision it sees on its key (its own write here).
        assert_eq!(a.own_writes, [Some(2)]);
        assert_eq!(v.invalid_seen(), 2);
        // Same listing again: no events, no new warnings.
        let a = v.reset(&[
            kv("10.5.1.0-24", val("me", "192.0.2.1"), 2),
            kv("10.5.2.0-24", val("b", "192.0.2.2"), 3),
            kv("10.5.3.0-24", b"garbage".to_vec(), 4),
        ]);
        assert!(a.events.is_empty());
        assert_eq!(v.invalid_seen(), 2);
        assert_eq!(v.invalid().count(), 1);
        // b changed address, d appeared, own key vanished.
        let a = v.reset(&[
            kv("10.5.2.0-24", val("b", "192.0.2.22"), 7),
            kv("10.5.4.0-24", val("d", "192.0.2.4"), 8),
        ]);
        assert_eq!(kinds(&a), ["~10.5.2.0-24", "+10.5.4.0-24"]);
        assert_eq!(a.own_writes, [None]);
    }

    #[test]
    fn require_signed_leases_followed_live_drops_and_readmits_unsigned_peers() {
        let mut v = view("10.5.1.0-24");
        let listing = [kv("10.5.2.0-24", val("b", "192.0.2.2"), 3)];
        assert_eq!(kinds(&v.reset(&listing)), ["+10.5.2.0-24"]);
        let config = |on: bool| {
            let mut c = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16"}"#).unwrap().config;
            c.require_signed_leases = on;
            c
        };
        assert!(!v.follow_config(&config(false)), "no change: nothing to judge again");
        assert!(v.follow_config(&config(true)));
        // The watcher lists again after a change: the unsigned peer goes, counted.
        assert_eq!(kinds(&v.reset(&listing)), ["-10.5.2.0-24"]);
        assert_eq!(v.invalid_seen(), 1);
        assert!(v.invalid().any(|(_, why)| why.contains("requires signed leases")));
        assert!(v.follow_config(&config(false)));
        assert_eq!(kinds(&v.reset(&listing)), ["+10.5.2.0-24"]);
    }

    #[test]
    fn apply_reports_the_net_change_of_a_batch() {
        let mut v = view("10.5.1.0-24");
        v.reset(&[kv("10.5.2.0-24", val("b", "192.0.2.2"), 3)]);
        let before = v.peer_set();
        let a = v.apply(&[
            // A restart of b rewrites the same attributes: nothing to do, same shared value.
            WatchEvent::Put(kv("10.5.2.0-24", val("b", "192.0.2.2"), 10)),
        ]);
        assert!(a.events.is_empty());
        assert!(Arc::ptr_eq(
            &before[&SubnetKey::parse("10.5.2.0-24").unwrap()],
            &v.peer_set()[&SubnetKey::parse("10.5.2.0-24").unwrap()]
        ));
        let a = v.apply(&[
            WatchEvent::Put(kv("10.5.5.0-24", val("e", "192.0.2.5"), 11)),
            // A valid lease turned invalid in the same batch: no net change.
            WatchEvent::Put(kv("10.5.5.0-24", b"{}".to_vec(), 12)),
            WatchEvent::Delete { key: "/p/subnets/10.5.2.0-24".into(), mod_revision: 13 },
            // Hostile: someone writes over our subnet; the keeper hears of it.
            WatchEvent::Put(kv("10.5.1.0-24", val("x", "192.0.2.9"), 14)),
        ]);
        assert_eq!(kinds(&a), ["-10.5.2.0-24"]);
        assert_eq!(a.own_writes, [Some(14)]);
        assert!(v.is_empty());
    }

    #[test]
    fn the_older_lease_keeps_a_subnet_and_a_tunnel_key() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":64}"#,
        )
        .unwrap()
        .config;
        let mut v = LeaseView::new(Validator::new(c, "me"), KeyLayout::new("/p"), None);
        let dual = |node: &str, ip: &str| {
            format!(
                r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}},"NodeID":"{node}","Encryption":{{"Type":"wireguard","PublicKey":"AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=","Port":51820}}}}"#
            )
            .into_bytes()
        };
        // The victim's lease (older), then a newer one with a fresh IPv4 subnet but the
        // victim's IPv6 subnet, then one copying the victim's tunnel key (all publish it).
        let a = v.reset(&[
            kv("10.5.2.0-24&fd00:0:0:2::-64", dual("victim", "192.0.2.2"), 3),
            kv("10.5.9.0-24&fd00:0:0:2::-64", dual("overlap", "192.0.2.9"), 5),
            kv("10.5.7.0-24&fd00:0:0:7::-64", dual("thief", "192.0.2.7"), 6),
        ]);
        assert_eq!(kinds(&a), ["+10.5.2.0-24&fd00:0:0:2::-64", "+10.5.7.0-24&fd00:0:0:7::-64"]);
        let set = v.peer_set();
        let victim = &set[&SubnetKey::parse("10.5.2.0-24&fd00:0:0:2::-64").unwrap()];
        let thief = &set[&SubnetKey::parse("10.5.7.0-24&fd00:0:0:7::-64").unwrap()];
        assert!(matches!(victim.tunnel, Ok(Some(_))), "the older keeps its tunnel key");
        assert!(thief.tunnel.as_ref().is_err_and(|e| e.contains("older lease")), "{:?}", thief.tunnel);
        assert_eq!(v.invalid().count(), 2);
        // The victim leaves: the overlapping lease is now the only claimant.
        let a = v.apply(&[WatchEvent::Delete {
            key: "/p/subnets/10.5.2.0-24&fd00:0:0:2::-64".into(),
            mod_revision: 9,
        }]);
        let mut k = kinds(&a);
        k.sort();
        assert_eq!(
            k,
            ["+10.5.9.0-24&fd00:0:0:2::-64", "-10.5.2.0-24&fd00:0:0:2::-64", "~10.5.7.0-24&fd00:0:0:7::-64"]
        );
    }

    #[test]
    fn a_key_written_without_a_store_lease_is_no_peer() {
        let mut v = view("10.5.1.0-24");
        let mut forever = kv("10.5.2.0-24", val("b", "192.0.2.2"), 3);
        forever.lease = 0;
        assert!(v.reset(&[forever]).events.is_empty());
        assert!(v.invalid().any(|(_, why)| why.contains("never expire")));
    }
}
