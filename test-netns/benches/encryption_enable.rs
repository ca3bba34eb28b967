//! Enable → all pairs encrypted: the time from `overlayctl encryption enable --type X` until
//! every node routes every other node's pod subnet through X's device (WireGuard's
//! `ferro-wg`, IPsec's `ipsec0` with kernel-libipsec), and back to VXLAN after `disable`.
//! WireGuard and IPsec alternate on the same cluster.
//!
//! ```sh
//! cargo bench -p test-netns --bench encryption_enable -- --nodes 10 --reps 3
//! ```

mod common;

use std::time::{Duration, Instant};

use common::*;
use test_netns::cluster::{Cluster, ClusterOptions, wait_for};

fn all_via(c: &Cluster, n: usize, dev: &str) -> bool {
    let subs: Vec<String> = (0..n).map(|j| c.pod_subnet(j).unwrap_or_default()).collect();
    (0..n).all(|i| {
        let routes = c.nodes[i].ns.exec(&["ip", "route"]);
        (0..n).filter(|j| *j != i).all(|j| {
            routes
                .lines()
                .any(|l| l.starts_with(&format!("{} ", subs[j])) && l.contains(&format!("dev {dev}")))
        })
    })
}

fn main() {
    let Some(run) = gate("encryption_enable") else { return };
    let nodes: usize =
        run.value("--nodes").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 3 } else { 10 });
    let reps: usize =
        run.value("--reps").map(|v| v.parse().unwrap()).unwrap_or(if run.smoke { 1 } else { 3 });
    eprintln!("start: {}; load average {}", utc_now(), loadavg());
    let c = Cluster::start(ClusterOptions::new(nodes, bin_dir(&run))).unwrap();
    let mut times: Vec<(&str, Vec<f64>)> = vec![("wireguard", Vec::new()), ("ipsec", Vec::new())];
    for rep in 0..reps {
        for (kind, t) in times.iter_mut() {
            let dev = if *kind == "ipsec" { "ipsec0" } else { "ferro-wg" };
            let start = Instant::now();
            let (ok, out) = c.overlayctl(0, &["encryption", "enable", "--type", kind]).unwrap();
            assert!(ok, "{out}");
            wait_for(Duration::from_secs(120), "every pair encrypted", || all_via(&c, nodes, dev)).unwrap();
            let s = start.elapsed().as_secs_f64();
            eprintln!("rep {rep} {kind}: enable → {} routes on {dev}: {s:.2} s", nodes * (nodes - 1));
            t.push(s);
            let (ok, out) = c.overlayctl(0, &["encryption", "disable"]).unwrap();
            assert!(ok, "{out}");
            wait_for(Duration::from_secs(60), "every pair back on VXLAN", || all_via(&c, nodes, "flannel.1"))
                .unwrap();
            // The engine lingers 15 s for peers that have not seen the change; start clean.
            std::thread::sleep(Duration::from_secs(17));
        }
    }
    eprintln!("end: {}; load average {}", utc_now(), loadavg());
    println!(
        "| engine ({nodes} nodes) | enable → all {} pairs encrypted, median s | min–max |",
        nodes * (nodes - 1)
    );
    println!("|---|---:|---:|");
    for (kind, t) in &times {
        let lo = t.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = t.iter().cloned().fold(0.0, f64::max);
        println!("| {kind} | {:.2} | {lo:.2}–{hi:.2} |", median(t));
    }
}
