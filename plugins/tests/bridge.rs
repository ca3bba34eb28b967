//! The `bridge` plugin, executed as a binary the way a runtime executes it, inside test
//! namespaces: one plays the host (bridge, veths, nftables), others the containers.

mod chain_util;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chain_util::executed;
use cni_spec::runtime::{Attach, Runtime};
use cni_spec::{NetConfList, Version};
use serde_json::{Value, json};
use test_netns::{TestNs, ping, require_root, veth_between};

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bridge")).parent().unwrap().to_path_buf()
}

/// A host namespace with an IPAM data dir, and the network config to run.
struct Host {
    ns: TestNs,
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Self {
        let ns = TestNs::new("brhost");
        ns.lo_up();
        Host { ns, dir: tempfile::tempdir().unwrap() }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// A bridge config with host-local on `subnet` (a list of range sets when several).
    fn conf(&self, version: &str, extra: Value, ranges: &[&str]) -> Value {
        let ranges: Vec<Value> = ranges.iter().map(|s| json!([{ "subnet": s }])).collect();
        let mut c = json!({
            "cniVersion": version,
            "name": "brnet",
            "type": "bridge",
            "bridge": "tbr0",
            "isGateway": true,
            "ipam": { "type": "host-local", "ranges": ranges, "dataDir": self.data_dir(),
                      "routes": [{"dst": "0.0.0.0/0"}] }
        });
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    /// Runs the bridge plugin binary in the host namespace.
    fn exec(&self, command: &str, conf: &Value, container_id: &str, netns: &str, ifname: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .ns
            .command(env!("CARGO_BIN_EXE_bridge"))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", bin_dir())
            .env_remove("CNI_ARGS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    fn ok(&self, command: &str, conf: &Value, cid: &str, pod: &TestNs) -> Value {
        let out = self.exec(command, conf, cid, pod.path().to_str().unwrap(), "eth0");
        assert!(
            out.status.success(),
            "{command} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).unwrap() }
    }

    fn leases(&self) -> Vec<String> {
        let dir = self.data_dir().join("brnet");
        let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
        let mut v: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect();
        v.sort();
        v
    }

    fn veths(&self) -> Vec<String> {
        self.ns.netlink().links().unwrap().into_iter().filter(|l| l.is("veth")).map(|l| l.name).collect()
    }

    /// The masquerade map elements, one `ip tag` line each.
    fn masq_entries(&self) -> String {
        let out =
            self.ns.command("nft").args(["-j", "list", "table", "inet", "ferrocni_bridge"]).output().unwrap();
        if !out.status.success() {
            return String::new();
        }
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut lines = Vec::new();
        for obj in json["nftables"].as_array().unwrap() {
            for pair in obj["map"]["elem"].as_array().into_iter().flatten() {
                lines.push(format!("{} {}", pair[0]["elem"]["val"], pair[0]["elem"]["comment"]));
            }
        }
        lines.join("\n")
    }
}

fn first_ip(result: &Value) -> String {
    let ip = result["ips"][0]["address"].as_str().or(result["ip4"]["ip"].as_str()).unwrap();
    ip.split('/').next().unwrap().to_string()
}

#[test]
fn add_check_del_every_version() {
    require_root!();
    let host = Host::new();
    for (i, v) in Version::ALL.iter().enumerate() {
        let pod = TestNs::new("brpod");
        let cid = format!("ver{i}");
        let conf = host.conf(v.as_str(), json!({}), &["10.61.0.0/24"]);
        let result = host.ok("ADD", &conf, &cid, &pod);
        assert_eq!(result["cniVersion"], v.as_str());
        let ip = first_ip(&result);
        if v.has_legacy_result() {
            assert!(result.get("interfaces").is_none(), "{result}");
            assert_eq!(result["ip4"]["gateway"], "10.61.0.1");
        } else {
            let names: Vec<&str> = result["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["name"].as_str().unwrap())
                .collect();
            assert_eq!(names[0], "tbr0");
            assert!(names[1].starts_with("veth"));
            assert_eq!(names[2], "eth0");
            assert_eq!(result["interfaces"][2]["sandbox"], pod.path().to_str().unwrap());
            assert_eq!(result["ips"][0]["interface"], 2);
            assert_eq!(result["ips"][0].get("version").is_some(), v.has_ip_version());
            // The MACs reported are the kernel's.
            let mac =
                pod.netlink().require_link("eth0").unwrap().mac.map(|m| netkernel::link::format_mac(&m));
            assert_eq!(result["interfaces"][2]["mac"].as_str(), mac.as_deref());
        }
        let addrs = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
        assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
        let routes = pod.exec(&["ip", "route"]);
        assert!(routes.contains("default via 10.61.0.1 dev eth0"), "{routes}");
        let br_addrs = host.ns.exec(&["ip", "-o", "addr", "show", "tbr0"]);
        assert!(br_addrs.contains("10.61.0.1/24"), "{br_addrs}");
        assert!(ping(&pod, "10.61.0.1", 2));
        if v.has_check() {
            let mut checked = conf.clone();
            checked["prevResult"] = result.clone();
            host.ok("CHECK", &checked, &cid, &pod);
        }
        host.ok("DEL", &conf, &cid, &pod);
        assert!(!pod.try_exec(&["ip", "link", "show", "eth0"]), "eth0 survived DEL ({v})");
        assert!(host.veths().is_empty(), "host veth survived DEL ({v})");
        assert!(host.leases().is_empty(), "lease survived DEL ({v}): {:?}", host.leases());
        // DEL again: still fine.
        host.ok("DEL", &conf, &cid, &pod);
    }
    // The bridge is never deleted.
    assert!(host.ns.netlink().link("tbr0").unwrap().is_some());
}

#[test]
fn dual_stack_and_three_subnets() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("brpod6");
    let conf = host.conf("1.1.0", json!({}), &["10.62.0.0/24", "fd00:62::/64"]);
    let result = host.ok("ADD", &conf, "ds", &pod);
    let ips: Vec<&str> =
        result["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
    assert_eq!(ips.len(), 2, "{result}");
    assert!(ips[1].starts_with("fd00:62::"));
    let addrs = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
    assert!(addrs.contains(ips[1]), "{addrs}");
    let br = host.ns.exec(&["ip", "-o", "addr", "show", "tbr0"]);
    assert!(br.contains("fd00:62::1/64") && br.contains("10.62.0.1/24"), "{br}");
    host.ok("DEL", &conf, "ds", &pod);

    // Three subnets (no gateway on the bridge: one bridge takes one IPv4 gateway, as in the
    // reference): fine from 0.3.0, refused by 0.2.0 (one address per family).
    let three = host.conf(
        "0.3.1",
        json!({"isGateway": false, "bridge": "tbr3"}),
        &["10.63.0.0/24", "10.64.0.0/24", "fd00:63::/64"],
    );
    let r = host.ok("ADD", &three, "three", &pod);
    assert_eq!(r["ips"].as_array().unwrap().len(), 3);
    host.ok("DEL", &three, "three", &pod);
    let old = host.conf(
        "0.2.0",
        json!({"isGateway": false, "bridge": "tbr3"}),
        &["10.63.0.0/24", "10.64.0.0/24", "fd00:63::/64"],
    );
    let out = host.exec("ADD", &old, "old", pod.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success());
    assert!(host.veths().is_empty(), "a failed ADD left a veth");
    assert!(host.leases().is_empty(), "a failed ADD left a lease: {:?}", host.leases());
}

#[test]
fn containers_reach_each_other_and_masquerade_to_the_outside() {
    require_root!();
    let host = Host::new();
    let (a, b) = (TestNs::new("bra"), TestNs::new("brb"));
    let conf = host.conf("1.0.0", json!({"ipMasq": true, "isDefaultGateway": true}), &["10.65.0.0/24"]);
    let ra = host.ok("ADD", &conf, "ca", &a);
    let rb = host.ok("ADD", &conf, "cb", &b);
    let (ipa, ipb) = (first_ip(&ra), first_ip(&rb));
    assert!(ping(&a, &ipb, 2) && ping(&b, &ipa, 2), "containers cannot reach each other");
    assert!(ping(&a, "10.65.0.1", 2));

    // The outside world: a namespace behind the host, with no route back to the pods.
    let outside = TestNs::new("outside");
    veth_between(&host.ns, "toout", &outside, "up");
    host.ns.add_address("toout", "203.0.113.1/24");
    outside.add_address("up", "203.0.113.2/24");
    let listener = outside.run(|| TcpListener::bind("203.0.113.2:0")).unwrap();
    let target = listener.local_addr().unwrap();
    let client = a.run(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)));
    let _client = client.expect("the pod reaches the outside only through masquerade");
    let (_conn, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "203.0.113.1", "the outside must see the host's address");
    // Rules do not grow with containers: two entries, one chain for the network.
    let entries = host.masq_entries();
    assert_eq!(entries.lines().count(), 2, "{entries}");
    assert!(entries.contains(&ipa) && entries.contains(&ipb));

    // CHECK sees a missing masquerade entry.
    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    host.ok("CHECK", &checked, "ca", &a);
    host.ns.exec(&["nft", "delete", "element", "inet", "ferrocni_bridge", "src4", &format!("{{ {ipa} }}")]);
    let out = host.exec("CHECK", &checked, "ca", a.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success(), "CHECK passed without the masquerade entry");

    host.ok("DEL", &conf, "ca", &a);
    host.ok("DEL", &conf, "cb", &b);
    assert_eq!(host.masq_entries(), "");
    assert!(host.leases().is_empty());
}

#[test]
fn del_leaves_no_trace_in_every_situation() {
    require_root!();
    let host = Host::new();
    let conf = host.conf("1.1.0", json!({"ipMasq": true}), &["10.66.0.0/24"]);

    // The netns is deleted before DEL (reboot, crashed sandbox): IPAM and masquerade still
    // go (the reference leaks the masquerade chain here: plugins#810).
    let gone = TestNs::new("gone");
    let gone_path = gone.path();
    host.ok("ADD", &conf, "gone", &gone);
    drop(gone);
    for netns in [gone_path.to_str().unwrap(), ""] {
        let out = host.exec("DEL", &conf, "gone", netns, "eth0");
        assert!(out.status.success(), "DEL with netns {netns:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(host.leases().is_empty());
    assert_eq!(host.masq_entries(), "");
    // The kernel tears a dead namespace down asynchronously; its veth goes with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !host.veths().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(host.veths().is_empty(), "the host veth must go with its netns");

    // The container address was removed by hand before DEL.
    let pod = TestNs::new("flushed");
    host.ok("ADD", &conf, "flushed", &pod);
    pod.exec(&["ip", "addr", "flush", "dev", "eth0"]);
    host.ok("DEL", &conf, "flushed", &pod);
    assert!(host.leases().is_empty() && host.veths().is_empty());
    assert_eq!(host.masq_entries(), "");
}

/// Found by the chaos soak: a sandbox's namespace is deleted before DEL while something
/// still holds it (orphaned TCP sockets retransmitting to a peer that is gone keep a
/// namespace alive for minutes). Its eth0 is then still plugged into the bridge with the
/// pod's address when DEL releases that address for the next pod: two interfaces answer
/// for one address on the bridge. DEL must unplug it: the host end named (with its MAC) in
/// prevResult is deleted, which takes the container end with it.
#[test]
fn del_unplugs_a_deleted_but_lingering_namespace() {
    require_root!();
    let host = Host::new();
    let mut conf = host.conf("1.1.0", json!({}), &["10.67.0.0/24"]);
    let zombie = TestNs::new("zombie");
    let zombie_path = zombie.path();
    let result = host.ok("ADD", &conf, "zombie", &zombie);
    // Held open, as a socket would hold it; the name goes.
    let held = netkernel::NetNs::open(&zombie_path).unwrap();
    drop(zombie);
    assert_eq!(host.veths().len(), 1, "the namespace lingers, so does its veth");
    conf["prevResult"] = result;
    let out = host.exec("DEL", &conf, "zombie", zombie_path.to_str().unwrap(), "eth0");
    assert!(out.status.success(), "DEL: {}", String::from_utf8_lossy(&out.stdout));
    assert!(host.leases().is_empty());
    assert!(host.veths().is_empty(), "DEL left the lingering sandbox plugged into the bridge");
    let links = netkernel::Netlink::in_netns(&held).unwrap().links().unwrap();
    assert!(links.iter().all(|l| l.name != "eth0"), "the lingering namespace kept its eth0");

    // A veth of another pod that merely took the same name later is not touched: the MAC
    // must match too.
    let other = TestNs::new("other");
    let r2 = host.ok("ADD", &conf_without_prev(&conf), "other", &other);
    let mut stale = conf.clone();
    let host_if = r2["interfaces"][1]["name"].as_str().unwrap().to_string();
    stale["prevResult"]["interfaces"][1]["name"] = json!(host_if);
    let out = host.exec("DEL", &stale, "zombie", zombie_path.to_str().unwrap(), "eth0");
    assert!(out.status.success());
    assert_eq!(host.veths(), vec![host_if], "a DEL unplugged another pod");
    host.ok("DEL", &conf_without_prev(&conf), "other", &other);
}

fn conf_without_prev(conf: &Value) -> Value {
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("prevResult");
    c
}

#[test]
fn failure_after_ipam_rolls_everything_back() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("rollback");
    // The bridge already has another address: without forceAddress the ADD fails after IPAM.
    let conf = host.conf("1.0.0", json!({"ipMasq": true}), &["10.67.0.0/24"]);
    host.ns
        .netlink()
        .ensure_bridge(&netkernel::link::BridgeSpec { name: "tbr0".into(), ..Default::default() })
        .unwrap();
    host.ns.add_address("tbr0", "10.99.99.1/24");
    let out = host.exec("ADD", &conf, "rb", pod.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("already has an IP address different"), "{err}");
    assert!(host.leases().is_empty(), "IPAM was not rolled back");
    assert!(host.veths().is_empty(), "the veth was not rolled back");
    assert!(!pod.try_exec(&["ip", "link", "show", "eth0"]));
    assert_eq!(host.masq_entries(), "");

    // forceAddress replaces the old address.
    let forced = host.conf("1.0.0", json!({"forceAddress": true}), &["10.67.0.0/24"]);
    host.ok("ADD", &forced, "rb", &pod);
    let br = host.ns.exec(&["ip", "-o", "addr", "show", "tbr0"]);
    assert!(br.contains("10.67.0.1/24") && !br.contains("10.99.99.1"), "{br}");
    host.ok("DEL", &forced, "rb", &pod);
}

#[test]
fn check_finds_what_is_missing() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("check");
    let conf = host.conf("1.0.0", json!({}), &["10.68.0.0/24"]);
    let result = host.ok("ADD", &conf, "chk", &pod);
    let mut checked = conf.clone();
    checked["prevResult"] = result.clone();
    host.ok("CHECK", &checked, "chk", &pod);
    // No prevResult: refused.
    let out = host.exec("CHECK", &conf, "chk", pod.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success());
    pod.exec(&["ip", "route", "del", "default"]);
    let out = host.exec("CHECK", &checked, "chk", pod.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success(), "CHECK passed without the default route");
    pod.exec(&["ip", "addr", "flush", "dev", "eth0"]);
    let out = host.exec("CHECK", &checked, "chk", pod.path().to_str().unwrap(), "eth0");
    assert!(!out.status.success(), "CHECK passed without the address");
    host.ok("DEL", &conf, "chk", &pod);
}

#[test]
fn layer2_and_port_options() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("l2");
    let conf = json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge","bridge":"tbr0",
        "mtu": 1400, "hairpinMode": true, "promiscMode": false, "ipam": {}});
    let result = host.ok("ADD", &conf, "l2", &pod);
    assert!(result.get("ips").is_none(), "{result}");
    let eth0 = pod.netlink().require_link("eth0").unwrap();
    assert!(eth0.up && eth0.mtu == 1400);
    let br = host.ns.netlink().require_link("tbr0").unwrap();
    assert_eq!(br.mtu, 1400);
    let veth = result["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(host.ns.netlink().require_link(veth).unwrap().mtu, 1400);
    let detail = host.ns.exec(&["ip", "-d", "link", "show", veth]);
    assert!(detail.contains("hairpin on"), "{detail}");
    host.ok("DEL", &conf, "l2", &pod);

    // A MAC from the runtime, port isolation, a container interface left down.
    let conf = json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge","bridge":"tbr0","portIsolation": true,
        "disableContainerInterface": true, "runtimeConfig": {"mac": "0a:58:0a:f4:00:09"}});
    let result = host.ok("ADD", &conf, "mac", &pod);
    assert_eq!(result["interfaces"][2]["mac"], "0a:58:0a:f4:00:09");
    assert!(!pod.netlink().require_link("eth0").unwrap().up);
    let veth = result["interfaces"][1]["name"].as_str().unwrap();
    assert!(host.ns.exec(&["ip", "-d", "link", "show", veth]).contains("isolated on"));
    host.ok("DEL", &conf, "mac", &pod);

    // A promiscuous bridge.
    let conf =
        json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge","bridge":"tbrp","promiscMode": true});
    host.ok("ADD", &conf, "pr", &pod);
    assert!(host.ns.netlink().require_link("tbrp").unwrap().promisc);
    host.ok("DEL", &conf, "pr", &pod);
}

/// Whether this kernel has bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING).
fn kernel_has_vlan_filtering() -> bool {
    let probe = TestNs::new("vlanprobe");
    probe
        .netlink()
        .ensure_bridge(&netkernel::link::BridgeSpec { name: "probe".into(), mtu: None, vlan_filtering: true })
        .is_ok()
}

#[test]
fn vlans_or_a_clear_unsupported_error() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("vlan");
    let access = json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge","bridge":"tbrv","vlan": 100});
    let trunk = json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge","bridge":"tbrv",
        "vlan": 100, "preserveDefaultVlan": true, "vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 202}]});
    if !kernel_has_vlan_filtering() {
        // Code 2, naming the field and its value, and nothing left behind.
        for (conf, field) in [
            (&access, "vlan: 100"),
            (
                &json!({"cniVersion":"1.0.0","name":"brnet","type":"bridge",
            "bridge":"tbrv","vlanTrunk":[{"id":7}]}),
                "vlanTrunk",
            ),
        ] {
            let out = host.exec("ADD", conf, "v", pod.path().to_str().unwrap(), "eth0");
            let err: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(err["code"], 2, "{err}");
            assert!(err["msg"].as_str().unwrap().contains(field), "{err}");
            assert!(host.veths().is_empty() && host.ns.netlink().link("tbrv").unwrap().is_none());
        }
        eprintln!(
            "note: this kernel has no bridge VLAN filtering; checked the unsupported-field error instead"
        );
        return;
    }
    let result = host.ok("ADD", &access, "v", &pod);
    let veth = result["interfaces"][1]["name"].as_str().unwrap();
    let vlans = host.ns.exec(&["bridge", "vlan", "show", "dev", veth]);
    assert!(vlans.contains("100 PVID") && !vlans.contains(" 1 PVID"), "{vlans}");
    host.ok("DEL", &access, "v", &pod);
    let result = host.ok("ADD", &trunk, "tr", &pod);
    let veth = result["interfaces"][1]["name"].as_str().unwrap();
    let vlans = host.ns.exec(&["bridge", "-j", "vlan", "show", "dev", veth]);
    for vid in ["101", "200", "202", "100", ":1,"] {
        assert!(vlans.contains(vid), "{vid} missing: {vlans}");
    }
    host.ok("DEL", &trunk, "tr", &pod);
}

#[test]
fn bad_config_changes_nothing() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("bad");
    for (extra, code, field) in [
        (json!({"vlan": 5000}), 7, "vlan"),
        (json!({"hairpinMode": true, "promiscMode": true}), 7, "hairpinMode"),
        (json!({"mtu": "big"}), 7, "mtu"),
        (json!({"bridge": "x/y"}), 7, "bridge"),
    ] {
        let conf = host.conf("1.0.0", extra.clone(), &["10.69.0.0/24"]);
        let out = host.exec("ADD", &conf, "bad", pod.path().to_str().unwrap(), "eth0");
        assert!(!out.status.success());
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{extra}: not JSON"));
        assert_eq!(err["code"], code, "{extra}: {err}");
        assert!(err["msg"].as_str().unwrap().contains(field), "{extra}: {err}");
    }
    let out =
        host.exec("ADD", &host.conf("1.0.0", json!({}), &["10.69.0.0/24"]), "bad", "/nonexistent/ns", "eth0");
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["code"], 4);
    assert!(err["msg"].as_str().unwrap().contains("CNI_NETNS"));
    assert!(host.ns.netlink().link("tbr0").unwrap().is_none(), "a bad ADD created the bridge");
    assert!(host.leases().is_empty() && host.veths().is_empty());
}

/// The bridge binary started for `command` on `pod` as a runtime starts it, `conf` written
/// to its stdin; its output is collected by `wait_with_output`.
fn spawn_bridge(host: &Host, command: &str, cid: &str, pod: &TestNs, conf: &Value) -> std::process::Child {
    spawn_under(host.ns.command(env!("CARGO_BIN_EXE_bridge")), command, cid, pod, conf)
}

/// [`spawn_bridge`] with the bridge run by `program` (e.g. under strace).
fn spawn_under(
    mut program: std::process::Command,
    command: &str,
    cid: &str,
    pod: &TestNs,
    conf: &Value,
) -> std::process::Child {
    use std::io::Write;
    let mut c = program
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    c
}

#[test]
fn fifty_concurrent_adds_then_dels_on_a_fresh_host() {
    require_root!();
    let host = Host::new();
    let pods: Vec<TestNs> = (0..50).map(|_| TestNs::new("conc")).collect();
    let conf = host.conf("1.0.0", json!({"ipMasq": true}), &["10.70.0.0/24"]);
    let run_all = |command: &str| -> Vec<Output> {
        let children: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| spawn_bridge(&host, command, &format!("c{i}"), pod, &conf))
            .collect();
        children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
    };
    let adds = run_all("ADD");
    let mut ips = Vec::new();
    for (i, out) in adds.iter().enumerate() {
        assert!(out.status.success(), "ADD {i}: {}", String::from_utf8_lossy(&out.stdout));
        ips.push(first_ip(&serde_json::from_slice(&out.stdout).unwrap()));
    }
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "duplicate addresses");
    assert_eq!(host.veths().len(), 50);
    assert_eq!(host.masq_entries().lines().count(), 50);
    for (i, out) in run_all("DEL").iter().enumerate() {
        assert!(out.status.success(), "DEL {i}: {}", String::from_utf8_lossy(&out.stdout));
    }
    assert!(host.veths().is_empty());
    assert!(host.leases().is_empty());
    assert_eq!(host.masq_entries(), "");
}

/// ADDs that fail after the bridge exists (the kernel refuses their route) remove it only
/// while no other attachment uses it, under the bridge's lock: run together with good ADDs
/// on a fresh host, every good ADD succeeds and keeps its port on the bridge.
#[test]
fn failing_adds_beside_good_ones_on_a_fresh_bridge_leave_the_good_ones_alone() {
    require_root!();
    let host = Host::new();
    let good = host.conf("1.0.0", json!({}), &["10.71.0.0/24"]);
    let mut bad = good.clone();
    bad["ipam"]["routes"] = json!([{"dst": "10.99.0.0/16", "gw": "10.71.0.1", "scope": 254}]);
    let pods: Vec<TestNs> = (0..16).map(|_| TestNs::new("race")).collect();
    let children: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            spawn_bridge(&host, "ADD", &format!("r{i}"), pod, if i % 2 == 0 { &good } else { &bad })
        })
        .collect();
    for (i, out) in children.into_iter().map(|c| c.wait_with_output().unwrap()).enumerate() {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), i % 2 == 0, "ADD {i}: {text}");
        if i % 2 == 1 {
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 999, "ADD {i}: {text}");
        }
    }
    let nl = host.ns.netlink();
    let br = nl.link("tbr0").unwrap().expect("the bridge was removed under the good ADDs").index;
    let ports = nl.links().unwrap().into_iter().filter(|l| l.is("veth") && l.master == Some(br)).count();
    assert_eq!((ports, host.veths().len(), host.leases().len()), (8, 8, 8));
    for (i, pod) in pods.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        host.ok("DEL", &good, &format!("r{i}"), pod);
    }
    assert!(host.veths().is_empty() && host.leases().is_empty());
}

#[test]
fn runtime_and_cnictl_drive_the_plugins() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("rt");
    let conf = host.conf("1.1.0", json!({"ipMasq": true}), &["10.71.0.0/24"]);
    let list_json = json!({"cniVersion": "1.1.0", "name": "brnet", "plugins": [conf]});
    let list = NetConfList::parse(list_json.to_string().as_bytes()).unwrap();
    let rt = Runtime::new(vec![bin_dir()]).with_cache_dir(host.dir.path().join("cache"));
    let att = Attach::new("rtpod", pod.path(), "eth0");
    let result = host.ns.run(|| rt.add(&list, &att)).unwrap();
    assert_eq!(result.interfaces.len(), 3);
    host.ns.run(|| rt.check(&list, &att)).unwrap();
    host.ns.run(|| rt.status(&list)).unwrap();
    // GC with nothing valid: the stale attachment is deleted, IPAM and masquerade freed.
    host.ns.run(|| rt.gc(&list, &[])).unwrap();
    assert!(host.leases().is_empty() && host.masq_entries().is_empty() && host.veths().is_empty());

    // The same through cnictl.
    let cnictl = cnictl_path();
    let confdir = host.dir.path().join("net.d");
    std::fs::create_dir_all(&confdir).unwrap();
    std::fs::write(confdir.join("10-brnet.conflist"), list_json.to_string()).unwrap();
    let run = |args: &[&str]| -> Output {
        host.ns
            .command(cnictl.to_str().unwrap())
            .args(args)
            .env("NETCONFPATH", &confdir)
            .env("CNI_PATH", bin_dir())
            .env("CNI_CACHE_DIR", host.dir.path().join("cache"))
            .env_remove("CNI_CONTAINERID")
            .output()
            .unwrap()
    };
    let pod_path = pod.path();
    let out = run(&["add", "brnet", pod_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(ping(&pod, "10.71.0.1", 2));
    assert_eq!(host.leases(), vec![first_ip(&result)]);
    assert!(run(&["check", "brnet", pod_path.to_str().unwrap()]).status.success());
    assert!(run(&["del", "brnet", pod_path.to_str().unwrap()]).status.success());
    assert!(host.leases().is_empty() && host.masq_entries().is_empty());
}

/// `cnictl` from the same target directory, built on demand.
fn cnictl_path() -> PathBuf {
    let path = bin_dir().join("cnictl");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status =
            Command::new(cargo).args(["build", "-q", "-p", "cni-spec", "--bin", "cnictl"]).status().unwrap();
        assert!(status.success(), "building cnictl");
    }
    path
}

#[test]
fn macspoofchk_drops_frames_with_another_source_mac() {
    require_root!();
    let host = Host::new();
    let pod = TestNs::new("spoof");
    let conf = host.conf("1.1.0", json!({"macspoofchk": true}), &["10.72.0.0/24"]);
    let result = host.ok("ADD", &conf, "sp", &pod);
    let mac = result["interfaces"][2]["mac"].as_str().unwrap().to_string();
    let rules = host.ns.exec(&["nft", "list", "table", "bridge", "ferrocni_macspoof"]);
    assert!(rules.contains(&format!("ether saddr != {mac} drop")), "{rules}");
    assert!(ping(&pod, "10.72.0.1", 2));
    let mut checked = conf.clone();
    checked["prevResult"] = result.clone();
    host.ok("CHECK", &checked, "sp", &pod);
    // The container changes its MAC: its frames no longer pass.
    pod.exec(&["ip", "neigh", "flush", "all"]);
    pod.exec(&["ip", "link", "set", "eth0", "address", "0a:58:00:00:00:99"]);
    assert!(!ping(&pod, "10.72.0.1", 1), "a spoofed source MAC got through");
    // GC with the attachment still valid keeps the rule; DEL removes it.
    let mut gc = json!({"cniVersion": "1.1.0", "name": "brnet", "type": "bridge", "bridge": "tbr0", "macspoofchk": true,
        "ipam": conf["ipam"].clone()});
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "sp", "ifname": "eth0"}]);
    let out = host.exec("GC", &gc, "", "", "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(host.ns.exec(&["nft", "list", "table", "bridge", "ferrocni_macspoof"]).contains("drop"));
    host.ok("DEL", &conf, "sp", &pod);
    let rules = host.ns.exec(&["nft", "list", "table", "bridge", "ferrocni_macspoof"]);
    assert!(!rules.contains("drop"), "{rules}");

    // GC without the attachment removes a leftover rule.
    host.ok("ADD", &conf, "sp2", &pod);
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = host.exec("GC", &gc, "", "", "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let rules = host.ns.exec(&["nft", "list", "table", "bridge", "ferrocni_macspoof"]);
    assert!(!rules.contains("drop"), "{rules}");
}

#[test]
fn ip_masq_and_mac_spoof_check_run_no_other_program() {
    require_root!();
    if !Path::new("/usr/bin/strace").exists() {
        test_netns::skip(module_path!(), "needs strace (scripts/deps.sh installs it)");
        return;
    }
    let host = Host::new();
    let pod = TestNs::new("brstrace");
    let conf = host.conf("1.0.0", json!({"ipMasq": true, "macspoofchk": true}), &["10.67.0.0/24"]);
    let log = host.dir.path().join("strace.log");
    for command in ["ADD", "DEL"] {
        let mut strace = host.ns.command("/usr/bin/strace");
        strace.args(["-f", "-qq", "-e", "trace=execve", "-o"]).arg(&log).arg(env!("CARGO_BIN_EXE_bridge"));
        let out = spawn_under(strace, command, "strace1", &pod, &conf).wait_with_output().unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        let programs = executed(&log);
        let names: Vec<&str> = programs.iter().map(|p| p.rsplit('/').next().unwrap()).collect();
        assert_eq!(names.first(), Some(&"bridge"), "{programs:?}");
        assert!(names.iter().all(|n| *n == "bridge" || *n == "host-local"), "{command} ran {programs:?}");
        assert!(names.contains(&"host-local"), "the IPAM plugin is delegated to: {programs:?}");
        if command == "ADD" {
            assert!(!host.masq_entries().is_empty(), "ADD masqueraded the container");
        }
    }
    assert!(host.masq_entries().is_empty(), "DEL removed the masquerade entries");
}
