//! The overlay end to end: node namespaces on an underlay, `overlayd` in each, pods through
//! the `vxlan` plugin and the cni-spec runtime.

use std::net::TcpListener;
use std::time::Duration;

use netkernel::overlay::FdbEntry;
use test_netns::cluster::{
    Cluster, ClusterOptions, ClusterPod, StoreKind, bin_dir, ping_flood, ping_result, wait_for,
};
use test_netns::{TestNs, ping, require_root, veth_between};

fn all_pairs(pods: &[ClusterPod]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for a in pods {
        for b in pods {
            if a.ip != b.ip && !ping(&a.ns, &b.ip, 2) {
                failed.push((a.ip.clone(), b.ip.clone()));
            }
        }
    }
    failed
}

/// The overlay entries node `i` has for the subnet starting at `vtep` (neighbour, route,
/// FDB entries to `public`).
fn entries_for(c: &Cluster, i: usize, vtep: &str, public: &str) -> (bool, bool, bool) {
    let nl = c.nodes[i].ns.netlink();
    let Some(dev) = nl.link("flannel.1").unwrap() else { return (false, false, false) };
    let vtep: std::net::IpAddr = vtep.parse().unwrap();
    let public: std::net::IpAddr = public.parse().unwrap();
    let neigh = nl.neighbours(dev.index).unwrap().iter().any(|n| n.ip == vtep);
    let route =
        nl.routes(false, None).unwrap().iter().any(|r| r.gateway == Some(vtep) && r.oif == Some(dev.index));
    let fdb = nl.fdb(dev.index).unwrap().iter().any(|f: &FdbEntry| f.dst == public);
    (neigh, route, fdb)
}

fn node_subnet(c: &Cluster, i: usize) -> String {
    c.pod_subnet(i).unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn three_nodes_reach_each_other_a_node_leaves_and_one_joins() {
    require_root!();
    let mut c = Cluster::start(ClusterOptions::new(3, bin_dir())).unwrap();
    let mut pods = Vec::new();
    for n in 0..3 {
        for p in 0..2 {
            pods.push(c.add_pod(n, &format!("p{n}{p}")).unwrap());
        }
    }
    assert_eq!(all_pairs(&pods), vec![]);

    // Node 2 leaves: its entries disappear everywhere.
    let (vtep2, public2) = (node_subnet(&c, 2), c.nodes[2].underlay_ip.clone());
    assert_eq!(entries_for(&c, 0, &vtep2, &public2), (true, true, true));
    let (ok, out) = c.overlayctl(2, &["leave"]).unwrap();
    assert!(ok, "{out}");
    for i in 0..2 {
        wait_for(Duration::from_secs(15), "node2's entries to go", || {
            entries_for(&c, i, &vtep2, &public2) == (false, false, false)
        })
        .unwrap();
    }
    for p in pods.iter().filter(|p| p.node == 2) {
        let _ = c.del_pod(p);
    }
    pods.retain(|p| p.node != 2);

    // A node joins: everyone reaches its pod.
    let j = c.add_node().unwrap();
    c.wait_ready(j).unwrap();
    pods.push(c.add_pod(j, "joined").unwrap());
    wait_for(Duration::from_secs(15), "everyone to reach the new pod", || all_pairs(&pods).is_empty())
        .unwrap();
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}

/// What "ready" promises (docs/overlayd.md): a pod created on a node right after it became
/// ready reaches every pod of every node that was ready before it, and is reached by them,
/// from its first packet. One echo request each way, no second chance.
#[test]
fn a_pod_on_a_node_just_ready_reaches_everyone_from_its_first_packet() {
    require_root!();
    let mut c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let mut pods = vec![c.add_pod(0, "first0").unwrap()];
    for round in 1..=4 {
        let j = c.add_node().unwrap();
        c.wait_ready(j).unwrap();
        let new = c.add_pod(j, &format!("first{round}")).unwrap();
        let mut lost = Vec::new();
        for old in &pods {
            if !ping(&new.ns, &old.ip, 1) {
                lost.push((new.ip.clone(), old.ip.clone()));
            }
            if !ping(&old.ns, &new.ip, 1) {
                lost.push((old.ip.clone(), new.ip.clone()));
            }
        }
        assert_eq!(lost, vec![], "round {round}: first packets lost");
        pods.push(new);
    }
    let (ok, status) = c.overlayctl(4, &["status", "--json"]).unwrap();
    assert!(ok, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["readiness"]["probed"], 4, "{status}");
    assert_eq!(status["readiness"]["silent"], serde_json::json!([]), "{status}");
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}

#[test]
fn ten_nodes_on_etcd() {
    require_root!();
    let mut opts = ClusterOptions::new(10, bin_dir());
    opts.store = StoreKind::Etcd;
    let c = Cluster::start(opts).unwrap();
    let mut pods = Vec::new();
    for n in 0..10 {
        for p in 0..2 {
            pods.push(c.add_pod(n, &format!("e{n}{p}")).unwrap());
        }
    }
    assert_eq!(all_pairs(&pods), vec![]);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}

/// Sends 100 pings a second from `from` to `to` for `secs`; returns (sent, received).
#[test]
fn daemon_restarts_lose_no_packets() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let a = c.add_pod(0, "ra").unwrap();
    let b = c.add_pod(1, "rb").unwrap();
    assert!(ping(&a.ns, &b.ip, 2));
    let device = |c: &Cluster, i: usize| c.nodes[i].ns.netlink().require_link("flannel.1").unwrap().index;
    let before = (device(&c, 0), device(&c, 1), datapath_snapshot(&c));
    // A restart must not touch the datapath; the ping shows it. One repeat is allowed when a
    // packet is lost, because a busy machine can drop one on its own; the figure is printed.
    let mut lost = Vec::new();
    for _attempt in 0..2 {
        let flood = ping_flood(&a.ns, &b.ip, 8);
        std::thread::sleep(Duration::from_secs(1));
        c.stop_daemon(1, libc::SIGTERM);
        c.start_daemon(1).unwrap();
        c.wait_ready(1).unwrap();
        std::thread::sleep(Duration::from_secs(1));
        c.stop_daemon(0, libc::SIGKILL);
        c.start_daemon(0).unwrap();
        c.wait_ready(0).unwrap();
        let (sent, received) = ping_result(flood);
        assert_eq!(sent, 800);
        eprintln!("restarts under 100 pps: {} of {sent} lost", sent - received);
        lost.push(sent - received);
        if sent == received {
            break;
        }
    }
    assert_eq!(lost.last(), Some(&0), "lost packets across daemon restarts in every attempt: {lost:?}");
    assert_eq!(
        (device(&c, 0), device(&c, 1), datapath_snapshot(&c)),
        before,
        "a restart changed the datapath"
    );
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn hand_deleted_entries_come_back_and_a_changed_mac_leaves_no_stale_fdb() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let a = c.add_pod(0, "ha").unwrap();
    let b = c.add_pod(1, "hb").unwrap();
    let vtep1 = node_subnet(&c, 1);
    let public1 = c.nodes[1].underlay_ip.clone();
    let node0 = &c.nodes[0].ns;
    // Node 0 must have programmed node 1 before the entries can be deleted by hand.
    wait_for(Duration::from_secs(15), "node 0 to learn node 1", || {
        entries_for(&c, 0, &vtep1, &public1) == (true, true, true)
    })
    .unwrap();
    node0.exec(&["ip", "route", "del", &format!("{vtep1}/24")]);
    node0.exec(&["ip", "neigh", "del", &vtep1, "dev", "flannel.1"]);
    wait_for(Duration::from_secs(15), "the route and neighbour to come back", || {
        entries_for(&c, 0, &vtep1, &public1) == (true, true, true)
    })
    .unwrap();
    assert!(ping(&a.ns, &b.ip, 2));
    // The whole device.
    node0.exec(&["ip", "link", "del", "flannel.1"]);
    wait_for(Duration::from_secs(15), "the device and its entries to come back", || {
        entries_for(&c, 0, &vtep1, &public1) == (true, true, true)
    })
    .unwrap();
    assert!(ping(&a.ns, &b.ip, 3));

    // Node 1 gets a new VTEP MAC (e.g. its state was lost): node 0 keeps no FDB entry
    // for the old one.
    let old_mac = std::fs::read_to_string(c.nodes[1].dir.join("state/vtep-mac")).unwrap().trim().to_string();
    c.stop_daemon(1, libc::SIGTERM);
    std::fs::write(c.nodes[1].dir.join("state/vtep-mac"), "0e:11:22:33:44:55\n").unwrap();
    c.start_daemon(1).unwrap();
    c.wait_ready(1).unwrap();
    let old = netkernel::link::parse_mac(&old_mac).unwrap();
    wait_for(Duration::from_secs(15), "the old MAC's FDB entry to go", || {
        let nl = c.nodes[0].ns.netlink();
        let dev = nl.require_link("flannel.1").unwrap();
        let fdb = nl.fdb(dev.index).unwrap();
        !fdb.iter().any(|f| f.mac == old) && fdb.iter().any(|f| f.mac == [0x0e, 0x11, 0x22, 0x33, 0x44, 0x55])
    })
    .unwrap();
    wait_for(Duration::from_secs(10), "traffic over the new MAC", || ping(&a.ns, &b.ip, 1)).unwrap();
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

fn datapath_snapshot(c: &Cluster) -> Vec<String> {
    c.nodes
        .iter()
        .map(|n| {
            let routes = n.ns.exec(&["ip", "route"]);
            let neigh = n.ns.exec(&["ip", "neigh", "show", "dev", "flannel.1"]);
            let fdb = n.ns.exec(&["bridge", "fdb", "show", "dev", "flannel.1"]);
            format!("{routes}\n{neigh}\n{fdb}")
        })
        .collect()
}

#[test]
fn vxlan_plugin_with_the_daemon_down() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let existing = c.add_pod(0, "dd").unwrap();
    c.stop_daemon(0, libc::SIGTERM);
    let e = c.add_pod(0, "late").unwrap_err();
    assert!(e.contains("code 11"), "{e}");
    let rt =
        cni_spec::runtime::Runtime::new(vec![bin_dir()]).with_cache_dir(c.nodes[0].dir.join("cni-cache"));
    let list = c.nodes[0].conflist();
    let status = c.nodes[0].ns.run(|| rt.status(&list)).unwrap_err();
    assert_eq!(status.code, 50, "{status}");
    // DEL works from the saved config.
    c.del_pod(&existing).unwrap();
    assert!(!existing.ns.try_exec(&["ip", "link", "show", "eth0"]));
    let ipam = c.nodes[0].dir.join("ipam/cluster");
    let leases: Vec<_> = std::fs::read_dir(&ipam)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
        .collect();
    assert!(leases.is_empty(), "{leases:?}");
}

#[test]
fn pods_egress_masqueraded_but_talk_to_each_other_unmasqueraded() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let a = c.add_pod(0, "ma").unwrap();
    let b = c.add_pod(1, "mb").unwrap();
    let outside = TestNs::new("world");
    veth_between(&c.nodes[0].ns, "world", &outside, "up");
    c.nodes[0].ns.add_address("world", "203.0.113.1/24");
    outside.add_address("up", "203.0.113.2/24");

    let listen = |ns: &TestNs, addr: &str| -> TcpListener {
        let addr = addr.to_string();
        ns.run(move || TcpListener::bind(addr)).unwrap()
    };
    let world = listen(&outside, "203.0.113.2:0");
    let target = world.local_addr().unwrap();
    a.ns.run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))).unwrap();
    let (_s, peer) = world.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "203.0.113.1", "egress must leave as the node");

    let inside = listen(&b.ns, &format!("{}:0", b.ip));
    let target = inside.local_addr().unwrap();
    a.ns.run(move || std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3))).unwrap();
    let (_s, peer) = inside.accept().unwrap();
    assert_eq!(peer.ip().to_string(), a.ip, "pod-to-pod traffic keeps the pod's address");
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

/// The harness's 3-member etcd: the leader is found through etcd's API, killed and
/// restarted while the nodes keep their leases and a node can still join; a node can be
/// removed for good (`overlayctl leave`) and its ids are not reused.
#[test]
fn three_etcd_members_survive_the_leaders_crash() {
    require_root!();
    let mut opts = ClusterOptions::new(2, bin_dir());
    opts.store = StoreKind::Etcd;
    opts.etcd_members = 3;
    let mut c = Cluster::start(opts).unwrap();
    assert_eq!(c.etcd.len(), 3);
    let leader = c.wait_etcd_leader(Duration::from_secs(15)).unwrap();
    let a = c.add_pod(0, "la").unwrap();
    let b = c.add_pod(1, "lb").unwrap();
    assert!(ping(&a.ns, &b.ip, 2));

    c.etcd_stop(leader, libc::SIGKILL);
    let next = c.wait_etcd_leader(Duration::from_secs(15)).unwrap();
    assert_ne!(next, leader, "a killed member cannot lead");
    // The store still works with two members: a third node gets a lease and is ready.
    let j = c.add_node().unwrap();
    c.wait_ready(j).unwrap();
    c.etcd_start(leader).unwrap();
    wait_for(Duration::from_secs(15), "the restarted member to follow", || {
        c.etcd[leader].status().is_some() && c.etcd_leader().is_some()
    })
    .unwrap();
    assert!(ping(&a.ns, &b.ip, 2));

    // Node 2 leaves; its index goes, its id is never given out again.
    let (ok, out) = c.overlayctl(j, &["leave"]).unwrap();
    assert!(ok, "{out}");
    let gone = c.remove_node(j);
    assert_eq!(gone.id, 2);
    drop(gone);
    let k = c.add_node().unwrap();
    assert_eq!(c.nodes[k].id, 3);
    assert_eq!(c.nodes[k].underlay_ip, "198.18.0.4");
    c.wait_ready(k).unwrap();
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}
