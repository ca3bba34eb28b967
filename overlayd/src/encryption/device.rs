//! The tunnel device's kernel state around the tunnel engine (which only opens its queues):
//! MTU, link state, addresses, reverse-path filtering, removal, and the routes a previous
//! run left through it. All through the kernel layer, on the controller's handle.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use netkernel::{KernelError, Netlink};

use crate::subnet::SubnetKey;

/// Sets `name` up with `mtu` and our subnets' first addresses (as on the VXLAN device; any
/// other address but IPv6 link-local removed), and loose reverse-path filtering on it and on
/// the VXLAN devices: while traffic moves, a peer's packets may arrive on either. Returns
/// the device's ifindex.
pub fn set_up(
    nl: &Netlink,
    name: &str,
    mtu: u32,
    own: &SubnetKey,
    vxlan_devices: &[String],
) -> Result<u32, KernelError> {
    let dev = nl.require_link(name)?;
    nl.set_mtu(dev.index, mtu)?;
    let want: Vec<IpNet> = own
        .ipv4
        .map(|n| IpNet::new(IpAddr::V4(n.network()), 32).expect("a /32 is valid"))
        .into_iter()
        .chain(own.ipv6.map(|n| IpNet::new(IpAddr::V6(n.network()), 128).expect("a /128 is valid")))
        .collect();
    let link_local = |a: &IpNet| matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    for stale in nl.addresses(dev.index)?.into_iter().filter(|a| !want.contains(a) && !link_local(a)) {
        nl.del_address(dev.index, stale)?;
    }
    for a in &want {
        nl.ensure_address(dev.index, *a)?;
    }
    nl.set_up(dev.index)?;
    for d in std::iter::once(name).chain(vxlan_devices.iter().map(String::as_str)) {
        // A device that does not exist (no IPv6 network) has no sysctl: nothing to do.
        let _ = netkernel::sysctl::write(&format!("net/ipv4/conf/{d}/rp_filter"), "2");
    }
    let _ = netkernel::sysctl::write(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    Ok(dev.index)
}

/// Removes the device (its routes go with it); absent is fine, failures are logged.
pub fn delete(nl: &Netlink, name: &str) {
    let r = (|| {
        if let Some(l) = nl.link(name)? {
            nl.delete_link(l.index)?;
        }
        Ok::<_, KernelError>(())
    })();
    if let Err(e) = r {
        tracing::warn!(device = name, error = %e, "removing the tunnel device");
    }
}

/// Destinations of the subnet routes through the device (a previous run's choice).
pub fn routes_through(nl: &Netlink, name: &str) -> Option<BTreeSet<IpNet>> {
    let dev = nl.link(name).ok()??;
    let mut out = BTreeSet::new();
    for v6 in [false, true] {
        for r in nl.routes(v6, None).ok()? {
            if r.oif == Some(dev.index) && r.dst.prefix_len() < r.dst.max_prefix_len() {
                out.insert(r.dst);
            }
        }
    }
    Some(out)
}
