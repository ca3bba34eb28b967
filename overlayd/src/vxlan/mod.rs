//! The VXLAN backend: one device per underlay family (`flannel.<VNI>` on IPv4,
//! `flannel-v6.<VNI>` on IPv6, flannel's names, so a node can move over from flannel), each
//! carrying pods of either family, and per remote node a permanent neighbour entry, an FDB
//! entry and an on-link route (or a plain route with `DirectRouting` on a shared L2).
//! Why one device per underlay family, and how the families are kept apart: [`reconcile`].
//!
//! Every batch, and a periodic timer, runs the same reconciliation: read the kernel, diff
//! against what the leases say, apply the difference. Entries of nodes that left while the
//! daemon was down, and FDB entries of a peer's old MAC, are removed: both leak in flannel.
//! Nothing is removed before the first full peer listing has arrived, so a restart does not
//! blip the datapath.

pub mod reconcile;

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
use crate::backend::{Backend, BackendError, BackendEvent, FamilyHealth, KernelOps};
use crate::encryption::routes::SharedRoutes;
use crate::peer::{Outer, PeerSet};
use crate::subnet::SubnetKey;
use reconcile::{Datapath, Desired, DeviceWant, Fam, InnerWant, Outcome, PeerWant, first_addr};

/// The nft table holding the node's masquerade and forward rules.
pub const RULES_TABLE: &str = "ferrocni_overlay";

/// The node's forwarding and masquerade rules for its own subnet(s) in the cluster's
/// network(s), per family where both exist (the same for every backend).
pub(crate) fn node_rules(
    own: &SubnetKey,
    network: Option<IpNet>,
    ipv6_network: Option<IpNet>,
    ip_masq: bool,
) -> NodeRules {
    let v4 = match (network, own.ipv4) {
        (Some(network), Some(pods)) => Some(FamilyNets { network, pods: IpNet::V4(pods) }),
        _ => None,
    };
    let v6 = match (ipv6_network, own.ipv6) {
        (Some(network), Some(pods)) => Some(FamilyNets { network, pods: IpNet::V6(pods) }),
        _ => None,
    };
    NodeRules { table: RULES_TABLE.into(), v4, v6, masquerade: ip_masq, forward: true }
}

/// The kernel's VXLAN port (flannel's default).
pub const DEFAULT_PORT: u16 = 8472;

/// The IPv6-underlay device's MAC, derived from the IPv4 one so it is as stable as that.
pub fn v6_mac(mut mac: Mac) -> Mac {
    mac[1] ^= 0x80;
    mac
}

/// Encapsulation overhead over an IPv4 underlay (outer IPv4 + UDP + VXLAN + inner Ethernet).
pub const V4_OVERHEAD: u32 = 50;
/// The same over an IPv6 underlay.
pub const V6_OVERHEAD: u32 = 70;

/// The device name for underlay family `outer`.
pub fn device_name(outer: Fam, vni: u32) -> String {
    match outer {
        Fam::V4 => format!("flannel.{vni}"),
        Fam::V6 => format!("flannel-v6.{vni}"),
    }
}

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
    /// The VTEP MAC of the IPv4-underlay device (kept in the state directory).
    pub mac: Mac,
    /// The VTEP MAC of the IPv6-underlay device.
    pub mac_v6: Mac,
    /// Device MTU (the pod MTU, which fits the larger overhead of the underlay families in use).
    pub mtu: u32,
    /// Masquerade pod traffic leaving the cluster.
    pub ip_masq: bool,
}

impl VxlanSettings {
    fn outer(&self) -> Outer {
        Outer { v4: self.public_ip.is_some(), v6: self.public_ipv6.is_some() }
    }
}

/// The VXLAN datapath.
pub struct VxlanBackend {
    settings: VxlanSettings,
    own: Option<SubnetKey>,
    synced: bool,
    tunnel: Option<SharedRoutes>,
    /// The reconciler's netlink handle, opened on first use and kept.
    nl: Option<Netlink>,
    /// What the last reconciliation left, per family.
    health: Vec<FamilyHealth>,
    /// The kernel operations of the last reconciliation.
    ops: KernelOps,
}

impl VxlanBackend {
    /// A backend that has seen nothing yet.
    pub fn new(settings: VxlanSettings) -> Self {
        VxlanBackend {
            settings,
            own: None,
            synced: false,
            tunnel: None,
            nl: None,
            health: Vec::new(),
            ops: KernelOps::default(),
        }
    }

    /// Routes the subnets the encryption controller names into its tunnel instead.
    pub fn with_tunnel_routes(mut self, routes: SharedRoutes) -> Self {
        self.tunnel = Some(routes);
        self
    }

    fn devices(&self) -> (Vec<DeviceWant>, Vec<String>) {
        let s = &self.settings;
        let mut want = Vec::new();
        let mut absent = Vec::new();
        for (outer, local, mac) in [(Fam::V4, s.public_ip, s.mac), (Fam::V6, s.public_ipv6, s.mac_v6)] {
            let name = device_name(outer, s.vni);
            match local {
                Some(local) => want.push(DeviceWant {
                    outer,
                    spec: VxlanSpec { name, vni: s.vni, port: s.port, local, dev: 0, mtu: s.mtu, mac },
                }),
                None => absent.push(name),
            }
        }
        (want, absent)
    }

    fn inner(&self, peers: &PeerSet) -> Vec<InnerWant> {
        let s = &self.settings;
        let Some(own) = &self.own else { return Vec::new() };
        let outer = s.outer();
        let mut out = Vec::new();
        for (fam, subnet, network) in [
            (Fam::V4, own.ipv4.map(IpNet::V4), s.network),
            (Fam::V6, own.ipv6.map(IpNet::V6), s.ipv6_network),
        ] {
            let (Some(subnet), Some(network)) = (subnet, network) else { continue };
            // Peers come validated and typed (crate::attrs): VNI, MAC and address checked once.
            let peers = peers
                .values()
                .filter_map(|p| {
                    let f = if fam == Fam::V6 { p.v6 } else { p.v4 }?;
                    // Defense in depth: whatever the store says, our own subnet is never a peer's.
                    if f.subnet.contains(&subnet.network()) || subnet.contains(&f.subnet.network()) {
                        return None;
                    }
                    let path = p.outer_for(fam == Fam::V6, outer);
                    Some(PeerWant { key: p.key.to_string(), subnet: f.subnet, path })
                })
                .collect();
            out.push(InnerWant { fam, own: subnet.trunc(), network, peers });
        }
        out
    }

    fn rules(&self) -> Option<NodeRules> {
        let s = &self.settings;
        Some(node_rules(self.own.as_ref()?, s.network, s.ipv6_network, s.ip_masq))
    }

    /// Runs a full reconciliation (netlink calls block: `crate::kernel`).
    fn reconcile(&mut self, peers: &PeerSet) -> Result<(Outcome, Option<String>), BackendError> {
        let (devices, absent) = self.devices();
        let inner = self.inner(peers);
        let rules = self.rules();
        let tunnel = self.tunnel.as_ref().and_then(|t| t.read().ok().map(|t| t.clone())).unwrap_or_default();
        if self.nl.is_none() {
            self.nl = Some(Netlink::current().map_err(|e| BackendError(format!("opening netlink: {e}")))?);
        }
        let nl = self.nl.as_ref().expect("opened above");
        let want = Desired {
            underlay: &self.settings.underlay,
            devices,
            absent,
            inner,
            direct_routing: self.settings.direct_routing,
            prune: self.synced,
            tunnel: &tunnel,
        };
        crate::kernel::blocking(|| {
            let outcome = reconcile::reconcile(&Kernel(nl), &want).map_err(BackendError)?;
            for f in want.inner.iter().map(|f| f.fam) {
                if let Some(o) = outcome.families.get(&f).filter(|o| !o.errors.is_empty()) {
                    tracing::warn!(family = f.name(), errors = %o.errors.join("; "), "part of the datapath failed; the next reconciliation retries it");
                }
            }
            // The rules hold both families in one table: one transaction for both.
            let rules = match rules.as_ref().map(NodeRules::ensure) {
                Some(Err(e)) => Some(format!("applying the masquerade and forward rules: {e}")),
                _ => None,
            };
            Ok((outcome, rules))
        })
    }
}

/// The kernel, through netlink (host-gw uses the same operations).
pub(crate) struct Kernel<'a>(pub(crate) &'a Netlink);

impl Datapath for Kernel<'_> {
    fn underlay(&self, name: &str) -> Result<(u32, Vec<IpNet>), String> {
        let l = self.0.require_link(name).map_err(|e| e.to_string())?;
        Ok((l.index, self.0.addresses(l.index).map_err(|e| e.to_string())?))
    }

    fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(u32, Option<String>), String> {
        let (link, replaced) = self.0.ensure_vxlan(spec).map_err(|e| e.to_string())?;
        // Router advertisements have no business on an overlay device, and duplicate address
        // detection would hold our VTEP address tentative (unusable) for a second or two:
        // the address is ours by lease.
        let _ = netkernel::sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", link.name), "0");
        let _ = netkernel::sysctl::write(&format!("net/ipv6/conf/{}/accept_dad", link.name), "0");
        Ok((link.index, replaced))
    }

    fn remove_device(&self, name: &str) -> Result<(), String> {
        match self.0.link(name).map_err(|e| e.to_string())? {
            Some(l) if l.kind.as_deref() == Some("vxlan") => {
                self.0.delete_link(l.index).map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }

    fn addresses(&self, index: u32) -> Result<Vec<IpNet>, String> {
        self.0.addresses(index).map_err(|e| e.to_string())
    }

    fn del_address(&self, index: u32, addr: IpNet) -> Result<(), String> {
        self.0.del_address(index, addr).map_err(|e| e.to_string())
    }

    fn ensure_address(&self, index: u32, addr: IpNet) -> Result<(), String> {
        self.0.ensure_address(index, addr).map_err(|e| e.to_string())
    }

    fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, String> {
        self.0.neighbours(index).map_err(|e| e.to_string())
    }

    fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, String> {
        self.0.fdb(index).map_err(|e| e.to_string())
    }

    fn routes(&self, v6: bool) -> Result<Vec<Route>, String> {
        self.0.routes(v6, None).map_err(|e| e.to_string())
    }

    fn apply(&self, ops: Vec<OverlayOp>) -> Vec<(OverlayOp, String)> {
        self.0.apply_overlay(ops).into_iter().map(|(op, e)| (op, e.to_string())).collect()
    }
}

#[async_trait]
impl Backend for VxlanBackend {
    fn backend_type(&self) -> &'static str {
        "vxlan"
    }

    fn lease_data(&self) -> Value {
        // The IPv4-underlay device's; on an IPv6-only underlay the IPv6 one's (readers that
        // only look at BackendData find it there too).
        let s = &self.settings;
        let mac = if s.public_ip.is_some() || s.public_ipv6.is_none() { s.mac } else { s.mac_v6 };
        VxlanData { vni: s.vni, vtep_mac: mac }.to_value()
    }

    fn lease_v6_data(&self) -> Value {
        // The IPv6-underlay device's, whatever the pods' families.
        if self.settings.public_ipv6.is_some() {
            VxlanData { vni: self.settings.vni, vtep_mac: self.settings.mac_v6 }.to_value()
        } else {
            Value::Null
        }
    }

    fn echo_targets(&self, peers: &PeerSet) -> Vec<EchoTarget> {
        // Our VTEP address to theirs: the first address of each subnet, on the VXLAN devices
        // (or the tunnel's, which holds the same address); only in the families that are
        // programmed, and to peers reachable over a common underlay family.
        let healthy = |f: Fam| self.health.iter().any(|h| h.family == f.name() && h.errors.is_empty());
        self.inner(peers)
            .iter()
            .filter(|fam| healthy(fam.fam))
            .flat_map(|fam| {
                let src = first_addr(&fam.own);
                fam.peers
                    .iter()
                    .filter(|p| p.path.is_some())
                    .map(move |p| EchoTarget { src: Some(src), dst: first_addr(&p.subnet) })
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
            // The peer set already holds the changes; every batch reconciles all of it.
            BackendEvent::Peers(_) | BackendEvent::Resync => {}
        }
        if self.own.is_none() {
            return Ok(());
        }
        let (outcome, rules_error) = match self.reconcile(peers) {
            Ok(r) => r,
            Err(e) => {
                // Nothing could be done: every family is down for the same reason.
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
        self.health = outcome
            .families
            .iter()
            .map(|(f, o)| {
                let mut errors = o.errors.clone();
                errors.extend(rules_error.clone());
                FamilyHealth {
                    family: f.name(),
                    peers: o.peers,
                    errors,
                    no_common_underlay: o.no_common_underlay.clone(),
                    ..Default::default()
                }
            })
            .collect();
        self.ops = KernelOps { applied: outcome.applied, failed: outcome.failed };
        if outcome.applied > 0 {
            tracing::info!(
                changes = outcome.applied,
                failed = outcome.failed,
                peers = peers.len(),
                mac = %format_mac(&self.settings.mac),
                "datapath reconciled"
            );
        }
        // A family that failed is reported through `families` and retried; the batch fails
        // only when no family is programmed.
        let all_failed = !self.health.is_empty() && self.health.iter().all(|h| !h.errors.is_empty());
        if all_failed {
            let why: Vec<String> =
                self.health.iter().map(|h| format!("{}: {}", h.family, h.errors.join("; "))).collect();
            return Err(BackendError(why.join(" | ")));
        }
        Ok(())
    }
}
