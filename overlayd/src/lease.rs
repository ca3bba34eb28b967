//! The lease manager: acquire, renew and release this node's subnet lease.
//!
//! Acquisition order: the node's own lease (found by node ID), then the subnet it held
//! before (state directory or subnet file), then a random one among the first free
//! subnets. Every write is conditional: create-if-absent for new leases, compare on
//! `mod_revision` for adoption and release, and renewal is a store-lease keep-alive plus
//! an ownership check, never an unconditional put. Two nodes can therefore never hold
//! the same key; overlapping keys of another length are treated as taken.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::attrs::LeaseAttrs;
use crate::config::NetworkConfig;
use crate::identity::Identity;
use crate::metrics::Metrics;
pub use crate::retry::Backoff;
use crate::store::{Cas, Create, KeyValue, LeaseId, Revision, SharedStore, StoreError};
use crate::subnet::{KeyLayout, SubnetKey};

/// Conflicts tolerated in one round before listing again.
const RACES_PER_ROUND: u32 = 16;
/// Rounds before giving up (the caller retries later).
const ROUNDS: u32 = 20;

/// Lease timing and allocation knobs.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Store-lease TTL (default 24 h).
    pub ttl: Duration,
    /// Time between renewals (default TTL / 3, so two renewals may fail before expiry).
    pub renew_every: Duration,
    /// Subnets picked from at random: the first this many free ones (flannel: 100). The
    /// window doubles after each lost race, which spreads a crowd of starting nodes.
    pub free_window: usize,
}

impl LeaseSettings {
    /// Defaults for `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        LeaseSettings { ttl, renew_every: ttl / 3, free_window: 100 }
    }
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self::with_ttl(Duration::from_secs(24 * 3600))
    }
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnLease {
    /// The subnets.
    pub key: SubnetKey,
    /// What was published.
    pub attrs: LeaseAttrs,
    /// `mod_revision` of our last write: the ownership proof.
    pub mod_revision: Revision,
    /// The store lease that keeps it alive.
    pub store_lease: LeaseId,
}

/// Why no lease could be had.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Nothing free.
    #[error("out of subnets: no free subnet between SubnetMin and SubnetMax")]
    OutOfSubnets,
    /// Lost every race (extreme contention); try again later.
    #[error("lost {0} races for a subnet, giving up for now")]
    Contention(u32),
}

/// A change to our own key that the watcher saw: the write's revision, or `None` for a
/// deletion. The keeper compares it with its own last write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnKeyChange {
    /// The key (our subnets).
    pub key: SubnetKey,
    /// `mod_revision` of the write; `None` when deleted.
    pub revision: Option<Revision>,
}

/// What defending our key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Defence {
    /// Untouched: the change was our own write.
    Intact,
    /// Someone else's write was undone; our value is back.
    Restored(Box<OwnLease>),
    /// Another node holds the key now, by a lease it signed (or our store lease is gone):
    /// handled like a lost lease.
    Lost(Option<KeyValue>),
}

/// Outcome of a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, TTL refreshed.
    Renewed,
    /// No longer ours (expired or taken); what the key holds now.
    Lost(Option<KeyValue>),
}

/// Acquires, renews and releases one node's lease.
pub struct LeaseManager {
    store: SharedStore,
    layout: KeyLayout,
    config: NetworkConfig,
    attrs: LeaseAttrs,
    settings: LeaseSettings,
    /// The subnet held last (saved lease, then whatever we held since).
    last: Option<SubnetKey>,
    /// The subnet from the subnet file, tried if `last` is not usable.
    from_subnet_file: Option<SubnetKey>,
    /// Lost races so far (for metrics and the benchmark).
    races: u64,
    /// The node's identity: every value written is signed for its key.
    identity: Option<Arc<Identity>>,
    /// The key the state directory says we held: an unsigned lease with our node ID there
    /// is ours (written before leases were signed).
    trusted_unsigned: Option<SubnetKey>,
    /// Take over a flannel lease (no node ID) with our public IP (migration; off by default:
    /// anyone could plant one).
    adopt_flannel: bool,
}

impl std::fmt::Debug for LeaseManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseManager")
            .field("node_id", &self.attrs.node_id)
            .field("last", &self.last)
            .finish()
    }
}

impl LeaseManager {
    /// A manager publishing `attrs` (whose `node_id` must be set).
    pub fn new(
        store: SharedStore,
        layout: KeyLayout,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        settings: LeaseSettings,
    ) -> Self {
        assert!(attrs.node_id.is_some(), "a lease manager needs a node ID");
        LeaseManager {
            store,
            layout,
            config,
            attrs,
            settings,
            last: None,
            from_subnet_file: None,
            races: 0,
            identity: None,
            trusted_unsigned: None,
            adopt_flannel: false,
        }
    }

    /// The subnets held before: from the state directory (`saved`) and the subnet file.
    pub fn with_previous(mut self, saved: Option<SubnetKey>, subnet_file: Option<SubnetKey>) -> Self {
        self.last = saved;
        self.trusted_unsigned = saved;
        self.from_subnet_file = subnet_file;
        self
    }

    /// Signs every value with `identity`; only leases it signed are this node's.
    pub fn with_identity(mut self, identity: Arc<Identity>) -> Self {
        self.attrs.identity = Some(identity.public_b64());
        self.identity = Some(identity);
        self
    }

    /// Takes over a flannel lease (no node ID) holding our public IP: for migrating a node
    /// from flanneld (`--adopt-flannel-lease`).
    pub fn adopting_flannel(mut self, yes: bool) -> Self {
        self.adopt_flannel = yes;
        self
    }

    /// What we store at `key`: our attributes, signed for that key when we have an identity.
    fn value(&self, key: &SubnetKey) -> (Vec<u8>, LeaseAttrs) {
        let attrs = match &self.identity {
            Some(id) => self.attrs.signed(key, id),
            None => self.attrs.clone(),
        };
        (attrs.to_bytes(), attrs)
    }

    /// The settings.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// The node ID.
    pub fn node_id(&self) -> &str {
        self.attrs.node_id.as_deref().unwrap_or_default()
    }

    /// Races lost so far.
    pub fn races_lost(&self) -> u64 {
        self.races
    }

    /// The layout.
    pub fn layout(&self) -> &KeyLayout {
        &self.layout
    }

    /// Whether `kv` (at `key`) is a lease this node wrote. With an identity: signed by it;
    /// unsigned only where our state directory says we held it (written by an older
    /// version). A key planted with our node ID anywhere else is not ours.
    fn is_ours(&self, key: &SubnetKey, kv: &KeyValue) -> bool {
        let Ok(a) = serde_json::from_slice::<LeaseAttrs>(&kv.value) else { return false };
        if a.node_id.is_none() {
            // Written by flannel, whose identity is the public IP: taken over only when
            // migrating on purpose.
            return self.adopt_flannel && a.public_ip.is_some() && a.public_ip == self.attrs.public_ip;
        }
        if a.node_id != self.attrs.node_id {
            return false;
        }
        match (&self.identity, a.signer(key)) {
            (None, _) => true,
            (Some(me), Ok(Some(signer))) => signer == me.public(),
            (Some(_), Ok(None)) => self.trusted_unsigned == Some(*key),
            (Some(_), Err(_)) => false,
        }
    }

    /// Whether this node may hold `key` under the current config.
    pub fn compatible(&self, key: &SubnetKey) -> bool {
        let fam = |pool: &Option<crate::config::SubnetPool>, net: Option<IpNet>| match (pool, net) {
            (Some(p), Some(n)) => p.allocatable(&n),
            (None, None) => true,
            _ => false,
        };
        fam(&self.config.ipv4, key.ipv4.map(IpNet::V4)) && fam(&self.config.ipv6, key.ipv6.map(IpNet::V6))
    }

    /// Gets a lease: own, previous, or new.
    pub async fn acquire(&mut self) -> Result<OwnLease, LeaseError> {
        let mut races = 0;
        for _ in 0..ROUNDS {
            if let Some(l) = self.try_acquire(&mut races).await? {
                self.last = Some(l.key);
                return Ok(l);
            }
        }
        Err(LeaseError::Contention(races))
    }

    async fn try_acquire(&mut self, races: &mut u32) -> Result<Option<OwnLease>, LeaseError> {
        // 1. Our own lease, found cheaply through the key we last held.
        if let Some(k) = self.last.filter(|k| self.compatible(k))
            && let Some(kv) = self.store.get(&self.layout.lease(&k)).await?
            && self.is_ours(&k, &kv)
            && let Some(l) = self.adopt(k, &kv).await?
        {
            return Ok(Some(l));
        }
        // 1b. Our own lease anywhere (state lost between create and save, config change).
        let listing = self.store.list(&self.layout.subnets()).await?;
        let mut taken: Vec<IpNet> = Vec::new();
        let mut adopted = None;
        for kv in &listing.kvs {
            let Ok(key) = self.layout.parse_lease(&kv.key) else {
                continue;
            };
            if self.is_ours(&key, kv) {
                if adopted.is_none() && self.compatible(&key) {
                    adopted = self.adopt(key, kv).await?;
                    if adopted.is_some() {
                        continue;
                    }
                }
                // A stale or incompatible lease of ours: give it back.
                tracing::info!(subnet = %key, "releasing an old lease of this node");
                if let Cas::Done(_) = self.store.delete(&kv.key, kv.mod_revision).await? {
                    let _ = self.store.revoke(kv.lease).await;
                    continue;
                }
            }
            taken.extend(key.nets());
        }
        if adopted.is_some() {
            return Ok(adopted);
        }
        let store_lease = self.store.grant(self.settings.ttl).await?;
        let created = self.create_new(&mut taken, store_lease, races).await;
        match created {
            Ok(Some(l)) => Ok(Some(l)),
            other => {
                // Not used: give the store lease back rather than leave it to expire.
                let _ = self.store.revoke(store_lease).await;
                other
            }
        }
    }

    async fn create_new(
        &mut self,
        taken: &mut Vec<IpNet>,
        store_lease: LeaseId,
        races: &mut u32,
    ) -> Result<Option<OwnLease>, LeaseError> {
        // 2. The subnet held before, if nobody has (part of) it.
        for prev in [self.last, self.from_subnet_file].into_iter().flatten() {
            let free = prev.nets().all(|n| !taken.iter().any(|t| overlap(t, &n)));
            if self.compatible(&prev) && free {
                match self.create(prev, store_lease).await? {
                    Ok(l) => return Ok(Some(l)),
                    Err(kv) => {
                        *races += 1;
                        self.races += 1;
                        tracing::debug!(subnet = %prev, holder = %String::from_utf8_lossy(&kv.value), "previous subnet taken");
                        taken.extend(prev.nets());
                    }
                }
            }
        }
        // 3. Random among the first free subnets.
        let mut window = self.settings.free_window.max(1);
        for _ in 0..RACES_PER_ROUND {
            let key = self.pick_free(taken, window)?;
            match self.create(key, store_lease).await? {
                Ok(l) => return Ok(Some(l)),
                Err(kv) => {
                    *races += 1;
                    self.races += 1;
                    // What is taken is the holder's subnets (the same key, or an older
                    // dual-stack lease sharing one family).
                    match self.layout.parse_lease(&kv.key) {
                        Ok(k) if k != key => taken.extend(k.nets()),
                        _ => taken.extend(key.nets()),
                    }
                    window = (window * 2).min(1 << 16);
                }
            }
        }
        Ok(None)
    }

    fn pick_free(&self, taken: &[IpNet], window: usize) -> Result<SubnetKey, LeaseError> {
        let pick = |pool: &Option<crate::config::SubnetPool>| -> Result<Option<IpNet>, LeaseError> {
            let Some(p) = pool else { return Ok(None) };
            let free = p.free_subnets(taken, window);
            if free.is_empty() {
                return Err(LeaseError::OutOfSubnets);
            }
            Ok(Some(free[fastrand::usize(..free.len())]))
        };
        let v4 = pick(&self.config.ipv4)?;
        // Dual stack: the IPv6 subnet with the IPv4 one's ordinal when it is free, so that
        // distinct IPv4 subnets mostly mean distinct IPv6 ones (the key guards only the pair).
        let v6 = match (&self.config.ipv4, &self.config.ipv6, v4) {
            (Some(p4), Some(p6), Some(n4)) => match p4.ordinal(&n4).and_then(|i| p6.nth(i)) {
                Some(n6) if !taken.iter().any(|t| overlap(t, &n6)) => Some(n6),
                _ => pick(&self.config.ipv6)?,
            },
            _ => pick(&self.config.ipv6)?,
        };
        Ok(SubnetKey {
            ipv4: v4.and_then(|n| match n {
                IpNet::V4(n) => Some(n),
                IpNet::V6(_) => None,
            }),
            ipv6: v6.and_then(|n| match n {
                IpNet::V6(n) => Some(n),
                IpNet::V4(_) => None,
            }),
        })
    }

    /// Create-if-absent; `Err(kv)` when someone holds the key.
    async fn create(
        &self,
        key: SubnetKey,
        store_lease: LeaseId,
    ) -> Result<Result<OwnLease, KeyValue>, StoreError> {
        let (value, attrs) = self.value(&key);
        match self.store.create(&self.layout.lease(&key), &value, store_lease).await? {
            Create::Created(rev) => {
                if self.config.ipv4.is_some()
                    && self.config.ipv6.is_some()
                    && let Some(older) = self.older_overlap(&key, rev).await?
                {
                    // Back off; the store lease is reused for the next attempt.
                    self.store.delete(&self.layout.lease(&key), rev).await?;
                    tracing::debug!(subnet = %key, older = %older.key, "an older lease holds one of these subnets");
                    return Ok(Err(older));
                }
                tracing::info!(subnet = %key, "acquired a new lease");
                Ok(Ok(OwnLease { key, attrs, mod_revision: rev, store_lease }))
            }
            Create::Exists(kv) => Ok(Err(kv)),
        }
    }

    /// Dual stack: the key protects the (IPv4, IPv6) pair, not each subnet, so after
    /// creating one, look for an older lease (lower create revision) overlapping either
    /// subnet. The oldest keeps it and every younger one backs off: of racing nodes
    /// exactly one stays.
    async fn older_overlap(
        &self,
        key: &SubnetKey,
        created: Revision,
    ) -> Result<Option<KeyValue>, StoreError> {
        let own = self.layout.lease(key);
        let listing = self.store.list(&self.layout.subnets()).await?;
        Ok(listing.kvs.into_iter().find(|kv| {
            kv.key != own
                && kv.create_revision < created
                && self.layout.parse_lease(&kv.key).is_ok_and(|k| k.overlaps(key))
        }))
    }

    /// Takes over our own existing key with a fresh store lease (the configured TTL) and
    /// our current attributes, if it has not changed since `kv` was read.
    async fn adopt(&self, key: SubnetKey, kv: &KeyValue) -> Result<Option<OwnLease>, StoreError> {
        let store_lease = self.store.grant(self.settings.ttl).await?;
        let (value, attrs) = self.value(&key);
        match self.store.update(&kv.key, &value, store_lease, kv.mod_revision).await {
            Ok(Cas::Done(rev)) => {
                if kv.lease != 0 && kv.lease != store_lease {
                    // The old store lease owns nothing now; revoking it is tidiness.
                    let _ = self.store.revoke(kv.lease).await;
                }
                tracing::info!(subnet = %key, "kept this node's existing lease");
                Ok(Some(OwnLease { key, attrs, mod_revision: rev, store_lease }))
            }
            Ok(Cas::Conflict(_)) => {
                let _ = self.store.revoke(store_lease).await;
                Ok(None)
            }
            Err(e) => {
                let _ = self.store.revoke(store_lease).await;
                Err(e)
            }
        }
    }

    /// Changes the `Encryption` value published from now on; [`LeaseManager::republish`]
    /// writes it into a lease already held.
    pub fn set_encryption(&mut self, value: serde_json::Value) {
        self.attrs.encryption = value;
    }

    /// Rewrites our lease with the current attributes, keeping its store lease, if it has
    /// not changed since we last wrote it. `Ok(None)`: it had (the renewal finds out).
    pub async fn republish(&self, lease: &OwnLease) -> Result<Option<OwnLease>, StoreError> {
        let key = self.layout.lease(&lease.key);
        let (value, attrs) = self.value(&lease.key);
        match self.store.update(&key, &value, lease.store_lease, lease.mod_revision).await? {
            Cas::Done(rev) => Ok(Some(OwnLease { mod_revision: rev, attrs, ..lease.clone() })),
            Cas::Conflict(_) => Ok(None),
        }
    }

    /// Someone else wrote or deleted our key while our store lease lives (the watcher saw
    /// it; a legitimate holder can only appear after our store lease expired or we
    /// released). Puts our value back, unless another node holds it by a lease it signed.
    pub async fn defend(&self, lease: &OwnLease) -> Result<Defence, StoreError> {
        let key = self.layout.lease(&lease.key);
        if self.store.keep_alive(lease.store_lease).await?.is_none() {
            return Ok(Defence::Lost(self.store.get(&key).await?));
        }
        let (value, attrs) = self.value(&lease.key);
        let restored = |rev| {
            Defence::Restored(Box::new(OwnLease { mod_revision: rev, attrs: attrs.clone(), ..lease.clone() }))
        };
        match self.store.get(&key).await? {
            Some(kv) if kv.mod_revision == lease.mod_revision => Ok(Defence::Intact),
            // Deleted and created anew by another node (e.g. after someone deleted ours): it
            // took a free key. Overwritten in place (the key has existed since our write) is
            // an attack whoever signed it: put back.
            Some(kv)
                if kv.create_revision > lease.mod_revision && self.held_by_another_node(&lease.key, &kv) =>
            {
                Ok(Defence::Lost(Some(kv)))
            }
            Some(kv) => match self.store.update(&key, &value, lease.store_lease, kv.mod_revision).await? {
                Cas::Done(rev) => Ok(restored(rev)),
                // Written again meanwhile: the watcher reports that write too.
                Cas::Conflict(_) => Ok(Defence::Intact),
            },
            None => match self.store.create(&key, &value, lease.store_lease).await? {
                Create::Created(rev) => Ok(restored(rev)),
                Create::Exists(_) => Ok(Defence::Intact),
            },
        }
    }

    /// Whether `kv` proves another node holds `key`: signed by an identity that is not ours
    /// (without an identity of our own, any other node ID).
    fn held_by_another_node(&self, key: &SubnetKey, kv: &KeyValue) -> bool {
        let Ok(a) = serde_json::from_slice::<LeaseAttrs>(&kv.value) else { return false };
        if a.node_id == self.attrs.node_id {
            return false;
        }
        match &self.identity {
            Some(me) => matches!(a.signer(key), Ok(Some(s)) if s != me.public()),
            None => a.node_id.is_some(),
        }
    }

    /// Refreshes the TTL and checks the key is still ours (same `mod_revision`).
    pub async fn renew(&self, lease: &OwnLease) -> Result<Renewal, StoreError> {
        let key = self.layout.lease(&lease.key);
        if self.store.keep_alive(lease.store_lease).await?.is_none() {
            return Ok(Renewal::Lost(self.store.get(&key).await?));
        }
        match self.store.get(&key).await? {
            Some(kv) if kv.mod_revision == lease.mod_revision => Ok(Renewal::Renewed),
            other => Ok(Renewal::Lost(other)),
        }
    }

    /// After a loss: the same subnet again if it is free (or still ours), else a new one.
    pub async fn reacquire(&mut self, lost: &OwnLease) -> Result<OwnLease, LeaseError> {
        self.last = Some(lost.key);
        self.acquire().await
    }

    /// Deletes the lease (only if still ours) and revokes its store lease.
    pub async fn release(&mut self, lease: &OwnLease) -> Result<(), StoreError> {
        let key = self.layout.lease(&lease.key);
        match self.store.delete(&key, lease.mod_revision).await? {
            Cas::Done(_) | Cas::Conflict(None) => {}
            Cas::Conflict(Some(kv)) if kv.lease == lease.store_lease => {
                // Our own later write whose answer was lost: revoking below deletes it.
            }
            Cas::Conflict(Some(_)) => {
                tracing::warn!(subnet = %lease.key, "lease changed hands before release; leaving it");
            }
        }
        // Safe in every case: the store lease is ours alone, so this deletes nothing of
        // anyone else.
        self.store.revoke(lease.store_lease).await?;
        self.last = None;
        self.from_subnet_file = None;
        tracing::info!(subnet = %lease.key, "lease released");
        Ok(())
    }
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// What the keeper reports about the lease.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeeperStatus {
    /// The lease held (kept through store outages).
    #[serde(skip)]
    pub lease: Option<OwnLease>,
    /// The last store request worked.
    pub store_ok: bool,
    /// The last store error.
    pub last_error: Option<String>,
    /// Successful renewals.
    pub renewals: u64,
    /// When the last renewal succeeded.
    pub last_renewal: Option<SystemTime>,
    /// Times the subnet changed after the first acquisition (datapath changes).
    pub subnet_changes: u64,
    /// The lease was released (`leave`).
    pub released: bool,
}

/// Requests to the keeper.
#[derive(Debug)]
pub enum KeeperCommand {
    /// Release the lease and stop.
    Leave(oneshot::Sender<Result<(), String>>),
    /// Publish this `Encryption` value in our lease (`Null` = none), now if we hold the
    /// lease, else with the lease when we get it.
    SetEncryption(serde_json::Value, oneshot::Sender<Result<(), String>>),
}

/// Runs the lease: acquire (retrying through outages), then renew until shutdown or
/// `leave`. Store errors never drop the lease from the status: the datapath keeps
/// working on what it has while the store is away.
pub async fn run_keeper(
    mut mgr: LeaseManager,
    status: watch::Sender<KeeperStatus>,
    mut cmds: mpsc::Receiver<KeeperCommand>,
    mut own_key: mpsc::Receiver<OwnKeyChange>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut lease = loop {
        tokio::select! {
            r = mgr.acquire() => match r {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(error = %e, "no lease yet");
                    status.send_modify(|s| {
                        s.store_ok = !matches!(e, LeaseError::Store(_));
                        s.last_error = Some(e.to_string());
                    });
                }
            },
            _ = shutdown.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay()) => {}
            _ = shutdown.changed() => return,
        }
    };
    status.send_modify(|s| {
        s.lease = Some(lease.clone());
        s.store_ok = true;
        s.last_error = None;
    });
    backoff.reset();
    let renew_every = mgr.settings().renew_every.max(Duration::from_millis(200));
    let mut next = Instant::now() + renew_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            Some(change) = own_key.recv() => {
                if change.key != lease.key || change.revision == Some(lease.mod_revision) {
                    continue; // our own write, or a key we no longer hold
                }
                match mgr.defend(&lease).await {
                    Ok(Defence::Intact) => continue,
                    Ok(Defence::Restored(l)) => {
                        metrics.inc(&metrics.own_lease_restored);
                        tracing::warn!(subnet = %lease.key, written = ?change.revision, "someone else changed this node's lease; put it back");
                        lease = *l;
                        status.send_modify(|s| s.lease = Some(lease.clone()));
                        continue;
                    }
                    // Lost: the renewal below finds it out and moves on.
                    Ok(Defence::Lost(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "checking our lease after a change; retrying at the renewal");
                        continue;
                    }
                }
            }
            cmd = cmds.recv() => match cmd {
                None => return,
                Some(KeeperCommand::Leave(reply)) => {
                    let r = mgr.release(&lease).await.map_err(|e| e.to_string());
                    if r.is_ok() {
                        status.send_modify(|s| { s.lease = None; s.released = true; });
                    }
                    let _ = reply.send(r);
                    return;
                }
                Some(KeeperCommand::SetEncryption(value, reply)) => {
                    if lease.attrs.encryption == value {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    mgr.set_encryption(value);
                    let r = match mgr.republish(&lease).await {
                        Ok(Some(new)) => {
                            lease = new;
                            status.send_modify(|s| s.lease = Some(lease.clone()));
                            Ok(())
                        }
                        // Changed under us: the renewal below re-acquires with the new value.
                        Ok(None) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    };
                    let _ = reply.send(r);
                }
            },
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        let renewal = mgr.renew(&lease).await;
        metrics.observe_renewal(started.elapsed());
        match renewal {
            Ok(Renewal::Renewed) => {
                metrics.inc(&metrics.renewals);
                backoff.reset();
                status.send_modify(|s| {
                    s.store_ok = true;
                    s.last_error = None;
                    s.renewals += 1;
                    s.last_renewal = Some(SystemTime::now());
                });
                next = Instant::now() + renew_every;
            }
            Ok(Renewal::Lost(cur)) => {
                metrics.inc(&metrics.leases_lost);
                // A hostile value can be large and hold anything: a short, printable excerpt.
                let now =
                    cur.as_ref().map_or_else(|| "nothing".into(), |kv| crate::logsafe::excerpt(&kv.value));
                tracing::warn!(subnet = %lease.key, %now, "lease lost; taking the same subnet again if it is free");
                match mgr.reacquire(&lease).await {
                    Ok(new) => {
                        let moved = new.key != lease.key;
                        if moved {
                            tracing::warn!(old = %lease.key, new = %new.key, "subnet changed");
                        }
                        lease = new;
                        backoff.reset();
                        status.send_modify(|s| {
                            s.lease = Some(lease.clone());
                            s.store_ok = true;
                            s.last_error = None;
                            s.subnet_changes += u64::from(moved);
                        });
                        next = Instant::now() + renew_every;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-acquiring failed; keeping the old lease for now");
                        status.send_modify(|s| {
                            s.store_ok = !matches!(e, LeaseError::Store(_));
                            s.last_error = Some(e.to_string());
                        });
                        next = Instant::now() + backoff.delay();
                    }
                }
            }
            Err(e) => {
                metrics.inc(&metrics.renewal_failures);
                tracing::warn!(error = %e, "renewal failed; lease kept, retrying");
                status.send_modify(|s| {
                    s.store_ok = false;
                    s.last_error = Some(e.to_string());
                });
                next = Instant::now() + backoff.delay().min(renew_every);
            }
        }
    }
}
