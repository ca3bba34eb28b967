//! Wiring test hosts together: veth pairs and a shared underlay switch.

use std::sync::atomic::{AtomicU32, Ordering};

use netkernel::link::{BridgeSpec, VethOptions};

use crate::TestNs;

/// Connects `a` and `b` with a veth pair (`a_if` in `a`, `b_if` in `b`), both ends up.
pub fn veth_between(a: &TestNs, a_if: &str, b: &TestNs, b_if: &str) {
    let nl = a.netlink();
    nl.add_veth(a_if, b_if, Some(b.netns()), &VethOptions::default())
        .unwrap_or_else(|e| panic!("veth {}:{a_if} <-> {}:{b_if}: {e}", a.name(), b.name()));
    nl.set_up(a.link_index(a_if)).expect("veth end up");
    b.netlink().set_up(b.link_index(b_if)).expect("veth peer up");
    // Usable only once both ends have carrier: a neighbour solicitation sent before is lost,
    // and the kernel asks again only a second later.
    let started = std::time::Instant::now();
    let oper_up =
        |ns: &TestNs, ifname: &str| ns.netlink().link(ifname).ok().flatten().is_some_and(|l| l.oper_up);
    while !(oper_up(a, a_if) && oper_up(b, b_if)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "veth {a_if} <-> {b_if} never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A layer-2 switch in a namespace of its own, joining fake nodes: each attached node gets
/// an interface on it with an address of the underlay subnet.
#[derive(Debug)]
pub struct Underlay {
    switch: TestNs,
    bridge_index: u32,
    ports: AtomicU32,
    /// The underlay's prefix length.
    pub prefix_len: u8,
}

impl Underlay {
    /// A new switch (a bridge `ul0` in its own namespace); `mtu` sets the bridge's MTU.
    pub fn new(mtu: Option<u32>) -> Self {
        let switch = TestNs::new("switch");
        let bridge = switch
            .netlink()
            .ensure_bridge(&BridgeSpec { name: "ul0".into(), mtu, vlan_filtering: false })
            .expect("underlay bridge");
        Underlay { switch, bridge_index: bridge.index, ports: AtomicU32::new(0), prefix_len: 24 }
    }

    /// The switch's namespace.
    pub fn switch(&self) -> &TestNs {
        &self.switch
    }

    /// Plugs `node` into the switch as interface `ifname` with `addr` (e.g. `192.0.2.1/24`).
    pub fn attach(&self, node: &TestNs, ifname: &str, addr: &str) {
        self.attach_all(node, ifname, &[addr.to_string()]);
    }

    /// Plugs `node` into the switch as `ifname` with each of `addrs` (IPv4 and/or IPv6;
    /// duplicate address detection is off on it, so an IPv6 address is usable at once).
    pub fn attach_all(&self, node: &TestNs, ifname: &str, addrs: &[String]) {
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        let nl = self.switch.netlink();
        nl.add_veth(&port, ifname, Some(node.netns()), &VethOptions::default())
            .unwrap_or_else(|e| panic!("underlay port {port} for {}: {e}", node.name()));
        let idx = self.switch.link_index(&port);
        nl.set_master(idx, self.bridge_index).expect("port on the switch");
        nl.set_up(idx).expect("port up");
        node.run(|| netkernel::sysctl::write(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0"))
            .expect("DAD off on the underlay port");
        for addr in addrs {
            node.add_address(ifname, addr);
        }
    }
}
