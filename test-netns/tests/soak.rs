//! A short run of the chaos soak (`ferrocni-soak`, docs/reliability.md): 3 nodes on a
//! 3-member etcd, a pod each plus churned ones, every pair probed (UDP echo 20/s, one TCP
//! counter connection), and one fault of most kinds in a fixed order: overlayd `kill -9`
//! and SIGTERM restart, the etcd leader killed, a plugin killed mid-ADD, flannel.1 deleted,
//! a store outage, a node leaving and another joining, encryption switched on and a daemon
//! killed while it is on. Every invariant and target must hold.

use std::time::Duration;

use test_netns::cluster::{StoreKind, bin_dir};
use test_netns::require_root;
use test_netns::soak::{FaultKind, SoakOptions, run};

#[test]
fn chaos_soak_smoke() {
    require_root!();
    let mut opts = SoakOptions::new(bin_dir());
    opts.nodes = 3;
    opts.pods_per_node = 1;
    opts.store = StoreKind::Etcd;
    opts.seed = 20261205;
    opts.duration = Duration::from_secs(150);
    opts.outage = Duration::from_secs(5);
    opts.gap = (Duration::from_millis(500), Duration::from_millis(1500));
    opts.ordered = true;
    opts.faults = vec![
        FaultKind::OverlaydKill,
        FaultKind::OverlaydRestart,
        FaultKind::EtcdLeader,
        FaultKind::PluginKill,
        FaultKind::VxlanDelete,
        FaultKind::StoreOutage,
        FaultKind::NodeChurn,
        FaultKind::Encryption,
        FaultKind::OverlaydKill,
    ];
    let report = run(opts).expect("the soak runs");
    eprintln!("{}", report.text());
    assert!(report.passed(), "a target failed:\n{}", report.verdict_lines());
    assert!(report.probes > 10_000 && report.echoes > 1_000, "too little was probed: {}", report.text());
    assert_eq!(report.phases.len(), 10, "every fault was injected (node churn is two): {:?}", report.phases);
    for must in ["no duplicate pod IP", "no leak", "no TCP connection reset", "a store outage"] {
        let v = report.verdicts.iter().find(|v| v.name.starts_with(must)).expect("the verdict");
        assert_eq!(v.pass, Some(true), "{}: {}", v.name, v.detail);
    }
    assert!(report.churn.adds > 3 && report.churn.killed_adds == 1 && report.churn.leaves == 1);
}
