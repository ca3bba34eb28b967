//! The `loopback` plugin executed as a runtime executes it, for every spec version, in
//! private namespaces.

mod chain_util;

use chain_util::{ALL_VERSIONS, Call, has_check};
use serde_json::json;
use test_netns::{TestNs, require_root};

fn lo(ns: &TestNs) -> (bool, Vec<String>) {
    let nl = ns.netlink();
    let lo = nl.require_link("lo").unwrap();
    let mut addrs: Vec<String> = nl.addresses(lo.index).unwrap().iter().map(|a| a.to_string()).collect();
    addrs.sort();
    (lo.up, addrs)
}

#[test]
fn loopback_every_version_add_check_del() {
    require_root!();
    let host = TestNs::new("lohost");
    for v in ALL_VERSIONS {
        let pod = TestNs::new("lopod");
        assert!(!lo(&pod).0, "a new namespace has lo down");
        let conf = json!({"cniVersion": v, "name": "lonet", "type": "loopback"});
        let path = pod.path();
        let r = Call::new("loopback", "ADD", "c1", Some(&path)).ok(&host, &conf);
        let (up, addrs) = lo(&pod);
        assert!(up, "{v}: lo is up");
        assert_eq!(addrs, ["127.0.0.1/8", "::1/128"], "{v}");
        assert_eq!(r["cniVersion"], v, "{v}: {r}");
        if matches!(v, "0.1.0" | "0.2.0") {
            assert_eq!(r["ip4"]["ip"], "127.0.0.1/8", "{v}: {r}");
            assert_eq!(r["ip6"]["ip"], "::1/128", "{v}: {r}");
        } else {
            assert_eq!(r["interfaces"][0]["name"], "lo", "{r}");
            assert_eq!(r["interfaces"][0]["mac"], "00:00:00:00:00:00", "{r}");
            assert_eq!(r["interfaces"][0]["sandbox"], path.to_str().unwrap(), "{r}");
            assert_eq!(r["ips"][0]["address"], "127.0.0.1/8", "{r}");
            assert_eq!(r["ips"][0]["interface"], 0, "{r}");
            assert_eq!(r["ips"][1]["address"], "::1/128", "{r}");
        }
        if has_check(v) {
            let mut c = conf.clone();
            c["prevResult"] = r.clone();
            Call::new("loopback", "CHECK", "c1", Some(&path)).ok(&host, &c);
        }
        Call::new("loopback", "DEL", "c1", Some(&path)).ok(&host, &conf);
        assert!(!lo(&pod).0, "{v}: DEL brings lo down");
        // DEL is idempotent, and needs no namespace.
        Call::new("loopback", "DEL", "c1", Some(&path)).ok(&host, &conf);
        Call::new("loopback", "DEL", "c1", None).ok(&host, &conf);
        if has_check(v) {
            let mut c = conf.clone();
            c["prevResult"] = r;
            let e = Call::new("loopback", "CHECK", "c1", Some(&path)).err(&host, &c);
            assert!(e["msg"].as_str().unwrap().contains("down"), "{e}");
        }
        drop(pod);
        // The namespace gone: DEL still succeeds.
        Call::new("loopback", "DEL", "c1", Some(&path)).ok(&host, &conf);
    }
}

#[test]
fn loopback_passes_a_previous_result_through() {
    require_root!();
    let host = TestNs::new("lohost");
    let pod = TestNs::new("lopod");
    let path = pod.path();
    let prev = chain_util::prev_result("1.0.0", "eth0", &path, &["10.1.0.5/24"]);
    let conf = json!({"cniVersion": "1.0.0", "name": "lonet", "type": "loopback", "prevResult": prev});
    let r = Call::new("loopback", "ADD", "c1", Some(&path)).ok(&host, &conf);
    assert_eq!(r["ips"], prev["ips"], "{r}");
    assert_eq!(r["interfaces"], prev["interfaces"], "{r}");
    assert!(lo(&pod).0);
}

#[test]
fn loopback_refuses_a_non_loopback_address_and_changes_nothing() {
    require_root!();
    let host = TestNs::new("lohost");
    let pod = TestNs::new("lopod");
    let nl = pod.netlink();
    let lo_index = nl.require_link("lo").unwrap().index;
    nl.add_address(lo_index, "10.9.9.9/32".parse().unwrap()).unwrap();
    let before = lo(&pod);
    let conf = json!({"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"});
    let path = pod.path();
    let e = Call::new("loopback", "ADD", "c1", Some(&path)).err(&host, &conf);
    assert_eq!(e["code"], 999, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("10.9.9.9"), "{e}");
    assert_eq!(lo(&pod), before);
    // Its own namespace is refused (code 4): it would take the node's lo down on DEL.
    let own = std::path::PathBuf::from("/proc/self/ns/net");
    let e = Call::new("loopback", "DEL", "c1", Some(&own)).err(&host, &conf);
    assert_eq!(e["code"], 4, "{e}");
}
