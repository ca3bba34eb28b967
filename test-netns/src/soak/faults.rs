//! What is done to the cluster, one fault at a time.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cni_spec::runtime::Attach;
use serde_json::Value;

use super::invariants::{datapath_snapshot, diff};
use super::{SnapshotCheck, Soak, churn};
use crate::TestNs;
use crate::cluster::{Cluster, StoreKind, wait_for};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of overlayd on a node, then started again.
    OverlaydKill,
    /// SIGTERM to overlayd on a node, then started again.
    OverlaydRestart,
    /// A random etcd member killed (`kill -9`) and restarted 5 s later.
    EtcdMember,
    /// The etcd leader killed and restarted 5 s later.
    EtcdLeader,
    /// The whole store down for the outage time (every etcd member stopped; or the
    /// embedded store's file locked exclusively).
    StoreOutage,
    /// A node's underlay link down for 5 s.
    LinkDown,
    /// `ip link del flannel.1` on a node.
    VxlanDelete,
    /// `overlayctl encryption enable`, `rotate` or `disable` (depending on the state).
    Encryption,
    /// The plugin chain killed (SIGKILL to its process group) in the middle of an ADD, then
    /// DEL as a runtime would.
    PluginKill,
    /// A node leaves (`overlayctl leave`) and a new one joins.
    NodeChurn,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::OverlaydKill,
        FaultKind::OverlaydRestart,
        FaultKind::EtcdMember,
        FaultKind::EtcdLeader,
        FaultKind::StoreOutage,
        FaultKind::LinkDown,
        FaultKind::VxlanDelete,
        FaultKind::Encryption,
        FaultKind::PluginKill,
        FaultKind::NodeChurn,
    ];

    /// The name `--faults` takes.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::OverlaydKill => "kill9",
            FaultKind::OverlaydRestart => "sigterm",
            FaultKind::EtcdMember => "etcd-member",
            FaultKind::EtcdLeader => "etcd-leader",
            FaultKind::StoreOutage => "store-outage",
            FaultKind::LinkDown => "link-down",
            FaultKind::VxlanDelete => "vxlan-delete",
            FaultKind::Encryption => "encryption",
            FaultKind::PluginKill => "plugin-kill",
            FaultKind::NodeChurn => "node-churn",
        }
    }

    /// Parses a name of [`FaultKind::name`].
    pub fn parse(s: &str) -> Result<FaultKind, String> {
        FaultKind::ALL.iter().copied().find(|k| k.name() == s.trim()).ok_or_else(|| {
            format!(
                "unknown fault {s:?}: one of {}",
                FaultKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// Whether it can be done on this store (the etcd member faults need etcd).
    pub fn applies_to(self, store: StoreKind) -> bool {
        !matches!(self, FaultKind::EtcdMember | FaultKind::EtcdLeader) || store == StoreKind::Etcd
    }
}

/// Does one fault of kind `kind` as a phase of the soak.
pub fn inject(soak: &Soak, kind: FaultKind, rng: &mut fastrand::Rng) {
    let nodes = soak.node_ids();
    let node = nodes[rng.usize(..nodes.len())];
    let enc = soak.encrypted.load(Ordering::Relaxed);
    let suffix = if enc { " (encrypted)" } else { "" };
    match kind {
        FaultKind::OverlaydKill => soak.phase(&format!("overlayd kill -9{suffix}"), vec![node], true, |s| {
            restart(s, node, libc::SIGKILL)
        }),
        FaultKind::OverlaydRestart => {
            soak.phase(&format!("overlayd SIGTERM restart{suffix}"), vec![node], true, |s| {
                restart(s, node, libc::SIGTERM)
            })
        }
        FaultKind::EtcdMember => {
            let m = rng.usize(..soak.read().etcd.len());
            soak.phase("etcd member kill -9", vec![], false, |s| etcd_kill(s, Some(m)))
        }
        FaultKind::EtcdLeader => soak.phase("etcd leader kill -9", vec![], false, |s| etcd_kill(s, None)),
        FaultKind::StoreOutage => soak.phase("store outage", vec![], false, store_outage),
        FaultKind::LinkDown => {
            soak.phase("underlay link down 5 s", vec![node], false, |s| link_down(s, node))
        }
        FaultKind::VxlanDelete => {
            soak.phase("flannel.1 deleted", vec![node], false, |s| vxlan_delete(s, node))
        }
        FaultKind::Encryption => {
            let (action, name) = match (enc, rng.bool()) {
                (false, _) => ("enable", "encryption enable"),
                (true, true) => ("rotate", "encryption rotate"),
                (true, false) => ("disable", "encryption disable"),
            };
            soak.phase(name, vec![], false, |s| encryption(s, node, action));
        }
        FaultKind::PluginKill => {
            let delay = Duration::from_millis(rng.u64(0..400));
            soak.phase("plugin killed mid-ADD", vec![node], false, |s| plugin_kill(s, node, delay))
        }
        FaultKind::NodeChurn => {
            if nodes.len() <= 2 {
                soak.say("node churn skipped: only two nodes left");
                return;
            }
            soak.phase("node leave", vec![node], false, |s| churn::node_leave(s, node, rng));
            if soak.stopping() {
                return;
            }
            let mut joined = None;
            soak.phase("node join", vec![], false, |s| {
                let (id, d) = churn::node_join(s)?;
                joined = Some(id);
                Ok(format!("node{id}: {d}"))
            });
            if let Some(id) = joined {
                let mut ph = soak.phases.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = ph.last_mut() {
                    p.touch = vec![id];
                }
            }
        }
    }
}

fn idx(c: &Cluster, node: usize) -> Result<usize, String> {
    c.index_of(node).ok_or_else(|| format!("node{node} is gone"))
}

fn restart(soak: &Soak, node: usize, signal: i32) -> Result<String, String> {
    let c = soak.read();
    let i = idx(&c, node)?;
    let t = Instant::now();
    c.stop_daemon(i, signal);
    let down = t.elapsed();
    c.start_daemon(i)?;
    c.wait_ready(i)?;
    Ok(format!("down {:.2} s, ready again after {:.2} s", down.as_secs_f64(), t.elapsed().as_secs_f64()))
}

fn etcd_kill(soak: &Soak, member: Option<usize>) -> Result<String, String> {
    let leader = soak.read().wait_etcd_leader(Duration::from_secs(20))?;
    let m = member.unwrap_or(leader);
    soak.write().etcd_stop(m, libc::SIGKILL);
    let t = Instant::now();
    let next = soak.read().wait_etcd_leader(Duration::from_secs(20));
    let elected = t.elapsed();
    soak.sleep(Duration::from_secs(5).saturating_sub(t.elapsed()));
    soak.write().etcd_start(m)?;
    let c = soak.read();
    wait_for(Duration::from_secs(30), "the member back in the cluster", || {
        c.etcd[m].status().is_some() && c.etcd_leader().is_some()
    })?;
    Ok(format!(
        "etcd{m}{} killed; leader etcd{} after {:.1} s; restarted",
        if m == leader { " (the leader)" } else { "" },
        next.map(|n| n.to_string()).unwrap_or_else(|e| format!("? ({e})")),
        elected.as_secs_f64()
    ))
}

/// Every node's datapath before the outage, at its end (store still down) and after it;
/// all three must be the same.
fn store_outage(soak: &Soak) -> Result<String, String> {
    let snap = |s: &Soak| -> Vec<(usize, String)> {
        s.read().nodes.iter().map(|n| (n.id, datapath_snapshot(&n.ns))).collect()
    };
    let before = snap(soak);
    let secs = soak.opts.outage;
    let how = match soak.opts.store {
        StoreKind::Etcd => {
            let mut c = soak.write();
            for m in 0..c.etcd.len() {
                c.etcd_stop(m, libc::SIGTERM);
            }
            drop(c);
            soak.sleep(secs);
            let during = snap(soak);
            let mut c = soak.write();
            for m in 0..c.etcd.len() {
                c.etcd_start(m)?;
            }
            drop(c);
            soak.read().wait_etcd_leader(Duration::from_secs(30))?;
            record(soak, &before, &during);
            "every etcd member stopped"
        }
        StoreKind::Embedded => {
            let path = soak.read().work_dir().join("store.db");
            let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
            conn.execute_batch("BEGIN EXCLUSIVE").map_err(|e| format!("locking {}: {e}", path.display()))?;
            soak.sleep(secs);
            let during = snap(soak);
            conn.execute_batch("COMMIT").map_err(|e| e.to_string())?;
            drop(conn);
            record(soak, &before, &during);
            "the store file locked exclusively"
        }
    };
    // Renewals and watches resume; nothing may move.
    soak.sleep(Duration::from_secs(5));
    let after = snap(soak);
    record(soak, &before, &after);
    let same = soak
        .snapshots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .rev()
        .take(2)
        .all(|s| s.diffs.is_empty());
    Ok(format!("{how} for {} s; datapath {}", secs.as_secs(), if same { "unchanged" } else { "CHANGED" }))
}

fn record(soak: &Soak, before: &[(usize, String)], after: &[(usize, String)]) {
    let mut diffs = Vec::new();
    for (id, a) in before {
        if let Some((_, b)) = after.iter().find(|(i, _)| i == id) {
            let d = diff(a, b);
            if !d.is_empty() {
                diffs.push(format!("node{id}:\n{d}"));
            }
        }
    }
    soak.snapshots.lock().unwrap_or_else(|p| p.into_inner()).push(SnapshotCheck {
        at: soak.collector.now(),
        nodes: before.len(),
        diffs,
    });
}

fn link_down(soak: &Soak, node: usize) -> Result<String, String> {
    let c = soak.read();
    let ns = &c.nodes[idx(&c, node)?].ns;
    ns.command("ip").args(["link", "set", "ul", "down"]).status().map_err(|e| e.to_string())?;
    drop(c);
    soak.sleep(Duration::from_secs(5));
    let c = soak.read();
    let ns = &c.nodes[idx(&c, node)?].ns;
    let ok = ns.command("ip").args(["link", "set", "ul", "up"]).status().map_err(|e| e.to_string())?;
    if !ok.success() {
        return Err("ip link set ul up failed".into());
    }
    Ok("ul down, 5 s, up".into())
}

fn vxlan_delete(soak: &Soak, node: usize) -> Result<String, String> {
    let c = soak.read();
    let ns = &c.nodes[idx(&c, node)?].ns;
    let t = Instant::now();
    if !ns.try_exec(&["ip", "link", "del", "flannel.1"]) {
        return Err("ip link del flannel.1 failed".into());
    }
    wait_for(Duration::from_secs(30), "flannel.1 to come back", || {
        ns.try_exec(&["ip", "link", "show", "flannel.1"])
    })?;
    Ok(format!("the device was back after {:.1} s", t.elapsed().as_secs_f64()))
}

/// Whether node `i` routes node `j`'s pod subnet through `dev`.
fn routed(c: &Cluster, i: usize, j: usize, dev: &str) -> bool {
    let Ok(subnet) = c.pod_subnet(j) else { return false };
    c.nodes[i]
        .ns
        .command("ip")
        .args(["route", "show", &subnet])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("dev {dev}")))
}

fn enc_status(c: &Cluster, i: usize) -> Value {
    c.overlayctl(i, &["--json", "encryption", "status"])
        .ok()
        .and_then(|(_, out)| serde_json::from_str(&out).ok())
        .unwrap_or(Value::Null)
}

fn encryption(soak: &Soak, node: usize, action: &str) -> Result<String, String> {
    let c = soak.read();
    let i = idx(&c, node)?;
    let keys: Vec<Value> = (0..c.nodes.len()).map(|k| enc_status(&c, k)["public_key"].clone()).collect();
    let t = Instant::now();
    let (ok, out) = c.overlayctl(i, &["encryption", action])?;
    if !ok {
        return Err(format!("overlayctl encryption {action}: {out}"));
    }
    let n = c.nodes.len();
    let all = |dev: &str| (0..n).all(|a| (0..n).all(|b| a == b || routed(&c, a, b, dev)));
    match action {
        "enable" => {
            soak.encrypted.store(true, Ordering::Relaxed);
            wait_for(Duration::from_secs(30), "every route on the tunnel", || all("ferro-wg"))?;
        }
        "disable" => {
            soak.encrypted.store(false, Ordering::Relaxed);
            wait_for(Duration::from_secs(30), "every route back on VXLAN", || all("flannel.1"))?;
        }
        _ => {
            wait_for(Duration::from_secs(30), "new keys and sessions on every node", || {
                (0..n).all(|k| {
                    let st = enc_status(&c, k);
                    st["public_key"] != keys[k]
                        && st["peers"]
                            .as_array()
                            .is_some_and(|p| p.len() == n - 1 && p.iter().all(|x| x["established"] == true))
                })
            })?;
            if !all("ferro-wg") {
                return Err("a rotation moved routes off the tunnel".into());
            }
        }
    }
    Ok(format!("every node converged in {:.1} s", t.elapsed().as_secs_f64()))
}

/// ADD in a child process (`cnictl`, in its own process group, in the node's namespace),
/// SIGKILL to the group after `delay`, then DEL through the runtime; the pod's namespace
/// goes last. What the ADD left must be gone after the DEL (the final checks see it).
fn plugin_kill(soak: &Soak, node: usize, delay: Duration) -> Result<String, String> {
    let uid = soak.uid();
    let pod = TestNs::new(&format!("k{uid}"));
    let cid = format!("soak-kill-{uid}");
    let c = soak.read();
    let i = idx(&c, node)?;
    let n = &c.nodes[i];
    let conf_dir = n.dir.join("net.d");
    std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
    std::fs::write(conf_dir.join("10-cluster.conflist"), n.conflist().to_bytes())
        .map_err(|e| e.to_string())?;
    let bin = &soak.opts.bin_dir;
    let mut child =
        n.ns.command(bin.join("cnictl").to_str().unwrap_or("cnictl"))
            .args(["add", "cluster"])
            .arg(pod.path())
            .env("CNI_PATH", bin)
            .env("NETCONFPATH", &conf_dir)
            .env("CNI_CACHE_DIR", n.dir.join("cni-cache"))
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_IFNAME", "eth0")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting cnictl: {e}"))?;
    let pgid = child.id() as i32;
    let t = Instant::now();
    let mut finished = false;
    while t.elapsed() < delay {
        if let Ok(Some(_)) = child.try_wait() {
            finished = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: killpg(2) on the process group of our own child.
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    let status = child.wait().map_err(|e| e.to_string())?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let completed = status.success();
    // As a runtime does for an ADD that did not finish: DEL.
    let att = Attach::new(&cid, pod.path(), "eth0");
    let (list, rt) = (n.conflist(), c.runtime(i));
    let del = n.ns.run(|| rt.del(&list, &att));
    drop(pod);
    if let Err(e) = del {
        let msg = format!("DEL after the killed ADD {cid} on node{node}: {e}");
        soak.churn.lock().unwrap_or_else(|p| p.into_inner()).del_failures.push(msg.clone());
        return Err(msg);
    }
    if completed {
        // The address was given out: record it and its release like any pod's.
        if let Some(ip) = serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["ips"][0]["address"].as_str().map(str::to_string))
            .and_then(|a| a.split('/').next().and_then(|x| x.parse().ok()))
        {
            let now = soak.collector.now();
            let mut l = soak.ledger.lock().unwrap_or_else(|p| p.into_inner());
            l.add(ip, uid, node, now);
            l.release(ip, uid, now);
            soak.gone.lock().unwrap_or_else(|p| p.into_inner()).pod_ips.insert(ip);
        }
    }
    soak.churn.lock().unwrap_or_else(|p| p.into_inner()).killed_adds += 1;
    Ok(format!(
        "killed after {} ms ({}), then DEL",
        delay.as_millis(),
        if finished || completed { "the ADD had completed" } else { "mid-ADD" }
    ))
}
