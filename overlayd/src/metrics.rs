//! Counters and their Prometheus text exposition (written by hand: a dozen counters do
//! not justify a metrics framework).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::OpCounts;

/// The daemon's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful renewals.
    pub renewals: AtomicU64,
    /// Renewals that failed on a store error.
    pub renewal_failures: AtomicU64,
    /// Leases found lost at renewal.
    pub leases_lost: AtomicU64,
    /// Writes by someone else to our own lease key, undone.
    pub own_lease_restored: AtomicU64,
    /// Peers added.
    pub peers_added: AtomicU64,
    /// Peers changed.
    pub peers_changed: AtomicU64,
    /// Peers removed.
    pub peers_removed: AtomicU64,
    /// Invalid leases skipped (counted once per key revision).
    pub invalid_leases: AtomicU64,
    /// Listings of all leases.
    pub relists: AtomicU64,
    /// Listings forced by compaction.
    pub relists_compacted: AtomicU64,
    /// Watches re-established after an error.
    pub watch_restarts: AtomicU64,
    /// Batches handed to the backend.
    pub backend_batches: AtomicU64,
    /// Batches the backend failed to apply (retried).
    pub backend_failures: AtomicU64,
    /// Peers that did not answer the readiness probe in time (last probe).
    pub ready_silent_peers: AtomicU64,
    /// Per pod family (IPv4, IPv6): 1 while the last batch left it failing.
    pub family_failing: [AtomicU64; 2],
    /// Per pod family: batches that left it failing.
    pub family_failures: [AtomicU64; 2],
    /// Per pod family: peers with no common underlay family (last batch).
    pub family_no_common_underlay: [AtomicU64; 2],
    /// Per pod family: peers host-gw refuses, not being on this node's L2 network (last batch).
    pub family_not_on_link: [AtomicU64; 2],
}

/// Values that are read from elsewhere at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Ready.
    pub ready: bool,
    /// Holding a lease.
    pub has_lease: bool,
    /// Last store request worked.
    pub store_ok: bool,
    /// Current peers.
    pub peers: usize,
    /// Subnet changes after the first acquisition.
    pub subnet_changes: u64,
    /// Store request counters.
    pub ops: OpCounts,
}

impl Metrics {
    /// +1.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// +n.
    pub fn add(&self, c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the families' state after a batch.
    pub fn set_families(&self, families: &[crate::backend::FamilyHealth]) {
        for (i, name) in ["ipv4", "ipv6"].into_iter().enumerate() {
            let f = families.iter().find(|f| f.family == name);
            let failing = f.is_some_and(|f| !f.ok());
            self.family_failing[i].store(failing as u64, Ordering::Relaxed);
            if failing {
                self.inc(&self.family_failures[i]);
            }
            let none = f.map_or(0, |f| f.no_common_underlay.len() as u64);
            self.family_no_common_underlay[i].store(none, Ordering::Relaxed);
            let far = f.map_or(0, |f| f.not_on_link.len() as u64);
            self.family_not_on_link[i].store(far, Ordering::Relaxed);
        }
    }

    /// Peer events so far (added + changed + removed).
    pub fn peer_events(&self) -> u64 {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        l(&self.peers_added) + l(&self.peers_changed) + l(&self.peers_removed)
    }

    /// Prometheus text format 0.0.4.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP overlayd_build_info The running build: version and git commit (always 1).\n\
             # TYPE overlayd_build_info gauge\n\
             overlayd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        metric(
            "overlayd_ready",
            "gauge",
            "1 once the lease is held, subnet.env written and the peers confirmed reachable.",
            &[("", g.ready as u64)],
        );
        metric(
            "overlayd_lease_held",
            "gauge",
            "1 while this node holds a subnet lease.",
            &[("", g.has_lease as u64)],
        );
        metric(
            "overlayd_store_up",
            "gauge",
            "1 if the last store request succeeded.",
            &[("", g.store_ok as u64)],
        );
        metric("overlayd_peers", "gauge", "Valid remote leases known.", &[("", g.peers as u64)]);
        metric(
            "overlayd_lease_renewals_total",
            "counter",
            "Successful lease renewals.",
            &[("", l(&self.renewals))],
        );
        metric(
            "overlayd_lease_renewal_failures_total",
            "counter",
            "Renewals that failed because the store was unavailable.",
            &[("", l(&self.renewal_failures))],
        );
        metric(
            "overlayd_leases_lost_total",
            "counter",
            "Renewals that found the lease gone.",
            &[("", l(&self.leases_lost))],
        );
        metric(
            "overlayd_own_lease_restored_total",
            "counter",
            "Writes by someone else to this node's lease key that were undone.",
            &[("", l(&self.own_lease_restored))],
        );
        metric(
            "overlayd_subnet_changes_total",
            "counter",
            "Times this node's subnet changed after the first lease.",
            &[("", g.subnet_changes)],
        );
        metric(
            "overlayd_peer_events_total",
            "counter",
            "Peer events handed to the backend.",
            &[
                ("{kind=\"added\"}", l(&self.peers_added)),
                ("{kind=\"changed\"}", l(&self.peers_changed)),
                ("{kind=\"removed\"}", l(&self.peers_removed)),
            ],
        );
        metric(
            "overlayd_invalid_leases_total",
            "counter",
            "Leases skipped as malformed or hostile.",
            &[("", l(&self.invalid_leases))],
        );
        metric(
            "overlayd_lease_lists_total",
            "counter",
            "Full listings of the leases.",
            &[("{reason=\"any\"}", l(&self.relists)), ("{reason=\"compacted\"}", l(&self.relists_compacted))],
        );
        metric(
            "overlayd_watch_restarts_total",
            "counter",
            "Watches resumed after a broken stream.",
            &[("", l(&self.watch_restarts))],
        );
        metric(
            "overlayd_backend_batches_total",
            "counter",
            "Batches applied to the datapath, and those that failed (retried).",
            &[
                ("{result=\"any\"}", l(&self.backend_batches)),
                ("{result=\"failed\"}", l(&self.backend_failures)),
            ],
        );
        metric(
            "overlayd_ready_silent_peers",
            "gauge",
            "Peers that did not answer the last readiness probe before its deadline.",
            &[("", l(&self.ready_silent_peers))],
        );
        let fam = |c: &[AtomicU64; 2]| [("{family=\"ipv4\"}", l(&c[0])), ("{family=\"ipv6\"}", l(&c[1]))];
        metric(
            "overlayd_datapath_family_failing",
            "gauge",
            "1 while the last batch left this pod family's datapath partly unprogrammed.",
            &fam(&self.family_failing),
        );
        metric(
            "overlayd_datapath_family_failures_total",
            "counter",
            "Batches that left this pod family's datapath partly unprogrammed (retried).",
            &fam(&self.family_failures),
        );
        metric(
            "overlayd_datapath_no_common_underlay_peers",
            "gauge",
            "Peers this pod family cannot reach: they share no underlay family with this node.",
            &fam(&self.family_no_common_underlay),
        );
        metric(
            "overlayd_datapath_not_on_link_peers",
            "gauge",
            "Peers host-gw refuses: their public address is not on this node's L2 network.",
            &fam(&self.family_not_on_link),
        );
        let o = &g.ops;
        metric(
            "overlayd_store_requests_total",
            "counter",
            "Requests sent to the store, by operation.",
            &[
                ("{op=\"grant\"}", o.grant),
                ("{op=\"keep_alive\"}", o.keep_alive),
                ("{op=\"revoke\"}", o.revoke),
                ("{op=\"get\"}", o.get),
                ("{op=\"list\"}", o.list),
                ("{op=\"put\"}", o.put),
                ("{op=\"txn\"}", o.txn),
                ("{op=\"watch\"}", o.watch),
                ("{op=\"other\"}", o.other),
            ],
        );
        metric(
            "overlayd_store_watch_events_total",
            "counter",
            "Events received on store watches.",
            &[("", o.watch_events)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::default();
        m.inc(&m.peers_added);
        m.add(&m.peers_removed, 2);
        let text = m.render(&Gauges { ready: true, peers: 3, ..Default::default() });
        assert!(text.contains("overlayd_ready 1\n"), "{text}");
        assert!(text.contains("overlayd_peers 3\n"));
        assert!(text.contains("overlayd_peer_events_total{kind=\"removed\"} 2\n"));
        assert_eq!(m.peer_events(), 3);
        let info = format!(
            "overlayd_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        assert!(text.contains(&info), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("overlayd_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
