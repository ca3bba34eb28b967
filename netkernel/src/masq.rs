//! Source-NAT (masquerade) for container addresses, with a rule count that does not grow
//! with the number of containers.
//!
//! One `inet` table holds two verdict maps, `src4` and `src6`, from a container address to
//! `jump <group chain>`. Each group (one per network) has a chain that returns for its own
//! subnets (set `<group>_d4`/`<group>_d6`) and multicast, and masquerades the rest. Every
//! map element carries a comment, its tag, so entries can be found and removed without
//! knowing the container's addresses (e.g. on DEL after the netns is gone).

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::error::{KernelError, Result};
use crate::nft;

/// One masqueraded source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MasqEntry {
    /// The container address.
    pub ip: IpAddr,
    /// The tag it was added with.
    pub tag: String,
    /// The group chain it jumps to.
    pub group: String,
}

/// The masquerade table.
#[derive(Debug, Clone)]
pub struct MasqTable {
    table: String,
}

impl MasqTable {
    /// The table named `table` in the `inet` family (created on first use).
    pub fn new(table: &str) -> Result<Self> {
        Ok(MasqTable { table: nft::table_name(table)? })
    }

    /// Masquerades traffic from `sources` leaving `exempt` (the group's own subnets), under
    /// `group` (a chain name), tagged `tag`. Idempotent, and safe against concurrent callers:
    /// the whole change is one transaction whose shared parts are rebuilt identically.
    pub fn add(&self, group: &str, exempt: &[IpNet], sources: &[IpAddr], tag: &str) -> Result<()> {
        if !nft::is_ident(group) || group.len() > 28 {
            return Err(KernelError::InvalidName { name: group.into(), why: "not an nft identifier" });
        }
        let t = &self.table;
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(s, "add map inet {t} src4 {{ type ipv4_addr : verdict; }}");
        let _ = writeln!(s, "add map inet {t} src6 {{ type ipv6_addr : verdict; }}");
        let _ = writeln!(s, "add set inet {t} {group}_d4 {{ type ipv4_addr; flags interval; auto-merge; }}");
        let _ = writeln!(s, "add set inet {t} {group}_d6 {{ type ipv6_addr; flags interval; auto-merge; }}");
        let _ = writeln!(s, "add chain inet {t} {group}");
        let _ = writeln!(s, "flush chain inet {t} {group}");
        let _ = writeln!(s, "add rule inet {t} {group} ip daddr @{group}_d4 return");
        let _ = writeln!(s, "add rule inet {t} {group} ip6 daddr @{group}_d6 return");
        let _ = writeln!(s, "add rule inet {t} {group} ip daddr 224.0.0.0/4 return");
        let _ = writeln!(s, "add rule inet {t} {group} ip6 daddr ff00::/8 return");
        let _ = writeln!(s, "add rule inet {t} {group} masquerade");
        let _ = writeln!(
            s,
            "add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} postrouting");
        let _ = writeln!(s, "add rule inet {t} postrouting ip saddr vmap @src4");
        let _ = writeln!(s, "add rule inet {t} postrouting ip6 saddr vmap @src6");
        // The shared part (table, maps, chains, rules) exists after the first ADD on a host:
        // then adding the elements alone is a much smaller transaction. Only when that fails
        // (something missing) is the whole structure (re)built, elements included.
        let mut elements = String::new();
        {
            let s = &mut elements;
            for net in exempt {
                let set = if matches!(net, IpNet::V4(_)) { "d4" } else { "d6" };
                let _ = writeln!(s, "add element inet {t} {group}_{set} {{ {} }}", net.trunc());
            }
            let comment = nft::quote(tag);
            for ip in sources {
                let map = if ip.is_ipv4() { "src4" } else { "src6" };
                let _ = writeln!(s, "add element inet {t} {map} {{ {ip} comment {comment} : jump {group} }}");
            }
        }
        let what = format!("adding masquerade entries tagged {tag:?}");
        if nft::apply(&elements, &what).is_ok() {
            return Ok(());
        }
        s.push_str(&elements);
        nft::apply(&s, &what)
    }

    /// Every masqueraded source.
    pub fn entries(&self) -> Result<Vec<MasqEntry>> {
        // One listing of the whole table (both maps): each `nft` run costs milliseconds.
        let Some(json) = nft::list_json(&["table", "inet", &self.table], "listing masquerade entries")?
        else {
            return Ok(Vec::new());
        };
        let mut out = parse_elements(&json);
        out.sort();
        Ok(out)
    }

    /// Removes the entries for `ips` directly, without listing first: one `nft` run. Fails
    /// (changing nothing) if any of them is not there.
    pub fn remove_ips(&self, ips: &[IpAddr]) -> Result<()> {
        let t = &self.table;
        let mut s = String::new();
        for ip in ips {
            let map = if ip.is_ipv4() { "src4" } else { "src6" };
            let _ = writeln!(s, "delete element inet {t} {map} {{ {ip} }}");
        }
        if s.is_empty() {
            return Ok(());
        }
        nft::apply(&s, "removing masquerade entries")
    }

    /// Removes the given entries (in one transaction).
    pub fn remove(&self, entries: &[MasqEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let t = &self.table;
        let mut s = String::new();
        for e in entries {
            let map = if e.ip.is_ipv4() { "src4" } else { "src6" };
            let _ = writeln!(s, "delete element inet {t} {map} {{ {} }}", e.ip);
        }
        nft::apply(&s, "removing masquerade entries")
    }

    /// Removes every entry whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<MasqEntry> = self.entries()?.into_iter().filter(|e| matches(&e.tag)).collect();
        // Another caller may remove the same entries at the same time; what matters is that
        // they are gone afterwards.
        if let Err(e) = self.remove(&doomed) {
            let left: BTreeSet<IpAddr> =
                self.entries()?.into_iter().filter(|e| matches(&e.tag)).map(|e| e.ip).collect();
            if !left.is_empty() {
                return Err(e);
            }
        }
        Ok(doomed.len())
    }

    /// The subnets exempted for `group`.
    pub fn exempt(&self, group: &str) -> Result<Vec<IpNet>> {
        let mut out = Vec::new();
        for set in ["d4", "d6"] {
            let name = format!("{group}_{set}");
            if let Some(json) =
                nft::list_json(&["set", "inet", &self.table, &name], "listing exempt subnets")?
            {
                out.extend(set_prefixes(&json));
            }
        }
        Ok(out)
    }
}

/// Map elements from `nft -j list map`: `{"elem": {"val": "10.0.0.5", "comment": "…"}}`
/// paired with `{"jump": {"target": "…"}}`.
fn parse_elements(json: &Value) -> Vec<MasqEntry> {
    let mut out = Vec::new();
    for obj in json["nftables"].as_array().into_iter().flatten() {
        for pair in obj["map"]["elem"].as_array().into_iter().flatten() {
            let (key, verdict) = (&pair[0], &pair[1]);
            let (ip, tag) = match key.get("elem") {
                Some(e) => (e["val"].as_str(), e["comment"].as_str().unwrap_or_default()),
                None => (key.as_str(), ""),
            };
            let Some(ip) = ip.and_then(|s| s.parse().ok()) else {
                continue;
            };
            let group = verdict["jump"]["target"].as_str().unwrap_or_default().to_string();
            out.push(MasqEntry { ip, tag: tag.to_string(), group });
        }
    }
    out
}

fn set_prefixes(json: &Value) -> Vec<IpNet> {
    let mut out = Vec::new();
    for obj in json["nftables"].as_array().into_iter().flatten() {
        for e in obj["set"]["elem"].as_array().into_iter().flatten() {
            let p = &e["prefix"];
            if let (Some(addr), Some(len)) = (p["addr"].as_str(), p["len"].as_u64())
                && let Ok(net) = format!("{addr}/{len}").parse()
            {
                out.push(net);
            } else if let Some(ip) = e.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                out.push(IpNet::from(ip));
            }
        }
    }
    out
}
