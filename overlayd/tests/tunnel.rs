//! The userspace WireGuard tunnel between two network namespaces joined by a veth: ping and
//! TCP across, key rotation without loss, spoofed sources, peer removal, restart of a
//! persistent device, interop with wireguard-go, and (ignored) a throughput measurement.
//! Needs root; every namespace is removed when its test ends, also on failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use overlayd::tunnel::{Offloads, PeerSpec, Tunnel, TunnelConfig, public_key};
use test_netns::{EchoServer, TestNs, require_root, tcp_echo, veth_between};

const TUN: &str = "wg0";
const PORT: u16 = 51820;

fn random_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for b in &mut k {
        *b = fastrand::u8(..);
    }
    k
}

/// One fake node: a namespace with an underlay address, a pod address on the TUN and its
/// pod subnet `10.99.<n>.0/24`.
struct Node {
    ns: TestNs,
    n: u8,
    key: [u8; 32],
    tunnel: Option<Tunnel>,
}

impl Node {
    fn underlay(&self) -> String {
        format!("192.0.2.{}", self.n)
    }

    fn pod(&self) -> String {
        format!("10.99.{}.1", self.n)
    }

    fn subnet(&self) -> String {
        format!("10.99.{}.0/24", self.n)
    }

    fn start(&mut self, persist: bool, off: Offloads) {
        let cfg = TunnelConfig { name: TUN.into(), port: PORT, threads: 0, persist };
        let key = self.key;
        let t = self.ns.run(|| Tunnel::start_with(cfg, key, off)).expect("tunnel starts");
        self.tunnel = Some(t);
    }

    fn t(&self) -> &Tunnel {
        self.tunnel.as_ref().expect("tunnel running")
    }

    fn spec_for_me(&self) -> PeerSpec {
        PeerSpec {
            id: format!("node-{}", self.n),
            public_key: public_key(&self.key),
            endpoint: format!("{}:{PORT}", self.underlay()).parse().unwrap(),
            allowed: vec![self.subnet().parse().unwrap()],
            preshared_key: None,
            keepalive: None,
        }
    }

    fn wait_established(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            let st = self.t().status();
            if !st.is_empty() && st.iter().all(|p| p.established) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

/// Two nodes joined by a veth, tunnels up, addresses and routes set, peers set both ways.
fn pair(off: Offloads) -> (Node, Node) {
    let mut a = Node { ns: TestNs::new("wga"), n: 1, key: random_key(), tunnel: None };
    let mut b = Node { ns: TestNs::new("wgb"), n: 2, key: random_key(), tunnel: None };
    veth_between(&a.ns, "ul0", &b.ns, "ul0");
    a.ns.add_address("ul0", "192.0.2.1/24");
    b.ns.add_address("ul0", "192.0.2.2/24");
    a.start(false, off);
    b.start(false, off);
    configure_tun(&a, &b);
    configure_tun(&b, &a);
    a.t().set_peers(vec![b.spec_for_me()]);
    b.t().set_peers(vec![a.spec_for_me()]);
    assert!(a.wait_established(Duration::from_secs(5)), "a established: {:?}", a.t().status());
    assert!(b.wait_established(Duration::from_secs(5)), "b established: {:?}", b.t().status());
    (a, b)
}

/// What the control plane would do: the pod address on the TUN, MTU, up, a route to the
/// other node's pod subnet through the TUN.
fn configure_tun(x: &Node, other: &Node) {
    let ns = &x.ns;
    ns.exec(&["ip", "addr", "add", &format!("{}/32", x.pod()), "dev", TUN]);
    ns.exec(&["ip", "link", "set", TUN, "mtu", "1420", "up"]);
    ns.exec(&["ip", "route", "add", &other.subnet(), "dev", TUN, "src", &x.pod()]);
}

/// A pod namespace behind `node`, at `10.99.<n>.5`, wired like a CNI plugin would (a veth,
/// a /32 route on the node, forwarding on).
fn pod_behind(node: &Node) -> (TestNs, String) {
    let pod = TestNs::new(&format!("pod{}", node.n));
    veth_between(&pod, "eth0", &node.ns, "vpod");
    let addr = format!("10.99.{}.5", node.n);
    pod.exec(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "eth0"]);
    pod.lo_up();
    pod.exec(&["ip", "route", "add", "169.254.1.1", "dev", "eth0"]);
    pod.exec(&["ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
    node.ns.exec(&["ip", "addr", "add", "169.254.1.1/32", "dev", "vpod"]);
    node.ns.exec(&["ip", "route", "add", &format!("{addr}/32"), "dev", "vpod"]);
    node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    (pod, addr)
}

fn ping(from: &TestNs, to: &str, count: u32) -> bool {
    from.try_exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", to])
}

#[test]
fn ping_and_tcp_across() {
    require_root!();
    let (a, b) = pair(Offloads::default());
    assert!(ping(&a.ns, &b.pod(), 3), "a → b ping");
    assert!(ping(&b.ns, &a.pod(), 3), "b → a ping");
    let echo = EchoServer::start(&b.ns, &format!("{}:7000", b.pod()));
    let n = tcp_echo(&a.ns, echo.addr(), 8 << 20, Duration::from_secs(20)).expect("TCP echo");
    assert_eq!(n, 8 << 20);
    let (sa, sb) = (a.t().stats(), b.t().stats());
    assert!(sa.tx_packets > 1000 && sb.rx_packets > 1000, "{sa:?} {sb:?}");
    assert_eq!(sa.dropped_bad_source + sb.dropped_bad_source, 0);
    let st = a.t().status();
    assert_eq!(st[0].id, "node-2");
    assert!(st[0].tx_bytes > 8 << 20 && st[0].rx_bytes > 8 << 20, "{st:?}");
    assert!(st[0].last_handshake.is_some());
    assert_eq!(st[0].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
}

/// Pod to pod through both nodes' forwarding: the TUN gets forwarded (GSO, partial
/// checksum) packets and the coalesced writes are forwarded on to a veth.
#[test]
fn pod_to_pod_through_forwarding() {
    require_root!();
    let (a, b) = pair(Offloads::default());
    let (pa, _) = pod_behind(&a);
    let (pb, pb_addr) = pod_behind(&b);
    assert!(ping(&pa, &pb_addr, 2), "pod → pod ping");
    let echo = EchoServer::start(&pb, &format!("{pb_addr}:7000"));
    let n = tcp_echo(&pa, echo.addr(), 16 << 20, Duration::from_secs(30)).expect("pod-to-pod TCP echo");
    assert_eq!(n, 16 << 20);
    assert_eq!(a.t().stats().dropped_invalid + b.t().stats().dropped_bad_source, 0);
}

#[test]
fn ping_and_tcp_without_offloads() {
    require_root!();
    let (a, b) = pair(Offloads { tun_tso: false, udp: false, tun_gro: false });
    assert!(ping(&a.ns, &b.pod(), 2), "a → b ping");
    let echo = EchoServer::start(&b.ns, &format!("{}:7000", b.pod()));
    let n = tcp_echo(&a.ns, echo.addr(), 4 << 20, Duration::from_secs(20)).expect("TCP echo");
    assert_eq!(n, 4 << 20);
}

/// Runs `ping` at 100 pps for `secs` in the background; returns the child.
fn flood(from: &TestNs, to: &str, secs: u32) -> Child {
    from.command("ping")
        .args(["-i", "0.01", "-c", &(secs * 100).to_string(), "-W", "1", to])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping runs")
}

/// (transmitted, received) from ping's summary.
fn ping_result(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().expect("ping finishes");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("transmitted")).unwrap_or_default().to_string();
    let nums: Vec<u32> = line.split(',').filter_map(|f| f.split_whitespace().next()?.parse().ok()).collect();
    assert!(nums.len() >= 2, "ping summary: {text}");
    (nums[0], nums[1])
}

#[test]
fn private_key_rotation_loses_nothing() {
    require_root!();
    let (mut a, b) = pair(Offloads::default());
    let mut changes = a.t().changes();
    let ping = flood(&a.ns, &b.pod(), 5);
    std::thread::sleep(Duration::from_millis(1000));
    // a rotates; b learns a's new public key a little later (as through the lease).
    let new_key = random_key();
    a.t().set_private_key(new_key);
    a.key = new_key;
    let st = &a.t().status()[0];
    assert!(!st.established, "not established with the new key before the handshake");
    assert!(st.can_send, "the old session still carries traffic");
    std::thread::sleep(Duration::from_millis(700));
    b.t().set_peers(vec![a.spec_for_me()]);
    assert!(a.wait_established(Duration::from_secs(3)), "a re-established: {:?}", a.t().status());
    assert!(b.wait_established(Duration::from_secs(3)), "b re-established: {:?}", b.t().status());
    assert!(changes.has_changed().unwrap(), "established flips were announced");
    changes.mark_unchanged();
    // And b rotates too, while a already knows nothing about it yet.
    std::thread::sleep(Duration::from_millis(500));
    let b_new = random_key();
    let mut b = b;
    b.t().set_private_key(b_new);
    b.key = b_new;
    std::thread::sleep(Duration::from_millis(300));
    a.t().set_peers(vec![b.spec_for_me()]);
    let (sent, got) = ping_result(ping);
    assert_eq!(sent, 500);
    assert_eq!(got, sent, "no ping lost across two key rotations");
    assert!(a.wait_established(Duration::from_secs(3)) && b.wait_established(Duration::from_secs(3)));
    assert!(a.t().stats().handshakes_completed >= 2);
}

/// A peer that only knows our previous public key (here: it restarted before learning the
/// new one) still gets its handshake answered during the overlap.
#[test]
fn handshake_to_previous_key_is_answered() {
    require_root!();
    let (mut a, mut b) = pair(Offloads::default());
    let a_old = a.spec_for_me();
    a.key = random_key();
    a.t().set_private_key(a.key);
    b.tunnel.take().unwrap().stop();
    b.start(false, Offloads::default());
    configure_tun(&b, &a);
    b.t().set_peers(vec![a_old]);
    assert!(b.wait_established(Duration::from_secs(3)), "b handshook with a's previous key");
    assert!(ping(&b.ns, &a.pod(), 2), "b → a over the previous key's session");
    assert!(ping(&a.ns, &b.pod(), 2), "a → b too");
}

/// WireGuard roaming: an authenticated packet from a new address moves the endpoint; a
/// later `set_peers` with a changed endpoint overrides it.
#[test]
fn endpoint_roams_and_spec_change_overrides() {
    require_root!();
    let (a, b) = pair(Offloads::default());
    let mut wrong = a.spec_for_me();
    wrong.endpoint = "192.0.2.1:9999".parse().unwrap();
    // Only the endpoint changed: the session is kept, and a's next packet corrects it.
    b.t().set_peers(vec![wrong.clone()]);
    assert_eq!(b.t().status()[0].endpoint, wrong.endpoint.into());
    assert!(ping(&a.ns, &b.pod(), 1), "a → b");
    assert_eq!(b.t().status()[0].endpoint, Some("192.0.2.1:51820".parse().unwrap()), "roamed");
    assert!(ping(&b.ns, &a.pod(), 1), "b → a at the roamed endpoint");
    wrong.endpoint = "192.0.2.1:9998".parse().unwrap();
    b.t().set_peers(vec![wrong.clone()]);
    assert_eq!(b.t().status()[0].endpoint, Some(wrong.endpoint), "a changed spec endpoint wins");
}

#[test]
fn spoofed_inner_source_is_dropped_and_counted() {
    require_root!();
    let (a, b) = pair(Offloads::default());
    // An address of a that is outside the subnet b accepts from a.
    a.ns.exec(&["ip", "addr", "add", "10.55.0.1/32", "dev", TUN]);
    let before = b.t().stats().dropped_bad_source;
    let ok = a.ns.try_exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.55.0.1", &b.pod()]);
    assert!(!ok, "a spoofed source must not get through");
    let after = b.t().stats().dropped_bad_source;
    assert!(after >= before + 3, "counted: {before} → {after}");
    // Legitimate traffic still flows.
    assert!(ping(&a.ns, &b.pod(), 1));
}

#[test]
fn removing_a_peer_stops_traffic() {
    require_root!();
    let (a, b) = pair(Offloads::default());
    assert!(ping(&a.ns, &b.pod(), 1));
    let changes = b.t().changes();
    b.t().set_peers(vec![]);
    assert!(b.t().status().is_empty());
    assert!(changes.has_changed().unwrap(), "removal of an established peer is announced");
    let inv = b.t().stats().dropped_invalid;
    assert!(!ping(&a.ns, &b.pod(), 2), "b no longer accepts a");
    assert!(b.t().stats().dropped_invalid > inv, "a's packets counted as invalid at b");
    let before = b.t().stats().dropped_no_peer;
    assert!(!b.ns.try_exec(&["ping", "-c", "1", "-W", "1", &a.pod()]));
    assert!(b.t().stats().dropped_no_peer > before, "b's packets to a have no peer");
}

#[test]
fn persistent_device_restart_resumes_within_a_second() {
    require_root!();
    let mut a = Node { ns: TestNs::new("wgpa"), n: 1, key: random_key(), tunnel: None };
    let mut b = Node { ns: TestNs::new("wgpb"), n: 2, key: random_key(), tunnel: None };
    veth_between(&a.ns, "ul0", &b.ns, "ul0");
    a.ns.add_address("ul0", "192.0.2.1/24");
    b.ns.add_address("ul0", "192.0.2.2/24");
    a.start(true, Offloads::default());
    configure_tun(&a, &b);
    b.start(false, Offloads::default());
    configure_tun(&b, &a);
    a.t().set_peers(vec![b.spec_for_me()]);
    b.t().set_peers(vec![a.spec_for_me()]);
    assert!(a.wait_established(Duration::from_secs(5)));
    assert!(ping(&a.ns, &b.pod(), 1));
    let ifindex = a.t().ifindex();

    a.tunnel.take().unwrap().stop();
    // The device and its route outlive the process.
    let routes = a.ns.exec(&["ip", "route", "show", "dev", TUN]);
    assert!(routes.contains("10.99.2.0/24"), "route kept: {routes}");

    let t0 = Instant::now();
    a.start(true, Offloads::default());
    assert_eq!(a.t().ifindex(), ifindex, "same device re-attached");
    a.t().set_peers(vec![b.spec_for_me()]);
    let mut back = false;
    while t0.elapsed() < Duration::from_secs(1) {
        if a.ns.try_exec(&["ping", "-c", "1", "-W", "1", "-w", "1", &b.pod()]) {
            back = true;
            break;
        }
    }
    assert!(back, "traffic back within 1 s of the restart");
    eprintln!("restart → first ping answered: {:?}", t0.elapsed());
    // Without persist the device goes away with the last queue.
    a.tunnel.take().unwrap().stop();
    a.start(false, Offloads::default());
    a.tunnel.take().unwrap().stop();
    assert!(!a.ns.try_exec(&["ip", "link", "show", TUN]), "non-persistent device removed");
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for q in s.trim().as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q.iter().fold(0u32, |n, &c| n << 6 | if c == b'=' { 0 } else { val(c) as u32 });
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// Stops a child process on drop: SIGTERM first (wireguard-go then removes its device
/// and UAPI socket), SIGKILL if it lingers; then removes `socket` if it is still there.
struct Reap(Child, Option<String>);

impl Drop for Reap {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(s) = &self.1 {
            let _ = std::fs::remove_file(s);
        }
    }
}

#[test]
fn interop_with_wireguard_go() {
    require_root!();
    let have = |p: &str| Command::new("which").arg(p).output().is_ok_and(|o| o.status.success());
    if !have("wireguard-go") || !have("wg") {
        eprintln!("SKIPPED: wireguard-go and wg are not installed");
        return;
    }
    let mut a = Node { ns: TestNs::new("wgia"), n: 1, key: random_key(), tunnel: None };
    let b = Node { ns: TestNs::new("wgib"), n: 2, key: random_key(), tunnel: None };
    veth_between(&a.ns, "ul0", &b.ns, "ul0");
    a.ns.add_address("ul0", "192.0.2.1/24");
    b.ns.add_address("ul0", "192.0.2.2/24");
    a.start(false, Offloads::default());
    configure_tun(&a, &b);

    // wireguard-go in b; its UAPI socket path is global, so the name is unique.
    let dev = format!("wgt{}", std::process::id() % 100_000);
    let sock = format!("/var/run/wireguard/{dev}.sock");
    let _wg = Reap(
        b.ns.command("wireguard-go")
            .args(["-f", &dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go starts"),
        Some(sock.clone()),
    );
    let t0 = Instant::now();
    while !std::path::Path::new(&sock).exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let keyfile = tempfile_path(&format!("wgkey-{dev}"));
    std::fs::write(&keyfile, base64(&b.key)).unwrap();
    b.ns.exec(&[
        "wg",
        "set",
        &dev,
        "private-key",
        &keyfile,
        "listen-port",
        "51820",
        "peer",
        &base64(&public_key(&a.key)),
        "endpoint",
        "192.0.2.1:51820",
        "allowed-ips",
        &a.subnet(),
    ]);
    let _ = std::fs::remove_file(&keyfile);
    let b_pub = unbase64(&b.ns.exec(&["wg", "show", &dev, "public-key"]));
    assert_eq!(b_pub, public_key(&b.key), "same public key computed by wg");
    b.ns.exec(&["ip", "addr", "add", &format!("{}/32", b.pod()), "dev", &dev]);
    b.ns.exec(&["ip", "link", "set", &dev, "mtu", "1420", "up"]);
    b.ns.exec(&["ip", "route", "add", &a.subnet(), "dev", &dev, "src", &b.pod()]);

    a.t().set_peers(vec![b.spec_for_me()]);
    assert!(a.wait_established(Duration::from_secs(5)), "handshake with wireguard-go: {:?}", a.t().status());
    assert!(ping(&a.ns, &b.pod(), 3), "ours → wireguard-go");
    assert!(ping(&b.ns, &a.pod(), 3), "wireguard-go → ours");
    let echo = EchoServer::start(&b.ns, &format!("{}:7000", b.pod()));
    let n =
        tcp_echo(&a.ns, echo.addr(), 4 << 20, Duration::from_secs(20)).expect("TCP echo via wireguard-go");
    assert_eq!(n, 4 << 20);
    a.tunnel.take().unwrap().stop();
}

fn tempfile_path(name: &str) -> String {
    std::env::temp_dir().join(name).to_string_lossy().into_owned()
}

/// iperf3 through the tunnel: `cargo test --release -p overlayd --test tunnel -- --ignored
/// --nocapture throughput`. FERRO_WG_OFFLOADS=none|tx|all (default all).
#[test]
#[ignore]
fn throughput() {
    require_root!();
    let off = match std::env::var("FERRO_WG_OFFLOADS").as_deref() {
        Ok("none") => Offloads { tun_tso: false, udp: false, tun_gro: false },
        Ok("tx") => Offloads { tun_tso: true, udp: true, tun_gro: false },
        _ => Offloads::default(),
    };
    let secs = std::env::var("FERRO_WG_SECS").unwrap_or_else(|_| "10".into());
    let (a, b) = pair(off);
    // Pod to pod, through both nodes' forwarding, as in a cluster.
    let (pa, _) = pod_behind(&a);
    let (pb, pb_addr) = pod_behind(&b);
    let _server = Reap(
        pb.command("iperf3")
            .args(["-s", "-B", &pb_addr])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("iperf3 server"),
        None,
    );
    std::thread::sleep(Duration::from_millis(300));
    for streams in ["1", "4"] {
        let out = pa.exec(&["iperf3", "-c", &pb_addr, "-t", &secs, "-P", streams, "-f", "m"]);
        let line = out.lines().rev().find(|l| l.contains("receiver")).unwrap_or_default();
        eprintln!("offloads {off:?}, {streams} stream(s): {line}");
    }
    eprintln!("a: {:?}\nb: {:?}", a.t().stats(), b.t().stats());
}
