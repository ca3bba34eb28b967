//! The Kubernetes API behind the [`Store`] trait. Reads and watches are served from the
//! cache the reflector keeps (no request per read); writes are refused: a lease here is a
//! Node object, written only by this node's keeper ([`super::keeper`]) with patches of its
//! own Node, and the network config is the ConfigMap's file.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use kube::Api;
use tokio::sync::{broadcast, mpsc, watch};

use super::KubeOptions;
use super::cache::{Batch, Cache};
use super::client::{ApiCounters, ApiCounts};
use super::events::{EventSink, Reporter};
use super::nodes::NodeLite;
use crate::store::{
    Cas, Create, EndpointHealth, KeyValue, LeaseId, Listing, OpCounts, Revision, Store, StoreError,
    StoreHealth, Watch, WatchMessage,
};
use crate::subnet::KeyLayout;
use crate::validate::Validator;

/// How long a first listing is waited for before a read says the store is unavailable.
const FIRST_SYNC: Duration = Duration::from_secs(10);

/// The reflector's connection, as the keeper and the API report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    /// A full listing has been applied at least once.
    pub synced: bool,
    /// The last request (list or watch) worked.
    pub connected: bool,
    /// The last error.
    pub last_error: Option<String>,
}

/// The store. Cheap to share (`Arc`).
pub struct KubeStore {
    pub(super) opts: KubeOptions,
    pub(super) layout: KeyLayout,
    pub(super) client: kube::Client,
    pub(super) cache: Arc<Mutex<Cache>>,
    pub(super) counters: Arc<ApiCounters>,
    pub(super) connection: watch::Receiver<Connection>,
    /// Bumped whenever this node's own Node object changes.
    pub(super) own_changed: watch::Receiver<u64>,
    pub(super) validator: Arc<Mutex<Option<Validator>>>,
    pub(super) events: EventSink,
    url: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore").field("url", &self.url).field("node", &self.opts.node_name).finish()
    }
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeStore {
    /// Builds the client and starts the reflector and the config file follower (inside the
    /// current runtime). Fails only on configuration errors: an unreachable API server is
    /// retried by the reflector.
    pub async fn open(opts: KubeOptions) -> Result<Arc<KubeStore>, StoreError> {
        let config = super::client::config(&opts.client).await.map_err(StoreError::Rejected)?;
        let url = config.cluster_url.to_string();
        let counters = Arc::new(ApiCounters::default());
        let client = super::client::client(config, counters.clone()).map_err(StoreError::Rejected)?;
        let layout = KeyLayout::new(&opts.prefix);
        let cache =
            Arc::new(Mutex::new(Cache::new(layout.clone(), opts.annotations.clone(), &opts.node_name)));
        let (conn_tx, connection) = watch::channel(Connection::default());
        let (own_tx, own_changed) = watch::channel(0);
        let validator = Arc::new(Mutex::new(None));
        let (events, event_task) = if opts.events {
            let (sink, task) = Reporter::start(client.clone(), &opts.node_name);
            (sink, Some(task))
        } else {
            (EventSink::disabled(), None)
        };
        // The config is there before anyone asks (the daemon reads it right away).
        let first = super::reflector::read_config(&opts.net_config_file);
        lock(&cache).set_config(first.ok());
        let mut tasks = vec![tokio::spawn(super::reflector::follow_config_file(
            opts.net_config_file.clone(),
            opts.config_poll,
            cache.clone(),
        ))];
        tasks.push(tokio::spawn(
            super::reflector::Reflector {
                api: Api::<NodeLite>::all(client.clone()),
                cache: cache.clone(),
                counters: counters.clone(),
                connection: conn_tx,
                own: opts.node_name.clone(),
                own_changed: own_tx,
                validator: validator.clone(),
                events: events.clone(),
            }
            .run(),
        ));
        tasks.extend(event_task);
        tracing::info!(api = %url, node = %opts.node_name, config = %opts.net_config_file.display(), "kube subnet manager");
        Ok(Arc::new(KubeStore {
            opts,
            layout,
            client,
            cache,
            counters,
            connection,
            own_changed,
            validator,
            events,
            url,
            tasks,
        }))
    }

    /// This node's Node name.
    pub fn node_name(&self) -> &str {
        &self.opts.node_name
    }

    /// This node's own Node as last seen.
    pub fn own_node(&self) -> Option<Arc<NodeLite>> {
        lock(&self.cache).node(&self.opts.node_name)
    }

    /// The cache's revision.
    pub fn current_revision(&self) -> Revision {
        lock(&self.cache).revision()
    }

    /// The options.
    pub fn options(&self) -> &KubeOptions {
        &self.opts
    }

    /// Requests and bytes sent to the API server so far.
    pub fn api_counts(&self) -> ApiCounts {
        self.counters.snapshot()
    }

    /// The reflector's connection.
    pub fn connection(&self) -> Connection {
        self.connection.borrow().clone()
    }

    /// Waits for the first full listing (`false` on timeout).
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut c = self.connection.clone();
        tokio::time::timeout(timeout, c.wait_for(|c| c.synced)).await.is_ok_and(|r| r.is_ok())
    }

    /// Leases currently shown (valid or not as the validator will judge them).
    pub fn leases(&self) -> usize {
        lock(&self.cache).leases()
    }

    /// Nodes known.
    pub fn nodes(&self) -> usize {
        lock(&self.cache).len()
    }

    /// Managed Nodes that are no lease, and why.
    pub fn problems(&self) -> Vec<(String, String)> {
        lock(&self.cache)
            .problems()
            .iter()
            .map(|(n, p)| (n.clone(), format!("{}: {}", p.reason, p.message)))
            .collect()
    }

    /// The validator the daemon judges leases with: the reflector uses it to say, in the log
    /// and in an Event, why a Node's lease is refused (for the Nodes this node reports on).
    pub fn set_validator(&self, v: Validator) {
        *self.validator.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
    }

    /// The API client (the keeper patches through it).
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn rejected(&self, what: &str) -> StoreError {
        StoreError::Rejected(format!(
            "{what}: in kube mode leases are Node objects and the network config is {} (the ConfigMap); edit those",
            self.opts.net_config_file.display()
        ))
    }
}

pub(super) fn lock(c: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Store for KubeStore {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn describe(&self) -> String {
        format!(
            "kubernetes {} (node {}, network config {})",
            self.url,
            self.opts.node_name,
            self.opts.net_config_file.display()
        )
    }

    fn ops(&self) -> OpCounts {
        let a = self.counters.snapshot();
        OpCounts {
            get: a.get,
            list: a.list,
            listed_keys: a.listed,
            put: a.patch,
            watch: a.watch,
            watch_events: a.events,
            other: a.post + a.other,
            errors: a.errors,
            ..Default::default()
        }
    }

    async fn grant(&self, _ttl: Duration) -> Result<LeaseId, StoreError> {
        Err(self.rejected("grant"))
    }

    async fn keep_alive(&self, _lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        Err(self.rejected("keep-alive"))
    }

    async fn revoke(&self, _lease: LeaseId) -> Result<(), StoreError> {
        Err(self.rejected("revoke"))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(lock(&self.cache).get(key))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        if prefix.starts_with(&self.layout.subnets()) && !self.wait_synced(FIRST_SYNC).await {
            let why = self.connection().last_error.unwrap_or_else(|| "no answer yet".into());
            return Err(StoreError::Unavailable(format!("no Node listing from the API server yet: {why}")));
        }
        Ok(lock(&self.cache).list(prefix))
    }

    async fn put(&self, key: &str, _value: &[u8]) -> Result<Revision, StoreError> {
        Err(self.rejected(&format!("writing {key}")))
    }

    async fn create(&self, key: &str, _value: &[u8], _lease: LeaseId) -> Result<Create, StoreError> {
        // `--net-config-file` "seeds" a store that has a config: say it is there.
        match lock(&self.cache).get(key) {
            Some(kv) if key == self.layout.config() => Ok(Create::Exists(kv)),
            _ => Err(self.rejected(&format!("creating {key}"))),
        }
    }

    async fn update(
        &self,
        key: &str,
        _value: &[u8],
        _lease: LeaseId,
        _expect: Revision,
    ) -> Result<Cas, StoreError> {
        Err(self.rejected(&format!("writing {key}")))
    }

    async fn delete(&self, key: &str, _expect: Revision) -> Result<Cas, StoreError> {
        Err(self.rejected(&format!("deleting {key}")))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        let sub = lock(&self.cache).subscribe(prefix, from);
        let (tx, rx) = mpsc::channel(64);
        let (backlog, mut brx) = match sub {
            Ok(s) => s,
            Err(compacted) => {
                let task = tokio::spawn(async move {
                    let _ = tx.send(Ok(WatchMessage::Compacted(compacted))).await;
                });
                return Ok(Watch::new(rx, task));
            }
        };
        let prefix = prefix.to_string();
        let task = tokio::spawn(async move {
            if !backlog.is_empty() && tx.send(Ok(WatchMessage::Events(backlog))).await.is_err() {
                return;
            }
            loop {
                let b: Arc<Batch> = match brx.recv().await {
                    Ok(b) => b,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Ok(WatchMessage::Compacted(from))).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if b.revision < from {
                    continue;
                }
                let evs: Vec<_> = b.events.iter().filter(|e| e.key().starts_with(&prefix)).cloned().collect();
                let msg = if evs.is_empty() {
                    WatchMessage::Progress(b.revision)
                } else {
                    WatchMessage::Events(evs)
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, _revision: Revision) -> Result<(), StoreError> {
        Ok(())
    }

    async fn health(&self) -> StoreHealth {
        let v = self.client.apiserver_version().await;
        let conn = self.connection();
        let (healthy, version, error) = match v {
            Ok(i) => (true, Some(i.git_version), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        StoreHealth {
            kind: "kubernetes".into(),
            healthy: healthy && conn.synced,
            revision: Some(lock(&self.cache).revision()),
            endpoints: vec![EndpointHealth {
                endpoint: self.url.clone(),
                healthy,
                version,
                is_leader: false,
                member_id: None,
                error: error.or(conn.last_error),
            }],
        }
    }
}
