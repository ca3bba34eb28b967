//! The kernel layer: every operation on network namespaces, links, addresses, routes,
//! neighbours, FDB entries, sysctls and nftables that the plugins, the daemon and the tests
//! need, in one place. It knows nothing about CNI or leases.

pub mod error;
pub mod netns;

pub use error::KernelError;
pub use netns::NetNs;
