//! The `portmap` plugin executed as a runtime executes it, for every spec version, in
//! private namespaces; and the runtimes' default conflists driven by `cnictl` with only
//! ferrocni plugins: a pod reachable on its host port from the node, from another pod, by
//! hairpin, through 127.0.0.1 and over IPv6; nothing left after DEL and GC.

mod chain_util;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use chain_util::{ALL_VERSIONS, Call, bin_dir, executed, has_check, prev_result};
use serde_json::{Value, json};
use test_netns::{EchoServer, TestNs, require_root, tcp_echo};

/// The portmap table's elements, one line each: `set-or-map key tag`.
fn elements(host: &TestNs) -> Vec<String> {
    let out = host.command("nft").args(["-j", "list", "table", "inet", "ferrocni_portmap"]).output().unwrap();
    if !out.status.success() {
        return Vec::new();
    }
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut lines = Vec::new();
    for obj in json["nftables"].as_array().unwrap() {
        for kind in ["map", "set"] {
            let name = obj[kind]["name"].as_str().unwrap_or_default();
            for e in obj[kind]["elem"].as_array().into_iter().flatten() {
                let key = if kind == "map" { &e[0] } else { e };
                let val = if kind == "map" { e[1].to_string() } else { String::new() };
                lines.push(format!("{name} {} {val} {}", key["elem"]["val"], key["elem"]["comment"]));
            }
        }
    }
    lines.sort();
    lines
}

fn mappings() -> Value {
    json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
           {"hostPort": 8053, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
           {"hostPort": 9132, "containerPort": 132, "protocol": "sctp", "hostIP": "fd00:99::1"}])
}

#[test]
fn portmap_every_version_add_check_del_gc() {
    require_root!();
    let host = TestNs::new("pmhost");
    host.lo_up();
    for v in ALL_VERSIONS {
        let pod = TestNs::new("pmpod");
        let path = pod.path();
        let prev = prev_result(v, "eth0", &path, &["10.77.0.5/24", "fd00:77::5/64"]);
        let conf = json!({"cniVersion": v, "name": "pmnet", "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": mappings()}, "prevResult": prev});
        let r = Call::new("portmap", "ADD", "c1", Some(&path)).ok(&host, &conf);
        if matches!(v, "0.1.0" | "0.2.0") {
            assert_eq!(r["ip4"]["ip"], "10.77.0.5/24", "{v}: {r}");
        } else {
            assert_eq!(r["ips"], prev["ips"], "{v}: {r}");
        }
        let got = elements(&host);
        let tag = "\"pmnet/c1/eth0\"";
        let want = [
            format!(
                "hairpin4 {{\"concat\":[{{\"prefix\":{{\"addr\":\"10.77.0.0\",\"len\":24}}}},\"10.77.0.5\"]}}  {tag}"
            ),
            format!(
                "hairpin6 {{\"concat\":[{{\"prefix\":{{\"addr\":\"fd00:77::\",\"len\":64}}}},\"fd00:77::5\"]}}  {tag}"
            ),
            format!(
                "hostip4 {{\"concat\":[\"127.0.0.1\",\"udp\",8053]}} {{\"concat\":[\"10.77.0.5\",53]}} {tag}"
            ),
            format!(
                "hostip6 {{\"concat\":[\"fd00:99::1\",\"sctp\",9132]}} {{\"concat\":[\"fd00:77::5\",132]}} {tag}"
            ),
            format!("hostports4 {{\"concat\":[\"tcp\",8080]}} {{\"concat\":[\"10.77.0.5\",80]}} {tag}"),
            format!("hostports6 {{\"concat\":[\"tcp\",8080]}} {{\"concat\":[\"fd00:77::5\",80]}} {tag}"),
            format!("localnet4 \"10.77.0.5\"  {tag}"),
        ];
        assert_eq!(got, want, "{v}");
        if has_check(v) {
            Call::new("portmap", "CHECK", "c1", Some(&path)).ok(&host, &conf);
        }
        // Another attachment asking for the same host port is refused, changing nothing.
        let other = Call::new("portmap", "ADD", "c2", Some(&path)).err(&host, &conf);
        assert_eq!(other["code"], 999, "{other}");
        assert!(other["msg"].as_str().unwrap().contains("8080/tcp is already forwarded"), "{other}");
        assert_eq!(elements(&host), want, "{v}: a refused ADD changed the table");
        // Its DEL (a runtime DELs after a failed ADD) leaves c1's mappings alone.
        Call::new("portmap", "DEL", "c2", Some(&path)).ok(&host, &conf);
        assert_eq!(elements(&host), want, "{v}");
        // DEL needs no namespace and is idempotent.
        Call::new("portmap", "DEL", "c1", None).ok(&host, &conf);
        assert!(elements(&host).is_empty(), "{v}: {:?}", elements(&host));
        Call::new("portmap", "DEL", "c1", Some(&path)).ok(&host, &conf);
        if has_check(v) {
            let e = Call::new("portmap", "CHECK", "c1", Some(&path)).err(&host, &conf);
            assert!(e["msg"].as_str().unwrap().contains("missing"), "{e}");
        }
    }
    // GC removes what belongs to attachments not listed as valid, of this network only.
    let pod = TestNs::new("pmpod");
    let path = pod.path();
    for (net, cid, ip, port) in [
        ("pmnet", "keep", "10.77.0.6/24", 9006),
        ("pmnet", "stale", "10.77.0.7/24", 9007),
        ("other", "x", "10.78.0.7/24", 9107),
    ] {
        let mut m = mappings();
        m[0]["hostPort"] = json!(port);
        m.as_array_mut().unwrap().truncate(1);
        let conf = json!({"cniVersion": "1.1.0", "name": net, "type": "portmap",
            "runtimeConfig": {"portMappings": m}, "prevResult": prev_result("1.1.0", "eth0", &path, &[ip])});
        Call::new("portmap", "ADD", cid, Some(&path)).ok(&host, &conf);
    }
    let gc = json!({"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]});
    Call::new("portmap", "GC", "", None).ok(&host, &gc);
    let left = elements(&host).join("\n");
    assert!(left.contains("pmnet/keep/eth0") && left.contains("other/x/eth0"), "{left}");
    assert!(!left.contains("stale"), "{left}");
}

/// The node: a namespace with an address of its own on `lo` (its "node IP").
struct Node {
    ns: TestNs,
    dir: tempfile::TempDir,
}

const NODE_IP: &str = "192.0.2.10";
const NODE_IP6: &str = "2001:db8::10";

impl Node {
    fn new() -> Node {
        let ns = TestNs::new("pmnode");
        ns.lo_up();
        let nl = ns.netlink();
        let lo = nl.require_link("lo").unwrap().index;
        nl.add_address(lo, format!("{NODE_IP}/32").parse().unwrap()).unwrap();
        nl.add_address(lo, format!("{NODE_IP6}/128").parse().unwrap()).unwrap();
        Node { ns, dir: tempfile::tempdir().unwrap() }
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// `cnictl` as an operator runs it, with the plugins of this build only.
    fn cnictl(&self, args: &[&str], cid: &str, caps: Option<&Value>) -> Output {
        let cnictl = bin_dir().join("cnictl");
        assert!(
            cnictl.exists(),
            "{} is missing: build it with `cargo build -p cni-spec --bin cnictl`",
            cnictl.display()
        );
        let mut cmd = self.ns.command(cnictl.to_str().unwrap());
        cmd.env_clear()
            .env("CNI_PATH", bin_dir())
            .env("NETCONFPATH", self.conf_dir())
            .env("CNI_CACHE_DIR", self.dir.path().join("cache"))
            .env("CNI_CONTAINERID", cid)
            .args(args);
        if let Some(c) = caps {
            cmd.env("CAP_ARGS", c.to_string());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cnictl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn write_conflist(&self, list: &Value) {
        std::fs::create_dir_all(self.conf_dir()).unwrap();
        std::fs::write(self.conf_dir().join("10-test.conflist"), list.to_string()).unwrap();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
}

fn echo(from: &TestNs, to: &str) -> Result<usize, String> {
    tcp_echo(from, to.parse().unwrap(), 4096, Duration::from_secs(3)).map_err(|e| format!("{to}: {e}"))
}

/// Every way a host port must be reachable: from the node (its own address, the bridge's,
/// 127.0.0.1, IPv6), from another pod, and from the pod itself (hairpin).
fn assert_reachable(node: &Node, server: &TestNs, client: &TestNs, gw4: &str, gw6: &str, port: u16) {
    let mut failures = Vec::new();
    for (from, label, to) in [
        (&node.ns, "node", format!("{NODE_IP}:{port}")),
        (&node.ns, "node", format!("[{NODE_IP6}]:{port}")),
        (&node.ns, "node via 127.0.0.1", format!("127.0.0.1:{port}")),
        (&node.ns, "node via the bridge", format!("{gw4}:{port}")),
        (client, "another pod", format!("{NODE_IP}:{port}")),
        (client, "another pod over IPv6", format!("[{gw6}]:{port}")),
        (server, "hairpin", format!("{NODE_IP}:{port}")),
        (server, "hairpin over IPv6", format!("[{NODE_IP6}]:{port}")),
    ] {
        if let Err(e) = echo(from, &to) {
            failures.push(format!("{label}: {e}"));
        }
    }
    assert!(failures.is_empty(), "host port {port} unreachable:\n{}", failures.join("\n"));
}

fn containerd_conflist(node: &Node) -> Value {
    // containerd's default (10-containerd-net.conflist), with its IPAM store in the test's
    // directory and documentation prefixes.
    json!({"cniVersion": "1.0.0", "name": "containerd-net", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "promiscMode": true,
         "ipam": {"type": "host-local", "dataDir": node.data_dir(),
                  "ranges": [[{"subnet": "10.88.0.0/16"}], [{"subnet": "fd00:88::/64"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]})
}

#[test]
fn containerd_default_conflist_with_cnictl() {
    require_root!();
    let node = Node::new();
    // A node without br_netfilter: bridged traffic never meets the node's conntrack, so a
    // pod reaching a neighbour through a host port depends on portmap's masquerading. (The
    // podman test below runs with it, as most nodes do.)
    node.ns.run(|| {
        for k in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
            let _ = std::fs::write(format!("/proc/sys/net/bridge/{k}"), "0");
        }
    });
    node.write_conflist(&containerd_conflist(&node));
    // containerd attaches `lo` with its own loopback network.
    std::fs::write(
        node.conf_dir().join("99-loopback.conf"),
        json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}).to_string(),
    )
    .unwrap();
    let server = TestNs::new("pmsrv");
    let client = TestNs::new("pmcli");
    let caps = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    for (ns, cid, caps) in [(&server, "srv", Some(&caps)), (&client, "cli", None)] {
        let p = ns.path();
        node.cnictl(&["add", "cni-loopback", p.to_str().unwrap()], cid, None);
        node.cnictl(&["add", "containerd-net", p.to_str().unwrap()], cid, caps);
    }
    let _srv = EchoServer::start(&server, "[::]:80");
    assert_reachable(&node, &server, &client, "10.88.0.1", "fd00:88::1", 8080);
    node.cnictl(&["check", "containerd-net", server.path().to_str().unwrap()], "srv", Some(&caps));
    for (ns, cid, caps) in [(&server, "srv", Some(&caps)), (&client, "cli", None)] {
        let p = ns.path();
        node.cnictl(&["del", "containerd-net", p.to_str().unwrap()], cid, caps);
        node.cnictl(&["del", "cni-loopback", p.to_str().unwrap()], cid, None);
    }
    assert!(elements(&node.ns).is_empty(), "{:?}", elements(&node.ns));
    assert!(echo(&node.ns, &format!("{NODE_IP}:8080")).is_err(), "the host port still answers after DEL");
}

fn podman_conflist(node: &Node, dir: &Path) -> Value {
    // podman's default (87-podman-bridge.conflist, CNI backend), with its IPAM store in the
    // test's directory, an IPv6 range added, and tuning given a sysctl to set.
    json!({"cniVersion": "0.4.0", "name": "podman", "plugins": [
        {"type": "bridge", "bridge": "cni-podman0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
         "ipam": {"type": "host-local", "dataDir": node.data_dir(), "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                  "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}], [{"subnet": "fd00:88::/64"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "firewall"},
        {"type": "tuning", "dataDir": dir, "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}}]})
}

#[test]
fn podman_default_conflist_with_cnictl() {
    require_root!();
    let node = Node::new();
    let tuning = node.dir.path().join("tuning");
    node.write_conflist(&podman_conflist(&node, &tuning));
    let server = TestNs::new("pmsrv");
    let client = TestNs::new("pmcli");
    let caps = json!({"portMappings": [{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"}]});
    for (ns, cid, caps) in [(&server, "srv", Some(&caps)), (&client, "cli", None)] {
        node.cnictl(&["add", "podman", ns.path().to_str().unwrap()], cid, caps);
    }
    let _srv = EchoServer::start(&server, "[::]:80");
    assert_reachable(&node, &server, &client, "10.88.0.1", "fd00:88::1", 8081);
    node.cnictl(&["check", "podman", server.path().to_str().unwrap()], "srv", Some(&caps));
    let arp_notify =
        server.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/eth0/arp_notify").unwrap());
    assert_eq!(arp_notify.trim(), "1");
    let fw = node.ns.exec(&["nft", "list", "set", "inet", "ferrocni_firewall", "allowed4"]);
    assert!(fw.contains("podman/srv/eth0") && fw.contains("podman/cli/eth0"), "{fw}");
    for (ns, cid, caps) in [(&server, "srv", Some(&caps)), (&client, "cli", None)] {
        node.cnictl(&["del", "podman", ns.path().to_str().unwrap()], cid, caps);
    }
    assert!(elements(&node.ns).is_empty(), "{:?}", elements(&node.ns));
    let fw = node.ns.exec(&["nft", "list", "set", "inet", "ferrocni_firewall", "allowed4"]);
    assert!(!fw.contains("podman/"), "{fw}");
    assert!(std::fs::read_dir(&tuning).map(|d| d.count()).unwrap_or(0) == 0, "tuning left its files");
}

/// An IPv6-only network: podman's default list with every plugin of the suite (bridge,
/// host-local, portmap, firewall, tuning, bandwidth), no IPv4 anywhere in the pod network.
/// The pod gets no IPv4 address; its host port answers over IPv6 from the node, another
/// pod and itself; every plugin acts on the IPv6 address alone; DEL leaves nothing.
#[test]
fn ipv6_only_conflist_with_every_plugin() {
    require_root!();
    let node = Node::new();
    let tuning = node.dir.path().join("tuning");
    let list = json!({"cniVersion": "1.0.0", "name": "six", "plugins": [
        {"type": "bridge", "bridge": "cni-six0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
         "ipam": {"type": "host-local", "dataDir": node.data_dir(), "routes": [{"dst": "::/0"}],
                  "ranges": [[{"subnet": "fd00:89::/64"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}},
        {"type": "firewall"},
        {"type": "tuning", "dataDir": tuning, "sysctl": {"net.ipv6.conf.IFNAME.hop_limit": "42"}},
        {"type": "bandwidth", "capabilities": {"bandwidth": true}}]});
    node.write_conflist(&list);
    let server = TestNs::new("pm6srv");
    let client = TestNs::new("pm6cli");
    let caps = json!({"portMappings": [{"hostPort": 8086, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000,
                      "egressRate": 100_000_000, "egressBurst": 1_000_000}});
    // The client is limited too, without a host port of its own.
    let client_caps = json!({"bandwidth": caps["bandwidth"]});
    let mut results = Vec::new();
    for (ns, cid, caps) in [(&server, "srv", &caps), (&client, "cli", &client_caps)] {
        let out = node.cnictl(&["add", "six", ns.path().to_str().unwrap()], cid, Some(caps));
        results.push(serde_json::from_slice::<Value>(&out.stdout).unwrap());
    }
    for r in &results {
        let ips: Vec<&str> =
            r["ips"].as_array().unwrap().iter().map(|i| i["address"].as_str().unwrap()).collect();
        assert!(ips.len() == 1 && ips[0].starts_with("fd00:89::"), "{r}");
    }
    let v4 = server.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(v4.trim().is_empty(), "an IPv4 address in an IPv6-only pod: {v4}");
    let _srv = EchoServer::start(&server, "[::]:80");
    let mut failures = Vec::new();
    for (from, label, to) in [
        (&node.ns, "node", format!("[{NODE_IP6}]:8086")),
        (&client, "another pod", "[fd00:89::1]:8086".to_string()),
        (&server, "hairpin", format!("[{NODE_IP6}]:8086")),
    ] {
        if let Err(e) = echo(from, &to) {
            failures.push(format!("{label}: {e}"));
        }
    }
    assert!(failures.is_empty(), "host port unreachable over IPv6:\n{}", failures.join("\n"));
    node.cnictl(&["check", "six", server.path().to_str().unwrap()], "srv", Some(&caps));
    let hop = server.run(|| std::fs::read_to_string("/proc/sys/net/ipv6/conf/eth0/hop_limit").unwrap());
    assert_eq!(hop.trim(), "42");
    let fw6 = node.ns.exec(&["nft", "list", "set", "inet", "ferrocni_firewall", "allowed6"]);
    assert!(fw6.contains("six/srv/eth0") && fw6.contains("six/cli/eth0"), "{fw6}");
    let pm = elements(&node.ns);
    assert!(!pm.is_empty() && pm.iter().all(|e| !e.contains("10.")), "{pm:?}");
    let tc = node.ns.exec(&["tc", "qdisc", "show"]);
    assert!(tc.contains("tbf"), "bandwidth made no bucket: {tc}");
    for (ns, cid, caps) in [(&server, "srv", &caps), (&client, "cli", &client_caps)] {
        node.cnictl(&["del", "six", ns.path().to_str().unwrap()], cid, Some(caps));
    }
    assert!(elements(&node.ns).is_empty(), "{:?}", elements(&node.ns));
    let fw6 = node.ns.exec(&["nft", "list", "set", "inet", "ferrocni_firewall", "allowed6"]);
    assert!(!fw6.contains("six/"), "{fw6}");
    let tc = node.ns.exec(&["tc", "qdisc", "show"]);
    assert!(!tc.contains("tbf"), "{tc}");
    assert!(node.ns.netlink().links().unwrap().iter().all(|l| !l.is("ifb")));
    assert!(std::fs::read_dir(&tuning).map(|d| d.count()).unwrap_or(0) == 0, "tuning left its files");
    assert!(echo(&node.ns, &format!("[{NODE_IP6}]:8086")).is_err(), "the host port still answers after DEL");
}

/// podman's default list (bridge with `ipMasq`, host-local, portmap, firewall, tuning) ADDed
/// and DELeted by `cnictl` under `strace -f -e trace=execve`: the runtime starts each plugin
/// of the list and the bridge its IPAM plugin, and no plugin starts anything else (no `nft`,
/// `iptables`, `ip`, `tc`, `sysctl`).
#[test]
fn podman_default_conflist_runs_no_other_program() {
    require_root!();
    if !Path::new("/usr/bin/strace").exists() {
        test_netns::skip(module_path!(), "needs strace (scripts/deps.sh installs it)");
        return;
    }
    let node = Node::new();
    let tuning = node.dir.path().join("tuning");
    node.write_conflist(&podman_conflist(&node, &tuning));
    let pod = TestNs::new("pmstrace");
    let caps = json!({"portMappings": [{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"}]});
    let log = node.dir.path().join("strace.log");
    for command in ["add", "del"] {
        let out = node
            .ns
            .command("/usr/bin/strace")
            .args(["-f", "-qq", "-e", "trace=execve", "-o"])
            .arg(&log)
            .arg(bin_dir().join("cnictl"))
            .args([command, "podman", pod.path().to_str().unwrap()])
            .env_clear()
            .env("CNI_PATH", bin_dir())
            .env("NETCONFPATH", node.conf_dir())
            .env("CNI_CACHE_DIR", node.dir.path().join("cache"))
            .env("CNI_CONTAINERID", "strace1")
            .env("CAP_ARGS", caps.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&log).unwrap();
        let programs: Vec<String> =
            executed(&log).iter().map(|p| p.rsplit('/').next().unwrap_or(p).to_string()).collect();
        let mut want = vec!["cnictl", "bridge", "host-local", "portmap", "firewall", "tuning"];
        if command == "del" {
            // DEL runs the list in reverse.
            want = vec!["cnictl", "tuning", "firewall", "portmap", "bridge", "host-local"];
        }
        assert_eq!(programs, want, "{command}: every program started:\n{text}");
        if command == "add" {
            assert!(!elements(&node.ns).is_empty(), "ADD forwarded the host port");
        }
    }
    assert!(elements(&node.ns).is_empty(), "{:?}", elements(&node.ns));
}
