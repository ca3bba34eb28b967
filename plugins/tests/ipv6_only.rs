//! The plugin-suite plugins in IPv6-only networks: each one chained after bridge and
//! host-local with a single IPv6 range (no IPv4 anywhere in the pod network), the list run
//! by the runtime library (`cni_spec::runtime`, what libcni does: each plugin in order with
//! the previous result, CHECK with the cached result, DEL in reverse) inside a namespace
//! that plays the node. Each test asserts the plugin's effect on IPv6 traffic, and that DEL
//! leaves nothing. (portmap over IPv6-only is in portmap.rs, driven by `cnictl`.)

mod chain_util;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Stdio};
use std::time::Duration;

use cni_spec::NetConfList;
use cni_spec::SuccessResult;
use cni_spec::runtime::{Attach, Runtime};
use serde_json::{Value, json};
use test_netns::{EchoServer, TestNs, ping, require_root, tcp_echo};

/// A node namespace, its IPAM store, result cache and the runtime that runs the lists.
struct Node {
    ns: TestNs,
    dir: tempfile::TempDir,
    rt: Runtime,
}

/// One pod attached by a list.
struct Pod {
    ns: TestNs,
    att: Attach,
    result: SuccessResult,
}

impl Pod {
    /// The pod's (only) address.
    fn ip(&self) -> IpAddr {
        self.result.ips[0].address.addr()
    }
}

impl Node {
    fn new(label: &str) -> Node {
        let ns = TestNs::new(label);
        ns.lo_up();
        let dir = tempfile::tempdir().unwrap();
        let rt = Runtime::new(vec![chain_util::bin_dir()]).with_cache_dir(dir.path().join("cache"));
        Node { ns, dir, rt }
    }

    /// Network `name`: bridge `bridge` with host-local handing out `subnet` (IPv6) only, a
    /// default route over IPv6 only, then `then`.
    fn list(&self, name: &str, bridge: &str, subnet: &str, then: Vec<Value>) -> NetConfList {
        let mut plugins = vec![json!({"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
            "ipam": {"type": "host-local", "dataDir": self.dir.path().join("ipam"),
                     "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "::/0"}]}})];
        plugins.extend(then);
        let list = json!({"cniVersion": "1.1.0", "name": name, "plugins": plugins});
        NetConfList::parse(list.to_string().as_bytes()).unwrap()
    }

    /// ADD of `list` for a new pod: the pod gets one address, IPv6, and no IPv4 on eth0.
    fn add(&self, list: &NetConfList, label: &str) -> Pod {
        let ns = TestNs::new(label);
        let att = Attach::new(label, ns.path(), "eth0");
        let result = self.ns.run(|| self.rt.add(list, &att)).unwrap_or_else(|e| panic!("ADD {label}: {e}"));
        let ips: Vec<String> = result.ips.iter().map(|i| i.address.to_string()).collect();
        assert!(ips.len() == 1 && ips[0].contains(':'), "{label}: {ips:?}");
        let v4 = ns.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(v4.trim().is_empty(), "{label}: IPv4 in an IPv6-only pod: {v4}");
        // Both ends are usable at once, no wait: the pod's address skips duplicate address
        // detection (bridge's `enabledad` is off) and so does the bridge's gateway address.
        assert_eq!(global_tentative(&ns, "eth0"), "", "{label}: the pod's address is tentative");
        let bridge = &result.interfaces[0].name;
        assert_eq!(global_tentative(&self.ns, bridge), "", "{label}: the gateway on {bridge} is tentative");
        Pod { ns, att, result }
    }

    fn check(&self, list: &NetConfList, pod: &Pod) {
        self.ns.run(|| self.rt.check(list, &pod.att)).unwrap_or_else(|e| panic!("CHECK: {e}"));
    }

    fn del(&self, list: &NetConfList, pod: &Pod) {
        self.ns.run(|| self.rt.del(list, &pod.att)).unwrap_or_else(|e| panic!("DEL: {e}"));
    }

    /// What the lists left on the node after every DEL: veths, addresses reserved in the
    /// IPAM store, cached results (the bridges themselves stay, as with the reference).
    fn leftovers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ns
            .netlink()
            .links()
            .unwrap()
            .into_iter()
            .filter(|l| l.is("veth") || l.is("ifb"))
            .map(|l| format!("link {}", l.name))
            .collect();
        for net in std::fs::read_dir(self.dir.path().join("ipam")).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.parse::<IpAddr>().is_ok() {
                    out.push(format!("reservation {name}"));
                }
            }
        }
        for f in std::fs::read_dir(self.dir.path().join("cache")).into_iter().flatten().flatten() {
            for e in std::fs::read_dir(f.path()).into_iter().flatten().flatten() {
                out.push(format!("cached {}", e.path().display()));
            }
        }
        out
    }
}

/// The global IPv6 addresses of `dev` still in duplicate address detection.
fn global_tentative(ns: &TestNs, dev: &str) -> String {
    ns.exec(&["ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "global", "tentative"])
        .trim()
        .to_string()
}

fn echo(from: &TestNs, to: IpAddr, port: u16) -> Result<usize, String> {
    tcp_echo(from, SocketAddr::new(to, port), 64 * 1024, Duration::from_secs(3))
        .map_err(|e| format!("{to}: {e}"))
}

fn read_sysctl(ns: &TestNs, key: &str) -> String {
    ns.run(|| std::fs::read_to_string(format!("/proc/sys/{key}")).unwrap()).trim().to_string()
}

#[test]
fn loopback_in_an_ipv6_only_list_brings_up_ipv6_loopback() {
    require_root!();
    let node = Node::new("l6node");
    let list = node.list("lo6", "lo6br0", "fd00:71::/64", vec![json!({"type": "loopback"})]);
    let pod = node.add(&list, "l6pod");
    // The list's result is the bridge's, passed through.
    assert!(pod.result.ips[0].address.to_string().starts_with("fd00:71::"), "{:?}", pod.result.ips);
    let nl = pod.ns.netlink();
    let lo = nl.require_link("lo").unwrap();
    assert!(lo.up, "lo is down after ADD");
    let addrs: Vec<String> = nl.addresses(lo.index).unwrap().iter().map(|a| a.to_string()).collect();
    assert!(addrs.contains(&"::1/128".to_string()), "{addrs:?}");
    // ::1 carries traffic: ping and TCP inside the pod.
    assert!(ping(&pod.ns, "::1", 2), "ping ::1");
    let _srv = EchoServer::start(&pod.ns, "[::1]:7001");
    echo(&pod.ns, "::1".parse().unwrap(), 7001).unwrap();
    // And the pod network works alongside it: the node reaches the pod over IPv6.
    assert!(ping(&node.ns, &pod.ip().to_string(), 2), "node -> {}", pod.ip());
    node.check(&list, &pod);
    node.del(&list, &pod);
    assert!(!pod.ns.netlink().require_link("lo").unwrap().up, "DEL leaves lo up");
    assert_eq!(node.leftovers(), Vec::<String>::new());
}

/// The firewall table's elements in set `set`.
fn fw_set(node: &TestNs, set: &str) -> String {
    let out = node.command("nft").args(["list", "set", "inet", "ferrocni_firewall", set]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft monitor trace` in `ns`, line-buffered so that nothing is lost when it is stopped.
fn trace(ns: &TestNs) -> Child {
    ns.command("stdbuf")
        .args(["-oL", "nft", "monitor", "trace"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Stops a [`trace`] (the child this test started) and returns what it printed.
fn trace_output(child: Child) -> String {
    // SAFETY: kill(2) on the pid of the child started by `trace`, not yet reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three IPv6-only networks on one node, each bridge + host-local + firewall: two with
/// `ingressPolicy: same-bridge`, one open. Forwarding from and to the pods' IPv6 addresses
/// is accepted by the firewall's own rule (traced), the isolated bridges cannot reach each
/// other over IPv6 while the node and the open bridge reach them, and DEL removes every
/// entry.
#[test]
fn firewall_in_ipv6_only_lists_accepts_forwarding_and_isolates_bridges() {
    require_root!();
    let node = Node::new("f6node");
    let nets: Vec<(NetConfList, &str)> = [
        ("iso1", "f6br1", "fd00:61::/64", "same-bridge"),
        ("iso2", "f6br2", "fd00:62::/64", "same-bridge"),
        ("open3", "f6br3", "fd00:63::/64", "open"),
    ]
    .into_iter()
    .map(|(name, br, subnet, policy)| {
        (node.list(name, br, subnet, vec![json!({"type": "firewall", "ingressPolicy": policy})]), name)
    })
    .collect();
    let pods: Vec<Pod> = nets.iter().map(|(l, name)| node.add(l, &format!("f6{name}"))).collect();
    let allowed6 = fw_set(&node.ns, "allowed6");
    for (pod, (_, name)) in pods.iter().zip(&nets) {
        assert!(allowed6.contains(&format!("{} comment \"{name}/f6{name}/eth0\"", pod.ip())), "{allowed6}");
    }
    assert!(!fw_set(&node.ns, "allowed4").contains("comment"), "an IPv4 entry in an IPv6-only network");
    for ((l, _), p) in nets.iter().zip(&pods) {
        node.check(l, p);
    }
    let _servers: Vec<EchoServer> = pods.iter().map(|p| EchoServer::start(&p.ns, "[::]:7002")).collect();
    let (iso1, iso2, open) = (&pods[0], &pods[1], &pods[2]);
    let mut failures = Vec::new();
    for (from, to, want, what) in [
        (&node.ns, iso1, true, "node -> iso1"),
        (&node.ns, iso2, true, "node -> iso2"),
        (&iso1.ns, iso2, false, "iso1 -> iso2"),
        (&iso2.ns, iso1, false, "iso2 -> iso1"),
        (&iso1.ns, open, true, "iso1 -> open3"),
        (&open.ns, iso2, true, "open3 -> iso2"),
    ] {
        let got = echo(from, to.ip(), 7002);
        if got.is_ok() != want {
            failures.push(format!("{what}: want {}, got {got:?}", if want { "reached" } else { "blocked" }));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The accept is the firewall's: trace a forwarded IPv6 connection (the operator's admin
    // chain, which the plugin never flushes, marks packets for tracing).
    let admin = "nft add rule inet ferrocni_firewall admin meta nftrace set 1";
    node.ns.exec(&admin.split(' ').collect::<Vec<_>>());
    // The tracer subscribes asynchronously: a few tries, each waiting longer before traffic.
    let mut traced = String::new();
    for attempt in 1..=3u64 {
        let tracer = trace(&node.ns);
        std::thread::sleep(Duration::from_millis(300 * attempt));
        let sent = echo(&iso1.ns, open.ip(), 7002);
        // Stopped before any assertion, so that a failure leaves no tracer running.
        traced = trace_output(tracer);
        sent.unwrap();
        if traced.contains("@allowed6") {
            break;
        }
    }
    let accepted = |text: &str| {
        text.lines().any(|l| {
            l.contains("ferrocni_firewall forward") && l.contains("@allowed6") && l.contains("verdict accept")
        })
    };
    assert!(accepted(&traced), "no IPv6 accept by the firewall's rule in the trace:\n{traced}");
    for ((l, _), p) in nets.iter().zip(&pods) {
        node.del(l, p);
    }
    let allowed6 = fw_set(&node.ns, "allowed6");
    assert!(!allowed6.contains("comment"), "entries left: {allowed6}");
    assert_eq!(node.leftovers(), Vec::<String>::new());
}

/// tuning after bridge in an IPv6-only list: IPv6 sysctls of the pod's interface and of
/// the pod (`net.ipv6.conf.default`), its MTU and MAC, set by ADD, verified by CHECK; the
/// pod-wide value (which outlives the interface DEL removes) put back by DEL.
#[test]
fn tuning_in_an_ipv6_only_list_sets_and_restores_ipv6_sysctls() {
    require_root!();
    let node = Node::new("t6node");
    let data = node.dir.path().join("tuning");
    let list = node.list(
        "tu6",
        "tu6br0",
        "fd00:72::/64",
        vec![json!({"type": "tuning", "dataDir": data, "mtu": 1400, "mac": "0a:58:0a:01:02:07",
            "sysctl": {"net.ipv6.conf.IFNAME.hop_limit": "42", "net.ipv6.conf.default.hop_limit": "43"}})],
    );
    let probe = TestNs::new("t6probe");
    let default_before = read_sysctl(&probe, "net/ipv6/conf/default/hop_limit");
    drop(probe);
    let pod = node.add(&list, "t6pod");
    assert_eq!(read_sysctl(&pod.ns, "net/ipv6/conf/eth0/hop_limit"), "42");
    assert_eq!(read_sysctl(&pod.ns, "net/ipv6/conf/default/hop_limit"), "43");
    let eth0 = pod.ns.netlink().require_link("eth0").unwrap();
    assert_eq!(eth0.mtu, 1400);
    assert_eq!(eth0.mac, Some([0x0a, 0x58, 0x0a, 0x01, 0x02, 0x07]));
    node.check(&list, &pod);
    // The tuned interface still carries the pod's IPv6 traffic.
    assert!(ping(&pod.ns, &gateway(&pod).to_string(), 2), "pod -> its gateway over IPv6");
    node.del(&list, &pod);
    assert_eq!(read_sysctl(&pod.ns, "net/ipv6/conf/default/hop_limit"), default_before, "DEL restores");
    assert_eq!(std::fs::read_dir(&data).map(|d| d.count()).unwrap_or(0), 0, "tuning left its files");
    assert_eq!(node.leftovers(), Vec::<String>::new());
}

/// A bridge made by this ADD: its gateway address is added without duplicate address
/// detection (`nodad`), so the first pod's first ping to it is answered (one echo, one
/// second), with no wait for DAD in between; CHECK accepts the bridge as it is.
#[test]
fn a_new_bridge_answers_the_first_pods_ipv6_ping_at_once() {
    require_root!();
    let node = Node::new("n6node");
    let list = node.list("nodad6", "n6br0", "fd00:73::/64", vec![]);
    let pod = node.add(&list, "n6pod");
    let gw = gateway(&pod);
    assert!(ping(&pod.ns, &gw.to_string(), 1), "pod -> its gateway {gw} on a new bridge");
    let line = node.ns.exec(&["ip", "-6", "-o", "addr", "show", "dev", "n6br0", "scope", "global"]);
    assert!(line.contains(&format!("{gw}/64")) && line.contains("nodad"), "{line}");
    node.check(&list, &pod);
    node.del(&list, &pod);
    assert_eq!(node.leftovers(), Vec::<String>::new());
}

/// The pod's IPv6 gateway (the bridge's address).
fn gateway(pod: &Pod) -> IpAddr {
    pod.result.ips[0].gateway.expect("a gateway")
}

/// `tc -s -j qdisc show dev <dev>`: (kind, bytes sent) of each qdisc.
fn qdisc_bytes(node: &TestNs, dev: &str) -> Vec<(String, u64)> {
    let out = node.exec(&["tc", "-s", "-j", "qdisc", "show", "dev", dev]);
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.iter()
        .map(|q| (q["kind"].as_str().unwrap_or("").to_string(), q["bytes"].as_u64().unwrap_or(0)))
        .collect()
}

fn tbf_bytes(node: &TestNs, dev: &str) -> u64 {
    let q = qdisc_bytes(node, dev);
    q.iter().find(|(k, _)| k == "tbf").unwrap_or_else(|| panic!("no tbf on {dev}: {q:?}")).1
}

/// bandwidth after bridge in an IPv6-only list: a token bucket on the host veth (traffic to
/// the pod) and one on an ifb the pod's egress is redirected to; both count the pod's IPv6
/// traffic; CHECK passes; DEL removes the qdiscs and the ifb.
#[test]
fn bandwidth_in_an_ipv6_only_list_shapes_ipv6_traffic() {
    require_root!();
    let node = Node::new("b6node");
    let list = node.list(
        "bw6",
        "bw6br0",
        "fd00:73::/64",
        vec![json!({"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000,
            "egressRate": 100_000_000, "egressBurst": 1_000_000})],
    );
    let pod = node.add(&list, "b6pod");
    let host_veth =
        pod.result.interfaces.iter().find(|i| i.sandbox.is_none() && i.mac.is_some() && i.name != "bw6br0");
    let host_veth =
        host_veth.map(|i| i.name.clone()).unwrap_or_else(|| panic!("{:?}", pod.result.interfaces));
    let ifbs: Vec<String> =
        node.ns.netlink().links().unwrap().into_iter().filter(|l| l.is("ifb")).map(|l| l.name).collect();
    assert_eq!(ifbs.len(), 1, "{ifbs:?}");
    let kinds: Vec<String> = qdisc_bytes(&node.ns, &host_veth).into_iter().map(|(k, _)| k).collect();
    assert!(kinds.contains(&"tbf".to_string()) && kinds.contains(&"ingress".to_string()), "{kinds:?}");
    node.check(&list, &pod);
    // IPv6 both ways: the pod's upload goes through the ifb's bucket, its download through
    // the veth's.
    let (to_pod, from_pod) = (tbf_bytes(&node.ns, &host_veth), tbf_bytes(&node.ns, &ifbs[0]));
    let srv = EchoServer::start(&node.ns, "[::]:7003");
    echo(&pod.ns, gateway(&pod), 7003).unwrap();
    drop(srv);
    let (to_pod2, from_pod2) = (tbf_bytes(&node.ns, &host_veth), tbf_bytes(&node.ns, &ifbs[0]));
    assert!(to_pod2 >= to_pod + 64 * 1024, "IPv6 to the pod bypassed the bucket: {to_pod} -> {to_pod2}");
    assert!(
        from_pod2 >= from_pod + 64 * 1024,
        "IPv6 from the pod bypassed the ifb: {from_pod} -> {from_pod2}"
    );
    node.del(&list, &pod);
    let tc = node.ns.exec(&["tc", "qdisc", "show"]);
    assert!(!tc.contains("tbf") && !tc.contains("ingress"), "{tc}");
    assert_eq!(node.leftovers(), Vec::<String>::new());
}
