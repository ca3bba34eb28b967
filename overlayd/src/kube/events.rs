//! Events about Nodes (`kubectl describe node X`, `kubectl get events`): why a Node is not
//! a lease, why its lease is refused, this node's podCIDR waiting or changing. Posted in the
//! background (core v1 Events, namespace `default` as for every Node event), each
//! (Node, reason, message) once, at most [`PER_MINUTE`] a minute: a broken cluster must not
//! turn into an Event storm. A failure to post is logged (a warning for the first of a run) and forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::mpsc;

/// Events posted per minute at most.
pub const PER_MINUTE: usize = 30;
/// Longest note (the API's limit is 1 kB).
const MAX_NOTE: usize = 1000;

/// One Event to post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEvent {
    /// The Node's name.
    pub node: String,
    /// Its UID (empty when unknown).
    pub uid: String,
    /// Warning or Normal.
    pub warning: bool,
    /// CamelCase reason.
    pub reason: String,
    /// What happened.
    pub message: String,
}

impl NodeEvent {
    /// A warning.
    pub fn warning(node: &str, uid: &str, reason: &str, message: &str) -> Self {
        NodeEvent {
            node: node.into(),
            uid: uid.into(),
            warning: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A normal event.
    pub fn normal(node: &str, uid: &str, reason: &str, message: &str) -> Self {
        NodeEvent { warning: false, ..Self::warning(node, uid, reason, message) }
    }
}

/// Where Events are sent; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink(Option<mpsc::Sender<NodeEvent>>);

impl EventSink {
    /// A sink that drops everything.
    pub fn disabled() -> Self {
        EventSink(None)
    }

    /// Queues an Event (dropped when the queue is full).
    pub fn post(&self, ev: NodeEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(ev);
        }
    }
}

/// Posts Events as `overlayd` on node `instance`.
pub struct Reporter;

impl Reporter {
    /// The sink and the task posting what it receives.
    pub fn start(client: kube::Client, instance: &str) -> (EventSink, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<NodeEvent>(256);
        // Core v1 Events without eventTime (as the kubelet and flanneld post them): every
        // API server takes those for a cluster-scoped object in `default`; an Event with
        // eventTime (events.k8s.io/v1 style) about a Node must be in kube-system up to 1.2x.
        let api: Api<Event> = Api::namespaced(client, "default");
        let instance = instance.to_string();
        let task = tokio::spawn(async move {
            let mut seen: HashMap<(String, String), String> = HashMap::new();
            let mut window: Vec<Instant> = Vec::new();
            let mut failing = false;
            while let Some(ev) = rx.recv().await {
                let k = (ev.node.clone(), ev.reason.clone());
                if seen.get(&k) == Some(&ev.message) {
                    continue;
                }
                window.retain(|t| t.elapsed() < Duration::from_secs(60));
                if window.len() >= PER_MINUTE {
                    tracing::debug!(node = %ev.node, reason = %ev.reason, "too many Events this minute; not posting");
                    continue;
                }
                window.push(Instant::now());
                seen.insert(k, ev.message.clone());
                if seen.len() > 10_000 {
                    seen.clear();
                }
                let note: String = ev.message.chars().take(MAX_NOTE).collect();
                let now = Timestamp::now();
                let e = Event {
                    metadata: ObjectMeta {
                        name: Some(format!("{}.{:x}", ev.node, now.as_nanosecond())),
                        namespace: Some("default".into()),
                        ..Default::default()
                    },
                    involved_object: ObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Node".into()),
                        name: Some(ev.node.clone()),
                        uid: (!ev.uid.is_empty()).then(|| ev.uid.clone()),
                        ..Default::default()
                    },
                    type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
                    reason: Some(ev.reason.clone()),
                    message: Some(note),
                    action: Some("Lease".into()),
                    count: Some(1),
                    first_timestamp: Some(Time(now)),
                    last_timestamp: Some(Time(now)),
                    reporting_component: Some("overlayd".into()),
                    reporting_instance: Some(instance.clone()),
                    source: Some(EventSource {
                        component: Some("overlayd".into()),
                        host: Some(instance.clone()),
                    }),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &e).await.map(drop) {
                    // The first failure in a row is worth a warning (RBAC, an old server);
                    // the rest would only repeat it.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(node = %ev.node, reason = %ev.reason, error = %e, "posting an Event failed");
                    }
                    Err(e) => {
                        tracing::debug!(node = %ev.node, reason = %ev.reason, error = %e, "posting an Event failed")
                    }
                    Ok(()) => failing = false,
                }
            }
        });
        (EventSink(Some(tx)), task)
    }
}
