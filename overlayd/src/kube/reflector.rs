//! The reflector: one list + watch of every Node for the daemon's life (`kube`'s watcher:
//! list with `resourceVersion=0` from the API server's watch cache, then watch from the
//! list's version with bookmarks; a broken watch resumes from the last version seen; 410
//! Gone lists again). Each change goes into the cache; an outage changes nothing there (the
//! cache keeps what it has, so peers and the datapath stay). Also the network config file's
//! follower.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::cache::{Cache, Notice, Update};
use super::client::ApiCounters;
use super::events::{EventSink, NodeEvent};
use super::nodes::NodeLite;
use super::store::{Connection, lock};
use crate::retry::Backoff;
use crate::store::WatchEvent;
use crate::validate::Validator;

/// Seconds a watch request lasts before the server ends it and it is renewed (the API
/// server caps it with `--min-request-timeout`, 1800 s by default).
pub const WATCH_TIMEOUT: u32 = 1500;

pub(super) struct Reflector {
    pub api: Api<NodeLite>,
    pub cache: Arc<Mutex<Cache>>,
    pub counters: Arc<ApiCounters>,
    pub connection: watch::Sender<Connection>,
    pub own: String,
    pub own_changed: watch::Sender<u64>,
    pub validator: Arc<Mutex<Option<Validator>>>,
    pub events: EventSink,
}

impl Reflector {
    pub(super) async fn run(self) {
        let cfg = watcher::Config::default().any_semantic().timeout(WATCH_TIMEOUT);
        let mut stream = watcher::watcher(self.api.clone(), cfg).boxed();
        let mut init: Option<Vec<NodeLite>> = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut outage: Option<Instant> = None;
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(error = %e, "the Kubernetes API cannot be reached; peers and the datapath stay as they are");
                    } else {
                        tracing::debug!(error = %e, "the Kubernetes API still cannot be reached");
                    }
                    self.connection.send_modify(|c| {
                        c.connected = false;
                        c.last_error = Some(e.to_string());
                    });
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            };
            if let Some(since) = outage.take() {
                tracing::info!(
                    after_ms = since.elapsed().as_millis() as u64,
                    "the Kubernetes API answers again"
                );
            }
            backoff.reset();
            self.connection.send_if_modified(|c| {
                let changed = !c.connected || c.last_error.is_some();
                c.connected = true;
                c.last_error = None;
                changed
            });
            match ev {
                Event::Init => init = Some(Vec::new()),
                Event::InitApply(n) => {
                    ApiCounters::add(&self.counters.listed, 1);
                    init.get_or_insert_with(Vec::new).push(n);
                }
                Event::InitDone => {
                    let nodes = init.take().unwrap_or_default();
                    let n = nodes.len();
                    let (update, own_changed) = {
                        let mut c = lock(&self.cache);
                        let before = c.node(&self.own);
                        let u = c.replace_all(nodes);
                        (u, before != c.node(&self.own))
                    };
                    tracing::info!(nodes = n, leases = lock(&self.cache).leases(), "listed the Nodes");
                    self.after(update, own_changed);
                    self.connection.send_if_modified(|c| !std::mem::replace(&mut c.synced, true));
                }
                Event::Apply(n) => {
                    ApiCounters::add(&self.counters.events, 1);
                    let name = n.name().to_string();
                    let u = lock(&self.cache).apply(&name, Some(n));
                    self.after(u, name == self.own);
                }
                Event::Delete(n) => {
                    ApiCounters::add(&self.counters.events, 1);
                    let name = n.name().to_string();
                    let u = lock(&self.cache).apply(&name, None);
                    self.after(u, name == self.own);
                }
            }
        }
    }

    /// Says what is wrong (every node logs; the reporter of each Node also posts an Event)
    /// and wakes the keeper when our own Node changed.
    fn after(&self, u: Update, own_changed: bool) {
        if own_changed {
            self.own_changed.send_modify(|v| *v += 1);
        }
        let report = |node: &str, c: &Cache| c.reporter_for(node) == self.own;
        for n in &u.notices {
            match n {
                Notice::Problem { node, problem } => {
                    tracing::warn!(node = %node, reason = problem.reason, problem = %problem.message, "Node skipped: it is no lease");
                    let c = lock(&self.cache);
                    if report(node, &c) {
                        let uid = c.node(node).map(|n| n.uid().to_string()).unwrap_or_default();
                        drop(c);
                        self.events.post(NodeEvent::warning(node, &uid, problem.reason, &problem.message));
                    }
                }
                Notice::Cleared { node } => {
                    tracing::info!(node = %node, "Node is a valid lease source again")
                }
            }
        }
        // What the validator will refuse, named by Node, from the one node reporting on it.
        let Some(batch) = u.batch else { return };
        let Some(v) = self.validator.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        for e in &batch.events {
            let WatchEvent::Put(kv) = e else { continue };
            let Some(name) = node_id(&kv.value) else { continue };
            if name == self.own {
                continue;
            }
            let Some(key) = kv.key.rsplit('/').next().and_then(|k| crate::subnet::SubnetKey::parse(k).ok())
            else {
                continue;
            };
            // Every node says it in its log; one posts the Event.
            if let Err(why) = v.check(&key, &kv.value, None) {
                tracing::warn!(node = %name, key = %key, reason = %why, "Node's lease refused");
                let c = lock(&self.cache);
                if report(&name, &c) {
                    let uid = c.node(&name).map(|n| n.uid().to_string()).unwrap_or_default();
                    drop(c);
                    self.events.post(NodeEvent::warning(&name, &uid, "InvalidLease", &why.to_string()));
                }
            }
        }
    }
}

/// `NodeID` of a lease value the cache made (the Node's name).
fn node_id(value: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        #[serde(rename = "NodeID")]
        node_id: Option<String>,
    }
    serde_json::from_slice::<Id>(value).ok()?.node_id
}

/// The network config file's bytes.
pub(super) fn read_config(path: &Path) -> std::io::Result<Vec<u8>> {
    let b = std::fs::read(path);
    if let Err(e) = &b {
        tracing::warn!(file = %path.display(), error = %e, "cannot read the network config (in a pod: the ConfigMap's net-conf.json); waiting for it");
    }
    b
}

/// Reads `path` every `poll` and publishes changes (a ConfigMap update replaces the file).
/// A file that disappears or cannot be read keeps the last config.
pub(super) async fn follow_config_file(path: PathBuf, poll: Duration, cache: Arc<Mutex<Cache>>) {
    let mut failing = false;
    loop {
        tokio::time::sleep(poll).await;
        match tokio::fs::read(&path).await {
            Ok(b) => {
                if failing {
                    tracing::info!(file = %path.display(), "the network config file is readable again");
                }
                failing = false;
                lock(&cache).set_config(Some(b));
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the network config file; keeping the last one");
                }
                failing = true;
            }
        }
    }
}
