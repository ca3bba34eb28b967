//! What "ready" promises, and the check that makes it true.
//!
//! A node is ready when it holds its lease, has written `subnet.env`, has programmed its
//! datapath for every peer of its first full listing, and each of those peers has answered
//! an ICMP echo sent across the overlay from our end (the first address of our subnet) to
//! theirs. The answer travels back over the peer's route, neighbour and FDB entry for us,
//! so it proves that the peer has programmed us too, which no store acknowledgement could.
//!
//! The promise that follows: a pod created on a ready node reaches every pod of every node
//! that was ready before it, and is reached by them, from its first packet. (Whichever of
//! two nodes took its lease second lists the other and waits for its answer.) A peer that
//! does not answer within the timeout (its node down with the lease still valid, a
//! firewall dropping the overlay's port) does not hold the node back for ever: the node
//! becomes ready without it, names it in `overlayctl status` and counts it in
//! `overlayd_ready_silent_peers`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netkernel::probe::{EchoTarget, echo_all};
use serde::Serialize;
use tokio::sync::watch;

use crate::backend::DatapathReport;
use crate::metrics::Metrics;
use crate::subnet::SubnetKey;

/// How often a silent peer is asked again.
pub const ECHO_INTERVAL: Duration = Duration::from_millis(200);
/// Most silent peers named in the log line.
const NAMED_IN_LOG: usize = 10;

/// The outcome of the check for one own lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confirmation {
    /// The lease the datapath was confirmed for.
    pub own: SubnetKey,
    /// Round trips tried (one per peer and family).
    pub probed: usize,
    /// Peers' addresses that did not answer in time.
    pub silent: Vec<IpAddr>,
    /// How long the check took.
    pub took_ms: u64,
}

/// Watches the backend's reports and confirms each new own lease's datapath once its
/// listing is applied; publishes the outcome on `out` (`None` while unconfirmed).
pub async fn confirm_datapath(
    mut report: watch::Receiver<DatapathReport>,
    out: watch::Sender<Option<Confirmation>>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let r = report.borrow_and_update().clone();
        let confirmed_for = out.borrow().as_ref().map(|c| c.own);
        if confirmed_for.is_some() && confirmed_for != r.own {
            out.send_replace(None);
        }
        let unconfirmed = confirmed_for.is_none() || confirmed_for != r.own;
        if let (Some(own), true, true) = (r.own, r.listing_applied, unconfirmed) {
            let started = Instant::now();
            let targets = r.echo.clone();
            let silent = probe(targets, timeout, &shutdown).await;
            if *shutdown.borrow() {
                return;
            }
            metrics.ready_silent_peers.set(i64::try_from(silent.len()).unwrap_or(i64::MAX));
            let c = Confirmation {
                own,
                probed: r.echo.len(),
                silent,
                took_ms: started.elapsed().as_millis() as u64,
            };
            if c.silent.is_empty() {
                tracing::info!(
                    peers = c.probed,
                    took_ms = c.took_ms,
                    "every peer answered across the overlay"
                );
            } else {
                let named: Vec<String> = c.silent.iter().take(NAMED_IN_LOG).map(|a| a.to_string()).collect();
                tracing::warn!(
                    silent = c.silent.len(),
                    of = c.probed,
                    first = %named.join(", "),
                    "peers did not answer across the overlay in time; ready without them"
                );
            }
            // The lease may have changed while we probed: confirm only what is still current.
            let current = report.borrow().own;
            if current == Some(own) {
                out.send_replace(Some(c));
            }
            continue;
        }
        tokio::select! {
            r = report.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps `ready` true exactly while the subnet the node has adopted is confirmed; tells
/// systemd the first time.
pub async fn follow_ready(
    mut own: watch::Receiver<Option<SubnetKey>>,
    mut confirmed: watch::Receiver<Option<Confirmation>>,
    ready: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut notified = false;
    loop {
        let subnet = *own.borrow_and_update();
        let now = subnet.is_some() && confirmed.borrow_and_update().as_ref().map(|c| c.own) == subnet;
        let was = ready.send_replace(now);
        if now && !was {
            tracing::info!(subnet = ?subnet.map(|s| s.to_string()), "ready");
            if !notified {
                notified = true;
                if let Err(e) = crate::notify::sd_notify("READY=1") {
                    tracing::warn!(error = %e, "sd_notify failed");
                }
            }
        } else if was && !now && subnet.is_some() {
            tracing::info!("not ready: the datapath for the new subnet is being confirmed");
        }
        tokio::select! {
            r = own.changed() => if r.is_err() { return },
            r = confirmed.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// How long one blocking probe call runs before shutdown is looked at again.
const PROBE_SLICE: Duration = Duration::from_millis(500);

/// The addresses of `targets` that did not answer within `timeout`. A probe that cannot
/// run at all (no raw sockets) counts every target as silent: readiness is then not held
/// back by the check. Gives up early (all silent) on shutdown.
async fn probe(targets: Vec<EchoTarget>, timeout: Duration, shutdown: &watch::Receiver<bool>) -> Vec<IpAddr> {
    let end = Instant::now() + timeout;
    let mut silent = targets;
    while !silent.is_empty() && !*shutdown.borrow() {
        let slice = end.saturating_duration_since(Instant::now()).min(PROBE_SLICE);
        if slice.is_zero() {
            break;
        }
        match crate::kernel::blocking(|| echo_all(&silent, ECHO_INTERVAL, slice)) {
            Ok(outcome) => silent = outcome.silent(&silent).copied().collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot probe the peers; ready without confirming them");
                break;
            }
        }
    }
    silent.iter().map(|t| t.dst).collect()
}
