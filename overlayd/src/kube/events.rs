//! Events about Nodes (`kubectl describe node X`, `kubectl get events`): why a Node is not
//! a lease, why its lease is refused, this node's podCIDR waiting or changing. Posted in the
//! background (`events.k8s.io/v1`, namespace `default` as for every Node event), each
//! (Node, reason, message) once, at most [`PER_MINUTE`] a minute: a broken cluster must not
//! turn into an Event storm. A failure to post is logged at debug level and forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter as KubeReporter};
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
        let recorder = Recorder::new(
            client,
            KubeReporter { controller: "overlayd".into(), instance: Some(instance.to_string()) },
        );
        let task = tokio::spawn(async move {
            let mut seen: HashMap<(String, String), String> = HashMap::new();
            let mut window: Vec<Instant> = Vec::new();
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
                let e = Event {
                    type_: if ev.warning { EventType::Warning } else { EventType::Normal },
                    reason: ev.reason.clone(),
                    note: Some(note),
                    action: "Lease".into(),
                    secondary: None,
                };
                let r = ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(ev.node.clone()),
                    uid: (!ev.uid.is_empty()).then(|| ev.uid.clone()),
                    ..Default::default()
                };
                if let Err(e) = recorder.publish(&e, &r).await {
                    tracing::debug!(node = %ev.node, reason = %ev.reason, error = %e, "posting an Event failed");
                }
            }
        });
        (EventSink(Some(tx)), task)
    }
}
