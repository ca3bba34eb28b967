//! The plugins' logic; each binary in `src/bin/` is a thin `main` over one module.

#![forbid(unsafe_code)]

pub mod bridge;
pub mod fsutil;
pub mod host_local;
pub mod vxlan;
