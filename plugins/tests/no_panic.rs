//! Property tests: no input makes a plugin panic or hang.
//!
//! - In process, for thousands of inputs: the config readers (the library's request, the
//!   bridge's options, host-local's config and requested addresses, the options of
//!   bandwidth, portmap, tuning and firewall) answer every byte
//!   string and every JSON value with a value or an error, never a panic.
//! - As binaries, in test namespaces: generated configs (good ones with any member replaced
//!   by any JSON value, byte soup, splices) sent to each plugin (host-local, bridge,
//!   bandwidth, loopback, portmap, firewall, tuning, and vxlan against a stand-in daemon)
//!   finish within a bound, exit 0 or 1, print nothing or one JSON object and nothing about
//!   a panic on stderr; a failure is an error object whose code is one of the spec's or
//!   the plugin's own, never the panic code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cni_spec::{Environment, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use test_netns::{TestNs, require_root};

mod overlayd_standin;

/// Keys the plugins know, so generated objects hit real fields.
const KEYS: &[&str] = &[
    "cniVersion",
    "ingressRate",
    "ingressBurst",
    "egressRate",
    "egressBurst",
    "bandwidth",
    "name",
    "type",
    "ipam",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "dataDir",
    "resolvConf",
    "bridge",
    "isGateway",
    "mtu",
    "vlan",
    "vlanTrunk",
    "minID",
    "maxID",
    "id",
    "dns",
    "nameservers",
    "runtimeConfig",
    "ipRanges",
    "ips",
    "mac",
    "args",
    "cni",
    "prevResult",
    "interfaces",
    "capabilities",
    "ipMasq",
    "delegate",
    "socket",
    "ipamDataDir",
    "hairpinMode",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "sysctl",
    "promisc",
    "snat",
    "allmulti",
    "txQLen",
    "ingressPolicy",
    "sandbox",
    "address",
    "interface",
    "x",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let words = prop::sample::select(vec![
        "10.0.0.0/24",
        "10.0.0.1",
        "::",
        "fd00::/64",
        "0.0.0.0/0",
        "eth0",
        "..",
        "",
        "host-local",
        "bridge",
        "1.0.0",
        "1.1.0",
        "0.1.0",
        "/tmp",
        "0a:58:0a:00:00:01",
        "\u{0}",
        "\n",
        "%d",
        "é",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        words.prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS.to_vec()), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

/// Every JSON pointer of `v`.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{k}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

/// A good config with one member replaced, bytes around it, or soup.
fn arb_input(good: Value) -> impl Strategy<Value = Vec<u8>> {
    let mut ptrs = Vec::new();
    pointers(&good, String::new(), &mut ptrs);
    let g1 = good.clone();
    let g2 = good.to_string().into_bytes();
    prop_oneof![
        4 => (prop::sample::select(ptrs), arb_json()).prop_map(move |(p, v)| {
            let mut c = g1.clone();
            if let Some(slot) = c.pointer_mut(&p) {
                *slot = v;
            }
            c.to_string().into_bytes()
        }),
        1 => arb_json().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(move |(a, b, ins)| {
                let (a, b) = (a.index(g2.len()), b.index(g2.len()));
                let (a, b) = (a.min(b), a.max(b));
                [&g2[..a], &ins[..], &g2[b..]].concat()
            }),
    ]
}

fn env(command: &str) -> Environment {
    Environment::from_lookup(|k| match k {
        "CNI_COMMAND" => Some(command.into()),
        "CNI_CONTAINERID" => Some("c1".into()),
        "CNI_NETNS" => Some("/run/netns/x".into()),
        "CNI_IFNAME" => Some("eth0".into()),
        _ => None,
    })
    .unwrap()
}

fn good_conf(data: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "props", "type": "bridge", "bridge": "pbr0", "isGateway": true,
        "ipMasq": true, "mtu": 1400, "vlanTrunk": [{"minID": 5, "maxID": 9}], "dns": {"nameservers": ["10.0.0.1"]},
        "runtimeConfig": {"mac": "0a:58:0a:00:00:09", "ips": ["10.77.0.9"]},
        "ipam": {"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd00:77::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.77.0.1"}]}})
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn config_readers_never_panic(stdin in arb_input(good_conf(Path::new("/nonexistent/props")))) {
        for command in ["ADD", "DEL"] {
            if let Ok(req) = Request::new(env(command), stdin.clone()) {
                let _ = plugins::bridge::config::BridgeConf::load(&req);
                let _ = plugins::bandwidth::config::BandwidthConf::load(&req);
                if let Ok(cfg) = plugins::host_local::config::Config::load(&req.config, req.version) {
                    let _ = cfg.requested(&req.config, &req.env.args);
                }
                let _ = req.prev_result();
                let _ = req.valid_attachments();
            }
        }
    }
}

/// The chained plugins' options (portmap, tuning, firewall), from a config that names them.
fn chained_conf() -> Value {
    json!({"cniVersion": "1.0.0", "name": "props", "type": "portmap", "snat": true, "masqAll": false,
        "backend": "nftables", "ingressPolicy": "same-bridge", "dataDir": "/nonexistent/props",
        "sysctl": {"net.core.somaxconn": "512"}, "mac": "0a:58:0a:00:00:09", "mtu": 1400, "promisc": true,
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.1"}]},
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "veth0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
            "ips": [{"address": "10.77.0.5/24", "interface": 1}]}})
}

proptest! {
    #![proptest_config(Config { cases: 2000, failure_persistence: None, ..Config::default() })]

    #[test]
    fn chained_config_readers_never_panic(stdin in arb_input(chained_conf())) {
        for command in ["ADD", "CHECK", "DEL"] {
            if let Ok(req) = Request::new(env(command), stdin.clone()) {
                let _ = plugins::portmap::config::PortmapConf::load(&req);
                let _ = plugins::tuning::config::TuningConf::load(&req);
                let _ = plugins::firewall::FirewallConf::load(&req);
                let _ = req.prev_result();
            }
        }
    }
}

fn bin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bridge")).parent().unwrap().join(name)
}

/// Runs `plugin` with `stdin` in `host`; (exit code, stdout), or a failure if it takes more
/// than 30 s or says on stderr that it panicked.
fn run(
    host: &TestNs,
    pod: &TestNs,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> Result<(i32, String), String> {
    let mut child = host
        .command(bin(plugin).to_str().unwrap())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "props")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin("bridge").parent().unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.map_err(|e| e.to_string())?,
        Err(_) => {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            return Err(format!("{plugin} {command} did not finish within 30 s"));
        }
    };
    let _ = writer.join();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("panicked") {
        return Err(format!("{plugin} {command} panicked: {stderr}"));
    }
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn check_outcome(plugin: &str, code: i32, stdout: &str) -> Result<(), String> {
    match code {
        0 if stdout.is_empty() || serde_json::from_str::<Value>(stdout).is_ok_and(|v| v.is_object()) => {
            Ok(())
        }
        1 => {
            let e: Value = serde_json::from_str(stdout)
                .map_err(|e| format!("{plugin}: not an error object ({e}): {stdout}"))?;
            let c = e["code"].as_u64().ok_or_else(|| format!("{plugin}: no code: {stdout}"))?;
            let known = matches!(c, 1..=7 | 11 | 50 | 51 | 100..=103);
            let panicked = e["msg"].as_str().is_some_and(|m| m.contains("panicked"));
            if panicked || !(known || c == 999) {
                return Err(format!("{plugin}: {stdout}"));
            }
            Ok(())
        }
        _ => Err(format!("{plugin}: exit {code}: {stdout}")),
    }
}

#[test]
fn no_input_makes_a_plugin_binary_panic_or_hang() {
    require_root!();
    let host = TestNs::new("prophost");
    let pod = TestNs::new("proppod");
    host.lo_up();
    let tmp = tempfile::tempdir().unwrap();
    let good = good_conf(&tmp.path().join("ipam"));
    let mut runner = TestRunner::new(Config { cases: 150, failure_persistence: None, ..Config::default() });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&arb_input(good), |stdin| {
            for plugin in ["host-local", "bridge"] {
                let (code, out) = run(&host, &pod, plugin, "ADD", &stdin).map_err(TestCaseError::fail)?;
                if code == 0 {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                check_outcome(plugin, code, &out).map_err(TestCaseError::fail)?;
                let (code, out) = run(&host, &pod, plugin, "DEL", &stdin).map_err(TestCaseError::fail)?;
                check_outcome(plugin, code, &out).map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} of 300 generated ADDs accepted (and deleted)", accepted.into_inner());
}

#[test]
fn no_input_makes_bandwidth_panic_or_hang() {
    require_root!();
    let host = TestNs::new("propbwhost");
    let pod = TestNs::new("propbwpod");
    test_netns::veth_between(&host, "veth0host", &pod, "eth0");
    let good = json!({"cniVersion": "1.0.0", "name": "props", "type": "bandwidth",
        "ingressRate": 8_000_000, "ingressBurst": 800_000,
        "runtimeConfig": {"bandwidth": {"egressRate": 8_000_000, "egressBurst": 800_000}},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth0host"}, {"name": "eth0", "sandbox": pod.path()}],
            "ips": [{"address": "10.1.0.5/24", "interface": 1}]}});
    let mut runner = TestRunner::new(Config { cases: 150, failure_persistence: None, ..Config::default() });
    runner
        .run(&arb_input(good), |stdin| {
            for command in ["ADD", "CHECK", "DEL"] {
                let (code, out) =
                    run(&host, &pod, "bandwidth", command, &stdin).map_err(TestCaseError::fail)?;
                check_outcome("bandwidth", code, &out).map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .unwrap();
    // Every accepted ADD was undone by its DEL.
    assert!(host.netlink().links().unwrap().iter().all(|l| !l.is("ifb")));
}

/// Generated configs for `plugin` (from `good`) run ADD, CHECK and DEL as a runtime runs
/// them, in `host` with `pod` as the container: each finishes within the bound, never
/// panics, and answers a result or a CNI error of a known class. Returns how many ADDs
/// were accepted.
fn fuzz_binary(host: &TestNs, pod: &TestNs, plugin: &str, good: Value, cases: u32) -> usize {
    // The unchanged config works, so the generated ones are near a working call. (CHECK is
    // not in this: a runtime gives it the ADD's result, which a chained plugin's config has
    // but vxlan's has not.)
    for command in ["ADD", "DEL"] {
        let (code, out) = run(host, pod, plugin, command, good.to_string().as_bytes()).unwrap();
        assert_eq!(code, 0, "{plugin} {command} of the good config: {out}");
    }
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&arb_input(good), |stdin| {
            for command in ["ADD", "CHECK", "DEL"] {
                let (code, out) = run(host, pod, plugin, command, &stdin).map_err(TestCaseError::fail)?;
                if command == "ADD" && code == 0 {
                    accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                check_outcome(plugin, code, &out).map_err(TestCaseError::fail)?;
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{plugin}: {e}"));
    let accepted = accepted.into_inner();
    eprintln!("{plugin}: {accepted} of {cases} generated ADDs accepted (each followed by CHECK and DEL)");
    accepted
}

/// A `prevResult` naming the pod's eth0 (with `addrs`) and a host-side interface.
fn prev(pod: &TestNs, addrs: &[&str]) -> Value {
    let ips: Vec<Value> = addrs.iter().map(|a| json!({"address": a, "interface": 1})).collect();
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth0host"}, {"name": "eth0", "sandbox": pod.path()}], "ips": ips})
}

#[test]
fn no_input_makes_loopback_panic_or_hang() {
    require_root!();
    let host = TestNs::new("proplohost");
    let pod = TestNs::new("proplopod");
    fuzz_binary(
        &host,
        &pod,
        "loopback",
        json!({"cniVersion": "1.0.0", "name": "props", "type": "loopback"}),
        60,
    );
}

#[test]
fn no_input_makes_portmap_panic_or_hang() {
    require_root!();
    let host = TestNs::new("proppmhost");
    let pod = TestNs::new("proppmpod");
    host.lo_up();
    let good = json!({"cniVersion": "1.0.0", "name": "props", "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 8053, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
            {"hostPort": 9132, "containerPort": 132, "protocol": "sctp", "hostIP": "fd00:99::1"}]},
        "prevResult": prev(&pod, &["10.77.0.5/24", "fd00:77::5/64"])});
    fuzz_binary(&host, &pod, "portmap", good, 60);
}

#[test]
fn no_input_makes_firewall_panic_or_hang() {
    require_root!();
    let host = TestNs::new("propfwhost");
    let pod = TestNs::new("propfwpod");
    let good = json!({"cniVersion": "1.0.0", "name": "props", "type": "firewall",
        "prevResult": prev(&pod, &["10.66.0.5/24", "fd00:66::5/64"])});
    fuzz_binary(&host, &pod, "firewall", good, 60);
}

#[test]
fn no_input_makes_tuning_panic_or_hang() {
    require_root!();
    let host = TestNs::new("proptuhost");
    let pod = TestNs::new("proptupod");
    test_netns::veth_between(&host, "veth0host", &pod, "eth0");
    let tmp = tempfile::tempdir().unwrap();
    let good = json!({"cniVersion": "1.0.0", "name": "props", "type": "tuning", "dataDir": tmp.path().join("tuning"),
        "sysctl": {"net.ipv4.conf.IFNAME.forwarding": "1", "net.core.somaxconn": "512"},
        "mac": "0a:58:0a:01:02:03", "mtu": 1400, "promisc": true, "allmulti": true, "txQLen": 321,
        "prevResult": prev(&pod, &["10.1.0.5/24"])});
    fuzz_binary(&host, &pod, "tuning", good, 60);
}

#[test]
fn no_input_makes_vxlan_panic_or_hang() {
    require_root!();
    let host = TestNs::new("propvxhost");
    let pod = TestNs::new("propvxpod");
    host.lo_up();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("overlayd.sock");
    overlayd_standin::serve(&socket);
    let good = json!({"cniVersion": "1.0.0", "name": "props", "type": "vxlan", "socket": socket,
        "dataDir": tmp.path().join("vxlan"), "ipamDataDir": tmp.path().join("ipam"),
        "routes": [{"dst": "10.99.0.0/16"}], "delegate": {"bridge": "pvx0", "hairpinMode": true}});
    fuzz_binary(&host, &pod, "vxlan", good, 60);
}
