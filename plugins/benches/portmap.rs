//! The ADD+DEL cycle of containerd's default list (bridge with `ipMasq` + host-local, then
//! portmap with two port mappings), driven by the cni-spec runtime, ours against the
//! reference Go plugins from Debian (`/usr/lib/cni`), in the same run; and the peak RSS of
//! the portmap process alone on each side.
//!
//! `cargo bench -p plugins --bench portmap` (as root; the reference's portmap and `ipMasq`
//! need the `iptables` package; the peak RSS needs `/usr/bin/time`). `BENCH_CYCLES` sets
//! the cycles per side (default 150); under `cargo test` it runs a 2-cycle smoke pass.

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
        .unwrap_or_else(|| Path::new(env!("CARGO_BIN_EXE_portmap")).parent().unwrap().to_path_buf())
}

/// The plugin directory of one side; for `rss`, a copy of it whose `portmap` runs under
/// `/usr/bin/time`, which appends the process's peak RSS (KiB) to `rss_log`.
fn plugin_dir(which: &str, rss_log: Option<&Path>, tmp: &Path) -> PathBuf {
    let real = if which == "ours" { ours() } else { PathBuf::from(REFERENCE) };
    let Some(log) = rss_log else { return real };
    let dir = tmp.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for p in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(real.join(p), dir.join(p)).unwrap();
    }
    let script = format!(
        "#!/bin/sh\nexec /usr/bin/time -a -o {} -f %M {} \"$@\"\n",
        log.display(),
        real.join("portmap").display()
    );
    let wrapper = dir.join("portmap");
    std::fs::write(&wrapper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// One side's cycles in this process; prints the peak RSS (KiB: of every plugin process,
/// or with `rss` of portmap alone) and the samples (ms).
fn run_variant(which: &str, rss: bool, cycles: usize) {
    let _host = TestNs::new("pmbenchhost");
    let pod = TestNs::new("pmbenchpod");
    let dir = tempfile::tempdir().unwrap();
    let rss_log = dir.path().join("rss.log");
    let path = plugin_dir(which, rss.then_some(rss_log.as_path()), dir.path());
    let list = json!({"cniVersion": "1.0.0", "name": "pmbench", "plugins": [
        {"type": "bridge", "bridge": "pmbench0", "isGateway": true, "ipMasq": true,
         "ipam": {"type": "host-local", "subnet": "10.202.0.0/16", "dataDir": dir.path().join("ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]});
    let list = NetConfList::parse(list.to_string().as_bytes()).unwrap();
    let rt = Runtime::new(vec![path]).with_cache_dir(dir.path().join("cache"));
    let mut att = Attach::new("pmbenchpod", pod.path(), "eth0");
    att.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
               {"hostPort": 8053, "containerPort": 53, "protocol": "udp"}]),
    );
    let mut samples = Vec::with_capacity(cycles);
    _host.run(|| {
        for _ in 0..cycles {
            let t = Instant::now();
            rt.add(&list, &att).expect("ADD");
            rt.del(&list, &att).expect("DEL");
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    });
    let peak = if rss {
        let log = std::fs::read_to_string(&rss_log).unwrap();
        log.lines().filter_map(|l| l.trim().parse::<u64>().ok()).max().expect("portmap ran")
    } else {
        // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct we own.
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
        usage.ru_maxrss as u64
    };
    let samples: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    println!("{peak} {}", samples.join(","));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--variant") {
        run_variant(&args[i + 1], args[i + 2] == "rss", args[i + 3].parse().unwrap());
        return;
    }
    if !test_netns::is_root() {
        eprintln!("SKIPPED: the portmap benchmark needs root");
        return;
    }
    if !Path::new("/usr/sbin/iptables").exists() || !Path::new(REFERENCE).join("portmap").exists() {
        eprintln!("SKIPPED: the reference needs iptables and {REFERENCE}/portmap");
        return;
    }
    let smoke = !args.iter().any(|a| a == "--bench");
    let cycles: usize = if smoke {
        2
    } else {
        std::env::var("BENCH_CYCLES").ok().and_then(|c| c.parse().ok()).unwrap_or(150)
    };
    let rounds = if smoke { 1 } else { 3 };
    let run = |which: &str, mode: &str, n: usize| {
        let out = Command::new(&args[0]).args(["--variant", which, mode, &n.to_string()]).output().unwrap();
        assert!(out.status.success(), "{which}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (kb, list) = text.trim().split_once(' ').unwrap();
        let samples: Vec<f64> = list.split(',').map(|s| s.parse().unwrap()).collect();
        (kb.parse::<u64>().unwrap(), samples)
    };
    let mut samples = [Vec::new(), Vec::new()];
    let mut rss = [0u64; 2];
    let mut portmap_rss = [0u64; 2];
    // Alternate the sides in rounds so drift on a busy machine hits both alike.
    for _ in 0..rounds {
        for (k, which) in ["ours", "reference"].iter().enumerate() {
            let (kb, s) = run(which, "time", (cycles / rounds).max(1));
            rss[k] = rss[k].max(kb);
            samples[k].extend(s);
        }
    }
    if Path::new("/usr/bin/time").exists() {
        for (k, which) in ["ours", "reference"].iter().enumerate() {
            portmap_rss[k] = run(which, "rss", if smoke { 1 } else { 10 }).0;
        }
    }
    let (m0, m1) = (median(&mut samples[0]), median(&mut samples[1]));
    json_out::emit(
        "portmap",
        "plugin_cycle",
        json!({
            "plugin": "bridge+host-local+portmap", "variant": "ipMasq, 2 port mappings",
            "ours_ms": m0, "reference_ms": m1,
            "ours_rss_kib": rss[0], "reference_rss_kib": rss[1],
            "ours_portmap_rss_kib": portmap_rss[0], "reference_portmap_rss_kib": portmap_rss[1],
            "cycles": samples[0].len(),
        }),
    );
    println!(
        "| chain | ours median ms | reference median ms | ratio | ours peak RSS KiB (any plugin) | reference | ratio | ours portmap peak RSS KiB | reference portmap peak RSS KiB | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| bridge (ipMasq) + host-local + portmap | {m0:.2} | {m1:.2} | {:.2} | {} | {} | {:.2} | {} | {} | {:.2} |",
        m0 / m1,
        rss[0],
        rss[1],
        rss[0] as f64 / rss[1] as f64,
        portmap_rss[0],
        portmap_rss[1],
        portmap_rss[0] as f64 / portmap_rss[1].max(1) as f64,
    );
    let (a, b) = (size_kib(&ours().join("portmap")), size_kib(&Path::new(REFERENCE).join("portmap")));
    println!("\n`portmap` binary: ours {a} KiB, reference {b} KiB, ratio {:.2}", a as f64 / b as f64);
}
