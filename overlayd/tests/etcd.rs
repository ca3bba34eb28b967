//! Against a real etcd (Debian's etcd-server), started per test inside a private
//! namespace: lease behaviours in-process, then daemons in node namespaces, an etcd
//! outage and a 3-member cluster losing members.

mod common;

use std::future::Future;
use std::time::Duration;

use common::scenarios;
use common::{Cluster, Daemon, Etcd, block_on_in, etcd_store, tempdir, wait_until};
use overlayd::store::SharedStore;
use serde_json::Value;
use test_netns::{TestNs, require_root};

/// Runs `body` against a fresh single-member etcd on 127.0.0.1 in its own namespace.
fn with_etcd<F: Future<Output = ()>>(body: impl FnOnce(SharedStore, Vec<SharedStore>) -> F + Send) {
    let dir = tempdir();
    let ns = TestNs::new("etcd");
    ns.lo_up();
    let _etcd = Etcd::single(&ns, "127.0.0.1", dir.path());
    block_on_in(&ns, || async move {
        let ep = vec!["http://127.0.0.1:2379".to_string()];
        let main = etcd_store(&ep).await;
        let mut more = Vec::new();
        for _ in 0..3 {
            more.push(etcd_store(&ep).await);
        }
        body(main, more).await
    });
}

#[test]
fn fifty_managers_get_fifty_distinct_subnets() {
    require_root!();
    with_etcd(|_, stores| scenarios::concurrent_acquire(stores, 50));
}

#[test]
fn restart_finds_the_same_subnet() {
    require_root!();
    with_etcd(|s, _| scenarios::restart_keeps_subnet(s));
}

#[test]
fn planted_keys_with_our_node_id_are_not_adopted() {
    require_root!();
    with_etcd(|s, _| scenarios::planted_keys_with_our_node_id_are_not_adopted(s));
}

#[test]
fn short_ttl_expires_silent_nodes_and_renewal_keeps_live_ones() {
    require_root!();
    with_etcd(|s, _| scenarios::ttl_expiry_and_renewal(s));
}

#[test]
fn a_lost_subnet_taken_by_another_node_is_never_shared() {
    require_root!();
    with_etcd(|s, _| scenarios::lost_subnet_taken_elsewhere_moves(s));
}

#[test]
fn compaction_while_the_watch_is_behind_relists_and_misses_nothing() {
    require_root!();
    with_etcd(|s, _| scenarios::compaction_while_behind(s));
}

#[test]
fn hostile_values_under_subnets_are_ignored() {
    require_root!();
    with_etcd(|s, _| async move {
        // etcd keys are bytes: a key that is not UTF-8 must not trouble anyone either.
        let key = [scenarios::PREFIX.as_bytes(), b"/subnets/\xff\xfe-24"].concat();
        let ep = vec!["http://127.0.0.1:2379".to_string()];
        let mut c = etcd_client::Client::connect(&ep, None).await.unwrap();
        c.put(key, "{}", None).await.unwrap();
        scenarios::hostile_values_ignored(s, 1).await
    });
}

#[test]
fn leave_deletes_the_lease_and_peers_see_it() {
    require_root!();
    with_etcd(|s, _| scenarios::leave_removes(s));
}

const NET_CONF: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#;

fn parse_env(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn three_daemons_get_distinct_subnets_and_see_each_other() {
    require_root!();
    let c = Cluster::new(3);
    let mut ds: Vec<Daemon> = (0..3).map(|i| c.daemon(i, &[])).collect();
    // No config yet: the daemons wait, serving health but not ready.
    assert!(wait_until(Duration::from_secs(10), || ds[0].api("GET", "/healthz").status == 200));
    assert!(!ds[0].ready());
    let file = c.file("net-conf.json", NET_CONF);
    let bad = c.file("bad.json", r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#);
    // The operator stores it, straight into etcd (no daemon writes the config).
    let ep = c.etcd.endpoint();
    let out = ds[0].ctl(&["network", "set", &bad, "--etcd-endpoints", &ep]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SubnetLen"), "{out:?}");
    // Without the store options: refused, naming the choices.
    let out = ds[0].ctl(&["network", "set", &file]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no store given"), "{out:?}");
    // With another store than this node's daemon uses (a local file nobody reads): refused.
    let out = ds[0].ctl(&["network", "set", &file, "--store", "embedded"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("uses the store `etcd"), "{out:?}");
    let out = ds[0].ctl(&["network", "set", &file, "--etcd-endpoints", &ep]);
    assert!(out.status.success(), "{out:?}");
    // The daemon has no write route for it.
    assert_eq!(ds[0].api("PUT", "/v1/config").status, 404);
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    let keys: Vec<String> = ds.iter().map(|d| d.key().unwrap()).collect();
    let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(distinct.len(), 3, "{keys:?}");
    for (i, d) in ds.iter().enumerate() {
        let mut others: Vec<String> =
            keys.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, k)| k.clone()).collect();
        others.sort();
        assert!(
            wait_until(Duration::from_secs(10), || d.peer_keys() == others),
            "node{i} sees {:?}, expected {others:?}",
            d.peer_keys()
        );
        // subnet.env as flannel writes it.
        let env = parse_env(&std::fs::read_to_string(&d.subnet_file).unwrap());
        let subnet = d.status()["subnet"].as_str().unwrap().to_string();
        let first = subnet.replacen(".0/", ".1/", 1);
        assert_eq!(env["FLANNEL_NETWORK"], "10.244.0.0/16");
        assert_eq!(env["FLANNEL_SUBNET"], first);
        assert_eq!(env["FLANNEL_MTU"], "1450", "underlay 1500 - 50");
        assert_eq!(env["FLANNEL_IPMASQ"], "false");
        assert_eq!(env.len(), 4);
        // The lease carries the node's underlay address and vxlan data.
        let lease = d.get("/v1/lease");
        assert_eq!(lease["public_ip"], format!("192.0.2.{}", i + 1));
        assert_eq!(lease["backend_data"]["VNI"], 7);
    }
    // Peers as a peer sees them: public IP and VTEP MAC of the others.
    let peers = ds[0].get("/v1/peers");
    let ips: Vec<&str> = peers.as_array().unwrap().iter().map(|p| p["public_ip"].as_str().unwrap()).collect();
    assert!(ips.contains(&"192.0.2.2") && ips.contains(&"192.0.2.3"), "{ips:?}");
    let mac1 = ds[1].get("/v1/lease")["backend_data"]["VtepMAC"].clone();
    assert!(peers.as_array().unwrap().iter().any(|p| p["backend_data"]["VtepMAC"] == mac1));
    // overlayctl, human and JSON.
    let out = ds[0].ctl(&["peers"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("192.0.2.2") && text.contains("VTEP-MAC"), "{text}");
    let out = ds[2].ctl(&["--json", "leases"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leases"].as_array().unwrap().len(), 3);
    assert_eq!(v["leases"].as_array().unwrap().iter().filter(|l| l["own"] == true).count(), 1);
    let out = ds[1].ctl(&["network", "show"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"VNI\": 7"), "{out:?}");
    let out = ds[1].ctl(&["health"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3.4."), "{out:?}");
    let out = ds[1].ctl(&["lease"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&keys[1].replace('-', "/")), "{out:?}");
    // The socket is root-only.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&ds[0].socket).unwrap().permissions().mode() & 0o777, 0o600);
    for d in &mut ds {
        assert!(d.term().success());
    }
}

#[test]
fn restart_keeps_the_subnet_and_leave_releases_it() {
    require_root!();
    let c = Cluster::new(3);
    let conf = c.file("net-conf.json", NET_CONF);
    let args = ["--net-config-file", conf.as_str(), "--metrics-addr", "127.0.0.1:9101"];
    let mut ds: Vec<Daemon> = (0..3).map(|i| c.daemon(i, &args)).collect();
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    let keys: Vec<String> = ds.iter().map(|d| d.key().unwrap()).collect();
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys().len() == 2));

    // Graceful restart: exit 0, socket gone, same subnet after.
    assert!(ds[1].term().success());
    assert!(!ds[1].socket.exists());
    ds[1].restart();
    ds[1].wait_ready(Duration::from_secs(20));
    assert_eq!(ds[1].key().unwrap(), keys[1]);
    // kill -9: same again.
    ds[2].kill9();
    ds[2].restart();
    ds[2].wait_ready(Duration::from_secs(20));
    assert_eq!(ds[2].key().unwrap(), keys[2]);
    // Node 0 saw its peers restart without losing them.
    assert_eq!(ds[0].metric("overlayd_peer_events_total{kind=\"removed\"}"), Some(0.0));
    assert_eq!(ds[0].peer_keys().len(), 2);
    // Metrics over TCP too, with nothing else there.
    let m = ds[0].get_tcp("127.0.0.1:9101", "/metrics");
    assert!(m.contains("overlayd_ready 1"), "{m}");
    assert!(ds[0].get_tcp("127.0.0.1:9101", "/v1/lease").contains("404"));

    // Leave: the daemon exits 0, the lease and subnet.env are gone, peers see it.
    let out = ds[2].ctl(&["leave"]);
    assert!(out.status.success(), "{out:?}");
    assert!(ds[2].wait_exit(Duration::from_secs(10)).success());
    assert!(!ds[2].subnet_file.exists());
    for d in &ds[..2] {
        assert!(
            wait_until(Duration::from_secs(10), || !d.peer_keys().contains(&keys[2])),
            "{} still sees the node that left",
            d.name
        );
    }
    let leases = ds[0].get("/v1/leases");
    assert!(leases["leases"].as_array().unwrap().iter().all(|l| l["key"] != keys[2].as_str()));
    assert_eq!(ds[0].metric("overlayd_peer_events_total{kind=\"removed\"}"), Some(1.0));
}

#[test]
fn ttl_expiry_seen_by_peers_and_renewal_keeps_live_daemons() {
    require_root!();
    let c = Cluster::new(2);
    let conf = c.file("net-conf.json", NET_CONF);
    let args = ["--net-config-file", conf.as_str(), "--subnet-lease-ttl", "3s"];
    let mut ds: Vec<Daemon> = (0..2).map(|i| c.daemon(i, &args)).collect();
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    let keys: Vec<String> = ds.iter().map(|d| d.key().unwrap()).collect();
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys() == [keys[1].clone()]));
    // Several TTLs pass: both keep their leases through renewals.
    std::thread::sleep(Duration::from_secs(7));
    for (d, k) in ds.iter().zip(&keys) {
        let s = d.status();
        assert_eq!(s["key"], k.as_str());
        assert!(s["renewals"].as_u64().unwrap() >= 4, "{s}");
        assert_eq!(s["subnet_changes"], 0);
        // Each renewal was timed.
        let timed = d.metric("overlayd_lease_renew_duration_seconds_count").unwrap();
        assert!(timed >= 4.0, "{timed}");
        assert!(d.metric("overlayd_lease_renew_duration_seconds_sum").unwrap() > 0.0);
    }
    assert_eq!(ds[0].peer_keys(), [keys[1].clone()]);
    // Node 1 dies without a word: its lease expires and node 0 sees it go.
    ds[1].kill9();
    let t = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || ds[0].peer_keys().is_empty()),
        "expired lease still a peer"
    );
    assert!(t.elapsed() < Duration::from_secs(7), "took {:?} for a 3 s TTL", t.elapsed());
    // Back: its subnet was free, so it gets the same one.
    ds[1].restart();
    ds[1].wait_ready(Duration::from_secs(20));
    assert_eq!(ds[1].key().unwrap(), keys[1]);
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys() == [keys[1].clone()]));
}

#[test]
fn hostile_leases_are_skipped_with_a_warning_by_a_running_daemon() {
    require_root!();
    let c = Cluster::new(1);
    let conf = c.file("net-conf.json", NET_CONF);
    let d = c.daemon(0, &["--net-config-file", conf.as_str()]);
    d.wait_ready(Duration::from_secs(20));
    let own = d.key().unwrap();
    let own4: ipnet::Ipv4Net = own.replace('-', "/").parse().unwrap();
    let over = own4.supernet().unwrap().trunc();
    let valid = r#"{"PublicIP":"192.0.2.77","BackendType":"vxlan","BackendData":{"VNI":7,"VtepMAC":"02:11:22:33:44:55"},"NodeID":"x"}"#;
    // Each written with a store lease, as a node writes its own, so that each
    // is refused for what is wrong with its value.
    let writes = vec![
        ("10.244.250.0-24".to_string(), "{garbage".to_string()),
        ("10.9.0.0-24".to_string(), valid.to_string()),
        (format!("{}-{}", over.addr(), over.prefix_len()), valid.to_string()),
        ("10.244.251.0-24".to_string(), valid.replace("02:11", "01:11")),
        // The one valid lease.
        ("10.244.252.0-24".to_string(), valid.to_string()),
    ];
    c.with_store(|s| async move {
        let l = s.grant(Duration::from_secs(120)).await.unwrap();
        for (k, v) in writes {
            s.create(&format!("/coreos.com/network/subnets/{k}"), v.as_bytes(), l).await.unwrap();
        }
        // Valid, but written without a store lease: it would never expire.
        s.put("/coreos.com/network/subnets/10.244.253.0-24", valid.as_bytes()).await.unwrap();
    });
    assert!(
        wait_until(Duration::from_secs(10), || d.peer_keys() == ["10.244.252.0-24"]),
        "{:?}",
        d.peer_keys()
    );
    assert!(wait_until(Duration::from_secs(5), || d.metric("overlayd_invalid_leases_total") == Some(5.0)));
    let log = d.log_text();
    for why in ["not lease JSON", "not a /24 inside", "not a unicast address", "never expire"] {
        assert!(log.contains("ignoring invalid lease") && log.contains(why), "no warning about {why}");
    }
    let leases = d.get("/v1/leases");
    let invalid = leases["leases"].as_array().unwrap().iter().filter(|l| l["valid"] == false).count();
    assert_eq!(invalid, 5);
    // Still alive, still ours.
    assert_eq!(d.key().unwrap(), own);
    assert!(d.ready());
}

#[test]
fn etcd_stopped_for_30s_changes_nothing_and_the_lease_is_kept() {
    require_root!();
    let mut c = Cluster::new(2);
    let conf = c.file("net-conf.json", NET_CONF);
    // A TTL shorter than the outage: etcd itself keeps leases while it is down.
    let args = ["--net-config-file", conf.as_str(), "--subnet-lease-ttl", "10s"];
    let ds: Vec<Daemon> = (0..2).map(|i| c.daemon(i, &args)).collect();
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    let keys: Vec<String> = ds.iter().map(|d| d.key().unwrap()).collect();
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys() == [keys[1].clone()]));
    let events: Vec<u64> = ds.iter().map(|d| d.status()["peer_events"].as_u64().unwrap()).collect();
    // The datapath as the kernel has it: the VXLAN device, routes, permanent neighbours, FDB.
    let kernel = |i: usize| -> String {
        let n = &c.nodes[i];
        [
            n.exec(&["ip", "-d", "-o", "link", "show", "type", "vxlan"]),
            n.exec(&["ip", "-o", "route", "show"]),
            n.exec(&["ip", "neigh", "show", "nud", "permanent"]),
            n.exec(&["bridge", "fdb", "show", "dev", "flannel.7"]),
        ]
        .join("\n")
    };
    assert!(wait_until(Duration::from_secs(10), || kernel(0).contains("flannel.7")
        && kernel(0).contains("dst 192.0.2.2")));
    let kernel_before: Vec<String> = (0..2).map(kernel).collect();
    let env_before: Vec<(String, std::time::SystemTime)> = ds
        .iter()
        .map(|d| {
            (
                std::fs::read_to_string(&d.subnet_file).unwrap(),
                std::fs::metadata(&d.subnet_file).unwrap().modified().unwrap(),
            )
        })
        .collect();

    c.etcd.stop();
    let t = std::time::Instant::now();
    let mut saw_down = [false, false];
    while t.elapsed() < Duration::from_secs(30) {
        for (i, d) in ds.iter().enumerate() {
            let s = d.status();
            assert_eq!(s["key"], keys[i].as_str(), "lease dropped during the outage: {s}");
            assert_eq!(s["peer_events"], events[i], "peer events during the outage: {s}");
            assert_eq!(s["subnet_changes"], 0);
            assert_eq!(s["ready"], true);
            saw_down[i] |= s["store_ok"] == false;
        }
        assert_eq!(ds[0].peer_keys(), [keys[1].clone()]);
        for (i, k) in kernel_before.iter().enumerate() {
            assert_eq!(&kernel(i), k, "node{i}'s datapath changed during the outage");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(saw_down, [true, true], "the daemons never noticed the outage");
    let renewals: Vec<u64> = ds.iter().map(|d| d.status()["renewals"].as_u64().unwrap()).collect();
    c.etcd.restart();
    c.etcd.wait_healthy(Duration::from_secs(20));
    for (i, d) in ds.iter().enumerate() {
        assert!(
            wait_until(Duration::from_secs(20), || {
                let s = d.status();
                s["store_ok"] == true && s["renewals"].as_u64().unwrap() > renewals[i]
            }),
            "{} did not renew after the outage: {}",
            d.name,
            d.status()
        );
        let s = d.status();
        assert_eq!(s["key"], keys[i].as_str());
        assert_eq!(s["subnet_changes"], 0);
        assert_eq!(s["peer_events"], events[i], "the outage produced peer events");
        assert_eq!(kernel(i), kernel_before[i], "node{i}'s datapath changed after the outage");
        let (text, mtime) = &env_before[i];
        assert_eq!(&std::fs::read_to_string(&d.subnet_file).unwrap(), text);
        assert_eq!(&std::fs::metadata(&d.subnet_file).unwrap().modified().unwrap(), mtime);
    }
    // The watch is back: a change after the outage still arrives.
    let leases = ds[0].get("/v1/leases");
    assert_eq!(leases["leases"].as_array().unwrap().len(), 2);
}

#[test]
fn three_member_cluster_survives_losing_the_leader_then_a_follower() {
    require_root!();
    let dir = tempdir();
    let underlay = test_netns::Underlay::new(None);
    let infra = TestNs::new("etcdc");
    underlay.attach(&infra, "ul", "192.0.2.201/24");
    infra.exec(&["ip", "addr", "add", "192.0.2.202/24", "dev", "ul"]);
    infra.exec(&["ip", "addr", "add", "192.0.2.203/24", "dev", "ul"]);
    let ips = ["192.0.2.201", "192.0.2.202", "192.0.2.203"];
    let initial: Vec<String> =
        ips.iter().enumerate().map(|(i, ip)| format!("m{i}=http://{ip}:2380")).collect();
    let initial = initial.join(",");
    let mut members: Vec<Etcd> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Etcd::member(&infra, &format!("m{i}"), ip, &initial, dir.path()))
        .collect();
    for m in &members {
        m.wait_healthy(Duration::from_secs(30));
    }
    let nodes: Vec<TestNs> = (0..2)
        .map(|i| {
            let n = TestNs::new(&format!("cn{i}"));
            underlay.attach(&n, "ul", &format!("192.0.2.{}/24", i + 1));
            n
        })
        .collect();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, NET_CONF).unwrap();
    let endpoints = members.iter().map(Etcd::endpoint).collect::<Vec<_>>().join(",");
    let args = [
        "--etcd-endpoints",
        endpoints.as_str(),
        "--iface",
        "ul",
        "--net-config-file",
        conf.to_str().unwrap(),
        "--subnet-lease-ttl",
        "6s",
    ];
    let ds: Vec<Daemon> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::start(n, &format!("cn{i}"), dir.path(), &args))
        .collect();
    for d in &ds {
        d.wait_ready(Duration::from_secs(30));
    }
    let keys: Vec<String> = ds.iter().map(|d| d.key().unwrap()).collect();
    assert_ne!(keys[0], keys[1]);
    let events: Vec<Value> = ds.iter().map(|d| d.status()["peer_events"].clone()).collect();
    let renewed_since = |d: &Daemon, base: u64, more: u64| {
        wait_until(Duration::from_secs(30), || {
            let s = d.status();
            s["store_ok"] == true && s["renewals"].as_u64().unwrap_or(0) >= base + more
        })
    };
    let renewals = |d: &Daemon| d.status()["renewals"].as_u64().unwrap();

    // Who leads? Ask the daemon's store health.
    let leader = || -> Option<usize> {
        let h = ds[0].get("/v1/store");
        let eps = h["health"]["endpoints"].as_array()?.clone();
        eps.iter().position(|e| e["is_leader"] == true)
    };
    let l = (0..50).find_map(|_| {
        leader().or_else(|| {
            std::thread::sleep(Duration::from_millis(200));
            None
        })
    });
    let l = l.expect("no leader reported");
    members[l].kill();
    for d in &ds {
        let base = renewals(d);
        assert!(renewed_since(d, base, 2), "{} did not renew after the leader died: {}", d.name, d.status());
    }
    // Now a follower: two of three gone, no quorum. Leases are served unchanged.
    let f = (0..3).find(|&i| i != l).unwrap();
    members[f].kill();
    std::thread::sleep(Duration::from_secs(8));
    for (d, k) in ds.iter().zip(&keys) {
        let s = d.status();
        assert_eq!(s["key"], k.as_str(), "{s}");
        assert_eq!(s["store_ok"], false, "no quorum but the store looks fine: {s}");
        assert_eq!(s["ready"], true);
    }
    // Back to three: renewals resume, nothing duplicated, no peer churn.
    members[l].restart();
    members[f].restart();
    for d in &ds {
        let base = renewals(d);
        assert!(renewed_since(d, base, 1), "{} did not renew after quorum came back: {}", d.name, d.status());
    }
    for ((d, k), e) in ds.iter().zip(&keys).zip(&events) {
        let s = d.status();
        assert_eq!(s["key"], k.as_str());
        assert_eq!(s["subnet_changes"], 0);
        assert_eq!(&s["peer_events"], e, "peer churn: {s}");
    }
    let leases = ds[0].get("/v1/leases");
    let listed: Vec<&str> =
        leases["leases"].as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = keys.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(listed, want, "duplicated or lost leases");
}

/// Runs openssl with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out =
        std::process::Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for `ips` and a client certificate with CN `client`.
fn make_certs(dir: &std::path::Path, ips: &[&str], client: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = [
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca"],
    ];
    openssl(dir, &ca.concat());
    let sans: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={}\nextendedKeyUsage=serverAuth\n", sans.join(",")),
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "etcd"), ("client", client)] {
        let subj = format!("/CN={cn}");
        let (key, csr, pem, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj]].concat());
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &ext,
            ],
        );
    }
}

#[test]
fn tls_client_certificates_and_password_authentication() {
    require_root!();
    let dir = tempdir();
    let d = dir.path();
    // The client certificate's CN is no etcd user: only the password can authenticate.
    make_certs(d, &["192.0.2.254", "127.0.0.1"], "overlayd-node");
    let underlay = test_netns::Underlay::new(None);
    let infra = TestNs::new("tlsinfra");
    underlay.attach(&infra, "ul", "192.0.2.254/24");
    let f = |n: &str| d.join(n).display().to_string();
    let (ca, cert, key, skey, spem) =
        (f("ca.pem"), f("client.pem"), f("client.key"), f("server.key"), f("server.pem"));
    let etcd = Etcd::single_with(
        &infra,
        "192.0.2.254",
        d,
        "https",
        &["--cert-file", &spem, "--key-file", &skey, "--client-cert-auth", "--trusted-ca-file", &ca],
    );
    // Users and a role limited to the prefix, then authentication on.
    let (ca2, cert2, key2) = (ca.clone(), cert.clone(), key.clone());
    let ep = etcd.endpoint();
    block_on_in(&infra, || async move {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&ca2).unwrap()))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&cert2).unwrap(),
                std::fs::read(&key2).unwrap(),
            ));
        let mut c =
            etcd_client::Client::connect([ep], Some(etcd_client::ConnectOptions::new().with_tls(tls)))
                .await
                .expect("TLS connection with a client certificate");
        c.user_add("root", "rootpw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.user_add("overlayd", "s3cret", None).await.unwrap();
        c.role_add("overlayd").await.unwrap();
        let perm = etcd_client::Permission::read_write("/coreos.com/network/").with_prefix();
        c.role_grant_permission("overlayd", perm).await.unwrap();
        c.user_grant_role("overlayd", "overlayd").await.unwrap();
        c.auth_enable().await.unwrap();
    });
    std::fs::write(d.join("pw"), "s3cret\n").unwrap();
    std::fs::write(d.join("badpw"), "nope\n").unwrap();
    std::fs::write(d.join("net-conf.json"), NET_CONF).unwrap();
    let nodes: Vec<TestNs> = (0..3)
        .map(|i| {
            let n = TestNs::new(&format!("tls{i}"));
            underlay.attach(&n, "ul", &format!("192.0.2.{}/24", i + 1));
            n
        })
        .collect();
    let base = [
        "--etcd-endpoints",
        "https://192.0.2.254:2379",
        "--etcd-cafile",
        ca.as_str(),
        "--iface",
        "ul",
        "--net-config-file",
        "NETCONF",
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .map(|s| if *s == "NETCONF" { f("net-conf.json") } else { s.to_string() })
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let start = |i: usize, a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        Daemon::start(&nodes[i], &format!("tls{i}"), d, &refs)
    };
    let (pw, badpw) = (f("pw"), f("badpw"));
    let good = start(
        0,
        args(&[
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
            "--etcd-username",
            "overlayd",
            "--etcd-password-file",
            &pw,
        ]),
    );
    good.wait_ready(Duration::from_secs(20));
    assert!(good.key().is_some());
    let h = good.get("/v1/store");
    assert_eq!(h["health"]["healthy"], true, "{h}");
    assert!(h["health"]["endpoints"][0]["version"].as_str().unwrap().starts_with("3.4"), "{h}");

    // Without a client certificate the server refuses the handshake: never ready.
    let mut nocert = start(1, args(&["--etcd-username", "overlayd", "--etcd-password-file", &pw]));
    // A wrong password is refused when logging in: the daemon stops with an error.
    let mut wrong = start(
        2,
        args(&[
            "--etcd-certfile",
            &cert,
            "--etcd-keyfile",
            &key,
            "--etcd-username",
            "overlayd",
            "--etcd-password-file",
            &badpw,
        ]),
    );
    let status = wrong.wait_exit(Duration::from_secs(20));
    assert!(!status.success());
    assert!(wrong.log_text().contains("authentication failed"), "{}", wrong.log_tail());
    std::thread::sleep(Duration::from_secs(3));
    assert!(nocert.running());
    assert!(!nocert.ready());
    assert!(good.ready());
}

/// The documented roles (docs/security.md): a node reads the config and writes only under
/// `subnets/`; the operator writes the config. A node's credentials cannot switch the
/// cluster's encryption off; the operator's overlayctl can switch it on.
#[test]
fn with_the_documented_etcd_roles_a_node_cannot_write_the_config() {
    require_root!();
    let dir = tempdir();
    let d = dir.path();
    make_certs(d, &["192.0.2.254"], "client");
    let underlay = test_netns::Underlay::new(None);
    let infra = TestNs::new("rolesinfra");
    underlay.attach(&infra, "ul", "192.0.2.254/24");
    let f = |n: &str| d.join(n).display().to_string();
    let (ca, skey, spem) = (f("ca.pem"), f("server.key"), f("server.pem"));
    let etcd =
        Etcd::single_with(&infra, "192.0.2.254", d, "https", &["--cert-file", &spem, "--key-file", &skey]);
    let ep = etcd.endpoint();
    let ca2 = ca.clone();
    block_on_in(&infra, || async move {
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&ca2).unwrap()));
        let mut c =
            etcd_client::Client::connect([ep], Some(etcd_client::ConnectOptions::new().with_tls(tls)))
                .await
                .unwrap();
        c.user_add("root", "rootpw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.role_add("ferrocni-operator").await.unwrap();
        let all = etcd_client::Permission::read_write("/coreos.com/network/").with_prefix();
        c.role_grant_permission("ferrocni-operator", all).await.unwrap();
        c.role_add("ferrocni-node").await.unwrap();
        let config = etcd_client::Permission::read("/coreos.com/network/config");
        c.role_grant_permission("ferrocni-node", config).await.unwrap();
        let leases = etcd_client::Permission::read_write("/coreos.com/network/subnets/").with_prefix();
        c.role_grant_permission("ferrocni-node", leases).await.unwrap();
        for (user, role) in [("operator", "ferrocni-operator"), ("node", "ferrocni-node")] {
            c.user_add(user, format!("{user}-pw"), None).await.unwrap();
            c.user_grant_role(user, role).await.unwrap();
        }
        c.auth_enable().await.unwrap();
    });
    for user in ["operator", "node"] {
        std::fs::write(d.join(format!("{user}.pw")), format!("{user}-pw\n")).unwrap();
    }
    std::fs::write(d.join("net-conf.json"), NET_CONF).unwrap();
    let creds = |user: &str| -> Vec<String> {
        [
            "--etcd-endpoints",
            "https://192.0.2.254:2379",
            "--etcd-cafile",
            &ca,
            "--etcd-username",
            user,
            "--etcd-password-file",
            &f(&format!("{user}.pw")),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let nodes: Vec<TestNs> = (0..2)
        .map(|i| {
            let n = TestNs::new(&format!("roles{i}"));
            underlay.attach(&n, "ul", &format!("192.0.2.{}/24", i + 1));
            n
        })
        .collect();
    // The daemons run with the node's credentials; their --net-config-file cannot seed
    // the store, so they wait for the operator's config.
    let conf = f("net-conf.json");
    let ds: Vec<Daemon> = (0..2)
        .map(|i| {
            let mut a = creds("node");
            a.extend(["--iface", "ul", "--net-config-file", conf.as_str()].map(String::from));
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            Daemon::start(&nodes[i], &format!("roles{i}"), d, &refs)
        })
        .collect();
    let ctl = |user: &str, args: &[&str]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(creds(user));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        ds[0].ctl(&refs)
    };
    assert!(wait_until(Duration::from_secs(10), || ds[0]
        .log_text()
        .contains("may not store the network config")));
    assert!(!ds[0].ready());
    let out = ctl("node", &["network", "set", &conf]);
    assert!(!out.status.success(), "a node stored the config: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    let out = ctl("operator", &["network", "set", &conf]);
    assert!(out.status.success(), "{out:?}");
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys().len() == 1));

    // Encryption: the operator switches it on; a node cannot switch it off again.
    let out = ctl("operator", &["encryption", "enable", "--psk"]);
    assert!(out.status.success(), "{out:?}");
    let on = |d: &Daemon| d.get("/v1/encryption")["enabled"] == true;
    assert!(wait_until(Duration::from_secs(10), || ds.iter().all(on)), "{}", ds[0].get("/v1/encryption"));
    // The API shows the stored config, never the key.
    let shown = ds[1].get("/v1/config");
    assert_eq!(shown["Encryption"]["PresharedKey"], "<redacted>", "{shown}");
    let out = ctl("node", &["encryption", "disable"]);
    assert!(!out.status.success(), "a node switched encryption off: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied"), "{out:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(ds.iter().all(on), "encryption went off");
    // Credentials over plain http are refused unless asked for.
    let out = ds[0].ctl(&[
        "encryption",
        "disable",
        "--etcd-endpoints",
        "http://192.0.2.254:2379",
        "--etcd-username",
        "operator",
        "--etcd-password-file",
        &f("operator.pw"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("clear text"), "{out:?}");
    drop(etcd);
}

/// A client connection to one of the API's listeners, as the slow-client tests hold it.
trait IdleClient {
    /// One read of at most `buf.len()` bytes, waiting at most `limit`.
    fn read_within(&self, limit: Duration, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl IdleClient for std::net::TcpStream {
    fn read_within(&self, limit: Duration, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        self.set_read_timeout(Some(limit))?;
        (&mut &*self).read(buf)
    }
}

impl IdleClient for std::os::unix::net::UnixStream {
    fn read_within(&self, limit: Duration, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        self.set_read_timeout(Some(limit))?;
        (&mut &*self).read(buf)
    }
}

/// Hundreds of clients that connect and never send a request hold neither memory nor
/// connections: beyond the cap a connection is closed at once, and each one is closed when
/// its headers do not come within the header-read timeout; afterwards `served` is true (a
/// real request is answered). `connect` opens the 300 connections.
fn idle_clients_are_bounded<S: IdleClient>(
    d: &Daemon,
    connect: impl FnOnce() -> Vec<S>,
    served: impl Fn() -> bool,
) {
    use std::io::ErrorKind;
    let before = d.rss_kib();
    let start = std::time::Instant::now();
    let idle = connect();
    assert_eq!(idle.len(), 300, "the kernel accepted every connection");
    // Over the cap: closed at once (EOF on read).
    std::thread::sleep(Duration::from_millis(500));
    let closed_at_once = idle
        .iter()
        .filter(|s| matches!(s.read_within(Duration::from_millis(20), &mut [0u8; 1]), Ok(0)))
        .count();
    assert!(closed_at_once >= 300 - overlayd::api::MAX_CONNECTIONS, "{closed_at_once} closed at once");
    let grown = d.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB for idle clients");
    // Every idle one is closed by the header-read timeout (a read that times out here means
    // the daemon still holds it).
    for s in &idle {
        let r = s.read_within(overlayd::api::HEADER_READ_TIMEOUT * 2, &mut [0u8; 1024]);
        assert!(
            !matches!(&r, Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
            "an idle connection outlived the header-read timeout"
        );
    }
    assert!(start.elapsed() < overlayd::api::HEADER_READ_TIMEOUT * 3, "{:?}", start.elapsed());
    assert!(served(), "the API did not answer after the idle clients");
}

/// On `--metrics-addr` (TCP, reachable from other machines).
#[test]
fn slow_api_clients_are_bounded_in_number_memory_and_time() {
    require_root!();
    let c = Cluster::new(1);
    let conf = c.file("net-conf.json", NET_CONF);
    let d = c.daemon(0, &["--net-config-file", conf.as_str(), "--metrics-addr", "127.0.0.1:9102"]);
    d.wait_ready(Duration::from_secs(20));
    let connect = || -> Vec<std::net::TcpStream> {
        d.run_in_ns(|| (0..300).filter_map(|_| std::net::TcpStream::connect("127.0.0.1:9102").ok()).collect())
    };
    idle_clients_are_bounded(&d, connect, || {
        d.get_tcp("127.0.0.1:9102", "/metrics").contains("overlayd_ready 1")
    });
}

/// On the API socket (root only; a local process opening hundreds of connections neither
/// grows the daemon nor holds them past the header-read timeout).
#[test]
fn slow_socket_clients_are_bounded_in_number_memory_and_time() {
    require_root!();
    let c = Cluster::new(1);
    let conf = c.file("net-conf.json", NET_CONF);
    let d = c.daemon(0, &["--net-config-file", conf.as_str()]);
    d.wait_ready(Duration::from_secs(20));
    let connect = || -> Vec<std::os::unix::net::UnixStream> {
        (0..300).filter_map(|_| std::os::unix::net::UnixStream::connect(&d.socket).ok()).collect()
    };
    idle_clients_are_bounded(&d, connect, || d.ready());
}

/// Values near etcd's request limit under `subnets/`, more of them than one response may
/// carry: a new node still lists the leases (in smaller pages), gets its own and is ready;
/// the huge values are refused as leases, each named once.
#[test]
fn huge_values_under_subnets_do_not_stop_a_new_node() {
    require_root!();
    let c = Cluster::new(1);
    let huge = "x".repeat(1_400_000);
    c.with_store(|s| async move {
        let l = s.grant(Duration::from_secs(300)).await.unwrap();
        for i in 0..12 {
            s.create(&format!("/coreos.com/network/subnets/10.244.{}.0-24", 200 + i), huge.as_bytes(), l)
                .await
                .unwrap();
        }
    });
    let conf = c.file("net-conf.json", NET_CONF);
    let d = c.daemon(0, &["--net-config-file", conf.as_str()]);
    d.wait_ready(Duration::from_secs(20));
    assert!(d.key().is_some());
    assert!(wait_until(Duration::from_secs(5), || d.metric("overlayd_invalid_leases_total") == Some(12.0)));
    let log = d.log_text();
    assert!(log.contains("more than"), "no warning naming the size");
}

/// A node reinstalled with a new identity key but its old node ID cannot claim its old
/// lease (it takes a new subnet) and is refused by the peers that pinned the old key, until
/// the operator pins the new one.
#[test]
fn a_new_identity_under_a_pinned_node_id_is_refused_until_the_operator_pins_it() {
    require_root!();
    let c = Cluster::new(2);
    let conf = c.file("net-conf.json", NET_CONF);
    let mut ds: Vec<Daemon> = (0..2).map(|i| c.daemon(i, &["--net-config-file", conf.as_str()])).collect();
    for d in &ds {
        d.wait_ready(Duration::from_secs(20));
    }
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys().len() == 1));
    let old_key = ds[1].key().unwrap();
    let node1 = ds[1].status()["node_id"].as_str().unwrap().to_string();
    let pinned = ds[0].get("/v1/identity");
    assert_eq!(pinned["pins"][&node1], ds[1].get("/v1/identity")["identity"], "{pinned}");
    // Node 1 loses its key (a reinstall that kept the node ID) and signs with a new one.
    assert!(ds[1].term().success());
    std::fs::remove_file(ds[1].dir.join("state/identity.pem")).unwrap();
    ds[1].restart();
    ds[1].wait_ready(Duration::from_secs(20));
    let new_key = ds[1].key().unwrap();
    assert_ne!(new_key, old_key, "a lease signed by the old key was taken as its own");
    let new_identity = ds[1].get("/v1/identity")["identity"].as_str().unwrap().to_string();
    let refused = || {
        ds[0].get("/v1/leases")["leases"].as_array().unwrap().iter().any(|l| {
            l["key"] == new_key.as_str()
                && l["reason"].as_str().is_some_and(|r| r.contains("pinned to identity"))
        })
    };
    assert!(wait_until(Duration::from_secs(10), refused), "{}", ds[0].get("/v1/leases"));
    assert_eq!(ds[0].peer_keys(), [old_key]);
    // The operator pins the new key on node 0: the new lease is a peer, the old one refused.
    let out = ds[0].ctl(&["identity", "pin", &node1, &new_identity]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || ds[0].peer_keys() == [new_key.clone()]),
        "{}",
        ds[0].get("/v1/leases")
    );
    assert!(!ds[0].ctl(&["identity", "pin", &node1, "not-a-key"]).status.success());
    assert!(!ds[0].ctl(&["identity", "forget", "no-such-node"]).status.success());
    assert!(ds[0].ctl(&["identity", "forget", &node1]).status.success());
}
