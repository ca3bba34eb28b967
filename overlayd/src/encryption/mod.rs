//! Centrally managed encryption between nodes: WireGuard in userspace (the kernels this
//! runs on may lack the WireGuard and ESP modules), or IPsec with strongSwan's charon
//! ([`ipsec`]: IKEv2 over VICI, ESP in the kernel or in charon's userspace).
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
pub mod ipsec;
pub mod keys;
pub mod lease_data;
pub mod routes;
pub mod settings;

pub use settings::EncryptionSettings;

/// The encryption lines of `/metrics`, from the controller's status: the engine and (for
/// IPsec) the datapath in use, established peers per engine, charon restarts.
pub fn metrics(status: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let kind = status["type"].as_str().unwrap_or("none");
    let ip = &status["ipsec"];
    let datapath = ip["datapath"].as_str().unwrap_or("");
    let _ = writeln!(
        out,
        "# HELP overlayd_encryption_info The encryption type of the cluster and this node's IPsec datapath.\n\
         # TYPE overlayd_encryption_info gauge\n\
         overlayd_encryption_info{{type=\"{kind}\",ipsec_datapath=\"{datapath}\"}} 1"
    );
    let count = |peers: &serde_json::Value| {
        peers.as_array().map_or(0, |a| a.iter().filter(|p| p["established"] == true).count())
    };
    let _ = writeln!(
        out,
        "# HELP overlayd_encryption_peers_established Peers with a session (WireGuard) or an installed child SA (IPsec).\n\
         # TYPE overlayd_encryption_peers_established gauge\n\
         overlayd_encryption_peers_established{{engine=\"wireguard\"}} {}\n\
         overlayd_encryption_peers_established{{engine=\"ipsec\"}} {}",
        count(&status["peers"]),
        count(&ip["peers"])
    );
    let _ = writeln!(
        out,
        "# HELP overlayd_ipsec_charon_restarts_total Times charon was found dead and started again.\n\
         # TYPE overlayd_ipsec_charon_restarts_total counter\n\
         overlayd_ipsec_charon_restarts_total {}",
        ip["charon_restarts"].as_u64().unwrap_or(0)
    );
    out
}
