//! The kernel layer: every operation on network namespaces, links, addresses, routes,
//! neighbours, FDB entries, sysctls and nftables that the plugins, the daemon and the tests
//! need, in one place. It knows nothing about CNI or leases.

pub mod addr;
pub mod error;
pub mod ethtool;
pub mod firewall;
pub mod flannel;
#[cfg(test)]
mod golden;
pub mod link;
pub mod macspoof;
pub mod masq;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nftables;
pub mod nodenat;
pub mod overlay;
pub mod portmap;
pub mod probe;
pub mod process;
pub mod route;
pub mod strict;
pub mod sysctl;
pub mod tc;
pub mod tun;
pub mod xfrm;

pub use error::KernelError;
pub use link::Link;
pub use netlink::Netlink;
pub use netns::NetNs;
