//! Conflicting leases on a running encrypted cluster (issue 21): a lease written with a
//! node's store credentials that copies another node's WireGuard key, or claims another
//! node's IPv6 subnet beside a fresh IPv4 one. The older lease keeps what it holds; the
//! newer is refused (a warning, `overlayd_invalid_leases_total`), and no node's datapath
//! (routes, FDB, the tunnel's peers) moves. The unit tests in overlayd's watcher.rs and
//! validate.rs cover the rule; these show it end to end.

mod common;

use std::time::Duration;

use common::put_leases;
use serde_json::Value;
use test_netns::cluster::{Cluster, ClusterOptions, bin_dir, http_get, wait_for};
use test_netns::{ping, require_root};

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

fn datapath(c: &Cluster, i: usize) -> String {
    let ns = &c.nodes[i].ns;
    let mut out = String::new();
    for args in [&["ip", "-4", "route"][..], &["ip", "-6", "route"]] {
        out.push_str(&ns.exec(args));
        out.push('\n');
    }
    // The overlay devices' FDB (the pods' bridge learns and forgets on its own).
    let fdb = ns.exec(&["bridge", "fdb", "show"]);
    for l in fdb.lines().filter(|l| l.contains("dev flannel")) {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// A node copies the victim's WireGuard public key into its own (newer) lease: the victim
/// keeps the key on every node, its pods stay reachable through the tunnel, and the copy is
/// refused with a warning and a metric.
#[test]
fn a_copied_wireguard_key_stays_with_the_older_lease() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(3, bin_dir())).unwrap();
    let pods: Vec<_> = (0..3).map(|i| c.add_pod(i, &format!("wk{i}")).unwrap()).collect();
    c.ctl(0, &["encryption", "enable"]);
    c.wait_all_pairs(&[0, 1, 2], "every node on the tunnel", Duration::from_secs(20), via_tunnel);
    let victim = 1;
    let victim_key = c.encryption_status(victim)["public_key"].as_str().unwrap().to_string();
    let victim_subnet = c.pod_subnet(victim).unwrap();
    let others = [0, 2];
    wait_for(Duration::from_secs(20), "sessions with the victim", || {
        others.iter().all(|&i| {
            c.encryption_status(i)["peers"].as_array().unwrap().iter().all(|p| p["established"] == true)
        })
    })
    .unwrap();
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

/// Dual stack: a new lease `<fresh IPv4>&<victim's IPv6 subnet>` is refused on every node;
/// nothing points the victim's IPv6 range at the writer (route, FDB, neighbour, tunnel peer).
#[test]
fn a_lease_reusing_another_nodes_ipv6_subnet_is_refused() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(3, bin_dir()).dual_stack()).unwrap();
    let pods: Vec<_> = (0..3).map(|i| c.add_pod(i, &format!("v6o{i}")).unwrap()).collect();
    c.ctl(0, &["encryption", "enable"]);
    c.wait_all_pairs(&[0, 1, 2], "every node on the tunnel", Duration::from_secs(20), via_tunnel);
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

/// Switching `RequireSignedLeases` on in a mixed cluster, as docs/security.md tells the
/// operator: the real nodes sign, one lease (planted, as a node that does not sign would
/// publish it) is unsigned. The operator writes the config with the flag; the daemons take
/// it on their next start (docs/overlayd.md: only `Encryption` is applied live), so the
/// operator restarts them one at a time. Afterwards the unsigned peer is gone from every
/// node's routes, FDB and tunnel, refused with a warning and counted; the signed nodes'
/// pods talk all along.
#[test]
fn require_signed_leases_switched_on_drops_only_the_unsigned_peer() {
    require_root!();
    let c = Cluster::start(ClusterOptions::new(3, bin_dir())).unwrap();
    let pods: Vec<_> = (0..3).map(|i| c.add_pod(i, &format!("rs{i}")).unwrap()).collect();
    c.ctl(0, &["encryption", "enable"]);
    c.wait_all_pairs(&[0, 1, 2], "every node on the tunnel", Duration::from_secs(20), via_tunnel);

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
    // switch-on.
    let floods: Vec<_> = [(0, 1), (1, 2), (2, 0)]
        .iter()
        .map(|&(x, y)| ((x, y), test_netns::cluster::ping_flood(&pods[x].ns, &pods[y].ip, 40)))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let mut conf = ClusterOptions::new(3, bin_dir()).net_config();
    conf["Encryption"] = serde_json::json!({"Type": "wireguard"});
    conf["RequireSignedLeases"] = true.into();
    let file = c.work_dir().join("net-conf-signed.json");
    std::fs::write(&file, conf.to_string()).unwrap();
    c.ctl(0, &["network", "set", file.to_str().unwrap()]);
    // The config write itself changes no datapath (only Encryption is live, and it is the
    // same); the restarts do, one node at a time.
    std::thread::sleep(Duration::from_secs(2));
    for i in 0..3 {
        c.stop_daemon(i, libc::SIGTERM);
        c.start_daemon(i).unwrap();
        c.wait_ready(i).unwrap();
        wait_for(Duration::from_secs(10), "the unsigned peer dropped", || {
            c.nodes[i].ns.exec(&["ip", "route", "show", &planted_net]).trim().is_empty()
                && !tunnel_peers(&c, i).iter().any(|p| p.2.contains(&planted_net))
        })
        .unwrap();
        std::thread::sleep(Duration::from_secs(3));
    }
    for ((x, y), flood) in floods {
        let (sent, received) = test_netns::cluster::ping_result(flood);
        let lost = sent - received;
        eprintln!(
            "node{x} <-> node{y}: switch-on and three rolling restarts under 100 pps: {lost} of {sent} lost"
        );
        // Each pair sits on two of the three restarted nodes. A restart has the pair's
        // traffic back within 1 s (restarts_under_a_100pps_ping_keep_encrypted_traffic_flowing):
        // at most 100 packets each; the switch itself moves nothing.
        assert!(lost <= 200, "node{x} <-> node{y}: {lost} of {sent} lost");
    }
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
    for x in 0..3 {
        for y in 0..3 {
            if x != y {
                assert!(ping(&pods[x].ns, &pods[y].ip, 2), "pod on node{x} -> pod on node{y}");
            }
        }
    }
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}
