//! The daemon's metrics and their Prometheus text exposition (format 0.0.4), through the
//! `prometheus-client` crate: counters, gauges and the two latency histograms (datapath
//! reconciliation, lease renewal).
//!
//! The counters live here for the daemon's life; values owned elsewhere (readiness, the
//! store's request counts, the encryption engine's counters) are read at scrape time into
//! a registry built for that scrape.

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::store::OpCounts;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One label: `(name, value)`.
pub type Label = [(&'static str, &'static str); 1];

/// A set of counters told apart by one label, built at scrape time.
pub type LabelledCounters = Family<Label, Counter>;

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    /// Successful renewals.
    pub renewals: Counter,
    /// Renewals that failed on a store error.
    pub renewal_failures: Counter,
    /// Leases found lost at renewal.
    pub leases_lost: Counter,
    /// Writes by someone else to our own lease key, undone.
    pub own_lease_restored: Counter,
    /// Peers added.
    pub peers_added: Counter,
    /// Peers changed.
    pub peers_changed: Counter,
    /// Peers removed.
    pub peers_removed: Counter,
    /// Invalid leases skipped (counted once per key revision).
    pub invalid_leases: Counter,
    /// Listings of all leases.
    pub relists: Counter,
    /// Listings forced by compaction.
    pub relists_compacted: Counter,
    /// Watches re-established after an error.
    pub watch_restarts: Counter,
    /// Batches handed to the backend.
    pub backend_batches: Counter,
    /// Batches the backend failed to apply (retried).
    pub backend_failures: Counter,
    /// Kernel operations the backend's reconciliations sent, by result.
    pub kernel_ops: LabelledCounters,
    /// Time of one batch in the backend (one reconciliation of the datapath).
    pub reconcile_seconds: Histogram,
    /// Time of one lease renewal against the store, whatever its result.
    pub renew_seconds: Histogram,
    /// Peers that did not answer the readiness probe in time (last probe).
    pub ready_silent_peers: Gauge,
    /// Per pod family (IPv4, IPv6): 1 while the last batch left it failing.
    pub family_failing: [Gauge; 2],
    /// Per pod family: batches that left it failing.
    pub family_failures: [Counter; 2],
    /// Per pod family: peers with no common underlay family (last batch).
    pub family_no_common_underlay: [Gauge; 2],
    /// Per pod family: peers host-gw refuses, not being on this node's L2 network (last batch).
    pub family_not_on_link: [Gauge; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        // Both results from the start: a series that appears only on the first failure
        // cannot be rated or alerted on before it.
        let kernel_ops = labelled("result", &[("applied", 0), ("failed", 0)]);
        Metrics {
            renewals: Counter::default(),
            renewal_failures: Counter::default(),
            leases_lost: Counter::default(),
            own_lease_restored: Counter::default(),
            peers_added: Counter::default(),
            peers_changed: Counter::default(),
            peers_removed: Counter::default(),
            invalid_leases: Counter::default(),
            relists: Counter::default(),
            relists_compacted: Counter::default(),
            watch_restarts: Counter::default(),
            backend_batches: Counter::default(),
            backend_failures: Counter::default(),
            kernel_ops,
            // 0.5 ms .. 16 s: a no-op batch takes well under a millisecond, the first
            // listing of 5,000 peers a few hundred.
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            // 1 ms .. 8 s: one keep-alive or transaction; the store client's own retries
            // end within a few seconds.
            renew_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            ready_silent_peers: Gauge::default(),
            family_failing: Default::default(),
            family_failures: Default::default(),
            family_no_common_underlay: Default::default(),
            family_not_on_link: Default::default(),
        }
    }
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

/// Names of the pod families, in the order of the per-family arrays.
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// A gauge from a count (saturating: a gauge is an i64).
fn gauge_of(n: impl TryInto<i64>) -> ConstGauge {
    ConstGauge::new(n.try_into().unwrap_or(i64::MAX))
}

/// Counters told apart by one label, each with its value.
pub fn labelled(label: &'static str, values: &[(&'static str, u64)]) -> LabelledCounters {
    let family = LabelledCounters::default();
    for (value, n) in values {
        family.get_or_create(&[(label, *value)]).inc_by(*n);
    }
    family
}

impl Metrics {
    /// +1.
    pub fn inc(&self, c: &Counter) {
        c.inc();
    }

    /// +n.
    pub fn add(&self, c: &Counter, n: u64) {
        c.inc_by(n);
    }

    /// Records a batch's kernel operations.
    pub fn kernel_ops(&self, applied: usize, failed: usize) {
        self.kernel_ops.get_or_create(&[("result", "applied")]).inc_by(applied as u64);
        self.kernel_ops.get_or_create(&[("result", "failed")]).inc_by(failed as u64);
    }

    /// Records how long one backend batch took.
    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    /// Records how long one lease renewal took.
    pub fn observe_renewal(&self, took: Duration) {
        self.renew_seconds.observe(took.as_secs_f64());
    }

    /// Records the families' state after a batch.
    pub fn set_families(&self, families: &[crate::backend::FamilyHealth]) {
        for (i, name) in FAMILIES.into_iter().enumerate() {
            let f = families.iter().find(|f| f.family == name);
            let failing = f.is_some_and(|f| !f.ok());
            self.family_failing[i].set(failing as i64);
            if failing {
                self.family_failures[i].inc();
            }
            let none = f.map_or(0, |f| f.no_common_underlay.len());
            self.family_no_common_underlay[i].set(none as i64);
            let far = f.map_or(0, |f| f.not_on_link.len());
            self.family_not_on_link[i].set(far as i64);
        }
    }

    /// Peer events so far (added + changed + removed).
    pub fn peer_events(&self) -> u64 {
        self.peers_added.get() + self.peers_changed.get() + self.peers_removed.get()
    }

    /// Prometheus text format 0.0.4 of the daemon's metrics, `g` and the encryption
    /// controller's `encryption` status.
    pub fn render(&self, g: &Gauges, encryption: &serde_json::Value) -> String {
        let mut r = Registry::default();
        self.register(&mut r, g);
        crate::encryption::register_metrics(&mut r, encryption);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &r);
        out
    }

    fn register(&self, r: &mut Registry, g: &Gauges) {
        let version: Vec<(&str, &str)> =
            vec![("version", env!("CARGO_PKG_VERSION")), ("commit", crate::GIT_COMMIT)];
        r.register(
            "overlayd_build",
            "The running build: version and git commit (always 1)",
            Info::new(version),
        );
        r.register(
            "overlayd_ready",
            "1 once the lease is held, subnet.env written and the peers confirmed reachable",
            gauge_of(g.ready as u8),
        );
        r.register(
            "overlayd_lease_held",
            "1 while this node holds a subnet lease",
            gauge_of(g.has_lease as u8),
        );
        r.register("overlayd_store_up", "1 if the last store request succeeded", gauge_of(g.store_ok as u8));
        r.register("overlayd_peers", "Valid remote leases known", gauge_of(g.peers));
        r.register("overlayd_lease_renewals", "Successful lease renewals", self.renewals.clone());
        r.register(
            "overlayd_lease_renewal_failures",
            "Renewals that failed because the store was unavailable",
            self.renewal_failures.clone(),
        );
        r.register("overlayd_leases_lost", "Renewals that found the lease gone", self.leases_lost.clone());
        r.register(
            "overlayd_own_lease_restored",
            "Writes by someone else to this node's lease key that were undone",
            self.own_lease_restored.clone(),
        );
        r.register(
            "overlayd_lease_renew_duration_seconds",
            "Time of one lease renewal against the store, whatever its result",
            self.renew_seconds.clone(),
        );
        r.register(
            "overlayd_subnet_changes",
            "Times this node's subnet changed after the first lease",
            ConstCounter::new(g.subnet_changes),
        );
        r.register(
            "overlayd_peer_events",
            "Peer events handed to the backend",
            labelled(
                "kind",
                &[
                    ("added", self.peers_added.get()),
                    ("changed", self.peers_changed.get()),
                    ("removed", self.peers_removed.get()),
                ],
            ),
        );
        r.register(
            "overlayd_invalid_leases",
            "Leases skipped as malformed or hostile",
            self.invalid_leases.clone(),
        );
        r.register(
            "overlayd_lease_lists",
            "Full listings of the leases",
            labelled("reason", &[("any", self.relists.get()), ("compacted", self.relists_compacted.get())]),
        );
        r.register(
            "overlayd_watch_restarts",
            "Watches resumed after a broken stream",
            self.watch_restarts.clone(),
        );
        r.register(
            "overlayd_backend_batches",
            "Batches applied to the datapath, and those that failed (retried)",
            labelled(
                "result",
                &[("any", self.backend_batches.get()), ("failed", self.backend_failures.get())],
            ),
        );
        r.register(
            "overlayd_datapath_reconcile_duration_seconds",
            "Time of one batch in the backend: one reconciliation of the datapath with the leases",
            self.reconcile_seconds.clone(),
        );
        r.register(
            "overlayd_datapath_kernel_operations",
            "Kernel operations (routes, neighbours, FDB entries, addresses) the reconciliations sent, by result",
            self.kernel_ops.clone(),
        );
        r.register(
            "overlayd_ready_silent_peers",
            "Peers that did not answer the last readiness probe before its deadline",
            self.ready_silent_peers.clone(),
        );
        let per_family = |gauges: &[Gauge; 2]| {
            let f = Family::<Label, Gauge>::default();
            for (g, name) in gauges.iter().zip(FAMILIES) {
                f.get_or_create(&[("family", name)]).set(g.get());
            }
            f
        };
        r.register(
            "overlayd_datapath_family_failing",
            "1 while the last batch left this pod family's datapath partly unprogrammed",
            per_family(&self.family_failing),
        );
        let failures: Vec<(&str, u64)> =
            FAMILIES.iter().zip(&self.family_failures).map(|(n, c)| (*n, c.get())).collect();
        r.register(
            "overlayd_datapath_family_failures",
            "Batches that left this pod family's datapath partly unprogrammed (retried)",
            labelled("family", &failures),
        );
        r.register(
            "overlayd_datapath_no_common_underlay_peers",
            "Peers this pod family cannot reach: they share no underlay family with this node",
            per_family(&self.family_no_common_underlay),
        );
        r.register(
            "overlayd_datapath_not_on_link_peers",
            "Peers host-gw refuses: their public address is not on this node's L2 network",
            per_family(&self.family_not_on_link),
        );
        let o = &g.ops;
        r.register(
            "overlayd_store_requests",
            "Requests sent to the store, by operation",
            labelled(
                "op",
                &[
                    ("grant", o.grant),
                    ("keep_alive", o.keep_alive),
                    ("revoke", o.revoke),
                    ("get", o.get),
                    ("list", o.list),
                    ("put", o.put),
                    ("txn", o.txn),
                    ("watch", o.watch),
                    ("other", o.other),
                ],
            ),
        );
        r.register(
            "overlayd_store_request_errors",
            "Store requests that failed (each attempt; transient failures are retried)",
            ConstCounter::new(o.errors),
        );
        r.register(
            "overlayd_store_watch_events",
            "Events received on store watches",
            ConstCounter::new(o.watch_events),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples of an exposition: (name with labels, value), comments skipped.
    fn samples(text: &str) -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {l}"));
                let v = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|e| panic!("{l}: {e}")),
                };
                (name.to_string(), v)
            })
            .collect()
    }

    fn value(text: &str, name: &str) -> f64 {
        samples(text).into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name} in\n{text}")).1
    }

    #[test]
    fn exposition_is_well_formed() {
        let m = Metrics::default();
        m.inc(&m.peers_added);
        m.add(&m.peers_removed, 2);
        let text =
            m.render(&Gauges { ready: true, peers: 3, ..Default::default() }, &serde_json::Value::Null);
        assert_eq!(value(&text, "overlayd_ready"), 1.0);
        assert_eq!(value(&text, "overlayd_peers"), 3.0);
        assert_eq!(value(&text, "overlayd_peer_events_total{kind=\"removed\"}"), 2.0);
        assert_eq!(m.peer_events(), 3);
        let info = format!(
            "overlayd_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            crate::GIT_COMMIT
        );
        assert!(text.contains(&info), "{text}");
        // Every sample is one of ours, and every family is declared once with a type.
        let mut types = std::collections::HashSet::new();
        for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = l.split(' ').nth(2).unwrap();
            assert!(types.insert(name.to_string()), "{name} declared twice");
        }
        for (name, _) in samples(&text) {
            assert!(name.starts_with("overlayd_"), "{name}");
            let base = name.split('{').next().unwrap();
            let declared = types.iter().any(|t| {
                base == t || ["_bucket", "_sum", "_count"].iter().any(|s| base.strip_suffix(s) == Some(t))
            });
            assert!(declared, "{name} has no TYPE line");
        }
    }

    #[test]
    fn histograms_count_and_bucket_what_was_observed() {
        let m = Metrics::default();
        for ms in [0.2, 3.0, 3.0, 700.0] {
            m.observe_reconcile(Duration::from_secs_f64(ms / 1000.0));
        }
        m.observe_renewal(Duration::from_millis(12));
        m.kernel_ops(7, 1);
        m.kernel_ops(2, 0);
        let text = m.render(&Gauges::default(), &serde_json::Value::Null);
        let h = "overlayd_datapath_reconcile_duration_seconds";
        assert_eq!(value(&text, &format!("{h}_count")), 4.0);
        let sum = value(&text, &format!("{h}_sum"));
        assert!((sum - 0.7062).abs() < 1e-9, "{sum}");
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"0.0005\"}}")), 1.0, "{text}");
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"0.004\"}}")), 3.0, "{text}");
        assert_eq!(value(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")), 4.0);
        // Buckets are cumulative.
        let buckets: Vec<f64> = samples(&text)
            .into_iter()
            .filter(|(n, _)| n.starts_with(&format!("{h}_bucket")))
            .map(|(_, v)| v)
            .collect();
        assert_eq!(buckets.len(), 17, "16 bounds and +Inf");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(value(&text, "overlayd_lease_renew_duration_seconds_count"), 1.0);
        assert_eq!(value(&text, "overlayd_lease_renew_duration_seconds_bucket{le=\"0.016\"}"), 1.0);
        assert_eq!(value(&text, "overlayd_lease_renew_duration_seconds_bucket{le=\"0.008\"}"), 0.0);
        assert_eq!(value(&text, "overlayd_datapath_kernel_operations_total{result=\"applied\"}"), 9.0);
        assert_eq!(value(&text, "overlayd_datapath_kernel_operations_total{result=\"failed\"}"), 1.0);
    }
}
