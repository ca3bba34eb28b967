//! The `bandwidth` plugin executed as a runtime executes it, for every spec version, in
//! private namespaces: the qdiscs and ifb device it makes (read back with `tc` as an
//! oracle, and compared with what the reference plugin makes for the same config), CHECK,
//! DEL and its repetition, a failed ADD that leaves nothing behind, and the limits measured
//! with iperf3.

mod chain_util;

use std::path::Path;
use std::process::{Command, Stdio};

use chain_util::{ALL_VERSIONS, Call, has_check, prev_result};
use serde_json::{Value, json};
use test_netns::{TestNs, require_root, skip, veth_between};

const REFERENCE: &str = "/usr/lib/cni/bandwidth";

/// A node and a pod joined by a veth (`veth0host` on the node, `eth0` in the pod), with
/// 10.1.0.1 and 10.1.0.5.
fn node_and_pod() -> (TestNs, TestNs) {
    let (node, pod) = (TestNs::new("bwnode"), TestNs::new("bwpod"));
    veth_between(&node, "veth0host", &pod, "eth0");
    node.add_address("veth0host", "10.1.0.1/24");
    pod.add_address("eth0", "10.1.0.5/24");
    (node, pod)
}

fn conf(version: &str, pod: &TestNs, bw: Value) -> Value {
    let mut c = json!({"cniVersion": version, "name": "bwnet", "type": "bandwidth",
        "prevResult": prev_result(version, "eth0", &pod.path(), &["10.1.0.5/24"])});
    for (k, v) in bw.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// `tc -j qdisc show` on the node, without the default qdiscs and the counters.
fn qdiscs(node: &TestNs) -> Vec<Value> {
    let out = node.exec(&["tc", "-j", "qdisc", "show"]);
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    all.into_iter()
        .filter(|q| !matches!(q["kind"].as_str(), Some("noqueue" | "pfifo_fast" | "fq_codel" | "mq")))
        .map(|q| json!({"kind": q["kind"], "dev": q["dev"], "handle": q["handle"], "root": q["root"], "options": q["options"]}))
        .collect()
}

/// The ifb devices on the node.
fn ifbs(node: &TestNs) -> Vec<String> {
    node.netlink().links().unwrap().into_iter().filter(|l| l.is("ifb")).map(|l| l.name).collect()
}

const BOTH: &str =
    r#"{"ingressRate": 8000000, "ingressBurst": 800000, "egressRate": 16000000, "egressBurst": 1600000}"#;

#[test]
fn bandwidth_every_version_shapes_checks_and_removes() {
    require_root!();
    for v in ALL_VERSIONS {
        let (node, pod) = node_and_pod();
        let path = pod.path();
        let c = conf(v, &pod, serde_json::from_str(BOTH).unwrap());
        let call = |cmd| Call::new("bandwidth", cmd, "c1", Some(&path));
        if matches!(v, "0.1.0" | "0.2.0") {
            // As the reference: chaining (0.3.0) is needed.
            assert_eq!(call("ADD").err(&node, &c)["code"], 1, "{v}");
            assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty(), "{v}");
            continue;
        }
        let r = call("ADD").ok(&node, &c);
        let ifb = ifbs(&node);
        assert_eq!(ifb.len(), 1, "{v}");
        let ifb = &ifb[0];
        assert!(ifb.starts_with("bwp") && ifb.len() == 15, "{ifb}");
        // prevResult passed on, the ifb device added.
        let ifaces = r["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 3, "{v}: {r}");
        assert_eq!(ifaces[2]["name"], ifb.as_str(), "{v}: {r}");
        assert!(ifaces[2]["mac"].as_str().is_some_and(|m| m.len() == 17), "{v}: {r}");
        assert_eq!(r["ips"], c["prevResult"]["ips"], "{v}: {r}");
        let q = qdiscs(&node);
        let find = |dev: &str, kind: &str| q.iter().find(|x| x["dev"] == dev && x["kind"] == kind).cloned();
        let host_tbf = find("veth0host", "tbf").unwrap_or_else(|| panic!("{v}: {q:?}"));
        assert_eq!(host_tbf["options"]["rate"], 1_000_000, "{v}: {host_tbf}");
        assert_eq!(host_tbf["handle"], "1:");
        let ifb_tbf = find(ifb, "tbf").unwrap_or_else(|| panic!("{v}: {q:?}"));
        assert_eq!(ifb_tbf["options"]["rate"], 2_000_000, "{v}: {ifb_tbf}");
        assert!(find("veth0host", "ingress").is_some(), "{v}: {q:?}");
        let filters = node.exec(&["tc", "filter", "show", "dev", "veth0host", "ingress"]);
        assert!(
            filters.contains("mirred (Egress Redirect to device") && filters.contains(ifb.as_str()),
            "{filters}"
        );
        if has_check(v) {
            call("CHECK").ok(&node, &c);
            // A different rate in the config: CHECK notices.
            let mut other = c.clone();
            other["ingressRate"] = json!(4_000_000);
            assert!(call("CHECK").err(&node, &other)["msg"].as_str().unwrap().contains("rate"), "{v}");
            // The redirect gone: CHECK notices.
            node.exec(&["tc", "filter", "del", "dev", "veth0host", "ingress"]);
            assert!(call("CHECK").err(&node, &c)["msg"].as_str().unwrap().contains("redirect"), "{v}");
        }
        call("DEL").ok(&node, &c);
        assert!(ifbs(&node).is_empty(), "{v}: DEL left the ifb device");
        assert!(qdiscs(&node).is_empty(), "{v}: DEL left qdiscs: {:?}", qdiscs(&node));
        call("DEL").ok(&node, &c);
        if has_check(v) {
            assert!(call("CHECK").err(&node, &c)["msg"].as_str().unwrap().contains("tbf"), "{v}");
        }
    }
}

#[test]
fn bandwidth_runtime_config_one_direction_and_no_limits() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let call = |cmd| Call::new("bandwidth", cmd, "c2", Some(&path));
    // Capability `bandwidth`: egress only, so no tbf on the host veth.
    let c = conf(
        "1.0.0",
        &pod,
        json!({"capabilities": {"bandwidth": true},
        "runtimeConfig": {"bandwidth": {"egressRate": 1_000_000, "egressBurst": 100_000}}}),
    );
    let r = call("ADD").ok(&node, &c);
    assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
    let q = qdiscs(&node);
    assert_eq!(q.iter().filter(|x| x["kind"] == "tbf").count(), 1, "{q:?}");
    assert!(q.iter().all(|x| x["dev"] != "veth0host" || x["kind"] == "ingress"), "{q:?}");
    call("CHECK").ok(&node, &c);
    call("DEL").ok(&node, &c);
    assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty());
    // Nothing to limit: prevResult passed on unchanged, nothing made.
    let c = conf("1.0.0", &pod, json!({"runtimeConfig": {"bandwidth": {}}}));
    let r = call("ADD").ok(&node, &c);
    assert_eq!(r, c["prevResult"]);
    assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty());
    call("CHECK").ok(&node, &c);
}

#[test]
fn bandwidth_del_without_the_namespace_removes_the_ifb() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let c = conf("1.0.0", &pod, serde_json::from_str(BOTH).unwrap());
    Call::new("bandwidth", "ADD", "c3", Some(&path)).ok(&node, &c);
    assert_eq!(ifbs(&node).len(), 1);
    let mut no_prev = c.clone();
    no_prev.as_object_mut().unwrap().remove("prevResult");
    Call::new("bandwidth", "DEL", "c3", None).ok(&node, &no_prev);
    assert!(ifbs(&node).is_empty());
    Call::new("bandwidth", "DEL", "c3", None).ok(&node, &no_prev);
    drop(pod);
    Call::new("bandwidth", "DEL", "c3", Some(&path)).ok(&node, &c);
}

#[test]
fn bandwidth_failed_add_undoes_only_its_own_work() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let c = conf("1.0.0", &pod, serde_json::from_str(BOTH).unwrap());
    let call = |cmd| Call::new("bandwidth", cmd, "c4", Some(&path));
    // Someone else's ingress qdisc on the host veth: the ADD fails after it made the tbf and
    // the ifb device, and removes both; the other qdisc stays.
    node.exec(&["tc", "qdisc", "add", "dev", "veth0host", "ingress"]);
    let e = call("ADD").err(&node, &c);
    assert!(e["msg"].as_str().unwrap().contains("ingress qdisc"), "{e}");
    let q = qdiscs(&node);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["kind"], "ingress");
    assert!(ifbs(&node).is_empty());
    node.exec(&["tc", "qdisc", "del", "dev", "veth0host", "ingress"]);
    // A device already holding the ifb's name: not deleted by the failed ADD.
    let name = plugins::bandwidth::ifb_name("bwnet", "c4");
    node.exec(&["ip", "link", "add", &name, "type", "ifb"]);
    let e = call("ADD").err(&node, &c);
    assert!(e["msg"].as_str().unwrap().contains(&name), "{e}");
    assert!(qdiscs(&node).is_empty(), "{:?}", qdiscs(&node));
    assert_eq!(ifbs(&node), std::slice::from_ref(&name));
    node.exec(&["ip", "link", "del", &name]);
}

#[test]
fn bandwidth_refuses_bad_input_and_changes_nothing() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let good = conf("1.0.0", &pod, serde_json::from_str(BOTH).unwrap());
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let mut both = with("shapedSubnets", json!(["10.0.0.0/8"]));
    both["unshapedSubnets"] = json!(["fd00::/8"]);
    let foreign = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "notours"}, {"name": "eth0", "sandbox": path}],
        "ips": [{"address": "10.1.0.5/24", "interface": 1}]});
    for (name, c, code, names) in [
        ("rate without burst", with("egressBurst", json!(0)), 7, "egressBurst"),
        ("negative", with("ingressRate", json!(-8)), 7, "ingressRate"),
        ("huge burst", with("ingressBurst", json!(34_359_738_368u64)), 7, "ingressBurst"),
        ("bad subnet", with("shapedSubnets", json!(["10.0.0.0/8", "10.0.0.300/8"])), 7, "shapedSubnets[1]"),
        ("bare address", with("unshapedSubnets", json!(["fd00::1"])), 7, "unshapedSubnets[0]"),
        ("both subnet lists", both, 7, "unshapedSubnets, shapedSubnets"),
        ("no prevResult", with("prevResult", Value::Null), 7, "prevResult"),
        ("veth not in prevResult", with("prevResult", foreign), 999, "prevResult"),
    ] {
        let e = Call::new("bandwidth", "ADD", "c5", Some(&path)).err(&node, &c);
        assert_eq!(e["code"], code, "{name}: {e}");
        assert!(e["msg"].as_str().unwrap().contains(names), "{name}: {e}");
        assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty(), "{name}: a refused ADD changed the node");
    }
    // A container interface that is no veth.
    let mut call = Call::new("bandwidth", "ADD", "c5", Some(&path));
    call.ifname = "lo";
    let e = call.err(&node, &good);
    assert!(e["msg"].as_str().unwrap().contains("no veth peer"), "{e}");
    assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty());
}

/// Strips what differs between two otherwise equal setups (device names of the ifb).
fn shape(q: &[Value], ifb: &str) -> Vec<Value> {
    let mut v: Vec<Value> = q
        .iter()
        .map(|x| {
            let mut x = x.clone();
            if x["dev"] == ifb {
                x["dev"] = json!("IFB");
            }
            x
        })
        .collect();
    v.sort_by_key(|x| x.to_string());
    v
}

#[test]
fn bandwidth_makes_what_the_reference_makes() {
    require_root!();
    if !Path::new(REFERENCE).exists() {
        skip(module_path!(), "the reference bandwidth plugin is not installed (/usr/lib/cni/bandwidth)");
        return;
    }
    for bw in [
        json!({"ingressRate": 8_000_000, "ingressBurst": 800_000, "egressRate": 16_000_000, "egressBurst": 1_600_000}),
        // What containerd sends for a pod annotation: the burst is u32::MAX bits.
        json!({"ingressRate": 10_000_000, "ingressBurst": 4_294_967_295u64, "egressRate": 100_000, "egressBurst": 4_294_967_295u64}),
        json!({"ingressRate": 40_000_000_000u64, "ingressBurst": 80_000_000}),
    ] {
        let mut seen = Vec::new();
        for bin in [REFERENCE.to_string(), chain_util::bin_dir().join("bandwidth").display().to_string()] {
            let (node, pod) = node_and_pod();
            let c = conf("1.0.0", &pod, bw.clone());
            let out = run(&node, &bin, "ADD", &pod.path(), &c);
            assert!(out.0, "{bin}: {}", out.1);
            let ifb = ifbs(&node).pop().unwrap_or_default();
            let q = shape(&qdiscs(&node), &ifb);
            let r: Value = serde_json::from_str(&out.1).unwrap();
            if !bin.starts_with("/usr") {
                assert!(run(&node, &bin, "CHECK", &pod.path(), &c).0, "CHECK after ADD for {bw}");
            }
            seen.push((q, ifb, r["interfaces"].as_array().unwrap().len()));
            assert!(run(&node, &bin, "DEL", &pod.path(), &c).0);
        }
        if bw["ingressBurst"] == 4_294_967_295u64 {
            // The bucket takes longer than the kernel keeps (4.29 s) to fill at these rates:
            // the reference's arithmetic wraps to an arbitrary bucket; ours is the largest
            // the kernel keeps. Everything else is the same.
            let ours: Vec<(u64, u64)> = seen[1]
                .0
                .iter()
                .filter(|x| x["kind"] == "tbf")
                .map(|x| (x["options"]["burst"].as_u64().unwrap(), x["options"]["rate"].as_u64().unwrap()))
                .collect();
            assert!(ours.len() == 2 && ours.iter().all(|(b, r)| *b >= r * 4 && *b <= r * 5), "{ours:?}");
            let strip = |q: &[Value]| {
                q.iter()
                    .map(|x| {
                        let mut x = x.clone();
                        x["options"]["burst"] = json!(0);
                        x["options"]["lat"] = json!(0);
                        x
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(&seen[0].0), strip(&seen[1].0), "reference vs ours for {bw}");
            assert_eq!((&seen[0].1, seen[0].2), (&seen[1].1, seen[1].2));
        } else {
            assert_eq!(seen[0], seen[1], "reference vs ours for {bw}");
        }
    }
}

/// Runs a plugin binary by path; (success, stdout).
fn run(node: &TestNs, bin: &str, cmd: &str, netns: &Path, conf: &Value) -> (bool, String) {
    use std::io::Write;
    let mut child = node
        .command(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "cref")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", netns)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Bits per second iperf3 received in `secs` seconds from the node to the pod (or, with
/// `reverse`, from the pod to the node).
///
/// The server is an ordinary (not one-off) server that is killed once the client is done:
/// a one-off server exits after any session, even a failed one, and a client retried against
/// it then waits for nothing. The client runs once, after the server is seen listening, and
/// is bounded, so a stuck transfer fails the test with its output instead of hanging it.
fn iperf(node: &TestNs, pod: &TestNs, port: u16, secs: u32, reverse: bool) -> f64 {
    use std::time::{Duration, Instant};
    let port_s = port.to_string();
    let mut server = pod
        .command("iperf3")
        .args(["-s", "-B", "10.1.0.5", "-p", &port_s])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = |p: &TestNs| !p.exec(&["ss", "-Hltn", &format!("sport = :{port}")]).trim().is_empty();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening(pod) {
        assert!(Instant::now() < deadline, "iperf3 server on port {port} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs_s = secs.to_string();
    let mut args =
        vec!["-c", "10.1.0.5", "-p", &port_s, "-J", "--connect-timeout", "3000", "-O", "1", "-t", &secs_s];
    if reverse {
        args.push("-R");
    }
    let client =
        node.command("iperf3").args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = client.id();
    let bound = Duration::from_secs(u64::from(secs) + 21);
    let waiter = std::thread::spawn(move || client.wait_with_output());
    let deadline = Instant::now() + bound;
    while !waiter.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !waiter.is_finished() {
        // Overran its bound: kill it, so what it printed so far is reported below.
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    let out = waiter.join().unwrap().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = || {
        format!(
            "iperf3 {args:?}: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(out.status.success(), "{}", report());
    let j: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {}", report()));
    j["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no end.sum_received: {}", report()))
}

#[test]
fn bandwidth_limits_are_measured_with_iperf3() {
    require_root!();
    if Command::new("iperf3").arg("--version").output().is_err() {
        skip(module_path!(), "iperf3 is not installed (scripts/deps.sh installs it)");
        return;
    }
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let unshaped = iperf(&node, &pod, 5201, 1, false);
    let (ingress, egress) = (20_000_000f64, 10_000_000f64);
    let c = conf(
        "1.0.0",
        &pod,
        json!({"ingressRate": ingress as u64, "ingressBurst": 200_000,
        "egressRate": egress as u64, "egressBurst": 200_000}),
    );
    Call::new("bandwidth", "ADD", "c6", Some(&path)).ok(&node, &c);
    let to_pod = iperf(&node, &pod, 5202, 3, false);
    let from_pod = iperf(&node, &pod, 5203, 3, true);
    Call::new("bandwidth", "DEL", "c6", Some(&path)).ok(&node, &c);
    let after = iperf(&node, &pod, 5204, 1, true);
    eprintln!(
        "unshaped {unshaped:.0} b/s, to the pod {to_pod:.0}, from the pod {from_pod:.0}, after DEL {after:.0}"
    );
    // Within 10 % of the rate. The bucket counts whole frames and iperf3 its payload, so a
    // little under; the first second (slow start against the bucket) is omitted (`-O 1`).
    for (what, got, limit) in [("to the pod", to_pod, ingress), ("from the pod", from_pod, egress)] {
        assert!(got <= limit * 1.10, "{what}: {got:.0} b/s over the {limit:.0} limit");
        assert!(got >= limit * 0.90, "{what}: {got:.0} b/s, far under the {limit:.0} limit");
    }
    // Without the limits the same path is far faster: the bucket is what held it back.
    assert!(unshaped > ingress * 5.0 && after > egress * 5.0, "unshaped {unshaped:.0}, after DEL {after:.0}");
}

/// The subnet setup: the pod has 10.1.0.5 and fd01::5; the node, besides 10.1.0.1 and
/// fd01::1, has peers in two other subnets on its veth, 10.2.0.1 / fd02::1 (to be left
/// alone) and 10.3.0.1 / fd03::1 (to be shaped), which the pod reaches on-link. The pod's
/// own address is in neither list, so only a filter on the peer's address (source towards
/// the pod, destination from it) classifies this traffic as the lists say.
fn node_and_pod_peer_subnets() -> (TestNs, TestNs) {
    let (node, pod) = node_and_pod();
    node.add_address("veth0host", "fd01::1/64");
    pod.add_address("eth0", "fd01::5/64");
    for (peer, subnet) in [
        ("10.2.0.1/32", "10.2.0.0/24"),
        ("10.3.0.1/32", "10.3.0.0/24"),
        ("fd02::1/128", "fd02::/64"),
        ("fd03::1/128", "fd03::/64"),
    ] {
        node.add_address("veth0host", peer);
        pod.exec(&["ip", "route", "add", subnet, "dev", "eth0"]);
    }
    // Neighbours resolved, so nothing waits on ARP/ND while traffic is counted.
    for (src, dst) in
        [("10.2.0.1", "10.1.0.5"), ("10.3.0.1", "10.1.0.5"), ("fd02::1", "fd01::5"), ("fd03::1", "fd01::5")]
    {
        node.exec(&["ping", "-c", "1", "-W", "2", "-I", src, dst]);
    }
    (node, pod)
}

const SHAPED_CLASS: &str = "1:30";
const UNSHAPED_CLASS: &str = "1:1";

/// (bytes sent, packets waiting) per class of `dev`'s htb, from `tc -s class show` (its
/// `-j` does not cover htb classes): "class htb 1:30 …", " Sent N bytes …", " backlog Xb Yp".
fn class_stats(node: &TestNs, dev: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
    let out = node.exec(&["tc", "-s", "class", "show", "dev", dev]);
    let mut stats = std::collections::BTreeMap::new();
    let mut class = None;
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["class", "htb", handle, ..] => class = Some(handle.to_string()),
            ["Sent", bytes, "bytes", ..] => {
                stats.insert(class.clone().unwrap(), (bytes.parse().unwrap(), 0));
            }
            ["backlog", _, packets, ..] => {
                let waiting = packets.trim_end_matches('p').parse().unwrap();
                stats.get_mut(class.as_ref().unwrap()).unwrap().1 = waiting;
            }
            _ => {}
        }
    }
    stats
}

/// Sends `n` UDP datagrams of 1200 bytes from `src` to `dst` port 9 (where a socket in the
/// other namespace takes them, so nothing answers), as fast as the socket takes them.
fn blast(from: &TestNs, src: &str, dst: &str, n: usize) {
    let (src, dst) = (src.to_string(), dst.to_string());
    from.run(move || {
        let s = std::net::UdpSocket::bind((src.parse::<std::net::IpAddr>().unwrap(), 0)).unwrap();
        for _ in 0..n {
            s.send_to(&[0u8; 1200], (dst.parse::<std::net::IpAddr>().unwrap(), 9)).unwrap();
        }
    });
}

/// Rate of the shaped class in the subnet tests: 80 kbit/s (10,000 bytes/s), 8 kbit bucket.
const SLOW: u64 = 80_000;

/// Traffic to and from the unshaped subnets passes whole through the uncapped class; traffic
/// of the shaped subnets goes through the capped class, which lets at most its bucket plus
/// its rate for the time elapsed through and queues the rest. Counted by the kernel's
/// per-class statistics, so the check does not depend on timing beyond an upper bound.
fn assert_classified(node: &TestNs, pod: &TestNs, what: &str) {
    let ifb = ifbs(node).pop().expect("ifb device");
    // Receivers, so the datagrams draw no ICMP answers (one dual-stack socket each side).
    let sinks = [
        node.run(|| std::net::UdpSocket::bind("[::]:9").unwrap()),
        pod.run(|| std::net::UdpSocket::bind("[::]:9").unwrap()),
    ];
    // Ingress (node to pod) is counted on the host veth, egress (pod to node) on the ifb.
    // (unshaped, shaped) pairs of (source, destination), IPv4 then IPv6.
    type Pairs<'a> = [((&'a str, &'a str), (&'a str, &'a str)); 2];
    let ingress: Pairs = [
        (("10.2.0.1", "10.1.0.5"), ("10.3.0.1", "10.1.0.5")),
        (("fd02::1", "fd01::5"), ("fd03::1", "fd01::5")),
    ];
    let egress: Pairs = [
        (("10.1.0.5", "10.2.0.1"), ("10.1.0.5", "10.3.0.1")),
        (("fd01::5", "fd02::1"), ("fd01::5", "fd03::1")),
    ];
    for (from, dev, [v4, v6]) in [(node, "veth0host", ingress), (pod, ifb.as_str(), egress)] {
        let n = 40;
        let before = class_stats(node, dev);
        blast(from, v4.0.0, v4.0.1, n);
        blast(from, v6.0.0, v6.0.1, n);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = class_stats(node, dev);
        let delta = |c: &str| after[c].0 - before[c].0;
        // 2 × 40 datagrams of 1200 bytes of payload, all through the uncapped class.
        assert!(
            delta(UNSHAPED_CLASS) >= 2 * n as u64 * 1200,
            "{what} {dev}: unshaped {after:?} vs {before:?}"
        );
        // ARP/ND may land in the capped class when it is the default: less than a datagram.
        assert!(
            delta(SHAPED_CLASS) < 1200,
            "{what} {dev}: the capped class took unshaped traffic: {after:?}"
        );
        let started = std::time::Instant::now();
        let before = after;
        blast(from, v4.1.0, v4.1.1, n);
        blast(from, v6.1.0, v6.1.1, n);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let after = class_stats(node, dev);
        let secs = started.elapsed().as_secs_f64();
        let delta = |c: &str| after[c].0 - before[c].0;
        let bound = (SLOW / 8) as f64 * secs + (SLOW / 8) as f64 + 2.0 * 1300.0;
        eprintln!(
            "{what} {dev}: capped class sent {} bytes in {secs:.2} s (bound {bound:.0}), {} waiting",
            delta(SHAPED_CLASS),
            after[SHAPED_CLASS].1
        );
        assert!(delta(SHAPED_CLASS) > 0, "{what} {dev}: nothing in the capped class: {after:?}");
        assert!(
            (delta(SHAPED_CLASS) as f64) <= bound,
            "{what} {dev}: the capped class sent {} bytes in {secs:.2} s (at most {bound:.0})",
            delta(SHAPED_CLASS)
        );
        assert!(after[SHAPED_CLASS].1 > 0, "{what} {dev}: nothing queued in the capped class: {after:?}");
        assert!(delta(UNSHAPED_CLASS) < 1200, "{what} {dev}: shaped traffic went uncapped: {after:?}");
    }
    drop(sinks);
}

fn subnet_conf(pod: &TestNs, key: &str, subnets: Value) -> Value {
    let mut c = conf(
        "1.0.0",
        pod,
        json!({"ingressRate": SLOW, "ingressBurst": SLOW / 10, "egressRate": SLOW, "egressBurst": SLOW / 10}),
    );
    c[key] = subnets;
    c
}

#[test]
fn bandwidth_subnets_shape_only_what_they_name() {
    require_root!();
    let (node, pod) = node_and_pod_peer_subnets();
    let path = pod.path();
    for (key, subnets, default) in [
        ("unshapedSubnets", json!(["10.2.0.0/24", "fd02::/64"]), SHAPED_CLASS),
        ("shapedSubnets", json!(["10.3.0.0/24", "fd03::/64"]), UNSHAPED_CLASS),
    ] {
        let c = subnet_conf(&pod, key, subnets);
        let call = |cmd| Call::new("bandwidth", cmd, "c7", Some(&path));
        let r = call("ADD").ok(&node, &c);
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3, "{key}: {r}");
        let ifb = ifbs(&node).pop().unwrap();
        let q = qdiscs(&node);
        for dev in ["veth0host", ifb.as_str()] {
            let htb = q
                .iter()
                .find(|x| x["dev"] == dev && x["kind"] == "htb")
                .unwrap_or_else(|| panic!("{key}: {q:?}"));
            assert_eq!(htb["handle"], "1:", "{key}: {htb}");
            assert_eq!(
                htb["options"]["default"],
                format!("{:#x}", u32::from_str_radix(&default[2..], 16).unwrap()),
                "{key}: {htb}"
            );
            let classes = class_stats(&node, dev);
            assert_eq!(classes.keys().collect::<Vec<_>>(), [UNSHAPED_CLASS, SHAPED_CLASS], "{key} {dev}");
        }
        assert!(!q.iter().any(|x| x["kind"] == "tbf"), "{key}: {q:?}");
        call("CHECK").ok(&node, &c);
        assert_classified(&node, &pod, key);
        // A filter gone: CHECK notices.
        node.exec(&["tc", "filter", "del", "dev", "veth0host", "parent", "1:", "prio", "15"]);
        let e = call("CHECK").err(&node, &c);
        assert!(e["msg"].as_str().unwrap().contains("subnet filters"), "{key}: {e}");
        call("DEL").ok(&node, &c);
        assert!(qdiscs(&node).is_empty() && ifbs(&node).is_empty(), "{key}: DEL left {:?}", qdiscs(&node));
        call("DEL").ok(&node, &c);
    }
}

/// The filters read back with `tc` are the ones `tc` itself makes for `match ip src …` /
/// `match ip6 dst …` (the reference plugin installed here predates subnets, so `tc` is the
/// oracle for the classifier's encoding).
#[test]
fn bandwidth_subnet_filters_are_what_tc_makes() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let subnets = json!([
        "10.2.0.0/24",
        "192.168.0.0/16",
        "0.0.0.0/0",
        "fd02::/64",
        "2001:db8:1::/48",
        "2001:db8::7/128"
    ]);
    let c = subnet_conf(&pod, "unshapedSubnets", subnets.clone());
    Call::new("bandwidth", "ADD", "c8", Some(&path)).ok(&node, &c);
    let ifb = ifbs(&node).pop().unwrap();
    let ours = |dev: &str| node.exec(&["tc", "filter", "show", "dev", dev, "parent", "1:"]);
    let (host_ours, ifb_ours) = (ours("veth0host"), ours(&ifb));
    Call::new("bandwidth", "DEL", "c8", Some(&path)).ok(&node, &c);
    // The same by hand with tc on a dummy device.
    node.exec(&["ip", "link", "add", "tcoracle", "type", "ifb"]);
    for dir in ["src", "dst"] {
        node.exec(&["tc", "qdisc", "add", "dev", "tcoracle", "root", "handle", "1:", "htb", "default", "30"]);
        for s in subnets.as_array().unwrap() {
            let s = s.as_str().unwrap();
            let (proto, prio, m) = if s.contains(':') { ("ipv6", "15", "ip6") } else { ("ip", "16", "ip") };
            node.exec(&[
                "tc", "filter", "add", "dev", "tcoracle", "parent", "1:", "protocol", proto, "prio", prio,
                "u32", "match", m, dir, s, "flowid", "1:1",
            ]);
        }
        let theirs = ours("tcoracle");
        let mine = if dir == "src" { &host_ours } else { &ifb_ours };
        // Filter handles (800::800 …) are numbered in the same order; only the device differs.
        assert_eq!(mine.trim(), theirs.trim(), "{dir}");
        node.exec(&["tc", "qdisc", "del", "dev", "tcoracle", "root"]);
    }
    node.exec(&["ip", "link", "del", "tcoracle"]);
}

#[test]
fn bandwidth_failed_subnet_add_leaves_nothing() {
    require_root!();
    let (node, pod) = node_and_pod();
    let path = pod.path();
    let c = subnet_conf(&pod, "shapedSubnets", json!(["10.2.0.0/24", "fd02::/64"]));
    // Someone else's ingress qdisc: the ADD fails after it made the htb on the host veth
    // and the ifb device, and removes both.
    node.exec(&["tc", "qdisc", "add", "dev", "veth0host", "ingress"]);
    let e = Call::new("bandwidth", "ADD", "c9", Some(&path)).err(&node, &c);
    assert!(e["msg"].as_str().unwrap().contains("ingress qdisc"), "{e}");
    let q = qdiscs(&node);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0]["kind"], "ingress");
    assert!(ifbs(&node).is_empty());
    assert!(node.exec(&["tc", "class", "show", "dev", "veth0host"]).trim().is_empty());
}
