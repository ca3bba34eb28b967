//! Pod-to-pod TCP throughput and latency, IPv6 inner traffic next to IPv4 in the same
//! dual-stack cluster, over each underlay family, plain and encrypted.
//!
//! ```sh
//! cargo bench -p test-netns --bench families                      # 3 reps x 10 s
//! cargo bench -p test-netns --bench families -- --reps 1 --secs 5 # shorter
//! cargo bench -p test-netns --bench families -- --smoke           # a sanity pass
//! ```
//!
//! Per underlay (IPv4-only, IPv6-only, dual): a 2-node dual-stack cluster (`Cluster`
//! harness, embedded store), one pod per node. Plain first, then `overlayctl encryption
//! enable` in the same cluster. In each, per repetition, IPv4 then IPv6 (interleaved, so
//! that drift on a shared machine hits both alike): `ping -c 100 -i 0.01` (median RTT) and
//! `iperf3 -P 1` / `-P 4` (receiver's rate), each after waiting for the machine to be quiet.

mod common;

use std::time::Duration;

use common::*;
use test_netns::cluster::{Cluster, ClusterOptions, ClusterPod, UnderlayFamilies, wait_for};

fn iperf(pod: &ClusterPod, dst: &str, secs: u32, streams: u32) -> f64 {
    wait_quiet(Duration::from_secs(5));
    for _ in 0..3 {
        let Ok(text) =
            sh(&pod.ns, &["iperf3", "-c", dst, "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"])
        else {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        };
        let j: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let bps = j["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(f64::NAN);
        if bps.is_finite() && bps > 0.0 {
            return bps / 1e9;
        }
    }
    f64::NAN
}

fn rtt_ms(pod: &ClusterPod, dst: &str, count: u32) -> f64 {
    let Ok(out) = sh(&pod.ns, &["ping", "-c", &count.to_string(), "-i", "0.01", dst]) else {
        return f64::NAN;
    };
    let mut v: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    median(&v)
}

fn main() {
    let Some(run) = gate("families") else { return };
    let reps: u32 = run.value("--reps").map_or(if run.smoke { 1 } else { 3 }, |v| v.parse().unwrap());
    let secs: u32 = run.value("--secs").map_or(if run.smoke { 2 } else { 10 }, |v| v.parse().unwrap());
    let bin = bin_dir(&run);
    eprintln!("{}", bin_info(&bin));
    let mut rows = Vec::new();
    for (ul_name, ul) in
        [("IPv4", UnderlayFamilies::V4), ("IPv6", UnderlayFamilies::V6), ("dual", UnderlayFamilies::DUAL)]
    {
        let c = Cluster::start(ClusterOptions::new(2, &bin).dual_stack().with_underlay(ul))
            .unwrap_or_else(|e| panic!("{ul_name} underlay: {e}"));
        let a = c.add_pod(0, "ba").unwrap();
        let b = c.add_pod(1, "bb").unwrap();
        let servers: Vec<Server> =
            b.ips.iter().map(|ip| Server::start(&b.ns, &["iperf3", "-s", "-B", ip])).collect();
        std::thread::sleep(Duration::from_millis(500));
        for mode in ["plain", "WireGuard"] {
            if mode == "WireGuard" {
                let (ok, out) = c.overlayctl(0, &["encryption", "enable"]).unwrap();
                assert!(ok, "{out}");
                wait_for(Duration::from_secs(30), "routes into the tunnel", || {
                    b.ips.iter().all(|ip| {
                        sh(&c.nodes[0].ns, &["ip", "route", "get", ip]).is_ok_and(|o| o.contains("ferro-wg"))
                    }) && a.ips.iter().all(|ip| {
                        sh(&c.nodes[1].ns, &["ip", "route", "get", ip]).is_ok_and(|o| o.contains("ferro-wg"))
                    })
                })
                .unwrap();
                std::thread::sleep(Duration::from_secs(1));
            }
            // [family][metric] samples: metric 0 = P1, 1 = P4, 2 = RTT.
            let mut s = [[Vec::new(), Vec::new(), Vec::new()], [Vec::new(), Vec::new(), Vec::new()]];
            for _ in 0..reps {
                for (fam, dst) in b.ips.iter().enumerate() {
                    s[fam][2].push(rtt_ms(&a, dst, if run.smoke { 20 } else { 100 }));
                    s[fam][0].push(iperf(&a, dst, secs, 1));
                    s[fam][1].push(iperf(&a, dst, secs, 4));
                }
            }
            let m = |fam: usize, k: usize| median(&s[fam][k]);
            for (fam, name) in ["ipv4", "ipv6"].iter().enumerate() {
                emit(
                    &run,
                    "families",
                    "family",
                    serde_json::json!({
                        "underlay": ul_name, "mode": mode, "pods": name,
                        "gbps_1": m(fam, 0), "gbps_4": m(fam, 1), "rtt_ms": m(fam, 2),
                    }),
                );
            }
            rows.push(vec![
                ul_name.to_string(),
                mode.to_string(),
                f(m(0, 0), 2),
                f(m(1, 0), 2),
                pct(m(1, 0), m(0, 0)),
                f(m(0, 1), 2),
                f(m(1, 1), 2),
                pct(m(1, 1), m(0, 1)),
                f(m(0, 2), 3),
                f(m(1, 2), 3),
            ]);
            eprintln!("{:?}", rows.last().unwrap());
        }
        drop(servers);
        for p in [&a, &b] {
            let _ = c.del_pod(p);
        }
    }
    println!(
        "{}",
        table(
            &[
                "underlay",
                "mode",
                "IPv4 P1 Gbit/s",
                "IPv6 P1 Gbit/s",
                "v6/v4",
                "IPv4 P4 Gbit/s",
                "IPv6 P4 Gbit/s",
                "v6/v4",
                "IPv4 RTT ms",
                "IPv6 RTT ms",
            ],
            &rows
        )
    );
    println!("{reps} rep(s) x {secs} s, medians; {}", utc_now());
}
