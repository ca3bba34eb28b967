//! The Node objects seen as the key-value store the rest of the daemon knows: every Node
//! that is a lease (see `annotations`) appears under `<prefix>/subnets/<key>` with the lease
//! JSON, the network config under `<prefix>/config`, with a revision of our own that grows by
//! one per change, a history to resume watches from, and a fan-out to every watch. No I/O:
//! the reflector feeds it, the store reads it.
//!
//! Two Nodes may claim one subnet (a hand-made Node, a podCIDR reused before the old Node was
//! deleted). The key can show only one: per subnet the oldest claimant wins (creation time,
//! then name: the same answer on every node), and a node that loses any of its subnets is not
//! a lease at all; this node's own Node always wins its subnets in its own view (its lease
//! is what the API assigned it; the other's lease is then refused as overlapping ours).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::broadcast;

use super::annotations::{Annotations, Translation, nets, translate};
use super::nodes::NodeLite;
use crate::store::{KeyValue, LeaseId, Listing, Revision, WatchEvent};
use crate::subnet::KeyLayout;

/// Batches kept for resuming watches.
const HISTORY_EVENTS: usize = 20_000;
/// Batches a slow watch may fall behind before it is told to list again.
const FANOUT: usize = 4096;

/// One committed change: its revision and events (deletions first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The revision every event of it carries.
    pub revision: Revision,
    /// The events.
    pub events: Vec<WatchEvent>,
}

/// Why a managed Node is not a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Short CamelCase reason (the Event's).
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A change in what is wrong with a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A new or different problem.
    Problem {
        /// The Node.
        node: String,
        /// What.
        problem: Problem,
    },
    /// Its problem is gone (fixed; not when the Node was deleted).
    Cleared {
        /// The Node.
        node: String,
    },
}

/// What an update did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Update {
    /// The batch committed, if anything changed for the store's readers.
    pub batch: Option<Arc<Batch>>,
    /// Problems found or fixed.
    pub notices: Vec<Notice>,
}

/// (creation time, name): who claimed first.
type Claim = (String, String);

#[derive(Debug)]
struct Entry {
    node: Arc<NodeLite>,
    translation: Translation,
    /// The subnets it claims, when it is a lease.
    claim: Option<(Claim, Vec<IpNet>)>,
}

#[derive(Debug, Clone)]
struct Shown {
    node: String,
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    lease: LeaseId,
}

/// The cache. See the module documentation.
#[derive(Debug)]
pub struct Cache {
    layout: KeyLayout,
    annotations: Annotations,
    own: String,
    nodes: HashMap<String, Entry>,
    claims: HashMap<IpNet, BTreeSet<Claim>>,
    shown: BTreeMap<String, Shown>,
    by_node: HashMap<String, String>,
    config: Option<KeyValue>,
    revision: Revision,
    history: VecDeque<Arc<Batch>>,
    history_events: usize,
    compacted: Revision,
    tx: broadcast::Sender<Arc<Batch>>,
    problems: BTreeMap<String, Problem>,
}

/// A stable store-lease ID for a Node object: its lease lives exactly as long as the object.
fn lease_of(uid: &str, name: &str) -> LeaseId {
    // FNV-1a: stable across runs and processes.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h >> 1) | 1) as LeaseId
}

impl Cache {
    /// An empty cache for the node named `own`.
    pub fn new(layout: KeyLayout, annotations: Annotations, own: impl Into<String>) -> Self {
        let (tx, _) = broadcast::channel(FANOUT);
        Cache {
            layout,
            annotations,
            own: own.into(),
            nodes: HashMap::new(),
            claims: HashMap::new(),
            shown: BTreeMap::new(),
            by_node: HashMap::new(),
            config: None,
            revision: 0,
            history: VecDeque::new(),
            history_events: 0,
            compacted: 0,
            tx,
            problems: BTreeMap::new(),
        }
    }

    /// The annotation names.
    pub fn annotations(&self) -> &Annotations {
        &self.annotations
    }

    /// The current revision.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// One Node as last seen.
    pub fn node(&self, name: &str) -> Option<Arc<NodeLite>> {
        self.nodes.get(name).map(|e| e.node.clone())
    }

    /// Nodes known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// No nodes known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Leases shown.
    pub fn leases(&self) -> usize {
        self.by_node.len()
    }

    /// What is wrong with each managed Node that is not a lease.
    pub fn problems(&self) -> &BTreeMap<String, Problem> {
        &self.problems
    }

    /// The node that posts Events about `name`: the first Node after it in name order,
    /// wrapping around, among the other managed Nodes whose network is up
    /// (`NetworkUnavailable=False`, which a daemon sets once ready), so that exactly one
    /// running daemon of the cluster speaks about each Node, and a Node nobody runs on (a
    /// hostile one) is never chosen for it. This node itself when there is no such Node.
    pub fn reporter_for(&self, name: &str) -> String {
        let managed: BTreeSet<&str> = self
            .nodes
            .iter()
            .filter(|(n, e)| {
                n.as_str() != name
                    && self.annotations.managed(&e.node)
                    && e.node.network_unavailable.as_deref() == Some("False")
            })
            .map(|(n, _)| n.as_str())
            .collect();
        managed
            .range::<str, _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .next()
            .or_else(|| managed.iter().next())
            .map_or_else(|| self.own.clone(), |s| s.to_string())
    }

    /// The lease value shown for `name`'s Node, if it is one.
    pub fn lease_of_node(&self, name: &str) -> Option<KeyValue> {
        self.by_node.get(name).and_then(|k| self.get(k))
    }

    /// One key.
    pub fn get(&self, key: &str) -> Option<KeyValue> {
        if let Some(c) = &self.config
            && c.key == key
        {
            return Some(c.clone());
        }
        self.shown.get(key).map(|s| self.kv(key, s))
    }

    fn kv(&self, key: &str, s: &Shown) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: s.value.clone(),
            create_revision: s.create_revision,
            mod_revision: s.mod_revision,
            lease: s.lease,
        }
    }

    /// Every key under `prefix`, at the current revision.
    pub fn list(&self, prefix: &str) -> Listing {
        let mut kvs: Vec<KeyValue> = self
            .config
            .iter()
            .filter(|c| c.key.starts_with(prefix))
            .cloned()
            .chain(
                self.shown
                    .range(prefix.to_string()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, s)| self.kv(k, s)),
            )
            .collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Listing { kvs, revision: self.revision }
    }

    /// The events under `prefix` from revision `from` on, and a receiver for what comes
    /// after; `Err(revision)` when the history no longer reaches back to `from`.
    pub fn subscribe(
        &self,
        prefix: &str,
        from: Revision,
    ) -> Result<(Vec<WatchEvent>, broadcast::Receiver<Arc<Batch>>), Revision> {
        if from <= self.compacted {
            return Err(self.compacted);
        }
        let backlog = self
            .history
            .iter()
            .filter(|b| b.revision >= from)
            .flat_map(|b| b.events.iter().filter(|e| e.key().starts_with(prefix)).cloned())
            .collect();
        Ok((backlog, self.tx.subscribe()))
    }

    /// The network config's value changed (`None`: the file is gone; the last one is kept).
    pub fn set_config(&mut self, value: Option<Vec<u8>>) -> Update {
        let Some(value) = value else { return Update::default() };
        if self.config.as_ref().is_some_and(|c| c.value == value) {
            return Update::default();
        }
        self.revision += 1;
        let rev = self.revision;
        let kv = KeyValue {
            key: self.layout.config(),
            value,
            create_revision: self.config.as_ref().map_or(rev, |c| c.create_revision),
            mod_revision: rev,
            lease: 0,
        };
        self.config = Some(kv.clone());
        Update { batch: Some(self.publish(rev, vec![WatchEvent::Put(kv)])), notices: Vec::new() }
    }

    /// A Node was added or changed (`Some`), or deleted (`None`).
    pub fn apply(&mut self, name: &str, node: Option<NodeLite>) -> Update {
        let mut affected = BTreeSet::from([name.to_string()]);
        if let Some(old) = self.nodes.remove(name) {
            self.unclaim(&old, &mut affected);
        }
        if let Some(node) = node {
            let e = self.entry(node);
            self.claim(&e, &mut affected);
            self.nodes.insert(name.to_string(), e);
        }
        self.commit(affected)
    }

    /// A full listing replaces everything (the reflector's first list, or a list after 410 Gone).
    pub fn replace_all(&mut self, nodes: Vec<NodeLite>) -> Update {
        let mut affected: BTreeSet<String> = self.nodes.keys().cloned().collect();
        self.nodes.clear();
        self.claims.clear();
        for n in nodes {
            let name = n.name().to_string();
            let e = self.entry(n);
            let mut ignore = BTreeSet::new();
            self.claim(&e, &mut ignore);
            affected.insert(name.clone());
            self.nodes.insert(name, e);
        }
        self.commit(affected)
    }

    fn entry(&self, node: NodeLite) -> Entry {
        let translation = translate(&node, &self.annotations);
        let claim = match &translation {
            Translation::Lease { key, .. } => {
                Some(((node.created.clone().unwrap_or_default(), node.name().to_string()), nets(key)))
            }
            _ => None,
        };
        Entry { node: Arc::new(node), translation, claim }
    }

    fn claim(&mut self, e: &Entry, affected: &mut BTreeSet<String>) {
        let Some((c, nets)) = &e.claim else { return };
        for n in nets {
            let set = self.claims.entry(*n).or_default();
            affected.extend(set.iter().map(|(_, name)| name.clone()));
            set.insert(c.clone());
        }
    }

    fn unclaim(&mut self, e: &Entry, affected: &mut BTreeSet<String>) {
        let Some((c, nets)) = &e.claim else { return };
        for n in nets {
            if let Some(set) = self.claims.get_mut(n) {
                set.remove(c);
                affected.extend(set.iter().map(|(_, name)| name.clone()));
                if set.is_empty() {
                    self.claims.remove(n);
                }
            }
        }
    }

    /// Who holds `net`: this node when it claims it, else the oldest claimant.
    fn winner(&self, net: &IpNet) -> Option<&str> {
        let set = self.claims.get(net)?;
        if set.iter().any(|(_, n)| *n == self.own) {
            return Some(&self.own);
        }
        set.iter().next().map(|(_, n)| n.as_str())
    }

    /// What `name` should show, or why it shows nothing.
    fn desired(&self, name: &str) -> Result<(String, Vec<u8>), Option<Problem>> {
        let e = self.nodes.get(name).ok_or(None)?;
        match &e.translation {
            Translation::Lease { key, value } => {
                if let Some((_, nets)) = &e.claim {
                    for n in nets {
                        match self.winner(n) {
                            Some(w) if w == name => {}
                            Some(w) => {
                                let who =
                                    if w == self.own { "this node".to_string() } else { format!("node {w}") };
                                return Err(Some(Problem {
                                    reason: "PodCIDRConflict",
                                    message: format!("podCIDR {n} is also claimed by {who}, which keeps it"),
                                }));
                            }
                            None => return Err(None),
                        }
                    }
                }
                Ok((self.layout.lease(key), value.clone()))
            }
            Translation::Invalid { reason, message, .. } => {
                Err(Some(Problem { reason, message: message.clone() }))
            }
            Translation::NotManaged | Translation::NoPodCidr => Err(None),
        }
    }

    fn commit(&mut self, affected: BTreeSet<String>) -> Update {
        let mut removals: Vec<(String, String)> = Vec::new();
        let mut puts: Vec<(String, String, Vec<u8>)> = Vec::new();
        let mut notices = Vec::new();
        for name in &affected {
            let want = self.desired(name);
            let problem = want.as_ref().err().cloned().flatten();
            let had = self.problems.get(name).cloned();
            match (had, problem) {
                (None, None) => {}
                (Some(_), None) => {
                    self.problems.remove(name);
                    if self.nodes.contains_key(name) {
                        notices.push(Notice::Cleared { node: name.clone() });
                    }
                }
                (had, Some(p)) => {
                    if had.as_ref() != Some(&p) {
                        notices.push(Notice::Problem { node: name.clone(), problem: p.clone() });
                    }
                    self.problems.insert(name.clone(), p);
                }
            }
            let have = self.by_node.get(name).cloned();
            match (have, want) {
                (Some(k), Err(_)) => removals.push((name.clone(), k)),
                (None, Ok((k, v))) => puts.push((name.clone(), k, v)),
                (Some(old), Ok((k, v))) => {
                    if old != k {
                        removals.push((name.clone(), old));
                        puts.push((name.clone(), k, v));
                    } else if self.shown.get(&k).is_none_or(|s| s.value != v) {
                        puts.push((name.clone(), k, v));
                    }
                }
                (None, Err(_)) => {}
            }
        }
        if removals.is_empty() && puts.is_empty() {
            return Update { batch: None, notices };
        }
        self.revision += 1;
        let rev = self.revision;
        let mut events = Vec::new();
        for (name, key) in removals {
            self.by_node.remove(&name);
            if self.shown.get(&key).is_some_and(|s| s.node == name) {
                self.shown.remove(&key);
                events.push(WatchEvent::Delete { key, mod_revision: rev });
            }
        }
        for (name, key, value) in puts {
            // Safety net: never show a key another node still shows.
            if self.shown.get(&key).is_some_and(|s| s.node != name) {
                continue;
            }
            let create_revision = self.shown.get(&key).map_or(rev, |s| s.create_revision);
            let lease = self.nodes.get(&name).map_or(1, |e| lease_of(e.node.uid(), &name));
            let s = Shown { node: name.clone(), value, create_revision, mod_revision: rev, lease };
            events.push(WatchEvent::Put(self.kv(&key, &s)));
            self.shown.insert(key.clone(), s);
            self.by_node.insert(name, key);
        }
        Update { batch: Some(self.publish(rev, events)), notices }
    }

    fn publish(&mut self, revision: Revision, events: Vec<WatchEvent>) -> Arc<Batch> {
        let b = Arc::new(Batch { revision, events });
        self.history_events += b.events.len().max(1);
        self.history.push_back(b.clone());
        while self.history_events > HISTORY_EVENTS
            && let Some(old) = self.history.pop_front()
        {
            self.history_events -= old.events.len().max(1);
            self.compacted = old.revision;
        }
        let _ = self.tx.send(b.clone());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, created: &str, cidr: &str, ip: &str) -> NodeLite {
        let mut n = NodeLite::default();
        n.metadata.name = Some(name.into());
        n.metadata.uid = Some(format!("uid-{name}"));
        n.created = Some(created.into());
        n.pod_cidrs = if cidr.is_empty() { vec![] } else { vec![cidr.into()] };
        n.network_unavailable = Some("False".into());
        let mut a = std::collections::BTreeMap::new();
        a.insert("flannel.alpha.coreos.com/kube-subnet-manager".to_string(), "true".to_string());
        a.insert("flannel.alpha.coreos.com/backend-type".to_string(), "vxlan".to_string());
        a.insert(
            "flannel.alpha.coreos.com/backend-data".to_string(),
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}"#.to_string(),
        );
        a.insert("flannel.alpha.coreos.com/public-ip".to_string(), ip.to_string());
        n.metadata.annotations = Some(a);
        n
    }

    fn cache() -> Cache {
        Cache::new(KeyLayout::new("/p"), Annotations::default(), "me")
    }

    fn keys(u: &Update) -> Vec<String> {
        u.batch
            .iter()
            .flat_map(|b| b.events.iter())
            .map(|e| match e {
                WatchEvent::Put(kv) => format!("+{}", kv.key.trim_start_matches("/p/subnets/")),
                WatchEvent::Delete { key, .. } => format!("-{}", key.trim_start_matches("/p/subnets/")),
            })
            .collect()
    }

    #[test]
    fn nodes_become_keys_and_changes_become_events() {
        let mut c = cache();
        let u = c.replace_all(vec![
            node("a", "2026-01-01T00:00:00Z", "10.5.1.0/24", "192.0.2.1"),
            node("b", "2026-01-01T00:00:01Z", "10.5.2.0/24", "192.0.2.2"),
            node("c", "2026-01-01T00:00:02Z", "", "192.0.2.3"),
        ]);
        assert_eq!(keys(&u), ["+10.5.1.0-24", "+10.5.2.0-24"]);
        assert_eq!(c.revision(), 1);
        let l = c.list("/p/subnets/");
        assert_eq!(l.kvs.len(), 2);
        assert_eq!(l.revision, 1);
        // The same listing again (a re-list after an outage) changes nothing.
        let u = c.replace_all(vec![
            node("a", "2026-01-01T00:00:00Z", "10.5.1.0/24", "192.0.2.1"),
            node("b", "2026-01-01T00:00:01Z", "10.5.2.0/24", "192.0.2.2"),
            node("c", "2026-01-01T00:00:02Z", "", "192.0.2.3"),
        ]);
        assert_eq!(u, Update::default());
        assert_eq!(c.revision(), 1);
        // c gets a podCIDR, b changes address, a is deleted.
        assert_eq!(
            keys(&c.apply("c", Some(node("c", "2026-01-01T00:00:02Z", "10.5.3.0/24", "192.0.2.3")))),
            ["+10.5.3.0-24"]
        );
        assert_eq!(
            keys(&c.apply("b", Some(node("b", "2026-01-01T00:00:01Z", "10.5.2.0/24", "192.0.2.22")))),
            ["+10.5.2.0-24"]
        );
        assert_eq!(keys(&c.apply("a", None)), ["-10.5.1.0-24"]);
        // b is recreated with another podCIDR: one batch, old key gone, new key there.
        let u = c.apply("b", Some(node("b", "2026-01-02T00:00:00Z", "10.5.9.0/24", "192.0.2.22")));
        assert_eq!(keys(&u), ["-10.5.2.0-24", "+10.5.9.0-24"]);
        let kv = c.get("/p/subnets/10.5.9.0-24").unwrap();
        assert_eq!((kv.create_revision, kv.mod_revision), (c.revision(), c.revision()));
        assert_ne!(kv.lease, 0);
    }

    #[test]
    fn the_oldest_claimant_keeps_a_subnet_and_our_own_node_always_keeps_ours() {
        let mut c = cache();
        c.replace_all(vec![node("old", "2026-01-01T00:00:00Z", "10.5.1.0/24", "192.0.2.1")]);
        let u = c.apply("new", Some(node("new", "2026-02-01T00:00:00Z", "10.5.1.0/24", "192.0.2.9")));
        assert_eq!(keys(&u), Vec::<String>::new());
        assert!(matches!(&u.notices[..], [Notice::Problem { node, problem }]
            if node == "new" && problem.reason == "PodCIDRConflict" && problem.message.contains("node old")));
        let held = String::from_utf8(c.get("/p/subnets/10.5.1.0-24").unwrap().value).unwrap();
        assert!(held.contains("\"NodeID\":\"old\""), "{held}");
        // The old one goes: the younger one takes the subnet in the same batch, its problem cleared.
        let u = c.apply("old", None);
        assert_eq!(keys(&u), ["-10.5.1.0-24", "+10.5.1.0-24"]);
        assert_eq!(u.notices, [Notice::Cleared { node: "new".into() }]);
        // Our own node claims it later: ours, in our view.
        let u = c.apply("me", Some(node("me", "2026-03-01T00:00:00Z", "10.5.1.0/24", "192.0.2.5")));
        assert_eq!(keys(&u), ["-10.5.1.0-24", "+10.5.1.0-24"]);
        let v = String::from_utf8(c.get("/p/subnets/10.5.1.0-24").unwrap().value).unwrap();
        assert!(v.contains("\"NodeID\":\"me\""), "{v}");
    }

    #[test]
    fn invalid_nodes_are_no_lease_and_are_reported_once() {
        let mut c = cache();
        let mut bad = node("x", "2026-01-01T00:00:00Z", "10.5.4.0/24", "192.0.2.4");
        bad.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("flannel.alpha.coreos.com/backend-data".into(), "{".into());
        let u = c.apply("x", Some(bad.clone()));
        assert!(u.batch.is_none());
        assert!(
            matches!(&u.notices[..], [Notice::Problem { problem, .. }] if problem.reason == "InvalidBackendData")
        );
        // The same object again (a resync): no second notice.
        assert_eq!(c.apply("x", Some(bad)).notices, []);
        assert_eq!(c.problems().len(), 1);
        let u = c.apply("x", Some(node("x", "2026-01-01T00:00:00Z", "10.5.4.0/24", "192.0.2.4")));
        assert_eq!(keys(&u), ["+10.5.4.0-24"]);
        assert_eq!(u.notices, [Notice::Cleared { node: "x".into() }]);
    }

    #[test]
    fn watches_resume_from_history_or_are_told_to_list_again() {
        let mut c = cache();
        c.set_config(Some(b"{}".to_vec()));
        c.apply("a", Some(node("a", "t", "10.5.1.0/24", "192.0.2.1")));
        c.apply("b", Some(node("b", "t", "10.5.2.0/24", "192.0.2.2")));
        let (backlog, _rx) = c.subscribe("/p/subnets/", 3).unwrap();
        assert_eq!(backlog.len(), 1);
        let (backlog, _rx) = c.subscribe("/p/config", 1).unwrap();
        assert_eq!(backlog.len(), 1);
        assert_eq!(c.list("/p/config").kvs.len(), 1);
        // Push the early batches out of the history.
        for i in 0..HISTORY_EVENTS {
            c.apply(
                "a",
                Some(node("a", "t", "10.5.1.0/24", &format!("192.0.{}.{}", 3 + i / 250, 1 + i % 250))),
            );
        }
        assert!(c.subscribe("/p/subnets/", 2).is_err());
        assert!(c.subscribe("/p/subnets/", c.revision() + 1).unwrap().0.is_empty());
    }

    #[test]
    fn one_node_reports_about_each_other() {
        let mut c = cache();
        for n in ["a", "b", "c"] {
            c.apply(n, Some(node(n, "t", &format!("10.5.{}.0/24", n.as_bytes()[0]), "192.0.2.1")));
        }
        assert_eq!(c.reporter_for("a"), "b");
        assert_eq!(c.reporter_for("c"), "a");
        assert_eq!(c.reporter_for("zzz"), "a");
        let mut alone = cache();
        alone.apply("a", Some(node("a", "t", "10.5.1.0/24", "192.0.2.1")));
        assert_eq!(alone.reporter_for("a"), "me");
        // A Node whose network is not up (no daemon runs there) reports about nothing.
        let mut down = node("b", "t", "10.5.2.0/24", "192.0.2.2");
        down.network_unavailable = None;
        alone.apply("b", Some(down));
        assert_eq!(alone.reporter_for("a"), "me");
    }
}
