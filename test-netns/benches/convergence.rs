//! Convergence: the time from a lease written in the store to its route being in the kernel
//! of every node, on a 10-node `Cluster` (embedded store).
//!
//! ```sh
//! cargo bench -p test-netns --bench convergence                        # 10 nodes, 50 leases
//! cargo bench -p test-netns --bench convergence -- --smoke             # 3 nodes, 5 leases
//! cargo bench -p test-netns --bench convergence -- --variants embedded,embedded-poll20ms,etcd --method poll
//! cargo bench -p test-netns --bench convergence -- --variants etcd,kube    # kube-apiserver in shared/kube
//! ```
//!
//! Fake leases are written one at a time with the overlayd library's store API, as the
//! cluster tests do: `/coreos.com/network/subnets/10.244.N.0-24` =
//! `{"PublicIP":"198.18.0.X","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:…"}}`.
//! The clock starts when the write returns (the write is committed) and stops, per node, when the
//! kernel of that node has a route to `10.244.N.0/24`:
//!
//! - `--method monitor` (default): the first RTM_NEWROUTE for that subnet, read from an
//!   rtnetlink notification socket in each node (costs the nodes nothing);
//! - `--method poll`: route dumps of every node, over netlink, every millisecond.
//!
//! Leases are written 50–250 ms apart (random) so that writes do not lock onto the daemons'
//! store polling phase. Variants (each a fresh cluster): `embedded` (the daemons' default
//! 100 ms store poll), `embedded-pollNms` (`OVERLAYD_STORE_POLL=Nms` in the daemons'
//! environment), `etcd` (the harness's etcd store: watches are pushed), `kube` (Kubernetes
//! mode against a real kube-apiserver: a Node with the podCIDR but no annotations is made
//! for each lease beforehand, not managed so no lease; the "write" is a merge patch adding
//! flannel's annotations to it, and the clock starts when the API server answers it).

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use overlayd::store::Store;
use test_netns::cluster::{Cluster, ClusterOptions, StoreKind, wait_for};

fn node_subnet(c: &Cluster, i: usize) -> Ipv4Addr {
    let env = std::fs::read_to_string(c.nodes[i].dir.join("subnet.env")).unwrap();
    let line = env.lines().find(|l| l.starts_with("FLANNEL_SUBNET=")).unwrap();
    let ip: Ipv4Addr = line.trim_start_matches("FLANNEL_SUBNET=").split('/').next().unwrap().parse().unwrap();
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 0)
}

#[derive(Debug, Clone)]
struct Variant {
    name: String,
    store: StoreKind,
    poll: Option<String>,
}

fn variant(s: &str) -> Variant {
    match s {
        "embedded" => Variant { name: s.into(), store: StoreKind::Embedded, poll: None },
        "etcd" => Variant { name: s.into(), store: StoreKind::Etcd, poll: None },
        "kube" => Variant { name: s.into(), store: StoreKind::Kube, poll: None },
        _ => {
            let poll = s.strip_prefix("embedded-poll").unwrap_or_else(|| panic!("unknown variant {s}"));
            Variant { name: s.into(), store: StoreKind::Embedded, poll: Some(poll.into()) }
        }
    }
}

struct Outcome {
    variant: Variant,
    /// Per lease: per node latency (s), None when it never came.
    per_lease: Vec<Vec<Option<f64>>>,
    put_s: Vec<f64>,
    daemon_cpu_s: f64,
    wall_s: f64,
    missing_at_end: usize,
    nodes: usize,
}

/// Route arrivals from every node: (node, destination, when).
type Arrival = (usize, Ipv4Addr, Instant);

fn start_monitors(
    c: &Cluster,
    stop: &Arc<AtomicBool>,
) -> (mpsc::Receiver<Arrival>, Vec<std::thread::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let mut m = Monitor::open(&n.ns, GRP_IPV4_ROUTE, Duration::from_millis(50)).expect("route monitor");
        let (tx, stop) = (tx.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            let mut evs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                evs.clear();
                if m.recv(&mut evs).is_err() {
                    return;
                }
                let now = Instant::now();
                for e in &evs {
                    match e {
                        Event::Route { new: true, dst: IpAddr::V4(d), len: 24, .. } => {
                            let _ = tx.send((i, *d, now));
                        }
                        Event::Overrun => eprintln!("node{i}: route monitor overrun"),
                        _ => {}
                    }
                }
            }
        }));
    }
    (rx, handles)
}

fn has_route(nl: &test_netns::Netlink, dst: Ipv4Addr) -> bool {
    nl.routes(false, None)
        .is_ok_and(|rs| rs.iter().any(|r| r.dst.addr() == IpAddr::V4(dst) && r.dst.prefix_len() == 24))
}

fn run_variant(
    v: &Variant,
    nodes: usize,
    leases: usize,
    poll_method: bool,
    bin: &std::path::Path,
) -> Outcome {
    // SAFETY: no other thread of this process reads the environment while it changes (the
    // monitors of a previous variant have been joined; the daemons are other processes).
    unsafe {
        match &v.poll {
            Some(p) => std::env::set_var("OVERLAYD_STORE_POLL", p),
            None => std::env::remove_var("OVERLAYD_STORE_POLL"),
        }
    }
    let mut opts = ClusterOptions::new(nodes, bin);
    opts.store = v.store;
    let c = Cluster::start(opts).expect("starting the cluster");
    let own: Vec<Ipv4Addr> = (0..nodes).map(|i| node_subnet(&c, i)).collect();
    // Steady state: everyone routes to everyone.
    let nls: Vec<test_netns::Netlink> = c.nodes.iter().map(|n| n.ns.netlink()).collect();
    wait_for(Duration::from_secs(60), "the nodes to know each other", || {
        (0..nodes).all(|i| own.iter().enumerate().all(|(j, s)| i == j || has_route(&nls[i], *s)))
    })
    .expect("steady state");
    let used: BTreeSet<u8> = own.iter().map(|s| s.octets()[2]).collect();
    let targets: Vec<Ipv4Addr> = (2u8..=254)
        .filter(|n| !used.contains(n))
        .take(leases)
        .map(|n| Ipv4Addr::new(10, 244, n, 0))
        .collect();
    assert_eq!(targets.len(), leases, "not enough free /24s");

    let stop = Arc::new(AtomicBool::new(false));
    let (rx, handles) = if poll_method { (mpsc::channel().1, Vec::new()) } else { start_monitors(&c, &stop) };
    let daemons: Vec<u32> = c.nodes.iter().flat_map(|n| pids_in(&n.ns, "overlayd")).collect();
    let cpu0 = pid_cpu(&daemons);
    let w0 = Instant::now();

    let store_kind = v.store;
    let db = c.work_dir().join("store.db");
    if let Some(k) = c.kube() {
        // The Nodes exist (podCIDR assigned) before their daemons would publish anything.
        for (n, dst) in targets.iter().enumerate() {
            k.api.create_node(&format!("bench{n}"), &[&format!("{dst}/24")], &[]).expect("creating a Node");
        }
    }
    let kubeconfig = c.kube().map(|k| k.api.kubeconfig());
    let nls_ref = &nls;
    let targets_ref = &targets;
    let writer_ns = &c.nodes[0].ns;
    // The writer runs inside node0 (etcd is reachable only on the underlay).
    let (per_lease, put_s) = writer_ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Kube: the admin's client, through the relay at 10.96.0.1:443 as the daemons reach it.
        let nodes_api = kubeconfig.map(|kc| {
            rt.block_on(async {
                let o = overlayd::kube::client::ClientOptions {
                    api_url: Some("https://10.96.0.1:443".into()),
                    kubeconfig: Some(kc),
                    service_account_dir: Default::default(),
                };
                let cfg = overlayd::kube::client::config(&o).await.expect("client config");
                let client = overlayd::kube::client::client(cfg, Default::default()).expect("client");
                kube::Api::<overlayd::kube::nodes::NodeLite>::all(client)
            })
        });
        let store: Box<dyn Store> = rt.block_on(async {
            match store_kind {
                StoreKind::Embedded => Box::new(
                    overlayd::store::embedded::EmbeddedStore::open(overlayd::store::embedded::EmbeddedOptions::new(&db))
                        .unwrap(),
                ) as Box<dyn Store>,
                StoreKind::Etcd => Box::new(
                    overlayd::store::etcd::EtcdStore::connect(overlayd::store::etcd::EtcdOptions {
                        endpoints: vec!["http://198.18.0.250:2379".into()],
                        ..Default::default()
                    })
                    .await
                    .unwrap(),
                ),
                // Not written through (the writes are Node patches below); any store will do.
                StoreKind::Kube => Box::new(
                    overlayd::store::embedded::EmbeddedStore::open(overlayd::store::embedded::EmbeddedOptions::new(&db))
                        .unwrap(),
                ),
            }
        });
        let store_lease = match &nodes_api {
            None => rt.block_on(store.grant(Duration::from_secs(3600))).expect("grant"),
            Some(_) => 0,
        };
        let mut per_lease = Vec::new();
        let mut put_s = Vec::new();
        let mut early: Vec<Arrival> = Vec::new();
        for (k, dst) in targets_ref.iter().enumerate() {
            std::thread::sleep(Duration::from_millis(fastrand_range(50, 250)));
            // Anything that arrived in between is not for this lease.
            while let Ok(a) = rx.try_recv() {
                early.push(a);
            }
            let key = format!("/coreos.com/network/subnets/{}-24", dst);
            let value = format!(
                r#"{{"PublicIP":"198.18.0.{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:{:02x}:{:02x}"}}}}"#,
                100 + k,
                (k + 1) >> 8,
                (k + 1) & 0xff
            );
            let p0 = Instant::now();
            match &nodes_api {
                None => {
                    // Bound to a store lease, as a node writes its lease (one without is refused).
                    rt.block_on(store.create(&key, value.as_bytes(), store_lease)).expect("create");
                }
                Some(api) => {
                    let a = overlayd::kube::annotations::Annotations::default();
                    let v: serde_json::Value = serde_json::from_str(&value).unwrap();
                    let patch = serde_json::json!({"metadata": {"annotations": {
                        a.kube_subnet_manager: "true",
                        a.backend_type: "vxlan",
                        a.backend_data: v["BackendData"].to_string(),
                        a.public_ip: v["PublicIP"],
                    }}});
                    let pp = kube::api::PatchParams::default();
                    rt.block_on(api.patch(&format!("bench{k}"), &pp, &kube::api::Patch::Merge(&patch)))
                        .expect("patching the Node");
                }
            }
            let t0 = Instant::now();
            put_s.push((t0 - p0).as_secs_f64());
            let mut got: Vec<Option<f64>> = vec![None; nodes];
            let deadline = t0 + Duration::from_secs(15);
            while got.iter().any(Option::is_none) && Instant::now() < deadline {
                if poll_method {
                    for i in 0..nodes {
                        if got[i].is_none() && has_route(&nls_ref[i], *dst) {
                            got[i] = Some(t0.elapsed().as_secs_f64());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                } else if let Ok((i, d, when)) = rx.recv_timeout(Duration::from_millis(100))
                    && d == *dst
                    && got[i].is_none()
                {
                    got[i] = Some(when.saturating_duration_since(t0).as_secs_f64());
                }
            }
            let worst = got.iter().map(|x| x.unwrap_or(f64::NAN)).fold(0.0, f64::max);
            eprintln!(
                "  {} lease {k:2} {dst}/24: put {:.1} ms, all {nodes} nodes after {:.1} ms{}",
                store_kind_name(store_kind),
                put_s.last().unwrap() * 1e3,
                worst * 1e3,
                if got.iter().any(Option::is_none) { " (SOME NEVER)" } else { "" }
            );
            per_lease.push(got);
        }
        (per_lease, put_s)
    });
    let wall_s = w0.elapsed().as_secs_f64();
    let daemon_cpu_s = pid_cpu(&daemons) - cpu0;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // Every route is in every kernel at the end.
    let mut missing_at_end = 0;
    for nl in &nls {
        let routes: BTreeSet<IpAddr> = nl
            .routes(false, None)
            .unwrap()
            .iter()
            .filter(|r| r.dst.prefix_len() == 24)
            .map(|r| r.dst.addr())
            .collect();
        missing_at_end += targets.iter().filter(|t| !routes.contains(&IpAddr::V4(**t))).count();
    }
    drop(nls);
    drop(c);
    Outcome { variant: v.clone(), per_lease, put_s, daemon_cpu_s, wall_s, missing_at_end, nodes }
}

fn store_kind_name(k: StoreKind) -> &'static str {
    match k {
        StoreKind::Embedded => "embedded",
        StoreKind::Etcd => "etcd",
        StoreKind::Kube => "kube",
    }
}

fn fastrand_range(lo: u64, hi: u64) -> u64 {
    // xorshift on the clock: enough to decorrelate writes from the daemons' poll timers.
    use std::cell::Cell;
    thread_local!(static S: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    ));
    S.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        lo + x % (hi - lo)
    })
}

fn main() {
    let Some(run) = gate("convergence") else { return };
    let nodes = run.value("--nodes").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 3 } else { 10 });
    let leases = run.value("--leases").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 5 } else { 50 });
    let poll_method = run.value("--method").as_deref() == Some("poll");
    let default_variants = if run.smoke { "embedded" } else { "embedded,embedded-poll20ms,etcd" };
    let variants: Vec<Variant> =
        run.value("--variants").unwrap_or_else(|| default_variants.into()).split(',').map(variant).collect();
    let out = out_dir("convergence");
    let mut env = String::new();
    let _ = writeln!(env, "start: {}; load average {}", utc_now(), loadavg());
    let _ = writeln!(env, "top processes at start:\n{}", top_processes());
    eprintln!("{env}");
    let bin = bin_dir(&run);
    let mut outcomes = Vec::new();
    for v in &variants {
        eprintln!("variant {} ({} nodes, {leases} leases, {})", v.name, nodes, utc_now());
        outcomes.push(run_variant(v, nodes, leases, poll_method, &bin));
    }
    let _ = writeln!(env, "end: {}; load average {}", utc_now(), loadavg());

    let mut tsv = String::from("variant\tlease\tnode\tlatency_ms\n");
    let mut rows = Vec::new();
    for o in &outcomes {
        let mut all = Vec::new();
        let mut worst = Vec::new();
        let mut never = 0;
        for (k, l) in o.per_lease.iter().enumerate() {
            for (i, x) in l.iter().enumerate() {
                let _ = writeln!(
                    tsv,
                    "{}\t{k}\t{i}\t{}",
                    o.variant.name,
                    x.map_or("NaN".into(), |v| format!("{:.3}", v * 1e3))
                );
                match x {
                    Some(v) => all.push(v * 1e3),
                    None => never += 1,
                }
            }
            let w = l.iter().map(|x| x.map_or(f64::INFINITY, |v| v * 1e3)).fold(0.0, f64::max);
            worst.push(w);
        }
        let per_node_cpu = o.daemon_cpu_s / o.nodes as f64 / o.wall_s * 100.0;
        rows.push(vec![
            format!("**{}**", o.variant.name),
            format!("{}", o.per_lease.len()),
            f(percentile(&worst, 50.0), 1),
            f(percentile(&worst, 90.0), 1),
            f(percentile(&worst, 99.0), 1),
            f(range(&worst).1, 1),
            f(percentile(&all, 50.0), 1),
            f(percentile(&all, 99.0), 1),
            f(range(&all).0, 1),
            format!("{:.2}", median(&o.put_s.iter().map(|x| x * 1e3).collect::<Vec<_>>())),
            format!("{per_node_cpu:.2}%"),
            format!("{never} / {}", o.missing_at_end),
        ]);
    }
    std::fs::write(out.join("latencies.tsv"), tsv).unwrap();
    for o in &outcomes {
        // Per lease, the last node's time and every node's (ms; null: never).
        let ms = |x: &Option<f64>| x.map(|v| v * 1e3);
        let all_nodes: Vec<Option<f64>> = o
            .per_lease
            .iter()
            .map(|l| l.iter().try_fold(0.0, |m: f64, x| x.map(|v| m.max(v * 1e3))))
            .collect();
        let per_node: Vec<Option<f64>> = o.per_lease.iter().flatten().map(ms).collect();
        emit(
            &run,
            "convergence",
            "convergence",
            serde_json::json!({
                "variant": o.variant.name, "nodes": o.nodes, "leases": o.per_lease.len(),
                "all_nodes_ms": all_nodes, "per_node_ms": per_node,
                "daemon_cpu_pct_per_node": o.daemon_cpu_s / o.nodes as f64 / o.wall_s * 100.0,
            }),
        );
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## convergence: {nodes} nodes, {leases} leases one at a time, method {}\n",
        if poll_method { "poll (route dumps every 1 ms)" } else { "monitor (RTM_NEWROUTE notifications)" }
    );
    md += &table(
        &[
            "variant",
            "leases",
            "all nodes p50 ms",
            "p90",
            "p99",
            "max",
            "per node p50 ms",
            "per node p99",
            "per node min",
            "put ms (median)",
            "daemon CPU per node",
            "never / missing at end",
        ],
        &rows,
    );
    let _ = writeln!(
        md,
        "\n\"all nodes\": per lease, the time until the last of the {nodes} nodes had the route; \"per node\": every (lease, node) pair. Daemon CPU: utime+stime of all daemons during the lease phase, per node, as a share of one CPU."
    );
    let _ = writeln!(md, "\nRaw data: {}", out.display());
    std::fs::write(out.join("env.txt"), &env).unwrap();
    std::fs::write(out.join("summary.md"), &md).unwrap();
    println!("{env}\n{md}");
    let _ = std::fs::remove_dir_all(&bin);
}
