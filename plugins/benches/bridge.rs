//! The full ADD+DEL cycle of a bridge + host-local list, driven by the cni-spec runtime,
//! ours against the reference Go plugins from Debian (`/usr/lib/cni`), in the same run.
//!
//! `cargo bench -p plugins --bench bridge` (as root; the reference's `ipMasq` needs the
//! `iptables` package). `BENCH_CYCLES` sets the cycles per variant (default 150); under
//! `cargo test` it runs a 2-cycle smoke pass.
//!
//! Also in the same run: a kernel floor, the same veth, address and route work done with
//! `ip` (no IPAM, no masquerade), and, when `BENCH_BASELINE` names a directory of
//! another build of the plugins (e.g. the previous commit's), that build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cni_spec::NetConfList;
use cni_spec::runtime::{Attach, Runtime};
use serde_json::json;
use test_netns::TestNs;

#[path = "../../build-support/bench_json.rs"]
mod json_out;
mod stats;

use stats::{median, size_kib};

const REFERENCE: &str = "/usr/lib/cni";

/// Our plugins: `FERROCNI_PLUGINS_DIR` when set (scripts/bench.sh points it at the
/// `plugins` profile's static build), else this build's binaries.
fn ours() -> PathBuf {
    std::env::var_os("FERROCNI_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_bridge")).parent().unwrap().to_path_buf())
}

/// One variant's cycles in this process; prints the samples (ms) and the peak RSS (KiB) of
/// every plugin process it ran.
fn run_variant(which: &str, masq: bool, cycles: usize) {
    let host = TestNs::new("benchhost");
    let pod = TestNs::new("benchpod");
    let dir = tempfile::tempdir().unwrap();
    let path = match which {
        "ours" => ours(),
        "baseline" => PathBuf::from(std::env::var("BENCH_BASELINE").expect("BENCH_BASELINE")),
        _ => PathBuf::from(REFERENCE),
    };
    let list = json!({"cniVersion": "1.0.0", "name": "bench", "plugins": [{
        "type": "bridge", "bridge": "bench0", "isGateway": true, "ipMasq": masq,
        "ipam": {"type": "host-local", "subnet": "10.201.0.0/16", "dataDir": dir.path().join("ipam")}
    }]});
    let list = NetConfList::parse(list.to_string().as_bytes()).unwrap();
    let rt = Runtime::new(vec![path]).with_cache_dir(dir.path().join("cache"));
    let att = Attach::new("benchpod", pod.path(), "eth0");
    let mut samples = Vec::with_capacity(cycles);
    if which == "floor" {
        floor(&host, &pod, &mut samples, cycles);
    } else {
        host.run(|| {
            for _ in 0..cycles {
                let t = Instant::now();
                rt.add(&list, &att).expect("ADD");
                rt.del(&list, &att).expect("DEL");
                samples.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let samples: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    println!("{} {}", usage.ru_maxrss, samples.join(","));
}

/// The kernel work of a bridge ADD+DEL done with `ip`: a veth pair into the pod, its host
/// end on the bridge and up, the pod's address, link and default route, then the pair gone.
fn floor(host: &TestNs, pod: &TestNs, samples: &mut Vec<f64>, cycles: usize) {
    let ip = |ns: &TestNs, args: &[&str]| {
        let st = ns.command("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    ip(host, &["link", "add", "bench0", "type", "bridge"]);
    ip(host, &["addr", "add", "10.201.0.1/16", "dev", "bench0"]);
    ip(host, &["link", "set", "bench0", "up"]);
    let pod_name = pod.name().to_string();
    for _ in 0..cycles {
        let t = Instant::now();
        ip(host, &["link", "add", "vethbench", "type", "veth", "peer", "name", "eth0", "netns", &pod_name]);
        ip(host, &["link", "set", "vethbench", "master", "bench0", "up"]);
        ip(pod, &["addr", "add", "10.201.0.2/16", "dev", "eth0"]);
        ip(pod, &["link", "set", "eth0", "up"]);
        ip(pod, &["route", "add", "default", "via", "10.201.0.1"]);
        ip(pod, &["link", "del", "eth0"]);
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        run_variant(&args[i + 1], args[i + 2] == "masq", args[i + 3].parse().unwrap());
        return;
    }
    if !test_netns::is_root() {
        eprintln!("SKIPPED: the bridge benchmark needs root");
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let cycles: usize = if smoke {
        2
    } else {
        std::env::var("BENCH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(150)
    };
    let have_iptables = Path::new("/usr/sbin/iptables").exists();
    let rounds = if smoke { 1 } else { 3 };
    let baseline = std::env::var_os("BENCH_BASELINE").is_some();
    println!(
        "| variant | ours median ms | reference median ms | ratio | ours peak RSS KiB | reference peak RSS KiB | ratio | floor (ip) median ms | ours / floor | baseline median ms | ours / baseline |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for masq in [true, false] {
        if masq && !have_iptables {
            println!(
                "| ipMasq | skipped: the reference needs iptables (apt-get install iptables) | | | | | |"
            );
            continue;
        }
        let mut samples = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut rss = [0u64; 4];
        let variants: &[&str] = if baseline {
            &["ours", "reference", "floor", "baseline"]
        } else {
            &["ours", "reference", "floor"]
        };
        // Alternate the variants in rounds so drift on a busy machine hits all alike.
        for _ in 0..rounds {
            for (k, which) in variants.iter().enumerate() {
                let out = Command::new(&args[0])
                    .args([
                        "--variant",
                        which,
                        if masq { "masq" } else { "plain" },
                        &(cycles / rounds).max(1).to_string(),
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{which}: {}", String::from_utf8_lossy(&out.stderr));
                let text = String::from_utf8_lossy(&out.stdout);
                let (kb, list) = text.trim().split_once(' ').unwrap();
                rss[k] = rss[k].max(kb.parse().unwrap());
                samples[k].extend(list.split(',').map(|s| s.parse::<f64>().unwrap()));
            }
        }
        let (m0, m1, m2) = (median(&mut samples[0]), median(&mut samples[1]), median(&mut samples[2]));
        let base = if baseline {
            let m3 = median(&mut samples[3]);
            format!("{m3:.2} | {:.2}", m0 / m3)
        } else {
            "- | -".to_string()
        };
        json_out::emit(
            "bridge",
            "plugin_cycle",
            json!({
                "plugin": "bridge+host-local", "variant": if masq { "ipMasq" } else { "no ipMasq" },
                "ours_ms": m0, "reference_ms": m1, "floor_ms": m2,
                "ours_rss_kib": rss[0], "reference_rss_kib": rss[1], "cycles": samples[0].len(),
            }),
        );
        println!(
            "| {} | {m0:.2} | {m1:.2} | {:.2} | {} | {} | {:.2} | {m2:.2} | {:.2} | {base} |",
            if masq { "ipMasq" } else { "no ipMasq" },
            m0 / m1,
            rss[0],
            rss[1],
            rss[0] as f64 / rss[1] as f64,
            m0 / m2,
        );
    }
    let dir = ours();
    for bin in ["bridge", "host-local"] {
        let (a, b) = (size_kib(&dir.join(bin)), size_kib(&Path::new(REFERENCE).join(bin)));
        println!("\n`{bin}` binary: ours {a} KiB, reference {b} KiB, ratio {:.2}", a as f64 / b as f64);
    }
}
