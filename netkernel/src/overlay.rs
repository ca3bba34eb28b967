//! The VXLAN overlay: the device, permanent neighbour (ARP/NDP) entries, FDB entries, read
//! back for reconciliation and changed in batches (many requests in flight on one socket).

use std::net::IpAddr;

use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rtm};

use crate::error::{KernelError, Result};
use crate::link::{self, Link, Mac};
use crate::netlink::{Netlink, Request, flags, nl_err};
use crate::route::{self, Route};

/// The VXLAN device to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Name, e.g. `flannel.1`.
    pub name: String,
    /// VNI.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Local underlay address.
    pub local: IpAddr,
    /// Underlay interface index.
    pub dev: u32,
    /// MTU.
    pub mtu: u32,
    /// The device MAC (the VTEP MAC published in the lease).
    pub mac: Mac,
}

/// What an existing VXLAN device has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanInfo {
    /// VNI.
    pub vni: Option<u32>,
    /// UDP port.
    pub port: Option<u16>,
    /// Local address.
    pub local: Option<IpAddr>,
    /// Underlay interface.
    pub dev: Option<u32>,
    /// Learning on.
    pub learning: bool,
}

/// A permanent neighbour entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    /// The overlay address.
    pub ip: IpAddr,
    /// Its MAC.
    pub mac: Mac,
}

/// An FDB entry of a VXLAN device: frames for `mac` go to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The remote VTEP MAC.
    pub mac: Mac,
    /// The remote VTEP's underlay address.
    pub dst: IpAddr,
}

/// One change to the overlay state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverlayOp {
    /// Add or replace a neighbour.
    SetNeighbour(u32, Neighbour),
    /// Remove a neighbour.
    DelNeighbour(u32, IpAddr),
    /// Add or replace an FDB entry.
    SetFdb(u32, FdbEntry),
    /// Remove an FDB entry.
    DelFdb(u32, FdbEntry),
    /// Add or replace a route.
    SetRoute(Route),
    /// Remove a route.
    DelRoute(Route),
}

fn vxlan_info(m: &LinkMessage) -> Option<VxlanInfo> {
    let mut info = None;
    for attr in &m.attributes {
        let LinkAttribute::LinkInfo(infos) = attr else {
            continue;
        };
        for i in infos {
            let LinkInfo::Data(InfoData::Vxlan(vs)) = i else {
                continue;
            };
            let mut v = VxlanInfo::default();
            for x in vs {
                match x {
                    InfoVxlan::Id(id) => v.vni = Some(*id),
                    InfoVxlan::Port(p) => v.port = Some(*p),
                    InfoVxlan::Local(a) => v.local = Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => v.local = Some(IpAddr::V6(*a)),
                    InfoVxlan::Link(l) => v.dev = Some(*l),
                    InfoVxlan::Learning(l) => v.learning = *l,
                    _ => {}
                }
            }
            info = Some(v);
        }
    }
    info
}

impl Netlink {
    /// The VXLAN attributes of link `name`, if it is a VXLAN device.
    pub fn vxlan_info(&self, name: &str) -> Result<Option<VxlanInfo>> {
        match self.get_link(link::get_by_name_request(name)) {
            Ok(m) => Ok(vxlan_info(&m)),
            Err(e) => match nl_err(format!("reading link {name:?}"))(e) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Makes the VXLAN device match `spec`. A compatible device is kept (its entries stay:
    /// a restart must not flush the datapath); an incompatible one is replaced, and the
    /// reason returned so the caller can log it.
    pub fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<(Link, Option<String>)> {
        let mut replaced = None;
        if let Some(existing) = self.link(&spec.name)? {
            let info = self.vxlan_info(&spec.name)?;
            let why = match &info {
                None => {
                    Some(format!("it is a {} device, not vxlan", existing.kind.as_deref().unwrap_or("plain")))
                }
                Some(i) if i.vni != Some(spec.vni) => {
                    Some(format!("its VNI is {:?}, want {}", i.vni, spec.vni))
                }
                Some(i) if i.port != Some(spec.port) => {
                    Some(format!("its port is {:?}, want {}", i.port, spec.port))
                }
                Some(i) if i.local != Some(spec.local) => {
                    Some(format!("its local address is {:?}, want {}", i.local, spec.local))
                }
                Some(i) if i.dev != Some(spec.dev) => {
                    Some(format!("its underlay device is {:?}, want {}", i.dev, spec.dev))
                }
                Some(i) if i.learning => Some("it has learning on".to_string()),
                Some(_) => None,
            };
            match why {
                None => {
                    if existing.mtu != spec.mtu {
                        self.set_mtu(existing.index, spec.mtu)?;
                    }
                    if existing.mac != Some(spec.mac) {
                        self.set_mac(existing.index, spec.mac)?;
                    }
                    if !existing.up {
                        self.set_up(existing.index)?;
                    }
                    return Ok((self.require_link(&spec.name)?, None));
                }
                Some(why) => {
                    self.delete_link(existing.index)?;
                    replaced = Some(why);
                }
            }
        }
        self.ack(vxlan_request(spec)).map_err(nl_err(format!("creating vxlan device {:?}", spec.name)))?;
        Ok((self.require_link(&spec.name)?, replaced))
    }

    /// The permanent neighbour entries on link `index`.
    pub fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let msgs =
            self.neighbour_messages(neighbours_dump_request()).map_err(nl_err("listing neighbours"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index && m.header.family != AddressFamily::Bridge)
            .filter(|m| m.header.state == NeighbourState::Permanent)
            .filter_map(|m| {
                let (ip, mac) = address_and_mac(m);
                Some(Neighbour { ip: ip?, mac: mac? })
            })
            .collect())
    }

    /// The FDB entries of VXLAN link `index` that point at a remote VTEP.
    pub fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let msgs = self.neighbour_messages(fdb_dump_request()).map_err(nl_err("listing FDB entries"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == index)
            .filter_map(|m| {
                let (dst, mac) = address_and_mac(m);
                Some(FdbEntry { mac: mac?, dst: dst? })
            })
            .collect())
    }

    /// A neighbour or FDB dump. The kernel resumes both by position in a hash chain and does
    /// not flag a dump torn by changes between its parts, so one during which a change was
    /// announced (RTNLGRP_NEIGH carries both) is repeated. FDB changes and dumps both hold
    /// RTNL, so no part of an FDB dump can see a change before it is announced; the
    /// neighbour table is dumped without locks and a change becomes visible just before it
    /// is announced, which leaves a short window (microseconds, on the writer's side) that
    /// this does not close.
    fn neighbour_messages(
        &self,
        req: Request,
    ) -> std::result::Result<Vec<NeighbourMessage>, crate::netlink::NetlinkError> {
        Ok(self
            .dump_watching(req, libc::RTNLGRP_NEIGH)?
            .into_iter()
            .filter_map(|m| match m {
                Rtm::NewNeighbour(n) => Some(n),
                _ => None,
            })
            .collect())
    }

    /// Applies `ops`, many requests per datagram (each with its own ACK); returns one error
    /// per failed op (the others are still applied). Removals of things already gone count
    /// as done.
    pub fn apply_overlay(&self, ops: Vec<OverlayOp>) -> Vec<(OverlayOp, KernelError)> {
        let reqs: Vec<Request> = ops.iter().map(op_request).collect();
        let results = self.batch(&reqs);
        ops.into_iter()
            .zip(results)
            .filter_map(|(op, r)| {
                let r = r.map_err(nl_err(op_description(&op)));
                let r = if op_is_removal(&op) { gone_ok(r) } else { r };
                r.err().map(|e| (op, e))
            })
            .collect()
    }
}

/// Creating the VXLAN device, up, learning off (entries are programmed, never learnt).
pub(crate) fn vxlan_request(spec: &VxlanSpec) -> Request {
    let mut data = vec![
        InfoVxlan::Id(spec.vni),
        InfoVxlan::Link(spec.dev),
        InfoVxlan::Port(spec.port),
        InfoVxlan::Learning(false),
    ];
    data.push(match spec.local {
        IpAddr::V4(a) => InfoVxlan::Local(a),
        IpAddr::V6(a) => InfoVxlan::Local6(a),
    });
    let attrs = vec![
        LinkAttribute::IfName(spec.name.clone()),
        LinkAttribute::Mtu(spec.mtu),
        LinkAttribute::Address(spec.mac.to_vec()),
    ];
    let msg = link::new_link(true, attrs, InfoKind::Vxlan, Some(InfoData::Vxlan(data)));
    Request::new(flags::ADD, Rtm::NewLink(msg))
}

/// `RTM_GETNEIGH` dump of every family's neighbours.
pub(crate) fn neighbours_dump_request() -> Request {
    Request::new(flags::DUMP, Rtm::GetNeighbour(NeighbourMessage::default()))
}

/// `RTM_GETNEIGH` dump of the bridge family: the FDB.
pub(crate) fn fdb_dump_request() -> Request {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    Request::new(flags::DUMP, Rtm::GetNeighbour(m))
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// The request of one overlay change. Every one is idempotent (replace, or delete with
/// "gone" counted as done), which lets a batch send it again after an overflow.
pub(crate) fn op_request(op: &OverlayOp) -> Request {
    match op {
        OverlayOp::SetNeighbour(idx, n) => {
            let mut m = NeighbourMessage::default();
            m.header.family = if n.ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            m.header.ifindex = *idx;
            m.header.state = NeighbourState::Permanent;
            m.header.kind = RouteType::Unspec;
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.to_vec()));
            Request::new(flags::REPLACE, Rtm::NewNeighbour(m))
        }
        OverlayOp::SetFdb(idx, f) => {
            // `bridge fdb replace <mac> dev <vxlan> dst <ip> self permanent`.
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = *idx;
            m.header.state = NeighbourState::Permanent;
            m.header.kind = RouteType::Unspec;
            m.header.flags = NeighbourFlags::Own;
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
            Request::new(flags::REPLACE, Rtm::NewNeighbour(m))
        }
        OverlayOp::DelNeighbour(idx, ip) => {
            let mut m = NeighbourMessage::default();
            m.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
            m.header.ifindex = *idx;
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(*ip)));
            Request::new(flags::ACK, Rtm::DelNeighbour(m))
        }
        OverlayOp::DelFdb(idx, f) => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = *idx;
            m.header.flags = NeighbourFlags::Own;
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
            m.attributes.push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
            Request::new(flags::ACK, Rtm::DelNeighbour(m))
        }
        OverlayOp::SetRoute(r) => route::replace_request(r),
        OverlayOp::DelRoute(r) => route::del_request(r),
    }
}

fn op_description(op: &OverlayOp) -> String {
    match op {
        OverlayOp::SetNeighbour(_, n) => format!("setting neighbour {}", n.ip),
        OverlayOp::SetFdb(_, f) => format!("setting FDB entry to {}", f.dst),
        OverlayOp::DelNeighbour(_, ip) => format!("removing neighbour {ip}"),
        OverlayOp::DelFdb(_, f) => format!("removing FDB entry to {}", f.dst),
        OverlayOp::SetRoute(r) => format!("setting route to {}", r.dst),
        OverlayOp::DelRoute(r) => format!("removing route to {}", r.dst),
    }
}

fn op_is_removal(op: &OverlayOp) -> bool {
    matches!(op, OverlayOp::DelNeighbour(..) | OverlayOp::DelFdb(..) | OverlayOp::DelRoute(_))
}
/// The destination address and the link-layer address of a neighbour or FDB message.
fn address_and_mac(m: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let (mut ip, mut mac) = (None, None);
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some(IpAddr::V4(*v4)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some(IpAddr::V6(*v6)),
            // In AF_BRIDGE messages the parser cannot tell the family: go by length.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => ip = raw_ip(raw),
            NeighbourAttribute::LinkLayerAddress(l) => mac = l.as_slice().try_into().ok(),
            _ => {}
        }
    }
    (ip, mac)
}

fn raw_ip(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(raw).ok().map(IpAddr::from),
        _ => None,
    }
}

fn gone_ok(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() || e.errno() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}
