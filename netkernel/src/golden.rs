//! Every request this layer builds is byte for byte the one the rtnetlink-based layer sent:
//! `testdata/rtnetlink-requests.golden` was written by that implementation from rtnetlink
//! 0.24's own builders (see the commit that added it), for the same inputs as below.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr;
use crate::link::{self, BridgePortOptions, BridgeSpec, PortVlan, VethOptions};
use crate::netlink::{Request, flags};
use crate::overlay::{self, FdbEntry, Neighbour, OverlayOp, VxlanSpec};
use crate::route::{self, Route};

fn golden() -> BTreeMap<String, String> {
    include_str!("../testdata/rtnetlink-requests.golden")
        .lines()
        .map(|l| {
            let (name, hex) = l.split_once(' ').unwrap();
            (name.to_string(), hex.to_string())
        })
        .collect()
}

/// The request as sequence number 0, without the padding a following message would need.
fn hex(req: &Request) -> String {
    let mut buf = Vec::new();
    req.encode(0, &mut buf);
    let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
    buf[..len].iter().map(|b| format!("{b:02x}")).collect()
}

fn routes() -> Vec<(&'static str, Route)> {
    let mut v = vec![
        ("v4gw", Route::new("10.244.2.0/24".parse().unwrap(), Some("10.244.2.0".parse().unwrap()), Some(4))),
        ("v4link", Route::new("10.22.0.0/16".parse().unwrap(), None, Some(3))),
        ("v4default", Route::new("0.0.0.0/0".parse().unwrap(), Some("10.22.0.1".parse().unwrap()), None)),
    ];
    let mut r = Route::new("fd00:1::/64".parse().unwrap(), Some("fd00::1".parse().unwrap()), Some(9));
    r.onlink = true;
    v.push(("v6onlink", r));
    let mut r = Route::new("10.9.0.0/16".parse().unwrap(), None, Some(2));
    r.table = Some(300);
    r.priority = Some(50);
    r.scope = Some(0);
    r.mtu = Some(1400);
    r.advmss = Some(1360);
    v.push(("v4table300", r));
    let mut r = Route::new("10.8.0.0/16".parse().unwrap(), Some("10.0.0.1".parse().unwrap()), Some(2));
    r.table = Some(100);
    r.mtu = Some(1380);
    v.push(("v4table100mtu", r));
    v
}

/// The same cases the golden file was written from.
fn ours() -> Vec<(String, Request)> {
    use netlink_packet_route::RouteNetlinkMessage as Rtm;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::LinkMessage;

    let mut v: Vec<(String, Request)> = Vec::new();
    for (name, a) in
        [("v4", "10.1.2.3/24"), ("v4p31", "10.244.1.0/31"), ("v4p32", "10.244.1.0/32"), ("v6", "fd00::5/64")]
    {
        v.push((format!("addr_add_{name}"), addr::add_request(7, a.parse::<IpNet>().unwrap())));
    }
    v.push(("addr_dump".into(), addr::dump_request()));
    let mut del = AddressMessage::default();
    del.header.family = netlink_packet_route::AddressFamily::Inet;
    del.header.index = 7;
    del.header.prefix_len = 24;
    v.push(("addr_del".into(), Request::new(flags::ACK, Rtm::DelAddress(del))));

    v.push(("link_get_name".into(), link::get_by_name_request("eth0")));
    v.push(("link_get_index".into(), link::get_by_index_request(5)));
    v.push(("link_dump".into(), link::dump_request()));
    v.push((
        "bridge_plain".into(),
        link::bridge_request(&BridgeSpec { name: "br0".into(), mtu: None, vlan_filtering: false }),
    ));
    v.push((
        "bridge_mtu_vlan".into(),
        link::bridge_request(&BridgeSpec { name: "cni0".into(), mtu: Some(1400), vlan_filtering: true }),
    ));
    v.push(("veth_plain".into(), link::veth_request("veth1234", "eth0", None, &VethOptions::default())));
    let opts =
        VethOptions { mtu: Some(1450), mac: Some([2, 0, 0, 0, 0, 1]), peer_mac: Some([2, 0, 0, 0, 0, 2]) };
    v.push(("veth_full".into(), link::veth_request("veth1234", "eth0", Some(9), &opts)));

    use netlink_packet_route::link::{LinkAttribute as A, LinkFlags};
    let set = |name: &str, m: LinkMessage| (name.to_string(), link::set_request(m));
    v.push(set("link_up", link::with_flag(12, LinkFlags::Up, true)));
    v.push(set("link_down", link::with_flag(12, LinkFlags::Up, false)));
    v.push(set("link_master", link::with_attribute(12, A::Controller(3))));
    v.push(set("link_mtu", link::with_attribute(12, A::Mtu(9000))));
    v.push(set("link_mac", link::with_attribute(12, A::Address(vec![0x0e, 0, 0xab, 1, 2, 3]))));
    v.push(set("link_promisc_on", link::with_flag(12, LinkFlags::Promisc, true)));
    v.push(set("link_promisc_off", link::with_flag(12, LinkFlags::Promisc, false)));
    v.push(set("link_setns", link::with_attribute(12, A::NetNsFd(9))));
    for (name, hairpin, isolated) in [
        ("port_both", Some(true), Some(false)),
        ("port_hairpin", Some(false), None),
        ("port_isolated", None, Some(true)),
    ] {
        let req = link::bridge_port_request(12, &BridgePortOptions { hairpin, isolated }).unwrap();
        v.push((name.into(), req));
    }
    v.push(("link_del".into(), link::delete_request(12)));
    v.push(("vlan_access".into(), link::set_request(link::vlan_message(12, PortVlan::Access(10)))));
    v.push(("vlan_trunk1".into(), link::set_request(link::vlan_message(12, PortVlan::Trunk(20, 20)))));
    v.push(("vlan_trunk".into(), link::set_request(link::vlan_message(12, PortVlan::Trunk(100, 200)))));
    v.push(("vlan_del".into(), link::vlan_del_request(12, 10)));

    for (name, r) in routes() {
        v.push((format!("route_add_{name}"), route::add_request(&r)));
        v.push((format!("route_replace_{name}"), route::replace_request(&r)));
        v.push((format!("route_del_{name}"), route::del_request(&r)));
        // The overlay's batch sends exactly the same.
        assert_eq!(overlay::op_request(&OverlayOp::SetRoute(r.clone())), route::replace_request(&r));
        assert_eq!(overlay::op_request(&OverlayOp::DelRoute(r.clone())), route::del_request(&r));
    }
    v.push(("route_dump_v4".into(), route::dump_request(false)));
    v.push(("route_dump_v6".into(), route::dump_request(true)));

    for (name, local) in [("v4", IpAddr::from([192, 0, 2, 1])), ("v6", "2001:db8::1".parse().unwrap())] {
        let spec = VxlanSpec {
            name: "flannel.1".into(),
            vni: 1,
            port: 8472,
            local,
            dev: 2,
            mtu: 1450,
            mac: [0x0e, 0, 0, 0, 0, 0x0a],
        };
        v.push((format!("vxlan_{name}"), overlay::vxlan_request(&spec)));
    }
    v.push(("neigh_dump".into(), overlay::neighbours_dump_request()));
    v.push(("fdb_dump".into(), overlay::fdb_dump_request()));
    let mac = [0x0e, 0, 0, 0, 0, 0x0b];
    for (name, ip) in [("v4", IpAddr::from([10, 244, 2, 0])), ("v6", "fd00:244:2::".parse().unwrap())] {
        v.push((
            format!("neigh_set_{name}"),
            overlay::op_request(&OverlayOp::SetNeighbour(4, Neighbour { ip, mac })),
        ));
        v.push((format!("neigh_del_{name}"), overlay::op_request(&OverlayOp::DelNeighbour(4, ip))));
    }
    for (name, dst) in [("v4", IpAddr::from([192, 0, 2, 2])), ("v6", "2001:db8::2".parse().unwrap())] {
        v.push((
            format!("fdb_set_{name}"),
            overlay::op_request(&OverlayOp::SetFdb(4, FdbEntry { mac, dst })),
        ));
        v.push((
            format!("fdb_del_{name}"),
            overlay::op_request(&OverlayOp::DelFdb(4, FdbEntry { mac, dst })),
        ));
    }
    v
}

#[test]
fn every_request_matches_what_rtnetlink_sent() {
    let golden = golden();
    let ours = ours();
    let mut mismatches = Vec::new();
    for (name, req) in &ours {
        match golden.get(name) {
            Some(want) if *want == hex(req) => {}
            Some(want) => mismatches.push(format!("{name}:\n  rtnetlink {want}\n  ours      {}", hex(req))),
            None => mismatches.push(format!("{name}: not in the golden file")),
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Every golden case is covered.
    let names: Vec<&str> = ours.iter().map(|(n, _)| n.as_str()).collect();
    let missing: Vec<&String> = golden.keys().filter(|k| !names.contains(&k.as_str())).collect();
    assert!(missing.is_empty(), "not checked: {missing:?}");
}
