//! Records the exact requests the rtnetlink-based implementation sends, so the synchronous
//! one can be checked byte for byte against them. Payloads come from rtnetlink 0.24's own
//! request builders (through `message_mut()` where the request has one); the header flags
//! are the ones each builder's `execute()` sets (transcribed from its source).
//!
//! `GOLDEN_OUT=netkernel/testdata/rtnetlink-requests.golden cargo test -p netkernel golden_gen -- --ignored`

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage as M;
use rtnetlink::packet_route::link::{
    BridgeVlanInfoFlags as F, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, address::AddressMessage};
use rtnetlink::{
    LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder,
};

use crate::netlink::Netlink;
use crate::route::Route;

const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
const REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
const SET: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;
const GET: u16 = NLM_F_REQUEST;

fn line(out: &mut String, name: &str, flags: u16, msg: M) {
    let mut m = NetlinkMessage::from(msg);
    m.header.flags = flags;
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
    out.push_str(&format!("{name} {hex}\n"));
}

fn routes() -> Vec<(&'static str, Route)> {
    let mut v = Vec::new();
    v.push((
        "v4gw",
        Route::new("10.244.2.0/24".parse().unwrap(), Some("10.244.2.0".parse().unwrap()), Some(4)),
    ));
    v.push(("v4link", Route::new("10.22.0.0/16".parse().unwrap(), None, Some(3))));
    v.push(("v4default", Route::new("0.0.0.0/0".parse().unwrap(), Some("10.22.0.1".parse().unwrap()), None)));
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

#[test]
#[ignore = "writes the golden requests of the rtnetlink implementation"]
fn golden_gen() {
    let nl = Netlink::current().unwrap();
    let h = nl.handle();
    let mut out = String::new();

    // Addresses.
    for (name, a) in
        [("v4", "10.1.2.3/24"), ("v4p31", "10.244.1.0/31"), ("v4p32", "10.244.1.0/32"), ("v6", "fd00::5/64")]
    {
        let a: IpNet = a.parse().unwrap();
        let mut req = h.address().add(7, a.addr(), a.prefix_len());
        line(&mut out, &format!("addr_add_{name}"), ADD, M::NewAddress(req.message_mut().clone()));
    }
    let mut req = h.address().get().set_link_index_filter(7);
    line(&mut out, "addr_dump", DUMP, M::GetAddress(req.message_mut().clone()));
    let mut del = AddressMessage::default();
    del.header.family = AddressFamily::Inet;
    del.header.index = 7;
    del.header.prefix_len = 24;
    line(&mut out, "addr_del", ACK, M::DelAddress(del));

    // Links.
    let mut req = h.link().get().match_name("eth0".to_string());
    line(&mut out, "link_get_name", GET, M::GetLink(req.message_mut().clone()));
    let mut req = h.link().get().match_index(5);
    line(&mut out, "link_get_index", GET, M::GetLink(req.message_mut().clone()));
    let mut req = h.link().get();
    line(&mut out, "link_dump", DUMP, M::GetLink(req.message_mut().clone()));
    line(&mut out, "bridge_plain", ADD, M::NewLink(LinkBridge::new("br0").build()));
    line(
        &mut out,
        "bridge_mtu_vlan",
        ADD,
        M::NewLink(LinkBridge::new("cni0").mtu(1400).vlan_filtering(true).build()),
    );
    // add_veth, as the old code built it (fd 9 stands for the peer namespace).
    let veth = |peer_ns: Option<i32>, mtu: Option<u32>, mac: Option<[u8; 6]>, peer_mac: Option<[u8; 6]>| {
        let mut peer = LinkUnspec::new_with_name("eth0");
        if let Some(fd) = peer_ns {
            peer = peer.setns_by_fd(fd);
        }
        if let Some(mtu) = mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = peer_mac {
            peer = peer.address(mac.to_vec());
        }
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name("veth1234".to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = mac {
            msg = msg.address(mac.to_vec());
        }
        msg.build()
    };
    line(&mut out, "veth_plain", ADD, M::NewLink(veth(None, None, None, None)));
    line(
        &mut out,
        "veth_full",
        ADD,
        M::NewLink(veth(Some(9), Some(1450), Some([2, 0, 0, 0, 0, 1]), Some([2, 0, 0, 0, 0, 2]))),
    );
    line(&mut out, "link_up", SET, M::SetLink(LinkUnspec::new_with_index(12).up().build()));
    line(&mut out, "link_down", SET, M::SetLink(LinkUnspec::new_with_index(12).down().build()));
    line(&mut out, "link_master", SET, M::SetLink(LinkUnspec::new_with_index(12).controller(3).build()));
    line(&mut out, "link_mtu", SET, M::SetLink(LinkUnspec::new_with_index(12).mtu(9000).build()));
    line(
        &mut out,
        "link_mac",
        SET,
        M::SetLink(LinkUnspec::new_with_index(12).address(vec![0x0e, 0, 0xab, 1, 2, 3]).build()),
    );
    line(
        &mut out,
        "link_promisc_on",
        SET,
        M::SetLink(LinkUnspec::new_with_index(12).promiscuous(true).build()),
    );
    line(
        &mut out,
        "link_promisc_off",
        SET,
        M::SetLink(LinkUnspec::new_with_index(12).promiscuous(false).build()),
    );
    line(&mut out, "link_setns", SET, M::SetLink(LinkUnspec::new_with_index(12).setns_by_fd(9).build()));
    for (name, opts) in [
        ("port_both", vec![InfoBridgePort::HairpinMode(true), InfoBridgePort::Isolated(false)]),
        ("port_hairpin", vec![InfoBridgePort::HairpinMode(false)]),
        ("port_isolated", vec![InfoBridgePort::Isolated(true)]),
    ] {
        let msg = LinkUnspec::new_with_index(12)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(opts))
            .build();
        line(&mut out, name, ACK, M::NewLink(msg));
    }
    let mut del = rtnetlink::packet_route::link::LinkMessage::default();
    del.header.index = 12;
    line(&mut out, "link_del", ACK, M::DelLink(del));
    line(
        &mut out,
        "vlan_access",
        SET,
        M::SetLink(LinkBridgeVlan::new(12).vlan(10, F::Pvid | F::Untagged).build()),
    );
    line(&mut out, "vlan_trunk1", SET, M::SetLink(LinkBridgeVlan::new(12).vlan(20, F::empty()).build()));
    line(
        &mut out,
        "vlan_trunk",
        SET,
        M::SetLink(
            LinkBridgeVlan::new(12).vlan_range_start(100, F::empty()).vlan_range_end(200, F::empty()).build(),
        ),
    );
    line(&mut out, "vlan_del", ACK, M::DelLink(LinkBridgeVlan::new(12).vlan(10, F::empty()).build()));

    // Routes.
    for (name, r) in routes() {
        let mut req = h.route().add(r.message());
        line(&mut out, &format!("route_add_{name}"), ADD, M::NewRoute(req.message_mut().clone()));
        let mut req = h.route().add(r.message()).replace();
        line(&mut out, &format!("route_replace_{name}"), REPLACE, M::NewRoute(req.message_mut().clone()));
        let mut req = h.route().del(r.message());
        line(&mut out, &format!("route_del_{name}"), ACK, M::DelRoute(req.message_mut().clone()));
    }
    let mut req = h.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build());
    line(&mut out, "route_dump_v4", DUMP, M::GetRoute(req.message_mut().clone()));
    let mut req = h.route().get(RouteMessageBuilder::<Ipv6Addr>::new().build());
    line(&mut out, "route_dump_v6", DUMP, M::GetRoute(req.message_mut().clone()));

    // The overlay.
    for (name, local) in [("v4", IpAddr::from([192, 0, 2, 1])), ("v6", "2001:db8::1".parse().unwrap())] {
        let mut b = LinkVxlan::new("flannel.1", 1).dev(2).port(8472).learning(false);
        b = match local {
            IpAddr::V4(a) => b.local(a),
            IpAddr::V6(a) => b.local6(a),
        };
        let msg = b.mtu(1450).address(vec![0x0e, 0, 0, 0, 0, 0x0a]).up().build();
        line(&mut out, &format!("vxlan_{name}"), ADD, M::NewLink(msg));
    }
    let mut req = h.neighbours().get();
    line(&mut out, "neigh_dump", DUMP, M::GetNeighbour(req.message_mut().clone()));
    let mut req = h.neighbours().get().set_address_family(AddressFamily::Bridge);
    line(&mut out, "fdb_dump", DUMP, M::GetNeighbour(req.message_mut().clone()));
    let mac = [0x0e, 0, 0, 0, 0, 0x0b];
    for (name, ip) in [("v4", IpAddr::from([10, 244, 2, 0])), ("v6", "fd00:244:2::".parse().unwrap())] {
        let mut req =
            h.neighbours().add(4, ip).link_layer_address(&mac).state(NeighbourState::Permanent).replace();
        line(&mut out, &format!("neigh_set_{name}"), REPLACE, M::NewNeighbour(req.message_mut().clone()));
    }
    for (name, dst) in [("v4", IpAddr::from([192, 0, 2, 2])), ("v6", "2001:db8::2".parse().unwrap())] {
        let mut req = h
            .neighbours()
            .add_bridge(4, &mac)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace();
        line(&mut out, &format!("fdb_set_{name}"), REPLACE, M::NewNeighbour(req.message_mut().clone()));
    }
    // The deletions, as overlay.rs built them.
    for (name, ip) in [("v4", IpAddr::from([10, 244, 2, 0])), ("v6", "fd00:244:2::".parse().unwrap())] {
        let mut m = NeighbourMessage::default();
        m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.ifindex = 4;
        m.attributes.push(NeighbourAttribute::Destination(match ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        let mut req = h.neighbours().del(m);
        line(&mut out, &format!("neigh_del_{name}"), ACK, M::DelNeighbour(req.message_mut().clone()));
    }
    for (name, dst) in [("v4", IpAddr::from([192, 0, 2, 2])), ("v6", "2001:db8::2".parse().unwrap())] {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = 4;
        m.header.flags = NeighbourFlags::Own;
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes.push(NeighbourAttribute::Destination(match dst {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        let mut req = h.neighbours().del(m);
        line(&mut out, &format!("fdb_del_{name}"), ACK, M::DelNeighbour(req.message_mut().clone()));
    }

    let path = std::env::var("GOLDEN_OUT").expect("GOLDEN_OUT names the output file");
    std::fs::write(path, out).unwrap();
}
