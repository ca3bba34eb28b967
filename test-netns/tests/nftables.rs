//! nftables through netfilter netlink (`netkernel::nftables`), with `nft` as the oracle:
//! each table is made once by our messages and once by the `nft` script the code used to
//! run, in two private namespaces, and `nft` must list the two the same.

use std::net::IpAddr;

use ipnet::IpNet;
use netkernel::firewall::FirewallTable;
use netkernel::macspoof::MacSpoofTable;
use netkernel::masq::{MasqEntry, MasqTable};
use netkernel::portmap::{Element as PmElement, Forward, PortmapTable, Proto, Tagged};
use netkernel::strict::StrictRules;
use serde_json::Value;
use test_netns::{TestNs, require_root};

/// `nft -j list table …` without what differs between two identical tables (handles) and
/// the version banner.
fn listing(ns: &TestNs, family: &str, table: &str) -> Value {
    let out = ns.exec(&["nft", "-j", "list", "table", family, table]);
    let mut json: Value = serde_json::from_str(&out).expect("nft -j prints JSON");
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut json);
    json["nftables"].as_array_mut().expect("a list").retain(|o| o.get("metainfo").is_none());
    json
}

/// The plain listing (shows what JSON leaves out, e.g. `auto-merge`).
fn text(ns: &TestNs, family: &str, table: &str) -> String {
    ns.exec(&["nft", "list", "table", family, table])
}

fn oracle(ns: &TestNs, script: &str) {
    let script = script.to_string();
    ns.run(move || netkernel::nft::apply(&script, "oracle script")).expect("nft applies the oracle script");
}

/// The script `MasqTable::add` ran before it sent netlink messages itself.
fn masq_script(t: &str, group: &str, exempt: &[&str], sources: &[(&str, &str)]) -> String {
    let mut s = format!(
        "add table inet {t}
add map inet {t} src4 {{ type ipv4_addr : verdict; }}
add map inet {t} src6 {{ type ipv6_addr : verdict; }}
add set inet {t} {group}_d4 {{ type ipv4_addr; flags interval; auto-merge; }}
add set inet {t} {group}_d6 {{ type ipv6_addr; flags interval; auto-merge; }}
add chain inet {t} {group}
flush chain inet {t} {group}
add rule inet {t} {group} ip daddr @{group}_d4 return
add rule inet {t} {group} ip6 daddr @{group}_d6 return
add rule inet {t} {group} ip daddr 224.0.0.0/4 return
add rule inet {t} {group} ip6 daddr ff00::/8 return
add rule inet {t} {group} masquerade
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} postrouting
add rule inet {t} postrouting ip saddr vmap @src4
add rule inet {t} postrouting ip6 saddr vmap @src6
"
    );
    for net in exempt {
        let set = if net.contains(':') { "d6" } else { "d4" };
        s += &format!("add element inet {t} {group}_{set} {{ {net} }}\n");
    }
    for (ip, tag) in sources {
        let map = if ip.contains(':') { "src6" } else { "src4" };
        s += &format!("add element inet {t} {map} {{ {ip} comment \"{tag}\" : jump {group} }}\n");
    }
    s
}

#[test]
fn masquerade_table_is_what_the_nft_script_made() {
    require_root!();
    let (ours, theirs) = (TestNs::new("nftours"), TestNs::new("nfttheirs"));
    let t = "ferrocni_masqt";
    let exempt: Vec<IpNet> = vec!["10.88.0.0/16".parse().unwrap(), "fd00:88::/64".parse().unwrap()];
    let a: Vec<IpAddr> = vec!["10.88.0.5".parse().unwrap(), "fd00:88::5".parse().unwrap()];
    let b: Vec<IpAddr> = vec!["10.88.0.6".parse().unwrap()];
    ours.run(|| {
        let table = MasqTable::new(t).unwrap();
        // The first ADD builds everything; the second takes the elements-only path.
        table.add("n1", &exempt, &a, "net/c1/eth0").unwrap();
        table.add("n1", &exempt, &b, "net/c2/eth0").unwrap();
    });
    oracle(
        &theirs,
        &masq_script(
            t,
            "n1",
            &["10.88.0.0/16", "fd00:88::/64"],
            &[("10.88.0.5", "net/c1/eth0"), ("fd00:88::5", "net/c1/eth0")],
        ),
    );
    oracle(
        &theirs,
        &masq_script(t, "n1", &["10.88.0.0/16", "fd00:88::/64"], &[("10.88.0.6", "net/c2/eth0")]),
    );
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    assert_eq!(text(&ours, "inet", t), text(&theirs, "inet", t));

    // Reading back: entries with their tags and groups, and the exempt subnets.
    let (entries, exempted) = ours.run(|| {
        let table = MasqTable::new(t).unwrap();
        (table.entries().unwrap(), table.exempt("n1").unwrap())
    });
    let entry =
        |ip: &str, tag: &str| MasqEntry { ip: ip.parse().unwrap(), tag: tag.into(), group: "n1".into() };
    let mut want = vec![
        entry("10.88.0.5", "net/c1/eth0"),
        entry("10.88.0.6", "net/c2/eth0"),
        entry("fd00:88::5", "net/c1/eth0"),
    ];
    want.sort();
    assert_eq!(entries, want);
    assert_eq!(exempted, exempt);

    // Removal by tag, then by address; removing what is not there fails and changes nothing.
    let removed = ours.run(|| MasqTable::new(t).unwrap().remove_where(|tag| tag == "net/c1/eth0").unwrap());
    assert_eq!(removed, 2);
    theirs.exec(&["nft", "delete", "element", "inet", t, "src4", "{ 10.88.0.5 }"]);
    theirs.exec(&["nft", "delete", "element", "inet", t, "src6", "{ fd00:88::5 }"]);
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    let err = ours
        .run(|| {
            MasqTable::new(t)
                .unwrap()
                .remove_ips(&["10.88.0.6".parse().unwrap(), "10.88.0.99".parse().unwrap()])
        })
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert!(err.to_string().contains(&format!("elements of inet {t} src4")), "{err}");
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t), "a failed batch changed nothing");
    ours.run(|| MasqTable::new(t).unwrap().remove_ips(&["10.88.0.6".parse().unwrap()])).unwrap();
    assert!(ours.run(|| MasqTable::new(t).unwrap().entries().unwrap()).is_empty());
}

#[test]
fn masquerade_bad_input_is_refused_before_the_kernel() {
    require_root!();
    let ns = TestNs::new("nftbad");
    let errs = ns.run(|| {
        let bad_table = MasqTable::new("no;table").unwrap_err();
        let table = MasqTable::new("ferrocni_masqbad").unwrap();
        let ip: Vec<IpAddr> = vec!["10.1.0.2".parse().unwrap()];
        let bad_group = table.add("a b", &[], &ip, "t").unwrap_err();
        let long_tag = table.add("g", &[], &ip, &"x".repeat(200)).unwrap_err();
        (bad_table, bad_group, long_tag)
    });
    assert!(errs.0.to_string().contains("not an nft identifier"), "{}", errs.0);
    assert!(errs.1.to_string().contains("not an nft identifier"), "{}", errs.1);
    assert!(errs.2.to_string().contains("comment"), "{}", errs.2);
    assert!(!ns.try_exec(&["nft", "list", "table", "inet", "ferrocni_masqbad"]), "nothing was created");
}

#[test]
fn masquerade_table_missing_lists_empty() {
    require_root!();
    let ns = TestNs::new("nftempty");
    let (entries, exempt) = ns.run(|| {
        let t = MasqTable::new("ferrocni_none").unwrap();
        (t.entries().unwrap(), t.exempt("n1").unwrap())
    });
    assert!(entries.is_empty() && exempt.is_empty());
}

#[test]
fn mac_spoof_table_is_what_the_nft_script_made() {
    require_root!();
    let (ours, theirs) = (TestNs::new("nftmacours"), TestNs::new("nftmactheirs"));
    let t = "ferrocni_mact";
    let mac = netkernel::link::parse_mac("0a:58:0a:00:00:07").unwrap();
    ours.run(|| {
        let table = MacSpoofTable::new(t).unwrap();
        table.add("veth1234", mac, "net/c1/eth0").unwrap();
        table.add("veth5678", mac, "net/c2/eth0").unwrap();
    });
    let script = |port: &str, tag: &str| {
        format!(
            "add table bridge {t}
add chain bridge {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}
add rule bridge {t} prerouting iifname \"{port}\" ether saddr != 0a:58:0a:00:00:07 drop comment \"{tag}\"
"
        )
    };
    oracle(&theirs, &script("veth1234", "net/c1/eth0"));
    oracle(&theirs, &script("veth5678", "net/c2/eth0"));
    assert_eq!(listing(&ours, "bridge", t), listing(&theirs, "bridge", t));
    assert_eq!(text(&ours, "bridge", t), text(&theirs, "bridge", t));

    let tags = ours.run(|| MacSpoofTable::new(t).unwrap().tags().unwrap());
    assert_eq!(tags, ["net/c1/eth0", "net/c2/eth0"]);
    let removed =
        ours.run(|| MacSpoofTable::new(t).unwrap().remove_where(|tag| tag == "net/c1/eth0").unwrap());
    assert_eq!(removed, 1);
    let tags = ours.run(|| MacSpoofTable::new(t).unwrap().tags().unwrap());
    assert_eq!(tags, ["net/c2/eth0"]);
    let bad = ours.run(|| MacSpoofTable::new(t).unwrap().add("bad\"port", mac, "x")).unwrap_err();
    assert!(bad.to_string().contains("not an interface name"), "{bad}");
}

/// The script `FirewallTable::add` ran before it sent netlink messages itself.
fn firewall_script(t: &str, ips: &[&str], tag: &str, isolate: Option<(&str, &str)>) -> String {
    let mut s = format!(
        "add table inet {t}
add set inet {t} allowed4 {{ type ipv4_addr; }}
add set inet {t} allowed6 {{ type ipv6_addr; }}
add set inet {t} isolated {{ type ifname; }}
add map inet {t} isolation {{ type ifname : verdict; }}
add chain inet {t} admin
add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}
flush chain inet {t} forward
add rule inet {t} forward jump admin
add rule inet {t} forward iifname vmap @isolation
add rule inet {t} forward ct state established,related ip daddr @allowed4 accept
add rule inet {t} forward ct state established,related ip6 daddr @allowed6 accept
add rule inet {t} forward ip saddr @allowed4 accept
add rule inet {t} forward ip6 saddr @allowed6 accept
"
    );
    if let Some((bridge, chain)) = isolate {
        s += &format!(
            "add chain inet {t} {chain}
flush chain inet {t} {chain}
add rule inet {t} {chain} oifname \"{bridge}\" return
add rule inet {t} {chain} oifname @isolated drop
add element inet {t} isolated {{ \"{bridge}\" }}
add element inet {t} isolation {{ \"{bridge}\" : jump {chain} }}
"
        );
    }
    for ip in ips {
        let set = if ip.contains(':') { "allowed6" } else { "allowed4" };
        s += &format!("add element inet {t} {set} {{ {ip} comment \"{tag}\" }}\n");
    }
    s
}

#[test]
fn firewall_table_is_what_the_nft_script_made() {
    require_root!();
    let (ours, theirs) = (TestNs::new("nftfwours"), TestNs::new("nftfwtheirs"));
    let t = "ferrocni_fwt";
    ours.run(|| {
        let table = FirewallTable::new(t).unwrap();
        let a: Vec<IpAddr> = vec!["10.22.0.2".parse().unwrap(), "fd00:22::2".parse().unwrap()];
        table.add(&a, "net/c1/eth0", Some("cni0")).unwrap();
        table.add(&["10.22.0.3".parse().unwrap()], "net/c2/eth0", None).unwrap();
    });
    // The isolation chain's name is derived from the bridge's: take it from ours.
    let json = listing(&ours, "inet", t);
    let chain_of_cni0 = json["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|o| o["chain"]["name"].as_str().filter(|n| n.starts_with("iso_")).map(String::from))
        .expect("an isolation chain");
    oracle(
        &theirs,
        &firewall_script(t, &["10.22.0.2", "fd00:22::2"], "net/c1/eth0", Some(("cni0", &chain_of_cni0))),
    );
    oracle(&theirs, &firewall_script(t, &["10.22.0.3"], "net/c2/eth0", None));
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    assert_eq!(text(&ours, "inet", t), text(&theirs, "inet", t));

    let (allowed, isolated) = ours.run(|| {
        let table = FirewallTable::new(t).unwrap();
        (table.allowed().unwrap(), table.isolated().unwrap())
    });
    let ips: Vec<(String, String)> = allowed.iter().map(|a| (a.ip.to_string(), a.tag.clone())).collect();
    assert_eq!(
        ips,
        [
            ("10.22.0.2".to_string(), "net/c1/eth0".to_string()),
            ("10.22.0.3".into(), "net/c2/eth0".into()),
            ("fd00:22::2".into(), "net/c1/eth0".into())
        ]
    );
    assert_eq!(isolated, ["cni0"]);
    let removed =
        ours.run(|| FirewallTable::new(t).unwrap().remove_where(|tag| tag == "net/c1/eth0").unwrap());
    assert_eq!(removed, 2);
    theirs.exec(&["nft", "delete", "element", "inet", t, "allowed4", "{ 10.22.0.2 }"]);
    theirs.exec(&["nft", "delete", "element", "inet", t, "allowed6", "{ fd00:22::2 }"]);
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    let bad = ours.run(|| FirewallTable::new(t).unwrap().add(&[], "x", Some("bad\"br"))).unwrap_err();
    assert!(bad.to_string().contains("not an interface name"), "{bad}");
}

#[test]
fn node_rules_are_what_their_nft_script_makes() {
    use netkernel::nodenat::{FamilyNets, NodeRules};
    require_root!();
    let (ours, theirs) = (TestNs::new("nftnatours"), TestNs::new("nftnattheirs"));
    // Prefixes on and off byte boundaries, both families, both options.
    let rules = NodeRules {
        table: "ferrocni_natt".into(),
        v4: Some(FamilyNets {
            network: "10.244.0.0/14".parse().unwrap(),
            pods: "10.245.3.0/24".parse().unwrap(),
        }),
        v6: Some(FamilyNets {
            network: "fd00:244::/56".parse().unwrap(),
            pods: "fd00:244:0:3::/65".parse().unwrap(),
        }),
        masquerade: true,
        forward: true,
    };
    ours.run(|| rules.apply()).unwrap();
    oracle(&theirs, &rules.script());
    assert_eq!(listing(&ours, "inet", "ferrocni_natt"), listing(&theirs, "inet", "ferrocni_natt"));
    assert_eq!(text(&ours, "inet", "ferrocni_natt"), text(&theirs, "inet", "ferrocni_natt"));
    // What nft made is in place for ours, and applying ours again changes nothing.
    assert!(theirs.run(|| rules.in_place()).unwrap());
    theirs.run(|| rules.apply()).unwrap();
    assert_eq!(listing(&ours, "inet", "ferrocni_natt"), listing(&theirs, "inet", "ferrocni_natt"));
    ours.run(|| {
        NodeRules::remove("ferrocni_natt").unwrap();
        NodeRules::remove("ferrocni_natt").unwrap();
        assert!(NodeRules::remove("bad name").is_err());
    });
    assert!(!ours.try_exec(&["nft", "list", "table", "inet", "ferrocni_natt"]));
}

/// The script `PortmapTable::add` ran (the structure, then its elements) before it sent
/// netlink messages itself.
fn portmap_script(t: &str, elements: &str) -> String {
    format!(
        "add table inet {t}
add map inet {t} hostports4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}
add map inet {t} hostports6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}
add map inet {t} hostip4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}
add map inet {t} hostip6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}
add set inet {t} hairpin4 {{ type ipv4_addr . ipv4_addr; flags interval; }}
add set inet {t} hairpin6 {{ type ipv6_addr . ipv6_addr; flags interval; }}
add set inet {t} localnet4 {{ type ipv4_addr; }}
add chain inet {t} hostports
flush chain inet {t} hostports
add rule inet {t} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostip4
add rule inet {t} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6
add rule inet {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4
add rule inet {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6
add chain inet {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}
flush chain inet {t} prerouting
add rule inet {t} prerouting fib daddr type local jump hostports
add chain inet {t} output {{ type nat hook output priority -100; policy accept; }}
flush chain inet {t} output
add rule inet {t} output fib daddr type local jump hostports
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} postrouting
add rule inet {t} postrouting ct status dnat ip saddr . ip daddr @hairpin4 masquerade
add rule inet {t} postrouting ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade
add rule inet {t} postrouting ip saddr 127.0.0.0/8 ip daddr @localnet4 ct status dnat masquerade
add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}
flush chain inet {t} input
add rule inet {t} input iifname != \"lo\" ip daddr 127.0.0.0/8 ct status ! dnat drop
{elements}"
    )
}

fn forward(proto: Proto, host_ip: Option<&str>, host_port: u16, dest: &str, dest_port: u16) -> PmElement {
    PmElement::Forward(Forward {
        proto,
        host_ip: host_ip.map(|h| h.parse().unwrap()),
        host_port,
        dest: dest.parse().unwrap(),
        dest_port,
    })
}

/// One pod's elements (both families, every kind), and the same as `nft` script lines.
fn portmap_pod(n: u8, tag: &str) -> (Vec<PmElement>, String) {
    let (v4, v6) = (format!("10.88.0.{n}"), format!("fd00:88::{n}"));
    let port = 8000 + u16::from(n);
    let elements = vec![
        forward(Proto::Tcp, None, port, &v4, 80),
        forward(Proto::Udp, None, port, &v6, 53),
        forward(Proto::Sctp, Some("192.0.2.1"), port, &v4, 9),
        forward(Proto::Tcp, Some("2001:db8::1"), port, &v6, 443),
        PmElement::Hairpin { subnet: "10.88.0.0/16".parse().unwrap(), ip: v4.parse().unwrap() },
        PmElement::Hairpin { subnet: "fd00:88::/64".parse().unwrap(), ip: v6.parse().unwrap() },
        PmElement::Localnet(v4.parse().unwrap()),
    ];
    let c = format!("comment \"{tag}\"");
    let script = format!(
        "create element inet T hostports4 {{ tcp . {port} {c} : {v4} . 80 }}
create element inet T hostports6 {{ udp . {port} {c} : {v6} . 53 }}
create element inet T hostip4 {{ 192.0.2.1 . sctp . {port} {c} : {v4} . 9 }}
create element inet T hostip6 {{ 2001:db8::1 . tcp . {port} {c} : {v6} . 443 }}
add element inet T hairpin4 {{ 10.88.0.0/16 . {v4} {c} }}
add element inet T hairpin6 {{ fd00:88::/64 . {v6} {c} }}
add element inet T localnet4 {{ {v4} {c} }}
"
    );
    (elements, script)
}

#[test]
fn portmap_table_is_what_the_nft_script_made_and_reads_what_it_made() {
    require_root!();
    let (ours, theirs) = (TestNs::new("nftpmours"), TestNs::new("nftpmtheirs"));
    let t = "ferrocni_pmt";
    let (pod1, script1) = portmap_pod(5, "net/c1/eth0");
    let (pod2, script2) = portmap_pod(6, "net/c2/eth0");
    ours.run(|| {
        let table = PortmapTable::new(t).unwrap();
        // The first ADD builds everything; the second takes the elements-only path.
        table.add(&pod1, "net/c1/eth0").unwrap();
        table.add(&pod2, "net/c2/eth0").unwrap();
    });
    oracle(&theirs, &portmap_script(t, &script1.replace(" T ", &format!(" {t} "))));
    oracle(&theirs, &script2.replace(" T ", &format!(" {t} ")));
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    assert_eq!(text(&ours, "inet", t), text(&theirs, "inet", t));

    // Upgrade: what the `nft` script made (the previous version) is read back and removed
    // by tag, as a DEL of a pod attached before the upgrade does.
    let tagged = |pod: &[PmElement], tag: &str| {
        pod.iter().map(|e| Tagged { tag: tag.into(), element: e.clone() }).collect::<Vec<_>>()
    };
    let mut want = tagged(&pod1, "net/c1/eth0");
    want.extend(tagged(&pod2, "net/c2/eth0"));
    want.sort();
    assert_eq!(theirs.run(|| PortmapTable::new(t).unwrap().elements().unwrap()), want);
    assert_eq!(ours.run(|| PortmapTable::new(t).unwrap().elements().unwrap()), want);
    let removed =
        theirs.run(|| PortmapTable::new(t).unwrap().remove_where(|tag| tag == "net/c1/eth0").unwrap());
    assert_eq!(removed, 7);
    ours.run(|| PortmapTable::new(t).unwrap().remove(&pod1).unwrap());
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    let mut left = tagged(&pod2, "net/c2/eth0");
    left.sort();
    assert_eq!(theirs.run(|| PortmapTable::new(t).unwrap().elements().unwrap()), left);

    // A host port another tag holds: refused whole (the pod's other elements not added).
    let (clash, _) = portmap_pod(6, "net/c3/eth0");
    let err = ours.run(|| PortmapTable::new(t).unwrap().add(&clash, "net/c3/eth0")).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t), "a failed batch changed nothing");
    // Removing what is not there fails and changes nothing.
    let err = ours.run(|| PortmapTable::new(t).unwrap().remove(&pod1)).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT), "{err}");
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    assert_eq!(ours.run(|| PortmapTable::new(t).unwrap().remove_where(|_| true).unwrap()), 7);
    assert!(ours.run(|| PortmapTable::new(t).unwrap().elements().unwrap()).is_empty());
    // No table at all: nothing listed, nothing to remove.
    let none = ours.run(|| PortmapTable::new("ferrocni_pmnone").unwrap().remove_where(|_| true).unwrap());
    assert_eq!(none, 0);
    let bad = ours.run(|| PortmapTable::new(t).unwrap().add(&pod1, &"x".repeat(200))).unwrap_err();
    assert!(bad.to_string().contains("comment"), "{bad}");
}

#[test]
fn strict_table_is_what_its_nft_script_makes() {
    require_root!();
    let (ours, theirs) = (TestNs::new("nftstrours"), TestNs::new("nftstrtheirs"));
    let t = "ferrocni_strictt";
    let rules = StrictRules {
        plaintext_devices: vec!["flannel.1".into(), "flannel-v6.1".into()],
        tunnels: vec!["ferro-wg".into(), "ipsec0".into()],
        xfrm: true,
        // Prefixes on and off byte boundaries; an own subnet for IPv4 only.
        pod_networks: vec!["10.244.0.0/14".parse().unwrap(), "fd00:10::/56".parse().unwrap()],
        own_subnets: vec!["10.245.3.0/24".parse().unwrap()],
    };
    ours.run(|| netkernel::strict::ensure(t, &rules)).unwrap();
    oracle(&theirs, &netkernel::strict::script(t, &rules));
    assert_eq!(listing(&ours, "inet", t), listing(&theirs, "inet", t));
    assert_eq!(text(&ours, "inet", t), text(&theirs, "inet", t));
    // Replaced whole: fewer rules after, and what nft made is replaced the same way.
    let fewer = StrictRules { plaintext_devices: vec![], xfrm: false, ..rules };
    ours.run(|| netkernel::strict::ensure(t, &fewer)).unwrap();
    theirs.run(|| netkernel::strict::ensure(t, &fewer)).unwrap();
    let fresh = TestNs::new("nftstrfresh");
    oracle(&fresh, &netkernel::strict::script(t, &fewer));
    assert_eq!(listing(&ours, "inet", t), listing(&fresh, "inet", t));
    assert_eq!(listing(&theirs, "inet", t), listing(&fresh, "inet", t));
    assert!(!text(&ours, "inet", t).contains("flannel"));
    // A device name that is not one is refused before the kernel; nothing changes.
    let bad = StrictRules { tunnels: vec!["bad\"name".into()], ..fewer.clone() };
    let err = ours.run(|| netkernel::strict::ensure(t, &bad)).unwrap_err();
    assert!(err.to_string().contains("not an interface name"), "{err}");
    assert_eq!(listing(&ours, "inet", t), listing(&fresh, "inet", t));
    ours.run(|| {
        assert!(netkernel::strict::present(t).unwrap());
        netkernel::strict::remove(t).unwrap();
        netkernel::strict::remove(t).unwrap();
        assert!(!netkernel::strict::present(t).unwrap());
    });
}
