//! The demo cluster: N nodes as network namespaces on one underlay switch, `overlayd` in
//! each (embedded store by default, `--store etcd` for a real etcd), pods attached with the
//! `vxlan` plugin through the cni-spec runtime, then every pod pings and sends a TCP
//! stream to every other pod; then encryption is switched on for the cluster (WireGuard in
//! userspace, `overlayctl encryption enable`) and every pair is checked again through the
//! tunnels. Prints the tables; exits 0 only if every pair worked both times; tears everything
//! down unless `--keep`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use test_netns::cluster::{Cluster, ClusterOptions, ClusterPod, StoreKind};
use test_netns::{EchoServer, ping, tcp_echo};

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
    /// Skip the encrypted round.
    #[arg(long)]
    no_encryption: bool,
    /// Leave everything running and print how to poke at it.
    #[arg(long)]
    keep: bool,
    /// Where the binaries are (overlayd, overlayctl, vxlan, bridge, host-local).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
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

fn run(args: &Args) -> Result<bool, String> {
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default()
    });
    let mut opts = ClusterOptions::new(args.nodes, bin_dir);
    opts.store = match args.store.as_str() {
        "embedded" => StoreKind::Embedded,
        "etcd" => StoreKind::Etcd,
        other => return Err(format!("--store {other}: use embedded or etcd")),
    };
    let started = Instant::now();
    println!("starting {} nodes on the {} store", args.nodes, args.store);
    let cluster = Cluster::start(opts)?;
    println!("{} daemons hold leases ({:.1} s)", cluster.nodes.len(), started.elapsed().as_secs_f64());

    let mut pods: Vec<ClusterPod> = Vec::new();
    for node in 0..cluster.nodes.len() {
        for p in 0..args.pods {
            let pod = cluster.add_pod(node, &format!("n{node}pod{p}"))?;
            println!("  node{node}/pod{p}: {}", pod.ip);
            pods.push(pod);
        }
    }

    let pairs = pods.len() * pods.len().saturating_sub(1);
    let mut all_ok = all_pairs(&pods, args.bytes, "over VXLAN") == pairs;
    if !args.no_encryption {
        let t = Instant::now();
        let (done, out) = cluster.overlayctl(0, &["encryption", "enable"])?;
        if !done {
            return Err(format!("overlayctl encryption enable: {out}"));
        }
        print!("\n{}", out);
        let encrypted = |i: usize, j: usize| -> bool {
            cluster.pod_subnet(j).is_ok_and(|net| {
                cluster.nodes[i].ns.exec(&["ip", "route", "show", &net]).contains("dev ferro-wg")
            })
        };
        let n = cluster.nodes.len();
        test_netns::cluster::wait_for(Duration::from_secs(30), "every node's routes on its tunnel", || {
            (0..n).all(|i| (0..n).all(|j| i == j || encrypted(i, j)))
        })?;
        println!(
            "every node routes every other node's pods through its tunnel ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        all_ok &= all_pairs(&pods, args.bytes, "encrypted (WireGuard)") == pairs;
    }

    if args.keep {
        for (i, n) in cluster.nodes.iter().enumerate() {
            println!(
                "node{i}: ip netns exec {} bash; overlayctl --socket {} status",
                n.ns.name(),
                n.socket().display()
            );
        }
        for p in &pods {
            println!("pod {}: ip netns exec {} ping <address>", p.ip, p.ns.name());
        }
        std::mem::forget(pods);
        println!("kept running; files in {}", cluster.keep().display());
        return Ok(all_ok);
    }
    for p in &pods {
        if let Err(e) = cluster.del_pod(p) {
            eprintln!("{e}");
        }
    }
    drop(pods);
    drop(cluster);
    println!("torn down; {:.1} s in all", started.elapsed().as_secs_f64());
    Ok(all_ok)
}

/// Every pod to every other: ping, and a TCP stream echoed back. Prints the table; returns
/// the number of pairs that worked.
fn all_pairs(pods: &[ClusterPod], bytes: usize, how: &str) -> usize {
    let servers: Vec<EchoServer> =
        pods.iter().map(|p| EchoServer::start(&p.ns, &format!("{}:7000", p.ip))).collect();
    let mut ok = 0;
    println!("\n{:<20} {:<20} {:<5} {:<5}", "from", "to", "ping", "tcp");
    for (a, pa) in pods.iter().enumerate() {
        for (b, pb) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            let p = ping(&pa.ns, &pb.ip, 2);
            let t = tcp_echo(&pa.ns, servers[b].addr(), bytes, Duration::from_secs(5)).is_ok();
            let name = |x: &ClusterPod| format!("node{} {}", x.node, x.ip);
            let word = |b: bool| if b { "ok" } else { "FAIL" };
            println!("{:<20} {:<20} {:<5} {:<5}", name(pa), name(pb), word(p), word(t));
            ok += usize::from(p && t);
        }
    }
    let pairs = pods.len() * pods.len().saturating_sub(1);
    println!(
        "\n{ok}/{pairs} pod pairs reached each other {how} (ping, and {} KiB echoed over TCP)",
        bytes / 1024
    );
    ok
}
