//! The demo cluster: N nodes as network namespaces on one underlay switch, `overlayd` in
//! each (embedded store by default, `--store etcd` for a real etcd), pods attached with the
//! `vxlan` plugin through the cni-spec runtime, then every pod pings and sends a TCP
//! stream to every other pod. Prints the table; exits 0 only if every pair worked; tears
//! everything down unless `--keep`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use cni_spec::runtime::{Attach, Runtime};
use cni_spec::{NetConfList, SuccessResult};
use serde_json::json;
use test_netns::{EchoServer, TestNs, Underlay, ping, tcp_echo};

#[derive(Parser)]
#[command(name = "ferrocni-demo", about = "A cluster of nodes and pods in network namespaces")]
struct Args {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 2)]
    pods: usize,
    /// `embedded` (one file shared by the daemons) or `etcd` (Debian's etcd-server).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Bytes sent and echoed back per pair in the TCP check.
    #[arg(long, default_value_t = 256 * 1024)]
    bytes: usize,
    /// Leave everything running and print how to poke at it.
    #[arg(long)]
    keep: bool,
    /// Where the binaries are (overlayd, overlayctl, vxlan, bridge, host-local).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Node {
    ns: TestNs,
    dir: PathBuf,
    daemon: Child,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("overlayd.sock")
    }
}

struct Pod {
    ns: TestNs,
    node: usize,
    ip: String,
    attach: Attach,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !test_netns::is_root() {
        eprintln!("the demo needs root: it creates network namespaces");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn bin_dir(args: &Args) -> PathBuf {
    args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_default()
    })
}

fn run(args: &Args) -> Result<bool, String> {
    let bins = bin_dir(args);
    for b in ["overlayd", "overlayctl", "vxlan", "bridge", "host-local"] {
        if !bins.join(b).exists() {
            return Err(format!("{} is missing: build the workspace first", bins.join(b).display()));
        }
    }
    let work = tempfile::Builder::new().prefix("ferrocni-demo.").tempdir().map_err(|e| e.to_string())?;
    let started = Instant::now();
    println!("underlay: a switch and {} nodes", args.nodes);
    let underlay = Underlay::new(None);

    // The store.
    let mut etcd: Option<(TestNs, Child)> = None;
    let store_args: Vec<String> = if args.store == "etcd" {
        let infra = TestNs::new("infra");
        underlay.attach(&infra, "ul", "198.18.0.250/24");
        let data = work.path().join("etcd");
        let child = infra
            .command("etcd")
            .args(["--name", "demo", "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                "http://198.18.0.250:2379",
                "--advertise-client-urls",
                "http://198.18.0.250:2379",
            ])
            .args(["--listen-peer-urls", "http://198.18.0.250:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting etcd (apt-get install etcd-server): {e}"))?;
        etcd = Some((infra, child));
        vec!["--etcd-endpoints".into(), "http://198.18.0.250:2379".into()]
    } else if args.store == "embedded" {
        vec!["--store-file".into(), work.path().join("store.db").display().to_string()]
    } else {
        return Err(format!("--store {}: use embedded or etcd", args.store));
    };

    // The nodes and their daemons.
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let ns = TestNs::new(&format!("node{i}"));
        underlay.attach(&ns, "ul", &format!("198.18.0.{}/24", i + 1));
        let dir = work.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("overlayd.log")).map_err(|e| e.to_string())?;
        let daemon = ns
            .command(bins.join("overlayd").to_str().unwrap())
            .args(&store_args)
            .args(["--iface", "ul", "--ip-masq"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(dir.join("overlayd.sock"))
            .arg("--subnet-file")
            .arg(dir.join("subnet.env"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting overlayd on node{i}: {e}"))?;
        nodes.push(Node { ns, dir, daemon });
    }
    let conf = work.path().join("net-conf.json");
    std::fs::write(&conf, json!({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}).to_string())
        .map_err(|e| e.to_string())?;
    wait_for(Duration::from_secs(20), "overlayd's socket on node0", || nodes[0].socket().exists())?;
    let set = Command::new(bins.join("overlayctl"))
        .arg("--socket")
        .arg(nodes[0].socket())
        .args(["network", "set"])
        .arg(&conf)
        .output()
        .map_err(|e| e.to_string())?;
    if !set.status.success() {
        return Err(format!("overlayctl network set: {}", String::from_utf8_lossy(&set.stderr)));
    }
    for (i, n) in nodes.iter().enumerate() {
        wait_for(Duration::from_secs(30), &format!("node{i} ready"), || node_ready(&n.socket()))?;
    }
    println!("{} daemons hold leases ({:.1} s)", nodes.len(), started.elapsed().as_secs_f64());

    // The pods, through the runtime, on each node.
    let mut pods: Vec<Pod> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let list = json!({"cniVersion": "1.1.0", "name": "demo", "plugins": [{
            "type": "vxlan",
            "socket": n.socket(),
            "dataDir": n.dir.join("vxlan"),
            "ipamDataDir": n.dir.join("ipam"),
        }]});
        let list = NetConfList::parse(list.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let rt = Runtime::new(vec![bins.clone()]).with_cache_dir(n.dir.join("cni-cache"));
        for p in 0..args.pods {
            let ns = TestNs::new(&format!("n{i}pod{p}"));
            let attach = Attach::new(&format!("node{i}-pod{p}"), ns.path(), "eth0");
            let result: SuccessResult =
                n.ns.run(|| rt.add(&list, &attach)).map_err(|e| format!("ADD node{i}/pod{p}: {e}"))?;
            let ip = result.ips.first().map(|ip| ip.address.addr().to_string()).ok_or("no address")?;
            println!("  node{i}/pod{p}: {ip}");
            pods.push(Pod { ns, node: i, ip, attach });
        }
    }

    // Every pod to every other: ping, and a TCP stream echoed back.
    let servers: Vec<EchoServer> =
        pods.iter().map(|p| EchoServer::start(&p.ns, &format!("{}:7000", p.ip))).collect();
    let mut ok = 0;
    let mut failed = Vec::new();
    println!("\n{:<12} {:<12} {:<6} {:<6}", "from", "to", "ping", "tcp");
    for (a, pa) in pods.iter().enumerate() {
        for (b, pb) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            let p = ping(&pa.ns, &pb.ip, 2);
            let t = tcp_echo(&pa.ns, servers[b].addr(), args.bytes, Duration::from_secs(5)).is_ok();
            let name = |x: &Pod| format!("node{}/{}", x.node, x.ip);
            println!(
                "{:<12} {:<12} {:<6} {:<6}",
                name(pa),
                name(pb),
                if p { "ok" } else { "FAIL" },
                if t { "ok" } else { "FAIL" }
            );
            if p && t {
                ok += 1;
            } else {
                failed.push((a, b));
            }
        }
    }
    drop(servers);
    let pairs = pods.len() * (pods.len() - 1);
    println!("\n{ok}/{pairs} pod pairs reached each other (ping and {} KiB over TCP)", args.bytes / 1024);

    if args.keep {
        println!("\nkept running; working directory {}", work.path().display());
        for (i, n) in nodes.iter().enumerate() {
            println!(
                "  node{i}: ip netns exec {} bash   |   overlayctl --socket {} status",
                n.ns.name(),
                n.socket().display()
            );
        }
        for p in &pods {
            println!("  pod {}: ip netns exec {} ping <ip>", p.ip, p.ns.name());
        }
        // Leak on purpose: the namespaces and daemons outlive the demo.
        std::mem::forget(work);
        std::mem::forget(pods);
        std::mem::forget(nodes);
        std::mem::forget(underlay);
        std::mem::forget(etcd);
        return Ok(failed.is_empty());
    }

    // Teardown: DEL every pod, stop every daemon, then the namespaces go with their owners.
    for p in &pods {
        let n = &nodes[p.node];
        let list = json!({"cniVersion": "1.1.0", "name": "demo", "plugins": [{
            "type": "vxlan", "socket": n.socket(), "dataDir": n.dir.join("vxlan"), "ipamDataDir": n.dir.join("ipam")}]});
        let list = NetConfList::parse(list.to_string().as_bytes()).map_err(|e| e.to_string())?;
        let rt = Runtime::new(vec![bins.clone()]).with_cache_dir(n.dir.join("cni-cache"));
        if let Err(e) = n.ns.run(|| rt.del(&list, &p.attach)) {
            eprintln!("DEL {}: {e}", p.ip);
        }
    }
    for n in &mut nodes {
        stop(&mut n.daemon);
    }
    if let Some((_, mut child)) = etcd.take() {
        stop(&mut child);
    }
    println!("torn down in {:.1} s total", started.elapsed().as_secs_f64());
    Ok(failed.is_empty())
}

fn node_ready(socket: &Path) -> bool {
    plugins_probe(socket).unwrap_or(false)
}

/// Asks the daemon whether it is ready (`GET /readyz`).
fn plugins_probe(socket: &Path) -> Option<bool> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: overlayd\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.starts_with("HTTP/1.1 200"))
}

fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("timed out waiting for {what}"))
}

fn stop(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
