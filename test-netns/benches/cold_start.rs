//! Cold start: one `overlayd` starting against 1,000 and 5,000 fake remote leases already in
//! the store, timed from the daemon's spawn until every route, neighbour and FDB entry is in
//! the kernel; against `ip -batch` + `bridge -batch` programming the same entries (measured in
//! the same run), and with a profile of where the daemon's time goes.
//!
//! ```sh
//! cargo bench -p test-netns --bench cold_start                        # N = 1000, 5000; 5 reps
//! cargo bench -p test-netns --bench cold_start -- --smoke             # N = 100; 2 reps
//! cargo bench -p test-netns --bench cold_start -- --leases 1000,5000 --reps 5
//! ```
//!
//! Setup: a one-node `Cluster` on the embedded store with network 10.0.0.0/8 (SubnetLen 24).
//! With the daemon stopped, fake leases are written with the overlayd store API:
//! `10.<1+i/256>.<i%256>.0-24` (the node's own subnet skipped), PublicIP `100.64.x.y`, VtepMAC
//! `0e:00:00:00:hi:lo`. Each repetition: stop the daemon (SIGTERM), delete `flannel.1` (the
//! kernel then holds none of the entries), subscribe to rtnetlink notifications in the node,
//! start the daemon, and stop the clock when the last expected route, neighbour and FDB entry
//! has been announced by the kernel (verified afterwards with dumps).
//!
//! Profile (in-process, same store file, a scratch namespace): the store listing, lease
//! validation, the VXLAN backend's reconciliations (own lease; all peers; the first full
//! listing; a periodic resync), the netlink dumps, `apply_overlay` alone per entry kind, and
//! the nft rules check.

mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use ipnet::IpNet;
use netkernel::overlay::{FdbEntry, Neighbour, OverlayOp, VxlanSpec};
use netkernel::route::Route;
use overlayd::attrs::{LeaseAttrs, VxlanData};
use overlayd::backend::{Backend, BackendEvent};
use overlayd::config::NetworkConfig;
use overlayd::lease::OwnLease;
use overlayd::store::Store;
use overlayd::store::embedded::{EmbeddedOptions, EmbeddedStore};
use overlayd::subnet::{KeyLayout, SubnetKey};
use overlayd::validate::Validator;
use overlayd::vxlan::{VxlanBackend, VxlanSettings};
use overlayd::watcher::LeaseView;
use test_netns::TestNs;
use test_netns::cluster::{Cluster, ClusterOptions, wait_for};

const NETWORK: &str = "10.0.0.0/8";
const PREFIX: &str = "/coreos.com/network/subnets/";

#[derive(Debug, Clone, Copy)]
struct Fake {
    subnet: Ipv4Addr,
    public: Ipv4Addr,
    mac: [u8; 6],
}

fn fakes(n: usize, own: Ipv4Addr) -> Vec<Fake> {
    let mut out = Vec::with_capacity(n);
    let mut j = 0usize;
    while out.len() < n {
        let subnet = Ipv4Addr::new(10, (1 + j / 256) as u8, (j % 256) as u8, 0);
        let k = out.len() + 1;
        j += 1;
        if subnet == own {
            continue;
        }
        out.push(Fake {
            subnet,
            public: Ipv4Addr::new(100, 64 + (k / 62500) as u8, ((k / 250) % 250) as u8, (k % 250 + 1) as u8),
            mac: [0x0e, 0, 0, 0, (k >> 8) as u8, (k & 0xff) as u8],
        });
    }
    out
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn value(f: &Fake) -> String {
    format!(
        r#"{{"PublicIP":"{}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
        f.public,
        mac_str(&f.mac)
    )
}

fn node_subnet(c: &Cluster) -> Ipv4Addr {
    let env = std::fs::read_to_string(c.nodes[0].dir.join("subnet.env")).unwrap();
    let line = env.lines().find(|l| l.starts_with("FLANNEL_SUBNET=")).unwrap();
    let ip: Ipv4Addr = line.trim_start_matches("FLANNEL_SUBNET=").split('/').next().unwrap().parse().unwrap();
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], o[2], 0)
}

/// What one cold start took (seconds from spawn).
#[derive(Debug, Clone, Default)]
struct Start {
    first_entry: f64,
    routes: f64,
    neighs: f64,
    fdb: f64,
    all: f64,
    ready: f64,
    events: [usize; 3],
    overrun: bool,
    daemon_cpu: f64,
    /// From the daemon's log, seconds from spawn: (message, t).
    log: Vec<(String, f64)>,
    verified: bool,
}

/// What the notification watcher saw: per kind (routes, neighbours, FDB) when the last
/// expected entry was announced and how many announcements came; the first one; overruns.
struct Announced {
    done: [Option<Instant>; 3],
    first: Option<Instant>,
    events: [usize; 3],
    overrun: bool,
}

/// Watches a node's notifications until every expected entry has been announced.
fn watch_entries(ns: &TestNs, fakes: &[Fake], stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Announced> {
    let mut m = Monitor::open(ns, GRP_IPV4_ROUTE | GRP_NEIGH, Duration::from_millis(20)).expect("monitor");
    let routes: HashSet<Ipv4Addr> = fakes.iter().map(|f| f.subnet).collect();
    let neighs = routes.clone();
    let macs: HashSet<[u8; 6]> = fakes.iter().map(|f| f.mac).collect();
    std::thread::spawn(move || {
        let n = routes.len();
        let mut seen: [HashSet<Vec<u8>>; 3] = Default::default();
        let mut done: [Option<Instant>; 3] = [None; 3];
        let mut first = None;
        let mut events = [0usize; 3];
        let mut overrun = false;
        let mut evs = Vec::new();
        while !stop.load(Ordering::Relaxed) && done.iter().any(Option::is_none) {
            evs.clear();
            if m.recv(&mut evs).is_err() {
                break;
            }
            let now = Instant::now();
            for e in &evs {
                let slot = match e {
                    Event::Route { new: true, dst: IpAddr::V4(d), len: 24, .. } if routes.contains(d) => {
                        Some((0, d.octets().to_vec()))
                    }
                    Event::Neigh { new: true, bridge: false, ip: Some(IpAddr::V4(ip)), .. }
                        if neighs.contains(ip) =>
                    {
                        Some((1, ip.octets().to_vec()))
                    }
                    Event::Neigh { new: true, bridge: true, mac: Some(m), .. } if macs.contains(m) => {
                        Some((2, m.to_vec()))
                    }
                    Event::Overrun => {
                        overrun = true;
                        None
                    }
                    _ => None,
                };
                if let Some((k, id)) = slot {
                    events[k] += 1;
                    first.get_or_insert(now);
                    seen[k].insert(id);
                    if seen[k].len() == n && done[k].is_none() {
                        done[k] = Some(now);
                    }
                }
            }
        }
        Announced { done, first, events, overrun }
    })
}

/// Counts the expected entries in the node's kernel: (routes, neighbours, fdb).
fn count_entries(ns: &TestNs, fakes: &[Fake]) -> (usize, usize, usize) {
    let nl = ns.netlink();
    let Ok(Some(dev)) = nl.link("flannel.1") else { return (0, 0, 0) };
    let subnets: HashSet<Ipv4Addr> = fakes.iter().map(|f| f.subnet).collect();
    let macs: HashSet<[u8; 6]> = fakes.iter().map(|f| f.mac).collect();
    let r = nl
        .routes(false, None)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.oif == Some(dev.index) && matches!(r.dst.addr(), IpAddr::V4(a) if subnets.contains(&a)))
        .count();
    let n = nl
        .neighbours(dev.index)
        .unwrap_or_default()
        .iter()
        .filter(|x| matches!(x.ip, IpAddr::V4(a) if subnets.contains(&a)))
        .count();
    let f = nl.fdb(dev.index).unwrap_or_default().iter().filter(|x| macs.contains(&x.mac)).count();
    (r, n, f)
}

/// Seconds since the epoch of a tracing timestamp `2026-11-26T03:48:44.123456Z`.
fn log_time(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m, dd) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// The daemon's log lines written since byte `from`, as (message, seconds from `t0`).
fn log_since(path: &Path, from: u64, t0: SystemTime) -> Vec<(String, f64)> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
    let base = t0.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
    text.lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            let t = log_time(ts)?;
            let msg = rest.trim_start();
            let msg = msg.split_once(": ").map_or(msg, |(_, m)| m);
            Some((msg.chars().take(140).collect(), t - base))
        })
        .collect()
}

fn cold_start(c: &mut Cluster, fakes: &[Fake]) -> Start {
    c.stop_daemon(0, libc::SIGTERM);
    let ns = &c.nodes[0].ns;
    let _ = sh(ns, &["ip", "link", "del", "flannel.1"]);
    assert_eq!(count_entries(ns, fakes), (0, 0, 0), "the kernel must start empty");
    let logf = c.nodes[0].dir.join("overlayd.log");
    let log_from = std::fs::metadata(&logf).map(|m| m.len()).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_entries(ns, fakes, stop.clone());
    std::thread::sleep(Duration::from_millis(50));
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    c.start_daemon(0).expect("starting the daemon");
    let ns = &c.nodes[0].ns;
    let mut ready = None;
    let deadline = t0 + Duration::from_secs(300);
    while !watcher.is_finished() && Instant::now() < deadline {
        if ready.is_none() && c.nodes[0].ready() {
            ready = Some(t0.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(if ready.is_none() { 5 } else { 20 }));
    }
    stop.store(true, Ordering::Relaxed);
    let Announced { done, first, events, overrun } = watcher.join().unwrap();
    if ready.is_none() {
        let _ = wait_for(Duration::from_secs(30), "ready", || c.nodes[0].ready());
        ready = Some(t0.elapsed().as_secs_f64());
    }
    let since = |x: Option<Instant>| x.map_or(f64::NAN, |t| t.saturating_duration_since(t0).as_secs_f64());
    let mut s = Start {
        first_entry: since(first),
        routes: since(done[0]),
        neighs: since(done[1]),
        fdb: since(done[2]),
        ready: ready.unwrap_or(f64::NAN),
        events,
        overrun,
        ..Default::default()
    };
    s.all = s.routes.max(s.neighs).max(s.fdb);
    if overrun || !s.all.is_finite() {
        // Notifications were lost: fall back to dumps (50 ms resolution from here).
        let n = fakes.len();
        let _ = wait_for(Duration::from_secs(300), "every entry", || count_entries(ns, fakes) == (n, n, n));
        s.all = t0.elapsed().as_secs_f64();
    }
    // Let the daemon finish its first full reconciliation before reading its CPU and log.
    std::thread::sleep(Duration::from_millis(500));
    s.daemon_cpu = pid_cpu(&pids_in(ns, "overlayd"));
    s.verified = count_entries(ns, fakes) == (fakes.len(), fakes.len(), fakes.len());
    s.log = log_since(&logf, log_from, wall0);
    s
}

/// A restart with the device and every entry in place.
struct Warm {
    /// Seconds from spawn to ready.
    ready: f64,
    /// Entry notifications during the restart, by kind.
    churn: Vec<(String, usize)>,
    /// Routes deleted: from the first deletion to the last re-addition, seconds (0: none).
    blip: f64,
    cpu: f64,
    log: Vec<(String, f64)>,
}

fn warm_restart(c: &mut Cluster, fakes: &[Fake]) -> Warm {
    c.stop_daemon(0, libc::SIGTERM);
    let ns = &c.nodes[0].ns;
    let logf = c.nodes[0].dir.join("overlayd.log");
    let log_from = std::fs::metadata(&logf).map(|m| m.len()).unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    // Any route/neighbour/FDB notification during a warm restart is churn.
    let mut m = Monitor::open(ns, GRP_IPV4_ROUTE | GRP_NEIGH, Duration::from_millis(20)).unwrap();
    let st = stop.clone();
    let churn = std::thread::spawn(move || {
        let mut evs = Vec::new();
        let (mut first_del, mut last_new) = (None, None);
        while !st.load(Ordering::Relaxed) {
            let before = evs.len();
            let _ = m.recv(&mut evs);
            let now = Instant::now();
            for e in &evs[before..] {
                match e {
                    Event::Route { new: false, .. } => {
                        first_del.get_or_insert(now);
                    }
                    Event::Route { new: true, .. } if first_del.is_some() => last_new = Some(now),
                    _ => {}
                }
            }
        }
        let mut by: std::collections::BTreeMap<String, usize> = Default::default();
        for e in &evs {
            let k = match e {
                Event::Route { new, .. } => format!("route {}", if *new { "new" } else { "del" }),
                Event::Neigh { new, bridge, .. } => {
                    format!("{} {}", if *bridge { "fdb" } else { "neigh" }, if *new { "new" } else { "del" })
                }
                Event::Overrun => "overrun".into(),
            };
            *by.entry(k).or_default() += 1;
        }
        let blip = match (first_del, last_new) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            (Some(_), None) => f64::INFINITY,
            _ => 0.0,
        };
        (by.into_iter().collect::<Vec<_>>(), blip)
    });
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    c.start_daemon(0).unwrap();
    let ns = &c.nodes[0].ns;
    wait_for(Duration::from_secs(120), "ready", || c.nodes[0].ready()).unwrap();
    let ready = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let (churn, blip) = churn.join().unwrap();
    let cpu = pid_cpu(&pids_in(ns, "overlayd"));
    assert_eq!(count_entries(ns, fakes), (fakes.len(), fakes.len(), fakes.len()));
    Warm { ready, churn, blip, cpu, log: log_since(&logf, log_from, wall0) }
}

/// Routes through nexthop objects (`ip nexthop replace id K via <vtep> dev flannel.1
/// onlink`, then `ip route replace <subnet> nhid K`) instead of one gateway per route:
/// seconds for the nexthops and for the routes.
fn ip_batch_nexthops(ns: &TestNs, fakes: &[Fake], dir: &Path) -> (f64, f64) {
    let nhf = dir.join(format!("nexthops-{}.batch", fakes.len()));
    let rf = dir.join(format!("nh-routes-{}.batch", fakes.len()));
    let mut nh = String::new();
    let mut r = String::new();
    for (k, f) in fakes.iter().enumerate() {
        let _ = writeln!(nh, "nexthop replace id {} via {} dev flannel.1 onlink", k + 1, f.subnet);
        let _ = writeln!(r, "route replace {}/24 nhid {}", f.subnet, k + 1);
    }
    std::fs::write(&nhf, nh).unwrap();
    std::fs::write(&rf, r).unwrap();
    let _ = sh(ns, &["ip", "link", "del", "flannel.1"]);
    shl(ns, "ip link add flannel.1 address 0e:ff:00:00:00:01 type vxlan id 1 local 198.18.1.1 dev ul dstport 8472 nolearning").unwrap();
    shl(ns, "ip addr add 10.0.0.0/32 dev flannel.1").unwrap();
    shl(ns, "ip link set flannel.1 up").unwrap();
    let t0 = Instant::now();
    sh(ns, &["ip", "-batch", nhf.to_str().unwrap()]).unwrap();
    let t1 = Instant::now();
    sh(ns, &["ip", "-batch", rf.to_str().unwrap()]).unwrap();
    let t2 = Instant::now();
    let _ = sh(ns, &["ip", "link", "del", "flannel.1"]);
    let _ = sh(ns, &["ip", "nexthop", "flush"]);
    ((t1 - t0).as_secs_f64(), (t2 - t1).as_secs_f64())
}

/// `ip -batch` + `bridge -batch` for the same entries on a fresh device in `ns`: seconds.
/// `ip -batch` + `bridge -batch` for the same entries on a fresh device in `ns`: seconds.
/// `kinds`: 1 neighbours, 2 FDB, 4 routes (7 = all, as perf-baselines.sh does it).
fn ip_batch(ns: &TestNs, fakes: &[Fake], dir: &Path, kinds: u8) -> f64 {
    let ipf = dir.join(format!("ip-{}-{kinds}.batch", fakes.len()));
    let brf = dir.join(format!("bridge-{}-{kinds}.batch", fakes.len()));
    let mut ip = String::new();
    let mut br = String::new();
    for f in fakes {
        let m = mac_str(&f.mac);
        if kinds & 1 != 0 {
            let _ = writeln!(ip, "neigh replace {} lladdr {m} dev flannel.1 nud permanent", f.subnet);
        }
        if kinds & 4 != 0 {
            let _ = writeln!(ip, "route replace {}/24 via {} dev flannel.1 onlink", f.subnet, f.subnet);
        }
        if kinds & 2 != 0 {
            let _ = writeln!(br, "fdb replace {m} dev flannel.1 dst {} self permanent", f.public);
        }
    }
    std::fs::write(&ipf, &ip).unwrap();
    std::fs::write(&brf, &br).unwrap();
    let _ = sh(ns, &["ip", "link", "del", "flannel.1"]);
    shl(ns, "ip link add flannel.1 address 0e:ff:00:00:00:01 type vxlan id 1 local 198.18.1.1 dev ul dstport 8472 nolearning").unwrap();
    shl(ns, "ip addr add 10.0.0.0/32 dev flannel.1").unwrap();
    shl(ns, "ip link set flannel.1 up").unwrap();
    let t0 = Instant::now();
    if !ip.is_empty() {
        sh(ns, &["ip", "-batch", ipf.to_str().unwrap()]).unwrap();
    }
    if !br.is_empty() {
        sh(ns, &["bridge", "-batch", brf.to_str().unwrap()]).unwrap();
    }
    let t = t0.elapsed().as_secs_f64();
    if kinds == 7 {
        assert_eq!(count_entries(ns, fakes), (fakes.len(), fakes.len(), fakes.len()));
    }
    t
}

/// In-process timings of the daemon's start-up work, in seconds (median of `reps`).
#[derive(Debug, Default, Clone)]
struct Profile {
    rows: Vec<(String, Vec<f64>)>,
}

impl Profile {
    fn add(&mut self, what: &str, secs: f64) {
        match self.rows.iter_mut().find(|(w, _)| w == what) {
            Some((_, v)) => v.push(secs),
            None => self.rows.push((what.to_string(), vec![secs])),
        }
    }
}

fn timed<T>(p: &mut Profile, what: &str, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    p.add(what, t0.elapsed().as_secs_f64());
    out
}

fn profile(scratch: &TestNs, db: &Path, own: Ipv4Addr, fakes: &[Fake], reps: usize) -> Profile {
    let own_key = SubnetKey::parse(&format!("{own}-24")).unwrap();
    scratch.run(|| {
        let mut p = Profile::default();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let config =
            NetworkConfig::parse(&format!(r#"{{"Network":"{NETWORK}","Backend":{{"Type":"vxlan"}}}}"#))
                .unwrap()
                .config;
        for _ in 0..reps {
            let store =
                timed(&mut p, "store: open", || EmbeddedStore::open(EmbeddedOptions::new(db)).unwrap());
            let listing =
                timed(&mut p, "store: list the leases", || rt.block_on(store.list(PREFIX)).unwrap());
            let mut view = LeaseView::new(
                Validator::new(config.clone(), "profile-node"),
                KeyLayout::new("/coreos.com/network"),
                Some(own_key),
            );
            let applied =
                timed(&mut p, "validation: LeaseView::reset (JSON + checks)", || view.reset(&listing.kvs));
            assert!(applied.events.len() >= fakes.len(), "{} peers", applied.events.len());

            let nl = netkernel::Netlink::current().unwrap();
            if let Ok(Some(d)) = nl.link("flannel.1") {
                nl.delete_link(d.index).unwrap();
            }
            let _ = netkernel::nodenat::NodeRules::remove("ferrocni_overlay");
            let settings = VxlanSettings {
                vni: 1,
                port: 8472,
                direct_routing: false,
                underlay: "ul".into(),
                public_ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1))),
                public_ipv6: None,
                network: Some(NETWORK.parse().unwrap()),
                ipv6_network: None,
                mac: [0x0e, 0xff, 0, 0, 0, 2],
                mac_v6: overlayd::vxlan::v6_mac([0x0e, 0xff, 0, 0, 0, 2]),
                mtu: 1450,
                ip_masq: true,
            };
            let mut b = VxlanBackend::new(settings);
            let own_lease = OwnLease {
                key: own_key,
                attrs: LeaseAttrs {
                    public_ip: Some(Ipv4Addr::new(198, 18, 1, 1)),
                    public_ipv6: None,
                    backend_type: "vxlan".into(),
                    backend_data: VxlanData { vni: 1, vtep_mac: [0x0e, 0xff, 0, 0, 0, 2] }.to_value(),
                    backend_v6_data: serde_json::Value::Null,
                    node_id: Some("profile-node".into()),
                    identity: None,
                    signature: None,
                    encryption: serde_json::Value::Null,
                },
                mod_revision: 1,
                store_lease: 0,
            };
            let none = overlayd::node::PeerSet::default();
            let peers = view.peer_set();
            rt.block_on(async {
                let ev = BackendEvent::OwnLease(Box::new(own_lease));
                let t0 = Instant::now();
                b.apply(&ev, &none).await.unwrap();
                p.add("backend: own lease (device, address, nft rules)", t0.elapsed().as_secs_f64());
                let ev = BackendEvent::Peers(applied.events);
                let t0 = Instant::now();
                b.apply(&ev, &peers).await.unwrap();
                p.add(
                    "backend: all peers (dumps + diff + apply_overlay + rules check)",
                    t0.elapsed().as_secs_f64(),
                );
                let t0 = Instant::now();
                b.apply(&BackendEvent::Synced, &peers).await.unwrap();
                p.add("backend: first full listing (Synced; nothing to change)", t0.elapsed().as_secs_f64());
                let t0 = Instant::now();
                b.apply(&BackendEvent::Resync, &peers).await.unwrap();
                p.add("backend: periodic resync (every 10 s)", t0.elapsed().as_secs_f64());
            });
            let dev = nl.require_link("flannel.1").unwrap();
            timed(&mut p, "netlink: dump neighbours", || nl.neighbours(dev.index).unwrap());
            timed(&mut p, "netlink: dump FDB", || nl.fdb(dev.index).unwrap());
            timed(&mut p, "netlink: dump IPv4 routes", || nl.routes(false, None).unwrap());
            timed(&mut p, "netlink: dump addresses of ul + flannel.1", || {
                nl.addresses(nl.require_link("ul").unwrap().index).unwrap();
                nl.addresses(dev.index).unwrap()
            });
            let rules = netkernel::nodenat::NodeRules {
                table: "ferrocni_overlay".into(),
                v4: Some(netkernel::nodenat::FamilyNets {
                    network: NETWORK.parse().unwrap(),
                    pods: IpNet::V4(format!("{own}/24").parse().unwrap()),
                }),
                v6: None,
                masquerade: true,
                forward: true,
            };
            timed(&mut p, "nft: rules check (NodeRules::ensure, in place)", || rules.ensure().unwrap());

            // apply_overlay alone, per kind, on a fresh device.
            for (kind, which) in
                [("all 3 kinds", 7u8), ("neighbours only", 1), ("FDB only", 2), ("routes only", 4)]
            {
                if let Ok(Some(d)) = nl.link("flannel.1") {
                    nl.delete_link(d.index).unwrap();
                }
                let spec = VxlanSpec {
                    name: "flannel.1".into(),
                    vni: 1,
                    port: 8472,
                    local: IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)),
                    dev: nl.require_link("ul").unwrap().index,
                    mtu: 1450,
                    mac: [0x0e, 0xff, 0, 0, 0, 2],
                };
                let (dev, _) = nl.ensure_vxlan(&spec).unwrap();
                let mut ops = Vec::new();
                for f in fakes {
                    let vtep = IpAddr::V4(f.subnet);
                    if which & 1 != 0 {
                        ops.push(OverlayOp::SetNeighbour(dev.index, Neighbour { ip: vtep, mac: f.mac }));
                    }
                    if which & 2 != 0 {
                        ops.push(OverlayOp::SetFdb(
                            dev.index,
                            FdbEntry { mac: f.mac, dst: IpAddr::V4(f.public) },
                        ));
                    }
                    if which & 4 != 0 {
                        let mut r = Route::new(
                            IpNet::V4(format!("{}/24", f.subnet).parse().unwrap()),
                            Some(vtep),
                            Some(dev.index),
                        );
                        r.onlink = true;
                        ops.push(OverlayOp::SetRoute(r));
                    }
                }
                let n = ops.len();
                let t0 = Instant::now();
                let failed = nl.apply_overlay(ops);
                p.add(&format!("netlink: apply_overlay alone, {kind} ({n} ops)"), t0.elapsed().as_secs_f64());
                assert!(failed.is_empty(), "{} failed, first: {:?}", failed.len(), failed.first());
            }
            if let Ok(Some(d)) = nl.link("flannel.1") {
                nl.delete_link(d.index).unwrap();
            }
        }
        let _ = netkernel::nodenat::NodeRules::remove("ferrocni_overlay");
        p
    })
}

fn main() {
    let Some(run) = gate("cold_start") else { return };
    let ns_list: Vec<usize> = run.list("--leases", if run.smoke { &[100] } else { &[1000, 5000] });
    let reps: usize =
        run.value("--reps").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 2 } else { 5 });
    let prof_reps = if run.smoke { 1 } else { 3 };
    let out = out_dir("cold_start");
    let mut env = String::new();
    let _ = writeln!(env, "start: {}; load average {}", utc_now(), loadavg());
    let _ = writeln!(env, "top processes at start:\n{}", top_processes());
    eprintln!("{env}");
    let bin = bin_dir(&run);
    let _ = writeln!(env, "{}", bin_info(&bin));

    let mut opts = ClusterOptions::new(1, &bin);
    opts.network = NETWORK.into();
    let mut c = Cluster::start(opts).expect("starting the cluster");
    let own = node_subnet(&c);
    let db = c.work_dir().join("store.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(&db)).unwrap();
    let scratch = TestNs::new("coldprof");
    {
        let nl = scratch.netlink();
        nl.add_veth("ul", "ulpeer", None, &Default::default()).unwrap();
        nl.set_up(scratch.link_index("ulpeer")).unwrap();
    }
    scratch.add_address("ul", "198.18.1.1/24");

    let mut written = 0usize;
    let mut results = Vec::new();
    for &n in &ns_list {
        let fk = fakes(n, own);
        c.stop_daemon(0, libc::SIGTERM);
        let w0 = Instant::now();
        rt.block_on(async {
            // Bound to a store lease, as a node writes its lease (one without is refused).
            let lease = store.grant(Duration::from_secs(3600)).await.unwrap();
            for f in &fk[written.min(n)..] {
                store.create(&format!("{PREFIX}{}-24", f.subnet), value(f).as_bytes(), lease).await.unwrap();
            }
        });
        eprintln!("N={n}: wrote {} leases in {:.1} s", n.saturating_sub(written), w0.elapsed().as_secs_f64());
        written = written.max(n);
        let mut starts = Vec::new();
        for r in 0..reps {
            let pre = wait_quiet(Duration::from_secs(if run.smoke { 0 } else { 30 }));
            let s = cold_start(&mut c, &fk);
            eprintln!(
                "N={n} rep{r}: all entries after {:.3} s (routes {:.3}, neighbours {:.3}, fdb {:.3}; first entry {:.3}; ready {:.3}); daemon CPU {:.2} s; events {:?}{}{}; machine busy before {pre:.0}%",
                s.all,
                s.routes,
                s.neighs,
                s.fdb,
                s.first_entry,
                s.ready,
                s.daemon_cpu,
                s.events,
                if s.overrun { " OVERRUN" } else { "" },
                if s.verified { "" } else { " NOT VERIFIED" },
            );
            for (m, t) in &s.log {
                eprintln!("    {t:8.3} s  {m}");
            }
            starts.push(s);
        }
        let mut warms = Vec::new();
        for r in 0..reps {
            let w = warm_restart(&mut c, &fk);
            eprintln!(
                "N={n} warm restart {r}: ready after {:.3} s, entry notifications {:?}, routes gone for {:.3} s, daemon CPU {:.2} s",
                w.ready, w.churn, w.blip, w.cpu
            );
            for (m, t) in &w.log {
                eprintln!("    {t:8.3} s  {m}");
            }
            warms.push(w);
        }
        let batch: Vec<f64> = (0..reps).map(|_| ip_batch(&scratch, &fk, &out, 7)).collect();
        eprintln!("N={n} ip -batch + bridge -batch: {:?}", batch);
        let mut prof = profile(&scratch, &db, own, &fk, prof_reps);
        for _ in 0..prof_reps {
            for (what, kinds) in [
                ("ip -batch: neighbours only", 1),
                ("bridge -batch: FDB only", 2),
                ("ip -batch: routes only", 4),
            ] {
                prof.add(
                    &format!("reference: {what} ({n} entries, process included)"),
                    ip_batch(&scratch, &fk, &out, kinds),
                );
            }
            let (nh, r) = ip_batch_nexthops(&scratch, &fk, &out);
            prof.add(
                &format!("reference: ip -batch: {n} nexthop objects (nexthop replace id K via … onlink)"),
                nh,
            );
            prof.add(
                &format!("reference: ip -batch: {n} routes via those nexthops (route replace … nhid K)"),
                r,
            );
            prof.add("reference: nexthop objects + their routes, total", nh + r);
        }
        for (w, v) in &prof.rows {
            eprintln!("N={n} profile {w}: {:.1} ms", median(v) * 1e3);
        }
        results.push((n, starts, warms, batch, prof));
    }
    let _ = writeln!(env, "end: {}; load average {}", utc_now(), loadavg());

    for (n, starts, warms, batch, _) in &results {
        emit(
            &run,
            "cold_start",
            "cold_start",
            serde_json::json!({
                "leases": n,
                "spawn_to_all_s": starts.iter().map(|s| s.all).collect::<Vec<_>>(),
                "ready_s": starts.iter().map(|s| s.ready).collect::<Vec<_>>(),
                "first_entry_s": starts.iter().map(|s| s.first_entry).collect::<Vec<_>>(),
                "daemon_cpu_s": starts.iter().map(|s| s.daemon_cpu).collect::<Vec<_>>(),
                "warm_ready_s": warms.iter().map(|w| w.ready).collect::<Vec<_>>(),
                "ip_batch_s": batch,
            }),
        );
    }
    let mut md = String::new();
    let _ = writeln!(md, "## cold start: one daemon, N fake remote leases, {reps} reps (median, min–max)\n");
    let mut rows = Vec::new();
    for (n, starts, warms, batch, _) in &results {
        let col = |g: &dyn Fn(&Start) -> f64| -> Vec<f64> { starts.iter().map(g).collect() };
        let all = col(&|s| s.all);
        let b = median(batch);
        let doc = if *n == 1000 {
            "0.076"
        } else if *n == 100 {
            "0.013"
        } else {
            "–"
        };
        rows.push(vec![
            format!("**{n}**"),
            format!("{} ({}–{})", f(median(&all), 3), f(range(&all).0, 3), f(range(&all).1, 3)),
            f(median(&col(&|s| s.ready)), 3),
            f(median(&col(&|s| s.first_entry)), 3),
            f(median(&col(&|s| s.routes)), 3),
            f(median(&col(&|s| s.neighs)), 3),
            f(median(&col(&|s| s.fdb)), 3),
            f(median(&col(&|s| s.daemon_cpu)), 2),
            format!("{} ({}–{})", f(b, 3), f(range(batch).0, 3), f(range(batch).1, 3)),
            doc.to_string(),
            format!("{:.1}×", median(&all) / b),
            format!("{} s", f(median(&warms.iter().map(|w| w.ready).collect::<Vec<_>>()), 3)),
            {
                let flushed: Vec<&Warm> = warms.iter().filter(|w| w.blip > 0.0).collect();
                if flushed.is_empty() {
                    format!("0 of {}", warms.len())
                } else {
                    format!(
                        "**{} of {}** (routes gone up to {} s; {})",
                        flushed.len(),
                        warms.len(),
                        f(flushed.iter().map(|w| w.blip).fold(0.0, f64::max), 3),
                        flushed[0]
                            .churn
                            .iter()
                            .map(|(k, v)| format!("{v} {k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            },
        ]);
    }
    md += &table(
        &[
            "N",
            "spawn → every entry, s",
            "→ ready",
            "→ first entry",
            "→ all routes",
            "→ all neighbours",
            "→ all FDB",
            "daemon CPU s",
            "ip+bridge -batch (this run), s",
            "perf-baselines.md, s",
            "daemon / batch",
            "warm restart → ready",
            "warm restarts that flushed the datapath",
        ],
        &rows,
    );
    for (n, starts, warms, _, prof) in &results {
        let _ = writeln!(md, "\n### N = {n}: where the time goes\n");
        let _ = writeln!(md, "Daemon log of the median run (seconds from spawn):\n");
        let mut sorted: Vec<&Start> = starts.iter().collect();
        sorted.sort_by(|a, b| a.all.partial_cmp(&b.all).unwrap());
        if let Some(s) = sorted.get(sorted.len() / 2) {
            let _ = writeln!(md, "```");
            for (m, t) in &s.log {
                let _ = writeln!(md, "{t:8.3}  {m}");
            }
            let _ = writeln!(md, "```");
        }
        if let Some(w) = warms.iter().find(|w| w.blip > 0.0) {
            let _ = writeln!(
                md,
                "\nDaemon log of a warm restart that flushed the datapath (seconds from spawn):\n\n```"
            );
            for (m, t) in &w.log {
                let _ = writeln!(md, "{t:8.3}  {m}");
            }
            let _ = writeln!(md, "```");
        }
        let _ = writeln!(
            md,
            "\nIn-process profile (median of {prof_reps}; same store file, scratch namespace):\n"
        );
        let prow: Vec<Vec<String>> = prof
            .rows
            .iter()
            .map(|(w, v)| {
                vec![w.clone(), f(median(v) * 1e3, 1), f(range(v).0 * 1e3, 1), f(range(v).1 * 1e3, 1)]
            })
            .collect();
        md += &table(&["step", "ms (median)", "min", "max"], &prow);
    }
    let _ = writeln!(md, "\nRaw data: {}", out.display());
    std::fs::write(out.join("env.txt"), &env).unwrap();
    std::fs::write(out.join("summary.md"), &md).unwrap();
    println!("{env}\n{md}");
    drop(c);
    let _ = std::fs::remove_dir_all(&bin);
}
