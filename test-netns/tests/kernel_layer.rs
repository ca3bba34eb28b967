//! The kernel layer and the test hosts, exercised in private namespaces.

use std::time::Duration;

use netkernel::link::{BridgePortOptions, BridgeSpec, VethOptions, parse_mac};
use netkernel::route::Route;
use test_netns::{EchoServer, TestNs, Underlay, ping, require_root, tcp_echo, veth_between};

#[test]
fn bridge_is_created_once_and_concurrent_ensures_agree() {
    require_root!();
    let host = TestNs::new("br");
    let spec = BridgeSpec { name: "tbr0".into(), mtu: Some(1400), vlan_filtering: false };
    let indices: Vec<u32> = std::thread::scope(|s| {
        let hs: Vec<_> =
            (0..8).map(|_| s.spawn(|| host.netlink().ensure_bridge(&spec).unwrap().index)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(indices.windows(2).all(|w| w[0] == w[1]), "{indices:?}");
    let br = host.netlink().require_link("tbr0").unwrap();
    assert!(br.is("bridge") && br.up);
    assert_eq!(br.mtu, 1400);
}

#[test]
fn ensure_bridge_refuses_another_kind() {
    require_root!();
    let host = TestNs::new("brkind");
    host.netlink().add_veth("notbr", "notbr1", None, &VethOptions::default()).unwrap();
    let err =
        host.netlink().ensure_bridge(&BridgeSpec { name: "notbr".into(), ..Default::default() }).unwrap_err();
    assert!(err.to_string().contains("not a bridge"), "{err}");
}

#[test]
fn veth_peer_is_born_in_the_other_namespace() {
    require_root!();
    let (host, pod) = (TestNs::new("vh"), TestNs::new("vp"));
    let mac = parse_mac("0a:58:0a:00:00:07").unwrap();
    let opts = VethOptions { mtu: Some(1450), mac: None, peer_mac: Some(mac) };
    host.netlink().add_veth("vethtest", "eth0", Some(pod.netns()), &opts).unwrap();
    let host_end = host.netlink().require_link("vethtest").unwrap();
    let pod_end = pod.netlink().require_link("eth0").unwrap();
    assert_eq!(pod_end.mac, Some(mac));
    assert_eq!((host_end.mtu, pod_end.mtu), (1450, 1450));
    assert_eq!(host_end.peer_index, Some(pod_end.index));
    assert!(host.netlink().link("eth0").unwrap().is_none());

    // Ports, addresses and routes.
    let br = host.netlink().ensure_bridge(&BridgeSpec { name: "b0".into(), ..Default::default() }).unwrap();
    host.netlink().set_master(host_end.index, br.index).unwrap();
    host.netlink()
        .set_bridge_port(host_end.index, &BridgePortOptions { hairpin: Some(true), isolated: Some(true) })
        .unwrap();
    assert_eq!(host.netlink().require_link("vethtest").unwrap().master, Some(br.index));
    let detail = host.exec(&["ip", "-d", "link", "show", "vethtest"]);
    assert!(detail.contains("hairpin on") && detail.contains("isolated on"), "{detail}");

    let nl = pod.netlink();
    nl.add_address(pod_end.index, "10.9.0.5/24".parse().unwrap()).unwrap();
    assert!(nl.add_address(pod_end.index, "10.9.0.5/24".parse().unwrap()).unwrap_err().is_exists());
    nl.ensure_address(pod_end.index, "10.9.0.5/24".parse().unwrap()).unwrap();
    nl.set_up(pod_end.index).unwrap();
    assert_eq!(nl.addresses(pod_end.index).unwrap(), vec!["10.9.0.5/24".parse().unwrap()]);
    let default =
        Route::new("0.0.0.0/0".parse().unwrap(), Some("10.9.0.1".parse().unwrap()), Some(pod_end.index));
    nl.add_route(&default).unwrap();
    nl.replace_route(&default).unwrap();
    let routes = nl.routes(false, None).unwrap();
    assert!(routes.iter().any(|r| r.dst.prefix_len() == 0 && r.gateway == default.gateway), "{routes:?}");
    nl.del_route(&default).unwrap();
    nl.del_route(&default).unwrap();
    assert!(!nl.routes(false, None).unwrap().iter().any(|r| r.dst.prefix_len() == 0));
    nl.del_address(pod_end.index, "10.9.0.5/24".parse().unwrap()).unwrap();
    assert!(nl.addresses(pod_end.index).unwrap().is_empty());

    // Deleting one end removes both; deleting again is fine.
    host.netlink().delete_link(host_end.index).unwrap();
    host.netlink().delete_link(host_end.index).unwrap();
    assert!(pod.netlink().link("eth0").unwrap().is_none());
}

#[test]
fn sysctls_are_per_namespace() {
    require_root!();
    let ns = TestNs::new("sysctl");
    let outside = netkernel::sysctl::read("net/ipv4/ip_forward").unwrap();
    let inside = ns.run(|| {
        netkernel::sysctl::write("net/ipv4/ip_forward", "1").unwrap();
        netkernel::sysctl::read("net.ipv4.ip_forward").unwrap()
    });
    assert_eq!(inside, "1");
    assert_eq!(netkernel::sysctl::read("net/ipv4/ip_forward").unwrap(), outside);
    assert!(netkernel::sysctl::write("net/../../etc/passwd", "x").is_err());
}

#[test]
fn underlay_joins_nodes_and_checks_connectivity() {
    require_root!();
    let underlay = Underlay::new(None);
    let nodes: Vec<TestNs> = (0..3).map(|i| TestNs::new(&format!("node{i}"))).collect();
    for (i, n) in nodes.iter().enumerate() {
        underlay.attach(n, "ul", &format!("192.0.2.{}/24", i + 1));
    }
    for (i, n) in nodes.iter().enumerate() {
        for j in 0..nodes.len() {
            if i != j {
                assert!(ping(n, &format!("192.0.2.{}", j + 1), 2), "node{i} cannot reach node{j}");
            }
        }
    }
    let server = EchoServer::start(&nodes[2], "192.0.2.3:0");
    let echoed = tcp_echo(&nodes[0], server.addr(), 256 * 1024, Duration::from_secs(5)).unwrap();
    assert_eq!(echoed, 256 * 1024);
    // Nothing answers on an address that is not on the underlay.
    assert!(!ping(&nodes[0], "192.0.2.99", 1));
    assert!(tcp_echo(&nodes[0], "192.0.2.99:7".parse().unwrap(), 1, Duration::from_millis(500)).is_err());
}

#[test]
fn veth_between_two_hosts() {
    require_root!();
    let (a, b) = (TestNs::new("pa"), TestNs::new("pb"));
    veth_between(&a, "ab", &b, "ba");
    a.add_address("ab", "198.51.100.1/30");
    b.add_address("ba", "198.51.100.2/30");
    assert!(ping(&a, "198.51.100.2", 2));
}

#[test]
fn vxlan_overlay_between_two_nodes() {
    use netkernel::overlay::{FdbEntry, Neighbour, OverlayOp, VxlanSpec};
    require_root!();
    let underlay = Underlay::new(None);
    let nodes = [TestNs::new("vxa"), TestNs::new("vxb")];
    let macs = [parse_mac("0e:00:00:00:00:0a").unwrap(), parse_mac("0e:00:00:00:00:0b").unwrap()];
    for (i, n) in nodes.iter().enumerate() {
        underlay.attach(n, "ul", &format!("192.0.2.{}/24", i + 1));
    }
    let mut vx_index = [0u32; 2];
    for (i, n) in nodes.iter().enumerate() {
        let nl = n.netlink();
        let spec = VxlanSpec {
            name: "ovl.1".into(),
            vni: 1,
            port: 8472,
            local: format!("192.0.2.{}", i + 1).parse().unwrap(),
            dev: n.link_index("ul"),
            mtu: 1450,
            mac: macs[i],
        };
        let (link, replaced) = nl.ensure_vxlan(&spec).unwrap();
        assert!(replaced.is_none());
        // Ensuring again keeps the device (same index: nothing was flushed).
        assert_eq!(nl.ensure_vxlan(&spec).unwrap().0.index, link.index);
        vx_index[i] = link.index;
        nl.add_address(link.index, format!("10.244.{}.0/32", i + 1).parse().unwrap()).unwrap();
    }
    for i in 0..2 {
        let peer = 1 - i;
        let peer_vtep: std::net::IpAddr = format!("10.244.{}.0", peer + 1).parse().unwrap();
        let mut route = Route::new(
            format!("10.244.{}.0/24", peer + 1).parse().unwrap(),
            Some(peer_vtep),
            Some(vx_index[i]),
        );
        route.onlink = true;
        let ops = vec![
            OverlayOp::SetNeighbour(vx_index[i], Neighbour { ip: peer_vtep, mac: macs[peer] }),
            OverlayOp::SetFdb(
                vx_index[i],
                FdbEntry { mac: macs[peer], dst: format!("192.0.2.{}", peer + 1).parse().unwrap() },
            ),
            OverlayOp::SetRoute(route),
        ];
        // Twice: replacing is idempotent.
        assert!(nodes[i].netlink().apply_overlay(ops.clone()).is_empty());
        assert!(nodes[i].netlink().apply_overlay(ops).is_empty());
    }
    assert!(ping(&nodes[0], "10.244.2.0", 2), "no overlay connectivity");
    let nl = nodes[0].netlink();
    assert_eq!(
        nl.neighbours(vx_index[0]).unwrap(),
        vec![Neighbour { ip: "10.244.2.0".parse().unwrap(), mac: macs[1] }]
    );
    let fdb_now = nl.fdb(vx_index[0]).unwrap();
    assert!(
        fdb_now.contains(&FdbEntry { mac: macs[1], dst: "192.0.2.2".parse().unwrap() }),
        "{fdb_now:?} {}",
        nodes[0].exec(&["bridge", "fdb", "show", "dev", "ovl.1"])
    );

    // Removal, including of things already gone.
    let fdb = FdbEntry { mac: macs[1], dst: "192.0.2.2".parse().unwrap() };
    let ops = vec![
        OverlayOp::DelNeighbour(vx_index[0], "10.244.2.0".parse().unwrap()),
        OverlayOp::DelFdb(vx_index[0], fdb),
    ];
    assert!(nl.apply_overlay(ops.clone()).is_empty());
    assert!(nl.apply_overlay(ops).is_empty());
    assert!(nl.neighbours(vx_index[0]).unwrap().is_empty());
    assert!(!nl.fdb(vx_index[0]).unwrap().contains(&fdb));
    assert!(!ping(&nodes[0], "10.244.2.0", 1));

    // An incompatible device (other VNI) is replaced, and the reason given.
    let spec = VxlanSpec {
        name: "ovl.1".into(),
        vni: 2,
        port: 8472,
        local: "192.0.2.1".parse().unwrap(),
        dev: nodes[0].link_index("ul"),
        mtu: 1450,
        mac: macs[0],
    };
    let (_, why) = nl.ensure_vxlan(&spec).unwrap();
    assert!(why.unwrap().contains("VNI"));
    assert_eq!(nl.vxlan_info("ovl.1").unwrap().unwrap().vni, Some(2));
}

#[test]
fn node_rules_are_applied_atomically_and_resynced_only_on_drift() {
    use netkernel::nodenat::{FamilyNets, NodeRules};
    require_root!();
    let ns = TestNs::new("nat");
    let rules = NodeRules {
        table: "ferrocni_test".into(),
        v4: Some(FamilyNets {
            network: "10.244.0.0/16".parse().unwrap(),
            pods: "10.244.3.0/24".parse().unwrap(),
        }),
        v6: Some(FamilyNets {
            network: "fd00:244::/56".parse().unwrap(),
            pods: "fd00:244:0:3::/64".parse().unwrap(),
        }),
        masquerade: true,
        forward: true,
    };
    ns.run(|| {
        assert!(!rules.in_place().unwrap());
        assert!(rules.ensure().unwrap(), "first ensure writes");
        assert!(rules.in_place().unwrap());
        assert!(!rules.ensure().unwrap(), "nothing drifted: no write");
    });
    let listing = ns.exec(&["nft", "list", "table", "inet", "ferrocni_test"]);
    assert!(listing.contains("meta mark & 0x00004000 == 0x00004000 return"), "{listing}");
    assert!(
        listing.contains("ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random"),
        "{listing}"
    );
    assert!(listing.contains("ip6 daddr fd00:244::/56 accept"), "{listing}");
    // Someone deletes a rule: the next ensure puts the whole set back.
    let json = ns.exec(&["nft", "-j", "list", "chain", "inet", "ferrocni_test", "forward"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let handle = v["nftables"].as_array().unwrap().iter().find_map(|o| o["rule"]["handle"].as_u64()).unwrap();
    ns.exec(&["nft", "delete", "rule", "inet", "ferrocni_test", "forward", "handle", &handle.to_string()]);
    ns.run(|| {
        assert!(!rules.in_place().unwrap());
        assert!(rules.ensure().unwrap());
        assert!(rules.in_place().unwrap());
        // A change of subnet is drift too.
        let mut moved = rules.clone();
        moved.v4.as_mut().unwrap().pods = "10.244.9.0/24".parse().unwrap();
        assert!(!moved.in_place().unwrap());
        NodeRules::remove("ferrocni_test").unwrap();
        NodeRules::remove("ferrocni_test").unwrap();
        assert!(!rules.in_place().unwrap());
    });
}

#[test]
fn tx_checksum_offload_can_be_turned_off() {
    require_root!();
    let ns = TestNs::new("csum");
    ns.netlink().add_veth("cs0", "cs1", None, &VethOptions::default()).unwrap();
    ns.run(|| {
        netkernel::ethtool::set_tx_checksum("cs0", false).unwrap();
        assert!(!netkernel::ethtool::tx_checksum("cs0").unwrap());
        netkernel::ethtool::set_tx_checksum("cs0", true).unwrap();
        assert!(netkernel::ethtool::tx_checksum("cs0").unwrap());
        assert!(netkernel::ethtool::tx_checksum("nosuchdev").is_err());
    });
}

#[test]
fn echo_probe_counts_only_real_answers_in_both_families() {
    use netkernel::probe::{EchoTarget, echo_all};
    require_root!();
    let (a, b) = (TestNs::new("proba"), TestNs::new("probb"));
    veth_between(&a, "p0", &b, "p0");
    a.add_address("p0", "10.77.0.1/24");
    b.add_address("p0", "10.77.0.2/24");
    a.exec(&["ip", "addr", "add", "fd77::1/64", "dev", "p0", "nodad"]);
    b.exec(&["ip", "addr", "add", "fd77::2/64", "dev", "p0", "nodad"]);
    let t = |src: &str, dst: &str| EchoTarget { src: Some(src.parse().unwrap()), dst: dst.parse().unwrap() };
    let targets = [
        t("10.77.0.1", "10.77.0.2"),
        // Nobody holds .9: it must stay silent, whatever else answers.
        t("10.77.0.1", "10.77.0.9"),
        t("fd77::1", "fd77::2"),
        t("fd77::1", "fd77::9"),
        EchoTarget { src: None, dst: "10.77.0.2".parse().unwrap() },
    ];
    let started = std::time::Instant::now();
    let out = a.run(|| echo_all(&targets, Duration::from_millis(100), Duration::from_millis(800))).unwrap();
    assert_eq!(out.answered, [true, false, true, false, true]);
    assert!(started.elapsed() >= Duration::from_millis(800), "waited for the silent ones until the deadline");
    assert!(out.sent >= targets.len() + 2 * 6, "silent targets are asked again every interval: {}", out.sent);

    // All answer: it returns as soon as they have, long before the deadline.
    let live = [targets[0], targets[2]];
    let started = std::time::Instant::now();
    let out = a.run(|| echo_all(&live, Duration::from_millis(100), Duration::from_secs(20))).unwrap();
    assert_eq!(out.answered, [true, true]);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A source address that is not ours is refused, not silently replaced.
    let bad = [t("10.77.0.2", "10.77.0.1")];
    assert!(a.run(|| echo_all(&bad, Duration::from_millis(100), Duration::from_millis(300))).is_err());
}
