//! IPsec between nodes end to end, with Debian's strongSwan: node namespaces on an
//! underlay, `overlayd` in each starting its own charon, pods through the `vxlan` plugin;
//! encryption switched among none, WireGuard and IPsec while pods ping; charon and overlayd
//! killed mid-traffic; a strongSwan configured by hand talking to a node; hostile leases.
//! Every event's packet loss is printed.

mod common;

use std::time::Duration;

use common::{put_leases, with_store};
use serde_json::Value;
use test_netns::cluster::{Cluster, ClusterOptions, StoreKind, bin_dir, ping_flood, ping_result, wait_for};
use test_netns::strongswan::HandSwan;
use test_netns::{Capture, EchoServer, ping, require_root, tcp_echo};

const IPSEC_DEV: &str = "ipsec0";
const WG_DEV: &str = "ferro-wg";

/// Returns from the test (fails under CI=true) when strongSwan is not installed.
macro_rules! require_strongswan {
    () => {
        require_root!();
        if !test_netns::strongswan::installed() {
            test_netns::skip(
                module_path!(),
                "strongSwan is not installed (strongswan-charon, strongswan-swanctl, libcharon-extra-plugins; scripts/deps.sh installs them)",
            );
            return;
        }
    };
}

fn route_dev(c: &Cluster, i: usize, j: usize) -> String {
    let subnet = c.pod_subnet(j).unwrap();
    c.nodes[i].ns.exec(&["ip", "route", "show", &subnet])
}

fn via(dev: &'static str) -> impl Fn(&Cluster, usize, usize) -> bool {
    move |c, i, j| route_dev(c, i, j).contains(&format!("dev {dev}"))
}

/// Only IKE (UDP 500), ESP in UDP (4500) or raw ESP between the nodes; no pod address.
fn assert_only_ipsec(packets: &test_netns::Packets, a: &str, b: &str) {
    let other: Vec<_> = packets
        .iter()
        .filter(|p| p.src.is_some() && !p.is_link_housekeeping())
        .filter(|p| {
            let ike = p.protocol == test_netns::Protocol::Udp
                && [p.src_port, p.dst_port].iter().any(|x| matches!(x, Some(500 | 4500)));
            let esp = p.protocol == test_netns::Protocol::Ip(50);
            !(ike || esp)
        })
        .collect();
    assert!(other.is_empty(), "not IPsec on the underlay: {:?}", &other[..other.len().min(5)]);
    assert!(!packets.any_plaintext_between(a, b), "plaintext pod traffic on the underlay");
    assert!(packets.with_address_in("10.244.0.0/16").is_empty(), "pod addresses visible on the underlay");
}

/// After IPsec is off: no charon in any node namespace, no TUN device, no XFRM state or
/// policy left in the kernel.
fn assert_nothing_of_ipsec_left(c: &Cluster, nodes: usize) {
    for i in 0..nodes {
        let ns = &c.nodes[i].ns;
        assert_eq!(c.charons(i), Vec::<i32>::new(), "a charon left in node{i}");
        assert!(!ns.exec(&["ip", "-o", "link", "show"]).contains(IPSEC_DEV), "{IPSEC_DEV} left in node{i}");
        for what in ["state", "policy"] {
            let left = ns.exec(&["ip", "xfrm", what, "list"]);
            assert!(left.trim().is_empty(), "XFRM {what} left in node{i}: {left}");
        }
    }
}

fn enable_disable_on(store: StoreKind) {
    let mut opts = ClusterOptions::new(3, bin_dir());
    opts.store = store;
    let c = Cluster::start(opts).unwrap();
    let pods: Vec<_> = (0..3).map(|i| c.add_pod(i, &format!("ip{i}")).unwrap()).collect();
    let echo = EchoServer::start(&pods[1].ns, &format!("{}:7000", pods[1].ip));
    let flood = ping_flood(&pods[0].ns, &pods[2].ip, 14);
    std::thread::sleep(Duration::from_secs(1));
    let t = std::time::Instant::now();
    c.ctl(0, &["encryption", "enable", "--type", "ipsec"]);
    c.wait_all_pairs(&[0, 1, 2], "every pair on IPsec", Duration::from_secs(30), via(IPSEC_DEV));
    eprintln!("enable --type ipsec → all 3×2 routes on {IPSEC_DEV}: {:?}", t.elapsed());
    let st = c.encryption_status(0);
    assert_eq!(st["type"], "ipsec", "{st}");
    assert_eq!(st["ipsec"]["datapath"], "libipsec", "this kernel has no ESP: {st}");
    for p in st["ipsec"]["peers"].as_array().unwrap() {
        assert_eq!(p["auth"], "pubkey", "{p}");
        assert_eq!(p["established"], true, "{p}");
    }
    // charon leads a process group of its own (signals to its daemon's group miss it) in its
    // daemon's session: a session of its own is, with autogroup scheduling, a scheduling group
    // of its own, which cost a third of libipsec's throughput (docs/benchmarks.md, "IPsec").
    for i in 0..3 {
        let charon = c.charon_pid(i).expect("charon runs") as u32;
        let daemon = c.nodes[i].daemon_pid().expect("the daemon runs");
        let ((group, session), (_, daemon_session)) = (proc_ids(charon), proc_ids(daemon));
        assert_eq!(group, charon, "node{i}: charon leads a process group of its own");
        assert_eq!(session, daemon_session, "node{i}: charon is in its daemon's session");
    }
    // The pod MTU for new pods fits kernel-libipsec's TUN.
    let net: Value = serde_json::from_str(&c.ctl(0, &["--json", "network", "show"])).unwrap();
    assert!(net["mtu"].as_u64().unwrap() <= 1400, "{net}");

    let cap = Capture::start(&c.nodes[0].ns, "ul").unwrap();
    for j in [1, 2] {
        assert!(ping(&pods[0].ns, &pods[j].ip, 2), "pod0 -> pod{j}");
        assert!(ping(&pods[j].ns, &pods[0].ip, 2), "pod{j} -> pod0");
    }
    let n = tcp_echo(&pods[0].ns, echo.addr(), 1 << 20, Duration::from_secs(20)).unwrap();
    assert_eq!(n, 1 << 20);
    let packets = cap.stop().unwrap();
    assert!(packets.len() >= 20, "too few packets: {}", packets.summary(10));
    assert_only_ipsec(&packets, &pods[0].ip, &pods[1].ip);
    assert!(!packets.any_plaintext_between(&pods[0].ip, &pods[2].ip));

    std::thread::sleep(Duration::from_secs(1));
    c.ctl(1, &["encryption", "disable"]);
    c.wait_all_pairs(&[0, 1, 2], "every pair back on VXLAN", Duration::from_secs(30), via("flannel.1"));
    let (sent, received) = ping_result(flood);
    eprintln!("{store:?}: enable ipsec, disable under 100 pps: {} of {sent} lost", sent - received);
    assert!(sent - received <= 5, "{} of {sent} lost", sent - received);
    wait_for(Duration::from_secs(30), "charon to stop after the linger", || {
        (0..3).all(|i| c.charon_pid(i).is_none())
    })
    .unwrap();
    assert_nothing_of_ipsec_left(&c, 3);
    for p in &pods {
        c.del_pod(p).unwrap();
    }
}

#[test]
fn enable_and_disable_ipsec_on_three_nodes_embedded_store() {
    require_strongswan!();
    enable_disable_on(StoreKind::Embedded);
}

#[test]
fn enable_and_disable_ipsec_on_three_nodes_etcd() {
    require_strongswan!();
    enable_disable_on(StoreKind::Etcd);
}

#[test]
fn switch_between_wireguard_and_ipsec_live() {
    require_strongswan!();
    let c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let a = c.add_pod(0, "sa").unwrap();
    let b = c.add_pod(1, "sb").unwrap();
    c.ctl(0, &["encryption", "enable"]);
    c.wait_all_pairs(&[0, 1], "routes on WireGuard", Duration::from_secs(30), via(WG_DEV));
    let mut lost = Vec::new();
    for (to, dev) in [("ipsec", IPSEC_DEV), ("wireguard", WG_DEV)] {
        let flood = ping_flood(&a.ns, &b.ip, 8);
        std::thread::sleep(Duration::from_secs(1));
        c.ctl(1, &["encryption", "enable", "--type", to]);
        c.wait_all_pairs(&[0, 1], &format!("routes on {dev}"), Duration::from_secs(30), via(dev));
        let (sent, received) = ping_result(flood);
        eprintln!("switch to {to} under 100 pps: {} of {sent} lost", sent - received);
        lost.push(sent - received);
    }
    assert!(lost.iter().all(|l| *l <= 5), "lost per switch: {lost:?}");
    // The engine left goes away after its linger.
    wait_for(Duration::from_secs(40), "charon gone after the switch back", || {
        (0..2).all(|i| c.charon_pid(i).is_none())
    })
    .unwrap();
    assert_nothing_of_ipsec_left(&c, 2);
    assert!(ping(&a.ns, &b.ip, 2));
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn charon_killed_overlayd_restarted_rotation_and_a_node_joining_and_leaving() {
    require_strongswan!();
    let mut c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let a = c.add_pod(0, "ka").unwrap();
    let b = c.add_pod(1, "kb").unwrap();
    c.ctl(0, &["encryption", "enable", "--type", "ipsec"]);
    c.wait_all_pairs(&[0, 1], "routes on IPsec", Duration::from_secs(30), via(IPSEC_DEV));

    // charon killed: overlayd starts it again and re-programs it.
    let flood = ping_flood(&a.ns, &b.ip, 8);
    std::thread::sleep(Duration::from_secs(1));
    let old = c.charon_pid(1).unwrap();
    c.kill_charon(1, libc::SIGKILL);
    wait_for(Duration::from_secs(20), "a new charon on node 1", || c.charon_pid(1).is_some_and(|p| p != old))
        .unwrap();
    c.wait_all_pairs(&[0, 1], "routes on IPsec again", Duration::from_secs(30), via(IPSEC_DEV));
    let (sent, received) = ping_result(flood);
    eprintln!("charon SIGKILLed under 100 pps: {} of {sent} lost", sent - received);
    assert!(sent - received <= 150, "{} of {sent} lost", sent - received);
    assert_eq!(c.encryption_status(1)["ipsec"]["charon_restarts"], 1);

    // overlayd restarted (SIGKILL): the charon it left keeps its SAs; the new one adopts it.
    let flood = ping_flood(&a.ns, &b.ip, 8);
    std::thread::sleep(Duration::from_secs(1));
    let pid = c.charon_pid(0).unwrap();
    c.stop_daemon(0, libc::SIGKILL);
    assert!(route_dev(&c, 0, 1).contains(IPSEC_DEV), "a stopped daemon's routes left IPsec");
    c.start_daemon(0).unwrap();
    c.wait_ready(0).unwrap();
    let (sent, received) = ping_result(flood);
    eprintln!("overlayd SIGKILLed and restarted under 100 pps: {} of {sent} lost", sent - received);
    assert!(sent - received <= 100, "{} of {sent} lost", sent - received);
    let st = c.encryption_status(0);
    assert_eq!(st["ipsec"]["charon"]["adopted"], true, "{st}");
    assert_eq!(c.charon_pid(0), Some(pid), "the running charon was adopted, not replaced");

    // Rotation: every SA rekeyed, make-before-break.
    let flood = ping_flood(&a.ns, &b.ip, 6);
    std::thread::sleep(Duration::from_secs(1));
    c.ctl(1, &["encryption", "rotate"]);
    std::thread::sleep(Duration::from_secs(3));
    let (sent, received) = ping_result(flood);
    eprintln!("rotate (rekey of every SA) under 100 pps: {} of {sent} lost", sent - received);
    assert!(sent - received <= 3, "{} of {sent} lost", sent - received);
    // The rekey is logged when charon finishes it, which on a loaded machine can come after the
    // flood ended: wait for the event, not for a fixed time.
    let rekeyed = || {
        [0, 1].iter().any(|&i| {
            std::fs::read_to_string(c.nodes[i].dir.join("state/ipsec/charon.log"))
                .is_ok_and(|l| l.contains("rekeyed"))
        })
    };
    wait_for(Duration::from_secs(20), "a rekey in charon's logs", rekeyed).unwrap();

    // A node joins while encrypted, reaches everybody over IPsec, then leaves.
    let n = c.add_node().unwrap();
    c.wait_ready(n).unwrap();
    c.wait_all_pairs(&[0, 1, 2], "the new node on IPsec", Duration::from_secs(30), via(IPSEC_DEV));
    let x = c.add_pod(n, "kx").unwrap();
    assert!(ping(&x.ns, &a.ip, 2) && ping(&b.ns, &x.ip, 2));
    c.del_pod(&x).unwrap();
    c.ctl(n, &["leave"]);
    wait_for(Duration::from_secs(20), "the leaver's connection removed", || {
        c.encryption_status(0)["ipsec"]["peers"].as_array().is_some_and(|p| p.len() == 1)
    })
    .unwrap();
    wait_for(Duration::from_secs(10), "the leaver's charon stopped", || c.charon_pid(n).is_none()).unwrap();
    assert_eq!(c.charons(n), Vec::<i32>::new(), "a charon left behind by the node that left");
    assert!(ping(&a.ns, &b.ip, 2));
    c.del_pod(&a).unwrap();
    c.del_pod(&b).unwrap();
}

#[test]
fn strict_refuses_an_outsider_and_hostile_ipsec_leases_are_skipped() {
    require_strongswan!();
    let mut c = Cluster::start(ClusterOptions::new(2, bin_dir())).unwrap();
    let outsider = c.add_node().unwrap();
    c.stop_daemon(outsider, libc::SIGTERM);
    c.set_daemon_args(outsider, &["--no-encryption"]);
    c.start_daemon(outsider).unwrap();
    c.wait_ready(outsider).unwrap();
    let a = c.add_pod(0, "ha").unwrap();
    let b = c.add_pod(1, "hb").unwrap();
    let x = c.add_pod(outsider, "hx").unwrap();
    c.ctl(0, &["encryption", "enable", "--type", "ipsec"]);
    c.wait_all_pairs(&[0, 1], "the joined nodes on IPsec", Duration::from_secs(30), via(IPSEC_DEV));
    assert!(ping(&x.ns, &a.ip, 2), "before strict mode the outsider talks over VXLAN");
    c.ctl(0, &["encryption", "enable", "--strict"]);
    wait_for(Duration::from_secs(20), "strict rules on the joined nodes", || {
        (0..2).all(|i| c.nodes[i].ns.exec(&["nft", "list", "tables"]).contains("ferrocni_strict"))
    })
    .unwrap();
    assert_eq!(c.encryption_status(0)["type"], "ipsec", "--strict keeps the type");
    // The outsider's subnet is routed into IPsec too (fail closed), with no SA: dropped.
    wait_for(Duration::from_secs(10), "the outsider's subnet routed into IPsec", || {
        via(IPSEC_DEV)(&c, 0, outsider)
    })
    .unwrap();
    let cap = Capture::start(&c.nodes[0].ns, "ul").unwrap();
    assert!(ping(&a.ns, &b.ip, 3), "joined nodes' pods talk over IPsec");
    assert!(!ping(&x.ns, &a.ip, 2), "the outsider's pod reached an encrypted node's pod");
    assert!(!ping(&a.ns, &x.ip, 2), "an encrypted node's pod reached the outsider");
    let packets = cap.stop().unwrap();
    // The outsider sends in plaintext (it does not encrypt); node 0 never does.
    let node0: std::net::IpAddr = c.nodes[0].underlay_ip.parse().unwrap();
    let sent_plain: Vec<_> =
        packets.plaintext_between(&a.ip, &x.ip).into_iter().filter(|p| p.src == Some(node0)).collect();
    assert!(sent_plain.is_empty(), "node 0 sent plaintext after Strict: {sent_plain:?}");
    assert!(!packets.any_plaintext_between(&a.ip, &b.ip));
    assert_eq!(c.encryption_status(outsider)["participating"], false);

    // Hostile leases: each skipped with a reason, nothing else changes, nothing in charon.
    let before = c.nodes[0].ns.exec(&["ip", "route"]);
    let mac = r#""BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:77:00:00:00:01"}"#;
    let unsigned = |key: &str, ip: &str, identity: Option<&str>, ipsec: &str| {
        let id = identity.map(|k| format!(r#""Identity":"{k}","#)).unwrap_or_default();
        (
            key.to_string(),
            format!(r#"{{"PublicIP":"{ip}",{mac},{id}"Encryption":{{"Type":"ipsec","IPsec":{ipsec}}}}}"#),
        )
    };
    let node1 = overlayd::identity::Identity::load_or_create(&c.nodes[1].dir.join("state")).unwrap();
    let hostile: Vec<(String, String)> = vec![
        unsigned(
            "10.244.251.0-24",
            "198.18.0.201",
            Some(&other_key()),
            &format!(r#"{{"TrafficSelectors":["{}"]}}"#, c.pod_subnet(1).unwrap()),
        ),
        unsigned("10.244.252.0-24", "198.18.0.202", Some(&other_key()), r#""x""#),
        unsigned("10.244.253.0-24", "198.18.0.203", None, "{}"),
        unsigned("10.244.254.0-24", "198.18.0.204", Some(&other_key()), "{}"),
        // Node 1's own key signing a second subnet: one key is one node.
        signed_lease("10.244.249.0-24", "198.18.0.205", &node1),
    ];
    let refs: Vec<(&str, String)> = hostile.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    put_leases(&c, &refs);
    for (key, why) in [
        ("10.244.251.0-24", "outside the lease's subnets"),
        ("10.244.252.0-24", "not an object"),
        ("10.244.253.0-24", "no identity key"),
        ("10.244.254.0-24", "not signed by its identity key"),
    ] {
        wait_for(Duration::from_secs(10), why, || {
            std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log"))
                .unwrap()
                .lines()
                .any(|l| l.contains("IPsec data ignored") && l.contains(key) && l.contains(why))
        })
        .unwrap();
    }
    wait_for(Duration::from_secs(10), "the duplicated identity refused", || {
        std::fs::read_to_string(c.nodes[0].dir.join("overlayd.log"))
            .unwrap()
            .contains("published by more than one lease; no IPsec")
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let conns = c.nodes[0].ns.exec(&[
        "swanctl",
        "--list-conns",
        "--uri",
        &format!("unix://{}", c.nodes[0].dir.join("state/ipsec/charon.vici").display()),
    ]);
    assert!(
        !conns.contains("10.244.25") && !conns.contains("10.244.249"),
        "a hostile lease reached charon: {conns}"
    );
    let after = c.nodes[0].ns.exec(&["ip", "route"]);
    let moved: Vec<&str> = before.lines().filter(|l| !after.contains(l)).collect();
    assert!(moved.is_empty(), "routes changed: {moved:?}");
    // The key claimed twice is trusted for neither: node 1 is off IPsec while the twin is there.
    let sub1 = c.pod_subnet(1).unwrap();
    let st = c.encryption_status(0);
    assert!(!st["ipsec"]["peers"].to_string().contains(&sub1), "node 1 kept its connection: {st}");
    with_store(&c, async |store| {
        for (k, _) in &hostile {
            let key = format!("/coreos.com/network/subnets/{k}");
            if let Some(kv) = store.get(&key).await.unwrap() {
                store.delete(&key, kv.mod_revision).await.unwrap();
            }
        }
    });
    // Strict routes stay on ipsec0 throughout; what comes back is node 1's SA.
    wait_for(Duration::from_secs(30), "node 1's SA back once the twin is gone", || {
        let st = c.encryption_status(0);
        st["ipsec"]["peers"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["established"] == true && p["subnets"].to_string().contains(&sub1))
        })
    })
    .unwrap();
    assert!(ping(&a.ns, &b.ip, 3), "node 0's pod -> node 1's pod after the twin left");
    c.ctl(0, &["encryption", "enable"]);
    for p in [&a, &b, &x] {
        c.del_pod(p).unwrap();
    }
}

/// A strongSwan configured by hand with swanctl (no overlayd) in a namespace on the
/// underlay, with its own Ed25519 key: its lease is written into the store by hand; node 0
/// connects to it (the hand peer only responds) and traffic flows both ways.
#[test]
fn a_hand_configured_strongswan_peer_talks_to_a_node() {
    require_strongswan!();
    let c = Cluster::start(ClusterOptions::new(1, bin_dir())).unwrap();
    let a = c.add_pod(0, "wa").unwrap();
    c.ctl(0, &["encryption", "enable", "--type", "ipsec"]);
    wait_for(Duration::from_secs(20), "IPsec on node 0", || c.encryption_status(0)["ipsec"]["phase"] == "on")
        .unwrap();

    let ns = c.attach_to_underlay("hand", "198.18.0.200/24");
    ns.exec(&["ip", "addr", "add", "10.244.250.1/32", "dev", "lo"]);
    // Its key pair made as a node makes its own: a PKCS#8 PEM, which strongSwan loads as is.
    let dir = c.work_dir().join("hand");
    std::fs::create_dir_all(&dir).unwrap();
    let identity = overlayd::identity::Identity::load_or_create(&dir).unwrap();
    let private = std::fs::read(identity.path()).unwrap();
    let hand = HandSwan::start(&ns, &dir, &private, &public_key_pem(&identity.public())).unwrap();
    let node0_subnet = c.pod_subnet(0).unwrap();
    let node0 = &c.nodes[0].underlay_ip;
    let node0_pem = public_key_pem(&lease_identity(&c, 0));
    hand.connect(&ns, "node0", node0, &node0_pem, "10.244.250.0/24", &node0_subnet).unwrap();
    ns.exec(&["ip", "route", "add", &node0_subnet, "dev", "ipsec0", "src", "10.244.250.1"]);
    // Its lease, signed with its key as a node signs its own (the hand peer runs no overlayd).
    let lease = signed_lease("10.244.250.0-24", "198.18.0.200", &identity);
    put_leases(&c, &[(lease.0.as_str(), lease.1)]);
    wait_for(Duration::from_secs(20), "node 0 to route the hand peer's subnet into IPsec", || {
        c.nodes[0].ns.exec(&["ip", "route", "show", "10.244.250.0/24"]).contains(IPSEC_DEV)
    })
    .unwrap_or_else(|e| panic!("{e}: {} {}", c.encryption_status(0), hand.swanctl(&ns, &["--list-sas"])));
    assert!(ping(&a.ns, "10.244.250.1", 3), "pod on node 0 -> hand-configured strongSwan");
    assert!(
        ns.command("ping")
            .args(["-c", "2", "-W", "2", "-I", "10.244.250.1", &a.ip])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success(),
        "hand-configured strongSwan -> pod"
    );
    let sas = hand.swanctl(&ns, &["--list-sas"]);
    assert!(sas.contains("ESTABLISHED") && sas.contains("INSTALLED"), "{sas}");
    c.del_pod(&a).unwrap();
}

/// A lease for `key` on `ip` with an IPsec part, signed by `identity` (as its node would).
/// A process's group and session (`/proc/PID/stat`, fields 5 and 6).
fn proc_ids(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<u32> = rest.split_whitespace().skip(2).take(2).map(|x| x.parse().unwrap()).collect();
    (f[0], f[1])
}

fn signed_lease(key: &str, ip: &str, identity: &overlayd::identity::Identity) -> (String, String) {
    let value = format!(
        r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:77:00:00:00:02"}},"Identity":"{}","Encryption":{{"Type":"ipsec","IPsec":{{}}}}}}"#,
        identity.public_b64()
    );
    let attrs: overlayd::attrs::LeaseAttrs = serde_json::from_str(&value).unwrap();
    let subnet = overlayd::subnet::SubnetKey::parse(key).unwrap();
    (key.to_string(), String::from_utf8(attrs.signed(&subnet, identity).to_bytes()).unwrap())
}

fn public_key_pem(k: &overlayd::identity::PublicKey) -> String {
    overlayd::encryption::ipsec::public_key_pem(k)
}

/// A valid Ed25519 public key of nobody.
fn other_key() -> String {
    overlayd::identity::PublicKey::parse("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=").unwrap().to_string()
}

/// The node's identity public key (what its lease publishes as `Identity`).
fn lease_identity(c: &Cluster, node: usize) -> overlayd::identity::PublicKey {
    overlayd::identity::Identity::load_or_create(&c.nodes[node].dir.join("state")).unwrap().public()
}
