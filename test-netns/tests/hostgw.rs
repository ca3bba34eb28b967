//! The host-gw backend end to end: node namespaces on one L2 underlay, `overlayd` with
//! `"Backend": {"Type": "host-gw"}`, pods through the `vxlan` plugin; a node on another
//! L2 network is refused and reported.

use std::time::Duration;

use test_netns::cluster::{
    Cluster, ClusterOptions, ClusterPod, UnderlayFamilies, bin_dir, http_get, wait_for,
};
use test_netns::{ping, require_root};

fn unreachable_pairs(pods: &[ClusterPod]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for a in pods {
        for b in pods {
            for ip in &b.ips {
                if a.ip != b.ip && !ping(&a.ns, ip, 2) {
                    failed.push((a.ip.clone(), ip.clone()));
                }
            }
        }
    }
    failed
}

/// Every pair in every family, within 10 s (a new pod's IPv6 address is tentative until
/// duplicate address detection is done).
fn all_reach(pods: &[ClusterPod]) -> Result<(), Vec<(String, String)>> {
    let mut last = Vec::new();
    wait_for(Duration::from_secs(10), "every pair in every family", || {
        last = unreachable_pairs(pods);
        last.is_empty()
    })
    .map_err(|_| last)
}

fn status(c: &Cluster, i: usize) -> serde_json::Value {
    let (ok, out) = c.overlayctl(i, &["--json", "status"]).unwrap();
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn three_host_gw_nodes_route_pods_and_refuse_a_node_on_another_l2() {
    require_root!();
    let mut c = Cluster::start(ClusterOptions::new(3, bin_dir()).backend("host-gw")).unwrap();
    let pods: Vec<ClusterPod> = (0..3).map(|n| c.add_pod(n, &format!("hg{n}")).unwrap()).collect();
    assert_eq!(all_reach(&pods), Ok(()));

    // The datapath is host-gw's: a route per peer via its underlay address, no VXLAN device.
    let mut want: Vec<(String, String)> =
        (1..3).map(|i| (c.pod_subnet(i).unwrap(), c.nodes[i].underlay_ip.clone())).collect();
    want.sort();
    let mut have = c.host_gw_routes(0, false);
    have.sort();
    assert_eq!(have, want);
    assert!(c.nodes[0].ns.netlink().link("flannel.1").unwrap().is_none(), "host-gw made a VXLAN device");
    // Leases as flannel's host-gw writes them, so flanneld nodes read ours.
    let (ok, leases) = c.overlayctl(0, &["--json", "leases"]).unwrap();
    assert!(ok, "{leases}");
    assert!(leases.contains("\"BackendType\":\"host-gw\"") || leases.contains("\"host-gw\""), "{leases}");
    assert!(!leases.contains("\"vxlan\""), "{leases}");

    // A node on another L2 network (198.19.0.0/24 on the same wire: no connected prefix of
    // the others holds its address) gets a lease, but every node refuses to route to it and
    // says so; it refuses them in turn. Nothing else changes.
    let far = c.add_node_at("198.19.0.9/24").unwrap();
    let far_subnet = {
        wait_for(Duration::from_secs(30), "the far node's lease", || c.pod_subnet(far).is_ok()).unwrap();
        c.pod_subnet(far).unwrap()
    };
    for i in 0..3 {
        wait_for(Duration::from_secs(20), "the far node refused", || {
            let s = status(&c, i);
            let fams = s["datapath"]["families"].as_array().cloned().unwrap_or_default();
            fams.iter().any(|f| {
                f["family"] == "ipv4"
                    && f["not_on_link"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|k| k.as_str().unwrap_or("").contains("198.19.0.9")))
            })
        })
        .unwrap();
        assert!(
            !c.host_gw_routes(i, false).iter().any(|(dst, _)| *dst == far_subnet),
            "node{i} routes to the far node"
        );
    }
    let (code, body) = http_get(&c.nodes[0].socket(), "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("host-gw refuses peers not on this node's L2 network"), "{body}");
    assert!(body.contains("198.19.0.9"), "{body}");
    let (_, metrics) = http_get(&c.nodes[0].socket(), "/metrics").unwrap();
    assert!(metrics.contains("overlayd_datapath_not_on_link_peers{family=\"ipv4\"} 1"), "{metrics}");
    let log = std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log")).unwrap();
    assert!(log.contains("host-gw refuses peers"), "no log line");
    assert_eq!(unreachable_pairs(&pods), vec![], "the refused node disturbed the others");

    // A restart keeps the routes (no blip) and finds them in place.
    c.stop_daemon(1, libc::SIGTERM);
    assert_eq!(unreachable_pairs(&pods), vec![], "routes went with the daemon");
    c.start_daemon(1).unwrap();
    c.wait_ready(1).unwrap();
    assert_eq!(unreachable_pairs(&pods), vec![]);

    // The far node leaves and node 2 leaves: their routes and reports go everywhere.
    let gone = c.pod_subnet(2).unwrap();
    let (ok, out) = c.overlayctl(far, &["leave"]).unwrap();
    assert!(ok, "{out}");
    let (ok, out) = c.overlayctl(2, &["leave"]).unwrap();
    assert!(ok, "{out}");
    for i in 0..2 {
        wait_for(Duration::from_secs(20), "node2's route and the refusal to go", || {
            let s = status(&c, i);
            let quiet = s["datapath"]["families"]
                .as_array()
                .is_some_and(|a| a.iter().all(|f| f["not_on_link"].as_array().is_none_or(|x| x.is_empty())));
            quiet && !c.host_gw_routes(i, false).iter().any(|(dst, _)| *dst == gone)
        })
        .unwrap();
    }
    for p in &pods {
        let _ = c.del_pod(p);
    }
}

#[test]
fn host_gw_dual_stack_routes_each_family_via_its_own_underlay_family() {
    require_root!();
    let c = Cluster::start(
        ClusterOptions::new(2, bin_dir())
            .dual_stack()
            .with_underlay(UnderlayFamilies::DUAL)
            .backend("host-gw"),
    )
    .unwrap();
    let pods: Vec<ClusterPod> = (0..2).map(|n| c.add_pod(n, &format!("hd{n}")).unwrap()).collect();
    assert!(pods.iter().all(|p| p.ips.len() == 2), "{:?}", pods.iter().map(|p| &p.ips).collect::<Vec<_>>());
    assert_eq!(all_reach(&pods), Ok(()));
    let v6 = c.host_gw_routes(0, true);
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert_eq!(v6[0].1, c.nodes[1].underlay_ipv6.clone().unwrap(), "IPv6 pods go via the IPv6 underlay");
    let v4 = c.host_gw_routes(0, false);
    assert_eq!(v4, vec![(c.pod_subnet(1).unwrap(), c.nodes[1].underlay_ip.clone())]);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
