//! Which remote subnets go into which tunnel. The encryption controller decides; the VXLAN
//! backend, which owns every overlay route, reads it on each reconciliation and points the
//! route at the tunnel device instead of the VXLAN next hop (one `route replace`: no
//! moment without a route). Two tunnels can carry traffic at once (WireGuard's `ferro-wg`
//! and IPsec's `ipsec0` while the cluster switches from one to the other), each peer's
//! subnet into exactly one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// The routing choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelRoutes {
    /// Every tunnel device that exists (routes through them are the overlay's own).
    pub devices: BTreeSet<u32>,
    /// Remote subnets whose traffic goes into a tunnel, and that tunnel's ifindex.
    pub encrypted: BTreeMap<IpNet, u32>,
    /// Fail closed: every other remote subnet goes into this device, with or without a
    /// session (strict mode).
    pub strict: Option<u32>,
}

impl TunnelRoutes {
    /// The tunnel's ifindex if traffic to `subnet` must go into one.
    pub fn via_tunnel(&self, subnet: &IpNet) -> Option<u32> {
        self.encrypted.get(subnet).copied().or(self.strict)
    }

    /// Whether routes through `oif` belong to the overlay.
    pub fn is_tunnel(&self, oif: Option<u32>) -> bool {
        oif.is_some_and(|i| self.devices.contains(&i))
    }
}

/// Shared between the controller (writer) and the backend (reader).
pub type SharedRoutes = Arc<RwLock<TunnelRoutes>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_subnet_then_strict() {
        let a: IpNet = "10.0.1.0/24".parse().unwrap();
        let b: IpNet = "10.0.2.0/24".parse().unwrap();
        let c: IpNet = "10.0.3.0/24".parse().unwrap();
        let mut r = TunnelRoutes { devices: [7, 9].into(), encrypted: [(a, 7), (b, 9)].into(), strict: None };
        assert_eq!((r.via_tunnel(&a), r.via_tunnel(&b), r.via_tunnel(&c)), (Some(7), Some(9), None));
        r.strict = Some(9);
        assert_eq!((r.via_tunnel(&a), r.via_tunnel(&c)), (Some(7), Some(9)));
        assert!(r.is_tunnel(Some(7)) && !r.is_tunnel(Some(8)) && !r.is_tunnel(None));
    }
}
