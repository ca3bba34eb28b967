//! The `firewall` plugin executed as a runtime executes it, for every spec version, in
//! private namespaces: entries added, checked, removed by DEL (also without the netns) and
//! GC; `same-bridge` isolation measured with traffic between two bridges.

mod chain_util;

use std::time::Duration;

use chain_util::{ALL_VERSIONS, Call, has_check, prev_result};
use serde_json::{Value, json};
use test_netns::{EchoServer, TestNs, require_root, tcp_echo};

fn allowed(host: &TestNs) -> String {
    let out = host.command("nft").args(["list", "table", "inet", "ferrocni_firewall"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn firewall_every_version_add_check_del_gc() {
    require_root!();
    let host = TestNs::new("fwhost");
    let pod = TestNs::new("fwpod");
    let path = pod.path();
    for v in ALL_VERSIONS {
        let conf = json!({"cniVersion": v, "name": "fwnet", "type": "firewall",
            "prevResult": prev_result(v, "eth0", &path, &["10.66.0.5/24", "fd00:66::5/64"])});
        let r = Call::new("firewall", "ADD", "c1", Some(&path)).ok(&host, &conf);
        assert_eq!(r["cniVersion"], v);
        let t = allowed(&host);
        assert!(t.contains("10.66.0.5 comment \"fwnet/c1/eth0\""), "{v}: {t}");
        assert!(t.contains("fd00:66::5 comment \"fwnet/c1/eth0\""), "{v}: {t}");
        if has_check(v) {
            Call::new("firewall", "CHECK", "c1", Some(&path)).ok(&host, &conf);
        }
        Call::new("firewall", "DEL", "c1", None).ok(&host, &conf);
        assert!(!allowed(&host).contains("fwnet/c1"), "{v}");
        Call::new("firewall", "DEL", "c1", Some(&path)).ok(&host, &conf);
        if has_check(v) {
            Call::new("firewall", "CHECK", "c1", Some(&path)).err(&host, &conf);
        }
    }
    for cid in ["keep", "stale"] {
        let conf = json!({"cniVersion": "1.1.0", "name": "fwnet", "type": "firewall",
            "prevResult": prev_result("1.1.0", "eth0", &path, &[if cid == "keep" { "10.66.0.6/24" } else { "10.66.0.7/24" }])});
        Call::new("firewall", "ADD", cid, Some(&path)).ok(&host, &conf);
    }
    let gc = json!({"cniVersion": "1.1.0", "name": "fwnet", "type": "firewall",
        "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]});
    Call::new("firewall", "GC", "", None).ok(&host, &gc);
    let t = allowed(&host);
    assert!(t.contains("fwnet/keep/eth0") && !t.contains("fwnet/stale/eth0"), "{t}");
    // firewalld is not provided: code 2 naming the field, nothing made.
    let conf = json!({"cniVersion": "1.0.0", "name": "fwnet", "type": "firewall", "backend": "firewalld",
        "prevResult": prev_result("1.0.0", "eth0", &path, &["10.66.0.9/24"])});
    let e = Call::new("firewall", "ADD", "c9", Some(&path)).err(&host, &conf);
    assert_eq!(e["code"], 2, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("backend"), "{e}");
}

/// Two bridges on one node, a pod on each, attached by bridge + firewall chains.
#[test]
fn same_bridge_policy_isolates_bridges() {
    require_root!();
    let node = TestNs::new("fwnode");
    node.lo_up();
    let tmp = tempfile::tempdir().unwrap();
    let mut pods = Vec::new();
    for (i, policy) in [(1, "same-bridge"), (2, "same-bridge")] {
        let pod = TestNs::new("fwpod");
        let path = pod.path();
        let br = json!({"cniVersion": "1.0.0", "name": format!("fw{i}"), "type": "bridge",
            "bridge": format!("fwbr{i}"), "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": tmp.path(), "ranges": [[{"subnet": format!("10.6{i}.0.0/24")}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}});
        let r = Call::new("bridge", "ADD", "c", Some(&path)).ok(&node, &br);
        let fw = json!({"cniVersion": "1.0.0", "name": format!("fw{i}"), "type": "firewall",
            "ingressPolicy": policy, "prevResult": r});
        Call::new("firewall", "ADD", "c", Some(&path)).ok(&node, &fw);
        Call::new("firewall", "CHECK", "c", Some(&path)).ok(&node, &fw);
        pods.push((pod, br, fw));
    }
    let _s1 = EchoServer::start(&pods[0].0, "10.61.0.2:7000");
    let _s2 = EchoServer::start(&pods[1].0, "10.62.0.2:7000");
    let t = Duration::from_secs(2);
    assert!(
        tcp_echo(&pods[1].0, "10.61.0.2:7000".parse().unwrap(), 100, t).is_err(),
        "bridge 2 reached bridge 1"
    );
    assert!(
        tcp_echo(&pods[0].0, "10.62.0.2:7000".parse().unwrap(), 100, t).is_err(),
        "bridge 1 reached bridge 2"
    );
    assert!(tcp_echo(&node, "10.61.0.2:7000".parse().unwrap(), 100, t).is_ok(), "the node lost its pod");
    for (pod, br, fw) in &pods {
        let path = pod.path();
        Call::new("firewall", "DEL", "c", Some(&path)).ok(&node, fw);
        Call::new("bridge", "DEL", "c", Some(&path)).ok(&node, br);
    }
    let left: Value = json!(allowed(&node));
    assert!(!left.as_str().unwrap().contains("/c/eth0"), "{left}");
}
