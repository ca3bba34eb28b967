//! Result conversions between every pair of spec versions, checked against an independent
//! model of libcni's rules (`pkg/types/{020,040,100}`, reference §1.6).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cni_spec::{Dns, Interface, IpConfig, Route, SuccessResult, Version};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use serde_json::Value;

// ---------------------------------------------------------------- strategies

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn v4net() -> impl Strategy<Value = IpNet> {
    (any::<Ipv4Addr>(), 0u8..=32).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a, p).unwrap()))
}

fn v6net() -> impl Strategy<Value = IpNet> {
    (any::<Ipv6Addr>(), 0u8..=128).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a, p).unwrap()))
}

fn interface() -> impl Strategy<Value = Interface> {
    (
        "[a-z][a-z0-9]{0,14}",
        opt("([0-9a-f]{2}:){5}[0-9a-f]{2}"),
        opt(any::<u32>()),
        opt("/var/run/netns/[a-z]{1,8}"),
        opt("/run/[a-z]{1,8}\\.sock"),
        opt("0000:0[0-9]:00\\.[0-7]"),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
        })
}

/// An address of either family, with a gateway of the same family and an interface index
/// below `n_ifaces`.
fn ip_config(n_ifaces: usize) -> impl Strategy<Value = IpConfig> {
    let index = if n_ifaces == 0 { Just(None).boxed() } else { opt(0..n_ifaces) };
    let v4 = (v4net(), opt(any::<Ipv4Addr>().prop_map(IpAddr::V4)));
    let v6 = (v6net(), opt(any::<Ipv6Addr>().prop_map(IpAddr::V6)));
    (prop_oneof![v4.boxed(), v6.boxed()], index).prop_map(|((address, gateway), interface)| IpConfig {
        address,
        gateway,
        interface,
    })
}

fn route() -> impl Strategy<Value = Route> {
    let v4 = (v4net(), opt(any::<Ipv4Addr>().prop_map(IpAddr::V4)));
    let v6 = (v6net(), opt(any::<Ipv6Addr>().prop_map(IpAddr::V6)));
    (
        prop_oneof![v4.boxed(), v6.boxed()],
        opt(any::<u32>()),
        opt(any::<u32>()),
        opt(any::<u32>()),
        opt(any::<u32>()),
        opt(prop_oneof![Just(0u8), Just(253u8), Just(254u8), any::<u8>()]),
    )
        .prop_map(|((dst, gw), mtu, advmss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        })
}

fn dns() -> impl Strategy<Value = Dns> {
    (
        prop::collection::vec("[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}", 0..3),
        opt("[a-z]{1,8}\\.local"),
        prop::collection::vec("[a-z]{1,8}\\.example", 0..3),
        prop::collection::vec("(ndots|timeout|attempts):[0-9]", 0..3),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns { nameservers, domain, search, options })
}

fn success_result() -> impl Strategy<Value = SuccessResult> {
    prop::collection::vec(interface(), 0..4).prop_flat_map(|interfaces| {
        let n = interfaces.len();
        (
            Just(interfaces),
            prop::collection::vec(ip_config(n), 0..5),
            prop::collection::vec(route(), 0..5),
            dns(),
        )
            .prop_map(|(interfaces, ips, routes, dns)| SuccessResult {
                interfaces,
                ips,
                routes,
                dns,
            })
    })
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

// ---------------------------------------------------------------- the model

fn is_v4(net: &IpNet) -> bool {
    matches!(net, IpNet::V4(_))
}

/// What libcni's conversion of `r` (a result in the 1.1.0 model) to `v` keeps, or `None`
/// when the conversion must fail (0.1.0/0.2.0 without any address).
fn model(r: &SuccessResult, v: Version) -> Option<SuccessResult> {
    if v >= Version::V1_0_0 {
        return Some(r.clone());
    }
    if v >= Version::V0_3_0 {
        let mut out = r.clone();
        for i in &mut out.interfaces {
            i.mtu = None;
            i.socket_path = None;
            i.pci_id = None;
        }
        return Some(out);
    }
    let first = |want_v4: bool| r.ips.iter().find(|ip| is_v4(&ip.address) == want_v4);
    let (ip4, ip6) = (first(true), first(false));
    if ip4.is_none() && ip6.is_none() {
        return None;
    }
    let mut out = SuccessResult { dns: r.dns.clone(), ..Default::default() };
    for (ip, want_v4) in [(ip4, true), (ip6, false)] {
        let Some(ip) = ip else { continue };
        out.ips.push(IpConfig { address: ip.address, gateway: ip.gateway, interface: None });
        out.routes.extend(
            r.routes.iter().filter(|rt| is_v4(&rt.dst) == want_v4).map(|rt| Route::new(rt.dst, rt.gw)),
        );
    }
    Some(out)
}

/// Checks the wire shape of `json`, written in `v`.
fn check_shape(json: &Value, v: Version) -> Result<(), TestCaseError> {
    let obj = json.as_object().expect("a result is an object");
    prop_assert_eq!(obj.get("cniVersion").and_then(Value::as_str), Some(v.as_str()));
    if v.has_legacy_result() {
        for key in obj.keys() {
            prop_assert!(
                ["cniVersion", "ip4", "ip6", "dns"].contains(&key.as_str()),
                "unexpected key {} in a {} result",
                key,
                v
            );
        }
        for (key, family_v4) in [("ip4", true), ("ip6", false)] {
            if let Some(ip) = obj.get(key) {
                let addr: IpNet = ip["ip"].as_str().unwrap().parse().unwrap();
                prop_assert_eq!(is_v4(&addr), family_v4);
                for rt in ip.get("routes").and_then(Value::as_array).into_iter().flatten() {
                    let keys: Vec<&String> = rt.as_object().unwrap().keys().collect();
                    prop_assert!(keys.iter().all(|k| *k == "dst" || *k == "gw"), "route keys {:?}", keys);
                    let dst: IpNet = rt["dst"].as_str().unwrap().parse().unwrap();
                    prop_assert_eq!(is_v4(&dst), family_v4);
                }
            }
        }
        return Ok(());
    }
    prop_assert!(obj.get("ip4").is_none() && obj.get("ip6").is_none());
    for ip in obj.get("ips").and_then(Value::as_array).into_iter().flatten() {
        let addr: IpNet = ip["address"].as_str().unwrap().parse().unwrap();
        if v.has_ip_version() {
            let family = if is_v4(&addr) { "4" } else { "6" };
            prop_assert_eq!(ip.get("version").and_then(Value::as_str), Some(family));
        } else {
            prop_assert!(ip.get("version").is_none(), "1.x results have no ips[].version");
        }
    }
    if v < Version::V1_0_0 {
        for i in obj.get("interfaces").and_then(Value::as_array).into_iter().flatten() {
            for key in ["mtu", "socketPath", "pciID"] {
                prop_assert!(i.get(key).is_none(), "{} must not be in a {} interface", key, v);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// For every pair (from, to): a result as handed on by a plugin of `from`, converted to
    /// `to`, is what libcni's rules give.
    #[test]
    fn every_pair_of_versions_follows_libcni(r in success_result()) {
        for from in Version::ALL {
            let Some(expected_from) = model(&r, from) else {
                let err = r.converted(from).unwrap_err();
                prop_assert_eq!(err.code, 1);
                prop_assert!(err.msg.contains("no valid IP addresses"), "{}", err.msg);
                continue;
            };
            let at_from = r.converted(from).unwrap();
            prop_assert_eq!(&at_from, &expected_from, "{} -> {}", Version::V1_1_0, from);
            for to in Version::ALL {
                match model(&expected_from, to) {
                    None => {
                        prop_assert_eq!(at_from.to_value(to).unwrap_err().code, 1);
                    }
                    Some(expected) => {
                        let got = at_from.converted(to).unwrap();
                        prop_assert_eq!(&got, &expected, "{} -> {}", from, to);
                        check_shape(&at_from.to_value(to).unwrap(), to)?;
                    }
                }
            }
        }
    }

    /// 1.0.0 and 1.1.0 are the same structure: nothing is lost either way.
    #[test]
    fn one_zero_and_one_one_are_lossless(r in success_result()) {
        let via_10 = r.converted(Version::V1_0_0).unwrap();
        prop_assert_eq!(&via_10, &r);
        prop_assert_eq!(via_10.converted(Version::V1_1_0).unwrap(), r.clone());
        let mut j10 = r.to_value(Version::V1_0_0).unwrap();
        let j11 = r.to_value(Version::V1_1_0).unwrap();
        j10["cniVersion"] = "1.1.0".into();
        prop_assert_eq!(j10, j11);
    }

    /// 0.3.x/0.4.0 lose exactly the interface fields of 1.1; routes keep theirs.
    #[test]
    fn zero_three_and_zero_four_keep_routes_whole(r in success_result(), v in prop::sample::select(vec![Version::V0_3_0, Version::V0_3_1, Version::V0_4_0])) {
        let got = r.converted(v).unwrap();
        prop_assert_eq!(&got.routes, &r.routes);
        prop_assert_eq!(&got.ips, &r.ips);
        prop_assert_eq!(got.interfaces.len(), r.interfaces.len());
        for (g, o) in got.interfaces.iter().zip(&r.interfaces) {
            prop_assert_eq!((&g.name, &g.mac, &g.sandbox), (&o.name, &o.mac, &o.sandbox));
            prop_assert_eq!((g.mtu, &g.socket_path, &g.pci_id), (None, &None, &None));
        }
        let json = r.to_value(v).unwrap();
        for (ip, orig) in json["ips"].as_array().into_iter().flatten().zip(&r.ips) {
            prop_assert_eq!(ip["version"].as_str().unwrap(), if orig.is_v4() { "4" } else { "6" });
        }
    }

    /// Serialising and parsing back (through text, with a misleading default) is
    /// `converted`, and stable: converting again changes nothing.
    #[test]
    fn round_trips(r in success_result(), v in version(), other in version()) {
        let Ok(json) = r.to_value(v) else {
            prop_assert!(v.has_legacy_result() && r.ips.is_empty());
            return Ok(());
        };
        let converted = r.converted(v).unwrap();
        prop_assert_eq!(&SuccessResult::from_value(json.clone(), v).unwrap(), &converted);
        let text = r.to_json(v).unwrap();
        prop_assert_eq!(&SuccessResult::from_slice(text.as_bytes(), other).unwrap(), &converted);
        prop_assert_eq!(&converted.converted(v).unwrap(), &converted);
        prop_assert_eq!(converted.to_value(v).unwrap(), json);
    }

    /// A result's own `cniVersion` decides its shape; an empty or absent one means the
    /// default given by the caller (libcni's `fixupResultVersion`).
    #[test]
    fn own_version_decides_the_shape(r in success_result(), v in version()) {
        let Ok(json) = r.to_value(v) else { return Ok(()) };
        let converted = r.converted(v).unwrap();
        let mut absent = json.clone();
        absent.as_object_mut().unwrap().remove("cniVersion");
        prop_assert_eq!(&SuccessResult::from_value(absent.clone(), v).unwrap(), &converted);
        let mut empty = json.clone();
        empty["cniVersion"] = "".into();
        prop_assert_eq!(&SuccessResult::from_value(empty, v).unwrap(), &converted);
        let mut null = json.clone();
        null["cniVersion"] = Value::Null;
        prop_assert_eq!(&SuccessResult::from_value(null, v).unwrap(), &converted);
        // Without its version, a legacy result read as a rich one (or the reverse) has
        // none of its addresses: the shape really follows the version.
        let wrong = if v.has_legacy_result() { Version::V1_0_0 } else { Version::V0_2_0 };
        match SuccessResult::from_value(absent, wrong) {
            Ok(other) => prop_assert!(other.ips.is_empty() || converted.ips.is_empty()),
            Err(e) => prop_assert!(e.code == 6 || e.code == 7, "{}", e),
        }
    }
}

// ---------------------------------------------------------------- fixed cases

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dual_stack() -> SuccessResult {
    SuccessResult {
        interfaces: vec![
            Interface::new("cni0").with_mac("00:11:22:33:44:55"),
            Interface {
                mtu: Some(1450),
                socket_path: Some("/run/vhost.sock".into()),
                pci_id: Some("0000:03:00.1".into()),
                ..Interface::new("eth0").with_sandbox("/var/run/netns/blue")
            },
        ],
        ips: vec![
            IpConfig { interface: Some(1), ..IpConfig::new(net("fd00::5/64")).with_gateway(addr("fd00::1")) },
            IpConfig {
                interface: Some(1),
                ..IpConfig::new(net("10.1.0.5/16")).with_gateway(addr("10.1.0.1"))
            },
            IpConfig::new(net("10.2.0.5/16")),
            IpConfig::new(net("fd01::5/64")),
        ],
        routes: vec![
            Route { table: Some(100), scope: Some(253), ..Route::new(net("::/0"), Some(addr("fd00::1"))) },
            Route {
                mtu: Some(1400),
                advmss: Some(1360),
                priority: Some(5),
                ..Route::new(net("0.0.0.0/0"), None)
            },
            Route::new(net("192.168.0.0/16"), Some(addr("10.1.0.254"))),
        ],
        dns: Dns { nameservers: vec!["10.1.0.1".into()], ..Default::default() },
    }
}

#[test]
fn legacy_keeps_first_address_of_each_family_and_splits_routes() {
    let json = dual_stack().to_value(Version::V0_2_0).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1",
                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}]},
            "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
            "dns": {"nameservers": ["10.1.0.1"]}
        })
    );
    // Up again: ip4 first, then ip6, routes flattened in that order.
    let back = SuccessResult::from_value(json, Version::V1_1_0).unwrap();
    let addrs: Vec<String> = back.ips.iter().map(|i| i.address.to_string()).collect();
    assert_eq!(addrs, ["10.1.0.5/16", "fd00::5/64"]);
    let dsts: Vec<String> = back.routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["0.0.0.0/0", "192.168.0.0/16", "::/0"]);
    assert!(back.interfaces.is_empty());
    assert!(back.routes.iter().all(|r| r.mtu.is_none() && r.table.is_none() && r.scope.is_none()));
}

#[test]
fn legacy_drops_routes_of_a_family_without_address() {
    let mut r = dual_stack();
    r.ips.retain(IpConfig::is_v4);
    let json = r.to_value(Version::V0_1_0).unwrap();
    assert!(json.get("ip6").is_none());
    assert_eq!(json["ip4"]["routes"].as_array().unwrap().len(), 2);
    let mut r = dual_stack();
    r.ips.retain(|i| !i.is_v4());
    let json = r.to_value(Version::V0_2_0).unwrap();
    assert!(json.get("ip4").is_none());
    assert_eq!(json["ip6"]["routes"], serde_json::json!([{"dst": "::/0", "gw": "fd00::1"}]));
}

#[test]
fn legacy_without_any_address_is_code_1() {
    let mut r = dual_stack();
    r.ips.clear();
    for v in [Version::V0_1_0, Version::V0_2_0] {
        let e = r.to_value(v).unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("no valid IP addresses"), "{}", e.msg);
        assert_eq!(r.to_json(v).unwrap_err().code, 1);
        assert_eq!(r.converted(v).unwrap_err().code, 1);
    }
    // The rich versions have no such requirement.
    for v in &Version::ALL[2..] {
        assert!(r.to_value(*v).is_ok());
    }
}

#[test]
fn rich_old_versions_carry_ip_version_and_full_routes() {
    let json = dual_stack().to_value(Version::V0_4_0).unwrap();
    let versions: Vec<&str> =
        json["ips"].as_array().unwrap().iter().map(|i| i["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["6", "4", "4", "6"]);
    assert_eq!(json["routes"][0]["table"], 100);
    assert_eq!(json["routes"][0]["scope"], 253);
    assert_eq!(json["routes"][1]["advmss"], 1360);
    assert!(json["interfaces"][1].get("mtu").is_none());
    assert!(json["interfaces"][1].get("pciID").is_none());
    assert_eq!(json["interfaces"][1]["sandbox"], "/var/run/netns/blue");
    let json = dual_stack().to_value(Version::V1_0_0).unwrap();
    assert!(json["ips"][0].get("version").is_none());
    assert_eq!(json["interfaces"][1]["mtu"], 1450);
    assert_eq!(json["interfaces"][1]["socketPath"], "/run/vhost.sock");
    assert_eq!(json["interfaces"][1]["pciID"], "0000:03:00.1");
}

#[test]
fn wrong_or_unknown_result_versions_fail() {
    let bad = serde_json::json!({"cniVersion": "0.3.1", "ips": [{"version": "6", "address": "10.0.0.2/24"}]});
    assert_eq!(SuccessResult::from_value(bad, Version::V0_3_1).unwrap_err().code, 6);
    let bad = serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "interface": 0}]});
    assert_eq!(SuccessResult::from_value(bad, Version::V1_0_0).unwrap_err().code, 6);
    let unknown = serde_json::json!({"cniVersion": "0.5.0", "ips": []});
    assert_eq!(SuccessResult::from_value(unknown, Version::V1_0_0).unwrap_err().code, 1);
    let number = serde_json::json!({"cniVersion": 1, "ips": []});
    assert_ne!(SuccessResult::from_value(number, Version::V1_0_0).unwrap_err().code, 0);
    assert_eq!(SuccessResult::from_value(Value::Array(vec![]), Version::V1_0_0).unwrap_err().code, 6);
    let e =
        SuccessResult::from_slice(br#"{"cniVersion":"1.0.0","ips":[{"address":"nope"}]}"#, Version::V1_0_0)
            .unwrap_err();
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("ips[0]"), "{}", e.msg);
}
