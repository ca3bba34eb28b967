//! A node's own store credentials used against a running encrypted cluster (docs/security.md),
//! each case on the embedded store and on a real etcd with authentication on and the
//! documented roles, the writer being the cluster's last node with its own etcd user:
//! hostile values, families and addresses, keys without a store lease, an overwrite of
//! another node's lease, a write of the config; a lease that copies another node's WireGuard
//! key, or claims another node's IPv6 subnet beside a fresh IPv4 one; and the operator
//! switching `RequireSignedLeases` on and off live. The older lease keeps what it holds; what
//! is refused is logged and counted (`overlayd_invalid_leases_total`), and no other node's
//! datapath (routes, FDB, the tunnel's peers) or encryption moves. The unit tests in
//! overlayd's watcher.rs and validate.rs cover the rules; these show them end to end.

mod common;

use std::time::Duration;

use common::{put_leases, with_store};
use serde_json::Value;
use test_netns::cluster::{Cluster, ClusterOptions, ClusterPod, bin_dir, http_get, wait_for};
use test_netns::{ping, require_root};

/// Runs a case (a function of the cluster's options) twice: on the embedded store, and on
/// etcd with the documented roles; the tests are `<case>::embedded` and
/// `<case>::etcd_with_roles`.
macro_rules! on_both_stores {
    ($case:ident, $opts:expr) => {
        mod $case {
            use super::*;

            #[test]
            fn embedded() {
                require_root!();
                super::$case($opts);
            }

            #[test]
            fn etcd_with_roles() {
                require_root!();
                super::$case($opts.etcd_with_roles());
            }
        }
    };
}

const DEVICE: &str = "ferro-wg";
/// The planted lease's VTEP MAC: found in no FDB or neighbour table unless it got through.
const ATTACKER_MAC: &str = "0e:a7:7a:c4:00:01";

fn via_tunnel(c: &Cluster, i: usize, j: usize) -> bool {
    let subnet = c.pod_subnet(j).unwrap();
    c.nodes[i].ns.exec(&["ip", "route", "show", &subnet]).contains(&format!("dev {DEVICE}"))
}

fn invalid_leases(c: &Cluster, i: usize) -> u64 {
    let (_, m) = http_get(&c.nodes[i].socket(), "/metrics").expect("metrics");
    m.lines()
        .find_map(|l| l.strip_prefix("overlayd_invalid_leases_total "))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Node `i`'s own lease as its API reports it (`key`, `subnet`, `ipv6_subnet`, ...).
fn own_lease(c: &Cluster, i: usize) -> Value {
    serde_json::from_str(&c.ctl(i, &["--json", "lease"])).unwrap()
}

/// Node `i`'s lease value as stored.
fn stored_lease(c: &Cluster, i: usize) -> Value {
    let key = own_lease(c, i)["key"].as_str().unwrap().replace('/', "-");
    common::with_store(c, async |store| {
        let kv = store.get(&format!("/coreos.com/network/subnets/{key}")).await.unwrap().unwrap();
        serde_json::from_slice(&kv.value).unwrap()
    })
}

/// A lease value as another node could write it: the victim's fields, but no node ID,
/// identity or signature, its own public IP and VTEP MAC.
fn attacker_value(mut v: Value) -> Value {
    let o = v.as_object_mut().unwrap();
    for f in ["NodeID", "Identity", "Signature"] {
        o.remove(f);
    }
    o.insert("PublicIP".into(), "198.18.0.240".into());
    for data in ["BackendData", "BackendV6Data"] {
        if let Some(d) = o.get_mut(data).and_then(Value::as_object_mut) {
            d.insert("VtepMAC".into(), ATTACKER_MAC.into());
        }
    }
    v
}

/// The tunnel peers node `i` reports: (lease, public key, subnets).
fn tunnel_peers(c: &Cluster, i: usize) -> Vec<(String, String, Vec<String>)> {
    let st = c.encryption_status(i);
    st["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let subnets = p["subnets"].as_array().into_iter().flatten();
            (
                p["lease"].as_str().unwrap_or_default().to_string(),
                p["public_key"].as_str().unwrap_or_default().to_string(),
                subnets.map(|s| s.as_str().unwrap_or_default().to_string()).collect(),
            )
        })
        .collect()
}

fn refused_in_log(c: &Cluster, i: usize, planted: &str, why: &str) -> bool {
    std::fs::read_to_string(c.nodes[i].dir.join("overlayd.log"))
        .unwrap()
        .lines()
        .any(|l| l.contains("WARN") && l.contains("lease refused") && l.contains(planted) && l.contains(why))
}

/// Node `i`'s routes, overlay neighbours and overlay FDB entries, sorted: the kernel lists
/// entries in the order they were made, and an entry removed and made again is the same.
fn datapath(c: &Cluster, i: usize) -> String {
    let ns = &c.nodes[i].ns;
    let mut lines: Vec<String> = Vec::new();
    for args in [
        &["ip", "-4", "route"][..],
        &["ip", "-6", "route"],
        &["ip", "neigh", "show", "dev", "flannel.1", "nud", "permanent"],
    ] {
        lines.extend(ns.exec(args).lines().map(String::from));
    }
    // The overlay devices' FDB (the pods' bridge learns and forgets on its own).
    let fdb = ns.exec(&["bridge", "fdb", "show"]);
    lines.extend(fdb.lines().filter(|l| l.contains("dev flannel")).map(String::from));
    lines.sort();
    lines.join("\n")
}

/// Everything the cluster's encryption is, as node `i` reports it (not the live counters).
fn encryption(c: &Cluster, i: usize) -> Value {
    let st = c.encryption_status(i);
    let mut peers = tunnel_peers(c, i);
    peers.sort();
    serde_json::json!({
        "enabled": st["enabled"], "type": st["type"], "strict": st["strict"],
        "key_generation": st["key_generation"], "preshared_key": st["preshared_key"],
        "public_key": st["public_key"], "peers": peers,
    })
}

fn every_pod_reaches_every_other(pods: &[ClusterPod]) {
    for (x, a) in pods.iter().enumerate() {
        for (y, b) in pods.iter().enumerate().filter(|&(y, _)| y != x) {
            assert!(ping(&a.ns, &b.ip, 2), "pod on node{x} -> pod on node{y}");
        }
    }
}

fn three_nodes() -> ClusterOptions {
    ClusterOptions::new(3, bin_dir())
}

/// Three nodes, a pod on each, encryption on, every session established.
fn encrypted_cluster(
    opts: ClusterOptions,
    pod_prefix: &str,
) -> (Cluster, Vec<test_netns::cluster::ClusterPod>) {
    let c = Cluster::start(opts).unwrap();
    let pods: Vec<_> = (0..3).map(|i| c.add_pod(i, &format!("{pod_prefix}{i}")).unwrap()).collect();
    c.ctl(0, &["encryption", "enable"]);
    c.wait_all_pairs(&[0, 1, 2], "every node on the tunnel", Duration::from_secs(20), via_tunnel);
    wait_for(Duration::from_secs(20), "every session established", || {
        (0..3).all(|i| {
            let peers = c.encryption_status(i)["peers"].as_array().cloned().unwrap_or_default();
            peers.len() == 2 && peers.iter().all(|p| p["established"] == true)
        })
    })
    .unwrap();
    (c, pods)
}

/// What the writer (node 2, with its own store credentials) tries, and what must hold
/// afterwards on the other two: see the module's comment. On the embedded store whoever
/// can write the file is root, the operator, so the config write is a node's only on etcd.
fn hostile_writes_by_a_node(opts: ClusterOptions) {
    let (c, pods) = encrypted_cluster(opts, "hw");
    let victims = [0, 1];
    let own0 = c.pod_subnet(0).unwrap().replace('/', "-");
    std::thread::sleep(Duration::from_secs(1));
    let paths: Vec<String> = victims.iter().map(|&i| datapath(&c, i)).collect();
    let tunnels: Vec<Value> = victims.iter().map(|&i| encryption(&c, i)).collect();
    let counted: Vec<u64> = victims.iter().map(|&i| invalid_leases(&c, i)).collect();

    if c.options().etcd_auth {
        let none = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"},"Encryption":{"Type":"none"}}"#;
        let put = with_store(&c, async |s| s.put("/coreos.com/network/config", none.as_bytes()).await);
        let e = put.expect_err("a node's credentials wrote the config");
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    let mac = format!(r#""BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{ATTACKER_MAC}"}}"#);
    let lease = |ip: &str| format!(r#"{{"PublicIP":"{ip}",{mac}}}"#);
    // (key, value, why each node refuses it)
    let planted: Vec<(&str, String, &str)> = vec![
        ("10.244.200.0-24", "not json".into(), "not lease JSON"),
        ("10.99.0.0-24", lease("198.18.0.77"), "inside 10.244.0.0/16"),
        ("10.244.201.0-26", lease("198.18.0.78"), "is not a /24"),
        (
            "10.244.202.0-24",
            r#"{"PublicIP":"198.18.0.80","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"ff:ff:ff:ff:ff:ff"}}"#.into(),
            "unicast",
        ),
        ("10.244.203.0-24&fd00::-64", lease("198.18.0.82"), "the network has no IPv6"),
        (
            "10.244.204.0-24",
            format!(r#"{{"PublicIP":"198.18.0.84","PublicIPv6":"::ffff:127.0.0.1",{mac}}}"#),
            "IPv4 address in IPv6 form",
        ),
        ("10.244.205.0-24", lease("169.254.169.254"), "link-local"),
        ("10.244.206.0-24", lease("224.0.0.5"), "multicast"),
        ("10.244.207.0-24", lease("240.0.0.9"), "240.0.0.0/4"),
    ];
    put_leases(&c, &planted.iter().map(|(k, v, _)| (*k, v.clone())).collect::<Vec<_>>());
    // Without a store lease (it would never expire), and a key that is no subnet.
    let unleased = ("10.244.208.0-24", "without a store lease");
    let garbage = ("garbage-key", "");
    with_store(&c, async |s| {
        let p = "/coreos.com/network/subnets/";
        s.put(&format!("{p}{}", unleased.0), lease("198.18.0.83").as_bytes()).await.unwrap();
        s.put(&format!("{p}{}", garbage.0), b"{}").await.unwrap();
    });
    for &i in &victims {
        for (key, why) in planted.iter().map(|(k, _, w)| (*k, *w)).chain([unleased, garbage]) {
            wait_for(Duration::from_secs(10), &format!("node{i} to refuse {key}"), || {
                std::fs::read_to_string(c.nodes[i].dir.join("overlayd.log")).unwrap().lines().any(|l| {
                    l.contains("WARN")
                        && l.contains("ignoring invalid lease")
                        && l.contains(key)
                        && l.contains(why)
                })
            })
            .unwrap();
        }
        let n = planted.len() as u64 + 2;
        assert!(invalid_leases(&c, i) >= counted[i] + n, "node{i} did not count {n} refusals");
    }

    // Node 0's own key overwritten (keeping nothing of it, no store lease): node 0 sees the
    // write through its watch at once and puts its own signed lease back.
    with_store(&c, async |s| {
        let key = format!("/coreos.com/network/subnets/{own0}");
        s.put(&key, lease("198.18.0.79").as_bytes()).await.unwrap();
    });
    wait_for(Duration::from_secs(5), "node0 to put its lease back", || {
        http_get(&c.nodes[0].socket(), "/metrics")
            .is_some_and(|(_, m)| m.contains("overlayd_own_lease_restored_total 1"))
    })
    .unwrap();
    let log = std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log")).unwrap();
    assert!(log.contains("someone else changed this node's lease; put it back"), "{log}");
    assert_eq!(stored_lease(&c, 0)["NodeID"].as_str(), c.nodes[0].node_id().as_deref(), "node0's lease");

    // A resync period for anything to (wrongly) move; and the tunnel settled again after
    // the overwrite's moment.
    std::thread::sleep(Duration::from_secs(6));
    for (k, &i) in victims.iter().enumerate() {
        assert_eq!(datapath(&c, i), paths[k], "node{i}'s datapath moved");
        wait_for(Duration::from_secs(10), &format!("node{i}'s tunnel as it was"), || {
            encryption(&c, i) == tunnels[k]
        })
        .unwrap_or_else(|e| panic!("{e}: {} != {}", encryption(&c, i), tunnels[k]));
        let fdb = c.nodes[i].ns.exec(&["bridge", "fdb", "show"]);
        assert!(!fdb.contains(ATTACKER_MAC), "node{i}: {fdb}");
    }
    every_pod_reaches_every_other(&pods);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
on_both_stores!(hostile_writes_by_a_node, three_nodes());

/// A node copies the victim's WireGuard public key into its own (newer) lease: the victim
/// keeps the key on every node, its pods stay reachable through the tunnel, and the copy is
/// refused with a warning and a metric.
fn a_copied_wireguard_key_stays_with_the_older_lease(opts: ClusterOptions) {
    let (c, pods) = encrypted_cluster(opts, "wk");
    let victim = 1;
    let victim_key = c.encryption_status(victim)["public_key"].as_str().unwrap().to_string();
    let victim_subnet = c.pod_subnet(victim).unwrap();
    let others = [0, 2];
    let before: Vec<u64> = (0..3).map(|i| invalid_leases(&c, i)).collect();

    // Node 2's store credentials can write this: a fresh subnet, the victim's tunnel key.
    let planted = "10.244.240.0";
    let value = attacker_value(stored_lease(&c, victim));
    assert_eq!(value["Encryption"]["PublicKey"], victim_key.as_str(), "{value}");
    put_leases(&c, &[(&format!("{planted}-24"), value.to_string())]);

    for &i in &others {
        wait_for(Duration::from_secs(10), "the copy refused", || {
            refused_in_log(&c, i, planted, "already published by")
        })
        .unwrap();
        assert!(invalid_leases(&c, i) > before[i], "node{i}'s invalid-lease counter did not rise");
    }
    // A resync period for anything to (wrongly) move.
    std::thread::sleep(Duration::from_secs(6));
    for &i in &others {
        let peers = tunnel_peers(&c, i);
        let holders: Vec<_> = peers.iter().filter(|p| p.1 == victim_key).collect();
        assert_eq!(holders.len(), 1, "node{i}: the victim's key on other than one peer: {peers:?}");
        assert!(
            holders[0].2 == vec![victim_subnet.clone()],
            "node{i}: the victim's key must allow exactly its subnet: {peers:?}"
        );
        assert!(
            !peers.iter().any(|p| p.2.iter().any(|s| s.starts_with(planted))),
            "node{i}: the copy became a tunnel peer: {peers:?}"
        );
        assert!(via_tunnel(&c, i, victim), "node{i}: the victim's subnet left the tunnel");
        let route = c.nodes[i].ns.exec(&["ip", "route", "show", &format!("{planted}/24")]);
        assert!(!route.contains(DEVICE), "node{i} routes the copy into the tunnel: {route}");
    }
    // The victim is reachable (encrypted: its routes are on the tunnel) from every node.
    for (x, y) in [(0, 1), (1, 0), (2, 1), (1, 2)] {
        assert!(ping(&pods[x].ns, &pods[y].ip, 2), "pod on node{x} -> pod on node{y}");
    }
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
on_both_stores!(a_copied_wireguard_key_stays_with_the_older_lease, three_nodes());

/// Dual stack: a new lease `<fresh IPv4>&<victim's IPv6 subnet>` is refused on every node;
/// nothing points the victim's IPv6 range at the writer (route, FDB, neighbour, tunnel peer).
fn a_lease_reusing_another_nodes_ipv6_subnet_is_refused(opts: ClusterOptions) {
    let (c, pods) = encrypted_cluster(opts, "v6o");
    let victim = 1;
    let lease = own_lease(&c, victim);
    let victim_v6 = lease["ipv6_subnet"].as_str().unwrap().to_string();
    let victim_key = c.encryption_status(victim)["public_key"].as_str().unwrap().to_string();
    let others = [0, 2];
    std::thread::sleep(Duration::from_secs(1));
    let before_paths: Vec<String> = (0..3).map(|i| datapath(&c, i)).collect();
    let before: Vec<u64> = (0..3).map(|i| invalid_leases(&c, i)).collect();

    let planted = "10.244.241.0";
    let key = format!("{planted}-24&{}", victim_v6.replace('/', "-"));
    let mut value = attacker_value(stored_lease(&c, victim));
    // Its own tunnel key: had it been accepted, the victim's IPv6 range would be allowed for it.
    value["Encryption"]["PublicKey"] = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into();
    put_leases(&c, &[(&key, value.to_string())]);

    for &i in &others {
        wait_for(Duration::from_secs(10), "the overlapping lease refused", || {
            refused_in_log(&c, i, planted, "an older lease")
        })
        .unwrap();
        assert!(invalid_leases(&c, i) > before[i], "node{i}'s invalid-lease counter did not rise");
    }
    std::thread::sleep(Duration::from_secs(6));
    for &i in &others {
        let ns = &c.nodes[i].ns;
        let routes = ns.exec(&["ip", "-6", "route", "show", &victim_v6]);
        assert_eq!(routes.lines().count(), 1, "node{i}: routes for {victim_v6}: {routes}");
        assert!(routes.contains(DEVICE), "node{i}: {victim_v6} left the tunnel: {routes}");
        let fdb = ns.exec(&["bridge", "fdb", "show"]);
        let neigh = ns.exec(&["ip", "-6", "neigh"]);
        assert!(!fdb.contains(ATTACKER_MAC) && !neigh.contains(ATTACKER_MAC), "node{i}: {fdb}\n{neigh}");
        let peers = tunnel_peers(&c, i);
        let holders: Vec<_> = peers.iter().filter(|p| p.2.contains(&victim_v6)).collect();
        assert!(
            holders.len() == 1 && holders[0].1 == victim_key,
            "node{i}: {victim_v6} allowed for other than the victim's key: {peers:?}"
        );
        assert_eq!(datapath(&c, i), before_paths[i], "node{i}'s datapath moved");
    }
    for (x, y) in [(0, 1), (1, 0), (2, 1), (1, 2)] {
        assert!(ping(&pods[x].ns, &pods[y].ips[1], 2), "pod on node{x} -> pod on node{y} over IPv6");
    }
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
on_both_stores!(a_lease_reusing_another_nodes_ipv6_subnet_is_refused, three_nodes().dual_stack());

/// Switching `RequireSignedLeases` on in a mixed cluster, as docs/security.md tells the
/// operator: the real nodes sign, one lease (planted, as a node that does not sign would
/// publish it) is unsigned. The operator writes the config with the flag; every daemon
/// applies it live (no restart) and judges every lease again: the unsigned peer leaves every
/// node's routes, FDB and tunnel, refused with a warning and counted, while the signed
/// nodes' pods talk without losing a packet. Switched off again, the peer comes back.
fn require_signed_leases_switched_on_drops_only_the_unsigned_peer(opts: ClusterOptions) {
    let (c, pods) = encrypted_cluster(opts, "rs");
    let daemons: Vec<Option<u32>> = c.nodes.iter().map(|n| n.daemon_pid()).collect();

    let planted = "10.244.242.0";
    let mut value = attacker_value(stored_lease(&c, 1));
    value["PublicIP"] = "198.18.0.242".into();
    value["Encryption"]["PublicKey"] = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=".into();
    put_leases(&c, &[(&format!("{planted}-24"), value.to_string())]);
    let planted_net = format!("{planted}/24");
    let is_peer = |i: usize| {
        // Routed (over VXLAN: it never completes a handshake, and strict mode is off), in
        // the FDB, and a tunnel peer.
        !c.nodes[i].ns.exec(&["ip", "route", "show", &planted_net]).trim().is_empty()
            && c.nodes[i].ns.exec(&["bridge", "fdb", "show"]).contains(ATTACKER_MAC)
            && tunnel_peers(&c, i).iter().any(|p| p.2.contains(&planted_net))
    };
    wait_for(Duration::from_secs(10), "the unsigned lease a peer while signatures are optional", || {
        (0..3).all(is_peer)
    })
    .unwrap();

    // A flood on every pair of nodes (ping's replies cover the other direction) across the
    // switch-on and the switch-off.
    let floods: Vec<_> = [(0, 1), (1, 2), (2, 0)]
        .iter()
        .map(|&(x, y)| ((x, y), test_netns::cluster::ping_flood(&pods[x].ns, &pods[y].ip, 20)))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let set_signing = |on: bool| {
        let mut conf = c.options().net_config();
        conf["Encryption"] = serde_json::json!({"Type": "wireguard"});
        conf["RequireSignedLeases"] = on.into();
        let file = c.work_dir().join(format!("net-conf-signed-{on}.json"));
        std::fs::write(&file, conf.to_string()).unwrap();
        c.ctl(0, &["network", "set", file.to_str().unwrap()]);
    };
    set_signing(true);
    let dropped = |i: usize| {
        c.nodes[i].ns.exec(&["ip", "route", "show", &planted_net]).trim().is_empty()
            && !tunnel_peers(&c, i).iter().any(|p| p.2.contains(&planted_net))
    };
    wait_for(Duration::from_secs(10), "the unsigned peer dropped everywhere", || (0..3).all(dropped))
        .unwrap();
    for i in 0..3 {
        let ns = &c.nodes[i].ns;
        let routes = ns.exec(&["ip", "route", "show", &planted_net]);
        assert!(routes.trim().is_empty(), "node{i} still routes the unsigned lease: {routes}");
        let fdb = ns.exec(&["bridge", "fdb", "show"]);
        assert!(!fdb.contains(ATTACKER_MAC), "node{i}: {fdb}");
        let peers = tunnel_peers(&c, i);
        assert!(!peers.iter().any(|p| p.2.contains(&planted_net)), "node{i}: {peers:?}");
        assert_eq!(peers.len(), 2, "node{i} keeps both signed nodes: {peers:?}");
        let log = std::fs::read_to_string(c.nodes[i].dir.join("overlayd.log")).unwrap();
        assert!(
            log.lines().any(|l| l.contains("WARN")
                && l.contains("ignoring invalid lease")
                && l.contains(planted)
                && l.contains("requires signed leases")),
            "node{i} did not log the refusal"
        );
        assert!(invalid_leases(&c, i) >= 1, "node{i} did not count the refusal");
    }
    // Off again: the unsigned lease is a peer once more, on every node, without a restart.
    set_signing(false);
    wait_for(Duration::from_secs(10), "the unsigned peer back everywhere", || (0..3).all(is_peer)).unwrap();
    for ((x, y), flood) in floods {
        let (sent, received) = test_netns::cluster::ping_result(flood);
        eprintln!(
            "node{x} <-> node{y}: switch-on and switch-off under 100 pps: {} of {sent} lost",
            sent - received
        );
        // The switch moves only the unsigned peer: the signed pairs lose nothing.
        assert_eq!(sent, received, "node{x} <-> node{y}: {} of {sent} lost", sent - received);
    }
    let restarted: Vec<Option<u32>> = c.nodes.iter().map(|n| n.daemon_pid()).collect();
    assert_eq!(restarted, daemons, "a daemon restarted");
    every_pod_reaches_every_other(&pods);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
on_both_stores!(require_signed_leases_switched_on_drops_only_the_unsigned_peer, three_nodes());
