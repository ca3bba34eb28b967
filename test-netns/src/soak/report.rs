//! The figures per fault kind, the invariants and the targets, as text and markdown.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::invariants::{check_leases, check_node};
use super::probes::{LossRun, PROBE_INTERVAL, TcpKind};
use super::{ChurnStats, Phase, SnapshotCheck, Soak, churn};
use crate::cluster::{StoreKind, wait_for};

/// What one fault kind did.
#[derive(Debug, Clone, Default)]
pub struct KindRow {
    /// The kind (`no fault` for the time between faults).
    pub kind: String,
    /// Times injected.
    pub count: usize,
    /// Injections that failed.
    pub failed: usize,
    /// Times the cluster was not whole again within the limit.
    pub unrecovered: usize,
    /// Probes lost.
    pub lost: u64,
    /// Pairs that lost at least one probe.
    pub pairs: usize,
    /// The longest unreachability window of a pair.
    pub max_window: Duration,
    /// Which pair.
    pub worst_pair: String,
    /// TCP connections reset.
    pub resets: usize,
    /// … of them between pods on nodes the fault was not done to.
    pub resets_elsewhere: usize,
    /// TCP connect failures.
    pub connect_failures: usize,
    /// TCP stalls (echo late by more than 1 s).
    pub stalls: usize,
    /// The longest stall.
    pub longest_stall: Duration,
    /// The longest time until the cluster was whole again.
    pub max_recovery: Duration,
}

/// A PASS/FAIL line.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What is checked.
    pub name: String,
    /// Whether it held (None: not exercised in this run).
    pub pass: Option<bool>,
    /// The figures behind it.
    pub detail: String,
}

/// The soak's outcome.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The store.
    pub store: String,
    /// Nodes at the start.
    pub nodes: usize,
    /// Long-lived pods per node.
    pub pods_per_node: usize,
    /// Fault time asked for.
    pub duration: Duration,
    /// Wall time of the whole run.
    pub total: Duration,
    /// Per fault kind.
    pub rows: Vec<KindRow>,
    /// Per fault kind and pair: the longest windows (worst first, bounded).
    pub pair_windows: Vec<(String, String, Duration)>,
    /// Probes judged.
    pub probes: u64,
    /// Probes lost.
    pub lost: u64,
    /// TCP counters echoed.
    pub echoes: u64,
    /// UDP probes that reached the wrong pod.
    pub misdelivered: u64,
    /// ADD/DEL figures.
    pub churn: ChurnStats,
    /// ADD results recorded, addresses seen.
    pub adds_recorded: (u64, usize),
    /// Addresses given twice.
    pub duplicates: Vec<String>,
    /// Leaks and missing entries with the pods live (after settling).
    pub live_problems: Vec<String>,
    /// Leaks after every pod was deleted.
    pub final_problems: Vec<String>,
    /// Problems noticed during the run.
    pub problems: Vec<String>,
    /// Store outage comparisons.
    pub snapshots: Vec<SnapshotCheck>,
    /// The targets.
    pub verdicts: Vec<Verdict>,
    /// Every fault.
    pub phases: Vec<Phase>,
    /// Progress lines.
    pub timeline: Vec<String>,
}

impl Report {
    /// Every target that was exercised held.
    pub fn passed(&self) -> bool {
        self.verdicts.iter().all(|v| v.pass != Some(false))
    }

    /// The PASS/FAIL lines.
    pub fn verdict_lines(&self) -> String {
        let mut s = String::new();
        for v in &self.verdicts {
            let word = match v.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "N/A ",
            };
            let _ = writeln!(s, "{word} {}: {}", v.name, v.detail);
        }
        s
    }

    /// The per-kind table (markdown).
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| fault | n | probes lost | pairs hit | longest window (pair) | TCP resets (elsewhere) | stalls (longest) | connect fails | recovery (max) |\n|---|---:|---:|---:|---|---:|---:|---:|---:|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {}{} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} |",
                r.kind,
                if r.failed + r.unrecovered > 0 {
                    format!(" ⚠ {} failed, {} unrecovered", r.failed, r.unrecovered)
                } else {
                    String::new()
                },
                r.count,
                r.lost,
                r.pairs,
                if r.max_window.is_zero() {
                    "0".to_string()
                } else {
                    format!("{} ms ({})", r.max_window.as_millis(), r.worst_pair)
                },
                r.resets,
                r.resets_elsewhere,
                r.stalls,
                ms(r.longest_stall),
                r.connect_failures,
                if r.kind == NO_FAULT {
                    "–".to_string()
                } else {
                    format!("{:.1} s", r.max_recovery.as_secs_f64())
                },
            );
        }
        s
    }

    /// A short summary for the terminal.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\nferrocni-soak: seed {} | store {} | {} nodes x {} pods | {} s of faults, {:.0} s in all",
            self.seed,
            self.store,
            self.nodes,
            self.pods_per_node,
            self.duration.as_secs(),
            self.total.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "probes: {} judged, {} lost; TCP: {} counters echoed; ADDs {} ({} failed), DELs {} + {} with the netns gone ({} failed), plugins killed mid-ADD {}, nodes left {} / joined {}\n",
            self.probes,
            self.lost,
            self.echoes,
            self.churn.adds,
            self.churn.add_failures.values().sum::<u64>(),
            self.churn.dels,
            self.churn.dels_netns_gone,
            self.churn.del_failures.len(),
            self.churn.killed_adds,
            self.churn.leaves,
            self.churn.joins
        );
        s.push_str(&self.table());
        s.push('\n');
        for p in self.live_problems.iter().chain(&self.final_problems).chain(&self.problems).take(40) {
            let _ = writeln!(s, "  problem: {p}");
        }
        s.push_str(&self.verdict_lines());
        s
    }

    /// The markdown report (`--report FILE`).
    pub fn markdown(&self, command: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# ferrocni-soak report\n");
        let _ = writeln!(s, "`{command}`\n");
        let _ = writeln!(
            s,
            "seed **{}**, store **{}**, {} nodes × {} long-lived pods, {} s of faults and churn, {:.0} s in all.\n",
            self.seed,
            self.store,
            self.nodes,
            self.pods_per_node,
            self.duration.as_secs(),
            self.total.as_secs_f64()
        );
        let _ = writeln!(s, "## Targets\n\n```\n{}```\n", self.verdict_lines());
        let _ = writeln!(s, "## Per fault kind\n");
        let _ = writeln!(
            s,
            "Probes: UDP echo with sequence numbers, every pod to every other pod every {} ms; a probe not answered within 1 s is lost; a window is consecutive losses × {} ms. TCP: one connection per pair echoing a counter every 100 ms; *reset* = an established connection failed, *elsewhere* = between pods on nodes the fault was not done to; *stall* = an echo more than 1 s late. Recovery = until every daemon was ready and no probe had been lost for 2 s.\n",
            PROBE_INTERVAL.as_millis(),
            PROBE_INTERVAL.as_millis()
        );
        s.push_str(&self.table());
        let _ = writeln!(
            s,
            "\n{} probes judged, {} lost; {} TCP counters echoed; {} UDP probes reached a pod they were not meant for.\n",
            self.probes, self.lost, self.echoes, self.misdelivered
        );
        let _ = writeln!(s, "## Longest unreachability window per pair (the worst 5 of each fault)\n");
        let _ = writeln!(s, "| fault | pair (client pod@node → server pod@node) | window |\n|---|---|---:|");
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, p, w) in &self.pair_windows {
            let n = shown.entry(k.as_str()).or_default();
            if *n < 5 {
                *n += 1;
                let _ = writeln!(s, "| {k} | {p} | {} ms |", w.as_millis());
            }
        }
        let c = &self.churn;
        let _ = writeln!(s, "\n## Churn\n");
        let _ = writeln!(s, "- ADDs: {} succeeded; failed by CNI code: {:?}", c.adds, c.add_failures);
        for (code, e) in &c.add_failure_examples {
            let _ = writeln!(s, "  - code {code}, e.g.: `{}`", e.replace('`', "'"));
        }
        let _ = writeln!(
            s,
            "- DELs: {} with the netns present, {} after it was deleted, {} failed",
            c.dels,
            c.dels_netns_gone,
            c.del_failures.len()
        );
        let _ = writeln!(
            s,
            "- concurrent ADDs on a fresh node: {}; plugins killed mid-ADD (then DEL): {}",
            c.fresh_node_adds, c.killed_adds
        );
        let _ = writeln!(s, "- nodes left: {}, joined: {}", c.leaves, c.joins);
        let _ = writeln!(
            s,
            "- ADD results recorded: {}, distinct addresses: {}",
            self.adds_recorded.0, self.adds_recorded.1
        );
        let _ = writeln!(s, "\n## Invariants\n");
        let list = |s: &mut String, title: &str, v: &[String]| {
            let _ = writeln!(
                s,
                "- {title}: {}",
                if v.is_empty() { "none".to_string() } else { format!("{}", v.len()) }
            );
            for x in v.iter().take(50) {
                let _ = writeln!(s, "  - `{}`", x.replace('`', "'"));
            }
        };
        list(&mut s, "duplicate addresses", &self.duplicates);
        list(&mut s, "with the pods live: leaks and missing entries", &self.live_problems);
        list(&mut s, "after every pod was deleted: leaks", &self.final_problems);
        list(&mut s, "noticed during the run", &self.problems);
        for (i, snap) in self.snapshots.iter().enumerate() {
            let _ = writeln!(
                s,
                "- store outage snapshot {} at {:.0} s, {} nodes: {}",
                i + 1,
                snap.at.as_secs_f64(),
                snap.nodes,
                if snap.diffs.is_empty() {
                    "identical".to_string()
                } else {
                    format!("CHANGED:\n```\n{}```", snap.diffs.join(""))
                }
            );
        }
        let _ = writeln!(s, "\n## Timeline\n\n```");
        for l in &self.timeline {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "```");
        s
    }
}

const NO_FAULT: &str = "no fault (churn only)";

fn ms(d: Duration) -> String {
    if d.is_zero() { "0".into() } else { format!("{} ms", d.as_millis()) }
}

/// The phase `t` falls in.
fn phase_at(phases: &[Phase], t: Duration) -> Option<&Phase> {
    phases.iter().find(|p| p.start <= t && t <= p.end)
}

/// The phase that `[from, to]` overlaps (a loss run or stall that began just before a fault
/// was injected, e.g. a probe in flight when the link went down, belongs to the fault).
fn phase_over(phases: &[Phase], from: Duration, to: Duration) -> Option<&Phase> {
    phases.iter().find(|p| from <= p.end && to >= p.start)
}

/// The invariants at the end: with the pods live (waiting up to 30 s for the cluster to
/// converge), then after deleting every pod (half with the netns gone first). Returns
/// (live problems, problems after the deletion).
pub fn final_checks(soak: &Soak) -> (Vec<String>, Vec<String>) {
    soak.say("checking the invariants with the pods live");
    let live = converge(soak, Duration::from_secs(30));
    soak.say(format!("{} problems with the pods live; deleting every pod", live.len()));
    let pods = churn::take_pods(soak, |_| true);
    let gone: Vec<bool> = pods.iter().map(|p| p.uid % 2 == 0).collect();
    churn::delete_pods(soak, pods, &gone);
    let after = converge(soak, Duration::from_secs(20));
    soak.say(format!("{} problems after deleting every pod", after.len()));
    (live, after)
}

fn converge(soak: &Soak, limit: Duration) -> Vec<String> {
    let mut last = Vec::new();
    let _ = wait_for(limit, "the invariants", || {
        last = check_all(soak);
        last.is_empty()
    });
    last
}

fn check_all(soak: &Soak) -> Vec<String> {
    let (nodes, pods) = soak.facts();
    let gone = soak.gone.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let c = soak.read();
    let network = c.options().network.parse().unwrap_or_else(|_| "10.244.0.0/16".parse().expect("a network"));
    let mut p = Vec::new();
    for n in &c.nodes {
        let me = nodes.iter().find(|f| f.id == n.id).expect("facts of every node");
        p.extend(check_node(network, &n.ns, &n.dir, me, &nodes, &pods, &gone));
    }
    match c.overlayctl(0, &["--json", "leases"]) {
        Ok((true, out)) => p.extend(check_leases(&out, &nodes)),
        Ok((false, out)) => p.push(format!("overlayctl leases: {out}")),
        Err(e) => p.push(format!("overlayctl leases: {e}")),
    }
    p
}

/// Builds the report from what the soak recorded between `from` and `to` (soak clock).
pub fn build(
    soak: &Soak,
    from: Duration,
    to: Duration,
    live_problems: Vec<String>,
    final_problems: Vec<String>,
) -> Report {
    let phases = soak.phases.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let runs: Vec<LossRun> =
        soak.collector.runs().into_iter().filter(|r| r.start >= from && r.start <= to).collect();
    let tcp: Vec<_> =
        soak.collector.tcp_events().into_iter().filter(|e| e.at >= from && e.at <= to).collect();
    let label = |from: Duration, to: Duration| {
        phase_over(&phases, from, to).map(|p| p.kind.clone()).unwrap_or_else(|| NO_FAULT.to_string())
    };
    let pods_node = |uid: u64, node: usize| format!("pod{uid}@node{node}");

    let mut rows: BTreeMap<String, KindRow> = BTreeMap::new();
    rows.insert(NO_FAULT.into(), KindRow { kind: NO_FAULT.into(), ..Default::default() });
    for p in &phases {
        let r = rows
            .entry(p.kind.clone())
            .or_insert_with(|| KindRow { kind: p.kind.clone(), ..Default::default() });
        r.count += 1;
        r.failed += usize::from(p.error.is_some());
        r.unrecovered += usize::from(!p.recovered);
        r.max_recovery = r.max_recovery.max(p.end.saturating_sub(p.start));
    }
    let mut pair_windows: BTreeMap<(String, String), Duration> = BTreeMap::new();
    let mut pairs_hit: BTreeMap<String, std::collections::BTreeSet<(u64, u64)>> = BTreeMap::new();
    for run in &runs {
        let k = label(run.start, run.start + run.window());
        let r = rows.entry(k.clone()).or_insert_with(|| KindRow { kind: k.clone(), ..Default::default() });
        r.lost += u64::from(run.count);
        let pair = format!("{} → {}", pods_node(run.src, run.src_node), pods_node(run.dst, run.dst_node));
        if run.window() > r.max_window {
            r.max_window = run.window();
            r.worst_pair = pair.clone();
        }
        pairs_hit.entry(k.clone()).or_default().insert((run.src, run.dst));
        let w = pair_windows.entry((k, pair)).or_default();
        *w = (*w).max(run.window());
    }
    for (k, set) in &pairs_hit {
        if let Some(r) = rows.get_mut(k) {
            r.pairs = set.len();
        }
    }
    let mut resets_elsewhere_total = Vec::new();
    for e in &tcp {
        let ph = match &e.kind {
            TcpKind::Stall(d) => phase_over(&phases, e.at, e.at + *d),
            _ => phase_at(&phases, e.at),
        };
        let k = ph.map(|p| p.kind.clone()).unwrap_or_else(|| NO_FAULT.to_string());
        let r = rows.entry(k.clone()).or_insert_with(|| KindRow { kind: k.clone(), ..Default::default() });
        match &e.kind {
            TcpKind::Reset(why) => {
                r.resets += 1;
                let own = ph.is_some_and(|p| p.touch.contains(&e.src_node) || p.touch.contains(&e.dst_node));
                if !own {
                    r.resets_elsewhere += 1;
                    resets_elsewhere_total.push(format!(
                        "{} → {} at {:.1} s during {k}: {why}",
                        pods_node(e.src, e.src_node),
                        pods_node(e.dst, e.dst_node),
                        e.at.as_secs_f64()
                    ));
                }
            }
            TcpKind::Corrupt => {}
            TcpKind::ConnectFailed(_) => r.connect_failures += 1,
            TcpKind::Stall(d) => {
                r.stalls += 1;
                r.longest_stall = r.longest_stall.max(*d);
            }
        }
    }
    let mut pair_windows: Vec<(String, String, Duration)> =
        pair_windows.into_iter().map(|((k, p), w)| (k, p, w)).collect();
    pair_windows.sort_by_key(|w| std::cmp::Reverse(w.2));

    let churn = soak.churn.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ledger = soak.ledger.lock().unwrap_or_else(|p| p.into_inner());
    let problems = soak.problems.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let snapshots = soak.snapshots.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let misdelivered = soak.collector.misdelivered.load(std::sync::atomic::Ordering::Relaxed);
    let corrupt = tcp.iter().filter(|e| e.kind == TcpKind::Corrupt).count();

    let mut verdicts = Vec::new();
    verdicts.push(Verdict {
        name: "no duplicate pod IP".into(),
        pass: Some(ledger.duplicates.is_empty() && misdelivered == 0),
        detail: format!(
            "{} ADD results over {} addresses, {} given twice, {} probes reached the wrong pod",
            ledger.adds,
            ledger.addresses(),
            ledger.duplicates.len(),
            misdelivered
        ),
    });
    let leaks: Vec<&String> = live_problems
        .iter()
        .chain(&final_problems)
        .chain(&problems)
        .filter(|p| p.contains("leak"))
        .chain(churn.del_failures.iter())
        .collect();
    verdicts.push(Verdict {
        name: "no leak (IPAM file, veth, nft element, route, neighbour, FDB entry, lease)".into(),
        pass: Some(leaks.is_empty()),
        detail: if leaks.is_empty() {
            format!(
                "checked on every node with the pods live and after deleting them all; {} pods and {} nodes gone",
                soak.gone.lock().unwrap_or_else(|p| p.into_inner()).pod_ips.len(),
                churn.leaves
            )
        } else {
            format!("{} leaks, first: {}", leaks.len(), leaks[0])
        },
    });
    let missing: Vec<&String> = live_problems.iter().filter(|p| !p.contains("leak")).collect();
    verdicts.push(Verdict {
        name:
            "every live pod and peer programmed (IPAM file, veth, route, neighbour, FDB, one lease per node)"
                .into(),
        pass: Some(missing.is_empty()),
        detail: if missing.is_empty() {
            "all present".into()
        } else {
            format!("{} missing, first: {}", missing.len(), missing[0])
        },
    });
    verdicts.push(Verdict {
        name: "no TCP connection reset by a fault that does not touch the pod's own node".into(),
        pass: Some(resets_elsewhere_total.is_empty() && corrupt == 0),
        detail: format!(
            "{} resets in all, {} elsewhere{}, {} corrupt echoes",
            tcp.iter().filter(|e| matches!(e.kind, TcpKind::Reset(_))).count(),
            resets_elsewhere_total.len(),
            resets_elsewhere_total.first().map(|r| format!(" (first: {r})")).unwrap_or_default(),
            corrupt
        ),
    });
    for (encrypted, limit) in [(false, Duration::from_millis(100)), (true, Duration::from_secs(1))] {
        let restarts: Vec<&Phase> = phases.iter().filter(|p| p.restart && p.encrypted == encrypted).collect();
        let worst = restarts
            .iter()
            .flat_map(|p| runs.iter().filter(move |r| r.start <= p.end && r.start + r.window() >= p.start))
            .map(LossRun::window)
            .max()
            .unwrap_or_default();
        verdicts.push(Verdict {
            name: format!(
                "loss per daemon restart ≤ {} ms {}",
                limit.as_millis(),
                if encrypted { "with encryption" } else { "without encryption" }
            ),
            pass: (!restarts.is_empty()).then_some(worst <= limit),
            detail: format!("{} restarts, longest window of a pair {} ms", restarts.len(), worst.as_millis()),
        });
    }
    let changed = snapshots.iter().filter(|s| !s.diffs.is_empty()).count();
    verdicts.push(Verdict {
        name: "a store outage changes no datapath state (routes, neighbours, FDB of every node)".into(),
        pass: (!snapshots.is_empty()).then_some(changed == 0),
        detail: format!("{} comparisons, {} changed", snapshots.len(), changed),
    });
    let baseline = rows.get(NO_FAULT).cloned().unwrap_or_default();
    let inject_failed: Vec<String> = phases
        .iter()
        .filter(|p| p.error.is_some() || !p.recovered)
        .map(|p| {
            format!(
                "{} at {:.0} s: {}",
                p.kind,
                p.start.as_secs_f64(),
                p.error.clone().unwrap_or_else(|| "not recovered".into())
            )
        })
        .collect();
    verdicts.push(Verdict {
        name: "every fault injected and recovered from".into(),
        pass: Some(inject_failed.is_empty()),
        detail: if inject_failed.is_empty() {
            format!("{} faults", phases.len())
        } else {
            format!("{} of {}: {}", inject_failed.len(), phases.len(), inject_failed.join("; "))
        },
    });
    verdicts.push(Verdict {
        name: "(info) loss outside faults".into(),
        pass: None,
        detail: format!(
            "{} probes lost, longest window {} ms ({})",
            baseline.lost,
            baseline.max_window.as_millis(),
            if baseline.worst_pair.is_empty() { "–" } else { &baseline.worst_pair }
        ),
    });

    let mut rows: Vec<KindRow> = rows.into_values().collect();
    rows.sort_by_key(|r| (r.kind == NO_FAULT, r.kind.clone()));
    Report {
        seed: soak.opts.seed,
        store: match soak.opts.store {
            StoreKind::Etcd => "etcd (3 members)".into(),
            StoreKind::Embedded => "embedded".into(),
        },
        nodes: soak.opts.nodes,
        pods_per_node: soak.opts.pods_per_node,
        duration: soak.opts.duration,
        total: Duration::ZERO,
        rows,
        pair_windows,
        probes: soak.collector.probes.load(std::sync::atomic::Ordering::Relaxed),
        lost: soak.collector.lost.load(std::sync::atomic::Ordering::Relaxed),
        echoes: soak.collector.echoes.load(std::sync::atomic::Ordering::Relaxed),
        misdelivered,
        adds_recorded: (ledger.adds, ledger.addresses()),
        duplicates: ledger.duplicates.clone(),
        churn,
        live_problems,
        final_problems,
        problems,
        snapshots,
        verdicts,
        phases,
        timeline: soak.timeline.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    }
}
