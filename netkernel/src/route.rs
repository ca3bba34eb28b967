//! Routes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteScope,
};

use crate::error::Result;
use crate::netlink::{Netlink, nl_err};

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
        let mut m = match self.dst {
            IpNet::V4(d) => {
                let mut b =
                    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(d.network(), d.prefix_len());
                if let Some(IpAddr::V4(gw)) = self.gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
            IpNet::V6(d) => {
                let mut b =
                    RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(d.network(), d.prefix_len());
                if let Some(IpAddr::V6(gw)) = self.gateway {
                    b = b.gateway(gw);
                }
                b.build()
            }
        };
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
            (None, rtnetlink::packet_route::AddressFamily::Inet) => {
                IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).ok()?
            }
            (None, rtnetlink::packet_route::AddressFamily::Inet6) => {
                IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).ok()?
            }
            _ => return None,
        };
        Some(r)
    }
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
        self.block_on(self.handle().route().add(route.message()).execute())
            .map_err(nl_err(format!("adding route to {}", route.dst)))
    }

    /// Adds or replaces a route (idempotent).
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        self.block_on(self.handle().route().add(route.message()).replace().execute())
            .map_err(nl_err(format!("replacing route to {}", route.dst)))
    }

    /// Deletes a route; a route that is not there is not an error.
    pub fn del_route(&self, route: &Route) -> Result<()> {
        match self.block_on(self.handle().route().del(route.message()).execute()) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("deleting route to {}", route.dst))(e) {
                e if e.errno() == Some(libc::ESRCH) || e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    /// The routes of one family in `table` (main when `None`).
    pub fn routes(&self, v6: bool, table: Option<u32>) -> Result<Vec<Route>> {
        let query = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let msgs: Vec<RouteMessage> = self
            .block_on(self.handle().route().get(query).execute().try_collect())
            .map_err(nl_err("listing routes"))?;
        let table = table.unwrap_or(MAIN_TABLE);
        Ok(msgs.iter().filter_map(Route::from_message).filter(|r| r.table == Some(table)).collect())
    }
}
