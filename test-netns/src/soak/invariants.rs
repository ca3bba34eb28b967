//! The invariants, checked independently of the daemons' own view: with `ip`, `bridge` and
//! `nft` inside each node, host-local's lease files, and the store's listing.
//!
//! - No pod address is ever held twice ([`IpLedger`], fed by every ADD result).
//! - Nothing is left for a pod or node that is gone: no IPAM file, veth, nftables element,
//!   route, neighbour or FDB entry; and every live pod and peer has its own.
//! - Every lease in the store is owned by a live node.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::TestNs;

/// Every address ADD handed out, with who held it when.
#[derive(Debug, Default)]
pub struct IpLedger {
    holders: BTreeMap<Ipv4Addr, Vec<Holding>>,
    /// ADDs recorded.
    pub adds: u64,
    /// Every time an ADD returned an address still held by another pod.
    pub duplicates: Vec<String>,
}

#[derive(Debug, Clone)]
struct Holding {
    uid: u64,
    node: usize,
    from: Duration,
    until: Option<Duration>,
}

impl IpLedger {
    /// Records that pod `uid` on node `node` got `ip` at `at`; a duplicate if another pod
    /// holds it.
    pub fn add(&mut self, ip: Ipv4Addr, uid: u64, node: usize, at: Duration) {
        self.adds += 1;
        let h = self.holders.entry(ip).or_default();
        for other in h.iter().filter(|o| o.until.is_none()) {
            self.duplicates.push(format!(
                "{ip} given to pod {uid} on node{node} at {:.1} s while pod {} on node{} has held it since {:.1} s",
                at.as_secs_f64(),
                other.uid,
                other.node,
                other.from.as_secs_f64()
            ));
        }
        h.push(Holding { uid, node, from: at, until: None });
    }

    /// Records that pod `uid` released `ip` (its DEL succeeded).
    pub fn release(&mut self, ip: Ipv4Addr, uid: u64, at: Duration) {
        if let Some(h) = self.holders.get_mut(&ip)
            && let Some(x) = h.iter_mut().find(|x| x.uid == uid && x.until.is_none())
        {
            x.until = Some(at);
        }
    }

    /// Addresses given out so far.
    pub fn addresses(&self) -> usize {
        self.holders.len()
    }
}

/// What the checks need to know about a live node.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Stable id.
    pub id: usize,
    /// Underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Pod subnet (from its subnet.env).
    pub subnet: Option<Ipv4Net>,
    /// VTEP MAC (from its state directory).
    pub vtep_mac: Option<String>,
    /// Node ID (from its state directory).
    pub node_id: Option<String>,
}

impl NodeFacts {
    /// Reads them from the node's directory.
    pub fn read(id: usize, underlay_ip: &str, dir: &Path) -> NodeFacts {
        NodeFacts {
            id,
            underlay_ip: underlay_ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
            subnet: subnet_of(dir),
            vtep_mac: std::fs::read_to_string(dir.join("state/vtep-mac"))
                .ok()
                .map(|s| s.trim().to_ascii_lowercase()),
            node_id: std::fs::read_to_string(dir.join("state/node-id")).ok().map(|s| s.trim().to_string()),
        }
    }

    /// The VTEP address (the subnet's first address).
    pub fn vtep(&self) -> Option<Ipv4Addr> {
        self.subnet.map(|s| s.network())
    }
}

/// The node's pod subnet from its subnet.env.
pub fn subnet_of(dir: &Path) -> Option<Ipv4Net> {
    let env = std::fs::read_to_string(dir.join("subnet.env")).ok()?;
    let line = env.lines().find(|l| l.starts_with("FLANNEL_SUBNET="))?;
    line.trim_start_matches("FLANNEL_SUBNET=").parse::<Ipv4Net>().ok().map(|n| n.trunc())
}

/// What the checks need to know about a live pod.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// Soak-wide number.
    pub uid: u64,
    /// Node id.
    pub node: usize,
    /// Address.
    pub ip: Ipv4Addr,
    /// CNI container ID.
    pub container_id: String,
    /// The host end of its veth.
    pub host_veth: Option<String>,
}

/// What is gone: pods' addresses and nodes.
#[derive(Debug, Default, Clone)]
pub struct Gone {
    /// Addresses of deleted pods.
    pub pod_ips: BTreeSet<Ipv4Addr>,
    /// Nodes that left.
    pub nodes: Vec<NodeFacts>,
}

fn json_of(ns: &TestNs, argv: &[&str]) -> Result<Value, String> {
    let out = ns.command(argv[0]).args(&argv[1..]).output().map_err(|e| format!("{argv:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| format!("{argv:?}: {e}"))
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The problems on one live node: leaks (something for a pod or node that is gone) and
/// missing entries (a live pod or peer without its own).
pub fn check_node(
    network: Ipv4Net,
    ns: &TestNs,
    dir: &Path,
    me: &NodeFacts,
    nodes: &[NodeFacts],
    pods: &[PodFacts],
    gone: &Gone,
) -> Vec<String> {
    let mut p = Vec::new();
    let name = format!("node{}", me.id);
    let mine: Vec<&PodFacts> = pods.iter().filter(|x| x.node == me.id).collect();
    let live_ips: BTreeSet<Ipv4Addr> = pods.iter().map(|x| x.ip).collect();
    let peers: Vec<&NodeFacts> = nodes.iter().filter(|n| n.id != me.id).collect();

    // IPAM: host-local's files, one per leased address: "<containerID>\r\n<ifname>".
    let ipam = dir.join("ipam/cluster");
    let mut leased = BTreeMap::new();
    for e in std::fs::read_dir(&ipam).into_iter().flatten().flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if let Ok(ip) = file.parse::<Ipv4Addr>() {
            let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
            leased.insert(ip, owner.lines().next().unwrap_or_default().trim().to_string());
        }
    }
    for (ip, owner) in &leased {
        if !mine.iter().any(|x| x.ip == *ip && x.container_id == *owner) {
            p.push(format!(
                "leak on {name}: IPAM file {} (owner {owner:?}) of no live pod",
                ipam.join(ip.to_string()).display()
            ));
        }
    }
    for x in &mine {
        if leased.get(&x.ip) != Some(&x.container_id) {
            p.push(format!("missing on {name}: no IPAM file for live pod {} ({})", x.uid, x.ip));
        }
    }

    // veths on the node: each the host end of a live pod.
    match json_of(ns, &["ip", "-j", "link", "show", "type", "veth"]) {
        Ok(links) => {
            let names: BTreeSet<String> =
                arr(&links).iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect();
            for n in names.iter().filter(|n| n.as_str() != "ul") {
                if !mine.iter().any(|x| x.host_veth.as_deref() == Some(n.as_str())) {
                    // Evidence: the peer's namespace (link-netnsid: still alive) and the
                    // machine's orphaned TCP sockets, which keep a deleted namespace alive.
                    let link = arr(&links).iter().find(|l| l["ifname"] == n.as_str());
                    let peer_ns = link.map(|l| l["link_netnsid"].to_string()).unwrap_or_default();
                    let sockstat = std::fs::read_to_string("/proc/net/sockstat")
                        .unwrap_or_default()
                        .lines()
                        .find(|l| l.starts_with("TCP:"))
                        .unwrap_or_default()
                        .to_string();
                    p.push(format!(
                        "leak on {name}: veth {n} of no live pod (its peer's netns id {peer_ns}: the pod's namespace is still alive; {sockstat})"
                    ));
                }
            }
            for x in &mine {
                if let Some(v) = &x.host_veth
                    && !names.contains(v)
                {
                    p.push(format!("missing on {name}: veth {v} of live pod {} ({})", x.uid, x.ip));
                }
            }
        }
        Err(e) => p.push(format!("{name}: {e}")),
    }

    // Routes to other nodes' subnets: exactly the live peers'.
    match json_of(ns, &["ip", "-j", "route", "show"]) {
        Ok(routes) => {
            let mut seen = BTreeSet::new();
            for r in arr(&routes) {
                let Some(dst) = r["dst"].as_str().and_then(|d| d.parse::<Ipv4Net>().ok()) else { continue };
                if !network.contains(&dst) || Some(dst) == me.subnet {
                    continue;
                }
                let dev = r["dev"].as_str().unwrap_or_default();
                match peers.iter().find(|n| n.subnet == Some(dst)) {
                    Some(_) => {
                        seen.insert(dst);
                        if dev != "flannel.1" && dev != "ferro-wg" {
                            p.push(format!("{name}: route to {dst} via {dev}, not the overlay"));
                        }
                    }
                    None => p.push(format!("leak on {name}: route to {dst} dev {dev}: no live node has it")),
                }
            }
            for n in &peers {
                if let Some(s) = n.subnet
                    && !seen.contains(&s)
                {
                    p.push(format!("missing on {name}: no route to node{}'s {s}", n.id));
                }
            }
        }
        Err(e) => p.push(format!("{name}: {e}")),
    }

    // Neighbours on the VXLAN device: the live peers' VTEPs with their MACs.
    match json_of(ns, &["ip", "-j", "neigh", "show", "dev", "flannel.1"]) {
        Ok(neigh) => {
            let mut seen = BTreeSet::new();
            for e in arr(&neigh) {
                let Some(dst) = e["dst"].as_str().and_then(|d| d.parse::<Ipv4Addr>().ok()) else { continue };
                let mac = e["lladdr"].as_str().unwrap_or_default().to_ascii_lowercase();
                match peers.iter().find(|n| n.vtep() == Some(dst)) {
                    Some(n) if n.vtep_mac.as_deref() == Some(mac.as_str()) => {
                        seen.insert(dst);
                    }
                    Some(n) => p.push(format!(
                        "{name}: neighbour {dst} has MAC {mac}, node{}'s VTEP is {:?}",
                        n.id, n.vtep_mac
                    )),
                    None => {
                        p.push(format!("leak on {name}: neighbour {dst} lladdr {mac}: no live node's VTEP"))
                    }
                }
            }
            for n in &peers {
                if let Some(v) = n.vtep()
                    && !seen.contains(&v)
                {
                    p.push(format!("missing on {name}: no neighbour for node{}'s VTEP {v}", n.id));
                }
            }
        }
        Err(e) => p.push(format!("{name}: {e}")),
    }

    // FDB of the VXLAN device: each remote entry a live peer's VTEP MAC at its address.
    match json_of(ns, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"]) {
        Ok(fdb) => {
            let mut seen = BTreeSet::new();
            for e in arr(&fdb) {
                let Some(dst) = e["dst"].as_str().and_then(|d| d.parse::<Ipv4Addr>().ok()) else { continue };
                let mac = e["mac"].as_str().unwrap_or_default().to_ascii_lowercase();
                match peers
                    .iter()
                    .find(|n| n.underlay_ip == dst && n.vtep_mac.as_deref() == Some(mac.as_str()))
                {
                    Some(n) => {
                        seen.insert(n.id);
                    }
                    None => p.push(format!("leak on {name}: FDB entry {mac} dst {dst}: no live node has it")),
                }
            }
            for n in &peers {
                if !seen.contains(&n.id) {
                    p.push(format!("missing on {name}: no FDB entry for node{} ({})", n.id, n.underlay_ip));
                }
            }
        }
        Err(e) => p.push(format!("{name}: {e}")),
    }

    // nftables: no set or map element names a gone pod or node.
    match json_of(ns, &["nft", "-j", "list", "ruleset"]) {
        Ok(rules) => {
            let mut dead: Vec<String> =
                gone.pod_ips.iter().filter(|ip| !live_ips.contains(ip)).map(|ip| ip.to_string()).collect();
            for n in &gone.nodes {
                if !nodes.iter().any(|l| l.underlay_ip == n.underlay_ip) {
                    dead.push(n.underlay_ip.to_string());
                }
                if let Some(s) = n.subnet
                    && !nodes.iter().any(|l| l.subnet == Some(s))
                {
                    dead.push(s.network().to_string());
                }
            }
            for item in arr(&rules["nftables"]) {
                for kind in ["set", "map"] {
                    let Some(set) = item.get(kind) else { continue };
                    for elem in arr(&set["elem"]) {
                        let text = elem.to_string();
                        let ips = text
                            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                            .filter(|t| t.parse::<Ipv4Addr>().is_ok())
                            .map(str::to_string)
                            .collect::<Vec<_>>();
                        for d in ips.iter().filter(|ip| dead.contains(ip)) {
                            p.push(format!(
                                "leak on {name}: nft {kind} {} {} element {text} names {d}, which is gone",
                                set["table"].as_str().unwrap_or_default(),
                                set["name"].as_str().unwrap_or_default()
                            ));
                        }
                    }
                }
            }
        }
        Err(e) => p.push(format!("{name}: {e}")),
    }
    p
}

/// The store's leases (`overlayctl --json leases` on a live node): each owned by a live
/// node, one per live node.
pub fn check_leases(leases_json: &str, nodes: &[NodeFacts]) -> Vec<String> {
    let mut p = Vec::new();
    let v: Value = match serde_json::from_str(leases_json) {
        Ok(v) => v,
        Err(e) => return vec![format!("overlayctl leases: {e}: {leases_json}")],
    };
    let mut owners: BTreeMap<String, usize> = BTreeMap::new();
    for l in arr(&v["leases"]) {
        let key = l["key"].as_str().unwrap_or_default();
        let id = l["value"]["NodeID"].as_str().unwrap_or_default();
        let public = l["value"]["PublicIP"].as_str().unwrap_or_default();
        match nodes.iter().find(|n| n.node_id.as_deref() == Some(id)) {
            Some(n) if n.underlay_ip.to_string() == public => *owners.entry(id.to_string()).or_default() += 1,
            Some(n) => p.push(format!(
                "lease {key} of node{} says PublicIP {public}, the node is at {}",
                n.id, n.underlay_ip
            )),
            None => p.push(format!(
                "leak in the store: lease {key} (NodeID {id:?}, PublicIP {public}) of no live node"
            )),
        }
    }
    for n in nodes {
        let count = n.node_id.as_ref().and_then(|id| owners.get(id)).copied().unwrap_or(0);
        if count != 1 {
            p.push(format!("node{} holds {count} leases in the store", n.id));
        }
    }
    p
}

/// The datapath state of a node that a store outage must not change: overlay routes,
/// neighbours and FDB entries of the VXLAN device, as text.
pub fn datapath_snapshot(ns: &TestNs) -> String {
    let run = |argv: &[&str]| -> String {
        ns.command(argv[0])
            .args(&argv[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let mut routes: Vec<String> = run(&["ip", "route", "show"])
        .lines()
        .filter(|l| l.contains("flannel.") || l.contains("ferro-wg"))
        .map(str::to_string)
        .collect();
    routes.sort();
    let mut neigh: Vec<String> =
        run(&["ip", "neigh", "show", "dev", "flannel.1"]).lines().map(str::to_string).collect();
    neigh.sort();
    let mut fdb: Vec<String> =
        run(&["bridge", "fdb", "show", "dev", "flannel.1"]).lines().map(str::to_string).collect();
    fdb.sort();
    format!("routes:\n{}\nneigh:\n{}\nfdb:\n{}\n", routes.join("\n"), neigh.join("\n"), fdb.join("\n"))
}

/// The lines of `a` and `b` that differ (`-` only in a, `+` only in b).
pub fn diff(a: &str, b: &str) -> String {
    let la: BTreeSet<&str> = a.lines().collect();
    let lb: BTreeSet<&str> = b.lines().collect();
    let mut out = String::new();
    for l in la.difference(&lb) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in lb.difference(&la) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}

/// Lease files left in a (gone) node's IPAM directory.
pub fn ipam_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("ipam/cluster"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_flags_an_address_given_twice() {
        let mut l = IpLedger::default();
        let ip: Ipv4Addr = "10.244.1.2".parse().unwrap();
        l.add(ip, 1, 0, Duration::from_secs(1));
        l.release(ip, 1, Duration::from_secs(2));
        l.add(ip, 2, 0, Duration::from_secs(3));
        assert!(l.duplicates.is_empty());
        l.add(ip, 3, 1, Duration::from_secs(4));
        assert_eq!(l.duplicates.len(), 1, "{:?}", l.duplicates);
        assert_eq!(l.adds, 3);
    }

    #[test]
    fn leases_of_gone_nodes_are_leaks() {
        let live = NodeFacts {
            id: 0,
            underlay_ip: "198.18.0.1".parse().unwrap(),
            subnet: None,
            vtep_mac: None,
            node_id: Some("a".into()),
        };
        let json = r#"{"leases":[{"key":"10.244.1.0-24","value":{"NodeID":"a","PublicIP":"198.18.0.1"}},
            {"key":"10.244.2.0-24","value":{"NodeID":"b","PublicIP":"198.18.0.2"}}]}"#;
        let p = check_leases(json, &[live]);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("10.244.2.0-24"), "{p:?}");
    }

    #[test]
    fn diff_names_changed_lines() {
        assert_eq!(diff("a\nb\n", "a\nc\n"), "- b\n+ c\n");
        assert_eq!(diff("x\n", "x\n"), "");
    }
}
