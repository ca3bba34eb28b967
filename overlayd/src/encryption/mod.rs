//! Centrally managed encryption between nodes: WireGuard in userspace (the kernels this
//! runs on may lack the WireGuard and ESP modules).
//!
//! One switch for the cluster (the network config's `Encryption` section, or `overlayctl
//! encryption enable|disable|rotate`), followed live by every daemon:
//! - [`settings`]: the section, typed and validated;
//! - [`keys`]: this node's key pair, a 0600 file in the state directory;
//! - [`lease_data`]: the public key and port each node publishes in its lease;
//! - [`device`]: the tunnel device's MTU, addresses and removal;
//! - [`routes`]: which peers' subnets are routed into the tunnel (read by the VXLAN backend,
//!   which owns all overlay routes);
//! - [`controller`]: runs the tunnel ([`crate::tunnel`]), feeds it the peers, and moves a
//!   peer's route onto the tunnel only once a handshake with it has completed — so the move,
//!   and the move back on disable, loses no packet.

pub mod admin;
pub mod controller;
pub mod device;
pub mod keys;
pub mod lease_data;
pub mod routes;
pub mod settings;

pub use settings::EncryptionSettings;
