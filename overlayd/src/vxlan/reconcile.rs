//! One reconciliation of the VXLAN datapath, written against [`Datapath`] (the kernel
//! operations it needs) so that the family isolation can be tested on any sequence of
//! failures, not only the few a namespace test can cause.
//!
//! Layout: one device per underlay (outer) family — `flannel.<VNI>` on the IPv4 underlay,
//! `flannel-v6.<VNI>` on the IPv6 one — each carrying pods of both inner families. The
//! kernel keys a VXLAN socket on (port, outer family) and lets a VNI exist once per socket,
//! so a second device with the same VNI on the same outer family is refused (`EEXIST`):
//! devices per inner family cannot share one underlay family, devices per outer family can.
//!
//! Isolation: each inner family (IPv4 pods, IPv6 pods) is planned and applied on its own;
//! what fails in one (its address, its neighbours, its routes, a peer without a common
//! underlay family) is recorded for that family and never keeps the other from being
//! programmed. A device failure costs only the inner families whose traffic it carries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netkernel::overlay::{FdbEntry, Neighbour, OverlayOp, VxlanSpec};
use netkernel::route::Route;

use crate::encryption::routes::TunnelRoutes;
use crate::peer::Vtep;

/// An address family, inner (pods) or outer (underlay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fam {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Fam {
    /// `ipv4` / `ipv6`, as reported.
    pub fn name(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Fam {
        if ip.is_ipv6() { Fam::V6 } else { Fam::V4 }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// The kernel operations a reconciliation uses (netlink in production).
pub trait Datapath {
    /// The underlay interface's index and addresses.
    fn underlay(&self, name: &str) -> Result<(u32, Vec<IpNet>), String>;
    /// Makes the device match `spec`: its index, and why an old one was replaced.
    fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(u32, Option<String>), String>;
    /// Deletes the device `name` if it exists.
    fn remove_device(&self, name: &str) -> Result<(), String>;
    /// The addresses on `index`.
    fn addresses(&self, index: u32) -> Result<Vec<IpNet>, String>;
    /// Removes an address.
    fn del_address(&self, index: u32, addr: IpNet) -> Result<(), String>;
    /// Adds an address unless present.
    fn ensure_address(&self, index: u32, addr: IpNet) -> Result<(), String>;
    /// Permanent neighbours on `index`.
    fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, String>;
    /// FDB entries on `index`.
    fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, String>;
    /// Routes of one family (main table).
    fn routes(&self, v6: bool) -> Result<Vec<Route>, String>;
    /// Applies `ops`; returns those that failed.
    fn apply(&self, ops: Vec<OverlayOp>) -> Vec<(OverlayOp, String)>;
}

/// A device to have: one per underlay family this node has.
#[derive(Debug, Clone)]
pub struct DeviceWant {
    /// Its underlay family.
    pub outer: Fam,
    /// The device (`dev` is filled in with the underlay's index).
    pub spec: VxlanSpec,
}

/// One peer of one inner family.
#[derive(Debug, Clone)]
pub struct PeerWant {
    /// Its lease, for reports.
    pub key: String,
    /// Its pod subnet in this family.
    pub subnet: IpNet,
    /// The endpoint to send to (its device on the common underlay family), or `None` when
    /// the two nodes share no underlay family.
    pub path: Option<Vtep>,
}

/// One inner family's desired state.
#[derive(Debug, Clone)]
pub struct InnerWant {
    /// The family of the pods.
    pub fam: Fam,
    /// Our subnet.
    pub own: IpNet,
    /// The cluster network of this family.
    pub network: IpNet,
    /// The peers.
    pub peers: Vec<PeerWant>,
}

/// The whole desired state.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    /// The underlay interface.
    pub underlay: &'a str,
    /// Devices, one per local underlay family.
    pub devices: Vec<DeviceWant>,
    /// Device names of underlay families this node does not have (removed).
    pub absent: Vec<String>,
    /// The inner families.
    pub inner: Vec<InnerWant>,
    /// Plain routes to peers on the same L2.
    pub direct_routing: bool,
    /// Remove what no lease asks for.
    pub prune: bool,
    /// The encryption tunnel's routing choice.
    pub tunnel: &'a TunnelRoutes,
}

/// What happened to one inner family.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyOutcome {
    /// What failed (empty: all of it is programmed).
    pub errors: Vec<String>,
    /// Peers that share no underlay family with us (a fault of the pair, not of the family:
    /// reported apart from `errors`).
    pub no_common_underlay: Vec<String>,
    /// Peers programmed.
    pub peers: usize,
}

/// What a reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Operations sent to the kernel.
    pub applied: usize,
    /// Operations that failed.
    pub failed: usize,
    /// Per inner family.
    pub families: BTreeMap<Fam, FamilyOutcome>,
    /// Device failures, by underlay family.
    pub devices: BTreeMap<Fam, String>,
}

/// The first address of a subnet: the node's VTEP address in it.
pub fn first_addr(net: &IpNet) -> IpAddr {
    net.network()
}

fn on_same_l2(public: IpAddr, underlay_addrs: &[IpNet]) -> bool {
    underlay_addrs.iter().any(|a| a.contains(&public))
}

/// Runs one reconciliation. `Err` only when nothing could be done at all (no underlay).
pub fn reconcile(dp: &impl Datapath, want: &Desired) -> Result<Outcome, String> {
    let (ul_index, ul_addrs) =
        dp.underlay(want.underlay).map_err(|e| format!("the underlay interface: {e}"))?;
    let mut out = Outcome::default();
    for name in &want.absent {
        if let Err(e) = dp.remove_device(name) {
            tracing::warn!(device = %name, error = %e, "cannot remove the device of an underlay family this node no longer has");
        }
    }
    // Devices first: each one on its own.
    let mut dev: [Option<u32>; 2] = [None, None];
    for d in &want.devices {
        let mut spec = d.spec.clone();
        spec.dev = ul_index;
        match dp.ensure_vxlan(&spec) {
            Ok((index, replaced)) => {
                if let Some(why) = replaced {
                    tracing::warn!(device = %spec.name, reason = %why, "replaced an incompatible VXLAN device");
                }
                dev[d.outer.idx()] = Some(index);
            }
            Err(e) => {
                out.devices.insert(d.outer, format!("VXLAN device {}: {e}", spec.name));
            }
        }
    }
    let our_devs: Vec<u32> = dev.iter().flatten().copied().collect();
    // FDB entries are per device and shared by the inner families: collected here, applied
    // after the families, attributed to the families that need them.
    let mut want_fdb: BTreeMap<u32, BTreeMap<FdbEntry, BTreeSet<Fam>>> = BTreeMap::new();
    let mut fdb_complete = true;
    for fam in &want.inner {
        let mut o = FamilyOutcome::default();
        let planned = plan_family(dp, want, fam, &dev, &our_devs, ul_index, &ul_addrs, &mut o, &mut want_fdb);
        match planned {
            Ok(ops) => {
                out.applied += ops.len();
                for (op, e) in dp.apply(ops) {
                    out.failed += 1;
                    o.errors.push(format!("{}: {e}", describe(&op)));
                }
            }
            Err(e) => {
                fdb_complete = false;
                o.errors.push(e);
            }
        }
        out.families.insert(fam.fam, o);
    }
    // Devices that failed cost the families routed over them.
    for (outer, e) in &out.devices {
        for fam in &want.inner {
            let uses = fam.peers.iter().any(|p| p.path.is_some_and(|v| Fam::of(v.public) == *outer));
            if uses {
                out.families.entry(fam.fam).or_default().errors.push(e.clone());
            }
        }
    }
    for &index in &our_devs {
        let have: BTreeSet<FdbEntry> = match dp.fdb(index) {
            Ok(f) => f.into_iter().filter(|f| !f.dst.is_unspecified() && f.mac != [0; 6]).collect(),
            Err(e) => {
                for fam in &want.inner {
                    out.families.entry(fam.fam).or_default().errors.push(format!("reading the FDB: {e}"));
                }
                continue;
            }
        };
        let wanted = want_fdb.remove(&index).unwrap_or_default();
        let mut ops = Vec::new();
        for f in wanted.keys().filter(|f| !have.contains(f)) {
            ops.push(OverlayOp::SetFdb(index, *f));
        }
        if want.prune && fdb_complete {
            for f in have.iter().filter(|f| !wanted.contains_key(f)) {
                ops.push(OverlayOp::DelFdb(index, *f));
            }
        }
        out.applied += ops.len();
        for (op, e) in dp.apply(ops) {
            out.failed += 1;
            let fams: Vec<Fam> = match &op {
                OverlayOp::SetFdb(_, f) => {
                    wanted.get(f).map(|s| s.iter().copied().collect()).unwrap_or_default()
                }
                _ => Vec::new(),
            };
            for f in fams {
                out.families.entry(f).or_default().errors.push(format!("{}: {e}", describe(&op)));
            }
        }
    }
    Ok(out)
}

/// Plans one inner family: its address, neighbours and routes (applied by the caller), its
/// FDB needs (into `want_fdb`). `Err` when it cannot be planned at all.
#[allow(clippy::too_many_arguments)]
fn plan_family(
    dp: &impl Datapath,
    want: &Desired,
    fam: &InnerWant,
    dev: &[Option<u32>; 2],
    our_devs: &[u32],
    ul_index: u32,
    ul_addrs: &[IpNet],
    o: &mut FamilyOutcome,
    want_fdb: &mut BTreeMap<u32, BTreeMap<FdbEntry, BTreeSet<Fam>>>,
) -> Result<Vec<OverlayOp>, String> {
    let v6 = fam.fam == Fam::V6;
    // Our VTEP address lives on the device of the same underlay family when there is one.
    let home = dev[fam.fam.idx()].or(dev[1 - fam.fam.idx()]).ok_or("no VXLAN device is up")?;
    let own_addr = IpNet::new(first_addr(&fam.own), fam.own.max_prefix_len()).expect("host prefix");
    for &d in our_devs {
        let addrs = dp.addresses(d).map_err(|e| format!("reading the device's addresses: {e}"))?;
        for stale in
            addrs.iter().filter(|a| fam.network.contains(&a.addr()) && !(d == home && **a == own_addr))
        {
            dp.del_address(d, *stale).map_err(|e| format!("removing stale address {stale}: {e}"))?;
        }
    }
    dp.ensure_address(home, own_addr).map_err(|e| format!("adding our address {own_addr}: {e}"))?;

    let routes = dp.routes(v6).map_err(|e| format!("reading routes: {e}"))?;
    let have_routes: Vec<Route> = routes
        .into_iter()
        .filter(|r| fam.network.contains(&r.dst.network()) && r.dst != fam.network)
        .filter(|r| {
            r.oif.is_some_and(|i| our_devs.contains(&i))
                || (r.oif == Some(ul_index) && r.gateway.is_some())
                || (r.oif.is_some() && r.oif == want.tunnel.ifindex)
        })
        .collect();
    let mut have_neigh: BTreeMap<u32, BTreeSet<Neighbour>> = BTreeMap::new();
    for &d in our_devs {
        let n = dp.neighbours(d).map_err(|e| format!("reading neighbours: {e}"))?;
        have_neigh.insert(d, n.into_iter().filter(|n| n.ip.is_ipv6() == v6).collect());
    }

    let mut want_neigh: BTreeMap<u32, BTreeSet<Neighbour>> = BTreeMap::new();
    let mut want_routes = Vec::new();
    for p in &fam.peers {
        let vtep = first_addr(&p.subnet);
        let path = match p.path {
            Some(v) => v,
            None => {
                o.no_common_underlay.push(p.key.clone());
                continue;
            }
        };
        let Some(d) = dev[Fam::of(path.public).idx()] else {
            // Its device failed: reported once, by the caller.
            continue;
        };
        o.peers += 1;
        if let Some(tun) = want.tunnel.via_tunnel(&p.subnet) {
            // Encrypted: the route points into the tunnel; the neighbour and FDB entries stay
            // so that moving back to VXLAN is one route replace.
            want_neigh.entry(d).or_default().insert(Neighbour { ip: vtep, mac: path.mac });
            want_fdb
                .entry(d)
                .or_default()
                .entry(FdbEntry { mac: path.mac, dst: path.public })
                .or_default()
                .insert(fam.fam);
            let mut r = Route::new(p.subnet, None, Some(tun));
            r.scope = Some(253);
            want_routes.push(r);
            continue;
        }
        if want.direct_routing && Fam::of(path.public) == fam.fam && on_same_l2(path.public, ul_addrs) {
            want_routes.push(Route::new(p.subnet, Some(path.public), Some(ul_index)));
            continue;
        }
        want_neigh.entry(d).or_default().insert(Neighbour { ip: vtep, mac: path.mac });
        want_fdb
            .entry(d)
            .or_default()
            .entry(FdbEntry { mac: path.mac, dst: path.public })
            .or_default()
            .insert(fam.fam);
        let mut r = Route::new(p.subnet, Some(vtep), Some(d));
        r.onlink = true;
        want_routes.push(r);
    }
    // Order within the batch does not matter to the kernel: the route's next hop is on-link,
    // and its neighbour entry is permanent once set.
    let mut ops = Vec::new();
    let empty = BTreeSet::new();
    for (&d, wanted) in &want_neigh {
        let have = have_neigh.get(&d).unwrap_or(&empty);
        for n in wanted.difference(have) {
            ops.push(OverlayOp::SetNeighbour(d, *n));
        }
    }
    for r in &want_routes {
        let present = have_routes.iter().any(|h| h.dst == r.dst && h.gateway == r.gateway && h.oif == r.oif);
        if !present {
            ops.push(OverlayOp::SetRoute(r.clone()));
        }
    }
    if want.prune {
        for (&d, have) in &have_neigh {
            let wanted = want_neigh.get(&d).unwrap_or(&empty);
            let want_ips: BTreeSet<IpAddr> = wanted.iter().map(|n| n.ip).collect();
            // A changed MAC is replaced above; delete only neighbours of nodes gone.
            for n in have.iter().filter(|n| !want_ips.contains(&n.ip)) {
                ops.push(OverlayOp::DelNeighbour(d, n.ip));
            }
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
    Ok(ops)
}

fn describe(op: &OverlayOp) -> String {
    match op {
        OverlayOp::SetNeighbour(_, n) => format!("neighbour {}", n.ip),
        OverlayOp::DelNeighbour(_, ip) => format!("removing neighbour {ip}"),
        OverlayOp::SetFdb(_, f) => format!("FDB entry to {}", f.dst),
        OverlayOp::DelFdb(_, f) => format!("removing FDB entry to {}", f.dst),
        OverlayOp::SetRoute(r) => format!("route to {}", r.dst),
        OverlayOp::DelRoute(r) => format!("removing route to {}", r.dst),
    }
}
