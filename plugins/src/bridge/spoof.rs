//! `macspoofchk`: frames from the container's port must carry the container's MAC (one
//! tagged rule per attachment in a `bridge` family table; see `netkernel::macspoof`).

use std::collections::HashSet;

use cni_spec::plugin::Attachment;
use netkernel::link::Mac;
use netkernel::macspoof::MacSpoofTable;

use super::error::BridgeError;
use super::masq::{tag, tag_of_network};

/// The nft table (bridge family) the plugin owns.
pub const TABLE: &str = "ferrocni_macspoof";

fn table() -> Result<MacSpoofTable, BridgeError> {
    MacSpoofTable::new(TABLE).map_err(BridgeError::kernel("opening the MAC spoof table"))
}

/// Protects `host_port` for the attachment.
pub fn add(net: &str, cid: &str, ifname: &str, host_port: &str, mac: Mac) -> Result<(), BridgeError> {
    table()?
        .add(host_port, mac, &tag(net, cid, ifname))
        .map_err(BridgeError::kernel("adding the MAC spoof rule"))
}

/// Removes the attachment's rule, whether or not its port still exists.
pub fn remove(net: &str, cid: &str, ifname: &str) -> Result<(), BridgeError> {
    let wanted = tag(net, cid, ifname);
    table()?
        .remove_where(|t| t == wanted)
        .map(drop)
        .map_err(BridgeError::kernel("removing the MAC spoof rule"))
}

/// Whether the attachment has its rule.
pub fn present(net: &str, cid: &str, ifname: &str) -> Result<bool, BridgeError> {
    let wanted = tag(net, cid, ifname);
    Ok(table()?.tags().map_err(BridgeError::kernel("listing MAC spoof rules"))?.contains(&wanted))
}

/// Removes the rules of `net` whose attachment is not in `valid`.
pub fn gc(net: &str, valid: &[Attachment]) -> Result<usize, BridgeError> {
    let keep: HashSet<String> = valid.iter().map(|a| tag(net, &a.container_id, &a.ifname)).collect();
    table()?
        .remove_where(|t| tag_of_network(t, net) && !keep.contains(t))
        .map_err(BridgeError::kernel("removing stale MAC spoof rules"))
}
