//! host-local, ours against the reference Go binary, measured in one run:
//! `cargo bench -p plugins --bench host_local` (release settings).
//!
//! - wall time of ADD+DEL pairs (interleaved, the same config, cniVersion 1.0.0);
//! - peak RSS of the plugin processes;
//! - binary size;
//! - ADD latency on a /16 with 60,000 leases already on disk (reference format).
//!
//! Prints a markdown table. `HOST_LOCAL_BENCH_PAIRS` sets the number of pairs (300);
//! `HOST_LOCAL_BENCH_OURS` (an absolute path) measures another build of ours, e.g. a
//! static one.
//!
//! Peak RSS is taken with `/usr/bin/time -f %M`, not from `wait4` here: a child started
//! by `std::process::Command` shares this process's memory until `exec` (vfork), and the
//! kernel folds that into the child's `ru_maxrss`, so `wait4` would report this
//! benchmark's own RSS (~2 MB) as the floor for both plugins.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../../build-support/bench_json.rs"]
mod json_out;

const BUILT: &str = env!("CARGO_BIN_EXE_host-local");
const REFERENCE: &str = "/usr/lib/cni/host-local";
const TIME: &str = "/usr/bin/time";

fn command(program: &str, args: &[&str], command: &str, id: &str) -> Command {
    let mut c = Command::new(program);
    c.args(args)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// Runs to completion; the wall time from spawn to exit.
fn run(mut cmd: Command, conf: &str, check: bool) -> Duration {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning the plugin");
    // /bin/true (the floor) exits without reading its stdin.
    let written = child.stdin.take().unwrap().write_all(conf.as_bytes());
    let out = child.wait_with_output().expect("waiting for the plugin");
    let wall = start.elapsed();
    if check {
        assert!(
            written.is_ok() && out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    wall
}

fn invoke(bin: &str, cmd: &str, id: &str, conf: &str) -> Duration {
    run(command(bin, &[], cmd, id), conf, true)
}

/// Peak RSS (KiB) of one invocation, through `/usr/bin/time`.
fn rss(bin: &str, cmd: &str, id: &str, conf: &str, scratch: &Path) -> Option<u64> {
    if !Path::new(TIME).exists() {
        return None;
    }
    let out = scratch.join("rss");
    let c = command(TIME, &["-f", "%M", "-o", out.to_str()?, bin], cmd, id);
    run(c, conf, bin != "/bin/true");
    fs::read_to_string(out).ok()?.trim().parse().ok()
}

fn conf(data_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": "10.0.0.0/16"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    })
    .to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn kib(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v} KiB"))
}

/// Fills `dir` with `n` leases in the reference's format, from 10.0.0.2 up, and points
/// `last_reserved_ip.0` at the last one.
fn fill(dir: &Path, n: u32) {
    fs::create_dir_all(dir).unwrap();
    let mut last = String::new();
    for i in 0..n {
        let v = i + 2;
        last = format!("10.0.{}.{}", v >> 8, v & 0xff);
        fs::write(dir.join(&last), format!("pre{i}\r\neth0")).unwrap();
    }
    fs::write(dir.join("last_reserved_ip.0"), &last).unwrap();
}

struct Side {
    name: &'static str,
    bin: String,
    pairs: Vec<Duration>,
    adds: Vec<Duration>,
    dels: Vec<Duration>,
}

fn main() {
    if !Path::new(REFERENCE).exists() {
        eprintln!("{REFERENCE} is not installed; nothing to compare with");
        return;
    }
    let pairs: usize =
        std::env::var("HOST_LOCAL_BENCH_PAIRS").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
    // HOST_LOCAL_BENCH_OURS names a binary; FERROCNI_PLUGINS_DIR (set by scripts/bench.sh
    // for the `plugins` profile's static build) a directory of them.
    let ours_bin = std::env::var("HOST_LOCAL_BENCH_OURS")
        .or_else(|_| std::env::var("FERROCNI_PLUGINS_DIR").map(|d| format!("{d}/host-local")))
        .unwrap_or_else(|_| BUILT.to_string());
    let tmp = tempfile::Builder::new().prefix("host-local-bench").tempdir().unwrap();
    let side =
        |name, bin: &str| Side { name, bin: bin.to_string(), pairs: vec![], adds: vec![], dels: vec![] };
    let mut sides = [side("ours", &ours_bin), side("reference", REFERENCE)];

    // For scale: the cost of starting a trivial program the same way.
    let floor = median((0..pairs).map(|_| run(command("/bin/true", &[], "ADD", "x"), "{}", false)).collect());
    let floor_rss = rss("/bin/true", "ADD", "x", "{}", tmp.path());

    // ADD+DEL pairs, interleaved so both see the same machine state.
    let confs: Vec<String> = sides.iter().map(|s| conf(&tmp.path().join(s.name))).collect();
    for i in 0..pairs + 10 {
        for (side, conf) in sides.iter_mut().zip(&confs) {
            let id = format!("c{i}");
            let add = invoke(&side.bin, "ADD", &id, conf);
            let del = invoke(&side.bin, "DEL", &id, conf);
            if i >= 10 {
                // The first pairs warm the page cache and create the store.
                side.pairs.push(add + del);
                side.adds.push(add);
                side.dels.push(del);
            }
        }
    }
    let mut peak = Vec::new();
    for (side, conf) in sides.iter().zip(&confs) {
        let mut max = None;
        for i in 0..30 {
            let id = format!("r{i}");
            for cmd in ["ADD", "DEL"] {
                max = max.max(rss(&side.bin, cmd, &id, conf, tmp.path()));
            }
        }
        peak.push(max);
    }

    // ADD on a /16 with 60,000 leases.
    const TAKEN: u32 = 60_000;
    const ADDS: usize = 20;
    let mut full: Vec<(Duration, Duration, Option<u64>)> = Vec::new();
    for side in &sides {
        let data = tmp.path().join(format!("{}-full", side.name));
        fill(&data.join("bench"), TAKEN);
        let conf = conf(&data);
        let first = invoke(&side.bin, "ADD", "first", &conf);
        let mut adds = Vec::new();
        for i in 0..ADDS {
            let id = format!("f{i}");
            adds.push(invoke(&side.bin, "ADD", &id, &conf));
            invoke(&side.bin, "DEL", &id, &conf);
        }
        let peak = rss(&side.bin, "ADD", "rss", &conf, tmp.path());
        full.push((first, median(adds), peak));
    }

    let size = |p: &str| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let row = |what: &str, a: String, b: String, ratio: f64| println!("| {what} | {a} | {b} | {ratio:.2} |");
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    let kratio = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => a as f64 / b as f64,
        _ => f64::NAN,
    };
    let [ours, reference] = &sides;
    println!(
        "host-local: ours ({}) vs reference ({REFERENCE}), cniVersion 1.0.0, {pairs} ADD+DEL pairs each, interleaved\n",
        PathBuf::from(&ours_bin).display()
    );
    println!("| measure | ours | reference | ours / reference |");
    println!("|---|---|---|---|");
    let (p0, p1) = (median(ours.pairs.clone()), median(reference.pairs.clone()));
    let msf = |d: Duration| d.as_secs_f64() * 1e3;
    json_out::emit(
        "host_local",
        "plugin_cycle",
        serde_json::json!({
            "plugin": "host-local", "variant": "ADD+DEL pair",
            "ours_ms": msf(p0), "reference_ms": msf(p1), "floor_ms": msf(floor),
            "ours_rss_kib": peak[0], "reference_rss_kib": peak[1], "cycles": pairs,
        }),
    );
    row("ADD+DEL pair, median wall time", ms(p0), ms(p1), ratio(p0, p1));
    let (a0, a1) = (median(ours.adds.clone()), median(reference.adds.clone()));
    row("ADD, median wall time", ms(a0), ms(a1), ratio(a0, a1));
    let (d0, d1) = (median(ours.dels.clone()), median(reference.dels.clone()));
    row("DEL, median wall time", ms(d0), ms(d1), ratio(d0, d1));
    row("peak RSS (ADD, DEL; 30 pairs)", kib(peak[0]), kib(peak[1]), kratio(peak[0], peak[1]));
    let (s0, s1) = (size(&ours_bin), size(REFERENCE));
    row("binary size", format!("{s0} B"), format!("{s1} B"), s0 as f64 / s1 as f64);
    let (f0, f1) = (&full[0], &full[1]);
    row(&format!("ADD with {TAKEN} leases on disk, first run"), ms(f0.0), ms(f1.0), ratio(f0.0, f1.0));
    row(&format!("ADD with {TAKEN} leases on disk, median of {ADDS}"), ms(f0.1), ms(f1.1), ratio(f0.1, f1.1));
    row(&format!("peak RSS of an ADD with {TAKEN} leases"), kib(f0.2), kib(f1.2), kratio(f0.2, f1.2));
    println!(
        "\nFor scale: starting /bin/true (a dynamically linked glibc program) the same way takes {} (median), peak RSS {}.",
        ms(floor),
        kib(floor_rss)
    );
    println!(
        "Ours: the first run with {TAKEN} foreign leases reads every lease file once and builds its index; later runs read the index (one file)."
    );
}
