//! Timing of the kernel layer's netlink calls, for docs/benchmarks.md:
//! `cargo test --release -p test-netns --test nl_timing -- --ignored --nocapture` (as root).
//! The same file ran against the rtnetlink-based layer for the before/after figures there.

use netkernel::Netlink;
use netkernel::link::{VethOptions, parse_mac};
use netkernel::overlay::{FdbEntry, Neighbour, OverlayOp, VxlanSpec};
use netkernel::route::Route;
use std::time::Instant;
use test_netns::{TestNs, require_root};

#[test]
#[ignore = "a measurement, not a check: run it in a release build"]
fn nl_timing() {
    require_root!();
    let host = TestNs::new("nltiming");
    let nl = host.netlink();
    nl.add_veth("ul0", "ul0p", None, &VethOptions::default()).unwrap();
    let ul = nl.require_link("ul0").unwrap().index;
    nl.set_up(ul).unwrap();
    nl.set_up(nl.require_link("ul0p").unwrap().index).unwrap();
    nl.add_address(ul, "192.0.2.1/24".parse().unwrap()).unwrap();
    let spec = VxlanSpec {
        name: "ovl.1".into(),
        vni: 1,
        port: 8472,
        local: "192.0.2.1".parse().unwrap(),
        dev: ul,
        mtu: 1450,
        mac: parse_mac("0e:00:00:00:00:01").unwrap(),
    };
    let vx = nl.ensure_vxlan(&spec).unwrap().0.index;

    let t = Instant::now();
    for _ in 0..200 {
        host.run(|| Netlink::current().unwrap());
    }
    let open = t.elapsed() / 200;
    let t = Instant::now();
    for _ in 0..5000 {
        nl.link("ul0").unwrap().unwrap();
    }
    let get = t.elapsed() / 5000;

    let mut ops = Vec::new();
    for i in 0..1700u32 {
        let (a, b) = (i / 250, i % 250);
        let ip: std::net::IpAddr = format!("10.{}.{b}.0", 100 + a).parse().unwrap();
        let mac = [0x0e, 0, 0, 0, (i >> 8) as u8, i as u8];
        ops.push(OverlayOp::SetNeighbour(vx, Neighbour { ip, mac }));
        ops.push(OverlayOp::SetFdb(
            vx,
            FdbEntry { mac, dst: format!("198.51.{}.{}", 100 + a, b + 1).parse().unwrap() },
        ));
        if i < 1600 {
            let mut r = Route::new(format!("10.{}.{b}.0/24", 100 + a).parse().unwrap(), Some(ip), Some(vx));
            r.onlink = true;
            ops.push(OverlayOp::SetRoute(r));
        }
    }
    let mut batch = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        assert!(nl.apply_overlay(ops.clone()).is_empty());
        batch.push(t.elapsed());
    }
    batch.sort();
    let t = Instant::now();
    for _ in 0..50 {
        assert_eq!(nl.neighbours(vx).unwrap().len(), 1700);
        assert_eq!(nl.fdb(vx).unwrap().len(), 1700);
    }
    let nd = t.elapsed() / 50;
    let t = Instant::now();
    for _ in 0..50 {
        assert!(nl.routes(false, None).unwrap().len() >= 1600);
    }
    let rd = t.elapsed() / 50;
    eprintln!(
        "TIMING open {open:?} | link() {get:?} | apply_overlay(5000) median of 5 {:?} | neighbours+fdb dump (1700 each) {nd:?} | route dump (1600) {rd:?}",
        batch[2]
    );
}
