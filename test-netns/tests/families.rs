//! Address families end to end: pod families {IPv4, IPv6, dual} over underlays {IPv4-only,
//! IPv6-only, dual}, plain and encrypted; every pair of pods in every family by ping and TCP.

use std::net::SocketAddr;
use std::time::Duration;

use test_netns::cluster::{Cluster, ClusterOptions, ClusterPod, UnderlayFamilies, bin_dir, wait_for};
use test_netns::{EchoServer, ping, require_root, tcp_echo};

const ECHO_PORT: u16 = 7070;

/// The pairs (from, to address) that fail ping or a TCP echo, over every address of every pod.
fn failing_pairs(pods: &[ClusterPod]) -> Vec<String> {
    let servers: Vec<EchoServer> =
        pods.iter().map(|p| EchoServer::start(&p.ns, &format!("[::]:{ECHO_PORT}"))).collect();
    let mut failed = Vec::new();
    for a in pods {
        for b in pods {
            if std::ptr::eq(a, b) {
                continue;
            }
            for ip in &b.ips {
                if !ping(&a.ns, ip, 2) {
                    failed.push(format!("ping {} -> {ip}", a.ip));
                }
                let to = SocketAddr::new(ip.parse().unwrap(), ECHO_PORT);
                if let Err(e) = tcp_echo(&a.ns, to, 64 * 1024, Duration::from_secs(3)) {
                    failed.push(format!("tcp {} -> {to}: {e}", a.ip));
                }
            }
        }
    }
    drop(servers);
    failed
}

/// Waits (bounded) until every pair works; the failures of the last try otherwise.
fn all_pairs_reach(pods: &[ClusterPod]) -> Result<(), Vec<String>> {
    let mut last = Vec::new();
    let ok = wait_for(Duration::from_secs(10), "every pair in every family", || {
        last = failing_pairs(pods);
        last.is_empty()
    });
    ok.map_err(|_| last)
}

fn pods_on_each_node(c: &Cluster, tag: &str) -> Vec<ClusterPod> {
    (0..c.nodes.len()).map(|n| c.add_pod(n, &format!("{tag}{n}")).unwrap()).collect()
}

fn ctl(c: &Cluster, node: usize, args: &[&str]) -> String {
    let (ok, out) = c.overlayctl(node, args).unwrap();
    assert!(ok, "overlayctl {args:?} on node{node}: {out}");
    out
}

/// The pod families of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pods {
    V4,
    V6,
    Dual,
}

fn options(pods: Pods, underlay: UnderlayFamilies, nodes: usize) -> ClusterOptions {
    let o = ClusterOptions::new(nodes, bin_dir()).with_underlay(underlay);
    match pods {
        Pods::V4 => o,
        Pods::V6 => o.ipv6_only(),
        Pods::Dual => o.dual_stack(),
    }
}

/// The MTU of a pod's eth0.
fn pod_mtu(p: &ClusterPod) -> u32 {
    let out = p.ns.exec(&["ip", "-o", "link", "show", "eth0"]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "mtu").and_then(|_| words.next()).and_then(|m| m.parse().ok()).unwrap()
}

/// What node `i`'s kernel says about the route to `ip` (empty when it has none).
fn route_to(c: &Cluster, i: usize, ip: &str) -> String {
    let out = c.nodes[i].ns.command("ip").args(["route", "get", ip]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether every node routes every other node's pod subnets (all families) into the tunnel.
fn all_via_tunnel(c: &Cluster, pods: &[ClusterPod]) -> bool {
    pods.iter().all(|a| {
        pods.iter()
            .filter(|b| b.node != a.node)
            .all(|b| b.ips.iter().all(|ip| route_to(c, a.node, ip).contains("dev ferro-wg")))
    })
}

/// One cluster for a (pod families, underlay) pair: both nodes' pods reach each other in
/// every family, plain; with `churn`, also after a daemon restart and with a node joining
/// and one leaving; then the same with encryption on (the plain and encrypted cells share
/// the cluster: encryption is switched on at runtime).
fn cell(pods: Pods, underlay: UnderlayFamilies, churn: bool) {
    let tag =
        format!("{pods:?}-{}{}", if underlay.v4 { "4" } else { "" }, if underlay.v6 { "6" } else { "" });
    let mut c = Cluster::start(options(pods, underlay, 2)).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let mut ps = pods_on_each_node(&c, "m");
    let families = if pods == Pods::Dual { 2 } else { 1 };
    for p in &ps {
        assert_eq!(p.ips.len(), families, "{tag}: {:?}", p.ips);
        assert_eq!(p.ips.iter().any(|ip| ip.contains(':')), pods != Pods::V4, "{tag}: {:?}", p.ips);
        // One MTU that fits the largest encapsulation the node may use.
        let want = if underlay.v6 { 1430 } else { 1450 };
        assert_eq!(pod_mtu(p), want, "{tag}: pod MTU");
    }
    assert_eq!(all_pairs_reach(&ps), Ok(()), "{tag}: plain");
    if churn {
        c.stop_daemon(0, libc::SIGTERM);
        c.start_daemon(0).unwrap();
        c.wait_ready(0).unwrap();
        assert_eq!(all_pairs_reach(&ps), Ok(()), "{tag}: after a restart");
        let j = c.add_node().unwrap();
        c.wait_ready(j).unwrap();
        ps.push(c.add_pod(j, "mj").unwrap());
        assert_eq!(all_pairs_reach(&ps), Ok(()), "{tag}: a node joined");
        // Node 1 leaves (its daemon stops, its lease goes); it stays in the list, idle.
        let left: Vec<String> = ps.iter().filter(|p| p.node == 1).flat_map(|p| p.ips.clone()).collect();
        ctl(&c, 1, &["leave"]);
        for p in ps.iter().filter(|p| p.node == 1) {
            c.del_pod(p).unwrap();
        }
        ps.retain(|p| p.node != 1);
        wait_for(Duration::from_secs(15), "the routes to the node that left to go", || {
            left.iter().all(|ip| !route_to(&c, 0, ip).contains("flannel"))
        })
        .unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(all_pairs_reach(&ps), Ok(()), "{tag}: a node left");
    }
    ctl(&c, 0, &["encryption", "enable"]);
    wait_for(Duration::from_secs(30), "every route into the tunnel", || all_via_tunnel(&c, &ps))
        .unwrap_or_else(|e| panic!("{tag}: {e}\n{}", c.diagnostics()));
    assert_eq!(all_pairs_reach(&ps), Ok(()), "{tag}: encrypted");
    for p in &ps {
        c.del_pod(p).unwrap();
    }
}

#[test]
fn matrix_dual_pods_dual_underlay() {
    require_root!();
    cell(Pods::Dual, UnderlayFamilies::DUAL, true);
}

#[test]
fn matrix_dual_pods_v4_underlay() {
    require_root!();
    cell(Pods::Dual, UnderlayFamilies::V4, true);
}

#[test]
fn matrix_dual_pods_v6_underlay() {
    require_root!();
    cell(Pods::Dual, UnderlayFamilies::V6, false);
}

#[test]
fn matrix_v6_pods_v6_underlay() {
    require_root!();
    cell(Pods::V6, UnderlayFamilies::V6, true);
}

#[test]
fn matrix_v6_pods_v4_underlay() {
    require_root!();
    cell(Pods::V6, UnderlayFamilies::V4, false);
}

#[test]
fn matrix_v6_pods_dual_underlay() {
    require_root!();
    cell(Pods::V6, UnderlayFamilies::DUAL, false);
}

#[test]
fn matrix_v4_pods_v6_underlay() {
    require_root!();
    cell(Pods::V4, UnderlayFamilies::V6, false);
}

#[test]
fn matrix_v4_pods_dual_underlay() {
    require_root!();
    cell(Pods::V4, UnderlayFamilies::DUAL, false);
}

// IPv4 pods over an IPv4 underlay, plain, with churn and encryption: the existing suite
// (cluster.rs, encryption.rs) covers that cell.

#[test]
fn dual_stack_pods_over_an_ipv4_only_underlay() {
    require_root!();
    // The first report of issue 20: this config installed no routes for either family.
    let c =
        Cluster::start(ClusterOptions::new(2, bin_dir()).dual_stack().with_underlay(UnderlayFamilies::V4))
            .unwrap();
    let pods = pods_on_each_node(&c, "d4");
    assert!(pods.iter().all(|p| p.ips.len() == 2), "{:?}", pods.iter().map(|p| &p.ips).collect::<Vec<_>>());
    assert_eq!(all_pairs_reach(&pods), Ok(()));
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
