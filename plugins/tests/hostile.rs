//! Hostile input, as a careful user would send it: for each plugin (host-local, bridge,
//! vxlan, bandwidth, portmap, firewall, tuning, loopback), a hundred or more generated
//! invocations of the real binary — byte flips and truncations of a good config, every option with every wrong JSON type, size extremes,
//! bad stdin, environment faults, Unicode tricks — each run as a runtime runs it (CNI_*
//! variables, config on stdin) inside private test namespaces. Around each one the node
//! and container namespaces (links, addresses, routes, nftables ruleset, sysctls) and the
//! plugin's data directories are snapshotted:
//!
//! - a refused ADD must leave the snapshot exactly as before, and so must a DEL with the
//!   same input after it;
//! - an accepted ADD must be undone by a DEL with the same input: the container namespace as
//!   before, nothing left on the node that names the container;
//! - where the class of fault is known, the error code must be exactly that class (and a
//!   config error must name its field);
//! - every run ends within a bound, and never by a panic (a panic would be code 999).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use test_netns::{TestNs, require_root};

mod overlayd_standin;

/// The plugins under test: ours, or those in `HOSTILE_PLUGIN_DIR` (to measure another
/// build, e.g. the reference plugins in `/usr/lib/cni`, against the same cases).
fn bin(name: &str) -> PathBuf {
    match std::env::var_os("HOSTILE_PLUGIN_DIR") {
        Some(dir) => Path::new(&dir).join(name),
        None => Path::new(env!("CARGO_BIN_EXE_bridge")).parent().unwrap().join(name),
    }
}

/// What a case must produce.
#[derive(Debug, Clone)]
enum Expect {
    /// Refused with exactly this code (and, for 4 and 7, a message naming `names`).
    Code(u64, &'static str),
    /// Accepted or refused; the state rules hold either way.
    Any,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    stdin: Vec<u8>,
    /// Environment changes: `Some` sets, `None` removes.
    env: Vec<(&'static str, Option<String>)>,
    expect: Expect,
}

impl Case {
    fn new(name: impl Into<String>, stdin: impl Into<Vec<u8>>, expect: Expect) -> Case {
        Case { name: name.into(), stdin: stdin.into(), env: Vec::new(), expect }
    }
    fn env(mut self, k: &'static str, v: Option<&str>) -> Case {
        self.env.push((k, v.map(String::from)));
        self
    }
}

/// What `Out::stderr` says of a run that was killed after 30 s.
const HUNG: &str = "did not finish within 30 s";

#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn error(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }
}

/// The host (node) and one container, and the data directories to watch.
struct World {
    host: TestNs,
    pod: TestNs,
    plugin: &'static str,
    dirs: Vec<PathBuf>,
    extra_env: Vec<(&'static str, String)>,
}

impl World {
    fn base_env(&self) -> BTreeMap<&'static str, String> {
        let mut m = BTreeMap::new();
        m.insert("CNI_COMMAND", "ADD".to_string());
        m.insert("CNI_CONTAINERID", "hostile-c1".to_string());
        m.insert("CNI_NETNS", self.pod.path().display().to_string());
        m.insert("CNI_IFNAME", "eth0".to_string());
        m.insert("CNI_PATH", bin("bridge").parent().unwrap().display().to_string());
        // No PATH: a runtime may pass the CNI variables only (ours still find nft; other
        // builds measured with HOSTILE_PLUGIN_DIR get the PATH they need).
        if std::env::var_os("HOSTILE_PLUGIN_DIR").is_some() {
            m.insert("PATH", std::env::var("PATH").unwrap_or_default());
        }
        for (k, v) in &self.extra_env {
            m.insert(k, v.clone());
        }
        m
    }

    fn run(&self, command: &str, case: &Case) -> Out {
        let mut env = self.base_env();
        env.insert("CNI_COMMAND", command.to_string());
        for (k, v) in &case.env {
            match v {
                Some(v) => env.insert(k, v.clone()),
                None => env.remove(k),
            };
        }
        let mut child = self
            .host
            .command(bin(self.plugin).to_str().unwrap())
            .env_clear()
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the plugin");
        let mut pipe = child.stdin.take().unwrap();
        let input = case.stdin.clone();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        // Bounded time: no input may make a plugin hang.
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                let _ = writer.join();
                return Out { code: None, stdout: String::new(), stderr: HUNG.into() };
            }
        };
        let _ = writer.join();
        Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (label, ns) in [("host", &self.host), ("pod", &self.pod)] {
            let nl = ns.netlink();
            let links = nl.links().unwrap();
            let name_of =
                |i: u32| links.iter().find(|l| l.index == i).map_or(i.to_string(), |l| l.name.clone());
            for l in &links {
                s.kernel.push(format!(
                    "{label} link {} {:?} {:?} mtu={} up={} promisc={} master={:?}",
                    l.name,
                    l.kind,
                    l.mac,
                    l.mtu,
                    l.up,
                    l.promisc,
                    l.master.map(name_of)
                ));
                let mut addrs: Vec<String> =
                    nl.addresses(l.index).unwrap().iter().map(|a| a.to_string()).collect();
                addrs.sort();
                s.kernel.push(format!("{label} addr {} {addrs:?}", l.name));
            }
            for v6 in [false, true] {
                for r in nl.routes(v6, None).unwrap() {
                    s.kernel.push(format!(
                        "{label} route {} via {:?} dev {:?} table {:?} prio {:?}",
                        r.dst,
                        r.gateway,
                        r.oif.map(name_of),
                        r.table,
                        r.priority
                    ));
                }
            }
            // Traffic control too (the bandwidth plugin's qdiscs), without the reference
            // counts: those move with the links other cases make and remove.
            let qd = ns.command("tc").args(["-j", "qdisc", "show"]).output().unwrap();
            let qdiscs: Vec<Value> = serde_json::from_slice(&qd.stdout).unwrap_or_default();
            for mut q in qdiscs {
                let dev = q["dev"].as_str().unwrap_or_default().to_string();
                if let Some(o) = q.as_object_mut() {
                    o.remove("refcnt");
                }
                // The device by name, as the other lines give it (`lo` is filtered by name).
                s.kernel.push(format!("{label} tc {dev} {q}"));
            }
            let nft = ns.command("nft").args(["list", "ruleset"]).output().unwrap();
            s.kernel.push(format!("{label} nft {}", String::from_utf8_lossy(&nft.stdout)));
            let sysctls = ns.run(|| {
                let mut out = Vec::new();
                for key in [
                    "net/ipv4/ip_forward",
                    "net/ipv6/conf/all/forwarding",
                    "net/ipv6/conf/default/accept_ra",
                    "net/ipv6/conf/lo/disable_ipv6",
                    "net/ipv4/conf/all/arp_notify",
                    "net/ipv4/conf/eth0/forwarding",
                    "net/core/somaxconn",
                ] {
                    let v = std::fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default();
                    out.push(format!("sysctl {key}={}", v.trim()));
                }
                out
            });
            s.kernel.extend(sysctls.into_iter().map(|l| format!("{label} {l}")));
        }
        s.kernel.sort();
        for d in &self.dirs {
            walk(d, d, &mut s.files);
        }
        s
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        if p.is_dir() {
            out.insert(format!("{rel}/"), Vec::new());
            walk(root, &p, out);
        } else {
            out.insert(rel, std::fs::read(&p).unwrap_or_default());
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq, Clone)]
struct Snapshot {
    kernel: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    fn diff(&self, other: &Snapshot) -> String {
        let mut out = String::new();
        for l in &self.kernel {
            if !other.kernel.contains(l) {
                out += &format!("- {}\n", l.chars().take(300).collect::<String>());
            }
        }
        for l in &other.kernel {
            if !self.kernel.contains(l) {
                out += &format!("+ {}\n", l.chars().take(300).collect::<String>());
            }
        }
        for (k, v) in &self.files {
            if other.files.get(k) != Some(v) {
                out += &format!("- file {k} {:?}\n", String::from_utf8_lossy(v));
            }
        }
        for (k, v) in &other.files {
            if self.files.get(k) != Some(v) {
                out += &format!("+ file {k} {:?}\n", String::from_utf8_lossy(v));
            }
        }
        out
    }

    fn pod_part(&self) -> Vec<&String> {
        self.kernel.iter().filter(|l| l.starts_with("pod ")).collect()
    }
}

/// Runs every case; returns (cases, accepted ADDs).
fn run_all(world: &World, cases: &[Case]) -> (usize, usize) {
    let mut failures = Vec::new();
    let mut accepted = 0;
    for case in cases {
        let before = world.snapshot();
        let add = world.run("ADD", case);
        if add.stderr == HUNG {
            failures.push(format!("{}: ADD {HUNG}", case.name));
            let _ = world.run("DEL", case);
            continue;
        }
        let err = add.error();
        let code = err.as_ref().and_then(|e| e["code"].as_u64());
        if add.code != Some(0) && code == Some(999) && add.stdout.contains("panicked") {
            failures.push(format!("{}: panic: {}", case.name, add.stdout));
        }
        if add.code == Some(0) {
            accepted += 1;
            match case.expect {
                Expect::Code(..) => {
                    failures.push(format!("{}: accepted, expected a refusal: {}", case.name, add.stdout))
                }
                Expect::Any => {}
            }
            let del = world.run("DEL", case);
            if del.code != Some(0) {
                failures.push(format!("{}: DEL after an accepted ADD failed: {}", case.name, del.stdout));
            }
            let after = world.snapshot();
            // The container's `lo` stays up after DEL (the runtime removes the namespace).
            let pod = |s: &Snapshot| -> Vec<String> {
                s.pod_part()
                    .into_iter()
                    .filter(|l| !l.contains(" lo ") && !l.contains("conf/lo/"))
                    .cloned()
                    .collect()
            };
            if pod(&after) != pod(&before) {
                failures.push(format!(
                    "{}: the container differs after ADD+DEL:\n{}",
                    case.name,
                    before.diff(&after)
                ));
            }
            let cid = world.base_env().get("CNI_CONTAINERID").cloned().unwrap();
            let cid = case
                .env
                .iter()
                .rev()
                .find(|(k, _)| *k == "CNI_CONTAINERID")
                .and_then(|(_, v)| v.clone())
                .unwrap_or(cid);
            for (path, content) in &after.files {
                if String::from_utf8_lossy(content).contains(&cid) || path.contains(&cid) {
                    failures.push(format!("{}: {path} names the container after DEL", case.name));
                }
            }
            for l in &after.kernel {
                if l.contains(&cid) {
                    failures
                        .push(format!("{}: the node still names the container after DEL: {l}", case.name));
                }
            }
            continue;
        }
        // Refused: the right class, and nothing changed, even after a DEL of the same input.
        let Some(code) = code else {
            failures.push(format!(
                "{}: exit {:?} without an error object: {:?} {:?}",
                case.name, add.code, add.stdout, add.stderr
            ));
            continue;
        };
        match &case.expect {
            Expect::Code(want, names) if code != *want => {
                failures.push(format!("{}: code {code}, expected {want}: {}", case.name, add.stdout))
            }
            Expect::Code(_, names) if !names.is_empty() && !add.stdout.contains(names) => {
                failures.push(format!("{}: the error does not name {names:?}: {}", case.name, add.stdout))
            }
            _ => {}
        }
        let after = world.snapshot();
        if after != before {
            failures.push(format!(
                "{}: a refused ADD changed state ({}):\n{}stdin: {}",
                case.name,
                add.stdout,
                before.diff(&after),
                String::from_utf8_lossy(&case.stdin)
            ));
            continue;
        }
        let _ = world.run("DEL", case);
        let after_del = world.snapshot();
        if after_del != before {
            failures.push(format!(
                "{}: DEL after a refused ADD changed state:\n{}",
                case.name,
                before.diff(&after_del)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    (cases.len(), accepted)
}

/// A value of every JSON type.
fn every_type() -> Vec<(&'static str, Value)> {
    vec![
        ("bool", json!(true)),
        ("int", json!(7)),
        ("float", json!(1.5)),
        ("string", json!("x")),
        ("array", json!([])),
        ("object", json!({})),
    ]
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "int",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// Generated cases around a good config: stdin faults, truncations, byte flips, wrong
/// types for every listed field (pointer `/a/b` → field name `a.b`), long strings.
fn generated(good: &Value, fields: &[(&'static str, Value)]) -> Vec<Case> {
    let text = good.to_string();
    let bytes = text.as_bytes();
    let mut cases = Vec::new();
    // Stdin that does not decode: code 6.
    let dup = text.replacen('{', "{\"name\":\"dup\",", 1);
    for (name, stdin) in [
        ("empty stdin", Vec::new()),
        ("whitespace stdin", b" \n\t \r\n".to_vec()),
        ("duplicate key", dup.into_bytes()),
        ("trailing garbage", format!("{text} x").into_bytes()),
        ("two objects", format!("{text}{text}").into_bytes()),
        ("BOM", [&b"\xef\xbb\xbf"[..], bytes].concat()),
        (
            "invalid UTF-8",
            text.replacen("\"type\"", "\"ty\u{fffd}pe\"", 1).replace('\u{fffd}', "\u{1}").into_bytes(),
        ),
        ("raw bytes", vec![0xff, 0xfe, 0x00, 0x7b]),
        ("deep nesting", format!("{}{}", "[".repeat(300), "]".repeat(300)).into_bytes()),
        ("NUL", b"\0".to_vec()),
        ("single quote", text.replace('"', "'").into_bytes()),
        ("comment", format!("// c\n{text}").into_bytes()),
        ("NaN", text.replacen('{', "{\"x\":NaN,", 1).into_bytes()),
        ("huge number", text.replacen('{', "{\"x\":1e999,", 1).into_bytes()),
    ] {
        cases.push(Case::new(name, stdin, Expect::Code(6, "")));
    }
    // A config that decodes but is not an object, or lacks cniVersion: code 7.
    for (name, stdin) in [("array", "[]"), ("string", "\"x\""), ("number", "5"), ("null", "null")] {
        cases.push(Case::new(format!("top-level {name}"), stdin, Expect::Code(7, "")));
    }
    for (name, v) in [("missing", None), ("null", Some(Value::Null)), ("empty", Some(json!("")))] {
        let mut c = good.clone();
        match v {
            None => {
                c.as_object_mut().unwrap().remove("cniVersion");
            }
            Some(v) => c["cniVersion"] = v,
        }
        cases.push(Case::new(format!("cniVersion {name}"), c.to_string(), Expect::Code(7, "cniVersion")));
    }
    for bad in ["0.5.0", "1.0.0\n", " 1.0.0", "v1.0.0", "1.0", "99.0.0", "1.0.0-rc1"] {
        let mut c = good.clone();
        c["cniVersion"] = json!(bad);
        cases.push(Case::new(format!("cniVersion {bad:?}"), c.to_string(), Expect::Code(1, "")));
    }
    // Every truncation point (sampled): never valid JSON.
    let step = (bytes.len() / 40).max(1);
    for n in (1..bytes.len()).step_by(step) {
        cases.push(Case::new(format!("truncated at {n}"), &bytes[..n], Expect::Code(6, "")));
    }
    // Byte flips: some still decode (then any outcome is fine, but state rules hold).
    let step = (bytes.len() / 50).max(1);
    for (k, i) in (0..bytes.len()).step_by(step).enumerate() {
        let mut b = bytes.to_vec();
        b[i] = [b'\0', b'"', b'}', b'9', b'x', b'\\', b'\n', 0xc3][k % 8];
        cases.push(Case::new(format!("byte {i} flipped to {:#x}", b[i]), b, Expect::Any));
    }
    // Every field with every wrong JSON type: code 7 naming the field.
    for (pointer, right) in fields {
        // `/ipam/ranges/0/0/subnet` is named `ipam.ranges[0][0].subnet`.
        let mut field = String::new();
        for seg in pointer.trim_start_matches('/').split('/') {
            if seg.bytes().all(|b| b.is_ascii_digit()) {
                field += &format!("[{seg}]");
            } else {
                if !field.is_empty() {
                    field.push('.');
                }
                field += seg;
            }
        }
        let field: &'static str = Box::leak(field.into_boxed_str());
        for (tname, wrong) in every_type() {
            if tname == type_of(right) || (type_of(right) == "float" && tname == "int") {
                continue;
            }
            let mut c = good.clone();
            *c.pointer_mut(pointer).unwrap_or_else(|| panic!("{pointer} in {good}")) = wrong;
            cases.push(Case::new(format!("{field} as {tname}"), c.to_string(), Expect::Code(7, field)));
        }
        if let Value::String(_) = right {
            for (label, s) in [
                ("100 KiB", "a".repeat(100 << 10)),
                ("NUL", "a\0b".into()),
                ("newline", "a\n".into()),
                ("zero-width", "a\u{200b}".into()),
                ("RTL override", "\u{202e}a".into()),
                ("empty", String::new()),
            ] {
                let mut c = good.clone();
                *c.pointer_mut(pointer).unwrap() = json!(s);
                cases.push(Case::new(format!("{field} {label}"), c.to_string(), Expect::Any));
            }
        }
    }
    cases
}

/// Environment faults: code 4 naming the variable.
fn env_cases(good: &Value) -> Vec<Case> {
    let s = good.to_string();
    let c = |name: &str, var: &'static str, v: Option<&str>| {
        Case::new(name, s.clone(), Expect::Code(4, var)).env(var, v)
    };
    vec![
        c("no CNI_COMMAND", "CNI_COMMAND", None),
        c("empty CNI_COMMAND", "CNI_COMMAND", Some("")),
        c("lowercase CNI_COMMAND", "CNI_COMMAND", Some("add")),
        c("unknown CNI_COMMAND", "CNI_COMMAND", Some("ATTACH")),
        c("no CNI_CONTAINERID", "CNI_CONTAINERID", None),
        c("empty CNI_CONTAINERID", "CNI_CONTAINERID", Some("")),
        c("CNI_CONTAINERID with a slash", "CNI_CONTAINERID", Some("a/b")),
        c("CNI_CONTAINERID starting with a dot", "CNI_CONTAINERID", Some(".a")),
        c("CNI_CONTAINERID with Unicode", "CNI_CONTAINERID", Some("cé")),
        c("CNI_CONTAINERID with a newline", "CNI_CONTAINERID", Some("c\n")),
        c("CNI_CONTAINERID of 100 KiB", "CNI_CONTAINERID", Some(&"c".repeat(100 << 10))),
        c("no CNI_IFNAME", "CNI_IFNAME", None),
        c("long CNI_IFNAME", "CNI_IFNAME", Some("a-very-long-name0")),
        c("CNI_IFNAME ..", "CNI_IFNAME", Some("..")),
        c("CNI_IFNAME with a slash", "CNI_IFNAME", Some("a/b")),
        c("CNI_IFNAME with a colon", "CNI_IFNAME", Some("a:b")),
        c("CNI_IFNAME with a space", "CNI_IFNAME", Some("eth 0")),
        c("CNI_IFNAME template", "CNI_IFNAME", Some("eth%d")),
        c("CNI_IFNAME zero-width", "CNI_IFNAME", Some("eth\u{200b}0")),
        c("CNI_IFNAME Unicode", "CNI_IFNAME", Some("ethé")),
        c("no CNI_NETNS", "CNI_NETNS", None),
        c("relative CNI_NETNS", "CNI_NETNS", Some("run/netns/x")),
        c("CNI_NETNS with ..", "CNI_NETNS", Some("/run/netns/../netns/x")),
        c("CNI_ARGS not a pair", "CNI_ARGS", Some("IP")),
        c("CNI_ARGS unknown key", "CNI_ARGS", Some("K8S_POD_NAME=p")),
        c("CNI_ARGS double =", "CNI_ARGS", Some("IP=a=b")),
    ]
}

/// Environment faults that only plugins touching the container's namespace see.
fn netns_cases(good: &Value, tmp: &Path) -> Vec<Case> {
    let s = good.to_string();
    let c = |name: &str, var: &'static str, v: Option<&str>| {
        Case::new(name, s.clone(), Expect::Code(4, var)).env(var, v)
    };
    vec![
        c("CNI_NETNS missing", "CNI_NETNS", Some("/nonexistent/netns")),
        c("CNI_NETNS a file", "CNI_NETNS", Some("/etc/hostname")),
        c("CNI_NETNS a directory", "CNI_NETNS", Some("/run")),
        c("CNI_NETNS the plugin's own", "CNI_NETNS", Some("/proc/self/ns/net")),
        c("CNI_NETNS a FIFO", "CNI_NETNS", Some(&fifo(tmp))),
        c("CNI_NETNS a device", "CNI_NETNS", Some("/dev/zero")),
        c("CNI_IFNAME lo", "CNI_IFNAME", Some("lo")),
        c("CNI_ARGS bad MAC", "CNI_ARGS", Some("MAC=01:00:5e:00:00:01")),
    ]
}

/// A FIFO in `dir`: opening it for reading blocks until a writer comes, so nothing may
/// open it.
fn fifo(dir: &Path) -> String {
    let p = dir.join("fifo");
    if !p.exists() {
        assert!(Command::new("mkfifo").arg(&p).status().unwrap().success());
    }
    p.display().to_string()
}

fn host_local_conf(data: &Path) -> Value {
    json!({"cniVersion": "1.0.0", "name": "hostile", "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": data, "resolvConf": "/etc/hosts",
            "ranges": [[{"subnet": "10.88.200.0/24", "gateway": "10.88.200.1"}], [{"subnet": "fd00:88::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.88.200.1"}]}})
}

/// The issue's list of values that must be refused.
fn named_cases(good: &Value, tmp: &Path) -> Vec<Case> {
    let with = |pointer: &str, v: Value| {
        let mut c = good.clone();
        if let Some(slot) = c.pointer_mut(pointer) {
            *slot = v;
        } else {
            let (parent, key) = pointer.rsplit_once('/').unwrap();
            c.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.into(), v);
        }
        c.to_string()
    };
    let mut out = vec![
        Case::new(
            "subnet with a newline",
            with("/ipam/ranges/0/0/subnet", json!("10.88.200.0/24\n")),
            Expect::Code(7, "subnet"),
        ),
        Case::new(
            "subnet with leading zeros",
            with("/ipam/ranges/0/0/subnet", json!("010.088.200.000/24")),
            Expect::Code(7, "subnet"),
        ),
        Case::new(
            "prefix with a plus",
            with("/ipam/ranges/0/0/subnet", json!("10.88.200.0/+24")),
            Expect::Code(7, "subnet"),
        ),
        Case::new(
            "subnet with host bits",
            with("/ipam/ranges/0/0/subnet", json!("10.88.200.1/24")),
            Expect::Code(7, "subnet"),
        ),
        Case::new(
            "subnet too small",
            with("/ipam/ranges/0/0/subnet", json!("10.88.200.0/31")),
            Expect::Code(7, "subnet"),
        ),
        Case::new(
            "gateway outside",
            with("/ipam/ranges/0/0/gateway", json!("10.1.1.1")),
            Expect::Code(7, "gateway"),
        ),
        Case::new(
            "rangeStart outside",
            with("/ipam/ranges/0/0/rangeStart", json!("10.1.1.1")),
            Expect::Code(7, "rangeStart"),
        ),
        Case::new(
            "rangeEnd before start",
            with("/ipam/ranges/0/0/rangeEnd", json!("10.88.200.0")),
            Expect::Code(7, "rangeEnd"),
        ),
        Case::new(
            "routes of the wrong shape",
            with("/ipam/routes", json!([["0.0.0.0/0"]])),
            Expect::Code(7, "ipam.routes[0]"),
        ),
        Case::new(
            "route dst not a prefix",
            with("/ipam/routes", json!([{"dst": "0.0.0.0"}])),
            Expect::Code(7, "ipam.routes[0].dst"),
        ),
        Case::new(
            "route gw of another family",
            with("/ipam/routes", json!([{"dst": "0.0.0.0/0", "gw": "fd00::1"}])),
            Expect::Code(7, "ipam.routes[0].gw"),
        ),
        Case::new(
            "relative dataDir",
            with("/ipam/dataDir", json!("relative/dir")),
            Expect::Code(7, "ipam.dataDir"),
        ),
        Case::new(
            "dataDir under a file",
            with("/ipam/dataDir", json!("/etc/hostname/x")),
            Expect::Code(7, "ipam.dataDir"),
        ),
        Case::new(
            "dataDir too long",
            with("/ipam/dataDir", json!(format!("/tmp/{}", "d".repeat(300)))),
            Expect::Code(7, "ipam.dataDir"),
        ),
        Case::new("name too long", with("/name", json!("n".repeat(300))), Expect::Code(7, "name")),
        Case::new("name with a slash", with("/name", json!("a/b")), Expect::Code(7, "name")),
        Case::new(
            "missing resolvConf",
            with("/ipam/resolvConf", json!("/nonexistent/resolv.conf")),
            Expect::Code(7, "resolvConf"),
        ),
        Case::new(
            "resolvConf an endless device",
            with("/ipam/resolvConf", json!("/dev/zero")),
            Expect::Code(7, "resolvConf"),
        ),
        Case::new(
            "resolvConf a directory",
            with("/ipam/resolvConf", json!("/etc")),
            Expect::Code(7, "resolvConf"),
        ),
        Case::new(
            "resolvConf a FIFO",
            with("/ipam/resolvConf", json!(fifo(tmp))),
            Expect::Code(7, "resolvConf"),
        ),
        Case::new(
            "requested IP outside",
            with("/runtimeConfig", json!({"ips": ["10.1.1.1"]})),
            Expect::Code(7, "runtimeConfig.ips[0]"),
        ),
        Case::new(
            "requested gateway",
            with("/args", json!({"cni": {"ips": ["10.88.200.1"]}})),
            Expect::Code(7, "args.cni.ips[0]"),
        ),
        Case::new(
            "ipRanges overlapping",
            with("/runtimeConfig", json!({"ipRanges": [[{"subnet": "10.88.0.0/16"}]]})),
            Expect::Code(7, "overlaps"),
        ),
        Case::new(
            "mixed families in a set",
            with("/ipam/ranges/0", json!([{"subnet": "10.88.200.0/24"}, {"subnet": "fd00:99::/64"}])),
            Expect::Code(7, "mixed"),
        ),
        Case::new("dns as a list", with("/dns", json!([])), Expect::Code(7, "dns")),
        Case::new("type empty", with("/type", json!("")), Expect::Code(7, "type")),
        Case::new(
            "a range key in another case",
            with("/ipam/ranges/0/0/RangeStart", json!("10.88.200.9")),
            Expect::Code(7, "ipam.ranges[0][0].RangeStart"),
        ),
        Case::new(
            "an ipam key in another case",
            with("/ipam/DataDir", json!("/tmp/x")),
            Expect::Code(7, "ipam.DataDir"),
        ),
        Case::new(
            "cniVersion in another case",
            with("/CNIVersion", json!("1.0.0")),
            Expect::Code(7, "CNIVersion"),
        ),
        Case::new("prevResult not a result", with("/prevResult", json!(5)), Expect::Code(7, "prevResult")),
        Case::new(
            "prevResult with a bad address",
            with("/prevResult", json!({"ips": [{"address": "10.0.0.2"}]})),
            Expect::Code(7, "prevResult"),
        ),
        Case::new("type a path", with("/type", json!("../bin/bridge")), Expect::Code(7, "type")),
        Case::new(
            "capabilities not booleans",
            with("/capabilities", json!({"ips": "yes"})),
            Expect::Code(7, "capabilities"),
        ),
    ];
    out.push(
        Case::new("CNI_ARGS IP outside", good.to_string(), Expect::Code(4, "CNI_ARGS"))
            .env("CNI_ARGS", Some("IP=10.1.1.1")),
    );
    out
}

#[test]
fn host_local_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ipam");
    let good = host_local_conf(&data);
    let fields = [
        ("/name", json!("s")),
        ("/ipam/ranges", json!([])),
        ("/ipam/ranges/0", json!([])),
        ("/ipam/ranges/0/0", json!({})),
        ("/ipam/ranges/0/0/subnet", json!("s")),
        ("/ipam/ranges/0/0/gateway", json!("s")),
        ("/ipam/routes", json!([])),
        ("/ipam/routes/0", json!({})),
        ("/ipam/routes/0/dst", json!("s")),
        ("/ipam/routes/1/gw", json!("s")),
        ("/ipam/dataDir", json!("s")),
        ("/ipam/resolvConf", json!("s")),
    ];
    let mut cases = generated(&good, &fields);
    cases.extend(
        env_cases(&good)
            .into_iter()
            .filter(|c| !c.name.contains("CNI_NETNS ") || c.name.contains("relative")),
    );
    cases.extend(
        named_cases(&good, tmp.path())
            .into_iter()
            .filter(|c| !c.name.starts_with("dns") && !c.name.starts_with("type")),
    );
    // A good ADD first, so that the cases meet an existing store too.
    let world = World {
        host: TestNs::new("hlhost"),
        pod: TestNs::new("hlpod"),
        plugin: "host-local",
        dirs: vec![data.clone()],
        extra_env: Vec::new(),
    };
    let keep = Case::new("good", good.to_string(), Expect::Any).env("CNI_CONTAINERID", Some("keeper"));
    assert_eq!(world.run("ADD", &keep).code, Some(0));
    let (n, accepted) = run_all(&world, &cases);
    eprintln!(
        "host-local: {n} hostile cases, {accepted} accepted (and undone by DEL), all others refused without a trace"
    );
    assert!(n >= 200, "{n}");
}

#[test]
fn bandwidth_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let world = World {
        host: TestNs::new("bwhost"),
        pod: TestNs::new("bwpod"),
        plugin: "bandwidth",
        dirs: vec![],
        extra_env: Vec::new(),
    };
    test_netns::veth_between(&world.host, "veth0host", &world.pod, "eth0");
    let good = json!({"cniVersion": "1.0.0", "name": "hbw", "type": "bandwidth",
        "ingressRate": 8_000_000, "ingressBurst": 800_000, "egressRate": 8_000_000, "egressBurst": 800_000,
        "shapedSubnets": [], "runtimeConfig": {},
        "prevResult": {"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth0host"}, {"name": "eth0", "sandbox": world.pod.path()}],
            "ips": [{"address": "10.1.0.5/24", "interface": 1}]}});
    let fields = [
        ("/name", json!("s")),
        ("/ingressRate", json!(1)),
        ("/ingressBurst", json!(1)),
        ("/egressRate", json!(1)),
        ("/egressBurst", json!(1)),
        ("/shapedSubnets", json!([])),
        ("/runtimeConfig", json!({})),
        ("/prevResult", json!({})),
        ("/prevResult/interfaces", json!([])),
        ("/prevResult/interfaces/0/name", json!("s")),
        ("/prevResult/interfaces/1/sandbox", json!("s")),
    ];
    let mut cases = generated(&good, &fields);
    cases.extend(env_cases(&good).into_iter().filter(|c| c.name != "CNI_ARGS unknown key"));
    cases.extend(
        netns_cases(&good, tmp.path())
            .into_iter()
            .filter(|c| !c.name.contains(" lo") && !c.name.contains("MAC")),
    );
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let mut both_subnets = good.clone();
    both_subnets["shapedSubnets"] = json!(["fd00::/8"]);
    both_subnets["unshapedSubnets"] = json!(["10.0.0.0/8"]);
    let both_subnets = both_subnets.to_string();
    for (name, stdin, code, names) in [
        ("rate without burst", with("ingressBurst", json!(0)), 7, "ingressBurst"),
        ("burst of 4 GB", with("egressBurst", json!(34_359_738_368u64)), 7, "egressBurst"),
        ("rate under a byte", with("egressRate", json!(7)), 7, "egressRate"),
        ("fractional rate", with("ingressRate", json!(0.5)), 7, "ingressRate"),
        (
            "bad subnet",
            with("unshapedSubnets", json!(["10.0.0.0/8", "10.0.0.0/40"])),
            7,
            "unshapedSubnets[1]",
        ),
        (
            "subnet not a string",
            with("unshapedSubnets", json!([{"cidr": "10.0.0.0/8"}])),
            7,
            "unshapedSubnets[0]",
        ),
        ("shaped and unshaped subnets", both_subnets, 7, "unshapedSubnets, shapedSubnets"),
        (
            "runtime entry not an object",
            with("runtimeConfig", json!({"bandwidth": "fast"})),
            7,
            "runtimeConfig.bandwidth",
        ),
        ("version without chaining", with("cniVersion", json!("0.2.0")), 1, ""),
    ] {
        cases.push(Case::new(name, stdin, Expect::Code(code, names)));
    }
    let (n, accepted) = run_all(&world, &cases);
    eprintln!(
        "bandwidth: {n} hostile cases, {accepted} accepted (and undone by DEL), all others refused without a trace"
    );
    // Accepted cases were undone by DEL: no ifb device, no qdisc of ours left on the node.
    let tc = world.host.exec(&["tc", "qdisc", "show"]);
    assert!(!tc.contains("tbf") && !tc.contains("htb") && !tc.contains("ingress"), "{tc}");
    assert!(world.host.netlink().links().unwrap().iter().all(|l| !l.is("ifb")));
    assert!(n >= 100, "{n}");
}

/// A world for the chained plugins: the pod's `eth0` already plugged (as the interface
/// plugin left it), and a prevResult naming it.
fn chained_world(plugin: &'static str, host: &str, pod: &str, dirs: Vec<PathBuf>) -> (World, Value) {
    let world = World { host: TestNs::new(host), pod: TestNs::new(pod), plugin, dirs, extra_env: Vec::new() };
    world.host.lo_up();
    test_netns::veth_between(&world.host, "veth0host", &world.pod, "eth0");
    let prev = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "veth0host"}, {"name": "eth0", "sandbox": world.pod.path()}],
        "ips": [{"address": "10.1.0.5/24", "interface": 1}, {"address": "fd00:1::5/64", "interface": 1}]});
    (world, prev)
}

/// The chained plugins' cases: generated ones, environment faults, and the namespace
/// faults that apply (`netns`: the plugin enters the container's namespace).
fn chained_cases(good: &Value, fields: &[(&'static str, Value)], netns: bool, tmp: &Path) -> Vec<Case> {
    let mut cases = generated(good, fields);
    // portmap and firewall neither enter the namespace nor read CNI_ARGS (as the reference).
    cases.extend(
        env_cases(good)
            .into_iter()
            .filter(|c| netns || !(c.name.contains("CNI_NETNS") || c.name == "CNI_ARGS unknown key")),
    );
    cases.extend(netns_cases(good, tmp).into_iter().filter(|c| {
        (netns && !c.name.contains(" lo") && !c.name.contains("MAC")) || c.name.ends_with("the plugin's own")
    }));
    for (name, ptr, v, field) in [
        ("prevResult missing", "/prevResult", Value::Null, "prevResult"),
        ("prevResult bad address", "/prevResult/ips/0/address", json!("10.1.0.5"), "prevResult"),
    ] {
        let mut c = good.clone();
        *c.pointer_mut(ptr).unwrap() = v;
        cases.push(Case::new(name, c.to_string(), Expect::Code(7, field)));
    }
    cases
}

#[test]
fn portmap_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (world, prev) = chained_world("portmap", "pmhhost", "pmhpod", vec![]);
    let good = json!({"cniVersion": "1.0.0", "name": "hpm", "type": "portmap", "snat": true,
        "capabilities": {"portMappings": true}, "prevResult": prev,
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}});
    let fields: Vec<(&'static str, Value)> = [
        "/name",
        "/snat",
        "/capabilities",
        "/runtimeConfig",
        "/runtimeConfig/portMappings",
        "/runtimeConfig/portMappings/0",
        "/runtimeConfig/portMappings/0/hostPort",
        "/runtimeConfig/portMappings/0/containerPort",
        "/runtimeConfig/portMappings/0/protocol",
        "/prevResult",
        "/prevResult/ips",
    ]
    .iter()
    .map(|p| (*p, good.pointer(p).unwrap().clone()))
    .collect();
    let cases = chained_cases(&good, &fields, false, tmp.path());
    let (n, accepted) = run_all(&world, &cases);
    eprintln!("portmap: {n} hostile cases, {accepted} accepted (and undone by DEL)");
    assert!(n >= 150, "{n}");
}

#[test]
fn firewall_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let (world, prev) = chained_world("firewall", "fwhhost", "fwhpod", vec![]);
    let good = json!({"cniVersion": "1.0.0", "name": "hfw", "type": "firewall", "backend": "iptables",
        "prevResult": prev});
    let fields: Vec<(&'static str, Value)> = ["/name", "/backend", "/prevResult", "/prevResult/ips"]
        .iter()
        .map(|p| (*p, good.pointer(p).unwrap().clone()))
        .collect();
    let cases = chained_cases(&good, &fields, false, tmp.path());
    let (n, accepted) = run_all(&world, &cases);
    eprintln!("firewall: {n} hostile cases, {accepted} accepted (and undone by DEL)");
    assert!(n >= 100, "{n}");
}

#[test]
fn tuning_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tuning");
    let (world, prev) = chained_world("tuning", "tuhhost", "tuhpod", vec![data.clone()]);
    let good = json!({"cniVersion": "1.0.0", "name": "htu", "type": "tuning", "dataDir": data,
        "sysctl": {"net.ipv4.conf.IFNAME.forwarding": "1", "net.core.somaxconn": "512"},
        "mac": "0a:58:0a:01:02:03", "mtu": 1400, "promisc": true, "prevResult": prev});
    let fields: Vec<(&'static str, Value)> =
        ["/name", "/dataDir", "/sysctl", "/mac", "/mtu", "/promisc", "/prevResult"]
            .iter()
            .map(|p| (*p, good.pointer(p).unwrap().clone()))
            .collect();
    let mut cases = chained_cases(&good, &fields, true, tmp.path());
    // A sysctl key has dots of its own: the error names it `sysctl["net.core.somaxconn"]`.
    for (tname, wrong) in every_type().into_iter().filter(|(t, _)| *t != "string") {
        let mut c = good.clone();
        c["sysctl"]["net.core.somaxconn"] = wrong;
        // As it appears in the JSON error object (quotes escaped).
        let expect = Expect::Code(7, r#"sysctl[\"net.core.somaxconn\"]"#);
        cases.push(Case::new(format!("sysctl value as {tname}"), c.to_string(), expect));
    }
    let (n, accepted) = run_all(&world, &cases);
    eprintln!("tuning: {n} hostile cases, {accepted} accepted (and undone by DEL)");
    assert!(n >= 150, "{n}");
}

#[test]
fn loopback_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let world = World {
        host: TestNs::new("lohhost"),
        pod: TestNs::new("lohpod"),
        plugin: "loopback",
        dirs: vec![],
        extra_env: Vec::new(),
    };
    let good = json!({"cniVersion": "1.0.0", "name": "hlo", "type": "loopback"});
    let mut cases = generated(&good, &[("/name", json!("s"))]);
    cases.extend(env_cases(&good).into_iter().filter(|c| !c.name.starts_with("CNI_ARGS")));
    cases.extend(netns_cases(&good, tmp.path()).into_iter().filter(|c| c.name.starts_with("CNI_NETNS")));
    let (n, accepted) = run_all(&world, &cases);
    eprintln!("loopback: {n} hostile cases, {accepted} accepted (and undone by DEL)");
    assert!(n >= 80, "{n}");
}

#[test]
fn bridge_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("ipam");
    let mut good = host_local_conf(&data);
    for (k, v) in [
        ("bridge", json!("hbr0")),
        ("isGateway", json!(true)),
        ("isDefaultGateway", json!(false)),
        ("ipMasq", json!(true)),
        ("mtu", json!(1400)),
        ("hairpinMode", json!(false)),
        ("promiscMode", json!(false)),
        ("vlan", json!(0)),
        ("forceAddress", json!(false)),
        ("macspoofchk", json!(true)),
        ("enabledad", json!(false)),
        ("portIsolation", json!(false)),
        ("ipMasqBackend", json!("nftables")),
        ("dns", json!({"nameservers": ["10.88.200.1"], "search": ["example.org"]})),
        ("runtimeConfig", json!({"mac": "0a:58:0a:58:c8:09"})),
    ] {
        good[k] = v;
    }
    let fields: Vec<(&'static str, Value)> = [
        "/bridge",
        "/isGateway",
        "/isDefaultGateway",
        "/ipMasq",
        "/mtu",
        "/hairpinMode",
        "/promiscMode",
        "/vlan",
        "/forceAddress",
        "/macspoofchk",
        "/enabledad",
        "/portIsolation",
        "/ipMasqBackend",
        "/dns",
        "/dns/nameservers",
        "/dns/nameservers/0",
        "/runtimeConfig",
        "/runtimeConfig/mac",
        "/ipam",
        "/ipam/type",
        "/ipam/ranges/0/0/subnet",
        "/ipam/routes",
        "/ipam/routes/0",
        "/ipam/dataDir",
        "/name",
        "/type",
    ]
    .iter()
    .map(|p| (*p, good.pointer(p).unwrap().clone()))
    .collect();
    let mut cases = generated(&good, &fields);
    cases.extend(env_cases(&good));
    cases.extend(netns_cases(&good, tmp.path()));
    cases.extend(named_cases(&good, tmp.path()));
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    for (name, stdin, expect) in [
        ("bridge with NUL", with("bridge", json!("h\u{0}x")), Expect::Code(7, "bridge")),
        ("bridge ..", with("bridge", json!("..")), Expect::Code(7, "bridge")),
        ("bridge key in another case", with("Bridge", json!("hbr1")), Expect::Code(7, "Bridge")),
        ("bridge .", with("bridge", json!(".")), Expect::Code(7, "bridge")),
        ("bridge template", with("bridge", json!("br%d")), Expect::Code(7, "bridge")),
        ("bridge too long", with("bridge", json!("a-very-long-bridge")), Expect::Code(7, "bridge")),
        ("bridge lo", with("bridge", json!("lo")), Expect::Code(7, "bridge")),
        ("bridge zero-width", with("bridge", json!("hbr\u{200b}")), Expect::Code(7, "bridge")),
        (
            "ipam without type",
            with("ipam", json!({"ranges": [[{"subnet": "10.88.200.0/24"}]]})),
            Expect::Code(7, "ipam.type"),
        ),
        (
            "ipam type not installed",
            with("ipam", json!({"type": "no-such-ipam"})),
            Expect::Code(7, "ipam.type"),
        ),
        ("dns empty list", with("dns", json!([])), Expect::Code(7, "dns")),
        (
            "dns nameserver not an address",
            with("dns", json!({"nameservers": ["ns1"]})),
            Expect::Code(7, "dns.nameservers[0]"),
        ),
        ("vlan too big", with("vlan", json!(4095)), Expect::Code(7, "vlan")),
        ("vlan negative", with("vlan", json!(-1)), Expect::Code(7, "vlan")),
        ("vlan huge", with("vlan", json!(1u64 << 63)), Expect::Code(7, "vlan")),
        ("mtu too small", with("mtu", json!(20)), Expect::Code(7, "mtu")),
        ("mtu too big", with("mtu", json!(70000)), Expect::Code(7, "mtu")),
        ("vlanTrunk of lists", with("vlanTrunk", json!([[1]])), Expect::Code(7, "vlanTrunk[0]")),
        (
            "vlanTrunk min > max",
            with("vlanTrunk", json!([{"minID": 9, "maxID": 5}])),
            Expect::Code(7, "vlanTrunk[0]"),
        ),
        (
            "hairpin and promisc",
            with("hairpinMode", json!(true)).replace("\"promiscMode\":false", "\"promiscMode\":true"),
            Expect::Code(7, "hairpinMode"),
        ),
        ("ipMasqBackend unknown", with("ipMasqBackend", json!("pf")), Expect::Code(7, "ipMasqBackend")),
        (
            "MAC multicast",
            with("runtimeConfig", json!({"mac": "01:00:5e:00:00:01"})),
            Expect::Code(7, "runtimeConfig.mac"),
        ),
        (
            "MAC zero",
            with("runtimeConfig", json!({"mac": "00:00:00:00:00:00"})),
            Expect::Code(7, "runtimeConfig.mac"),
        ),
        (
            "MAC mixed separators",
            with("runtimeConfig", json!({"mac": "0a:58-0a:58:c8:09"})),
            Expect::Code(7, "runtimeConfig.mac"),
        ),
        (
            "route gateway unreachable",
            with(
                "ipam",
                json!({"type": "host-local", "dataDir": data, "subnet": "10.88.201.0/24", "routes": [{"dst": "10.99.0.0/16", "gw": "10.1.1.1"}]}),
            ),
            Expect::Code(7, "ipam.routes[0].gw"),
        ),
        // Refused by the kernel only, after IPAM allocated: IPAM's rollback must be exact.
        (
            "a route the kernel refuses",
            with(
                "ipam",
                json!({"type": "host-local", "dataDir": data, "ranges": [[{"subnet": "10.88.200.0/24"}]],
                    "routes": [{"dst": "10.99.0.0/16", "gw": "10.88.200.1", "scope": 254}]}),
            ),
            Expect::Code(999, "route"),
        ),
        ("vlan", with("vlan", json!(100)), Expect::Any),
        ("vlanTrunk", with("vlanTrunk", json!([{"id": 101}, {"minID": 200, "maxID": 210}])), Expect::Any),
        ("vlan on a new bridge", with("vlan", json!(100)).replace("hbr0", "hbrv"), Expect::Any),
        (
            "disableContainerInterface with IPAM",
            with("disableContainerInterface", json!(true)),
            Expect::Code(7, "disableContainerInterface"),
        ),
        (
            "exhausted range",
            with("ipam", json!({"type": "host-local", "dataDir": data, "subnet": "10.88.202.0/30"}))
                .replace("\"forceAddress\":false", "\"forceAddress\":true"),
            Expect::Code(102, ""),
        ),
        (
            "gateway taken on the bridge",
            with("ipam", json!({"type": "host-local", "dataDir": data, "subnet": "10.88.203.0/24"})),
            Expect::Code(999, "already has an IP address"),
        ),
    ] {
        cases.push(Case::new(name, stdin, expect));
    }
    let world = World {
        host: TestNs::new("brhost"),
        pod: TestNs::new("brpod"),
        plugin: "bridge",
        dirs: vec![data.clone()],
        extra_env: Vec::new(),
    };
    world.host.lo_up();
    // The exhausted range: its one address taken by another container first.
    let taker_ns = TestNs::new("brtaker");
    let taker = Case::new(
        "taker",
        with("ipam", json!({"type": "host-local", "dataDir": data, "subnet": "10.88.202.0/30"}))
            .replace("hbr0", "hbr9"),
        Expect::Any,
    )
    .env("CNI_CONTAINERID", Some("taker"))
    .env("CNI_NETNS", Some(&taker_ns.path().display().to_string()));
    let out = world.run("ADD", &taker);
    assert_eq!(out.code, Some(0), "{out:?}");
    let (n, accepted) = run_all(&world, &cases);
    eprintln!(
        "bridge: {n} hostile cases, {accepted} accepted (and undone by DEL), all others refused without a trace"
    );
    assert!(n >= 250, "{n}");
}

#[test]
fn vxlan_refuses_hostile_input_and_changes_nothing() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("overlayd.sock");
    overlayd_standin::serve(&socket);
    let data = tmp.path().join("vxlan");
    let ipam = tmp.path().join("ipam");
    let good = json!({"cniVersion": "1.0.0", "name": "hostile", "type": "vxlan", "socket": socket,
        "dataDir": data, "ipamDataDir": ipam, "routes": [{"dst": "10.99.0.0/16"}],
        "delegate": {"bridge": "hvx0", "hairpinMode": true}});
    let fields: Vec<(&'static str, Value)> = [
        "/socket",
        "/dataDir",
        "/ipamDataDir",
        "/routes",
        "/routes/0",
        "/routes/0/dst",
        "/delegate",
        "/delegate/bridge",
        "/delegate/hairpinMode",
        "/name",
    ]
    .iter()
    .map(|p| (*p, good.pointer(p).unwrap().clone()))
    .collect();
    let mut cases = generated(&good, &fields);
    cases.extend(env_cases(&good).into_iter().filter(|c| !c.name.contains("CNI_ARGS unknown")));
    cases.extend(netns_cases(&good, tmp.path()).into_iter().filter(|c| c.name.ends_with("the plugin's own")));
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    for (name, stdin, expect) in [
        ("relative socket", with("socket", json!("overlayd.sock")), Expect::Code(7, "socket")),
        ("relative dataDir", with("dataDir", json!("vxlan")), Expect::Code(7, "dataDir")),
        ("dataDir with ..", with("dataDir", json!("/tmp/../etc")), Expect::Code(7, "dataDir")),
        ("ipamDataDir relative", with("ipamDataDir", json!("ipam")), Expect::Code(7, "ipamDataDir")),
        ("delegate name", with("delegate", json!({"name": "x"})), Expect::Code(7, "delegate.name")),
        ("delegate ipam", with("delegate", json!({"ipam": {}})), Expect::Code(7, "delegate.ipam")),
        (
            "delegate type a path",
            with("delegate", json!({"type": "../bridge"})),
            Expect::Code(7, "delegate.type"),
        ),
        (
            "delegate type not installed",
            with("delegate", json!({"type": "no-such-plugin"})),
            Expect::Code(7, "delegate.type"),
        ),
        ("delegate bridge bad", with("delegate", json!({"bridge": ".."})), Expect::Code(7, "bridge")),
        ("delegate mtu bad", with("delegate", json!({"mtu": 20})), Expect::Code(7, "mtu")),
        ("routes of the wrong shape", with("routes", json!([["0.0.0.0/0"]])), Expect::Code(7, "routes[0]")),
        (
            "route with leading zeros",
            with("routes", json!([{"dst": "010.0.0.0/8"}])),
            Expect::Code(7, "routes[0].dst"),
        ),
        (
            "route gw of another family",
            with("routes", json!([{"dst": "10.0.0.0/8", "gw": "fd00::1"}])),
            Expect::Code(7, "routes[0].gw"),
        ),
        ("name too long", with("name", json!("n".repeat(300))), Expect::Code(7, "name")),
    ] {
        cases.push(Case::new(name, stdin, expect));
    }
    let world = World {
        host: TestNs::new("vxhost"),
        pod: TestNs::new("vxpod"),
        plugin: "vxlan",
        dirs: vec![data.clone(), ipam.clone()],
        extra_env: Vec::new(),
    };
    world.host.lo_up();
    let (n, accepted) = run_all(&world, &cases);
    eprintln!(
        "vxlan: {n} hostile cases, {accepted} accepted (and undone by DEL), all others refused without a trace"
    );
    assert!(n >= 200, "{n}");
}

/// Every plugin this project builds.
const PLUGINS: [&str; 8] =
    ["bridge", "host-local", "vxlan", "bandwidth", "portmap", "firewall", "tuning", "loopback"];

/// A command line that must stay usable: VERSION by hand, with no stdin.
#[test]
fn version_by_hand_still_answers() {
    for plugin in PLUGINS {
        let out = Command::new(bin(plugin))
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{plugin}: {out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }
}

/// Stdin that cannot be read (closed, a directory) is code 5 for every plugin; VERSION,
/// which needs no stdin, still answers.
#[test]
fn unreadable_stdin_is_code_5() {
    for plugin in PLUGINS {
        for (how, redirect) in [("closed", "<&-"), ("a directory", "</")] {
            let out = Command::new("sh")
                .args(["-c", &format!("exec \"$0\" {redirect}"), bin(plugin).to_str().unwrap()])
                .env_clear()
                .env("CNI_COMMAND", "DEL")
                .env("CNI_CONTAINERID", "c1")
                .env("CNI_IFNAME", "eth0")
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(1), "{plugin}, stdin {how}: {out:?}");
            let e: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(e["code"], 5, "{plugin}, stdin {how}: {e}");
        }
        let out = Command::new("sh")
            .args(["-c", "exec \"$0\" <&-", bin(plugin).to_str().unwrap()])
            .env_clear()
            .env("CNI_COMMAND", "VERSION")
            .output()
            .unwrap();
        assert!(out.status.success(), "{plugin}: {out:?}");
    }
}

/// GC without the list of valid attachments is refused: it is not "nothing is valid".
#[test]
fn gc_without_valid_attachments_is_refused() {
    for (plugin, conf) in [
        ("bridge", json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge", "ipMasq": true})),
        ("vxlan", json!({"cniVersion": "1.1.0", "name": "n", "type": "vxlan", "dataDir": "/nonexistent/vx"})),
        (
            "host-local",
            json!({"cniVersion": "1.1.0", "name": "n", "type": "x", "ipam": {"subnet": "10.0.0.0/24", "dataDir": "/nonexistent/hl"}}),
        ),
    ] {
        let mut child = Command::new(bin(plugin))
            .env_clear()
            .env("CNI_COMMAND", "GC")
            .env("CNI_PATH", bin("bridge").parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e["code"], 7, "{plugin}: {e}");
        assert!(e["msg"].as_str().unwrap().contains("cni.dev/valid-attachments"), "{plugin}: {e}");
    }
}
