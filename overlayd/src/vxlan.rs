//! The VXLAN backend: one device per family (`flannel.<VNI>`, `flannel-v6.<VNI>`, so a node
//! can move over from flannel), and per remote node a permanent neighbour entry, an FDB
//! entry and an on-link route (or a plain route with `DirectRouting` on a shared L2).
//!
//! Every batch, and a periodic timer, runs the same reconciliation: read the kernel, diff
//! against what the leases say, apply the difference in one batch. Entries of nodes that
//! left while the daemon was down, and FDB entries of a peer's old MAC, are removed: both
//! leak in flannel. Nothing is removed before the first full peer listing has arrived, so a
//! restart does not blip the datapath.

use std::collections::BTreeSet;
use std::net::IpAddr;

use async_trait::async_trait;
use ipnet::IpNet;
use netkernel::Netlink;
use netkernel::link::Mac;
use netkernel::nodenat::{FamilyNets, NodeRules};
use netkernel::overlay::{FdbEntry, Neighbour, OverlayOp, VxlanSpec};
use netkernel::probe::EchoTarget;
use netkernel::route::Route;
use serde_json::Value;

use crate::attrs::{VxlanData, format_mac};
use crate::backend::{Backend, BackendError, BackendEvent};
use crate::encryption::routes::{SharedRoutes, TunnelRoutes};
use crate::peer::PeerSet;
use crate::subnet::SubnetKey;

/// The nft table holding the node's masquerade and forward rules.
pub const RULES_TABLE: &str = "ferrocni_overlay";

/// The kernel's VXLAN port (flannel's default).
pub const DEFAULT_PORT: u16 = 8472;

/// The IPv6 device's MAC, derived from the IPv4 one so it is as stable as that.
pub fn v6_mac(mut mac: Mac) -> Mac {
    mac[1] ^= 0x80;
    mac
}

/// Encapsulation overhead over an IPv4 underlay (outer IPv4 + UDP + VXLAN + inner Ethernet).
pub const V4_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay.
pub const V6_OVERHEAD: u32 = 70;

/// What the backend is configured with.
#[derive(Debug, Clone)]
pub struct VxlanSettings {
    /// VNI.
    pub vni: u32,
    /// UDP port.
    pub port: u16,
    /// Plain routes to peers on the same L2.
    pub direct_routing: bool,
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
    /// The VTEP MAC of the IPv4 device (kept in the state directory).
    pub mac: Mac,
    /// The VTEP MAC of the IPv6 device.
    pub mac_v6: Mac,
    /// Device MTU.
    pub mtu: u32,
    /// Masquerade pod traffic leaving the cluster.
    pub ip_masq: bool,
}

/// The VXLAN datapath.
pub struct VxlanBackend {
    settings: VxlanSettings,
    own: Option<SubnetKey>,
    synced: bool,
    tunnel: Option<SharedRoutes>,
    /// The reconciler's netlink handle, opened on first use and kept.
    nl: Option<Netlink>,
}

impl VxlanBackend {
    /// A backend that has seen nothing yet.
    pub fn new(settings: VxlanSettings) -> Self {
        VxlanBackend { settings, own: None, synced: false, tunnel: None, nl: None }
    }

    /// Routes the subnets the encryption controller names into its tunnel instead.
    pub fn with_tunnel_routes(mut self, routes: SharedRoutes) -> Self {
        self.tunnel = Some(routes);
        self
    }

    fn desired(&self, peers: &PeerSet) -> Vec<Family> {
        let s = &self.settings;
        let Some(own) = &self.own else { return Vec::new() };
        let mut out = Vec::new();
        let families = [
            (own.ipv4.map(IpNet::V4), s.network, s.public_ip, s.mac, "flannel", false),
            (
                own.ipv6.map(IpNet::V6),
                s.ipv6_network,
                s.public_ipv6.or(s.public_ip),
                s.mac_v6,
                "flannel-v6",
                true,
            ),
        ];
        for (subnet, network, local, mac, prefix, v6) in families {
            let (Some(subnet), Some(network), Some(local)) = (subnet, network, local) else { continue };
            // Peers come validated and typed (crate::attrs): VNI, MAC and address checked once.
            let peers = peers
                .values()
                .filter_map(|p| if v6 { p.v6 } else { p.v4 })
                .filter(|f| {
                    // Defense in depth: whatever the store says, our own subnet is never a peer's.
                    !(f.subnet.contains(&subnet.network()) || subnet.contains(&f.subnet.network()))
                })
                .map(|f| PeerEntry { subnet: f.subnet, mac: f.vtep_mac, public: f.public })
                .collect();
            let spec_mtu =
                if local.is_ipv6() { s.mtu.saturating_sub(V6_OVERHEAD - V4_OVERHEAD) } else { s.mtu };
            out.push(Family {
                spec: VxlanSpec {
                    name: format!("{prefix}.{}", s.vni),
                    vni: s.vni,
                    port: s.port,
                    local,
                    dev: 0,
                    mtu: spec_mtu,
                    mac,
                },
                own: subnet.trunc(),
                network,
                peers,
            });
        }
        out
    }

    fn rules(&self) -> Option<NodeRules> {
        let own = self.own.as_ref()?;
        let s = &self.settings;
        let v4 = match (s.network, own.ipv4) {
            (Some(network), Some(pods)) => Some(FamilyNets { network, pods: IpNet::V4(pods) }),
            _ => None,
        };
        let v6 = match (s.ipv6_network, own.ipv6) {
            (Some(network), Some(pods)) => Some(FamilyNets { network, pods: IpNet::V6(pods) }),
            _ => None,
        };
        Some(NodeRules { table: RULES_TABLE.into(), v4, v6, masquerade: s.ip_masq, forward: true })
    }

    /// Runs a full reconciliation (netlink calls block: `crate::kernel`).
    fn reconcile(&mut self, peers: &PeerSet) -> Result<Report, BackendError> {
        let families = self.desired(peers);
        let rules = self.rules();
        let direct = self.settings.direct_routing;
        let prune = self.synced;
        let tunnel = self.tunnel.as_ref().and_then(|t| t.read().ok().map(|t| t.clone())).unwrap_or_default();
        if self.nl.is_none() {
            self.nl = Some(Netlink::current().map_err(|e| BackendError(format!("opening netlink: {e}")))?);
        }
        let nl = self.nl.as_ref().expect("opened above");
        let underlay = &self.settings.underlay;
        crate::kernel::blocking(|| reconcile(nl, underlay, &families, rules.as_ref(), direct, prune, &tunnel))
    }
}

/// One family's desired state.
#[derive(Debug, Clone)]
struct Family {
    spec: VxlanSpec,
    own: IpNet,
    network: IpNet,
    peers: Vec<PeerEntry>,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    subnet: IpNet,
    mac: Mac,
    public: IpAddr,
}

/// What a reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Operations sent to the kernel.
    pub applied: usize,
    /// Operations that failed (logged).
    pub failed: usize,
    /// Whether the rules were rewritten.
    pub rules_written: bool,
}

fn first_addr(net: &IpNet) -> IpAddr {
    net.network()
}

fn on_same_l2(public: IpAddr, underlay_addrs: &[IpNet]) -> bool {
    underlay_addrs.iter().any(|a| a.contains(&public))
}

fn reconcile(
    nl: &Netlink,
    underlay: &str,
    families: &[Family],
    rules: Option<&NodeRules>,
    direct_routing: bool,
    prune: bool,
    tunnel: &TunnelRoutes,
) -> Result<Report, BackendError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: netkernel::KernelError| BackendError(format!("{what}: {e}"))
    };
    let ul = nl.require_link(underlay).map_err(err("finding the underlay interface"))?;
    let ul_addrs = nl.addresses(ul.index).map_err(err("reading the underlay addresses"))?;
    let mut ops = Vec::new();
    for fam in families {
        let mut spec = fam.spec.clone();
        spec.dev = ul.index;
        let (dev, replaced) = nl.ensure_vxlan(&spec).map_err(err("setting up the VXLAN device"))?;
        if let Some(why) = replaced {
            tracing::warn!(device = %spec.name, reason = %why, "replaced an incompatible VXLAN device");
        }
        // The UDP checksum bug (kubernetes#92035) comes from NATing the VXLAN packet a second
        // time; the masquerade rules return kube-proxy-marked packets, so it cannot happen and
        // transmit checksum offload stays on (turning it off cost 3x throughput here:
        // docs/benchmarks.md).
        let dev_name = dev.name.clone();
        let _ = netkernel::sysctl::write(&format!("net/ipv6/conf/{dev_name}/accept_ra"), "0");

        // Our address: the subnet's first address as a /32 (/128), nothing else of the network.
        let own_addr = IpNet::new(first_addr(&fam.own), fam.own.max_prefix_len()).expect("host prefix");
        let addrs = nl.addresses(dev.index).map_err(err("reading the VXLAN device's addresses"))?;
        for stale in addrs.iter().filter(|a| **a != own_addr && fam.network.contains(&a.addr())) {
            nl.del_address(dev.index, *stale).map_err(err("removing a stale address"))?;
        }
        nl.ensure_address(dev.index, own_addr).map_err(err("adding our address to the VXLAN device"))?;

        let v6 = fam.own.addr().is_ipv6();
        let have_neigh: BTreeSet<Neighbour> = nl
            .neighbours(dev.index)
            .map_err(err("reading neighbours"))?
            .into_iter()
            .filter(|n| n.ip.is_ipv6() == v6)
            .collect();
        let have_fdb: BTreeSet<FdbEntry> = nl
            .fdb(dev.index)
            .map_err(err("reading the FDB"))?
            .into_iter()
            .filter(|f| !f.dst.is_unspecified() && f.mac != [0; 6])
            .collect();
        let routes = nl.routes(v6, None).map_err(err("reading routes"))?;
        let have_routes: Vec<Route> = routes
            .into_iter()
            .filter(|r| fam.network.contains(&r.dst.network()) && r.dst != fam.network)
            .filter(|r| {
                r.oif == Some(dev.index)
                    || (r.oif == Some(ul.index) && r.gateway.is_some())
                    || tunnel.is_tunnel(r.oif)
            })
            .collect();

        let mut want_neigh = BTreeSet::new();
        let mut want_fdb = BTreeSet::new();
        let mut want_routes = Vec::new();
        for p in &fam.peers {
            let vtep = first_addr(&p.subnet);
            if let Some(tun) = tunnel.via_tunnel(&p.subnet) {
                // Encrypted: the route points into the tunnel; the neighbour and FDB entries
                // stay so that moving back to VXLAN is one route replace.
                want_neigh.insert(Neighbour { ip: vtep, mac: p.mac });
                want_fdb.insert(FdbEntry { mac: p.mac, dst: p.public });
                let mut r = Route::new(p.subnet, None, Some(tun));
                r.scope = Some(253);
                want_routes.push(r);
                continue;
            }
            if direct_routing && on_same_l2(p.public, &ul_addrs) {
                want_routes.push(Route::new(p.subnet, Some(p.public), Some(ul.index)));
                continue;
            }
            want_neigh.insert(Neighbour { ip: vtep, mac: p.mac });
            want_fdb.insert(FdbEntry { mac: p.mac, dst: p.public });
            let mut r = Route::new(p.subnet, Some(vtep), Some(dev.index));
            r.onlink = true;
            want_routes.push(r);
        }
        // Order within the batch does not matter to the kernel: the route's next hop is
        // on-link, and its neighbour entry is permanent once set.
        for n in want_neigh.difference(&have_neigh) {
            ops.push(OverlayOp::SetNeighbour(dev.index, *n));
        }
        for f in want_fdb.difference(&have_fdb) {
            ops.push(OverlayOp::SetFdb(dev.index, *f));
        }
        for r in &want_routes {
            let present =
                have_routes.iter().any(|h| h.dst == r.dst && h.gateway == r.gateway && h.oif == r.oif);
            if !present {
                ops.push(OverlayOp::SetRoute(r.clone()));
            }
        }
        if prune {
            let want_ips: BTreeSet<IpAddr> = want_neigh.iter().map(|n| n.ip).collect();
            for n in have_neigh.iter().filter(|n| !want_neigh.contains(n)) {
                // A changed MAC is replaced above; delete only neighbours of nodes gone.
                if !want_ips.contains(&n.ip) {
                    ops.push(OverlayOp::DelNeighbour(dev.index, n.ip));
                }
            }
            for f in have_fdb.difference(&want_fdb) {
                ops.push(OverlayOp::DelFdb(dev.index, *f));
            }
            for h in &have_routes {
                let wanted =
                    want_routes.iter().any(|r| r.dst == h.dst && r.gateway == h.gateway && r.oif == h.oif);
                if !wanted {
                    let mut r = Route::new(h.dst, h.gateway, h.oif);
                    r.table = h.table;
                    ops.push(OverlayOp::DelRoute(r));
                }
            }
        }
    }
    let applied = ops.len();
    let failures = nl.apply_overlay(ops);
    for (op, e) in &failures {
        tracing::warn!(?op, error = %e, "overlay change failed; the next reconciliation retries it");
    }
    let rules_written = match rules {
        Some(r) => r.ensure().map_err(err("applying the masquerade and forward rules"))?,
        None => false,
    };
    Ok(Report { applied, failed: failures.len(), rules_written })
}

#[async_trait]
impl Backend for VxlanBackend {
    fn backend_type(&self) -> &'static str {
        "vxlan"
    }

    fn lease_data(&self) -> Value {
        VxlanData { vni: self.settings.vni, vtep_mac: self.settings.mac }.to_value()
    }

    fn lease_v6_data(&self) -> Value {
        if self.settings.ipv6_network.is_some() {
            VxlanData { vni: self.settings.vni, vtep_mac: self.settings.mac_v6 }.to_value()
        } else {
            Value::Null
        }
    }

    fn echo_targets(&self, peers: &PeerSet) -> Vec<EchoTarget> {
        // Our VTEP address to theirs: the first address of each subnet, on the VXLAN devices
        // (or the tunnel's, which holds the same address).
        self.desired(peers)
            .iter()
            .flat_map(|fam| {
                let src = first_addr(&fam.own);
                fam.peers.iter().map(move |p| EchoTarget { src: Some(src), dst: first_addr(&p.subnet) })
            })
            .collect()
    }

    async fn apply(&mut self, event: &BackendEvent, peers: &PeerSet) -> Result<(), BackendError> {
        match event {
            BackendEvent::OwnLease(l) => self.own = Some(l.key),
            BackendEvent::Synced => self.synced = true,
            // The peer set already holds the changes; every batch reconciles all of it.
            BackendEvent::Peers(_) | BackendEvent::Resync => {}
        }
        if self.own.is_none() {
            return Ok(());
        }
        let report = self.reconcile(peers)?;
        if report.failed > 0 {
            return Err(BackendError(format!(
                "{} of {} overlay changes failed (logged above)",
                report.failed, report.applied
            )));
        }
        if report.applied > 0 || report.rules_written {
            tracing::info!(
                changes = report.applied,
                failed = report.failed,
                rules_written = report.rules_written,
                peers = peers.len(),
                mac = %format_mac(&self.settings.mac),
                "datapath reconciled"
            );
        }
        Ok(())
    }
}
