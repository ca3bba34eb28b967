//! flannel's leftovers on a node moved to overlayd: its masquerade and forward chains
//! (`FLANNEL-POSTRTG` in `nat`, `FLANNEL-FWD` in `filter`, with the jumps to them from
//! `POSTROUTING` and `FORWARD`), for IPv4 and IPv6, in the iptables-nft tables and in the
//! legacy (xtables) ones, and the tables of flannel's nftables mode (`ip flannel-ipv4`,
//! `ip6 flannel-ipv6`). Only those names are touched, each removal is atomic (nft) or
//! ends with the chain gone (legacy), and nothing is created: a legacy table the kernel
//! does not have in this namespace is not asked for (that would load it).
//! Acts in the namespace of the calling thread.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::error::{KernelError, Result};
use crate::nft;

/// flannel's chains: (table, the built-in chain that jumps to it, the chain).
const CHAINS: [(&str, &str, &str); 2] =
    [("nat", "POSTROUTING", "FLANNEL-POSTRTG"), ("filter", "FORWARD", "FLANNEL-FWD")];

/// flannel's nftables-mode tables (its `pkg/trafficmngr/nftables`).
const NFT_TABLES: [(&str, &str); 2] = [("ip", "flannel-ipv4"), ("ip6", "flannel-ipv6")];

/// Removes what flannel left; returns what was removed (`nft table ip flannel-ipv4`,
/// `iptables-nft nat FLANNEL-POSTRTG`, `ip6tables-legacy filter FLANNEL-FWD`, …), empty
/// when there was nothing. Safe to repeat.
pub fn remove_leftovers() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for (family, table) in NFT_TABLES {
        if nft::list_json(&["table", family, table], "looking for flannel's nft table")?.is_some() {
            nft::apply(&format!("delete table {family} {table}\n"), "removing flannel's nft table")?;
            removed.push(format!("nft table {family} {table}"));
        }
    }
    for (family, tool) in [("ip", "iptables-nft"), ("ip6", "ip6tables-nft")] {
        for (table, hook, chain) in CHAINS {
            if remove_nft_chain(family, table, hook, chain)? {
                removed.push(format!("{tool} {table} {chain}"));
            }
        }
    }
    for (names, tool) in [
        ("/proc/thread-self/net/ip_tables_names", "iptables-legacy"),
        ("/proc/thread-self/net/ip6_tables_names", "ip6tables-legacy"),
    ] {
        // The legacy tables this thread's namespace has (`/proc/net` would be the process's);
        // an absent file is a kernel without them.
        let present = std::fs::read_to_string(names).unwrap_or_default();
        for (table, hook, chain) in CHAINS {
            if present.lines().any(|l| l.trim() == table) && remove_legacy_chain(tool, table, hook, chain)? {
                removed.push(format!("{tool} {table} {chain}"));
            }
        }
    }
    Ok(removed)
}

/// An iptables-nft chain: the jumps to it, its rules and itself in one transaction.
fn remove_nft_chain(family: &str, table: &str, hook: &str, chain: &str) -> Result<bool> {
    let what = format!("removing flannel's {family} {table} {chain}");
    if nft::list_json(&["chain", family, table, chain], &what)?.is_none() {
        return Ok(false);
    }
    let mut script = String::new();
    if let Some(rules) = nft::list_json(&["chain", family, table, hook], &what)? {
        for handle in jump_handles(&rules, chain) {
            script.push_str(&format!("delete rule {family} {table} {hook} handle {handle}\n"));
        }
    }
    script
        .push_str(&format!("flush chain {family} {table} {chain}\ndelete chain {family} {table} {chain}\n"));
    nft::apply(&script, &what)?;
    Ok(true)
}

/// Handles of the rules in a listed chain that jump or go to `target`.
fn jump_handles(listing: &Value, target: &str) -> Vec<u64> {
    let items = listing.get("nftables").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            r.get("expr").and_then(Value::as_array).is_some_and(|e| {
                e.iter().any(|x| {
                    ["jump", "goto"]
                        .iter()
                        .any(|k| x.get(k).and_then(|j| j.get("target")) == Some(&target.into()))
                })
            })
        })
        .filter_map(|r| r.get("handle").and_then(Value::as_u64))
        .collect()
}

/// The legacy tool, from `PATH` or the usual `sbin` places; `None` when not installed.
fn legacy_binary(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn legacy(bin: &PathBuf, args: &[&str], what: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg("-w")
        .args(args)
        .output()
        .map_err(KernelError::io(format!("{what}: running {}", bin.display())))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Command {
            what: what.into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().into(),
        })
    }
}

/// A legacy chain: the jumps to it (by position, last first), its rules, itself.
fn remove_legacy_chain(tool: &str, table: &str, hook: &str, chain: &str) -> Result<bool> {
    let what = format!("removing flannel's {tool} {table} {chain}");
    let Some(bin) = legacy_binary(tool) else {
        return Err(KernelError::Command {
            what,
            stderr: format!(
                "the kernel has legacy {table} rules but {tool} is not installed (Debian iptables)"
            ),
        });
    };
    // `-S` of a chain that does not exist fails: nothing of flannel's here.
    if legacy(&bin, &["-t", table, "-S", chain], &what).is_err() {
        return Ok(false);
    }
    let rules = legacy(&bin, &["-t", table, "-S", hook], &what)?;
    let positions: Vec<usize> = rules
        .lines()
        .filter(|l| l.starts_with("-A "))
        .enumerate()
        .filter(|(_, l)| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.windows(2).any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
        })
        .map(|(i, _)| i + 1)
        .collect();
    for n in positions.iter().rev() {
        legacy(&bin, &["-t", table, "-D", hook, &n.to_string()], &what)?;
    }
    legacy(&bin, &["-t", table, "-F", chain], &what)?;
    legacy(&bin, &["-t", table, "-X", chain], &what)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_and_gotos_to_the_chain_only() {
        let listing: Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {}}, {"chain": {"name": "POSTROUTING"}},
            {"rule": {"handle": 3, "expr": [{"xt": {"name": "comment"}}, {"jump": {"target": "FLANNEL-POSTRTG"}}]}},
            {"rule": {"handle": 4, "expr": [{"jump": {"target": "KUBE-POSTROUTING"}}]}},
            {"rule": {"handle": 7, "expr": [{"goto": {"target": "FLANNEL-POSTRTG"}}]}},
            {"rule": {"handle": 8, "expr": [{"jump": {"target": "FLANNEL-POSTRTG-X"}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(jump_handles(&listing, "FLANNEL-POSTRTG"), [3, 7]);
        assert!(jump_handles(&Value::Null, "FLANNEL-POSTRTG").is_empty());
    }
}
