//! Finding the underlay: the interface peers reach us through, its address and MTU.
//! Read-only netlink through the kernel layer. Call it outside the async runtime (the
//! kernel layer runs its own).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netkernel::Netlink;

/// What was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Underlay {
    /// Interface name.
    pub iface: Option<String>,
    /// IPv4 address to publish.
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address to publish.
    pub public_ipv6: Option<Ipv6Addr>,
    /// Interface MTU.
    pub mtu: Option<u32>,
}

/// Why the underlay could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// Netlink failed.
    #[error("reading interfaces: {0}")]
    Kernel(#[from] netkernel::KernelError),
    /// Nothing matches `--iface`.
    #[error("no interface named or holding {0:?}")]
    NoSuchInterface(String),
    /// No interface matches any of the selectors given.
    #[error("no interface with a usable address matches {0}")]
    NoMatch(String),
    /// An `--iface-regex` that does not compile (refused by the flag parser first).
    #[error("--iface-regex {0:?}: {1}")]
    BadRegex(String, String),
    /// No way to choose.
    #[error("no default route and neither --iface nor --public-ip given")]
    NoDefault,
    /// The interface has no usable address.
    #[error("interface {0} has no global address; give --public-ip")]
    NoAddress(String),
}

/// VXLAN over IPv4 costs 50 bytes (outer IPv4 20, UDP 8, VXLAN 8, inner Ethernet 14).
pub const VXLAN_V4_OVERHEAD: u32 = 50;

fn global_v4(a: &Ipv4Addr) -> bool {
    !(a.is_loopback() || a.is_link_local() || a.is_unspecified() || a.is_multicast())
}

fn global_v6(a: &Ipv6Addr) -> bool {
    !(a.is_loopback() || a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local())
}

/// How the underlay interface is chosen: flannel's `--iface` (names or addresses, the first
/// that exists wins), `--iface-regex` (matched against names and addresses), and
/// `--iface-can-reach` (the interface of the route to that address); the default route's
/// interface when none is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IfaceSelection {
    /// `--iface`, in order.
    pub ifaces: Vec<String>,
    /// `--iface-regex`, in order.
    pub regexes: Vec<String>,
    /// `--iface-can-reach`.
    pub can_reach: Option<IpAddr>,
}

impl IfaceSelection {
    /// Only `--iface NAME`.
    pub fn named(name: &str) -> Self {
        IfaceSelection { ifaces: vec![name.to_string()], ..Default::default() }
    }

    fn given(&self) -> bool {
        !self.ifaces.is_empty() || !self.regexes.is_empty() || self.can_reach.is_some()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        parts.extend(self.ifaces.iter().map(|i| format!("--iface {i}")));
        parts.extend(self.regexes.iter().map(|r| format!("--iface-regex {r}")));
        parts.extend(self.can_reach.iter().map(|a| format!("--iface-can-reach {a}")));
        parts.join(", ")
    }
}

/// Checks an `--iface-regex` value (for the flag parser).
pub fn parse_iface_regex(s: &str) -> Result<String, String> {
    regex::Regex::new(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// Resolves the interface selection, `--public-ip` and `--public-ipv6` in the caller's
/// namespace.
pub fn detect(
    sel: &IfaceSelection,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Underlay, UnderlayError> {
    let nl = Netlink::current()?;
    let links = nl.links()?;
    let mut addrs_of = std::collections::BTreeMap::new();
    for l in &links {
        addrs_of.insert(l.index, nl.addresses(l.index)?);
    }
    let holding = |ip: IpAddr| -> Option<u32> {
        addrs_of.iter().find(|(_, a)| a.iter().any(|n| n.addr() == ip)).map(|(i, _)| *i)
    };
    // A candidate is usable when it has an address to publish (or one is given).
    let usable = |index: u32| {
        public_ip.is_some()
            || public_ipv6.is_some()
            || addrs_of.get(&index).is_some_and(|a| {
                a.iter().any(|n| match n.addr() {
                    IpAddr::V4(a) => global_v4(&a),
                    IpAddr::V6(a) => global_v6(&a),
                })
            })
    };
    let index = if sel.given() {
        let by_name = sel.ifaces.iter().find_map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => holding(ip),
            Err(_) => links.iter().find(|l| l.name == *name).map(|l| l.index).filter(|i| usable(*i)),
        });
        let by_regex = || -> Result<Option<u32>, UnderlayError> {
            for r in &sel.regexes {
                let re =
                    regex::Regex::new(r).map_err(|e| UnderlayError::BadRegex(r.clone(), e.to_string()))?;
                let hit = links.iter().find(|l| {
                    usable(l.index)
                        && (re.is_match(&l.name)
                            || addrs_of
                                .get(&l.index)
                                .is_some_and(|a| a.iter().any(|n| re.is_match(&n.addr().to_string()))))
                });
                if let Some(l) = hit {
                    return Ok(Some(l.index));
                }
            }
            Ok(None)
        };
        let by_route = || -> Result<Option<u32>, UnderlayError> {
            match sel.can_reach {
                Some(dst) => Ok(nl.route_get(dst)?.filter(|i| usable(*i))),
                None => Ok(None),
            }
        };
        match by_name {
            Some(i) => i,
            None => match by_regex()? {
                Some(i) => i,
                None => by_route()?.ok_or_else(|| UnderlayError::NoMatch(sel.describe()))?,
            },
        }
    } else {
        let default =
            nl.routes(false, None)?.into_iter().find(|r| r.dst.prefix_len() == 0).and_then(|r| r.oif);
        match (default, public_ip) {
            (Some(i), _) => i,
            (None, Some(ip)) => match holding(IpAddr::V4(ip)) {
                Some(i) => i,
                // Behind NAT the public address is not local: publish it anyway.
                None => {
                    return Ok(Underlay { iface: None, public_ip: Some(ip), public_ipv6, mtu: None });
                }
            },
            (None, None) if public_ipv6.is_some() => {
                return Ok(Underlay { public_ipv6, ..Default::default() });
            }
            (None, None) => return Err(UnderlayError::NoDefault),
        }
    };
    let link = links
        .iter()
        .find(|l| l.index == index)
        .ok_or_else(|| UnderlayError::NoSuchInterface(format!("index {index}")))?;
    let addrs = addrs_of.get(&index).cloned().unwrap_or_default();
    let v4 = public_ip.or_else(|| {
        addrs.iter().find_map(|n| match n.addr() {
            IpAddr::V4(a) if global_v4(&a) => Some(a),
            _ => None,
        })
    });
    let v6 = public_ipv6.or_else(|| {
        addrs.iter().find_map(|n| match n.addr() {
            IpAddr::V6(a) if global_v6(&a) => Some(a),
            _ => None,
        })
    });
    if v4.is_none() && v6.is_none() {
        return Err(UnderlayError::NoAddress(link.name.clone()));
    }
    Ok(Underlay {
        iface: Some(link.name.clone()),
        public_ip: v4,
        public_ipv6: v6,
        mtu: (link.mtu > 0).then_some(link.mtu),
    })
}
