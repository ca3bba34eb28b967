//! Watch cost of Kubernetes mode at scale, against etcd mode in the same run: N Node
//! objects (valid leases, flannel's annotations) in a real kube-apiserver (v1.20.2 from
//! `shared/kube/`), D simulated daemons in this process, each the kube store overlayd runs
//! (its own client and connection, one reflector: list + watch), and the same N leases in a
//! separate etcd with D etcd-mode watchers (list + watch of the subnets prefix, as overlayd's
//! watcher does).
//!
//! ```sh
//! cargo bench -p test-netns --bench kube_watch                          # N=1000, D=50
//! cargo bench -p test-netns --bench kube_watch -- --nodes 5000 --daemons 20
//! cargo bench -p test-netns --bench kube_watch -- --smoke              # N=100, D=5
//! ```
//!
//! Measured, for each mode:
//! - start: from opening the D daemons until every one holds all N leases;
//! - join: 100 more leases created (one kubectl request; 100 etcd creates); from the
//!   start of the creation until every daemon holds them;
//! - steady state: `--steady` seconds (default 120) with no change: requests and bytes per
//!   daemon, scaled to an hour (kube: counted by the client, response bodies; etcd: the
//!   watchers' store operations, and the bytes etcd reports sending, from its `/metrics`).

mod common;

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use overlayd::kube::{KubeOptions, KubeStore};
use overlayd::store::{Store, WatchEvent, WatchMessage};
use serde_json::json;

const PREFIX: &str = "/coreos.com/network";
const FL: &str = "flannel.alpha.coreos.com";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The lease annotations of simulated node `n` (10.<a>.<b>.0/24 inside 10.0.0.0/8).
fn subnet(n: usize) -> String {
    format!("10.{}.{}.0/24", 1 + n / 250, n % 250)
}

fn lease_json(n: usize) -> serde_json::Value {
    json!({
        "PublicIP": format!("198.19.{}.{}", n / 250, 1 + n % 250),
        "BackendType": "vxlan",
        "BackendData": {"VNI": 1, "VtepMAC": format!("0e:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff)},
    })
}

fn node_obj(n: usize) -> serde_json::Value {
    let l = lease_json(n);
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("sim{n}"), "annotations": {
            format!("{FL}/kube-subnet-manager"): "true",
            format!("{FL}/backend-type"): "vxlan",
            format!("{FL}/backend-data"): l["BackendData"].to_string(),
            format!("{FL}/public-ip"): l["PublicIP"],
        }},
        "spec": {"podCIDR": subnet(n), "podCIDRs": [subnet(n)]},
    })
}

/// Creates Nodes `from..to` with kubectl, 500 per request.
fn create_nodes(api: &test_netns::kube::ApiServer, from: usize, to: usize) {
    let mut n = from;
    while n < to {
        let end = (n + 500).min(to);
        let list =
            json!({"apiVersion": "v1", "kind": "List", "items": (n..end).map(node_obj).collect::<Vec<_>>()});
        api.kubectl_in(&["create", "-f", "-", "-o", "name"], Some(&list.to_string()))
            .expect("creating Nodes");
        n = end;
    }
}

fn wait_all(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Option<f64> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if done() {
            return Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("  {what}: not after {limit:?}");
    None
}

struct Mode {
    name: &'static str,
    start_s: Option<f64>,
    join_s: Option<f64>,
    requests_h: f64,
    bytes_h: f64,
    lists: f64,
    watches: f64,
    gets: f64,
}

fn etcd_metric(url: &str, name: &str) -> f64 {
    let out = Command::new("curl").args(["-s", &format!("{url}/metrics")]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

fn kube_mode(
    rt: &tokio::runtime::Runtime,
    api: &test_netns::kube::ApiServer,
    dir: &Path,
    n: usize,
    d: usize,
    steady: u64,
) -> Mode {
    let conf = dir.join("net-conf.json");
    std::fs::write(&conf, r#"{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#).unwrap();
    let t0 = Instant::now();
    let stores: Vec<Arc<KubeStore>> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..d {
            let opts = KubeOptions {
                node_name: format!("daemon{i}"),
                client: overlayd::kube::client::ClientOptions {
                    kubeconfig: Some(api.kubeconfig()),
                    ..Default::default()
                },
                annotations: Default::default(),
                net_config_file: conf.clone(),
                config_poll: Duration::from_secs(10),
                prefix: PREFIX.into(),
                events: false,
            };
            v.push(KubeStore::open(opts).await.expect("opening a kube store"));
        }
        v
    });
    let start_s = wait_all("kube start", Duration::from_secs(300), || stores.iter().all(|s| s.leases() == n))
        .map(|_| t0.elapsed().as_secs_f64());
    eprintln!("  kube: {d} daemons hold {n} leases after {start_s:?} s");
    let tj = Instant::now();
    create_nodes(api, n, n + 100);
    let created = tj.elapsed().as_secs_f64();
    let join_s =
        wait_all("kube join", Duration::from_secs(120), || stores.iter().all(|s| s.leases() == n + 100))
            .map(|_| tj.elapsed().as_secs_f64());
    eprintln!(
        "  kube: +100 Nodes created in {created:.3} s, held by all {join_s:?} s after the create began"
    );
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<_> = stores.iter().map(|s| s.api_counts()).collect();
    std::thread::sleep(Duration::from_secs(steady));
    let delta: Vec<_> = stores.iter().zip(&before).map(|(s, b)| s.api_counts().since(b)).collect();
    let per_h = 3600.0 / steady as f64 / d as f64;
    let sum = |f: &dyn Fn(&overlayd::kube::client::ApiCounts) -> u64| delta.iter().map(f).sum::<u64>() as f64;
    let totals: Vec<_> = stores.iter().map(|s| s.api_counts()).collect();
    let tsum = |f: &dyn Fn(&overlayd::kube::client::ApiCounts) -> u64| {
        totals.iter().map(f).sum::<u64>() as f64 / d as f64
    };
    let m = Mode {
        name: "kube",
        start_s,
        join_s,
        requests_h: sum(&|c| c.requests()) * per_h,
        bytes_h: sum(&|c| c.bytes_in) * per_h,
        lists: tsum(&|c| c.list),
        watches: tsum(&|c| c.watch),
        gets: tsum(&|c| c.get),
    };
    drop(stores);
    m
}

fn start_etcd(dir: &Path) -> (Child, String) {
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let peer = format!("http://127.0.0.1:{p}");
    let child = Command::new("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd-bench"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd (apt-get install etcd-server)");
    (child, url)
}

fn etcd_mode(rt: &tokio::runtime::Runtime, dir: &Path, n: usize, d: usize, steady: u64) -> Mode {
    let (mut child, url) = start_etcd(dir);
    let connect = || async {
        overlayd::store::etcd::EtcdStore::connect(overlayd::store::etcd::EtcdOptions {
            endpoints: vec![url.clone()],
            ..Default::default()
        })
        .await
    };
    let writer = rt.block_on(async {
        let t = Instant::now();
        loop {
            match connect().await {
                Ok(s) => break s,
                Err(_) if t.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("etcd: {e}"),
            }
        }
    });
    let put = |from: usize, to: usize| {
        rt.block_on(async {
            let lease = writer.grant(Duration::from_secs(3600)).await.unwrap();
            for i in from..to {
                let key = format!("{PREFIX}/subnets/{}", subnet(i).replace('/', "-"));
                writer.create(&key, lease_json(i).to_string().as_bytes(), lease).await.unwrap();
            }
        })
    };
    put(0, n);
    let held: Vec<Arc<AtomicUsize>> = (0..d).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let t0 = Instant::now();
    let (stores, tasks): (Vec<_>, Vec<_>) = rt.block_on(async {
        let mut stores = Vec::new();
        let mut tasks = Vec::new();
        for h in &held {
            let s = Arc::new(connect().await.unwrap());
            let (s2, h) = (s.clone(), h.clone());
            tasks.push(tokio::spawn(async move {
                let prefix = format!("{PREFIX}/subnets/");
                let l = s2.list(&prefix).await.unwrap();
                let mut keys: std::collections::HashSet<String> =
                    l.kvs.into_iter().map(|kv| kv.key).collect();
                h.store(keys.len(), Ordering::Relaxed);
                let mut w = s2.watch(&prefix, l.revision + 1).await.unwrap();
                while let Some(Ok(m)) = w.next().await {
                    if let WatchMessage::Events(evs) = m {
                        for e in evs {
                            match e {
                                WatchEvent::Put(kv) => keys.insert(kv.key),
                                WatchEvent::Delete { key, .. } => keys.remove(&key),
                            };
                        }
                        h.store(keys.len(), Ordering::Relaxed);
                    }
                }
            }));
            stores.push(s);
        }
        (stores, tasks)
    });
    let all = |k: usize| held.iter().all(|h| h.load(Ordering::Relaxed) == k);
    let start_s =
        wait_all("etcd start", Duration::from_secs(300), || all(n)).map(|_| t0.elapsed().as_secs_f64());
    eprintln!("  etcd: {d} watchers hold {n} leases after {start_s:?} s");
    let tj = Instant::now();
    put(n, n + 100);
    let created = tj.elapsed().as_secs_f64();
    let join_s =
        wait_all("etcd join", Duration::from_secs(120), || all(n + 100)).map(|_| tj.elapsed().as_secs_f64());
    eprintln!(
        "  etcd: +100 leases created in {created:.3} s, held by all {join_s:?} s after the create began"
    );
    std::thread::sleep(Duration::from_secs(2));
    let ops0: Vec<_> = stores.iter().map(|s| s.ops()).collect();
    let sent0 = etcd_metric(&url, "etcd_network_client_grpc_sent_bytes_total");
    std::thread::sleep(Duration::from_secs(steady));
    let sent1 = etcd_metric(&url, "etcd_network_client_grpc_sent_bytes_total");
    let per_h = 3600.0 / steady as f64 / d as f64;
    let reqs: u64 = stores
        .iter()
        .zip(&ops0)
        .map(|(s, b)| {
            let a = s.ops();
            let all = |o: &overlayd::store::OpCounts| {
                o.grant + o.keep_alive + o.revoke + o.get + o.list + o.put + o.txn + o.watch + o.other
            };
            all(&a) - all(b)
        })
        .sum();
    let tot = |f: &dyn Fn(&overlayd::store::OpCounts) -> u64| {
        stores.iter().map(|s| f(&s.ops())).sum::<u64>() as f64 / d as f64
    };
    let m = Mode {
        name: "etcd",
        start_s,
        join_s,
        requests_h: reqs as f64 * per_h,
        bytes_h: (sent1 - sent0) * per_h,
        lists: tot(&|o| o.list),
        watches: tot(&|o| o.watch),
        gets: tot(&|o| o.get),
    };
    for t in tasks {
        t.abort();
    }
    drop(stores);
    let _ = child.kill();
    let _ = child.wait();
    m
}

fn main() {
    let Some(run) = gate("kube_watch") else { return };
    if let Err(why) = test_netns::kube::apiserver_binary() {
        eprintln!("kube_watch: skipped: {why}");
        return;
    }
    let n: usize =
        run.value("--nodes").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 100 } else { 1000 });
    let d: usize =
        run.value("--daemons").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 5 } else { 50 });
    let steady: u64 =
        run.value("--steady").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 10 } else { 120 });
    let out = out_dir("kube_watch");
    let work = tempfile::Builder::new().prefix("ferrocni-kube-watch.").tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut env = String::new();
    let _ = writeln!(
        env,
        "start: {}; load average {}; N={n} Nodes, D={d} daemons, steady {steady} s",
        utc_now(),
        loadavg()
    );
    eprintln!("{env}");
    let api = test_netns::kube::ApiServer::start(&work.path().join("api")).expect("kube-apiserver");
    let t = Instant::now();
    create_nodes(&api, 0, n);
    eprintln!("  created {n} Nodes in {:.1} s", t.elapsed().as_secs_f64());
    let kube = kube_mode(&rt, &api, work.path(), n, d, steady);
    drop(api);
    let etcd = etcd_mode(&rt, work.path(), n, d, steady);
    let _ = writeln!(env, "end: {}; load average {}", utc_now(), loadavg());
    for m in [&kube, &etcd] {
        emit(
            &run,
            "kube_watch",
            "watch_cost",
            serde_json::json!({
                "mode": m.name, "nodes": n, "daemons": d, "start_s": m.start_s, "join_s": m.join_s,
                "lists_per_daemon": m.lists, "watches_per_daemon": m.watches, "gets_per_daemon": m.gets,
                "requests_per_daemon_h": m.requests_h, "bytes_per_daemon_h": m.bytes_h,
            }),
        );
    }
    let fmt = |x: Option<f64>| x.map_or("never".into(), |v| format!("{v:.2}"));
    let rows: Vec<Vec<String>> = [&kube, &etcd]
        .iter()
        .map(|m| {
            vec![
                m.name.to_string(),
                fmt(m.start_s),
                fmt(m.join_s),
                format!("{:.1}", m.lists),
                format!("{:.1}", m.watches),
                format!("{:.1}", m.gets),
                format!("{:.1}", m.requests_h),
                format!("{:.0}", m.bytes_h),
            ]
        })
        .collect();
    let t = table(
        &[
            "mode",
            &format!("start: all {d} hold {n} (s)"),
            "join: +100 held by all, from the first create (s)",
            "lists / daemon",
            "watches / daemon",
            "single GETs / daemon",
            "requests / daemon / h (steady)",
            "bytes / daemon / h (steady)",
        ],
        &rows,
    );
    let report = format!("{env}\n{t}");
    println!("{report}");
    std::fs::write(out.join("report.md"), &report).unwrap();
    eprintln!("written to {}", out.display());
}
