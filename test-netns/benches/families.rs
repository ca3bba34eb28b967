//! Pod-to-pod TCP throughput and latency, IPv6 inner traffic next to IPv4 in the same
//! dual-stack cluster, over each underlay family, plain and encrypted.
//!
//! ```sh
//! cargo bench -p test-netns --bench families                      # 3 reps x 10 s
//! cargo bench -p test-netns --bench families -- --reps 1 --secs 5 # shorter
//! cargo bench -p test-netns --bench families -- --smoke           # a sanity pass
//! cargo bench -p test-netns --bench families -- --modes host-gw   # some modes only
//! ```
//!
//! Per underlay (IPv4-only, IPv6-only, dual): a 2-node dual-stack cluster (`Cluster`
//! harness, embedded store), one pod per node. Plain first, then `overlayctl encryption
//! enable` in the same cluster; then (`host-gw`) another 2-node dual-stack cluster on the
//! same underlay with `"Backend": {"Type": "host-gw"}`, in which only the pod family the
//! underlay also has is carried (the other is reported by the daemons and shown as `–`;
//! the bench checks that it is unreachable). In each, per repetition, IPv4 then IPv6
//! (interleaved, so that drift on a shared machine hits both alike): `ping -c 100 -i 0.01`
//! (median RTT) and `iperf3 -P 1` / `-P 4` (receiver's rate), each after waiting for the
//! machine to be quiet. `--modes plain,WireGuard,host-gw` picks modes (default: all).

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

/// Measures one mode on a cluster's two pods: [family][metric] medians (metric 0 = P1,
/// 1 = P4, 2 = RTT); NaN for a family not carried.
fn measure(
    run: &Run,
    a: &ClusterPod,
    b: &ClusterPod,
    reps: u32,
    secs: u32,
    carried: [bool; 2],
) -> [[f64; 3]; 2] {
    let mut s = [[Vec::new(), Vec::new(), Vec::new()], [Vec::new(), Vec::new(), Vec::new()]];
    for _ in 0..reps {
        for (fam, dst) in b.ips.iter().enumerate() {
            if !carried[fam] {
                continue;
            }
            s[fam][2].push(rtt_ms(a, dst, if run.smoke { 20 } else { 100 }));
            s[fam][0].push(iperf(a, dst, secs, 1));
            s[fam][1].push(iperf(a, dst, secs, 4));
        }
    }
    let m = |fam: usize, k: usize| if carried[fam] { median(&s[fam][k]) } else { f64::NAN };
    [[m(0, 0), m(0, 1), m(0, 2)], [m(1, 0), m(1, 1), m(1, 2)]]
}

fn cell(fam: usize, m: &[[f64; 3]; 2], k: usize, digits: usize) -> String {
    if m[fam][k].is_nan() { "–".to_string() } else { f(m[fam][k], digits) }
}

fn ratio(m: &[[f64; 3]; 2], k: usize) -> String {
    if m[0][k].is_nan() || m[1][k].is_nan() { "–".to_string() } else { format!("{:.2}", m[1][k] / m[0][k]) }
}

fn main() {
    let Some(run) = gate("families") else { return };
    let reps: u32 = run.value("--reps").map_or(if run.smoke { 1 } else { 3 }, |v| v.parse().unwrap());
    let secs: u32 = run.value("--secs").map_or(if run.smoke { 2 } else { 10 }, |v| v.parse().unwrap());
    let modes: Vec<String> =
        run.value("--modes").map_or(vec!["plain".into(), "WireGuard".into(), "host-gw".into()], |v| {
            v.split(',').map(str::to_string).collect()
        });
    for m in &modes {
        assert!(["plain", "WireGuard", "host-gw"].contains(&m.as_str()), "unknown mode {m}");
    }
    let bin = bin_dir(&run);
    eprintln!("{}", bin_info(&bin));
    let mut rows = Vec::new();
    for (ul_name, ul) in
        [("IPv4", UnderlayFamilies::V4), ("IPv6", UnderlayFamilies::V6), ("dual", UnderlayFamilies::DUAL)]
    {
        let vx_modes: Vec<&str> =
            ["plain", "WireGuard"].into_iter().filter(|m| modes.iter().any(|x| x == m)).collect();
        let mut results: Vec<(String, [[f64; 3]; 2])> = Vec::new();
        if !vx_modes.is_empty() {
            let c = Cluster::start(ClusterOptions::new(2, &bin).dual_stack().with_underlay(ul))
                .unwrap_or_else(|e| panic!("{ul_name} underlay: {e}"));
            let a = c.add_pod(0, "ba").unwrap();
            let b = c.add_pod(1, "bb").unwrap();
            let servers: Vec<Server> =
                b.ips.iter().map(|ip| Server::start(&b.ns, &["iperf3", "-s", "-B", ip])).collect();
            std::thread::sleep(Duration::from_millis(500));
            for mode in vx_modes {
                if mode == "WireGuard" {
                    let (ok, out) = c.overlayctl(0, &["encryption", "enable"]).unwrap();
                    assert!(ok, "{out}");
                    wait_for(Duration::from_secs(30), "routes into the tunnel", || {
                        b.ips.iter().all(|ip| {
                            sh(&c.nodes[0].ns, &["ip", "route", "get", ip])
                                .is_ok_and(|o| o.contains("ferro-wg"))
                        }) && a.ips.iter().all(|ip| {
                            sh(&c.nodes[1].ns, &["ip", "route", "get", ip])
                                .is_ok_and(|o| o.contains("ferro-wg"))
                        })
                    })
                    .unwrap();
                    std::thread::sleep(Duration::from_secs(1));
                }
                results.push((mode.to_string(), measure(&run, &a, &b, reps, secs, [true, true])));
            }
            drop(servers);
            for p in [&a, &b] {
                let _ = c.del_pod(p);
            }
        }
        if modes.iter().any(|m| m == "host-gw") {
            // host-gw routes a pod family only via the peer's underlay address of that family.
            let carried = [ul.v4, ul.v6];
            let c = Cluster::start(
                ClusterOptions::new(2, &bin).dual_stack().with_underlay(ul).backend("host-gw"),
            )
            .unwrap_or_else(|e| panic!("host-gw, {ul_name} underlay: {e}"));
            let a = c.add_pod(0, "ha").unwrap();
            let b = c.add_pod(1, "hb").unwrap();
            for (fam, ip) in b.ips.iter().enumerate() {
                if carried[fam] {
                    wait_for(Duration::from_secs(20), "the carried family", || {
                        sh(&a.ns, &["ping", "-c", "1", "-W", "1", ip]).is_ok()
                    })
                    .unwrap();
                } else {
                    assert!(
                        sh(&a.ns, &["ping", "-c", "2", "-W", "1", ip]).is_err(),
                        "host-gw carried a pod family over an underlay without it"
                    );
                }
            }
            let servers: Vec<Server> =
                b.ips.iter().map(|ip| Server::start(&b.ns, &["iperf3", "-s", "-B", ip])).collect();
            std::thread::sleep(Duration::from_millis(500));
            results.push(("host-gw".to_string(), measure(&run, &a, &b, reps, secs, carried)));
            drop(servers);
            for p in [&a, &b] {
                let _ = c.del_pod(p);
            }
        }
        for (mode, m) in results {
            for (fam, name) in ["ipv4", "ipv6"].iter().enumerate() {
                if m[fam][0].is_nan() {
                    continue;
                }
                emit(
                    &run,
                    "families",
                    "family",
                    serde_json::json!({
                        "underlay": ul_name, "mode": mode, "pods": name,
                        "gbps_1": m[fam][0], "gbps_4": m[fam][1], "rtt_ms": m[fam][2],
                    }),
                );
            }
            rows.push(vec![
                ul_name.to_string(),
                mode,
                cell(0, &m, 0, 2),
                cell(1, &m, 0, 2),
                ratio(&m, 0),
                cell(0, &m, 1, 2),
                cell(1, &m, 1, 2),
                ratio(&m, 1),
                cell(0, &m, 2, 3),
                cell(1, &m, 2, 3),
            ]);
            eprintln!("{:?}", rows.last().unwrap());
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
    println!(
        "{reps} rep(s) x {secs} s, medians; {}; `–`: not carried (host-gw), reported by the daemons",
        utc_now()
    );
}
