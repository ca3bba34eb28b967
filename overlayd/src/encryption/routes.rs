//! Which remote subnets go into the tunnel. The encryption controller decides; the VXLAN
//! backend, which owns every overlay route, reads it on each reconciliation and points the
//! route at the tunnel device instead of the VXLAN next hop (one `route replace`: no
//! moment without a route).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

/// The routing choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelRoutes {
    /// The tunnel device, while it exists.
    pub ifindex: Option<u32>,
    /// Remote subnets whose traffic goes into the tunnel.
    pub encrypted: BTreeSet<IpNet>,
    /// Every remote subnet goes into the tunnel, with or without a session (fail closed).
    pub strict: bool,
}

impl TunnelRoutes {
    /// The tunnel's ifindex if traffic to `subnet` must go into it.
    pub fn via_tunnel(&self, subnet: &IpNet) -> Option<u32> {
        let dev = self.ifindex?;
        (self.strict || self.encrypted.contains(subnet)).then_some(dev)
    }
}

/// Shared between the controller (writer) and the backend (reader).
pub type SharedRoutes = Arc<RwLock<TunnelRoutes>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_with_a_device_and_then_by_subnet_or_strict() {
        let a: IpNet = "10.0.1.0/24".parse().unwrap();
        let b: IpNet = "10.0.2.0/24".parse().unwrap();
        let mut r = TunnelRoutes { ifindex: None, encrypted: [a].into(), strict: true };
        assert_eq!(r.via_tunnel(&a), None);
        r.ifindex = Some(7);
        assert_eq!((r.via_tunnel(&a), r.via_tunnel(&b)), (Some(7), Some(7)));
        r.strict = false;
        assert_eq!((r.via_tunnel(&a), r.via_tunnel(&b)), (Some(7), None));
    }
}
