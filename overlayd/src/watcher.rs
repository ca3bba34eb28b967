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

use tokio::sync::{Notify, mpsc, watch};

use crate::backend::BackendEvent;
use crate::metrics::Metrics;
use crate::peer::PeerSet;
pub use crate::peer::{Peer, PeerEvent};
use crate::retry::Backoff;
use crate::store::{KeyValue, Revision, SharedStore, StoreError, WatchEvent, WatchMessage};
use crate::subnet::{KeyLayout, SubnetKey};
use crate::validate::{InvalidLease, Validator, Verdict};

/// The known peers and the diffing rules; no I/O, so it is tested directly.
#[derive(Debug, Clone)]
pub struct LeaseView {
    validator: Validator,
    layout: KeyLayout,
    own: Option<SubnetKey>,
    peers: PeerSet,
    /// Invalid keys and the revision already warned about (one warning per write).
    invalid: HashMap<String, (Revision, String)>,
    invalid_seen: u64,
}

/// What applying a batch produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Peer events, in order.
    pub events: Vec<PeerEvent>,
    /// Someone else deleted or overwrote our own key.
    pub own_touched: bool,
}

impl LeaseView {
    /// An empty view.
    pub fn new(validator: Validator, layout: KeyLayout, own: Option<SubnetKey>) -> Self {
        LeaseView {
            validator,
            layout,
            own,
            peers: PeerSet::default(),
            invalid: HashMap::new(),
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

    /// Invalid keys currently in the store, with the reason.
    pub fn invalid(&self) -> impl Iterator<Item = (&String, &str)> {
        self.invalid.iter().map(|(k, (_, why))| (k, why.as_str()))
    }

    /// Invalid writes seen so far.
    pub fn invalid_seen(&self) -> u64 {
        self.invalid_seen
    }

    /// Our own subnet (for the overlap check).
    pub fn own(&self) -> Option<SubnetKey> {
        self.own
    }

    /// Sets our subnet; callers list again afterwards so that the overlap check is redone.
    pub fn set_own(&mut self, own: Option<SubnetKey>) {
        self.own = own;
    }

    fn judge(&mut self, kv: &KeyValue) -> Option<Result<Peer, ()>> {
        let verdict = self
            .layout
            .parse_lease(&kv.key)
            .map_err(InvalidLease::from)
            .and_then(|key| self.validator.check(&key, &kv.value, self.own.as_ref()));
        match verdict {
            Ok(Verdict::Peer(peer)) => {
                self.invalid.remove(&kv.key);
                Some(Ok(*peer))
            }
            Ok(Verdict::Own(_)) => {
                self.invalid.remove(&kv.key);
                None
            }
            Err(why) => {
                let why = why.to_string();
                if self.invalid.get(&kv.key).map(|(r, _)| *r) != Some(kv.mod_revision) {
                    self.invalid_seen += 1;
                    tracing::warn!(key = %kv.key.chars().take(200).collect::<String>(), reason = %why, "ignoring invalid lease");
                }
                self.invalid.insert(kv.key.clone(), (kv.mod_revision, why));
                Some(Err(()))
            }
        }
    }

    fn touches_own(&self, key: &str, kv: Option<&KeyValue>) -> bool {
        let Some(own) = self.own else { return false };
        if key != self.layout.lease(&own) {
            return false;
        }
        match kv {
            None => true,
            Some(kv) => !matches!(self.validator.check(&own, &kv.value, None), Ok(Verdict::Own(_))),
        }
    }

    /// Replaces the view with a full listing; returns the difference as events.
    pub fn reset(&mut self, kvs: &[KeyValue]) -> Applied {
        let mut fresh: BTreeMap<SubnetKey, Arc<Peer>> = BTreeMap::new();
        let mut still_invalid = HashMap::new();
        let mut own_present = false;
        for kv in kvs {
            if let Some(own) = self.own
                && kv.key == self.layout.lease(&own)
            {
                own_present = !self.touches_own(&kv.key, Some(kv));
            }
            match self.judge(kv) {
                Some(Ok(p)) => {
                    // An unchanged peer keeps its shared value: readers can tell by pointer.
                    let p = match self.peers.get(&p.key) {
                        Some(old) if **old == p => old.clone(),
                        _ => Arc::new(p),
                    };
                    fresh.insert(p.key, p);
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
        let mut events = Vec::new();
        for (k, p) in self.peers.iter() {
            match fresh.get(k) {
                None => events.push(PeerEvent::Removed(p.clone())),
                Some(n) if !Arc::ptr_eq(n, p) => {
                    events.push(PeerEvent::Changed { old: p.clone(), new: n.clone() })
                }
                Some(_) => {}
            }
        }
        for (k, p) in &fresh {
            if !self.peers.contains_key(k) {
                events.push(PeerEvent::Added(p.clone()));
            }
        }
        self.peers = Arc::new(fresh);
        Applied { events, own_touched: self.own.is_some() && !own_present }
    }

    /// Applies watch events in order.
    pub fn apply(&mut self, evs: &[WatchEvent]) -> Applied {
        let mut out = Applied::default();
        for ev in evs {
            let (key, kv) = match ev {
                WatchEvent::Put(kv) => (&kv.key, Some(kv)),
                WatchEvent::Delete { key, .. } => (key, None),
            };
            out.own_touched |= self.touches_own(key, kv);
            let now = match kv {
                Some(kv) => match self.judge(kv) {
                    Some(Ok(p)) => Some(p),
                    _ => None,
                },
                None => {
                    self.invalid.remove(key);
                    None
                }
            };
            // Only a canonical key can be a peer (crate::subnet), so this finds it.
            let Ok(subnet) = self.layout.parse_lease(key) else { continue };
            let peers = Arc::make_mut(&mut self.peers);
            match (peers.remove(&subnet), now) {
                (None, Some(p)) => {
                    let p = Arc::new(p);
                    peers.insert(subnet, p.clone());
                    out.events.push(PeerEvent::Added(p));
                }
                (Some(old), Some(p)) => {
                    // A rewrite with the same attributes (a peer restarting) is no event.
                    if *old == p {
                        peers.insert(subnet, old);
                    } else {
                        let p = Arc::new(p);
                        peers.insert(subnet, p.clone());
                        out.events.push(PeerEvent::Changed { old, new: p });
                    }
                }
                (Some(old), None) => out.events.push(PeerEvent::Removed(old)),
                (None, None) => {}
            }
        }
        out
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
    /// Poked when our own key was deleted or overwritten by someone else.
    pub own_touched: Arc<Notify>,
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
        if applied.own_touched {
            io.own_touched.notify_one();
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
    use crate::config::NetworkConfig;

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
        assert!(!a.own_touched);
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
        assert!(a.own_touched);
    }

    #[test]
    fn apply_puts_deletes_and_rewrites() {
        let mut v = view("10.5.1.0-24");
        v.reset(&[kv("10.5.2.0-24", val("b", "192.0.2.2"), 3)]);
        let a = v.apply(&[
            // A restart of b rewrites the same attributes: nothing to do.
            WatchEvent::Put(kv("10.5.2.0-24", val("b", "192.0.2.2"), 10)),
            WatchEvent::Put(kv("10.5.5.0-24", val("e", "192.0.2.5"), 11)),
            // A valid lease turned invalid is a removal.
            WatchEvent::Put(kv("10.5.5.0-24", b"{}".to_vec(), 12)),
            WatchEvent::Delete { key: "/p/subnets/10.5.2.0-24".into(), mod_revision: 13 },
            // Hostile: someone writes over our subnet.
            WatchEvent::Put(kv("10.5.1.0-24", val("x", "192.0.2.9"), 14)),
        ]);
        assert_eq!(kinds(&a), ["+10.5.5.0-24", "-10.5.5.0-24", "-10.5.2.0-24"]);
        assert!(a.own_touched);
        assert!(v.is_empty());
        // Our own writes do not count as touched.
        let a = v.apply(&[WatchEvent::Put(kv("10.5.1.0-24", val("me", "192.0.2.1"), 15))]);
        assert!(!a.own_touched && a.events.is_empty());
    }
}
