//! Choosing the underlay interface as flanneld does, in a private namespace with veth
//! links: repeatable `--iface` (names or addresses), `--iface-regex` (names or addresses),
//! `--iface-can-reach` (the route's interface), tried in that order, an interface without
//! a usable address passed over.

use overlayd::underlay::{IfaceSelection, UnderlayError, detect};
use test_netns::{TestNs, require_root};

fn sel(ifaces: &[&str], regexes: &[&str], can_reach: Option<&str>) -> IfaceSelection {
    IfaceSelection {
        ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
        regexes: regexes.iter().map(|s| s.to_string()).collect(),
        can_reach: can_reach.map(|a| a.parse().unwrap()),
    }
}

#[test]
fn interface_selection_follows_flanneld() {
    require_root!();
    let ns = TestNs::new("underlay");
    // veth pairs (dummy may be a module the host lacks); the peers have no address.
    for (l, peer) in [("ul-bare", "pe-bare"), ("ul-lan", "pe-lan"), ("ul-dc", "pe-dc")] {
        ns.exec(&["ip", "link", "add", l, "type", "veth", "peer", "name", peer]);
        ns.exec(&["ip", "link", "set", peer, "up"]);
    }
    ns.exec(&["ip", "link", "set", "ul-bare", "up"]);
    ns.add_address("ul-lan", "192.168.50.2/24");
    ns.add_address("ul-dc", "10.9.0.3/24");
    ns.exec(&["ip", "route", "add", "172.30.0.0/16", "via", "10.9.0.1", "dev", "ul-dc"]);
    let pick = |s: IfaceSelection| ns.run(move || detect(&s, None, None));
    let name = |s: IfaceSelection| pick(s).unwrap().iface.unwrap();

    // --iface: the first that exists with a usable address; an address names its link.
    assert_eq!(name(sel(&["ul-missing", "ul-bare", "ul-lan"], &[], None)), "ul-lan");
    let u = pick(sel(&["10.9.0.3"], &[], None)).unwrap();
    assert_eq!((u.iface.as_deref(), u.public_ip), (Some("ul-dc"), Some("10.9.0.3".parse().unwrap())));
    // --iface wins over --iface-regex, which wins over --iface-can-reach.
    assert_eq!(name(sel(&["ul-lan"], &["^ul-dc$"], Some("172.30.1.1"))), "ul-lan");
    assert_eq!(name(sel(&["ul-missing"], &["^nothing$", "^ul-l"], Some("172.30.1.1"))), "ul-lan");
    // A regex over addresses; one matching only an address-less link finds nothing there.
    assert_eq!(name(sel(&[], &[r"^10\.9\."], None)), "ul-dc");
    assert_eq!(name(sel(&[], &["^ul-bare$", "^ul-d"], None)), "ul-dc");
    // --iface-can-reach: the link the route to that address leaves by.
    assert_eq!(name(sel(&[], &[], Some("172.30.1.1"))), "ul-dc");
    assert_eq!(name(sel(&[], &[], Some("192.168.50.77"))), "ul-lan");
    // With --public-ip given, a link without addresses of its own is usable.
    let u =
        ns.run(|| detect(&sel(&["ul-bare"], &[], None), Some("203.0.113.9".parse().unwrap()), None)).unwrap();
    assert_eq!((u.iface.as_deref(), u.public_ip), (Some("ul-bare"), Some("203.0.113.9".parse().unwrap())));

    // Nothing matches: the error names every selector tried.
    let e = pick(sel(&["ul-missing", "ul-bare"], &["^nothing$"], Some("198.51.100.1"))).unwrap_err();
    assert!(matches!(e, UnderlayError::NoMatch(_)), "{e:?}");
    let msg = e.to_string();
    for part in
        ["--iface ul-missing", "--iface ul-bare", "--iface-regex ^nothing$", "--iface-can-reach 198.51.100.1"]
    {
        assert!(msg.contains(part), "{msg}");
    }
}
