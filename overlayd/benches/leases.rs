//! N simulated nodes (lease managers in one process, no datapath) against one etcd:
//! time until all hold a lease and all see all others, store requests per node, and
//! what flannel's algorithm would have cost for the same run.
//!
//! ```sh
//! cargo bench -p overlayd --bench leases -- --nodes 100,1000,5000 --shared-watch-from 5000
//! ```
//! Starts its own etcd (Debian's etcd-server) on 127.0.0.1 with a tmpfs data dir unless
//! `--etcd` gives an endpoint.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use overlayd::attrs::{LeaseAttrs, VxlanData};
use overlayd::backend::BackendEvent;
use overlayd::config::NetworkConfig;
use overlayd::lease::{LeaseManager, LeaseSettings, OwnLease, Renewal};
use overlayd::metrics::Metrics;
use overlayd::node::PeerSet;
use overlayd::retry::Backoff;
use overlayd::store::etcd::{EtcdOptions, EtcdStore};
use overlayd::store::{OpCounts, SharedStore};
use overlayd::subnet::KeyLayout;
use overlayd::validate::Validator;
use overlayd::watcher::{LeaseView, PeerEvent, Watcher, WatcherIo};
use tokio::sync::{mpsc, watch};

struct Args {
    nodes: Vec<usize>,
    shared_from: usize,
    clients: usize,
    steady: Duration,
    renew_every: Duration,
    etcd: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        nodes: vec![100, 1000, 5000],
        shared_from: 5000,
        clients: 8,
        steady: Duration::from_secs(30),
        renew_every: Duration::from_secs(10),
        etcd: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--nodes" => a.nodes = v().split(',').map(|n| n.parse().expect("a number")).collect(),
            "--shared-watch-from" => a.shared_from = v().parse().expect("a number"),
            "--clients" => a.clients = v().parse().expect("a number"),
            "--steady-secs" => a.steady = Duration::from_secs(v().parse().expect("a number")),
            "--renew-secs" => a.renew_every = Duration::from_secs(v().parse().expect("a number")),
            "--etcd" => a.etcd = Some(v()),
            // cargo bench passes --bench; ignore what is not ours.
            _ => {}
        }
    }
    a
}

/// etcd on free loopback ports, killed on drop.
struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::Builder::new().prefix("overlayd-bench-").tempdir_in("/dev/shm").unwrap();
        let (c, p) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{c}");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &endpoint, "--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-cluster", &format!("bench=http://127.0.0.1:{p}")])
            .args(["--quota-backend-bytes", "4294967296", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // etcd dies with the benchmark, even when it is interrupted.
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("etcd (apt-get install etcd-server)");
        Etcd { child, endpoint, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attrs(i: usize) -> LeaseAttrs {
    let ip = Ipv4Addr::new(10, 255, (i / 250) as u8, (i % 250) as u8 + 1);
    let o = ip.octets();
    LeaseAttrs {
        public_ip: Some(Ipv4Addr::new(192, 168, o[2], o[3])),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: VxlanData { vni: 1, vtep_mac: [2, 0, 0, o[2], o[3], 1] }.to_value(),
        backend_v6_data: serde_json::Value::Null,
        node_id: Some(format!("bench-node-{i}")),
        identity: None,
        signature: None,
        encryption: serde_json::Value::Null,
    }
}

fn sum(stores: &[SharedStore]) -> OpCounts {
    let mut t = OpCounts::default();
    for s in stores {
        let o = s.ops();
        t.grant += o.grant;
        t.keep_alive += o.keep_alive;
        t.revoke += o.revoke;
        t.get += o.get;
        t.list += o.list;
        t.listed_keys += o.listed_keys;
        t.put += o.put;
        t.txn += o.txn;
        t.watch += o.watch;
        t.watch_events += o.watch_events;
        t.other += o.other;
        t.errors += o.errors;
    }
    t
}

/// One watcher; `seen` tracks how many peers it currently knows.
fn spawn_watcher(
    store: SharedStore,
    cfg: &NetworkConfig,
    layout: &KeyLayout,
    node: &str,
    seen: Arc<AtomicI64>,
    stop: watch::Receiver<bool>,
) {
    let view = LeaseView::new(Validator::new(cfg.clone(), node), layout.clone(), None);
    let mut w = Watcher::new(store, view, Arc::new(Metrics::default()));
    let (tx, mut rx) = mpsc::channel::<BackendEvent>(1024);
    let (own_tx, own) = watch::channel(None);
    let (peers, _) = watch::channel(PeerSet::default());
    let config = watch::channel(Some(cfg.clone())).1;
    let mut io = WatcherIo { peers, events: tx, own, own_key: mpsc::channel(16).0, config, shutdown: stop };
    tokio::spawn(async move {
        // The watcher stops when its own-subnet sender goes away: keep it alive.
        let _own = own_tx;
        w.run(&mut io).await
    });
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let BackendEvent::Peers(b) = ev else { continue };
            for e in b {
                match e {
                    PeerEvent::Added(_) => seen.fetch_add(1, Ordering::Relaxed),
                    PeerEvent::Removed(_) => seen.fetch_sub(1, Ordering::Relaxed),
                    PeerEvent::Changed { .. } => 0,
                };
            }
        }
    });
}

struct Row {
    n: usize,
    shared: bool,
    all_leased: Duration,
    all_see_all: Duration,
    start_ops: OpCounts,
    races: u64,
    acquire_retries: u64,
    renewals_failed: u64,
    steady_per_renewal: f64,
    steady_events: u64,
    renewals: u64,
}

async fn run(n: usize, shared: bool, a: &Args, endpoint: &str) -> Row {
    let prefix = format!("/bench/{n}-{}", if shared { "shared" } else { "per-node" });
    let layout = KeyLayout::new(&prefix);
    let cfg = NetworkConfig::parse(r#"{"Network":"10.0.0.0/8"}"#).unwrap().config;
    let mut stores: Vec<SharedStore> = Vec::new();
    for _ in 0..a.clients {
        let s =
            EtcdStore::connect(EtcdOptions { endpoints: vec![endpoint.to_string()], ..Default::default() })
                .await
                .unwrap();
        stores.push(Arc::new(s));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: Vec<Arc<AtomicI64>> =
        (0..if shared { 1 } else { n }).map(|_| Arc::new(AtomicI64::new(0))).collect();
    let t0 = Instant::now();
    if shared {
        // One watch for the whole process: every simulated node reads the same view.
        spawn_watcher(stores[0].clone(), &cfg, &layout, "bench-observer", seen[0].clone(), stop_rx.clone());
    }
    let leased = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = stores[i % stores.len()].clone();
        let (cfg, layout, leased, retries) = (cfg.clone(), layout.clone(), leased.clone(), retries.clone());
        if !shared {
            spawn_watcher(
                store.clone(),
                &cfg,
                &layout,
                &format!("bench-node-{i}"),
                seen[i].clone(),
                stop_rx.clone(),
            );
        }
        tasks.push(tokio::spawn(async move {
            let mut m = LeaseManager::new(
                store,
                layout,
                cfg,
                attrs(i),
                LeaseSettings::with_ttl(Duration::from_secs(600)),
            );
            // As the daemon's lease keeper (lease::run_keeper): a failed acquisition (a store
            // request timed out on this overloaded machine) is tried again after a backoff.
            let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
            let l = loop {
                match m.acquire().await {
                    Ok(l) => break l,
                    Err(e) => {
                        if retries.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("  an acquisition failed ({e}); trying again, as the daemon does");
                        }
                        tokio::time::sleep(backoff.delay()).await;
                    }
                }
            };
            leased.fetch_add(1, Ordering::Relaxed);
            (m, l, Instant::now())
        }));
    }
    let mut managers: Vec<(LeaseManager, OwnLease)> = Vec::new();
    let mut last_lease = t0;
    for t in tasks {
        let (m, l, at) = t.await.unwrap();
        last_lease = last_lease.max(at);
        managers.push((m, l));
    }
    let all_leased = last_lease - t0;
    // The shared watcher sees every node; a node's own watcher every other one.
    let want = if shared { n as i64 } else { n as i64 - 1 };
    loop {
        if seen.iter().all(|s| s.load(Ordering::Relaxed) >= want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_see_all = t0.elapsed();
    let start_ops = sum(&stores);
    let races = managers.iter().map(|(m, _)| m.races_lost()).sum();
    let keys: std::collections::BTreeSet<_> = managers.iter().map(|(_, l)| l.key).collect();
    assert_eq!(keys.len(), n, "duplicate subnets");

    // Steady state: every node renews every `renew_every` for `steady`.
    let before = sum(&stores);
    let managers = Arc::new(managers);
    let end = Instant::now() + a.steady;
    let mut rounds = 0u64;
    let failed = Arc::new(AtomicU64::new(0));
    while Instant::now() < end {
        let round = Instant::now();
        let mut js = Vec::new();
        for i in 0..n {
            let (ms, failed) = (managers.clone(), failed.clone());
            js.push(tokio::spawn(async move {
                let (m, l) = &ms[i];
                // A renewal whose request times out is counted; the daemon tries again at
                // its next renewal, long before the TTL.
                match m.renew(l).await {
                    Ok(r) => assert_eq!(r, Renewal::Renewed),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for j in js {
            j.await.unwrap();
        }
        rounds += 1;
        let left = a.renew_every.saturating_sub(round.elapsed());
        if Instant::now() + left >= end {
            break;
        }
        tokio::time::sleep(left).await;
    }
    let steady = sum(&stores).since(&before);
    let _ = stop_tx.send(true);
    let renewals = rounds * n as u64;
    Row {
        n,
        shared,
        all_leased,
        all_see_all,
        start_ops,
        races,
        acquire_retries: retries.load(Ordering::Relaxed),
        renewals_failed: failed.load(Ordering::Relaxed),
        steady_per_renewal: steady.requests() as f64 / renewals as f64,
        steady_events: steady.watch_events,
        renewals,
    }
}

#[path = "../../build-support/bench_json.rs"]
mod bench_json;

fn main() {
    let a = args();
    let etcd = if a.etcd.is_none() { Some(Etcd::start()) } else { None };
    let endpoint = a.etcd.clone().unwrap_or_else(|| etcd.as_ref().unwrap().endpoint.clone());
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    // Wait for etcd.
    rt.block_on(async {
        let s = EtcdStore::connect(EtcdOptions { endpoints: vec![endpoint.clone()], ..Default::default() })
            .await
            .unwrap();
        for _ in 0..100 {
            if overlayd::store::Store::health(&s).await.healthy {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not come up");
    });
    let mut rows = Vec::new();
    for &n in &a.nodes {
        let shared = n >= a.shared_from;
        eprintln!("running N={n} ({} watch)", if shared { "shared" } else { "per-node" });
        let r = rt.block_on(run(n, shared, &a, &endpoint));
        eprintln!(
            "  all leased {:.2?}, all see all {:.2?}, {} races, {} acquisitions tried again, {} of {} renewals failed",
            r.all_leased, r.all_see_all, r.races, r.acquire_retries, r.renewals_failed, r.renewals
        );
        rows.push(r);
    }
    let default_renewals_per_hour = 3.0 / 24.0; // TTL 24 h, renewal every 8 h
    println!(
        "\n| N | watch | all hold a lease | all see all others | requests/node at start | keys listed/node | watch events/node | lost races | acquisitions tried again | renewals failed | requests per renewal | steady requests/node/h (24 h TTL) | watch events in steady state |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let n = r.n as f64;
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2} | {:.3} | {} |",
            r.n,
            if r.shared { "one per process" } else { "one per node" },
            r.all_leased.as_secs_f64(),
            r.all_see_all.as_secs_f64(),
            r.start_ops.requests() as f64 / n,
            r.start_ops.listed_keys as f64 / n,
            r.start_ops.watch_events as f64 / n,
            r.races,
            r.acquire_retries,
            r.renewals_failed,
            r.steady_per_renewal,
            r.steady_per_renewal * default_renewals_per_hour,
            r.steady_events,
        );
    }
    println!(
        "\nflannel's algorithm on the same runs (one TimeToLive per listed key and per watch event, each node with its own watch; renewal = Grant + Put every 23 h, each Put an event for every other node):\n"
    );
    println!("| N | flannel start requests/node | ours | flannel steady requests/node/h | ours |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        let n = r.n as f64;
        let ours_start = r.start_ops.requests() as f64 / n;
        // Per node, flannel pays one TimeToLive per key it lists and per event it
        // receives; with a per-node watch every node receives about N events.
        let events_per_node = if r.shared { n - 1.0 } else { r.start_ops.watch_events as f64 / n };
        let flannel_start = ours_start + r.start_ops.listed_keys as f64 / n + events_per_node;
        let flannel_steady = (2.0 + (n - 1.0)) / 23.0;
        bench_json::emit(
            "leases",
            "requests_per_node",
            serde_json::json!({
                "nodes": r.n,
                "watch": if r.shared { "one per process" } else { "one per node" },
                "all_leased_s": r.all_leased.as_secs_f64(), "all_see_all_s": r.all_see_all.as_secs_f64(),
                "ours_start": ours_start, "flannel_start": flannel_start,
                "ours_steady_per_h": r.steady_per_renewal * default_renewals_per_hour,
                "flannel_steady_per_h": flannel_steady,
            }),
        );
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.3} |",
            r.n,
            flannel_start,
            ours_start,
            flannel_steady,
            r.steady_per_renewal * default_renewals_per_hour
        );
    }
    println!(
        "\n(steady state measured with a renewal every {:?} for {:?}: {} renewals in total)",
        a.renew_every,
        a.steady,
        rows.iter().map(|r| r.renewals).sum::<u64>()
    );
}
