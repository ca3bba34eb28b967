//! The host-gw backend (flannel's `host-gw`): no encapsulation, one route per peer and pod
//! family, `<peer subnet> via <peer public address> dev <underlay>`, so the underlay routes
//! pod packets as it routes the nodes'. That works only between nodes on one L2 network: a
//! peer whose public address no connected prefix of the underlay holds is refused, named
//! in the family's status (`not_on_link`), logged and counted
//! (`overlayd_datapath_not_on_link_peers`), and gets no route (flannel installs nothing
//! either, but only says so in a failed-route log line).
//!
//! Like vxlan, every batch runs one reconciliation per pod family (read the kernel, diff,
//! apply), families isolated from each other, nothing removed before the first full
//! listing. Readiness works the same way: the first address of our subnet sits on `lo`
//! (vxlan keeps it on its device), and the readiness probe pings each peer's first address
//! from it, which goes out over our route to the peer and comes back over its route to us.

use std::collections::BTreeMap;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use netkernel::Netlink;
use netkernel::nodenat::NodeRules;
use netkernel::overlay::OverlayOp;
use netkernel::probe::EchoTarget;
use netkernel::route::Route;
use serde_json::Value;

use crate::backend::{Backend, BackendError, BackendEvent, FamilyHealth, KernelOps};
use crate::peer::PeerSet;
use crate::subnet::SubnetKey;
use crate::vxlan::node_rules;
use crate::vxlan::reconcile::{Datapath, Fam, first_addr};

/// `BackendType` in leases, as flannel writes it.
pub const BACKEND_TYPE: &str = "host-gw";

/// Where our own first address lives (the readiness probe's source and target).
const LOOPBACK: &str = "lo";

/// What the backend is configured with.
#[derive(Debug, Clone)]
pub struct HostGwSettings {
    /// The underlay interface name.
    pub underlay: String,
    /// Our underlay IPv4 address.
    pub public_ip: Option<IpAddr>,
    /// Our underlay IPv6 address.
    pub public_ipv6: Option<IpAddr>,
    /// The cluster's IPv4 network.
    pub network: Option<IpNet>,
    /// The cluster's IPv6 network.
    pub ipv6_network: Option<IpNet>,
    /// Masquerade pod traffic leaving the cluster.
    pub ip_masq: bool,
}

/// One peer of one pod family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// Its lease, for reports.
    pub key: String,
    /// Its pod subnet in this family.
    pub subnet: IpNet,
    /// Its public address in this family (a host-gw next hop is of the route's family).
    pub via: Option<IpAddr>,
}

/// One pod family's desired state.
#[derive(Debug, Clone)]
pub struct FamilyWant {
    /// The family.
    pub fam: Fam,
    /// Our subnet.
    pub own: IpNet,
    /// The cluster network of this family.
    pub network: IpNet,
    /// The peers.
    pub peers: Vec<PeerRoute>,
}

/// What one reconciliation left in one family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyResult {
    /// What failed.
    pub errors: Vec<String>,
    /// Peers with no public address in this family.
    pub no_common_underlay: Vec<String>,
    /// Peers refused: not on our L2 network (`key (address)`).
    pub not_on_link: Vec<String>,
    /// Peers routed.
    pub peers: usize,
    /// Their subnets.
    pub routed: Vec<IpNet>,
    /// Operations sent to the kernel.
    pub applied: usize,
    /// Those the kernel refused.
    pub failed: usize,
}

fn on_link(ip: IpAddr, underlay_addrs: &[IpNet]) -> bool {
    underlay_addrs.iter().any(|a| a.trunc().contains(&ip))
}

/// Runs one reconciliation of every family in `want`; `Err` only when the underlay cannot
/// be read at all.
pub fn reconcile(
    dp: &impl Datapath,
    underlay: &str,
    want: &[FamilyWant],
    prune: bool,
) -> Result<BTreeMap<Fam, FamilyResult>, String> {
    let (ul_index, ul_addrs) = dp.underlay(underlay).map_err(|e| format!("the underlay interface: {e}"))?;
    let mut out = BTreeMap::new();
    for fam in want {
        let mut r = FamilyResult::default();
        if let Err(e) = family(dp, fam, ul_index, &ul_addrs, prune, &mut r) {
            r.errors.push(e);
        }
        out.insert(fam.fam, r);
    }
    Ok(out)
}

fn family(
    dp: &impl Datapath,
    fam: &FamilyWant,
    ul_index: u32,
    ul_addrs: &[IpNet],
    prune: bool,
    r: &mut FamilyResult,
) -> Result<(), String> {
    let v6 = fam.fam == Fam::V6;
    let (lo, lo_addrs) = dp.underlay(LOOPBACK).map_err(|e| format!("the loopback device: {e}"))?;
    let own_addr = IpNet::new(first_addr(&fam.own), fam.own.max_prefix_len()).expect("host prefix");
    for stale in lo_addrs.iter().filter(|a| fam.network.contains(&a.addr()) && **a != own_addr) {
        dp.del_address(lo, *stale).map_err(|e| format!("removing stale address {stale}: {e}"))?;
    }
    dp.ensure_address(lo, own_addr).map_err(|e| format!("adding our address {own_addr}: {e}"))?;

    let have: Vec<Route> = dp
        .routes(v6)
        .map_err(|e| format!("reading routes: {e}"))?
        .into_iter()
        .filter(|h| {
            fam.network.contains(&h.dst.network())
                && h.dst != fam.network
                && h.oif == Some(ul_index)
                && h.gateway.is_some()
        })
        .collect();
    let mut wanted = Vec::new();
    for p in &fam.peers {
        // Defense in depth: whatever the store says, our own subnet is never a peer's.
        if p.subnet.contains(&fam.own.network()) || fam.own.contains(&p.subnet.network()) {
            continue;
        }
        let Some(via) = p.via else {
            r.no_common_underlay.push(p.key.clone());
            continue;
        };
        if !on_link(via, ul_addrs) {
            r.not_on_link.push(format!("{} ({via})", p.key));
            continue;
        }
        r.peers += 1;
        r.routed.push(p.subnet);
        wanted.push(Route::new(p.subnet, Some(via), Some(ul_index)));
    }
    let same = |a: &Route, b: &Route| a.dst == b.dst && a.gateway == b.gateway && a.oif == b.oif;
    let mut ops: Vec<OverlayOp> = wanted
        .iter()
        .filter(|w| !have.iter().any(|h| same(h, w)))
        .map(|w| OverlayOp::SetRoute(w.clone()))
        .collect();
    if prune {
        for h in have.iter().filter(|h| !wanted.iter().any(|w| same(h, w))) {
            let mut d = Route::new(h.dst, h.gateway, h.oif);
            d.table = h.table;
            ops.push(OverlayOp::DelRoute(d));
        }
    }
    r.applied = ops.len();
    for (op, e) in dp.apply(ops) {
        r.failed += 1;
        let what = match &op {
            OverlayOp::SetRoute(x) => {
                format!("route to {} via {}", x.dst, x.gateway.map(|g| g.to_string()).unwrap_or_default())
            }
            OverlayOp::DelRoute(x) => format!("removing route to {}", x.dst),
            other => format!("{other:?}"),
        };
        r.errors.push(format!("{what}: {e}"));
    }
    Ok(())
}

/// The host-gw datapath.
pub struct HostGwBackend {
    settings: HostGwSettings,
    own: Option<SubnetKey>,
    synced: bool,
    nl: Option<Netlink>,
    health: Vec<FamilyHealth>,
    /// The kernel operations of the last reconciliation.
    ops: KernelOps,
    /// Refused peers already logged (logged again only when the set changes).
    logged_far: BTreeMap<Fam, Vec<String>>,
    /// Peers without an underlay address of a family already logged (likewise).
    logged_none: BTreeMap<Fam, Vec<String>>,
    /// Per family, our subnet and the peer subnets routed by the last reconciliation.
    routed: BTreeMap<Fam, (IpNet, Vec<IpNet>)>,
}

impl HostGwBackend {
    /// A backend that has seen nothing yet.
    pub fn new(settings: HostGwSettings) -> Self {
        HostGwBackend {
            settings,
            own: None,
            synced: false,
            nl: None,
            health: Vec::new(),
            ops: KernelOps::default(),
            logged_far: BTreeMap::new(),
            logged_none: BTreeMap::new(),
            routed: BTreeMap::new(),
        }
    }

    fn want(&self, peers: &PeerSet) -> Vec<FamilyWant> {
        let s = &self.settings;
        let Some(own) = &self.own else { return Vec::new() };
        let mut out = Vec::new();
        for (fam, subnet, network) in [
            (Fam::V4, own.ipv4.map(IpNet::V4), s.network),
            (Fam::V6, own.ipv6.map(IpNet::V6), s.ipv6_network),
        ] {
            let (Some(subnet), Some(network)) = (subnet, network) else { continue };
            // A next hop of the route's own family, and only if this node has that family
            // on its underlay too.
            let ours = if fam == Fam::V6 { s.public_ipv6 } else { s.public_ip };
            let peers = peers
                .values()
                .filter_map(|p| {
                    let f = if fam == Fam::V6 { p.v6 } else { p.v4 }?;
                    let via = if fam == Fam::V6 {
                        p.attrs.public_ipv6.map(IpAddr::V6)
                    } else {
                        p.attrs.public_ip.map(IpAddr::V4)
                    };
                    Some(PeerRoute {
                        key: p.key.to_string(),
                        subnet: f.subnet,
                        via: via.filter(|_| ours.is_some()),
                    })
                })
                .collect();
            out.push(FamilyWant { fam, own: subnet.trunc(), network, peers });
        }
        out
    }

    fn rules(&self) -> Option<NodeRules> {
        let s = &self.settings;
        Some(node_rules(self.own.as_ref()?, s.network, s.ipv6_network, s.ip_masq))
    }

    fn run(
        &mut self,
        peers: &PeerSet,
    ) -> Result<(BTreeMap<Fam, FamilyResult>, Option<String>), BackendError> {
        let want = self.want(peers);
        let rules = self.rules();
        if self.nl.is_none() {
            self.nl = Some(Netlink::current().map_err(|e| BackendError(format!("opening netlink: {e}")))?);
        }
        let nl = self.nl.as_ref().expect("opened above");
        let underlay = self.settings.underlay.clone();
        let prune = self.synced;
        crate::kernel::blocking(|| {
            let out = reconcile(&crate::vxlan::Kernel(nl), &underlay, &want, prune).map_err(BackendError)?;
            let rules = match rules.as_ref().map(NodeRules::ensure) {
                Some(Err(e)) => Some(format!("applying the masquerade and forward rules: {e}")),
                _ => None,
            };
            Ok((out, rules))
        })
    }
}

#[async_trait]
impl Backend for HostGwBackend {
    fn backend_type(&self) -> &'static str {
        BACKEND_TYPE
    }

    fn lease_data(&self) -> Value {
        Value::Null
    }

    fn echo_targets(&self, _peers: &PeerSet) -> Vec<EchoTarget> {
        // From our first address to each routed peer's, in the families programmed whole.
        let healthy = |f: Fam| self.health.iter().any(|h| h.family == f.name() && h.errors.is_empty());
        self.routed
            .iter()
            .filter(|(f, _)| healthy(**f))
            .flat_map(|(_, (own, subnets))| {
                let src = first_addr(own);
                subnets.iter().map(move |s| EchoTarget { src: Some(src), dst: first_addr(s) })
            })
            .collect()
    }

    fn families(&self) -> Vec<FamilyHealth> {
        self.health.clone()
    }

    fn last_kernel_ops(&self) -> KernelOps {
        self.ops
    }

    async fn apply(&mut self, event: &BackendEvent, peers: &PeerSet) -> Result<(), BackendError> {
        self.ops = KernelOps::default();
        match event {
            BackendEvent::OwnLease(l) => self.own = Some(l.key),
            BackendEvent::Synced => self.synced = true,
            BackendEvent::Peers(_) | BackendEvent::Resync => {}
        }
        if self.own.is_none() {
            return Ok(());
        }
        let own_nets: BTreeMap<Fam, IpNet> = self.want(peers).iter().map(|f| (f.fam, f.own)).collect();
        let (out, rules_error) = match self.run(peers) {
            Ok(r) => r,
            Err(e) => {
                let fams = [(Fam::V4, self.settings.network), (Fam::V6, self.settings.ipv6_network)];
                self.health = fams
                    .iter()
                    .filter(|(_, n)| n.is_some())
                    .map(|(f, _)| FamilyHealth {
                        family: f.name(),
                        errors: vec![e.0.clone()],
                        ..Default::default()
                    })
                    .collect();
                return Err(e);
            }
        };
        let mut applied = 0;
        let mut failed = 0;
        self.routed =
            out.iter().filter_map(|(f, r)| Some((*f, (*own_nets.get(f)?, r.routed.clone())))).collect();
        self.health = out
            .iter()
            .map(|(f, r)| {
                applied += r.applied;
                failed += r.failed;
                if !r.errors.is_empty() {
                    tracing::warn!(family = f.name(), errors = %r.errors.join("; "), "part of the datapath failed; the next reconciliation retries it");
                }
                if self.logged_far.get(f) != Some(&r.not_on_link) {
                    if !r.not_on_link.is_empty() {
                        tracing::warn!(
                            family = f.name(),
                            peers = %r.not_on_link.join(", "),
                            "host-gw refuses peers whose public address is not on this node's L2 network \
                             (no connected prefix of the underlay holds it): no route to their pods"
                        );
                    }
                    self.logged_far.insert(*f, r.not_on_link.clone());
                }
                if self.logged_none.get(f) != Some(&r.no_common_underlay) {
                    if !r.no_common_underlay.is_empty() {
                        tracing::warn!(
                            family = f.name(),
                            peers = %r.no_common_underlay.join(", "),
                            "host-gw carries each pod family only over the same underlay family, and this \
                             node or these peers have no underlay address of it: no route to their pods \
                             in this family (vxlan carries it over the other family)"
                        );
                    }
                    self.logged_none.insert(*f, r.no_common_underlay.clone());
                }
                let mut errors = r.errors.clone();
                errors.extend(rules_error.clone());
                FamilyHealth {
                    family: f.name(),
                    peers: r.peers,
                    errors,
                    no_common_underlay: r.no_common_underlay.clone(),
                    not_on_link: r.not_on_link.clone(),
                }
            })
            .collect();
        self.ops = KernelOps { applied, failed };
        if applied > 0 {
            tracing::info!(changes = applied, peers = peers.len(), "host-gw routes reconciled");
        }
        let all_failed = !self.health.is_empty() && self.health.iter().all(|h| !h.errors.is_empty());
        if all_failed {
            let why: Vec<String> =
                self.health.iter().map(|h| format!("{}: {}", h.family, h.errors.join("; "))).collect();
            return Err(BackendError(why.join(" | ")));
        }
        Ok(())
    }
}
