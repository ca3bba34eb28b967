//! The chaos soak: a cluster of nodes on a 3-member etcd (or the embedded store), a probe
//! matrix between every pair of pods, pods and nodes coming and going, and faults injected
//! one at a time at random (seeded); then the invariants, checked with `ip`, `bridge`, `nft`
//! and the IPAM directories, and a report per fault kind with PASS/FAIL targets.
//!
//! - [`probes`]: the UDP echo matrix and the TCP counter connections;
//! - [`churn`]: pods added and deleted through the runtime, nodes leaving and joining;
//! - [`faults`]: what is done to the cluster;
//! - [`invariants`]: what must hold whatever was done;
//! - [`report`]: the figures and the verdicts.
//!
//! `ferrocni-soak` (the binary) and `tests/soak.rs` (a short run in CI) drive [`run`].

pub mod churn;
pub mod faults;
pub mod invariants;
pub mod probes;
pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cni_spec::runtime::Attach;

pub use self::faults::FaultKind;
use self::invariants::{Gone, IpLedger, NodeFacts, PodFacts};
use self::probes::{Collector, Prober, Targets};
use crate::TestNs;
use crate::cluster::{Cluster, ClusterOptions, StoreKind, wait_for};

/// How to run the soak.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// How long faults and churn go on (set-up and the final checks come on top).
    pub duration: Duration,
    /// Nodes at the start.
    pub nodes: usize,
    /// Long-lived pods per node (churn adds short-lived ones).
    pub pods_per_node: usize,
    /// The store.
    pub store: StoreKind,
    /// The seed of every random choice.
    pub seed: u64,
    /// The kinds of fault to inject (those that do not apply to the store are dropped).
    pub faults: Vec<FaultKind>,
    /// Where the binaries are (overlayd, overlayctl, the plugins, cnictl).
    pub bin_dir: PathBuf,
    /// How long the whole store is down in a store outage.
    pub outage: Duration,
    /// Pause between two faults: at least, at most.
    pub gap: (Duration, Duration),
    /// Pod ADD/DEL storms in the background.
    pub churn: bool,
    /// Inject [`SoakOptions::faults`] once each, in that order, then stop (a smoke run);
    /// otherwise rounds of every kind in an order drawn from the seed until the duration.
    pub ordered: bool,
    /// Progress lines on stderr.
    pub verbose: bool,
    /// Copy every daemon's and etcd member's log here before the teardown.
    pub logs: Option<PathBuf>,
    /// Set to stop early (SIGINT): the soak then checks and tears down as at its end.
    pub stop: Arc<AtomicBool>,
}

impl SoakOptions {
    /// The defaults of `ferrocni-soak`: 10 minutes, 6 nodes, 2 pods each, etcd, every fault.
    pub fn new(bin_dir: impl Into<PathBuf>) -> Self {
        SoakOptions {
            duration: Duration::from_secs(600),
            nodes: 6,
            pods_per_node: 2,
            store: StoreKind::Etcd,
            seed: 0,
            faults: FaultKind::ALL.to_vec(),
            bin_dir: bin_dir.into(),
            outage: Duration::from_secs(30),
            gap: (Duration::from_secs(3), Duration::from_secs(8)),
            churn: true,
            ordered: false,
            verbose: true,
            logs: None,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// One fault (or node leave/join) and the time until the cluster was whole again.
#[derive(Debug, Clone)]
pub struct Phase {
    /// The kind, as the report names it (`overlayd kill -9`, `encryption rotate`, …).
    pub kind: String,
    /// Ids of the nodes the fault was done to (empty: none, e.g. the store).
    pub touch: Vec<usize>,
    /// A daemon restart (the loss target applies).
    pub restart: bool,
    /// Encryption was on when it began.
    pub encrypted: bool,
    /// Soak clock at the start.
    pub start: Duration,
    /// Soak clock when every daemon was ready and no probe had been lost for 2 s.
    pub end: Duration,
    /// What was done.
    pub detail: String,
    /// The fault could not be done as meant.
    pub error: Option<String>,
    /// The cluster was whole again within the limit.
    pub recovered: bool,
}

/// A datapath comparison around a store outage.
#[derive(Debug, Clone)]
pub struct SnapshotCheck {
    /// Soak clock.
    pub at: Duration,
    /// Nodes compared.
    pub nodes: usize,
    /// Lines that changed, per node (empty: identical).
    pub diffs: Vec<String>,
}

/// What happened to ADDs and DELs.
#[derive(Debug, Default, Clone)]
pub struct ChurnStats {
    /// ADDs that succeeded.
    pub adds: u64,
    /// ADDs that failed, by CNI error code (11: the daemon did not answer).
    pub add_failures: BTreeMap<u32, u64>,
    /// The last message of each failing code.
    pub add_failure_examples: BTreeMap<u32, String>,
    /// DELs with the netns present.
    pub dels: u64,
    /// DELs after the netns was gone.
    pub dels_netns_gone: u64,
    /// DELs that failed (each a possible leak).
    pub del_failures: Vec<String>,
    /// ADDs run concurrently on a fresh node.
    pub fresh_node_adds: u64,
    /// Plugins killed in the middle of an ADD (then DEL).
    pub killed_adds: u64,
    /// Nodes that left.
    pub leaves: u64,
    /// Nodes that joined.
    pub joins: u64,
}

/// A pod of the soak.
#[derive(Debug)]
pub struct SoakPod {
    /// Soak-wide number, never reused.
    pub uid: u64,
    /// Node id.
    pub node: usize,
    /// Its namespace (None once deleted before DEL).
    pub ns: Option<TestNs>,
    /// The attachment.
    pub attach: Attach,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Host end of its veth.
    pub host_veth: Option<String>,
    /// Its prober.
    pub prober: Option<Prober>,
    /// Long-lived (not churned).
    pub base: bool,
}

/// The soak's shared state.
pub struct Soak {
    /// The options.
    pub opts: SoakOptions,
    /// The cluster (read: ADD/DEL, daemons; write: nodes and etcd members change).
    pub cluster: RwLock<Cluster>,
    /// Live pods by uid.
    pub pods: Mutex<BTreeMap<u64, SoakPod>>,
    /// Who is probed.
    pub targets: Arc<Targets>,
    /// What the probers saw.
    pub collector: Arc<Collector>,
    /// Every address handed out.
    pub ledger: Mutex<IpLedger>,
    /// What is gone.
    pub gone: Mutex<Gone>,
    /// Faults so far.
    pub phases: Mutex<Vec<Phase>>,
    /// Store outage comparisons.
    pub snapshots: Mutex<Vec<SnapshotCheck>>,
    /// ADD/DEL figures.
    pub churn: Mutex<ChurnStats>,
    /// Problems noticed along the way (each also a FAIL of its invariant when relevant).
    pub problems: Mutex<Vec<String>>,
    /// Nodes leaving (no ADD may start there), by id.
    pub leaving: Mutex<HashSet<usize>>,
    /// ADDs in flight per node id.
    pub inflight: Mutex<HashMap<usize, usize>>,
    /// Encryption is on.
    pub encrypted: AtomicBool,
    next_uid: AtomicU64,
    timeline: Mutex<Vec<String>>,
}

impl Soak {
    /// A progress line (stderr when verbose, and the report's timeline).
    pub fn say(&self, msg: impl AsRef<str>) {
        let line = format!("[{:>6.1}s] {}", self.collector.now().as_secs_f64(), msg.as_ref());
        if self.opts.verbose {
            eprintln!("{line}");
        }
        self.timeline.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    /// Notes a problem.
    pub fn problem(&self, msg: impl Into<String>) {
        let msg = msg.into();
        self.say(format!("PROBLEM: {msg}"));
        self.problems.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
    }

    fn uid(&self) -> u64 {
        self.next_uid.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether to stop early.
    pub fn stopping(&self) -> bool {
        self.opts.stop.load(Ordering::Relaxed)
    }

    /// The cluster, shared.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Cluster> {
        self.cluster.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster, exclusively.
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cluster> {
        self.cluster.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps `d`, or less when stopping.
    pub fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end && !self.stopping() {
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
        }
    }

    /// Ids of the nodes in the cluster.
    pub fn node_ids(&self) -> Vec<usize> {
        self.read().nodes.iter().map(|n| n.id).collect()
    }

    /// Waits until every daemon is ready.
    pub fn wait_all_ready(&self, limit: Duration) -> Result<(), String> {
        let c = self.read();
        wait_for(limit, "every daemon ready", || c.nodes.iter().all(|n| n.ready()))
    }

    /// What the invariant checks need: live nodes and pods.
    pub fn facts(&self) -> (Vec<NodeFacts>, Vec<PodFacts>) {
        let nodes = self.read().nodes.iter().map(|n| NodeFacts::read(n.id, &n.underlay_ip, &n.dir)).collect();
        let pods = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| PodFacts {
                uid: p.uid,
                node: p.node,
                ip: p.ip,
                container_id: p.attach.container_id.clone(),
                host_veth: p.host_veth.clone(),
            })
            .collect();
        (nodes, pods)
    }

    /// Runs one fault as a phase: records when it began, does it, then waits until the
    /// cluster is whole again (every daemon ready, no probe lost for 2 s; at most 45 s).
    pub fn phase(
        &self,
        kind: &str,
        touch: Vec<usize>,
        restart: bool,
        f: impl FnOnce(&Soak) -> Result<String, String>,
    ) {
        let start = self.collector.now();
        let encrypted = self.encrypted.load(Ordering::Relaxed);
        let at = {
            let mut ph = self.phases.lock().unwrap_or_else(|p| p.into_inner());
            ph.push(Phase {
                kind: kind.to_string(),
                touch: touch.clone(),
                restart,
                encrypted,
                start,
                end: start,
                detail: String::new(),
                error: None,
                recovered: false,
            });
            ph.len() - 1
        };
        let t = Instant::now();
        let r = f(self);
        let ready = self.wait_all_ready(Duration::from_secs(30));
        let quiet =
            self.collector.wait_quiet(Duration::from_secs(2), Duration::from_secs(45), &self.opts.stop);
        let end = self.collector.now();
        let mut ph = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        let p = &mut ph[at];
        p.end = end;
        p.recovered = ready.is_ok() && quiet;
        match r {
            Ok(d) => p.detail = d,
            Err(e) => p.error = Some(e),
        }
        let line = format!(
            "{kind}{}: {} ({:.1} s{})",
            if touch.is_empty() {
                String::new()
            } else {
                format!(" on node{}", touch.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",node"))
            },
            p.error.as_ref().map(|e| format!("FAILED TO INJECT: {e}")).unwrap_or_else(|| p.detail.clone()),
            t.elapsed().as_secs_f64(),
            match (&ready, quiet) {
                (Ok(()), true) => String::new(),
                (Err(e), _) => format!(", NOT RECOVERED: {e}"),
                (Ok(()), false) => ", NOT RECOVERED: probes still lost after 45 s".to_string(),
            }
        );
        drop(ph);
        self.say(line);
    }
}

/// Runs the soak; returns its report (the verdicts are in it). An error means it could not
/// run (the cluster did not start).
pub fn run(opts: SoakOptions) -> Result<report::Report, String> {
    let started = Instant::now();
    let mut copts = ClusterOptions::new(opts.nodes, &opts.bin_dir);
    copts.store = opts.store;
    copts.etcd_members = 3;
    let faults: Vec<FaultKind> = opts.faults.iter().copied().filter(|f| f.applies_to(opts.store)).collect();
    if opts.verbose {
        eprintln!(
            "ferrocni-soak: seed {}, {} nodes x {} pods, store {}, {} s, faults: {}",
            opts.seed,
            opts.nodes,
            opts.pods_per_node,
            store_name(opts.store),
            opts.duration.as_secs(),
            faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(",")
        );
    }
    let cluster = Cluster::start(copts)?;
    let soak = Soak {
        cluster: RwLock::new(cluster),
        pods: Mutex::default(),
        targets: Arc::default(),
        collector: Arc::new(Collector::new()),
        ledger: Mutex::default(),
        gone: Mutex::default(),
        phases: Mutex::default(),
        snapshots: Mutex::default(),
        churn: Mutex::default(),
        problems: Mutex::default(),
        leaving: Mutex::default(),
        inflight: Mutex::default(),
        encrypted: AtomicBool::new(false),
        next_uid: AtomicU64::new(1),
        timeline: Mutex::default(),
        opts,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&soak, &faults)));
    let report = match result {
        Ok(r) => r,
        Err(panic) => {
            // Print what the nodes looked like, then tear down (the drops below) and pass
            // the panic on.
            eprintln!("{}", soak.read().diagnostics());
            teardown(&soak);
            std::panic::resume_unwind(panic);
        }
    };
    teardown(&soak);
    let mut report = report;
    report.total = started.elapsed();
    Ok(report)
}

fn store_name(s: StoreKind) -> &'static str {
    match s {
        StoreKind::Etcd => "etcd (3 members)",
        StoreKind::Embedded => "embedded",
    }
}

fn drive(soak: &Soak, faults: &[FaultKind]) -> report::Report {
    let mut rng = fastrand::Rng::with_seed(soak.opts.seed);
    soak.say(format!("cluster up: {} nodes, store {}", soak.node_ids().len(), store_name(soak.opts.store)));
    // The long-lived pods, concurrently per node.
    for id in soak.node_ids() {
        churn::add_pods_concurrently(soak, id, soak.opts.pods_per_node, true);
    }
    soak.say(format!("{} pods attached; probing", soak.pods.lock().unwrap_or_else(|p| p.into_inner()).len()));
    // Let every pair connect before anything is done.
    soak.sleep(Duration::from_secs(3));
    let warm = soak.collector.now();
    let deadline = Instant::now() + soak.opts.duration;
    let churn_seed = rng.u64(..);
    let done = &AtomicBool::new(false);
    std::thread::scope(|s| {
        let churner =
            soak.opts.churn.then(|| s.spawn(move || churn::pod_churn(soak, churn_seed, deadline, done)));
        let mut order: Vec<FaultKind> = Vec::new();
        let mut planned: Vec<FaultKind> = faults.iter().rev().copied().collect();
        loop {
            let gap = soak.opts.gap.0 + (soak.opts.gap.1.saturating_sub(soak.opts.gap.0)).mul_f64(rng.f64());
            soak.sleep(gap);
            if Instant::now() >= deadline || soak.stopping() || faults.is_empty() {
                break;
            }
            let kind = if soak.opts.ordered {
                match planned.pop() {
                    Some(k) => k,
                    None => break,
                }
            } else {
                // Every kind once per round, in an order of the seed's choosing.
                if order.is_empty() {
                    order = faults.to_vec();
                    rng.shuffle(&mut order);
                }
                order.pop().expect("refilled")
            };
            faults::inject(soak, kind, &mut rng);
        }
        done.store(true, Ordering::Relaxed);
        if let Some(h) = churner
            && h.join().is_err()
        {
            soak.problem("the churn thread panicked");
        }
    });
    soak.say("faults over; settling");
    let _ = soak.wait_all_ready(Duration::from_secs(30));
    soak.collector.wait_quiet(Duration::from_secs(3), Duration::from_secs(30), &AtomicBool::new(false));
    let end = soak.collector.now();
    let (checks, final_del) = report::final_checks(soak);
    report::build(soak, warm, end, checks, final_del)
}

/// Copies the logs of the work directory (`node<id>/overlayd.log` of every node that ever
/// ran, `etcd<m>.log`) to `to`.
fn save_logs(soak: &Soak, to: &std::path::Path) {
    let work = soak.read().work_dir().to_path_buf();
    let _ = std::fs::create_dir_all(to);
    for e in std::fs::read_dir(&work).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let (from, dest) = if name.ends_with(".log") {
            (e.path(), to.join(&name))
        } else {
            (e.path().join("overlayd.log"), to.join(format!("{name}-overlayd.log")))
        };
        if from.is_file() {
            let _ = std::fs::copy(&from, dest);
        }
    }
}

/// Stops the probers, deletes the pods that are left (best effort) and drops the cluster.
fn teardown(soak: &Soak) {
    if let Some(to) = &soak.opts.logs {
        save_logs(soak, to);
    }
    let pods: Vec<SoakPod> =
        std::mem::take(&mut *soak.pods.lock().unwrap_or_else(|p| p.into_inner())).into_values().collect();
    for mut p in pods {
        if let Some(mut pr) = p.prober.take() {
            pr.stop();
        }
        let c = soak.read();
        if let Some(i) = c.index_of(p.node) {
            let list = c.nodes[i].conflist();
            let rt = c.runtime(i);
            let _ = c.nodes[i].ns.run(|| rt.del(&list, &p.attach));
        }
    }
}
