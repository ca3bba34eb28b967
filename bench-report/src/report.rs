//! report.md: the machine, a table per benchmark, the plots and the commands that ran.

use std::fmt::Write;

use crate::plots::short;
use crate::results::{Results, median, percentile};

/// What the report says beyond the results.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// `quick` or `full`.
    pub mode: String,
    /// The commands run, one per line, as given.
    pub commands: Vec<String>,
    /// Free lines (start and end time, load, skipped benchmarks).
    pub notes: Vec<String>,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPU model, cores, kernel, memory and OS of this machine.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
        .unwrap_or("unknown")
        .to_string();
    let cores =
        std::thread::available_parallelism().map(|n| n.get().to_string()).unwrap_or_else(|_| "?".into());
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    vec![
        ("CPU".into(), model),
        ("cores".into(), cores),
        ("kernel".into(), read("/proc/sys/kernel/osrelease").trim().to_string()),
        ("memory".into(), format!("{:.1} GiB", mem_kib / 1024.0 / 1024.0)),
        ("OS".into(), os),
    ]
}

fn table(md: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
    md.push('\n');
}

fn f(v: f64) -> String {
    if v.is_finite() { short(v) } else { "–".into() }
}

/// The whole report.
pub fn markdown(r: &Results, ctx: &Context, plots: &[(&str, &str)]) -> String {
    let mut md = String::from("# ferrocni benchmark report\n\n");
    if !ctx.mode.is_empty() {
        let _ = writeln!(
            md,
            "Mode: **{}**{}\n",
            ctx.mode,
            if ctx.mode == "quick" {
                " (smallest settings: a sanity pass whose figures are indicative only)"
            } else {
                ""
            }
        );
    }
    md += "## Machine\n\n";
    table(
        &mut md,
        &["", "this machine"],
        &machine().into_iter().map(|(k, v)| vec![k, v]).collect::<Vec<_>>(),
    );
    for n in &ctx.notes {
        let _ = writeln!(md, "- {n}");
    }
    if !ctx.notes.is_empty() {
        md.push('\n');
    }
    if !plots.is_empty() {
        md += "## Plots\n\n";
        for (file, title) in plots {
            let _ = writeln!(md, "### {title}\n\n![{title}]({file})\n");
        }
    }
    md += "## Tables\n\n";
    let cases = r.cases();
    if !cases.is_empty() {
        md += "### Datapath (medians over repetitions)\n\n";
        let rows: Vec<Vec<String>> = cases
            .iter()
            .map(|c| {
                let lat = |g: fn(&crate::results::Latency) -> f64| {
                    median(r.latency.iter().filter(|l| &l.case == c).map(g))
                };
                vec![
                    c.clone(),
                    f(r.datapath(c, 1, |t| t.gbps)),
                    f(r.datapath(c, 4, |t| t.gbps)),
                    f(r.datapath(c, 1, |t| t.cpu_s_per_gb)),
                    f(r.datapath(c, 4, |t| t.cpu_s_per_gb)),
                    f(lat(|l| l.ping_ms)),
                    f(lat(|l| l.sockperf_p50_us.unwrap_or(f64::NAN))),
                ]
            })
            .collect();
        table(
            &mut md,
            &[
                "case",
                "TCP 1 stream Gbit/s",
                "TCP 4 streams Gbit/s",
                "CPU s/GB (1)",
                "CPU s/GB (4)",
                "ping median ms",
                "sockperf p50 µs",
            ],
            &rows,
        );
    }
    if !r.convergence.is_empty() {
        md += "### Convergence: lease written → route in every node's kernel\n\n";
        let rows: Vec<Vec<String>> = r
            .convergence
            .iter()
            .map(|c| {
                let all: Vec<f64> = c.all_nodes_ms.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
                let each: Vec<f64> = c.per_node_ms.iter().flatten().copied().collect();
                vec![
                    c.variant.clone(),
                    c.nodes.to_string(),
                    c.all_nodes_ms.len().to_string(),
                    f(percentile(&all, 50.0)),
                    f(percentile(&all, 99.0)),
                    f(percentile(&each, 50.0)),
                    f(percentile(&each, 99.0)),
                    c.per_node_ms.iter().filter(|x| x.is_none()).count().to_string(),
                ]
            })
            .collect();
        table(
            &mut md,
            &["store", "nodes", "leases", "all nodes p50 ms", "p99", "each node p50 ms", "p99", "never"],
            &rows,
        );
    }
    if !r.loss.is_empty() || !r.enable.is_empty() {
        md += "### Encryption: switching under traffic\n\n";
        for l in &r.loss {
            let _ = writeln!(
                md,
                "Ping every {:.0} ms between pods on two nodes ({}): {} of {} lost over {:.1} s ({:.0} sent per second).\n",
                1000.0 / l.pps.max(1e-9),
                l.engine,
                l.sent.saturating_sub(l.received),
                l.sent,
                l.duration_s,
                l.sent as f64 / l.duration_s.max(1e-9)
            );
            let rows: Vec<Vec<String>> = l
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let end = l.events.get(i + 1).map_or(l.duration_s, |n| n.t);
                    let lost = l.lost_at_s.iter().filter(|t| **t >= e.t && **t < end).count();
                    vec![e.what.clone(), format!("{:.2}", e.t), lost.to_string()]
                })
                .collect();
            table(&mut md, &["step", "at s", "lost until the next step"], &rows);
        }
        if !r.enable.is_empty() {
            let rows: Vec<Vec<String>> = r
                .enable
                .iter()
                .filter(|e| !e.secs.is_empty())
                .map(|e| vec![e.engine.clone(), e.nodes.to_string(), f(median(e.secs.iter().copied()))])
                .collect();
            if !rows.is_empty() {
                table(&mut md, &["engine", "nodes", "enable → all pairs encrypted, median s"], &rows);
            }
        }
    }
    if !r.requests.is_empty() {
        md += "### Store requests per node (etcd, simulated nodes)\n\n";
        let mut rows: Vec<_> = r.requests.iter().collect();
        rows.sort_by_key(|x| x.nodes);
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|x| {
                vec![
                    x.nodes.to_string(),
                    x.watch.clone(),
                    f(x.ours_start),
                    f(x.flannel_start),
                    f(x.ours_steady_per_h),
                    f(x.flannel_steady_per_h),
                ]
            })
            .collect();
        table(
            &mut md,
            &[
                "nodes",
                "watch",
                "start: overlayd",
                "start: flannel's algorithm",
                "per hour: overlayd",
                "per hour: flannel's",
            ],
            &rows,
        );
    }
    if !r.watch.is_empty() {
        md += "### Kubernetes mode: watch cost against etcd mode\n\n";
        let rows: Vec<Vec<String>> = r
            .watch
            .iter()
            .map(|w| {
                vec![
                    w.mode.clone(),
                    w.nodes.to_string(),
                    w.daemons.to_string(),
                    w.start_s.map_or("never".into(), f),
                    f(w.lists_per_daemon + w.watches_per_daemon + w.gets_per_daemon),
                    f(w.requests_per_daemon_h),
                ]
            })
            .collect();
        table(
            &mut md,
            &[
                "mode",
                "nodes",
                "daemons",
                "all hold all, s",
                "requests / daemon at start",
                "requests / daemon / h",
            ],
            &rows,
        );
    }
    if !r.cold_start.is_empty() {
        md += "### Cold start\n\n";
        let rows: Vec<Vec<String>> = r
            .cold_start
            .iter()
            .map(|c| {
                vec![
                    c.leases.to_string(),
                    f(median(c.spawn_to_all_s.iter().copied())),
                    f(median(c.ip_batch_s.iter().copied())),
                ]
            })
            .collect();
        table(&mut md, &["leases", "spawn → every entry, s", "ip -batch + bridge -batch, s"], &rows);
    }
    if !r.plugin.is_empty() {
        md += "### CNI plugins against the reference plugins\n\n";
        let rows: Vec<Vec<String>> = r
            .plugin
            .iter()
            .map(|p| {
                vec![
                    format!("{} ({})", p.plugin, p.variant),
                    f(p.ours_ms),
                    f(p.reference_ms),
                    f(p.ours_ms / p.reference_ms),
                    p.floor_ms.map_or("–".into(), f),
                ]
            })
            .collect();
        table(&mut md, &["plugin", "ours ms", "reference ms", "ratio", "process start floor ms"], &rows);
    }
    if !r.families.is_empty() {
        md += "### IPv6 and IPv4 pods per underlay family\n\n";
        let rows: Vec<Vec<String>> = r
            .families
            .iter()
            .map(|x| {
                vec![
                    x.underlay.clone(),
                    x.mode.clone(),
                    x.pods.clone(),
                    f(x.gbps_1),
                    f(x.gbps_4),
                    f(x.rtt_ms),
                ]
            })
            .collect();
        table(&mut md, &["underlay", "mode", "pods", "1 stream Gbit/s", "4 streams Gbit/s", "RTT ms"], &rows);
    }
    if r.unknown > 0 {
        let _ = writeln!(md, "({} records of kinds this report does not know were left out.)\n", r.unknown);
    }
    if !ctx.commands.is_empty() {
        md += "## Commands\n\n```sh\n";
        for c in &ctx.commands {
            let _ = writeln!(md, "{c}");
        }
        md += "```\n";
    }
    md
}
