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

/// The encryption metrics, from the controller's status: the engine and (for IPsec) the
/// datapath in use, established peers and bytes per engine, the WireGuard engine's packet,
/// drop and handshake counters, charon restarts.
pub fn register_metrics(r: &mut prometheus_client::registry::Registry, status: &serde_json::Value) {
    use crate::metrics::labelled;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::metrics::info::Info;

    let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let ip = &status["ipsec"];
    let kind = status["type"].as_str().unwrap_or("none").to_string();
    r.register(
        "overlayd_encryption",
        "The encryption type of the cluster and this node's IPsec datapath",
        Info::new(vec![("type", kind), ("ipsec_datapath", text(&ip["datapath"]))]),
    );
    let engines = [("wireguard", &status["peers"]), ("ipsec", &ip["peers"])];
    let peers = |p: &serde_json::Value| p.as_array().cloned().unwrap_or_default();
    let established = Family::<crate::metrics::Label, Gauge>::default();
    for (engine, list) in engines {
        let up = peers(list).iter().filter(|p| p["established"] == true).count();
        established.get_or_create(&[("engine", engine)]).set(i64::try_from(up).unwrap_or(i64::MAX));
    }
    r.register(
        "overlayd_encryption_peers_established",
        "Peers with a session (WireGuard) or an installed child SA (IPsec)",
        established,
    );
    // Per peer counters summed: a peer that leaves takes its bytes along, which Prometheus
    // reads as a counter reset.
    let bytes = Family::<[(&str, &str); 2], prometheus_client::metrics::counter::Counter>::default();
    for (engine, list) in engines {
        for (direction, field) in [("rx", "rx_bytes"), ("tx", "tx_bytes")] {
            let sum = peers(list).iter().map(|p| n(&p[field])).sum();
            bytes.get_or_create(&[("engine", engine), ("direction", direction)]).inc_by(sum);
        }
    }
    r.register(
        "overlayd_encryption_bytes",
        "Bytes through the encryption engine's current peers, by direction",
        bytes,
    );
    let st = &status["stats"];
    r.register(
        "overlayd_wireguard_packets",
        "Packets the WireGuard engine received from and sent to the underlay",
        labelled("direction", &[("rx", n(&st["rx_packets"])), ("tx", n(&st["tx_packets"]))]),
    );
    r.register(
        "overlayd_wireguard_dropped_packets",
        "Packets the WireGuard engine dropped, by reason",
        labelled(
            "reason",
            &[
                ("no_peer", n(&st["dropped_no_peer"])),
                ("bad_source", n(&st["dropped_bad_source"])),
                ("invalid", n(&st["dropped_invalid"])),
                ("io", n(&st["dropped_io"])),
                ("replayed", n(&st["dropped_replayed"])),
                ("rate_limited", n(&st["dropped_rate_limited"])),
            ],
        ),
    );
    r.register(
        "overlayd_wireguard_handshakes",
        "Handshakes the WireGuard engine completed",
        ConstCounter::new(n(&st["handshakes_completed"])),
    );
    r.register(
        "overlayd_wireguard_cookie_replies",
        "Cookie replies sent to handshake initiators while under load",
        ConstCounter::new(n(&st["cookie_replies"])),
    );
    r.register(
        "overlayd_ipsec_charon_restarts",
        "Times charon was found dead and started again",
        ConstCounter::new(n(&ip["charon_restarts"])),
    );
}
