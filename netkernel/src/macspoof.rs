//! MAC spoofing protection on bridge ports: frames entering the bridge from a container's
//! port must carry the container's MAC. One `bridge` family table, one tagged rule per
//! port, found again by its tag (so it can be removed after the port is gone).

use std::fmt::Write;

use crate::error::{KernelError, Result};
use crate::link::{Mac, format_mac};
use crate::nft;

/// The table (in the `bridge` family).
#[derive(Debug, Clone)]
pub struct MacSpoofTable {
    table: String,
}

impl MacSpoofTable {
    /// The table named `table`; created on first use.
    pub fn new(table: &str) -> Result<Self> {
        Ok(MacSpoofTable { table: nft::table_name(table)? })
    }

    /// Drops frames from port `ifname` whose source MAC is not `mac`, tagged `tag`.
    pub fn add(&self, ifname: &str, mac: Mac, tag: &str) -> Result<()> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['"', '\\', ' ']) {
            return Err(KernelError::InvalidName { name: ifname.into(), why: "not an interface name" });
        }
        let t = &self.table;
        let mut s = String::new();
        let _ = writeln!(s, "add table bridge {t}");
        let _ = writeln!(
            s,
            "add chain bridge {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}"
        );
        let _ = writeln!(
            s,
            "add rule bridge {t} prerouting iifname \"{ifname}\" ether saddr != {} drop comment {}",
            format_mac(&mac),
            nft::quote(tag)
        );
        nft::apply(&s, &format!("adding MAC spoof protection on {ifname}"))
    }

    /// The rules' (handle, tag) pairs.
    fn rules(&self) -> Result<Vec<(u64, String)>> {
        let Some(json) =
            nft::list_json(&["chain", "bridge", &self.table, "prerouting"], "listing MAC spoof rules")?
        else {
            return Ok(Vec::new());
        };
        Ok(json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.get("rule"))
            .filter_map(|r| {
                Some((r["handle"].as_u64()?, r["comment"].as_str().unwrap_or_default().to_string()))
            })
            .collect())
    }

    /// The tags that have a rule.
    pub fn tags(&self) -> Result<Vec<String>> {
        Ok(self.rules()?.into_iter().map(|(_, t)| t).collect())
    }

    /// Removes every rule whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<u64> =
            self.rules()?.into_iter().filter(|(_, t)| matches(t)).map(|(h, _)| h).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut s = String::new();
        for h in &doomed {
            let _ = writeln!(s, "delete rule bridge {} prerouting handle {h}", self.table);
        }
        match nft::apply(&s, "removing MAC spoof rules") {
            // A concurrent remover got there first: what matters is that they are gone.
            Err(_) if self.rules()?.iter().all(|(_, t)| !matches(t)) => Ok(doomed.len()),
            Err(e) => Err(e),
            Ok(()) => Ok(doomed.len()),
        }
    }
}
