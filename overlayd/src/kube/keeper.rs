//! This node's lease in kube mode. The subnet is the Node's podCIDR(s), assigned by
//! kube-controller-manager: nothing to allocate, renew or race for. The keeper
//!
//! - waits, with a clear status (`overlayctl status`, the log, an Event on the Node), while
//!   the Node does not exist, has no podCIDR, or has one that does not fit `net-conf.json`;
//! - adopts the podCIDR as the lease (the same [`KeeperStatus`] the etcd keeper publishes, so
//!   `subnet.env`, the backend, readiness and the API follow it unchanged), and follows a
//!   change of it (a Node deleted and created again with another podCIDR: logged, counted);
//! - publishes the lease as annotations on its own Node (a merge patch through `nodes/status`,
//!   as flannel does, so RBAC needs no `patch` on `nodes`), again whenever someone removes or
//!   changes them, and the admin's `public-ip-overwrite` as its public IP;
//! - sets the Node's `NetworkUnavailable` condition to False once the node is ready;
//! - on `overlayctl leave`, removes its annotations (peers drop it) and stops.
//!
//! Reads come from the reflector's cache; the only requests are these patches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};

use super::annotations::pod_cidr_key;
use super::events::NodeEvent;
use super::nodes::NodeLite;
use super::store::KubeStore;
use crate::attrs::LeaseAttrs;
use crate::config::NetworkConfig;
use crate::identity::Identity;
use crate::lease::{KeeperCommand, KeeperStatus, OwnKeyChange, OwnLease};
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::subnet::SubnetKey;
use crate::validate::Validator;

/// How long a patch that worked is given to come back through the watch before it is sent
/// again.
const ECHO_WAIT: Duration = Duration::from_secs(30);
/// The same waiting message is logged at most this often.
const REPEAT_LOG: Duration = Duration::from_secs(30);

/// The keeper's channels (the same the etcd keeper has, plus readiness).
#[derive(Debug)]
pub struct KeeperIo {
    /// Its status (read by `subnet.env`'s writer, the backend, the API).
    pub status: watch::Sender<KeeperStatus>,
    /// `leave`, encryption publication.
    pub commands: mpsc::Receiver<KeeperCommand>,
    /// The watcher saw our key change.
    pub own_key: mpsc::Receiver<OwnKeyChange>,
    /// The node's readiness (for the NetworkUnavailable condition).
    pub ready: watch::Receiver<bool>,
    /// Stop.
    pub shutdown: watch::Receiver<bool>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// The kube mode lease keeper.
pub struct KubeKeeper {
    store: Arc<KubeStore>,
    config: NetworkConfig,
    attrs: LeaseAttrs,
    identity: Arc<Identity>,
    set_network_unavailable: bool,
}

/// A patch sent, waiting for the watch to show it.
#[derive(Debug)]
struct Pending {
    what: Value,
    rv_before: Option<String>,
    at: Instant,
}

impl Pending {
    /// Whether the patch is still expected back (so it is not sent again yet).
    fn outstanding(&self, what: &Value, node: &NodeLite) -> bool {
        self.what == *what
            && node.metadata.resource_version == self.rv_before
            && self.at.elapsed() < ECHO_WAIT
    }
}

impl KubeKeeper {
    /// A keeper publishing `attrs` (the daemon's lease attributes) for `store`'s node.
    pub fn new(
        store: Arc<KubeStore>,
        config: NetworkConfig,
        attrs: LeaseAttrs,
        identity: Arc<Identity>,
        set_network_unavailable: bool,
    ) -> Self {
        KubeKeeper { store, config, attrs, identity, set_network_unavailable }
    }

    fn api(&self) -> Api<NodeLite> {
        Api::all(self.store.client().clone())
    }

    fn name(&self) -> &str {
        self.store.node_name()
    }

    /// The attributes as published for `key`: the admin's overwrite is this node's public
    /// address, and the whole is signed by this node's identity for that podCIDR (as an etcd
    /// lease is), so that peers that pinned this node keep recognising it.
    fn published(&self, node: &NodeLite, key: &SubnetKey) -> LeaseAttrs {
        let (v4, v6) = self.store.options().annotations.overwrites(node);
        LeaseAttrs {
            public_ip: v4.or(self.attrs.public_ip),
            public_ipv6: v6.or(self.attrs.public_ipv6),
            ..self.attrs.clone()
        }
        .signed(key, &self.identity)
    }

    async fn patch_annotations(&self, annotations: &Map<String, Value>) -> Result<(), String> {
        let p = json!({"metadata": {"annotations": annotations}});
        self.api()
            .patch_status(self.name(), &PatchParams::default(), &Patch::Merge(&p))
            .await
            .map(drop)
            .map_err(|e| format!("patching Node {}'s annotations: {e}", self.name()))
    }

    async fn patch_condition(&self) -> Result<(), String> {
        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ))
        .unwrap_or(Value::Null);
        let p = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "OverlaydIsUp",
            "message": "overlayd is running on this node and its datapath is ready",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        self.api()
            .patch_status(self.name(), &PatchParams::default(), &Patch::Strategic(&p))
            .await
            .map(drop)
            .map_err(|e| format!("setting Node {}'s NetworkUnavailable condition: {e}", self.name()))
    }

    /// Runs until shutdown or `leave`.
    pub async fn run(mut self, mut io: KeeperIo) {
        let mut own_changed = self.store.own_changed.clone();
        let mut connection = self.store.connection.clone();
        let mut lease: Option<OwnLease> = None;
        let mut annotations_pending: Option<Pending> = None;
        let mut condition_pending: Option<Pending> = None;
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut retry_at: Option<Instant> = None;
        let mut said: Option<(String, Instant)> = None;
        let validator = Validator::new(self.config.clone(), self.name().to_string());
        loop {
            let conn = self.store.connection();
            let node = self.store.own_node();
            // 1. The lease: the podCIDR, when it is usable.
            let waiting: Option<(&'static str, String)> = match (&node, conn.synced) {
                (_, false) => Some((
                    "",
                    format!(
                        "waiting for the first Node listing from the API server{}",
                        conn.last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                    ),
                )),
                (None, true) => Some((
                    "",
                    format!(
                        "Node {} is not in the API (is NODE_NAME / --kube-node-name right?); waiting for it",
                        self.name()
                    ),
                )),
                (Some(n), true) => match pod_cidr_key(&n.pod_cidrs) {
                    Err(e) => Some((
                        "InvalidPodCIDR",
                        format!("Node {}: {e}; waiting for a usable podCIDR", self.name()),
                    )),
                    Ok(None) => Some((
                        "WaitingForPodCIDR",
                        format!(
                            "Node {} has no podCIDR yet (kube-controller-manager --allocate-node-cidrs assigns it); waiting",
                            self.name()
                        ),
                    )),
                    Ok(Some(k)) => match validator.check_subnets(&k) {
                        Err(why) => Some((
                            "PodCIDRMismatch",
                            format!(
                                "Node {}'s podCIDR {k} does not fit net-conf.json: {why} (Network and SubnetLen must match kube-controller-manager's --cluster-cidr and --node-cidr-mask-size); waiting",
                                self.name()
                            ),
                        )),
                        Ok(()) => {
                            self.adopt(k, n, &mut lease, &io);
                            None
                        }
                    },
                },
            };
            match &waiting {
                Some((reason, msg)) => {
                    let repeat = said.as_ref().is_some_and(|(m, t)| m == msg && t.elapsed() < REPEAT_LOG);
                    if !repeat {
                        match &lease {
                            Some(l) => tracing::warn!(subnet = %l.key, "{msg} (keeping the subnet held)"),
                            // The first listing takes a moment: not worth a warning.
                            None if !conn.synced && conn.last_error.is_none() => tracing::info!("{msg}"),
                            None => tracing::warn!("{msg}"),
                        }
                        if said.as_ref().is_none_or(|(m, _)| m != msg)
                            && !reason.is_empty()
                            && let Some(n) = &node
                        {
                            self.store.events.post(NodeEvent::warning(self.name(), n.uid(), reason, msg));
                        }
                        said = Some((msg.clone(), Instant::now()));
                    }
                    io.status.send_if_modified(|s| {
                        let before = (s.store_ok, s.last_error.clone());
                        s.store_ok = conn.connected;
                        s.last_error = Some(msg.clone());
                        before != (s.store_ok, s.last_error.clone())
                    });
                }
                None => {
                    said = None;
                    io.status.send_if_modified(|s| {
                        let changed = s.store_ok != conn.connected || s.last_error.is_some();
                        s.store_ok = conn.connected;
                        s.last_error = None;
                        changed
                    });
                }
            }
            // 2. Our annotations and the condition, while we hold the lease.
            if let (Some(n), Some(l), None) = (&node, &lease, &waiting)
                && retry_at.is_none_or(|t| Instant::now() >= t)
            {
                let wanted = self.store.options().annotations.publish(&self.published(n, &l.key));
                let annotations_ok = self.store.options().annotations.carries(n, &wanted);
                let wanted_v = Value::Object(wanted.clone());
                if !annotations_ok
                    && !annotations_pending.as_ref().is_some_and(|p| p.outstanding(&wanted_v, n))
                {
                    match self.patch_annotations(&wanted).await {
                        Ok(()) => {
                            tracing::info!(node = %self.name(), "published this node's lease in its Node's annotations");
                            annotations_pending = Some(Pending {
                                what: wanted_v,
                                rv_before: n.metadata.resource_version.clone(),
                                at: Instant::now(),
                            });
                            backoff.reset();
                            retry_at = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "publishing the lease failed; retrying");
                            retry_at = Some(Instant::now() + backoff.delay());
                            io.status.send_modify(|s| s.last_error = Some(e));
                        }
                    }
                }
                let ready = *io.ready.borrow();
                let done = n.network_unavailable.as_deref() == Some("False");
                let cond = json!("NetworkUnavailable=False");
                if self.set_network_unavailable
                    && ready
                    && annotations_ok
                    && !done
                    && !condition_pending.as_ref().is_some_and(|p| p.outstanding(&cond, n))
                    && retry_at.is_none()
                {
                    match self.patch_condition().await {
                        Ok(()) => {
                            tracing::info!(node = %self.name(), "set the Node's NetworkUnavailable condition to False");
                            condition_pending = Some(Pending {
                                what: cond,
                                rv_before: n.metadata.resource_version.clone(),
                                at: Instant::now(),
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "setting NetworkUnavailable failed; retrying");
                            retry_at = Some(Instant::now() + backoff.delay());
                        }
                    }
                }
            }
            // 3. Wait for something to change.
            let retry = retry_at.map(|t| tokio::time::sleep_until(t.into()));
            let echo = (annotations_pending.is_some() || condition_pending.is_some())
                .then(|| tokio::time::sleep(ECHO_WAIT));
            tokio::select! {
                r = own_changed.changed() => if r.is_err() { return },
                r = connection.changed() => if r.is_err() { return },
                r = io.ready.changed() => if r.is_err() { return },
                Some(_) = io.own_key.recv() => {}
                _ = async { retry.unwrap().await }, if retry_at.is_some() => { retry_at = None; }
                _ = async { echo.unwrap().await }, if annotations_pending.is_some() || condition_pending.is_some() => {
                    annotations_pending = None;
                    condition_pending = None;
                }
                cmd = io.commands.recv() => match cmd {
                    None => return,
                    Some(KeeperCommand::Leave(reply)) => {
                        let r = self.patch_annotations(&self.store.options().annotations.withdraw()).await;
                        if r.is_ok() {
                            tracing::info!(node = %self.name(), "withdrew this node's annotations: peers drop it");
                            io.status.send_modify(|s| { s.lease = None; s.released = true; });
                        }
                        let _ = reply.send(r);
                        return;
                    }
                    Some(KeeperCommand::SetEncryption(value, reply)) => {
                        if self.attrs.encryption == value {
                            let _ = reply.send(Ok(()));
                            continue;
                        }
                        self.attrs.encryption = value;
                        let r = match (&lease, self.store.own_node()) {
                            (Some(l), Some(n)) => {
                                let attrs = self.published(&n, &l.key);
                                let wanted = self.store.options().annotations.publish(&attrs);
                                let r = self.patch_annotations(&wanted).await;
                                if r.is_ok() {
                                    let new = OwnLease { attrs, ..l.clone() };
                                    lease = Some(new.clone());
                                    io.status.send_modify(|s| s.lease = Some(new));
                                    annotations_pending = Some(Pending {
                                        what: Value::Object(wanted),
                                        rv_before: n.metadata.resource_version.clone(),
                                        at: Instant::now(),
                                    });
                                }
                                r
                            }
                            // Published with the lease once there is one.
                            _ => Ok(()),
                        };
                        let _ = reply.send(r);
                    }
                },
                _ = io.shutdown.changed() => return,
            }
        }
    }

    /// Holds `key` as the lease (a podCIDR seen for the first time, or changed).
    fn adopt(&self, key: SubnetKey, node: &NodeLite, lease: &mut Option<OwnLease>, io: &KeeperIo) {
        let attrs = self.published(node, &key);
        if let Some(l) = lease.as_ref()
            && l.key == key
        {
            if l.attrs != attrs {
                let new = OwnLease { attrs, ..l.clone() };
                *lease = Some(new.clone());
                io.status.send_modify(|s| s.lease = Some(new));
            }
            return;
        }
        let moved = lease.as_ref().map(|l| l.key);
        if let Some(old) = moved {
            let msg = format!(
                "Node {}'s podCIDR changed from {old} to {key} (the Node was created again): the node moves to the new subnet; pods with addresses of the old one must be recreated",
                self.name()
            );
            tracing::warn!("{msg}");
            io.metrics.inc(&io.metrics.leases_lost);
            self.store.events.post(NodeEvent::warning(self.name(), node.uid(), "PodCIDRChanged", &msg));
        } else {
            tracing::info!(subnet = %key, node = %self.name(), "the Node's podCIDR is this node's subnet");
        }
        let revision = self.store.current_revision();
        let new = OwnLease { key, attrs, mod_revision: revision, store_lease: 0 };
        *lease = Some(new.clone());
        io.status.send_modify(|s| {
            s.lease = Some(new);
            s.subnet_changes += u64::from(moved.is_some());
        });
    }
}
