//! The `tuning` plugin executed as a runtime executes it, for every spec version, in
//! private namespaces: values set, checked, and put back by DEL; a refused ADD changes
//! nothing.

mod chain_util;

use std::path::Path;

use chain_util::{ALL_VERSIONS, Call, has_check, prev_result};
use serde_json::{Value, json};
use test_netns::{TestNs, require_root};

/// A pod with `eth0` (a veth whose peer stays in the pod too).
fn pod() -> TestNs {
    let pod = TestNs::new("tupod");
    pod.netlink().add_veth("eth0", "peer0", None, &Default::default()).unwrap();
    pod
}

/// What tuning may change, as it is now.
fn state(pod: &TestNs) -> Vec<String> {
    let l = pod.netlink().require_link("eth0").unwrap();
    let mut out = vec![format!(
        "mac={:?} mtu={} promisc={} allmulti={} txqlen={}",
        l.mac, l.mtu, l.promisc, l.allmulti, l.txqlen
    )];
    out.extend(pod.run(|| {
        ["net/ipv4/conf/eth0/forwarding", "net/core/somaxconn", "net/ipv4/conf/eth0/arp_notify"]
            .iter()
            .map(|k| {
                format!("{k}={}", std::fs::read_to_string(Path::new("/proc/sys").join(k)).unwrap().trim())
            })
            .collect::<Vec<_>>()
    }));
    out
}

fn conf(version: &str, data: &Path, pod: &TestNs) -> Value {
    json!({"cniVersion": version, "name": "tunet", "type": "tuning", "dataDir": data,
        "sysctl": {"net.ipv4.conf.IFNAME.forwarding": "1", "net.core.somaxconn": "512"},
        "mac": "0a:58:0a:01:02:03", "mtu": 1400, "promisc": true, "allmulti": true, "txQLen": 321,
        "prevResult": prev_result(version, "eth0", &pod.path(), &["10.1.0.5/24"])})
}

#[test]
fn tuning_every_version_sets_checks_and_restores() {
    require_root!();
    let host = TestNs::new("tuhost");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tuning");
    for v in ALL_VERSIONS {
        let pod = pod();
        let before = state(&pod);
        let c = conf(v, &data, &pod);
        let path = pod.path();
        let r = Call::new("tuning", "ADD", "c1", Some(&path)).ok(&host, &c);
        let after = state(&pod);
        assert_eq!(
            after,
            [
                "mac=Some([10, 88, 10, 1, 2, 3]) mtu=1400 promisc=true allmulti=true txqlen=321",
                "net/ipv4/conf/eth0/forwarding=1",
                "net/core/somaxconn=512",
                &before[3],
            ],
            "{v}"
        );
        if !matches!(v, "0.1.0" | "0.2.0") {
            assert_eq!(r["interfaces"][1]["mac"], "0a:58:0a:01:02:03", "{v}: {r}");
            assert_eq!(r["ips"], c["prevResult"]["ips"], "{v}: {r}");
        } else {
            assert_eq!(r["ip4"]["ip"], "10.1.0.5/24", "{v}: {r}");
        }
        assert!(data.join("c1_eth0.json").exists());
        if has_check(v) {
            Call::new("tuning", "CHECK", "c1", Some(&path)).ok(&host, &c);
            pod.netlink().set_mtu(pod.link_index("eth0"), 1300).unwrap();
            let e = Call::new("tuning", "CHECK", "c1", Some(&path)).err(&host, &c);
            assert!(e["msg"].as_str().unwrap().contains("MTU"), "{e}");
        }
        Call::new("tuning", "DEL", "c1", Some(&path)).ok(&host, &c);
        assert_eq!(state(&pod), before, "{v}: DEL puts everything back");
        assert!(!data.join("c1_eth0.json").exists());
        Call::new("tuning", "DEL", "c1", Some(&path)).ok(&host, &c);
    }
}

#[test]
fn tuning_del_without_the_namespace_forgets_the_attachment() {
    require_root!();
    let host = TestNs::new("tuhost");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tuning");
    let pod = pod();
    let c = conf("1.0.0", &data, &pod);
    let path = pod.path();
    Call::new("tuning", "ADD", "c2", Some(&path)).ok(&host, &c);
    assert!(data.join("c2_eth0.json").exists());
    drop(pod);
    Call::new("tuning", "DEL", "c2", Some(&path)).ok(&host, &c);
    Call::new("tuning", "DEL", "c2", None).ok(&host, &c);
    assert!(!data.join("c2_eth0.json").exists());
}

#[test]
fn tuning_refuses_bad_input_and_changes_nothing() {
    require_root!();
    let host = TestNs::new("tuhost");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tuning");
    let pod = pod();
    let before = state(&pod);
    let good = conf("1.0.0", &data, &pod);
    let path = pod.path();
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    for (name, c, code, names) in [
        ("not net", with("sysctl", json!({"kernel.hostname": "pwned"})), 7, "kernel.hostname"),
        ("dot-dot", with("sysctl", json!({"net/../kernel/hostname": "pwned"})), 7, "sysctl"),
        ("absolute", with("sysctl", json!({"/proc/sys/net/core/somaxconn": "1"})), 7, "sysctl"),
        ("IFNAME trick", with("sysctl", json!({"net.ipv4.conf.IFNAME.forwarding": "1"})), 4, "CNI_IFNAME"),
        ("missing key", with("sysctl", json!({"net.ipv4.no_such_thing": "1"})), 7, "net.ipv4.no_such_thing"),
        // The kernel refuses the second value after the first was written: both undone.
        (
            "kernel refuses a value",
            with("sysctl", json!({"net.core.somaxconn": "77", "net.ipv4.conf.IFNAME.forwarding": "x"})),
            999,
            "forwarding",
        ),
        ("MTU the kernel refuses", with("mtu", json!(65535)).clone(), 999, "MTU"),
        ("no prevResult", with("prevResult", Value::Null), 7, "prevResult"),
        ("multicast MAC", with("mac", json!("01:00:5e:00:00:01")), 7, "mac"),
    ] {
        let mut call = Call::new("tuning", "ADD", "c3", Some(&path));
        let renamed;
        if name == "IFNAME trick" {
            // An interface name that would walk out of conf/ is no interface.
            renamed = "..x";
            call.ifname = renamed;
        }
        let out = call.run(&host, &c);
        let e: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if name == "MTU the kernel refuses" && out.status.success() {
            // veth takes any MTU up to 65535 on this kernel: then DEL must undo it.
            Call::new("tuning", "DEL", "c3", Some(&path)).ok(&host, &c);
            assert_eq!(state(&pod), before, "{name}");
            continue;
        }
        assert!(!out.status.success(), "{name}: accepted: {e}");
        assert_eq!(e["code"], code, "{name}: {e}");
        assert!(e["msg"].as_str().unwrap().contains(names), "{name}: {e}");
        assert_eq!(state(&pod), before, "{name}: a refused ADD changed the container");
        assert!(!data.join("c3_eth0.json").exists(), "{name}: a refused ADD left its file");
    }
}
