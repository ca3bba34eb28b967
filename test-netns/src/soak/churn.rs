//! Pods and nodes coming and going, as a runtime and an operator do it: ADD through the
//! cni-spec runtime inside the node (a failed ADD is followed by DEL), storms of concurrent
//! ADDs and DELs, DELs of pods whose namespace is already gone, concurrent ADDs on a node
//! that has just joined, nodes leaving with `overlayctl leave`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cni_spec::runtime::Attach;
use netkernel::NetNs;

use super::invariants::{NodeFacts, ipam_files};
use super::probes::{PROBE_TIMEOUT, Prober, Target};
use super::{Soak, SoakPod};
use crate::TestNs;

/// ADD of a new pod on node `node` (id). On success the pod is probed and probes; on
/// failure the runtime's DEL has run and the error is returned.
pub fn add_pod(soak: &Soak, node: usize, base: bool) -> Result<u64, String> {
    {
        let leaving = soak.leaving.lock().unwrap_or_else(|p| p.into_inner());
        if leaving.contains(&node) {
            return Err(format!("node{node} is leaving"));
        }
        *soak.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(node).or_default() += 1;
    }
    let r = add_pod_inner(soak, node, base);
    *soak.inflight.lock().unwrap_or_else(|p| p.into_inner()).entry(node).or_default() -= 1;
    r
}

fn add_pod_inner(soak: &Soak, node: usize, base: bool) -> Result<u64, String> {
    let uid = soak.uid();
    let ns = TestNs::new(&format!("p{uid}"));
    let attach = Attach::new(&format!("soak-{uid}"), ns.path(), "eth0");
    let added = {
        let c = soak.read();
        let i = c.index_of(node).ok_or_else(|| format!("node{node} is gone"))?;
        let (list, rt) = (c.nodes[i].conflist(), c.runtime(i));
        let r = c.nodes[i].ns.run(|| rt.add(&list, &attach));
        if r.is_err() {
            // As a runtime does after a failed ADD.
            if let Err(e) = c.nodes[i].ns.run(|| rt.del(&list, &attach)) {
                soak.problem(format!("DEL after a failed ADD of pod {uid} on node{node}: {e}"));
            }
        }
        r
    };
    let result = match added {
        Ok(r) => r,
        Err(e) => {
            let mut st = soak.churn.lock().unwrap_or_else(|p| p.into_inner());
            *st.add_failures.entry(e.code).or_default() += 1;
            st.add_failure_examples.insert(e.code, e.to_string());
            return Err(format!("ADD on node{node}: {e}"));
        }
    };
    let ip = result
        .ips
        .iter()
        .find_map(|ip| match ip.address.addr() {
            std::net::IpAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
    let host_veth = result
        .interfaces
        .iter()
        .find(|i| i.sandbox.is_none() && i.name.starts_with("veth"))
        .map(|i| i.name.clone());
    soak.ledger.lock().unwrap_or_else(|p| p.into_inner()).add(ip, uid, node, soak.collector.now());
    soak.churn.lock().unwrap_or_else(|p| p.into_inner()).adds += 1;
    let me = Target { uid, node, ip };
    let prober = NetNs::open(ns.path())
        .map_err(|e| e.to_string())
        .and_then(|n| Prober::start(n, me.clone(), soak.targets.clone(), soak.collector.clone()));
    let pod = SoakPod { uid, node, ns: Some(ns), attach, ip, host_veth, prober: None, base };
    let prober = match prober {
        Ok(p) => p,
        Err(e) => {
            soak.problem(format!("pod {uid} ({ip}) on node{node}: the prober did not start: {e}"));
            delete_pods(soak, vec![pod], &[false]);
            return Err(e);
        }
    };
    soak.targets.add(me);
    let mut pod = pod;
    pod.prober = Some(prober);
    soak.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(uid, pod);
    Ok(uid)
}

/// `n` concurrent ADDs on node `node`; returns how many succeeded.
pub fn add_pods_concurrently(soak: &Soak, node: usize, n: usize, base: bool) -> usize {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|_| s.spawn(move || add_pod(soak, node, base))).collect();
        hs.into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(_)) => Some(()),
                Ok(Err(e)) => {
                    soak.say(format!("ADD failed: {e}"));
                    None
                }
                Err(_) => None,
            })
            .count()
    })
}

/// Takes the pods out of the probe matrix, lets their outstanding probes complete, stops
/// their probers and DELs them concurrently; `netns_gone[i]`: pod `i`'s namespace is deleted
/// before its DEL (a runtime whose sandbox died).
pub fn delete_pods(soak: &Soak, pods: Vec<SoakPod>, netns_gone: &[bool]) {
    for p in &pods {
        soak.targets.remove(p.uid);
    }
    if pods.iter().any(|p| p.prober.is_some()) {
        std::thread::sleep(PROBE_TIMEOUT + Duration::from_millis(300));
    }
    std::thread::scope(|s| {
        for (i, mut p) in pods.into_iter().enumerate() {
            let gone = netns_gone.get(i).copied().unwrap_or(false);
            s.spawn(move || {
                if let Some(mut pr) = p.prober.take() {
                    pr.stop();
                }
                if gone {
                    drop(p.ns.take());
                }
                del_pod(soak, &p, gone);
                drop(p.ns.take());
            });
        }
    });
}

fn del_pod(soak: &Soak, p: &SoakPod, netns_gone: bool) {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let c = soak.read();
        let Some(i) = c.index_of(p.node) else {
            last = format!("node{} is gone", p.node);
            break;
        };
        let (list, rt) = (c.nodes[i].conflist(), c.runtime(i));
        match c.nodes[i].ns.run(|| rt.del(&list, &p.attach)) {
            Ok(()) => {
                let now = soak.collector.now();
                soak.ledger.lock().unwrap_or_else(|p| p.into_inner()).release(p.ip, p.uid, now);
                soak.gone.lock().unwrap_or_else(|p| p.into_inner()).pod_ips.insert(p.ip);
                let mut st = soak.churn.lock().unwrap_or_else(|p| p.into_inner());
                if netns_gone {
                    st.dels_netns_gone += 1;
                } else {
                    st.dels += 1;
                }
                return;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let msg = format!("DEL of pod {} ({}) on node{}: {last}", p.uid, p.ip, p.node);
    soak.churn.lock().unwrap_or_else(|p| p.into_inner()).del_failures.push(msg.clone());
    soak.problem(msg);
}

/// Takes the pods matching `f` out of the registry (whoever takes a pod deletes it).
pub fn take_pods(soak: &Soak, f: impl Fn(&SoakPod) -> bool) -> Vec<SoakPod> {
    let mut pods = soak.pods.lock().unwrap_or_else(|p| p.into_inner());
    let uids: Vec<u64> = pods.values().filter(|p| f(p)).map(|p| p.uid).collect();
    uids.into_iter().filter_map(|u| pods.remove(&u)).collect()
}

/// The background pod churn until `deadline`: storms of 2 to 4 concurrent ADDs on random
/// nodes, the pods live a few seconds in the probe matrix, then a storm of concurrent DELs,
/// half of them after their namespace was deleted. Ends at `deadline` or when `done` is set
/// (the faults are over).
pub fn pod_churn(soak: &Soak, seed: u64, deadline: Instant, done: &AtomicBool) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let over = || Instant::now() >= deadline || soak.stopping() || done.load(Ordering::Relaxed);
    while !over() {
        soak.sleep(Duration::from_millis(rng.u64(2000..5000)));
        if over() {
            break;
        }
        let nodes = soak.node_ids();
        let k = rng.usize(2..=4);
        let picks: Vec<usize> = (0..k).map(|_| nodes[rng.usize(..nodes.len())]).collect();
        let added = std::thread::scope(|s| {
            let hs: Vec<_> = picks.iter().map(|&n| s.spawn(move || add_pod(soak, n, false))).collect();
            hs.into_iter().map(|h| h.join()).filter(|r| matches!(r, Ok(Ok(_)))).count()
        });
        soak.say(format!("churn: {added}/{k} concurrent ADDs on nodes {picks:?}"));
        soak.sleep(Duration::from_millis(rng.u64(2000..5000)));
        let pods = take_pods(soak, |p| !p.base);
        let gone: Vec<bool> = pods.iter().map(|_| rng.bool()).collect();
        let n = pods.len();
        let g = gone.iter().filter(|x| **x).count();
        delete_pods(soak, pods, &gone);
        soak.say(format!("churn: {n} concurrent DELs ({g} after their netns was deleted)"));
    }
}

/// A node leaves for good: its pods are deleted, `overlayctl leave`, its namespace goes.
/// Returns the node's id.
pub fn node_leave(soak: &Soak, node: usize, rng: &mut fastrand::Rng) -> Result<String, String> {
    soak.leaving.lock().unwrap_or_else(|p| p.into_inner()).insert(node);
    let r = node_leave_inner(soak, node, rng);
    soak.leaving.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
    r
}

fn node_leave_inner(soak: &Soak, node: usize, rng: &mut fastrand::Rng) -> Result<String, String> {
    let t = Instant::now();
    while soak.inflight.lock().unwrap_or_else(|p| p.into_inner()).get(&node).copied().unwrap_or(0) > 0 {
        if t.elapsed() > Duration::from_secs(30) {
            return Err("ADDs on the node did not finish".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pods = take_pods(soak, |p| p.node == node);
    let gone: Vec<bool> = pods.iter().map(|_| rng.bool()).collect();
    let n = pods.len();
    delete_pods(soak, pods, &gone);
    let facts = {
        let c = soak.read();
        let i = c.index_of(node).ok_or("the node is gone already")?;
        let n = &c.nodes[i];
        let facts = NodeFacts::read(n.id, &n.underlay_ip, &n.dir);
        let (ok, out) = c.overlayctl(i, &["leave"])?;
        if !ok {
            return Err(format!("overlayctl leave: {out}"));
        }
        facts
    };
    let removed = {
        let mut c = soak.write();
        let i = c.index_of(node).ok_or("the node is gone already")?;
        // leave stops the daemon; wait for it before the namespace goes.
        let _ = crate::cluster::wait_for(Duration::from_secs(10), "the daemon to stop", || {
            c.nodes[i].daemon_pid().is_none()
        });
        c.remove_node(i)
    };
    let left = ipam_files(&removed.dir);
    if !left.is_empty() {
        soak.problem(format!("leak: node{node} left with IPAM files {left:?}"));
    }
    drop(removed);
    soak.gone.lock().unwrap_or_else(|p| p.into_inner()).nodes.push(facts);
    soak.churn.lock().unwrap_or_else(|p| p.into_inner()).leaves += 1;
    Ok(format!("{n} pods deleted, lease released, namespace removed"))
}

/// A new node joins; once ready, its pods are added with concurrent ADDs. Returns its id.
pub fn node_join(soak: &Soak) -> Result<(usize, String), String> {
    let id = {
        let mut c = soak.write();
        let i = c.add_node()?;
        c.nodes[i].id
    };
    let t = Instant::now();
    {
        let c = soak.read();
        let i = c.index_of(id).ok_or("the new node vanished")?;
        c.wait_ready(i)?;
    }
    let ready = t.elapsed();
    let n = soak.opts.pods_per_node.max(2);
    let ok = add_pods_concurrently(soak, id, n, true);
    let mut st = soak.churn.lock().unwrap_or_else(|p| p.into_inner());
    st.joins += 1;
    st.fresh_node_adds += n as u64;
    drop(st);
    if ok < n {
        soak.problem(format!("node{id}: only {ok} of {n} concurrent ADDs on the fresh node succeeded"));
    }
    Ok((id, format!("ready in {:.1} s, {ok}/{n} concurrent ADDs", ready.as_secs_f64())))
}
