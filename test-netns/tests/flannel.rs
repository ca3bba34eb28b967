//! Migrating a node from flanneld to overlayd, end to end in namespaces: pods flannel's CNI
//! plugin attached (its saved delegate configs written as it writes them, the real bridge
//! and host-local plugins as its delegate) are released by the vxlan plugin's DEL.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use cni_spec::NetConfList;
use cni_spec::runtime::Attach;
use serde_json::json;
use test_netns::cluster::{Cluster, ClusterOptions, bin_dir};
use test_netns::{TestNs, ping, require_root};

/// Host-local's address files of network `net` in `ipam_dir` (the pods' addresses).
fn ipam_leases(ipam_dir: &std::path::Path, net: &str) -> Vec<String> {
    match std::fs::read_dir(ipam_dir.join(net)) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Writes `bytes` where flannel's plugin saves a pod's delegate config, as it does it
/// (directory 0700, file 0600).
fn flannel_save(dir: &std::path::Path, cid: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(cid)).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

#[test]
fn del_of_pods_flannel_attached_frees_their_addresses_through_flannels_saved_config() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let node = &c.nodes[0];
    let flannel_dir = node.dir.join("flannel-cni");
    let ipam_dir = node.dir.join("ipam");
    let subnet = c.pod_subnet(0).unwrap();
    // flannel's plugin's delegate config for kube-flannel.yml's conflist (network `cbr0`,
    // delegate {hairpinMode, isDefaultGateway}), with the node's subnet.env filled in. It
    // saves json.Marshal of a Go map: compact, keys sorted, which serde_json also writes.
    let conf = json!({
        "cniVersion": "0.3.1",
        "hairpinMode": true,
        "ipMasq": false,
        "ipam": {
            "dataDir": ipam_dir,
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "10.244.0.0/16"}],
            "type": "host-local"
        },
        "isDefaultGateway": true,
        "isGateway": true,
        "mtu": 1450,
        "name": "cbr0",
        "type": "bridge"
    });
    let bytes = serde_json::to_vec(&conf).unwrap();
    assert!(std::str::from_utf8(&bytes).unwrap().starts_with(r#"{"cniVersion":"0.3.1","hairpinMode":true,"#));

    // Two pods attached as flannel's plugin attaches them: the file saved, then the real
    // bridge plugin run as its delegate (through the runtime, with that config).
    let mut list_conf = conf.clone();
    let obj = list_conf.as_object_mut().unwrap();
    obj.remove("cniVersion");
    obj.remove("name");
    let list = NetConfList::parse(
        json!({"cniVersion": "0.3.1", "name": "cbr0", "plugins": [list_conf]}).to_string().as_bytes(),
    )
    .unwrap();
    let rt = c.runtime(0);
    let pods: Vec<(TestNs, String)> = (0..2)
        .map(|i| {
            let ns = TestNs::new(&format!("flpod{i}"));
            let cid = format!("f1a77e1{i}c0ffee{i}");
            flannel_save(&flannel_dir, &cid, &bytes);
            node.ns.run(|| rt.add(&list, &Attach::new(&cid, ns.path(), "eth0"))).unwrap();
            (ns, cid)
        })
        .collect();
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 2);
    // The conflist is ours now (type vxlan), under flannel's network name as the migration
    // guide says: host-local then knows flannel's pods' addresses and gives ours another.
    // They work on the node overlayd now runs (same bridge, same subnet).
    let vxlan_rt = c.runtime(0);
    let our_list = {
        let n = &c.nodes[0];
        let list = json!({"cniVersion": "1.1.0", "name": "cbr0", "plugins": [{
            "type": "vxlan",
            "socket": n.socket(),
            "dataDir": n.dir.join("vxlan"),
            "ipamDataDir": ipam_dir,
            "flannelDataDir": flannel_dir,
        }]});
        NetConfList::parse(list.to_string().as_bytes()).unwrap()
    };
    let ours_ns = TestNs::new("flours");
    let ours = Attach::new("node0-ours", ours_ns.path(), "eth0");
    let added = node.ns.run(|| vxlan_rt.add(&our_list, &ours)).unwrap();
    let ours_ip = added.ips[0].address.addr().to_string();
    let pod_ip = |ns: &TestNs| {
        let out = ns.exec(&["ip", "-4", "-o", "addr", "show", "eth0"]);
        out.split_whitespace().nth(3).unwrap().split('/').next().unwrap().to_string()
    };
    let flannel_pod_ip = pod_ip(&pods[0].0);
    assert!(![flannel_pod_ip.clone(), pod_ip(&pods[1].0)].contains(&ours_ip), "{ours_ip} handed out twice");
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 3);
    assert!(ping(&ours_ns, &flannel_pod_ip, 2), "our pod does not reach flannel's");

    // DEL of flannel's pods goes through flannel's saved config and host-local frees their
    // addresses.
    for (ns, cid) in &pods[..1] {
        node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid, ns.path(), "eth0"))).unwrap();
        assert!(!flannel_dir.join(cid).exists(), "flannel's file stays after a successful DEL");
        assert!(!ns.try_exec(&["ip", "link", "show", "eth0"]), "the pod's interface stays");
    }
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 2, "the address was not freed");
    // DEL again (runtimes repeat it): nothing left, success.
    let (ns, cid) = &pods[0];
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid, ns.path(), "eth0"))).unwrap();

    // A damaged file: DEL succeeds (as flannel's does), calls no delegate, keeps the file.
    let (ns1, cid1) = &pods[1];
    std::fs::write(flannel_dir.join(cid1), b"{not json").unwrap();
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid1, ns1.path(), "eth0"))).unwrap();
    assert!(flannel_dir.join(cid1).exists());
    assert!(ns1.try_exec(&["ip", "link", "show", "eth0"]), "a delegate ran on a damaged file");
    assert_eq!(ipam_leases(&ipam_dir, "cbr0").len(), 2);
    // Repaired, it goes.
    std::fs::write(flannel_dir.join(cid1), &bytes).unwrap();
    node.ns.run(|| vxlan_rt.del(&our_list, &Attach::new(cid1, ns1.path(), "eth0"))).unwrap();
    assert_eq!(ipam_leases(&ipam_dir, "cbr0"), vec![ours_ip.clone()], "only our pod's address is left");
    // Our own pod is untouched by all this and goes the usual way.
    node.ns.run(|| vxlan_rt.del(&our_list, &ours)).unwrap();
    assert_eq!(ipam_leases(&ipam_dir, "cbr0"), Vec::<String>::new());
}

/// flannel's leftovers as flanneld leaves them, in `ns`: its masquerade and forward chains
/// (with their jumps and comments) through iptables-nft and iptables-legacy, both
/// families, and its nftables-mode tables; beside them, rules that are not flannel's.
fn plant_flannel_leftovers(ns: &TestNs) {
    let net =
        [("iptables", "10.244.0.0/16", "10.244.3.0/24"), ("ip6tables", "fd00:10::/56", "fd00:10:0:3::/64")];
    for backend in ["nft", "legacy"] {
        for (tool, network, pods) in net {
            let t = format!("{tool}-{backend}");
            let run = |args: &str| {
                let mut argv = vec![t.as_str(), "-w"];
                argv.extend(args.split(' ').map(|a| a.trim_matches('\'')));
                ns.exec(&argv);
            };
            run("-t nat -N FLANNEL-POSTRTG");
            run("-t nat -A POSTROUTING -m comment --comment 'flanneld-masq' -j FLANNEL-POSTRTG");
            run(&format!("-t nat -A FLANNEL-POSTRTG -s {pods} -d {network} -j RETURN"));
            run(&format!("-t nat -A FLANNEL-POSTRTG -s {network} -j MASQUERADE"));
            run("-t filter -N FLANNEL-FWD");
            run("-t filter -A FORWARD -m comment --comment 'flanneld-forward' -j FLANNEL-FWD");
            run(&format!("-t filter -A FLANNEL-FWD -s {network} -j ACCEPT"));
            // Not flannel's: kept.
            run("-t nat -N KUBE-POSTROUTING");
            run("-t nat -A POSTROUTING -j KUBE-POSTROUTING");
            run(&format!("-t filter -A FORWARD -d {network} -j ACCEPT"));
        }
    }
    let nft = "table ip flannel-ipv4 {\n chain postrtg { type nat hook postrouting priority srcnat; \
               ip saddr 10.244.0.0/16 masquerade; }\n chain forward { type filter hook forward priority 0; \
               ip saddr 10.244.0.0/16 accept; }\n}\ntable ip6 flannel-ipv6 {\n chain postrtg { type nat \
               hook postrouting priority srcnat; ip6 saddr fd00:10::/56 masquerade; }\n}\n\
               table ip flannel {\n chain c {\n }\n}\n";
    let mut child = ns.command("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), nft.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "planting flannel's nft tables");
}

/// Everything `ns` has in iptables-nft, iptables-legacy (both families) and nftables'
/// table list, one rule per line.
fn firewall_state(ns: &TestNs) -> Vec<String> {
    let mut out = Vec::new();
    for tool in ["iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"] {
        for table in ["nat", "filter"] {
            out.extend(
                ns.exec(&[tool, "-w", "-t", table, "-S"]).lines().map(|l| format!("{tool} {table} {l}")),
            );
        }
    }
    out.extend(ns.exec(&["nft", "list", "tables"]).lines().map(str::to_string));
    out
}

#[test]
fn flannel_leftovers_are_removed_and_nothing_else() {
    require_root!();
    let ns = TestNs::new("flleft");
    plant_flannel_leftovers(&ns);
    let before = firewall_state(&ns);
    let removed = ns.run(netkernel::flannel::remove_leftovers).unwrap();
    let mut expected = vec!["nft table ip flannel-ipv4".to_string(), "nft table ip6 flannel-ipv6".into()];
    for tool in ["iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy"] {
        expected.push(format!("{tool} nat FLANNEL-POSTRTG"));
        expected.push(format!("{tool} filter FLANNEL-FWD"));
    }
    expected.sort();
    let mut got = removed.clone();
    got.sort();
    assert_eq!(got, expected);
    // What is left is exactly what was there minus flannel's lines.
    let after = firewall_state(&ns);
    let kept: Vec<String> = before
        .iter()
        .filter(|l| !l.contains("FLANNEL-") && !l.contains("flannel-ipv4") && !l.contains("flannel-ipv6"))
        .cloned()
        .collect();
    assert_eq!(after, kept);
    assert!(after.iter().any(|l| l == "table ip flannel"), "a table flannel never makes was removed");
    assert!(after.iter().filter(|l| l.contains("KUBE-POSTROUTING")).count() >= 8, "{after:#?}");
    // Again: nothing left to remove, nothing changed.
    assert_eq!(ns.run(netkernel::flannel::remove_leftovers).unwrap(), Vec::<String>::new());
    assert_eq!(firewall_state(&ns), after);
}

#[test]
fn overlayd_removes_flannel_leftovers_at_start_only_when_asked() {
    require_root!();
    let mut c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let ns = &c.nodes[0].ns;
    plant_flannel_leftovers(ns);
    let planted = firewall_state(ns);
    // Not asked: a restart leaves them.
    c.stop_daemon(0, libc::SIGTERM);
    c.start_daemon(0).unwrap();
    c.wait_ready(0).unwrap();
    assert!(firewall_state(&c.nodes[0].ns).iter().any(|l| l.contains("FLANNEL-POSTRTG")));
    // Asked: gone at start, logged, and the node's own masquerade table is still there.
    c.stop_daemon(0, libc::SIGTERM);
    c.set_daemon_args(0, &["--remove-flannel-leftovers"]);
    c.start_daemon(0).unwrap();
    c.wait_ready(0).unwrap();
    let ns = &c.nodes[0].ns;
    let after = firewall_state(ns);
    assert!(!after.iter().any(|l| l.contains("FLANNEL-") || l.contains("flannel-ipv")), "{after:#?}");
    let ours: Vec<&String> =
        planted.iter().filter(|l| l.starts_with("table ") && !l.contains("flannel")).collect();
    assert!(!ours.is_empty());
    for t in ours {
        assert!(after.contains(t), "{t} went");
    }
    let log = std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log")).unwrap();
    assert_eq!(log.matches("flannel leftover removed").count(), 10, "{log}");
    let pod = c.add_pod(0, "after").unwrap();
    c.del_pod(&pod).unwrap();
}
