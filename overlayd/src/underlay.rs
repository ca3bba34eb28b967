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

/// Resolves `--iface`, `--public-ip` and `--public-ipv6` in the caller's namespace.
pub fn detect(
    iface: Option<&str>,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Underlay, UnderlayError> {
    let nl = Netlink::current()?;
    let links = nl.links()?;
    let holding = |ip: IpAddr| -> Result<Option<u32>, UnderlayError> {
        for l in &links {
            if nl.addresses(l.index)?.iter().any(|n| n.addr() == ip) {
                return Ok(Some(l.index));
            }
        }
        Ok(None)
    };
    let index = match iface {
        Some(name) => match name.parse::<IpAddr>() {
            Ok(ip) => holding(ip)?.ok_or_else(|| UnderlayError::NoSuchInterface(name.into()))?,
            Err(_) => {
                links
                    .iter()
                    .find(|l| l.name == name)
                    .ok_or_else(|| UnderlayError::NoSuchInterface(name.into()))?
                    .index
            }
        },
        None => {
            let default =
                nl.routes(false, None)?.into_iter().find(|r| r.dst.prefix_len() == 0).and_then(|r| r.oif);
            match (default, public_ip) {
                (Some(i), _) => i,
                (None, Some(ip)) => match holding(IpAddr::V4(ip))? {
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
        }
    };
    let link = links
        .iter()
        .find(|l| l.index == index)
        .ok_or_else(|| UnderlayError::NoSuchInterface(format!("index {index}")))?;
    let addrs = nl.addresses(index)?;
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
