//! Forwarding rules for container addresses, and isolation between bridges, in one
//! nftables table:
//!
//! ```text
//! table inet <name>
//!   set allowed4/6    container addresses (tagged per attachment): forwarding from them,
//!                     and replies to them, accepted
//!   set isolated      bridges with the same-bridge ingress policy
//!   map isolation     isolated bridge : jump <its chain>, which drops what it would send
//!                     to another isolated bridge
//!   chain admin       the operator's: created empty, never flushed
//!   chain forward     (filter, forward hook)
//! ```

use std::fmt::Write;
use std::net::IpAddr;

use serde_json::Value;

use crate::error::{KernelError, Result};
use crate::nft;

/// An allowed container address and its tag.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allowed {
    /// The address.
    pub ip: IpAddr,
    /// The tag.
    pub tag: String,
}

/// The firewall table.
#[derive(Debug, Clone)]
pub struct FirewallTable {
    table: String,
}

fn fnv64(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Whether `s` can be put in an nft script as a quoted interface name.
fn is_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

impl FirewallTable {
    /// The table named `table` in the `inet` family (created on first use).
    pub fn new(table: &str) -> Result<Self> {
        Ok(FirewallTable { table: nft::table_name(table)? })
    }

    fn structure(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(s, "add set inet {t} allowed4 {{ type ipv4_addr; }}");
        let _ = writeln!(s, "add set inet {t} allowed6 {{ type ipv6_addr; }}");
        let _ = writeln!(s, "add set inet {t} isolated {{ type ifname; }}");
        let _ = writeln!(s, "add map inet {t} isolation {{ type ifname : verdict; }}");
        let _ = writeln!(s, "add chain inet {t} admin");
        let _ = writeln!(
            s,
            "add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} forward");
        let _ = writeln!(s, "add rule inet {t} forward jump admin");
        let _ = writeln!(s, "add rule inet {t} forward iifname vmap @isolation");
        let _ =
            writeln!(s, "add rule inet {t} forward ct state established,related ip daddr @allowed4 accept");
        let _ =
            writeln!(s, "add rule inet {t} forward ct state established,related ip6 daddr @allowed6 accept");
        let _ = writeln!(s, "add rule inet {t} forward ip saddr @allowed4 accept");
        let _ = writeln!(s, "add rule inet {t} forward ip6 saddr @allowed6 accept");
        s
    }

    fn isolation(&self, bridge: &str) -> String {
        let t = &self.table;
        let chain = format!("iso_{:016x}", fnv64(bridge));
        let mut s = String::new();
        let _ = writeln!(s, "add chain inet {t} {chain}");
        let _ = writeln!(s, "flush chain inet {t} {chain}");
        let _ = writeln!(s, "add rule inet {t} {chain} oifname \"{bridge}\" return");
        let _ = writeln!(s, "add rule inet {t} {chain} oifname @isolated drop");
        let _ = writeln!(s, "add element inet {t} isolated {{ \"{bridge}\" }}");
        let _ = writeln!(s, "add element inet {t} isolation {{ \"{bridge}\" : jump {chain} }}");
        s
    }

    /// Accepts forwarding for `ips` (tagged `tag`) and, when `isolate` names a bridge, drops
    /// traffic between it and the other isolated bridges; one transaction.
    pub fn add(&self, ips: &[IpAddr], tag: &str, isolate: Option<&str>) -> Result<()> {
        let t = &self.table;
        let comment = nft::quote(tag);
        let mut body = String::new();
        if let Some(br) = isolate {
            if !is_ifname(br) {
                return Err(KernelError::InvalidName { name: br.into(), why: "not an interface name" });
            }
            body += &self.isolation(br);
        }
        for ip in ips {
            let set = if ip.is_ipv4() { "allowed4" } else { "allowed6" };
            let _ = writeln!(body, "add element inet {t} {set} {{ {ip} comment {comment} }}");
        }
        let what = format!("adding firewall entries tagged {tag:?}");
        if nft::apply(&body, &what).is_ok() {
            return Ok(());
        }
        nft::apply(&(self.structure() + &body), &what)
    }

    /// Every allowed address.
    pub fn allowed(&self) -> Result<Vec<Allowed>> {
        let Some(json) = nft::list_json(&["table", "inet", &self.table], "listing firewall entries")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for obj in json["nftables"].as_array().into_iter().flatten() {
            let set = &obj["set"];
            if !matches!(set["name"].as_str(), Some("allowed4" | "allowed6")) {
                continue;
            }
            for e in set["elem"].as_array().into_iter().flatten() {
                let (v, tag) = match e.get("elem") {
                    Some(x) => (&x["val"], x["comment"].as_str().unwrap_or_default()),
                    None => (e, ""),
                };
                if let Some(ip) = v.as_str().and_then(|s| s.parse().ok()) {
                    out.push(Allowed { ip, tag: tag.to_string() });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The bridges with isolation.
    pub fn isolated(&self) -> Result<Vec<String>> {
        let Some(json) =
            nft::list_json(&["set", "inet", &self.table, "isolated"], "listing isolated bridges")?
        else {
            return Ok(Vec::new());
        };
        Ok(json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|o| o["set"]["elem"].as_array().cloned().unwrap_or_default())
            .filter_map(|v: Value| v.as_str().map(String::from))
            .collect())
    }

    /// Removes the addresses whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<Allowed> = self.allowed()?.into_iter().filter(|a| matches(&a.tag)).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let t = &self.table;
        let mut s = String::new();
        for a in &doomed {
            let set = if a.ip.is_ipv4() { "allowed4" } else { "allowed6" };
            let _ = writeln!(s, "delete element inet {t} {set} {{ {} }}", a.ip);
        }
        if let Err(e) = nft::apply(&s, "removing firewall entries")
            && self.allowed()?.iter().any(|a| matches(&a.tag))
        {
            return Err(e);
        }
        Ok(doomed.len())
    }
}
