//! Lease behaviours written once against the `Store` trait and run on both stores.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use overlayd::attrs::{LeaseAttrs, VxlanData};
use overlayd::backend::BackendEvent;
use overlayd::config::NetworkConfig;
use overlayd::lease::{LeaseManager, LeaseSettings, OwnLease, Renewal};
use overlayd::metrics::Metrics;
use overlayd::node::PeerSet;
use overlayd::store::{SharedStore, Store};
use overlayd::subnet::{KeyLayout, SubnetKey};
use overlayd::validate::Validator;
use overlayd::watcher::{LeaseView, PeerEvent, Watcher, WatcherIo};
use tokio::sync::{mpsc, watch};

pub const PREFIX: &str = "/test/network";

pub fn config(text: &str) -> NetworkConfig {
    NetworkConfig::parse(text).unwrap().config
}

pub fn small_config() -> NetworkConfig {
    config(r#"{"Network":"10.50.0.0/16"}"#)
}

pub fn layout() -> KeyLayout {
    KeyLayout::new(PREFIX)
}

pub fn attrs(node: &str, ip: Ipv4Addr) -> LeaseAttrs {
    let mac = [0x02, 0, ip.octets()[1], ip.octets()[2], ip.octets()[3], 1];
    LeaseAttrs {
        public_ip: Some(ip),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: VxlanData { vni: 1, vtep_mac: mac }.to_value(),
        backend_v6_data: serde_json::Value::Null,
        node_id: Some(node.to_string()),
        identity: None,
        signature: None,
        encryption: serde_json::Value::Null,
    }
}

pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2 + (i / 250) as u8, 1 + (i % 250) as u8)
}

pub fn manager(
    store: &SharedStore,
    cfg: &NetworkConfig,
    node: &str,
    i: usize,
    ttl: Duration,
) -> LeaseManager {
    LeaseManager::new(
        store.clone(),
        layout(),
        cfg.clone(),
        attrs(node, node_ip(i)),
        LeaseSettings::with_ttl(ttl),
    )
}

/// Keys under the subnets prefix and the node ID each holds.
pub async fn holders(store: &dyn Store) -> BTreeMap<String, Option<String>> {
    let l = store.list(&layout().subnets()).await.unwrap();
    l.kvs
        .iter()
        .map(|kv| {
            let node = serde_json::from_slice::<LeaseAttrs>(&kv.value).ok().and_then(|a| a.node_id);
            (kv.key.trim_start_matches(&layout().subnets()).to_string(), node)
        })
        .collect()
}

/// `n` managers acquire at once, spread over `stores` (several connections, like
/// several daemons): all distinct, all present in the store under the right node, all
/// renewable.
pub async fn concurrent_acquire(stores: Vec<SharedStore>, n: usize) {
    let cfg = small_config();
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let mut m =
                manager(&stores[i % stores.len()], &cfg, &format!("node-{i}"), i, Duration::from_secs(60));
            tokio::spawn(async move {
                let l = m.acquire().await.expect("a lease");
                (i, l, m)
            })
        })
        .collect();
    let mut got: Vec<(usize, OwnLease, LeaseManager)> = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let keys: BTreeSet<String> = got.iter().map(|(_, l, _)| l.key.to_string()).collect();
    assert_eq!(keys.len(), n, "duplicate subnets handed out");
    let races: u64 = got.iter().map(|(_, _, m)| m.races_lost()).sum();
    eprintln!("{n} managers acquired in {:?} with {races} lost races", started.elapsed());
    let held = holders(&*stores[0]).await;
    assert_eq!(held.len(), n, "{held:?}");
    for (i, l, _) in &got {
        assert_eq!(held.get(&l.key.to_string()), Some(&Some(format!("node-{i}"))), "lost lease of node-{i}");
    }
    for (i, l, m) in &got {
        assert_eq!(m.renew(l).await.unwrap(), Renewal::Renewed, "node-{i}");
    }
}

/// Restarts find the same subnet: through the saved key, through the node ID alone,
/// and through the previous subnet after the lease itself was lost.
pub async fn restart_keeps_subnet(store: SharedStore) {
    let cfg = small_config();
    let ttl = Duration::from_secs(60);
    let mut first = manager(&store, &cfg, "node-r", 1, ttl);
    let a = first.acquire().await.unwrap();

    // (a) the state directory remembers the key.
    let mut m = manager(&store, &cfg, "node-r", 1, ttl).with_previous(Some(a.key), None);
    let b = m.acquire().await.unwrap();
    assert_eq!(b.key, a.key);
    assert_ne!(b.store_lease, a.store_lease, "adoption takes a fresh store lease");
    // The old proof of ownership is stale now: renewing with it must fail.
    assert!(matches!(first.renew(&a).await.unwrap(), Renewal::Lost(_)));

    // (b) only the node ID is known.
    let mut m = manager(&store, &cfg, "node-r", 1, ttl);
    let c = m.acquire().await.unwrap();
    assert_eq!(c.key, a.key);

    // (c) the lease is gone (revoked) but the subnet file remembers it.
    store.revoke(c.store_lease).await.unwrap();
    let mut m = manager(&store, &cfg, "node-r", 1, ttl).with_previous(None, Some(a.key));
    let d = m.acquire().await.unwrap();
    assert_eq!(d.key, a.key);
    let held = holders(&*store).await;
    assert_eq!(held.len(), 1, "one lease for one node: {held:?}");

    // (d) migrating from flannel: its lease has no NodeID; the public IP identifies it.
    let flannel = format!(
        r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}}}"#,
        node_ip(7)
    );
    let k = SubnetKey::parse("10.50.77.0-24").unwrap();
    store.put(&layout().lease(&k), flannel.as_bytes()).await.unwrap();
    // Anyone could have planted it: a node takes it over only when migrating on purpose.
    let mut x = manager(&store, &cfg, "node-x", 7, ttl);
    let ex = x.acquire().await.unwrap();
    assert_ne!(ex.key, k, "a flannel lease with our public IP is not ours by default");
    x.release(&ex).await.unwrap();
    let mut m = manager(&store, &cfg, "node-f", 7, ttl).adopting_flannel(true);
    let e = m.acquire().await.unwrap();
    assert_eq!(e.key, k, "the flannel node keeps its subnet");
    assert_eq!(holders(&*store).await.get(&k.to_string()), Some(&Some("node-f".to_string())));
    // Another node with another address does not take it.
    let mut other = manager(&store, &cfg, "node-g", 8, ttl).with_previous(None, Some(k));
    assert_ne!(other.acquire().await.unwrap().key, k);
}

/// Keys planted with a node's ID and public IP (unsigned, or signed by another key) are never
/// adopted by that node, not even when its subnet file names one: it takes a subnet of its
/// own, and a restart finds that one (signed by its key).
pub async fn planted_keys_with_our_node_id_are_not_adopted(store: SharedStore) {
    use overlayd::identity::Identity;
    let (cfg, ttl) = (small_config(), Duration::from_secs(60));
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let me = Arc::new(Identity::load_or_create(dirs.0.path()).unwrap());
    let thief = Identity::load_or_create(dirs.1.path()).unwrap();
    let (unsigned, forged) =
        (SubnetKey::parse("10.50.91.0-24").unwrap(), SubnetKey::parse("10.50.92.0-24").unwrap());
    let l = store.grant(ttl).await.unwrap();
    let victim = attrs("node-v", node_ip(9));
    store.create(&layout().lease(&unsigned), &victim.to_bytes(), l).await.unwrap();
    store.create(&layout().lease(&forged), &victim.signed(&forged, &thief).to_bytes(), l).await.unwrap();
    for subnet_file in [None, Some(unsigned), Some(forged)] {
        let mut m = manager(&store, &cfg, "node-v", 9, ttl)
            .with_identity(me.clone())
            .with_previous(None, subnet_file);
        let got = m.acquire().await.unwrap();
        assert!(
            got.key != unsigned && got.key != forged,
            "adopted a planted key {} ({subnet_file:?})",
            got.key
        );
        m.release(&got).await.unwrap();
    }
    let held = holders(&*store).await;
    assert_eq!(held.len(), 2, "only the planted keys are left: {held:?}");
}

/// A watcher's channels, as the daemon would hold them.
struct TestIo {
    io: WatcherIo,
    rx: mpsc::Receiver<BackendEvent>,
    stop: watch::Sender<bool>,
    own: watch::Sender<Option<SubnetKey>>,
    peers: watch::Receiver<PeerSet>,
}

fn watcher_io() -> TestIo {
    let (etx, rx) = mpsc::channel(64);
    let (own, own_rx) = watch::channel(None);
    let (stop, srx) = watch::channel(false);
    let (peers_tx, peers) = watch::channel(PeerSet::default());
    TestIo {
        io: WatcherIo {
            peers: peers_tx,
            events: etx,
            own: own_rx,
            own_key: mpsc::channel(16).0,
            // No config changes in these scenarios (the sender is gone at once).
            config: watch::channel(None).1,
            shutdown: srx,
        },
        rx,
        stop,
        own,
        peers,
    }
}

/// The backend removes what is not in the first listing once `synced` is up, so the
/// listing's events must be queued before it: the other order flushed a restarted daemon's
/// datapath (found by the cold-start benchmark).
pub async fn synced_comes_after_the_listings_events(store: SharedStore) {
    let cfg = small_config();
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(
            manager(&store, &cfg, &format!("n{i}"), 1 + i, Duration::from_secs(60))
                .acquire()
                .await
                .unwrap()
                .key,
        );
    }
    let view = LeaseView::new(Validator::new(cfg.clone(), "observer"), layout(), None);
    let mut w = Watcher::new(store.clone(), view, Arc::new(Metrics::default()));
    let TestIo { mut io, mut rx, stop, own: _own, peers } = watcher_io();
    let task = tokio::spawn(async move {
        w.run(&mut io).await;
        w
    });
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    let BackendEvent::Peers(batch) = first else {
        panic!("Synced came before the listing's events: {first:?}")
    };
    assert_eq!(batch.len(), keys.len());
    // The set was published before its events were sent.
    assert_eq!(peers.borrow().len(), keys.len());
    let second = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    assert!(matches!(second, BackendEvent::Synced), "{second:?}");
    stop.send(true).unwrap();
    task.await.unwrap();
}

fn describe(evs: &[PeerEvent]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            PeerEvent::Added(p) => format!("+{}", p.key),
            PeerEvent::Changed { new, .. } => format!("~{}", new.key),
            PeerEvent::Removed(p) => format!("-{}", p.key),
        })
        .collect()
}

/// Collects peer events until `want` of them arrived or `timeout`.
async fn collect(rx: &mut mpsc::Receiver<BackendEvent>, want: usize, timeout: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + timeout;
    while out.len() < want {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(BackendEvent::Peers(b))) => out.extend(describe(&b)),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    out
}

/// A short TTL: a node that stops renewing disappears for its peers; one that renews
/// stays; a node that lost its lease gets the same subnet back when it is free.
pub async fn ttl_expiry_and_renewal(store: SharedStore) {
    let cfg = small_config();
    let ttl = Duration::from_secs(2);
    let mut live = manager(&store, &cfg, "live", 1, ttl);
    let mut dead = manager(&store, &cfg, "dead", 2, ttl);
    let l_live = live.acquire().await.unwrap();
    let l_dead = dead.acquire().await.unwrap();

    let metrics = Arc::new(Metrics::default());
    let view = LeaseView::new(Validator::new(cfg.clone(), "observer"), layout(), None);
    let mut w = Watcher::new(store.clone(), view, metrics);
    let TestIo { mut io, mut rx, stop, own: _own, .. } = watcher_io();
    let task = tokio::spawn(async move {
        w.run(&mut io).await;
        w
    });
    let mut first = collect(&mut rx, 2, Duration::from_secs(5)).await;
    first.sort();
    let mut want = vec![format!("+{}", l_live.key), format!("+{}", l_dead.key)];
    want.sort();
    assert_eq!(first, want);

    // `live` renews every 600 ms; `dead` never does.
    let start = Instant::now();
    let mut removed = None;
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(live.renew(&l_live).await.unwrap(), Renewal::Renewed, "a renewing node keeps its lease");
        if let Ok(Some(BackendEvent::Peers(b))) =
            tokio::time::timeout(Duration::from_millis(600), rx.recv()).await
        {
            let d = describe(&b);
            assert_eq!(d, [format!("-{}", l_dead.key)], "only the silent node goes away");
            removed.get_or_insert(start.elapsed());
        }
    }
    let after = removed.expect("the expired lease was never reported removed");
    assert!(after <= Duration::from_secs(5), "removal took {after:?} for a 2 s TTL");
    assert!(holders(&*store).await.contains_key(&l_live.key.to_string()));

    // The dead node comes back: its lease is gone, the subnet free, so it gets it again.
    match dead.renew(&l_dead).await.unwrap() {
        Renewal::Lost(None) => {}
        other => panic!("expected a lost lease, got {other:?}"),
    }
    let again = dead.reacquire(&l_dead).await.unwrap();
    assert_eq!(again.key, l_dead.key);
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(5)).await, [format!("+{}", l_dead.key)]);
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// A lease lost and taken by another node: never shared; the loser moves.
pub async fn lost_subnet_taken_elsewhere_moves(store: SharedStore) {
    let cfg = small_config();
    let mut a = manager(&store, &cfg, "a", 1, Duration::from_secs(60));
    let la = a.acquire().await.unwrap();
    store.revoke(la.store_lease).await.unwrap();
    let mut b = manager(&store, &cfg, "b", 2, Duration::from_secs(60)).with_previous(None, Some(la.key));
    let lb = b.acquire().await.unwrap();
    assert_eq!(lb.key, la.key, "b takes the free subnet it asked for");
    match a.renew(&la).await.unwrap() {
        Renewal::Lost(Some(kv)) => assert!(String::from_utf8_lossy(&kv.value).contains("\"b\"")),
        other => panic!("expected lost to b, got {other:?}"),
    }
    let la2 = a.reacquire(&la).await.unwrap();
    assert_ne!(la2.key, la.key, "two nodes on one subnet");
    let held = holders(&*store).await;
    assert_eq!(held.get(&la.key.to_string()), Some(&Some("b".into())));
    assert_eq!(held.get(&la2.key.to_string()), Some(&Some("a".into())));
    assert_eq!(held.len(), 2);

    // Overwritten behind a's back while its store lease is still alive: the keep-alive
    // succeeds but the ownership check (mod_revision) does not.
    let key = layout().lease(&la2.key);
    store.put(&key, &attrs("intruder", node_ip(9)).to_bytes()).await.unwrap();
    match a.renew(&la2).await.unwrap() {
        Renewal::Lost(Some(kv)) => assert!(String::from_utf8_lossy(&kv.value).contains("intruder")),
        other => panic!("an overwritten lease must count as lost, got {other:?}"),
    }
    let la3 = a.reacquire(&la2).await.unwrap();
    assert_ne!(la3.key, la2.key);
    assert_eq!(b.renew(&lb).await.unwrap(), Renewal::Renewed);
}

/// Compaction while the watcher is behind: it lists again and the diff reports every
/// change that happened meanwhile, then live events keep coming.
pub async fn compaction_while_behind(store: SharedStore) {
    let cfg = small_config();
    let ttl = Duration::from_secs(60);
    let mut m1 = manager(&store, &cfg, "n1", 1, ttl);
    let mut m2 = manager(&store, &cfg, "n2", 2, ttl);
    let l1 = m1.acquire().await.unwrap();
    let l2 = m2.acquire().await.unwrap();

    let metrics = Arc::new(Metrics::default());
    let view = LeaseView::new(Validator::new(cfg.clone(), "watcher"), layout(), None);
    let mut w = Watcher::new(store.clone(), view, metrics.clone());
    let first = w.sync().await.unwrap();
    assert_eq!(first.events.len(), 2);
    let behind = w.revision();

    // Meanwhile, while the watcher is not looking (n3 joins while n1 still holds its subnet:
    // had n3 drawn n1's freed subnet, the diff would rightly call that key changed):
    let mut m3 = manager(&store, &cfg, "n3", 3, ttl);
    let l3 = m3.acquire().await.unwrap(); // added
    m1.release(&l1).await.unwrap(); // removed
    let mut m2b = LeaseManager::new(
        store.clone(),
        layout(),
        cfg.clone(),
        attrs("n2", Ipv4Addr::new(198, 51, 100, 2)),
        LeaseSettings::with_ttl(ttl),
    )
    .with_previous(Some(l2.key), None);
    let l2b = m2b.acquire().await.unwrap(); // same subnet, new public IP: changed
    assert_eq!(l2b.key, l2.key);
    let mut m4 = manager(&store, &cfg, "n4", 4, ttl);
    let l4 = m4.acquire().await.unwrap();
    m4.release(&l4).await.unwrap(); // came and went: nothing to report
    let now = store.list(&layout().subnets()).await.unwrap().revision;
    assert!(now > behind + 3);
    store.compact(now).await.unwrap();

    let TestIo { mut io, mut rx, stop, own: _own, .. } = watcher_io();
    let task = tokio::spawn(async move {
        w.run(&mut io).await;
        w
    });
    let mut got = collect(&mut rx, 3, Duration::from_secs(10)).await;
    got.sort();
    let mut want = vec![format!("-{}", l1.key), format!("~{}", l2.key), format!("+{}", l3.key)];
    want.sort();
    assert_eq!(got, want, "the re-list diff must report exactly the missed changes");
    // Live again: a new lease is seen through the new watch.
    let mut m5 = manager(&store, &cfg, "n5", 5, ttl);
    let l5 = m5.acquire().await.unwrap();
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(10)).await, [format!("+{}", l5.key)]);
    stop.send(true).unwrap();
    let w = task.await.unwrap();
    assert_eq!(w.view().len(), 3);
    let relists = metrics.relists.get();
    let compacted = metrics.relists_compacted.get();
    assert_eq!((relists, compacted), (2, 1), "one initial listing, one after compaction, no loop");
}

/// Malformed and hostile values under `subnets/` are skipped (counted, warned), the
/// valid peer next to them is used, and later valid changes still arrive. `extra` counts
/// invalid keys the caller wrote beforehand.
pub async fn hostile_values_ignored(store: SharedStore, extra: usize) {
    let cfg = small_config();
    let mut own = manager(&store, &cfg, "me", 1, Duration::from_secs(60));
    let lo = own.acquire().await.unwrap();
    let mut peer = manager(&store, &cfg, "peer", 2, Duration::from_secs(60));
    let lp = peer.acquire().await.unwrap();
    let o4 = lo.key.ipv4.unwrap();
    let sup = o4.supernet().unwrap().trunc();
    let sub = o4.subnets(25).unwrap().next().unwrap();
    let good = String::from_utf8(attrs("evil", Ipv4Addr::new(192, 0, 2, 66)).to_bytes()).unwrap();
    let s = layout().subnets();
    let hostile: Vec<(String, String)> = vec![
        (format!("{s}10.50.200.0-24"), "{not json".into()),
        (format!("{s}10.50.201.0-24"), "[1,2,3]".into()),
        (format!("{s}10.99.1.0-24"), good.clone()), // outside the network
        (format!("{s}{}-{}", sup.addr(), sup.prefix_len()), good.clone()), // over ours
        (format!("{s}{}-{}", sub.addr(), sub.prefix_len()), good.clone()), // inside ours
        (format!("{s}10.50.202.0-24"), good.replace("vxlan", "udp")),
        (format!("{s}10.50.203.0-24"), good.replace("VtepMAC", "Mac")),
        (
            format!("{s}10.50.204.0-24"),
            format!(r#"{{"PublicIP":"192.0.2.9","BackendType":"vxlan","X":"{}"}}"#, "A".repeat(100_000)),
        ),
        (format!("{s}not-a-subnet"), good.clone()),
        (format!("{s}../../config-24"), good.clone()),
    ];
    for (k, v) in &hostile {
        store.put(k, v.as_bytes()).await.unwrap();
    }
    let metrics = Arc::new(Metrics::default());
    let view = LeaseView::new(Validator::new(cfg.clone(), "me"), layout(), Some(lo.key));
    let mut w = Watcher::new(store.clone(), view, metrics.clone());
    let a = w.sync().await.unwrap();
    assert_eq!(describe(&a.events), [format!("+{}", lp.key)]);
    // Our own key is reported with our own write's revision (the keeper ignores it).
    assert_eq!(a.own_writes, [Some(lo.mod_revision)]);
    let bad = hostile.len() + extra;
    assert_eq!(w.view().invalid().count(), bad, "{:?}", w.view().invalid().collect::<Vec<_>>());
    assert_eq!(metrics.invalid_leases.get(), bad as u64);

    // Through the watch: more garbage, then a valid change.
    let TestIo { mut io, mut rx, stop, own: own_tx, .. } = watcher_io();
    own_tx.send_replace(Some(lo.key));
    let task = tokio::spawn(async move {
        w.run(&mut io).await;
        w
    });
    store.put(&format!("{s}10.50.205.0-24"), b"\xff\xfe not utf8").await.unwrap();
    store.put(&format!("{s}10.50.206.0-24"), b"null").await.unwrap();
    let mut moved = LeaseManager::new(
        store.clone(),
        layout(),
        cfg.clone(),
        attrs("peer", Ipv4Addr::new(198, 51, 100, 7)),
        LeaseSettings::with_ttl(Duration::from_secs(60)),
    )
    .with_previous(Some(lp.key), None);
    moved.acquire().await.unwrap();
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(10)).await, [format!("~{}", lp.key)]);
    stop.send(true).unwrap();
    let w = task.await.unwrap();
    assert_eq!(w.view().len(), 1);
    assert_eq!(metrics.invalid_leases.get(), bad as u64 + 2);
}

/// `leave`: the lease is deleted and the peers see it go.
pub async fn leave_removes(store: SharedStore) {
    let cfg = small_config();
    let mut a = manager(&store, &cfg, "a", 1, Duration::from_secs(60));
    let mut b = manager(&store, &cfg, "b", 2, Duration::from_secs(60));
    let la = a.acquire().await.unwrap();
    let lb = b.acquire().await.unwrap();
    let view = LeaseView::new(Validator::new(cfg.clone(), "b"), layout(), Some(lb.key));
    let mut w = Watcher::new(store.clone(), view, Arc::new(Metrics::default()));
    let TestIo { mut io, mut rx, stop, own: own_tx, .. } = watcher_io();
    own_tx.send_replace(Some(lb.key));
    let task = tokio::spawn(async move { w.run(&mut io).await });
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(5)).await, [format!("+{}", la.key)]);
    a.release(&la).await.unwrap();
    assert_eq!(collect(&mut rx, 1, Duration::from_secs(5)).await, [format!("-{}", la.key)]);
    let held = holders(&*store).await;
    assert_eq!(held.keys().cloned().collect::<Vec<_>>(), [lb.key.to_string()]);
    stop.send(true).unwrap();
    task.await.unwrap();
}
