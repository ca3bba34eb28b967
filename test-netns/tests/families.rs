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
