//! The embedded store (one SQLite file): the same lease behaviours as on etcd, in-process
//! and with several daemon processes in separate namespaces sharing the file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::scenarios;
use common::{Daemon, tempdir, wait_until};
use overlayd::store::embedded::{EmbeddedOptions, EmbeddedStore};
use overlayd::store::{Cas, Create, SharedStore, StoreError, WatchEvent, WatchMessage};
use test_netns::{TestNs, require_root};

fn open(path: &Path) -> SharedStore {
    let mut o = EmbeddedOptions::new(path);
    o.poll = Duration::from_millis(50);
    Arc::new(EmbeddedStore::open(o).unwrap())
}

/// A fresh database and `n` independent connections to it (like `n` processes).
fn stores(dir: &tempfile::TempDir, n: usize) -> Vec<SharedStore> {
    let p = dir.path().join("store.db");
    (0..n).map(|_| open(&p)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_fifty_managers_over_four_connections_get_distinct_subnets() {
    let d = tempdir();
    scenarios::concurrent_acquire(stores(&d, 4), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_finds_the_same_subnet() {
    let d = tempdir();
    scenarios::restart_keeps_subnet(stores(&d, 1).remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_planted_keys_with_our_node_id_are_not_adopted() {
    let d = tempdir();
    scenarios::planted_keys_with_our_node_id_are_not_adopted(stores(&d, 1).remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_short_ttl_expires_silent_nodes_and_renewal_keeps_live_ones() {
    let d = tempdir();
    scenarios::ttl_expiry_and_renewal(stores(&d, 1).remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_lost_subnet_taken_by_another_node_is_never_shared() {
    let d = tempdir();
    scenarios::lost_subnet_taken_elsewhere_moves(stores(&d, 1).remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_compaction_while_the_watch_is_behind_relists_and_misses_nothing() {
    let d = tempdir();
    scenarios::compaction_while_behind(stores(&d, 1).remove(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_hostile_values_under_subnets_are_ignored() {
    let d = tempdir();
    scenarios::hostile_values_ignored(stores(&d, 1).remove(0), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_leave_deletes_the_lease_and_peers_see_it() {
    let d = tempdir();
    scenarios::leave_removes(stores(&d, 1).remove(0)).await;
}

/// The store primitives themselves, seen from two connections: revisions, create-if-
/// absent, compare-and-swap, lease expiry as a watched delete, compaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_semantics_match_etcd() {
    let d = tempdir();
    let s = stores(&d, 2);
    let (a, b) = (&s[0], &s[1]);
    let start = a.list("/k/").await.unwrap().revision;
    let mut w = b.watch("/k/", start + 1).await.unwrap();
    let lease = a.grant(Duration::from_secs(1)).await.unwrap();
    let Create::Created(r1) = a.create("/k/x", b"1", lease).await.unwrap() else { panic!("create") };
    assert_eq!(r1, start + 1);
    let Create::Exists(kv) = b.create("/k/x", b"2", 0).await.unwrap() else { panic!("second create won") };
    assert_eq!((kv.value.as_slice(), kv.mod_revision, kv.lease), (&b"1"[..], r1, lease));
    assert!(matches!(b.update("/k/x", b"3", 0, r1 - 1).await.unwrap(), Cas::Conflict(Some(_))));
    let Cas::Done(r2) = b.update("/k/x", b"3", lease, r1).await.unwrap() else { panic!("cas") };
    assert!(r2 > r1);
    assert_eq!(b.get("/k/x").await.unwrap().unwrap().create_revision, r1, "create revision kept");
    // Nobody keeps the lease alive: the key expires, and the watch sees the delete.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await.expect("events in time") {
            Some(Ok(WatchMessage::Events(evs))) => seen.extend(evs),
            Some(Ok(_)) => {}
            other => panic!("watch ended: {other:?}"),
        }
    }
    assert!(matches!(&seen[2], WatchEvent::Delete { key, .. } if key == "/k/x"), "{seen:?}");
    assert_eq!(a.keep_alive(lease).await.unwrap(), None);
    assert!(a.get("/k/x").await.unwrap().is_none());
    // Compaction: a watch from before it is told so.
    let now = a.put("/k/y", b"y").await.unwrap();
    a.compact(now).await.unwrap();
    let mut old = b.watch("/k/", start + 1).await.unwrap();
    assert_eq!(old.next().await.unwrap().unwrap(), WatchMessage::Compacted(now));
    // Values are bounded as etcd bounds requests: nothing larger is stored by any writer.
    let big = vec![b'x'; overlayd::store::embedded::MAX_VALUE_BYTES + 1];
    assert!(matches!(a.put("/k/big", &big).await, Err(StoreError::Rejected(_))));
    assert!(matches!(a.create("/k/big", &big, 0).await, Err(StoreError::Rejected(_))));
    assert!(a.get("/k/big").await.unwrap().is_none());
    // The file is root's.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.path().join("store.db")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

const NET_CONF: &str = r#"{"Network":"10.66.0.0/16"}"#;

/// Three daemons in three namespaces on one machine share one store file: distinct
/// subnets, each sees the others; restart keeps the subnet; a killed node's short lease
/// expires for the others; leave removes the lease.
#[test]
fn embedded_daemons_in_three_namespaces_share_one_file() {
    require_root!();
    let dir = tempdir();
    let underlay = test_netns::Underlay::new(None);
    let nodes: Vec<TestNs> = (0..3)
        .map(|i| {
            let n = TestNs::new(&format!("enode{i}"));
            underlay.attach(&n, "ul", &format!("192.0.2.{}/24", i + 1));
            n
        })
        .collect();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, NET_CONF).unwrap();
    let db = dir.path().join("shared/store.db");
    let args = [
        "--store",
        "embedded",
        "--store-file",
        db.to_str().unwrap(),
        "--store-poll",
        "50ms",
        "--iface",
        "ul",
        "--net-config-file",
        conf.to_str().unwrap(),
        "--subnet-lease-ttl",
        "3s",
    ];
    // Node 0 runs as under systemd Type=notify.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let env = [("NOTIFY_SOCKET", notify_path.to_str().unwrap())];
    let mut ds: Vec<Daemon> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            Daemon::start_env(n, &format!("enode{i}"), dir.path(), &args, if i == 0 { &env } else { &[] })
        })
        .collect();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from overlayd");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(ds[0].ready(), "READY=1 came before /readyz said so");
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
            "{}: {:?}",
            d.name,
            d.peer_keys()
        );
        let env = std::fs::read_to_string(&d.subnet_file).unwrap();
        assert!(env.contains("FLANNEL_NETWORK=10.66.0.0/16\n"), "{env}");
        assert!(env.contains(&format!("FLANNEL_SUBNET={}\n", keys[i].replace(".0-", ".1/"))), "{env}");
    }
    let health = ds[0].get("/v1/store");
    assert_eq!(health["health"]["kind"], "embedded");
    assert_eq!(health["health"]["healthy"], true);

    // kill -9 and back before the TTL runs out: same subnet, peers saw nothing.
    ds[1].kill9();
    ds[1].restart();
    ds[1].wait_ready(Duration::from_secs(20));
    assert_eq!(ds[1].key().unwrap(), keys[1]);
    // Renewals keep live leases over several TTLs.
    std::thread::sleep(Duration::from_secs(4));
    for (d, k) in ds.iter().zip(&keys) {
        assert_eq!(d.key().as_ref(), Some(k));
        assert!(d.status()["renewals"].as_u64().unwrap() >= 2, "{}", d.status());
    }
    assert_eq!(ds[0].metric("overlayd_peer_events_total{kind=\"removed\"}"), Some(0.0));

    // Node 2 dies for good: its lease expires for the others (nobody writes meanwhile;
    // the watch polls expire it).
    ds[2].kill9();
    for d in &ds[..2] {
        assert!(
            wait_until(Duration::from_secs(10), || !d.peer_keys().contains(&keys[2])),
            "{} still sees the dead node",
            d.name
        );
    }
    // Node 1 leaves: gone from the store, node 0 sees it.
    let out = ds[1].ctl(&["leave"]);
    assert!(out.status.success(), "{out:?}");
    assert!(ds[1].wait_exit(Duration::from_secs(10)).success());
    assert!(wait_until(Duration::from_secs(10), || ds[0].peer_keys().is_empty()));
    let leases = ds[0].get("/v1/leases");
    let listed: Vec<&str> =
        leases["leases"].as_array().unwrap().iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(listed, [keys[0].as_str()]);
    assert!(ds[0].term().success());
    let n = notify.recv(&mut buf).expect("STOPPING=1 from overlayd");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Dual stack and IPv6 only: both families leased together, keys in flannel's `&` form
/// (and the IPv6-only form), no duplicates in either family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_dual_stack_and_ipv6_only_leases() {
    use overlayd::lease::{LeaseManager, LeaseSettings};
    let d = tempdir();
    let store = stores(&d, 1).remove(0);
    for (prefix, conf) in [
        (
            "/ds",
            r#"{"Network":"10.80.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:80::/48","IPv6SubnetLen":64}"#,
        ),
        ("/v6", r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:81::/56"}"#),
        // Exactly ten IPv6 subnets for ten nodes while IPv4 has 255: IPv6 picks collide
        // and the older-lease rule has to sort them out.
        (
            "/tight",
            r#"{"Network":"10.82.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:82::/48","IPv6SubnetLen":64,"IPv6SubnetMin":"fd00:82:0:1::","IPv6SubnetMax":"fd00:82:0:a::"}"#,
        ),
    ] {
        let cfg = scenarios::config(conf);
        let layout = overlayd::subnet::KeyLayout::new(prefix);
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let mut a = scenarios::attrs(&format!("n{i}"), scenarios::node_ip(i));
                a.public_ipv6 = Some(format!("2001:db8::{}", i + 1).parse().unwrap());
                let mut m = LeaseManager::new(
                    store.clone(),
                    layout.clone(),
                    cfg.clone(),
                    a,
                    LeaseSettings::with_ttl(Duration::from_secs(60)),
                );
                tokio::spawn(async move { m.acquire().await.unwrap() })
            })
            .collect();
        let mut v4 = std::collections::BTreeSet::new();
        let mut v6 = std::collections::BTreeSet::new();
        for t in tasks {
            let l = t.await.unwrap();
            assert_eq!(l.key.ipv4.is_some(), cfg.ipv4.is_some(), "{}", l.key);
            if let Some(n) = l.key.ipv4 {
                assert!(v4.insert(n), "duplicate IPv4 subnet {}", l.key);
            }
            assert!(v6.insert(l.key.ipv6.expect("an IPv6 subnet")), "duplicate IPv6 subnet {}", l.key);
            let k = layout.lease(&l.key);
            assert!(store.get(&k).await.unwrap().is_some(), "{k}");
            assert_eq!(k.contains('&'), cfg.ipv4.is_some(), "{k}");
        }
        assert_eq!(v6.len(), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_synced_is_raised_only_after_the_listings_events() {
    let d = tempdir();
    scenarios::synced_comes_after_the_listings_events(stores(&d, 1).remove(0)).await;
}

/// `overlayctl status` on `socket` as the unprivileged user nobody (65534): its output.
fn ctl_as_nobody(ctl: &Path, socket: &Path) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(ctl)
        .arg("--socket")
        .arg(socket)
        .arg("status")
        .output()
        .expect("setpriv (util-linux) runs")
}

/// Started under `umask 000` (a permissive service manager or shell), the daemon's API
/// socket is still never open to others: it is bound in a private 0700 directory and is
/// 0600 from the moment it appears under its name, its directory is not writable by
/// others, and an unprivileged user cannot connect (the control: with the socket made
/// 0666 by hand, that user can).
#[test]
fn the_api_socket_is_private_under_a_permissive_umask() {
    use std::os::unix::fs::PermissionsExt;
    require_root!();
    let dir = tempdir();
    // Traversable by nobody, so that only the socket's own mode keeps it out.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let underlay = test_netns::Underlay::new(None);
    let node = TestNs::new("umask0");
    underlay.attach(&node, "ul", "192.0.2.1/24");
    let conf = dir.path().join("net-conf.json");
    std::fs::write(&conf, NET_CONF).unwrap();
    let db = dir.path().join("store/store.db");
    let args = [
        "--store",
        "embedded",
        "--store-file",
        db.to_str().unwrap(),
        "--iface",
        "ul",
        "--net-config-file",
        conf.to_str().unwrap(),
    ];
    let d = Daemon::start_umask(&node, "umask0", dir.path(), &args, 0);
    // Watch the socket's directory as closely as polling allows until the socket appears.
    let sock_dir = d.socket.parent().unwrap().to_path_buf();
    let mode = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| m.permissions().mode() & 0o7777);
    let (mut private_modes, mut first_seen) = (Vec::new(), None);
    let start = std::time::Instant::now();
    while first_seen.is_none() && start.elapsed() < Duration::from_secs(20) {
        for e in std::fs::read_dir(&sock_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".overlayd-sock-") {
                private_modes.extend(mode(&e.path()));
            }
        }
        first_seen = mode(&d.socket);
        if first_seen.is_none() {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    assert_eq!(first_seen, Some(0o600), "the socket's mode when it first appeared");
    assert!(
        private_modes.iter().all(|&m| m == 0o700),
        "private binding directories: {:?}",
        private_modes.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
    );
    let dir_mode = mode(&sock_dir).unwrap();
    assert_eq!(dir_mode & 0o022, 0, "the socket's directory is writable by others: {dir_mode:o}");
    d.wait_ready(Duration::from_secs(20));
    assert_eq!(mode(&d.socket), Some(0o600), "the socket's mode once ready");
    // Nothing else the daemon made under the directory is left open.
    for e in std::fs::read_dir(&sock_dir).unwrap().flatten() {
        assert!(!e.file_name().to_string_lossy().starts_with(".overlayd-sock-"), "left behind: {e:?}");
    }
    // A copy of overlayctl nobody can run (the build tree may not be readable by it).
    let ctl = dir.path().join("overlayctl");
    std::fs::copy(env!("CARGO_BIN_EXE_overlayctl"), &ctl).unwrap();
    std::fs::set_permissions(&ctl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = ctl_as_nobody(&ctl, &d.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody connected: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("ermission denied"), "nobody's failure is not the socket's mode: {err}");
    // The control: the same command as root works, and as nobody once the socket is 0666.
    let root =
        std::process::Command::new(&ctl).arg("--socket").arg(&d.socket).arg("status").output().unwrap();
    assert!(root.status.success(), "root: {}", String::from_utf8_lossy(&root.stderr));
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let open = ctl_as_nobody(&ctl, &d.socket);
    assert!(open.status.success(), "the control failed: {}", String::from_utf8_lossy(&open.stderr));
}
