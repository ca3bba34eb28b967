//! Masquerade entries of the bridge plugin: one nft table for all networks, one chain per
//! network, one tagged map element per container address (see `netkernel::masq`).

use std::collections::HashSet;
use std::net::IpAddr;

use cni_spec::plugin::Attachment;
use ipnet::IpNet;
use netkernel::masq::{MasqEntry, MasqTable};

use super::error::BridgeError;

/// The nft table the bridge plugin owns.
pub const TABLE: &str = "ferrocni_bridge";

/// nft comments are at most 128 bytes; longer tags are hashed.
const MAX_TAG: usize = 120;

fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The chain of a network: a short identifier derived from its name.
pub fn group(network: &str) -> String {
    format!("n{:016x}", fnv64(network))
}

/// The tag of one attachment: readable when it fits, hashed otherwise.
pub fn tag(network: &str, container_id: &str, ifname: &str) -> String {
    let full = format!("{network}/{container_id}/{ifname}");
    if full.len() <= MAX_TAG && full.chars().all(|c| c.is_ascii_graphic()) {
        full
    } else {
        // The network's group stays readable so GC can tell which network a tag is of.
        format!(
            "h:{}:{:016x}{:016x}",
            group(network),
            fnv64(&full),
            fnv64(&full.chars().rev().collect::<String>())
        )
    }
}

fn table() -> Result<MasqTable, BridgeError> {
    MasqTable::new(TABLE).map_err(BridgeError::kernel("opening the masquerade table"))
}

/// Masquerades `ips` of one attachment (their subnets are exempt).
pub fn add(network: &str, container_id: &str, ifname: &str, ips: &[IpNet]) -> Result<(), BridgeError> {
    let exempt: Vec<IpNet> = ips.iter().map(IpNet::trunc).collect();
    let sources: Vec<IpAddr> = ips.iter().map(IpNet::addr).collect();
    table()?
        .add(&group(network), &exempt, &sources, &tag(network, container_id, ifname))
        .map_err(BridgeError::kernel("adding masquerade entries"))
}

/// Removes the entries of one attachment, whatever its addresses were. With the addresses
/// known (`prevResult`) that is one `nft` run; the tag lookup is the fallback.
pub fn remove(
    network: &str,
    container_id: &str,
    ifname: &str,
    known: &[IpAddr],
) -> Result<usize, BridgeError> {
    let t = table()?;
    if !known.is_empty() && t.remove_ips(known).is_ok() {
        return Ok(known.len());
    }
    let wanted = tag(network, container_id, ifname);
    t.remove_where(|t| t == wanted).map_err(BridgeError::kernel("removing masquerade entries"))
}

/// The entries of one attachment.
pub fn entries_of(network: &str, container_id: &str, ifname: &str) -> Result<Vec<MasqEntry>, BridgeError> {
    let wanted = tag(network, container_id, ifname);
    let all = table()?.entries().map_err(BridgeError::kernel("listing masquerade entries"))?;
    Ok(all.into_iter().filter(|e| e.tag == wanted).collect())
}

/// Whether `tag` belongs to an attachment of `network`.
pub fn tag_of_network(tag: &str, network: &str) -> bool {
    tag.starts_with(&format!("{network}/")) || tag.starts_with(&format!("h:{}:", group(network)))
}

/// Removes the entries of `network` that belong to no attachment in `valid`.
pub fn gc(network: &str, valid: &[Attachment]) -> Result<usize, BridgeError> {
    let keep: HashSet<String> = valid.iter().map(|a| tag(network, &a.container_id, &a.ifname)).collect();
    let chain = group(network);
    let t = table()?;
    let doomed: Vec<MasqEntry> = t
        .entries()
        .map_err(BridgeError::kernel("listing masquerade entries"))?
        .into_iter()
        .filter(|e| e.group == chain && !keep.contains(&e.tag))
        .collect();
    t.remove(&doomed).map_err(BridgeError::kernel("removing stale masquerade entries"))?;
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_fit_nft_comments_and_differ() {
        let short = tag("net", "c1", "eth0");
        assert_eq!(short, "net/c1/eth0");
        let long = tag("net", &"a".repeat(200), "eth0");
        assert!(long.len() < 128 && long.starts_with("h:"));
        assert!(tag_of_network(&long, "net") && tag_of_network(&short, "net"));
        assert!(!tag_of_network(&long, "other") && !tag_of_network(&short, "ne"));
        assert_ne!(long, tag("net", &"a".repeat(201), "eth0"));
        assert_ne!(group("a"), group("b"));
        assert_eq!(group("a").len(), 17);
    }
}
