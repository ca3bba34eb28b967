//! The plugins' logic; each binary in `src/bin/` is a thin `main` over one module.

#![forbid(unsafe_code)]

pub mod bandwidth;
pub mod bridge;
pub mod error;
pub mod firewall;
pub mod fsutil;
pub mod host_local;
pub mod loopback;
pub mod nsutil;
pub mod portmap;
pub mod tuning;
pub mod vxlan;
