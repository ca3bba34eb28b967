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
                || want.tunnel.is_tunnel(r.oif)
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

#[cfg(test)]
mod tests {
    //! The isolation property, on an in-memory kernel whose operations fail on demand.

    use super::*;
    use proptest::prelude::*;
    use std::cell::RefCell;

    /// A fault confined to one family.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// The device on this underlay family cannot be made (and is gone).
        Device,
        /// Our address of this pod family cannot be added.
        Address,
        /// Neighbour entries of this pod family fail.
        Neighbour,
        /// Routes of this pod family fail.
        Route,
        /// Routes of this pod family cannot be read.
        ReadRoutes,
    }

    #[derive(Default)]
    struct State {
        links: BTreeMap<String, (u32, VxlanSpec)>,
        next: u32,
        addrs: BTreeMap<u32, BTreeSet<IpNet>>,
        neigh: BTreeMap<u32, BTreeSet<Neighbour>>,
        fdb: BTreeMap<u32, BTreeSet<FdbEntry>>,
        routes: Vec<Route>,
    }

    impl State {
        fn drop_link(&mut self, index: u32) {
            self.links.retain(|_, (i, _)| *i != index);
            self.addrs.remove(&index);
            self.neigh.remove(&index);
            self.fdb.remove(&index);
            self.routes.retain(|r| r.oif != Some(index));
        }
    }

    struct Fake {
        s: RefCell<State>,
        faults: Vec<(Fam, Fault)>,
    }

    const UL: u32 = 2;

    impl Fake {
        fn new() -> Self {
            Fake { s: RefCell::new(State { next: 10, ..Default::default() }), faults: Vec::new() }
        }
        fn fails(&self, fam: Fam, f: Fault) -> bool {
            self.faults.contains(&(fam, f))
        }
    }

    impl Datapath for Fake {
        fn underlay(&self, _name: &str) -> Result<(u32, Vec<IpNet>), String> {
            Ok((UL, vec!["198.18.0.1/24".parse().unwrap(), "fd18::1/64".parse().unwrap()]))
        }
        fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(u32, Option<String>), String> {
            let mut s = self.s.borrow_mut();
            if self.fails(Fam::of(spec.local), Fault::Device) {
                if let Some((i, _)) = s.links.get(&spec.name).cloned() {
                    s.drop_link(i);
                }
                return Err("injected".into());
            }
            if let Some((i, have)) = s.links.get(&spec.name).cloned() {
                if have == *spec {
                    return Ok((i, None));
                }
                s.drop_link(i);
            }
            // Two devices with one VNI and port on one underlay family: what the kernel refuses.
            let clash = s.links.values().any(|(_, o)| {
                o.vni == spec.vni && o.port == spec.port && o.local.is_ipv6() == spec.local.is_ipv6()
            });
            if clash {
                return Err("File exists".into());
            }
            s.next += 1;
            let i = s.next;
            s.links.insert(spec.name.clone(), (i, spec.clone()));
            Ok((i, None))
        }
        fn remove_device(&self, name: &str) -> Result<(), String> {
            let mut s = self.s.borrow_mut();
            if let Some((i, _)) = s.links.get(name).cloned() {
                s.drop_link(i);
            }
            Ok(())
        }
        fn addresses(&self, index: u32) -> Result<Vec<IpNet>, String> {
            Ok(self.s.borrow().addrs.get(&index).into_iter().flatten().copied().collect())
        }
        fn del_address(&self, index: u32, addr: IpNet) -> Result<(), String> {
            self.s.borrow_mut().addrs.entry(index).or_default().remove(&addr);
            Ok(())
        }
        fn ensure_address(&self, index: u32, addr: IpNet) -> Result<(), String> {
            if self.fails(Fam::of(addr.addr()), Fault::Address) {
                return Err("injected".into());
            }
            self.s.borrow_mut().addrs.entry(index).or_default().insert(addr);
            Ok(())
        }
        fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>, String> {
            Ok(self.s.borrow().neigh.get(&index).into_iter().flatten().copied().collect())
        }
        fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>, String> {
            Ok(self.s.borrow().fdb.get(&index).into_iter().flatten().copied().collect())
        }
        fn routes(&self, v6: bool) -> Result<Vec<Route>, String> {
            if self.fails(if v6 { Fam::V6 } else { Fam::V4 }, Fault::ReadRoutes) {
                return Err("injected".into());
            }
            Ok(self.s.borrow().routes.iter().filter(|r| r.dst.addr().is_ipv6() == v6).cloned().collect())
        }
        fn apply(&self, ops: Vec<OverlayOp>) -> Vec<(OverlayOp, String)> {
            let mut failed = Vec::new();
            let mut s = self.s.borrow_mut();
            for op in ops {
                let ok = match &op {
                    OverlayOp::SetNeighbour(i, n) if !self.fails(Fam::of(n.ip), Fault::Neighbour) => {
                        let set = s.neigh.entry(*i).or_default();
                        set.retain(|x| x.ip != n.ip);
                        set.insert(*n)
                    }
                    OverlayOp::DelNeighbour(i, ip) => {
                        s.neigh.entry(*i).or_default().retain(|x| x.ip != *ip);
                        true
                    }
                    OverlayOp::SetFdb(i, f) => s.fdb.entry(*i).or_default().insert(*f),
                    OverlayOp::DelFdb(i, f) => s.fdb.entry(*i).or_default().remove(f),
                    OverlayOp::SetRoute(r) if !self.fails(Fam::of(r.dst.addr()), Fault::Route) => {
                        s.routes.retain(|h| h.dst != r.dst);
                        s.routes.push(r.clone());
                        true
                    }
                    OverlayOp::DelRoute(r) => {
                        s.routes.retain(|h| !(h.dst == r.dst && h.gateway == r.gateway && h.oif == r.oif));
                        true
                    }
                    _ => false,
                };
                if !ok {
                    failed.push((op, "injected".to_string()));
                }
            }
            failed
        }
    }

    fn spec(outer: Fam) -> DeviceWant {
        let (name, local) = match outer {
            Fam::V4 => ("flannel.1", "198.18.0.1"),
            Fam::V6 => ("flannel-v6.1", "fd18::1"),
        };
        DeviceWant {
            outer,
            spec: VxlanSpec {
                name: name.into(),
                vni: 1,
                port: 8472,
                local: local.parse().unwrap(),
                dev: 0,
                mtu: 1430,
                mac: [2, 0, 0, 0, 0, outer as u8 + 1],
            },
        }
    }

    /// Node `n`'s subnet in `fam`, and its endpoint on underlay family `outer`.
    fn peer(n: u8, fam: Fam, outer: Fam) -> PeerWant {
        let subnet = match fam {
            Fam::V4 => format!("10.244.{n}.0/24"),
            Fam::V6 => format!("fd10:244:0:{n:x}::/64"),
        };
        let public = match outer {
            Fam::V4 => format!("198.18.0.{n}"),
            Fam::V6 => format!("fd18::{n:x}"),
        };
        PeerWant {
            key: format!("node{n}"),
            subnet: subnet.parse().unwrap(),
            path: Some(Vtep { public: public.parse().unwrap(), mac: [2, 1, 0, 0, n, outer as u8] }),
        }
    }

    /// Desired state with peers `ns`, both pod families; over a dual underlay each family
    /// rides its own underlay family, over an IPv4-only one both ride IPv4.
    fn want(ns: &BTreeSet<u8>, dual_underlay: bool) -> (Vec<DeviceWant>, Vec<InnerWant>) {
        let outer6 = if dual_underlay { Fam::V6 } else { Fam::V4 };
        let devices = if dual_underlay { vec![spec(Fam::V4), spec(Fam::V6)] } else { vec![spec(Fam::V4)] };
        let inner = vec![
            InnerWant {
                fam: Fam::V4,
                own: "10.244.1.0/24".parse().unwrap(),
                network: "10.244.0.0/16".parse().unwrap(),
                peers: ns.iter().map(|&n| peer(n, Fam::V4, Fam::V4)).collect(),
            },
            InnerWant {
                fam: Fam::V6,
                own: "fd10:244:0:1::/64".parse().unwrap(),
                network: "fd10:244::/56".parse().unwrap(),
                peers: ns.iter().map(|&n| peer(n, Fam::V6, outer6)).collect(),
            },
        ];
        (devices, inner)
    }

    /// Every peer of `fam` has its route, neighbour and FDB entry, on a live device.
    fn programmed(k: &Fake, fam: &InnerWant) -> Result<(), String> {
        let s = k.s.borrow();
        for p in &fam.peers {
            let v = p.path.unwrap();
            let vtep = first_addr(&p.subnet);
            let r = s.routes.iter().find(|r| r.dst == p.subnet).ok_or(format!("no route to {}", p.subnet))?;
            let dev = r.oif.unwrap();
            let live =
                s.links.values().find(|(i, _)| *i == dev).ok_or(format!("{}: dead device", p.subnet))?;
            if r.gateway != Some(vtep) || live.1.local.is_ipv6() != v.public.is_ipv6() {
                return Err(format!("wrong route {r:?}"));
            }
            let n = s.neigh.get(&dev).is_some_and(|n| n.contains(&Neighbour { ip: vtep, mac: v.mac }));
            let f = s.fdb.get(&dev).is_some_and(|f| f.contains(&FdbEntry { mac: v.mac, dst: v.public }));
            if !(n && f) {
                return Err(format!("{}: neighbour {n}, fdb {f}", p.subnet));
            }
        }
        Ok(())
    }

    fn fault() -> impl Strategy<Value = Fault> {
        prop_oneof![
            Just(Fault::Device),
            Just(Fault::Address),
            Just(Fault::Neighbour),
            Just(Fault::Route),
            Just(Fault::ReadRoutes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Rounds of reconciliation with peers coming and going, and any faults in one
        /// family: the other family is fully programmed after every round, reports nothing,
        /// and the failing family recovers once the faults stop.
        #[test]
        fn no_family_fault_stops_the_other_family(
            bad_v6 in any::<bool>(),
            dual_underlay in any::<bool>(),
            rounds in proptest::collection::vec(
                (proptest::collection::btree_set(2u8..12, 0..5), proptest::collection::vec(fault(), 0..4)),
                1..8,
            ),
        ) {
            let (bad, good) = if bad_v6 { (Fam::V6, Fam::V4) } else { (Fam::V4, Fam::V6) };
            let k = RefCell::new(Fake::new());
            let tunnel = TunnelRoutes::default();
            let mut last = BTreeSet::new();
            for (i, (peers, faults)) in rounds.iter().enumerate() {
                // Over an IPv4-only underlay both pod families share the IPv4 device: its
                // loss is no family's own fault there.
                let faults: Vec<(Fam, Fault)> = faults
                    .iter()
                    .filter(|f| dual_underlay || **f != Fault::Device)
                    .map(|f| (bad, *f))
                    .collect();
                k.borrow_mut().faults = faults;
                let (devices, inner) = want(peers, dual_underlay);
                let d = Desired {
                    underlay: "ul",
                    devices,
                    absent: Vec::new(),
                    inner: inner.clone(),
                    direct_routing: false,
                    prune: i > 0,
                    tunnel: &tunnel,
                };
                let out = reconcile(&*k.borrow(), &d).unwrap();
                let g = inner.iter().find(|f| f.fam == good).unwrap();
                prop_assert_eq!(programmed(&k.borrow(), g), Ok(()), "round {}", i);
                prop_assert_eq!(&out.families[&good].errors, &Vec::<String>::new());
                // Nothing of peers gone stays in the good family.
                let kk = k.borrow();
                let s = kk.s.borrow();
                for r in s.routes.iter().filter(|r| Fam::of(r.dst.addr()) == good) {
                    prop_assert!(g.peers.iter().any(|p| p.subnet == r.dst), "stale route {:?}", r);
                }
                last = peers.clone();
            }
            // The faults stop: both families are programmed.
            k.borrow_mut().faults.clear();
            let (devices, inner) = want(&last, dual_underlay);
            let d = Desired {
                underlay: "ul",
                devices,
                absent: Vec::new(),
                inner: inner.clone(),
                direct_routing: false,
                prune: true,
                tunnel: &tunnel,
            };
            let out = reconcile(&*k.borrow(), &d).unwrap();
            for f in &inner {
                prop_assert_eq!(programmed(&k.borrow(), f), Ok(()));
                prop_assert!(out.families[&f.fam].errors.is_empty(), "{:?}", out.families);
            }
        }
    }

    #[test]
    fn both_pod_families_share_the_one_device_of_an_ipv4_underlay() {
        // The bug of issue 20: a second device for IPv6 pods on the IPv4 underlay clashed with
        // the first ("File exists") and nothing was programmed.
        let k = Fake::new();
        let tunnel = TunnelRoutes::default();
        let (devices, inner) = want(&[2u8, 3].into(), false);
        let d = Desired {
            underlay: "ul",
            devices,
            absent: vec!["flannel-v6.1".into()],
            inner: inner.clone(),
            direct_routing: false,
            prune: false,
            tunnel: &tunnel,
        };
        let out = reconcile(&k, &d).unwrap();
        assert!(out.families.values().all(|f| f.errors.is_empty()), "{out:?}");
        assert_eq!(k.s.borrow().links.len(), 1);
        for f in &inner {
            assert_eq!(programmed(&k, f), Ok(()));
        }
    }

    #[test]
    fn a_peer_without_a_common_underlay_family_is_named_not_fatal() {
        let k = Fake::new();
        let tunnel = TunnelRoutes::default();
        let (devices, mut inner) = want(&[2u8, 3].into(), true);
        inner[1].peers[0].path = None;
        let d = Desired {
            underlay: "ul",
            devices,
            absent: Vec::new(),
            inner: inner.clone(),
            direct_routing: false,
            prune: false,
            tunnel: &tunnel,
        };
        let out = reconcile(&k, &d).unwrap();
        assert_eq!(out.families[&Fam::V6].no_common_underlay, vec!["node2".to_string()]);
        assert!(out.families[&Fam::V6].errors.is_empty());
        assert_eq!(out.families[&Fam::V6].peers, 1);
        inner[1].peers.remove(0);
        assert_eq!(programmed(&k, &inner[1]), Ok(()));
        assert_eq!(programmed(&k, &inner[0]), Ok(()));
    }
}
