//! `ferrocni-soak`: the chaos soak on this machine. A cluster of node namespaces with
//! `overlayd` on a 3-member etcd (or the embedded store), every pod probing every other pod,
//! pods and nodes churning, faults injected one at a time at random (seeded); then the
//! invariants and the targets as PASS/FAIL lines. Exits 0 only when every target held.
//!
//! ```sh
//! cargo build --release -p overlayd -p plugins -p cni-spec --bins
//! cargo run --release -p test-netns --bin ferrocni-soak -- --duration 10m --report soak.md
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use test_netns::cluster::StoreKind;
use test_netns::soak::{FaultKind, SoakOptions};

#[derive(Parser)]
#[command(name = "ferrocni-soak", about = "Chaos soak of the overlay on this machine (network namespaces)")]
struct Args {
    /// How long faults and churn go on: `10m`, `90s`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Nodes at the start.
    #[arg(long, default_value_t = 6)]
    nodes: usize,
    /// Long-lived pods per node (the churn adds short-lived ones).
    #[arg(long, default_value_t = 2)]
    pods_per_node: usize,
    /// `etcd` (3 members, Debian's etcd-server) or `embedded`.
    #[arg(long, default_value = "etcd")]
    store: String,
    /// Seed of every random choice (printed; a random one when not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Fault kinds, comma separated (default: all that apply to the store): kill9, sigterm,
    /// etcd-member, etcd-leader, store-outage, link-down, vxlan-delete, encryption,
    /// plugin-kill, node-churn.
    #[arg(long, value_delimiter = ',')]
    faults: Option<Vec<String>>,
    /// How long the store is down in a store outage.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    outage: Duration,
    /// No background pod churn.
    #[arg(long)]
    no_churn: bool,
    /// Inject the `--faults` once each in the order given, then stop (to reproduce one
    /// sequence).
    #[arg(long)]
    ordered: bool,
    /// Write the markdown report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Copy every daemon's and etcd member's log into this directory at the end.
    #[arg(long)]
    logs: Option<PathBuf>,
    /// Where the binaries are (overlayd, overlayctl, vxlan, bridge, host-local, cnictl);
    /// default: next to this one.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected e.g. 10m, 90s, 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !test_netns::is_root() {
        eprintln!("ferrocni-soak needs root: it creates network namespaces");
        return ExitCode::from(2);
    }
    let bin_dir = args.bin_dir.clone().unwrap_or_else(|| {
        std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default()
    });
    for b in ["overlayd", "overlayctl", "vxlan", "bridge", "host-local", "cnictl"] {
        if !bin_dir.join(b).exists() {
            eprintln!(
                "{} is missing: cargo build --release -p overlayd -p plugins -p cni-spec --bins",
                bin_dir.join(b).display()
            );
            return ExitCode::from(2);
        }
    }
    let mut opts = SoakOptions::new(bin_dir);
    opts.duration = args.duration;
    opts.nodes = args.nodes.max(2);
    opts.pods_per_node = args.pods_per_node.max(1);
    opts.store = match args.store.as_str() {
        "etcd" => StoreKind::Etcd,
        "embedded" => StoreKind::Embedded,
        other => {
            eprintln!("--store {other}: etcd or embedded");
            return ExitCode::from(2);
        }
    };
    opts.seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    if let Some(list) = &args.faults {
        match list
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| FaultKind::parse(s))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(f) => opts.faults = f,
            Err(e) => {
                eprintln!("--faults: {e}");
                return ExitCode::from(2);
            }
        }
    }
    opts.outage = args.outage;
    opts.churn = !args.no_churn;
    opts.logs = args.logs.clone();
    opts.ordered = args.ordered;
    // Ctrl-C or SIGTERM: stop injecting, check and tear down as at the end (a second
    // signal is handled the same way; the teardown is short).
    let stop = Arc::new(AtomicBool::new(false));
    opts.stop = stop.clone();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::spawn(move || {
        loop {
            if STOP.load(Ordering::SeqCst) {
                eprintln!("ferrocni-soak: stopping early (signal): checking and tearing down");
                stop.store(true, Ordering::SeqCst);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let seed = opts.seed;
    let report = match test_netns::soak::run(opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrocni-soak (seed {seed}) could not run: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{}", report.text());
    if let Some(path) = &args.report {
        match std::fs::write(path, report.markdown(&command)) {
            Ok(()) => println!("report written to {}", path.display()),
            Err(e) => eprintln!("writing {}: {e}", path.display()),
        }
    }
    println!("seed {seed}: {}", if report.passed() { "every target held" } else { "TARGETS FAILED" });
    if report.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
