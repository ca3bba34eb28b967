//! Where leases meet the datapath. A backend publishes its data in our lease and makes the
//! kernel match the node's peer set; [`run_backend`] feeds it batches (our own lease, peer
//! events, the end of a full listing, a periodic resync) one at a time, with the current
//! peer set, and reports what is programmed.
//!
//! [`ControlPlaneOnly`] publishes vxlan's lease data without a datapath (`--no-datapath`,
//! for tests and simulations); `crate::vxlan` is the datapath.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use netkernel::probe::EchoTarget;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::attrs::VxlanData;
use crate::lease::OwnLease;
use crate::metrics::Metrics;
use crate::peer::{PeerEvent, PeerSet};
use crate::retry::Backoff;
use crate::subnet::SubnetKey;

/// One batch for the backend.
#[derive(Debug, Clone)]
pub enum BackendEvent {
    /// Our lease, at start and whenever the subnet changes.
    OwnLease(Box<OwnLease>),
    /// Peer changes, in order (the peer set passed along already holds them).
    Peers(Vec<PeerEvent>),
    /// The first full listing of peers has been delivered: entries of nodes not in it may
    /// now be removed.
    Synced,
    /// Periodic: check the datapath against the desired state.
    Resync,
}

/// A backend failure; the daemon logs it and the batch is retried by the next full
/// reconciliation (later issue).
#[derive(Debug, thiserror::Error)]
#[error("backend: {0}")]
pub struct BackendError(pub String);

/// A datapath driver.
#[async_trait]
pub trait Backend: Send + 'static {
    /// `BackendType` published in leases.
    fn backend_type(&self) -> &'static str;
    /// `BackendData` published in our lease.
    fn lease_data(&self) -> Value;
    /// `BackendV6Data`, when dual stack needs it.
    fn lease_v6_data(&self) -> Value {
        Value::Null
    }
    /// Applies one batch, making the datapath match `peers`; must be idempotent. An error
    /// means some of the datapath is not as the leases say: the batch is retried soon.
    async fn apply(&mut self, event: &BackendEvent, peers: &PeerSet) -> Result<(), BackendError>;
    /// Round trips that prove the datapath programmed for `peers`: one per peer and family,
    /// from our end of the overlay to theirs (none for a backend without a datapath).
    fn echo_targets(&self, _peers: &PeerSet) -> Vec<EchoTarget> {
        Vec::new()
    }
    /// What the last batch left, per pod address family (none for a backend without a
    /// datapath).
    fn families(&self) -> Vec<FamilyHealth> {
        Vec::new()
    }
    /// The kernel operations the last batch sent (none for a backend without a datapath).
    fn last_kernel_ops(&self) -> KernelOps {
        KernelOps::default()
    }
}

/// Kernel operations one batch sent: routes, neighbours, FDB entries, addresses, links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelOps {
    /// Sent and acknowledged.
    pub applied: usize,
    /// Refused by the kernel (retried by a later batch).
    pub failed: usize,
}

/// One pod address family of the datapath after the last batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FamilyHealth {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// Peers programmed in this family.
    pub peers: usize,
    /// What failed (empty: everything the leases ask for is programmed).
    pub errors: Vec<String>,
    /// Peers that share no underlay family with this node: unreachable until one of the two
    /// gets an address in the other's family.
    pub no_common_underlay: Vec<String>,
    /// Peers refused by host-gw: their public address is not on this node's L2 network
    /// (no connected prefix of the underlay holds it), so a route via it cannot work.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_on_link: Vec<String>,
}

impl FamilyHealth {
    /// Nothing failed.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// What the backend has done, for readiness and status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatapathReport {
    /// The own lease the datapath is programmed for.
    pub own: Option<SubnetKey>,
    /// The first full peer listing has been applied for `own`, without a failure.
    pub listing_applied: bool,
    /// The round trips that prove it (see [`Backend::echo_targets`]).
    pub echo: Vec<EchoTarget>,
    /// Batches that failed in a row (0 after a success), and the last error.
    pub failing: u32,
    /// The last failure, while `failing > 0`.
    pub last_error: Option<String>,
    /// Each pod family's state: one failing never holds the other back.
    pub families: Vec<FamilyHealth>,
}

impl DatapathReport {
    /// What is wrong, one line per family with a problem (for `/readyz`).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for f in &self.families {
            if !f.errors.is_empty() {
                out.push(format!("{}: {}", f.family, f.errors.join("; ")));
            }
            if !f.no_common_underlay.is_empty() {
                out.push(format!(
                    "{}: no common underlay family with {}",
                    f.family,
                    f.no_common_underlay.join(", ")
                ));
            }
            if !f.not_on_link.is_empty() {
                out.push(format!(
                    "{}: host-gw refuses peers not on this node's L2 network: {}",
                    f.family,
                    f.not_on_link.join(", ")
                ));
            }
        }
        out
    }
}

/// A backend's control plane only: publishes vxlan's `{"VNI":…,"VtepMAC":…}` (or host-gw's
/// nothing) and counts batches.
#[derive(Debug)]
pub struct ControlPlaneOnly {
    kind: &'static str,
    data: Value,
    applied: Arc<AtomicU64>,
}

impl ControlPlaneOnly {
    /// With the VNI from the config and the node's persistent MAC.
    pub fn new(data: VxlanData) -> Self {
        ControlPlaneOnly { kind: "vxlan", data: data.to_value(), applied: Arc::default() }
    }

    /// host-gw's: no backend data (flannel writes null).
    pub fn host_gw() -> Self {
        ControlPlaneOnly { kind: "host-gw", data: Value::Null, applied: Arc::default() }
    }

    /// Batches applied so far (shared counter).
    pub fn applied(&self) -> Arc<AtomicU64> {
        self.applied.clone()
    }
}

#[async_trait]
impl Backend for ControlPlaneOnly {
    fn backend_type(&self) -> &'static str {
        self.kind
    }

    fn lease_data(&self) -> Value {
        self.data.clone()
    }

    async fn apply(&mut self, event: &BackendEvent, _peers: &PeerSet) -> Result<(), BackendError> {
        match event {
            BackendEvent::OwnLease(l) => tracing::info!(subnet = %l.key, "own lease (no datapath yet)"),
            BackendEvent::Peers(evs) => {
                for e in evs {
                    tracing::info!(event = ?e.key(), kind = match e {
                        PeerEvent::Added(_) => "added",
                        PeerEvent::Changed { .. } => "changed",
                        PeerEvent::Removed(_) => "removed",
                    }, "peer (no datapath yet)");
                }
            }
            BackendEvent::Synced | BackendEvent::Resync => {}
        }
        self.applied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// How often the backend checks the datapath even without events.
pub const RESYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The first retry after a failed batch; doubling up to [`RESYNC_EVERY`].
const RETRY_FIRST: Duration = Duration::from_millis(250);

/// Feeds `backend` from `rx` until the channel closes, with a [`BackendEvent::Resync`]
/// every [`RESYNC_EVERY`] in between, and sooner after a failed batch. Reports what is
/// programmed on `report` after every batch.
pub async fn run_backend(
    mut backend: Box<dyn Backend>,
    mut rx: mpsc::Receiver<BackendEvent>,
    peers: watch::Receiver<PeerSet>,
    report: watch::Sender<DatapathReport>,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(RESYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut backoff = Backoff::new(RETRY_FIRST, RESYNC_EVERY);
    let mut retry: Option<tokio::time::Instant> = None;
    let mut synced = false;
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
            _ = tick.tick() => BackendEvent::Resync,
            _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => {
                BackendEvent::Resync
            }
        };
        metrics.inc(&metrics.backend_batches);
        match &ev {
            // A new subnet is a new datapath: readiness starts over for it.
            BackendEvent::OwnLease(l) if report.borrow().own != Some(l.key) => {
                report.send_modify(|r| {
                    r.own = Some(l.key);
                    r.listing_applied = false;
                });
            }
            BackendEvent::Synced => synced = true,
            _ => {}
        }
        let set = peers.borrow().clone();
        let started = std::time::Instant::now();
        let result = backend.apply(&ev, &set).await;
        metrics.observe_reconcile(started.elapsed());
        let ops = backend.last_kernel_ops();
        metrics.kernel_ops(ops.applied, ops.failed);
        let families = backend.families();
        metrics.set_families(&families);
        let degraded = families.iter().any(|f| !f.ok());
        match result {
            Ok(()) => {
                if degraded {
                    // A family failed while another works: the working one counts as applied,
                    // the failed one is retried soon.
                    metrics.inc(&metrics.backend_failures);
                    retry = Some(tokio::time::Instant::now() + backoff.delay());
                } else {
                    retry = None;
                    backoff.reset();
                }
                let echo = backend.echo_targets(&set);
                report.send_if_modified(|r| {
                    let next = DatapathReport {
                        own: r.own,
                        listing_applied: r.own.is_some() && synced,
                        echo,
                        failing: if degraded { r.failing + 1 } else { 0 },
                        last_error: degraded.then(|| {
                            families
                                .iter()
                                .filter(|f| !f.ok())
                                .map(|f| format!("{}: {}", f.family, f.errors.join("; ")))
                                .collect::<Vec<_>>()
                                .join(" | ")
                        }),
                        families,
                    };
                    let changed = *r != next;
                    *r = next;
                    changed
                });
            }
            Err(e) => {
                metrics.inc(&metrics.backend_failures);
                let delay = backoff.delay();
                tracing::error!(error = %e, retry_in = ?delay, "backend failed to apply a batch");
                retry = Some(tokio::time::Instant::now() + delay);
                report.send_modify(|r| {
                    r.failing += 1;
                    r.last_error = Some(e.to_string());
                    r.families = families;
                });
            }
        }
    }
}
