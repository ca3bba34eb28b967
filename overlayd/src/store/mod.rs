//! The key-value store behind leases: etcd v3 for clusters, one SQLite file for a single
//! machine. Both offer etcd's model, reduced to what leasing needs: a global revision,
//! store leases with a TTL that own keys, create-if-absent and compare-and-swap on
//! `mod_revision`, and a watch from a revision that reports compaction.

pub mod embedded;
pub mod etcd;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio::sync::mpsc;

/// A store revision (etcd's `Revision`).
pub type Revision = i64;
/// A store lease (etcd's lease ID); 0 = none.
pub type LeaseId = i64;

/// One key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// Full key.
    pub key: String,
    /// Raw value.
    pub value: Vec<u8>,
    /// Revision that created it (0 never happens for a present key).
    pub create_revision: Revision,
    /// Revision of the last write.
    pub mod_revision: Revision,
    /// Store lease attached, 0 if none.
    pub lease: LeaseId,
}

/// A consistent listing.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Keys under the prefix.
    pub kvs: Vec<KeyValue>,
    /// The store revision the listing reflects; watch from `revision + 1`.
    pub revision: Revision,
}

/// Result of create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Create {
    /// Written at this revision.
    Created(Revision),
    /// Someone holds the key.
    Exists(KeyValue),
}

/// Result of a compare-and-swap on `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// Done; the new `mod_revision` for writes, the delete revision for deletes.
    Done(Revision),
    /// The key changed (or vanished) since; what is there now.
    Conflict(Option<KeyValue>),
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Created or overwritten.
    Put(KeyValue),
    /// Deleted (also by lease expiry).
    Delete {
        /// Full key.
        key: String,
        /// Revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key concerned.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What a watch stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchMessage {
    /// Changes, in revision order.
    Events(Vec<WatchEvent>),
    /// Nothing changed under the prefix up to this revision (safe to resume after it).
    Progress(Revision),
    /// The start revision is gone: list again and watch from the listing. The stream ends.
    Compacted(Revision),
}

/// A running watch. It ends (`None`) or yields an error when the connection breaks: the
/// caller watches again from the last revision it saw, plus one.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::Receiver<Result<WatchMessage, StoreError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// A watch fed by `task` through `rx`; the task is aborted when the watch is dropped.
    pub fn new(
        rx: mpsc::Receiver<Result<WatchMessage, StoreError>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Watch { rx, task }
    }

    /// The next message; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<WatchMessage, StoreError>> {
        self.rx.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Store failures. Only `Unavailable` is expected in normal operation (outages, leader
/// changes); callers retry it and never act on the datapath because of it.
#[derive(Debug, thiserror::Error, Clone)]
pub enum StoreError {
    /// The store cannot be reached or has no quorum right now.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the request (permissions, bad request): retrying will not help.
    #[error("store rejected the request: {0}")]
    Rejected(String),
    /// The options name no store, or two (`--store`, `--etcd-endpoints`, `--kube-subnet-mgr`).
    #[error("store options: {0}")]
    Options(String),
    /// Local I/O or database failure (embedded store).
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// One endpoint's state, for `overlayctl health`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EndpointHealth {
    /// URL or file path.
    pub endpoint: String,
    /// Answered.
    pub healthy: bool,
    /// Server version, if it says.
    pub version: Option<String>,
    /// Whether it is the raft leader (etcd).
    pub is_leader: bool,
    /// Its member ID (etcd).
    pub member_id: Option<u64>,
    /// Error text when unhealthy.
    pub error: Option<String>,
}

/// The store as a whole.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StoreHealth {
    /// `etcd` or `embedded`.
    pub kind: String,
    /// A quorum (linearizable) read worked.
    pub healthy: bool,
    /// Current revision, when healthy.
    pub revision: Option<Revision>,
    /// Per endpoint.
    pub endpoints: Vec<EndpointHealth>,
}

/// Requests sent to the store, by kind: the benchmark's unit of cost.
#[derive(Debug, Default)]
pub struct OpCounters {
    /// Lease grants.
    pub grant: AtomicU64,
    /// Lease keep-alives.
    pub keep_alive: AtomicU64,
    /// Lease revocations.
    pub revoke: AtomicU64,
    /// Single-key reads.
    pub get: AtomicU64,
    /// Range reads (one per page).
    pub list: AtomicU64,
    /// Keys returned by range reads.
    pub listed_keys: AtomicU64,
    /// Unconditional puts.
    pub put: AtomicU64,
    /// Transactions (create, CAS update, CAS delete).
    pub txn: AtomicU64,
    /// Watch creations.
    pub watch: AtomicU64,
    /// Events received on watches (not requests: pushed by the store).
    pub watch_events: AtomicU64,
    /// Other requests (compaction, status).
    pub other: AtomicU64,
    /// Requests that failed (each attempt, retried ones included).
    pub errors: AtomicU64,
}

/// A snapshot of [`OpCounters`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct OpCounts {
    /// Lease grants.
    pub grant: u64,
    /// Lease keep-alives.
    pub keep_alive: u64,
    /// Lease revocations.
    pub revoke: u64,
    /// Single-key reads.
    pub get: u64,
    /// Range reads.
    pub list: u64,
    /// Keys returned by range reads.
    pub listed_keys: u64,
    /// Unconditional puts.
    pub put: u64,
    /// Transactions.
    pub txn: u64,
    /// Watch creations.
    pub watch: u64,
    /// Events received.
    pub watch_events: u64,
    /// Other requests.
    pub other: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl OpCounters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough snapshot.
    pub fn snapshot(&self) -> OpCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        OpCounts {
            grant: l(&self.grant),
            keep_alive: l(&self.keep_alive),
            revoke: l(&self.revoke),
            get: l(&self.get),
            list: l(&self.list),
            listed_keys: l(&self.listed_keys),
            put: l(&self.put),
            txn: l(&self.txn),
            watch: l(&self.watch),
            watch_events: l(&self.watch_events),
            other: l(&self.other),
            errors: l(&self.errors),
        }
    }
}

impl OpCounts {
    /// Requests sent (watch events are pushed, not requested).
    pub fn requests(&self) -> u64 {
        self.grant
            + self.keep_alive
            + self.revoke
            + self.get
            + self.list
            + self.put
            + self.txn
            + self.watch
            + self.other
    }

    /// Field-wise difference `self - before`.
    pub fn since(&self, before: &OpCounts) -> OpCounts {
        OpCounts {
            grant: self.grant - before.grant,
            keep_alive: self.keep_alive - before.keep_alive,
            revoke: self.revoke - before.revoke,
            get: self.get - before.get,
            list: self.list - before.list,
            listed_keys: self.listed_keys - before.listed_keys,
            put: self.put - before.put,
            txn: self.txn - before.txn,
            watch: self.watch - before.watch,
            watch_events: self.watch_events - before.watch_events,
            other: self.other - before.other,
            errors: self.errors - before.errors,
        }
    }
}

/// The operations leasing needs. Every method may fail with
/// [`StoreError::Unavailable`]; implementations retry briefly inside (leader changes)
/// before giving up.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `etcd` or `embedded`.
    fn kind(&self) -> &'static str;
    /// Human description (endpoints or path).
    fn describe(&self) -> String;
    /// Request counters.
    fn ops(&self) -> OpCounts;

    /// A new store lease with `ttl` (rounded up to whole seconds, at least 1).
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Refreshes a lease to its full TTL: `Some(ttl)` (zero when the store does not say),
    /// `None` when the lease no longer exists.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError>;
    /// Revokes a lease, deleting the keys it owns. An unknown lease is not an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// One key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key under `prefix`, at one revision.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;
    /// Unconditional write without a lease (the network config).
    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError>;
    /// Writes `key` only if it does not exist, attached to `lease` (0 = none).
    async fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Create, StoreError>;
    /// Overwrites `key` only if its `mod_revision` is still `expect`.
    async fn update(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        expect: Revision,
    ) -> Result<Cas, StoreError>;
    /// Deletes `key` only if its `mod_revision` is still `expect`.
    async fn delete(&self, key: &str, expect: Revision) -> Result<Cas, StoreError>;

    /// Watches `prefix` from revision `from` (inclusive).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError>;
    /// Drops history up to `revision` (tests and operators; etcd usually auto-compacts).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;
    /// Reachability, per endpoint.
    async fn health(&self) -> StoreHealth;
}

/// A shared store.
pub type SharedStore = Arc<dyn Store>;

/// Whole seconds for a TTL, at least one (etcd's unit).
pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    s.clamp(1, i64::MAX as u64) as i64
}
