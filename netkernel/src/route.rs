//! Routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rtm};

use crate::error::Result;
use crate::netlink::{Netlink, Request, flags, nl_err};

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// A route, as added or as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// The next hop is on the link even if no address says so.
    pub onlink: bool,
    /// Table (main when `None` on add).
    pub table: Option<u32>,
    /// Metric.
    pub priority: Option<u32>,
    /// Scope (0 universe, 253 link, 254 host).
    pub scope: Option<u8>,
    /// Route MTU.
    pub mtu: Option<u32>,
    /// Advertised MSS.
    pub advmss: Option<u32>,
}

impl Route {
    /// A route to `dst` via `gateway` (on-link when `None`) out of `oif`.
    pub fn new(dst: IpNet, gateway: Option<IpAddr>, oif: Option<u32>) -> Self {
        Route {
            dst,
            gateway,
            oif,
            onlink: false,
            table: None,
            priority: None,
            scope: None,
            mtu: None,
            advmss: None,
        }
    }

    pub(crate) fn message(&self) -> RouteMessage {
        // What `ip route add` starts from: a static unicast route of the main table.
        let mut m = base_message(!self.dst.addr().is_ipv4());
        m.header.destination_prefix_length = self.dst.prefix_len();
        m.attributes.push(RouteAttribute::Destination(route_address(self.dst.network())));
        // A gateway of the other family is left out, as before.
        if let Some(gw) = self.gateway.filter(|g| g.is_ipv4() == self.dst.addr().is_ipv4()) {
            m.attributes.push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        if self.onlink {
            m.header.flags |= RouteFlags::Onlink;
        }
        let table = self.table.unwrap_or(MAIN_TABLE);
        m.header.table = if table < 256 { table as u8 } else { 252 };
        m.attributes.push(RouteAttribute::Table(table));
        if let Some(p) = self.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        match self.scope {
            Some(s) => m.header.scope = RouteScope::from(s),
            // A route without a gateway is a link route, as `ip route add` makes it.
            None if self.gateway.is_none() => m.header.scope = RouteScope::Link,
            None => {}
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = self.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(mss) = self.advmss {
            metrics.push(RouteMetric::Advmss(mss));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        m
    }

    fn from_message(m: &RouteMessage) -> Option<Route> {
        let mut dst = None;
        let mut r = Route::new(IpNet::V4(Default::default()), None, None);
        r.table = Some(m.header.table as u32);
        r.scope = Some(u8::from(m.header.scope));
        r.onlink = m.header.flags.contains(RouteFlags::Onlink);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip_of(d),
                RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Table(t) => r.table = Some(*t),
                RouteAttribute::Priority(p) => r.priority = Some(*p),
                RouteAttribute::Metrics(ms) => {
                    for metric in ms {
                        match metric {
                            RouteMetric::Mtu(v) => r.mtu = Some(*v),
                            RouteMetric::Advmss(v) => r.advmss = Some(*v),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let len = m.header.destination_prefix_length;
        r.dst = match (dst, m.header.address_family) {
            (Some(ip), _) => IpNet::new(ip, len).ok()?,
            (None, AddressFamily::Inet) => IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?,
            (None, AddressFamily::Inet6) => IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok()?,
            _ => return None,
        };
        Some(r)
    }
}

/// An empty route message of one family, with the header fields `ip route` sets.
fn base_message(v6: bool) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// `RTM_NEWROUTE` that fails with EEXIST if the route is there.
pub(crate) fn add_request(route: &Route) -> Request {
    Request::new(flags::ADD, Rtm::NewRoute(route.message()))
}

/// `RTM_NEWROUTE` that adds or replaces.
pub(crate) fn replace_request(route: &Route) -> Request {
    Request::new(flags::REPLACE, Rtm::NewRoute(route.message()))
}

/// `RTM_DELROUTE`.
pub(crate) fn del_request(route: &Route) -> Request {
    Request::new(flags::ACK, Rtm::DelRoute(route.message()))
}

/// `RTM_GETROUTE` dump of one family (every table: the kernel ignores the header's table
/// unless strict checking is on; the filter is here).
pub(crate) fn dump_request(v6: bool) -> Request {
    Request::new(flags::DUMP, Rtm::GetRoute(base_message(v6)))
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

impl Netlink {
    /// Adds a route; EEXIST is an error (see [`Netlink::replace_route`]).
    pub fn add_route(&self, route: &Route) -> Result<()> {
        self.ack(add_request(route)).map_err(nl_err(format!("adding route to {}", route.dst)))
    }

    /// Adds or replaces a route (idempotent).
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        self.ack(replace_request(route)).map_err(nl_err(format!("replacing route to {}", route.dst)))
    }

    /// Deletes a route; a route that is not there is not an error.
    pub fn del_route(&self, route: &Route) -> Result<()> {
        match self.ack(del_request(route)) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("deleting route to {}", route.dst))(e) {
                e if e.errno() == Some(libc::ESRCH) || e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The interface the kernel would send a packet to `dst` out of (`ip route get`), if
    /// it has a route.
    pub fn route_get(&self, dst: IpAddr) -> Result<Option<u32>> {
        let mut m = RouteMessage::default();
        m.header.address_family = if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        m.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        m.attributes.push(RouteAttribute::Destination(route_address(dst)));
        match self.get(Request::new(flags::GET, Rtm::GetRoute(m))) {
            Ok(Rtm::NewRoute(r)) => Ok(r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })),
            Ok(_) => Ok(None),
            Err(e) => match nl_err(format!("looking up the route to {dst}"))(e) {
                e if e.is_not_found()
                    || matches!(e.errno(), Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH)) =>
                {
                    Ok(None)
                }
                e => Err(e),
            },
        }
    }

    /// The routes of one family in `table` (main when `None`).
    pub fn routes(&self, v6: bool, table: Option<u32>) -> Result<Vec<Route>> {
        let msgs = if v6 {
            // The kernel does not flag a torn IPv6 route dump; its announcements tell.
            self.dump_watching(dump_request(true), libc::RTNLGRP_IPV6_ROUTE)
        } else {
            // IPv4 dumps resume by key: a route there all along is listed exactly once.
            self.dump(dump_request(false))
        }
        .map_err(nl_err("listing routes"))?;
        let table = table.unwrap_or(MAIN_TABLE);
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                Rtm::NewRoute(r) => Route::from_message(r),
                _ => None,
            })
            .filter(|r| r.table == Some(table))
            .collect())
    }
}
