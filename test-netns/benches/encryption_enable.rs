//! Enable → all pairs encrypted: the time from `overlayctl encryption enable --type X` until
//! every node routes every other node's pod subnet through X's device (WireGuard's
//! `ferro-wg`, IPsec's `ipsec0` with kernel-libipsec), and back to VXLAN after `disable`.
//! WireGuard and IPsec alternate on the same cluster.
//!
//! ```sh
//! cargo bench -p test-netns --bench encryption_enable -- --nodes 10 --reps 3
//! cargo bench -p test-netns --bench encryption_enable -- --reps 0 --timeline   # loss timeline only
//! ```
//!
//! `--timeline`: afterwards, a 100 pps ping between pods on nodes 0 and 1 across WireGuard
//! enable → rotate → disable → enable → daemon restarts (SIGTERM, SIGKILL) → disable; which
//! packets were lost, and when each step was taken (`--json-out FILE` records both).

mod common;

use std::process::Stdio;
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
    if run.flag("--timeline") {
        timeline(&run, &c, nodes);
    }
    eprintln!("end: {}; load average {}", utc_now(), loadavg());
    for (kind, t) in &times {
        emit(
            &run,
            "encryption_enable",
            "enable_time",
            serde_json::json!({ "engine": kind, "nodes": nodes, "secs": t }),
        );
    }
    if reps == 0 {
        return;
    }
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

/// Ping at 100 pps from a pod on node 0 to one on node 1 while encryption is switched and the
/// daemons restart; reports the lost sequence numbers against the steps' times.
fn timeline(run: &Run, c: &Cluster, nodes: usize) {
    const INTERVAL: f64 = 0.01;
    let a = c.add_pod(0, "tla").expect("pod on node 0");
    let b = c.add_pod(1, "tlb").expect("pod on node 1");
    let ctl = |i: usize, args: &[&str]| {
        let (ok, out) = c.overlayctl(i, args).expect("overlayctl");
        assert!(ok, "overlayctl {args:?}: {out}");
    };
    let settle = || std::thread::sleep(Duration::from_secs(2));
    let ping =
        a.ns.command("ping")
            .args(["-n", "-i", &INTERVAL.to_string(), "-W", "1", &b.ip])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ping");
    let t0 = Instant::now();
    let mut events: Vec<(f64, &str)> = Vec::new();
    let mut mark = |what: &'static str| events.push((t0.elapsed().as_secs_f64(), what));
    settle();
    let tunnel = |dev: &str| {
        wait_for(Duration::from_secs(60), &format!("every pair via {dev}"), || all_via(c, nodes, dev))
            .unwrap()
    };
    mark("enable");
    ctl(0, &["encryption", "enable"]);
    tunnel("ferro-wg");
    settle();
    mark("rotate");
    ctl(1, &["encryption", "rotate"]);
    settle();
    settle();
    mark("disable");
    ctl(0, &["encryption", "disable"]);
    tunnel("flannel.1");
    settle();
    mark("enable");
    ctl(0, &["encryption", "enable"]);
    tunnel("ferro-wg");
    settle();
    mark("restart (SIGTERM)");
    c.stop_daemon(1, libc::SIGTERM);
    c.start_daemon(1).expect("restarting node 1");
    c.wait_ready(1).expect("node 1 ready");
    settle();
    mark("restart (SIGKILL)");
    c.stop_daemon(0, libc::SIGKILL);
    c.start_daemon(0).expect("restarting node 0");
    c.wait_ready(0).expect("node 0 ready");
    settle();
    mark("disable");
    ctl(0, &["encryption", "disable"]);
    tunnel("flannel.1");
    settle();
    let elapsed = t0.elapsed().as_secs_f64();
    // SAFETY: kill(2) on our own child; SIGINT makes ping print its summary and exit.
    unsafe { libc::kill(ping.id() as i32, libc::SIGINT) };
    let out = ping.wait_with_output().expect("ping's output");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: std::collections::BTreeSet<u64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    let sent: u64 = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // ping keeps its schedule; spread the sequence numbers over the measured wall time.
    let per = if sent > 0 { elapsed / sent as f64 } else { INTERVAL };
    let lost: Vec<f64> = (1..=sent).filter(|k| !got.contains(k)).map(|k| (k - 1) as f64 * per).collect();
    eprintln!("timeline: {} of {sent} lost over {elapsed:.1} s; steps {events:?}", lost.len());
    emit(
        run,
        "encryption_enable",
        "loss_timeline",
        serde_json::json!({
            "engine": "wireguard", "pps": 1.0 / INTERVAL, "duration_s": elapsed, "sent": sent,
            "received": got.len(), "lost_at_s": lost,
            "events": events.iter().map(|(t, w)| serde_json::json!({"t": t, "what": w})).collect::<Vec<_>>(),
        }),
    );
    println!("loss timeline (100 pps, WireGuard): {} of {sent} lost over {elapsed:.1} s", lost.len());
    for (t, w) in &events {
        let near = lost.iter().filter(|x| **x >= *t && **x < t + 2.0).count();
        println!("- {t:6.2} s {w}: {near} lost in the next 2 s");
    }
    let _ = c.del_pod(&a);
    let _ = c.del_pod(&b);
}
