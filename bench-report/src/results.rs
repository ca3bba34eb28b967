//! The benchmarks' results: one JSON object per line, each with `bench` and `kind`.

use serde::Deserialize;

use crate::Error;

/// Every record of a results file, grouped by what the plots need. Kinds this version does
/// not know are kept out (a newer bench may add some) and counted.
#[derive(Debug, Default)]
pub struct Results {
    pub throughput: Vec<Throughput>,
    pub latency: Vec<Latency>,
    pub convergence: Vec<Convergence>,
    pub loss: Vec<LossTimeline>,
    pub enable: Vec<EnableTime>,
    pub requests: Vec<RequestsPerNode>,
    pub watch: Vec<WatchCost>,
    pub cold_start: Vec<ColdStart>,
    pub plugin: Vec<PluginCycle>,
    pub families: Vec<Family>,
    pub unknown: usize,
}

#[derive(Debug, Deserialize)]
pub struct Throughput {
    pub case: String,
    pub streams: u32,
    pub gbps: f64,
    pub cpu_s_per_gb: f64,
}

#[derive(Debug, Deserialize)]
pub struct Latency {
    pub case: String,
    pub ping_ms: f64,
    pub sockperf_p50_us: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Convergence {
    pub variant: String,
    pub nodes: usize,
    pub all_nodes_ms: Vec<Option<f64>>,
    pub per_node_ms: Vec<Option<f64>>,
}

#[derive(Debug, Deserialize)]
pub struct LossTimeline {
    pub engine: String,
    pub pps: f64,
    pub duration_s: f64,
    pub sent: u64,
    pub received: u64,
    pub lost_at_s: Vec<f64>,
    pub events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
pub struct Event {
    pub t: f64,
    pub what: String,
}

#[derive(Debug, Deserialize)]
pub struct EnableTime {
    pub engine: String,
    pub nodes: usize,
    pub secs: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct RequestsPerNode {
    pub nodes: usize,
    pub watch: String,
    pub ours_start: f64,
    pub flannel_start: f64,
    pub ours_steady_per_h: f64,
    pub flannel_steady_per_h: f64,
}

#[derive(Debug, Deserialize)]
pub struct WatchCost {
    pub mode: String,
    pub nodes: usize,
    pub daemons: usize,
    pub start_s: Option<f64>,
    pub lists_per_daemon: f64,
    pub watches_per_daemon: f64,
    pub gets_per_daemon: f64,
    pub requests_per_daemon_h: f64,
}

#[derive(Debug, Deserialize)]
pub struct ColdStart {
    pub leases: usize,
    pub spawn_to_all_s: Vec<f64>,
    pub ip_batch_s: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct PluginCycle {
    pub plugin: String,
    pub variant: String,
    pub ours_ms: f64,
    pub reference_ms: f64,
    pub floor_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Family {
    pub underlay: String,
    pub mode: String,
    pub pods: String,
    pub gbps_1: f64,
    pub gbps_4: f64,
    pub rtt_ms: f64,
}

#[derive(Deserialize)]
struct Tag {
    bench: String,
    kind: String,
}

fn field<T: serde::de::DeserializeOwned>(v: serde_json::Value, line: usize) -> Result<T, Error> {
    serde_json::from_value(v).map_err(|e| Error::Record { line, reason: e.to_string() })
}

impl Results {
    /// Parses a results file; an unreadable line is an error naming it.
    pub fn parse(text: &str) -> Result<Results, Error> {
        let mut r = Results::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(raw).map_err(|e| Error::Record { line, reason: e.to_string() })?;
            let tag: Tag = field(v.clone(), line)?;
            match (tag.bench.as_str(), tag.kind.as_str()) {
                ("datapath", "throughput") => r.throughput.push(field(v, line)?),
                ("datapath", "latency") => r.latency.push(field(v, line)?),
                ("convergence", "convergence") => r.convergence.push(field(v, line)?),
                ("encryption_enable", "loss_timeline") => r.loss.push(field(v, line)?),
                ("encryption_enable", "enable_time") => r.enable.push(field(v, line)?),
                ("leases", "requests_per_node") => r.requests.push(field(v, line)?),
                ("kube_watch", "watch_cost") => r.watch.push(field(v, line)?),
                ("cold_start", "cold_start") => r.cold_start.push(field(v, line)?),
                (_, "plugin_cycle") => r.plugin.push(field(v, line)?),
                ("families", "family") => r.families.push(field(v, line)?),
                _ => r.unknown += 1,
            }
        }
        Ok(r)
    }

    /// Datapath cases in the order they first appear.
    pub fn cases(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.throughput {
            if !out.contains(&t.case) {
                out.push(t.case.clone());
            }
        }
        out
    }

    /// Median over the repetitions of one datapath case and stream count.
    pub fn datapath(&self, case: &str, streams: u32, f: impl Fn(&Throughput) -> f64) -> f64 {
        median(self.throughput.iter().filter(|t| t.case == case && t.streams == streams).map(f))
    }
}

/// Median of the finite values; NaN when there are none.
pub fn median(v: impl IntoIterator<Item = f64>) -> f64 {
    let mut s: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// The `p`th percentile (nearest rank) of the finite values; NaN when there are none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}
