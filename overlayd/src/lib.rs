//! overlayd: the per-node overlay daemon's library — network config, subnet leases on
//! etcd v3 or an embedded SQLite store, peer events, subnet.env and the local API.
//! Kernel-facing code lives in netkernel, the encryption datapath in wgtunnel: no unsafe
//! code here.

#![forbid(unsafe_code)]

/// `<version> (commit <git commit>)`, for `--version` and `overlayd_build_info`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FERROCNI_GIT_COMMIT"), ")");
/// The git commit the binaries were built from (`unknown` outside git without
/// `FERROCNI_GIT_COMMIT`).
pub const GIT_COMMIT: &str = env!("FERROCNI_GIT_COMMIT");

pub mod api;
pub mod attrs;
pub mod backend;
pub mod client;
pub mod config;
pub mod config_watch;
pub mod daemon;
pub mod encryption;
pub mod hostgw;
pub mod identity;
pub mod kernel;
pub mod kube;
pub mod lease;
pub mod logsafe;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod operator;
pub mod options;
pub mod outputs;
pub mod peer;
pub mod pins;
pub mod readiness;
pub mod retry;
pub mod state;
pub mod store;
pub mod subnet;
pub mod subnet_env;
pub mod underlay;
pub mod validate;
pub mod vxlan;
pub mod watcher;
