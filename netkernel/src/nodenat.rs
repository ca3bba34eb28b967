//! A node's masquerade and forward rules for the overlay (flannel's rule set, in one nft
//! table): replaced in one transaction, so there is never a moment without them, and
//! checked cheaply so a periodic resync only writes when something drifted.

use std::fmt::Write;

use ipnet::IpNet;
use serde_json::Value;

use crate::error::{KernelError, Result};
use crate::nft;

/// kube-proxy marks packets it wants masqueraded with this bit; they must not be NATed twice
/// (the VXLAN checksum bug, kubernetes#92035).
pub const KUBE_PROXY_MARK: u32 = 0x4000;

/// One family's networks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyNets {
    /// The cluster network.
    pub network: IpNet,
    /// This node's pod subnet.
    pub pods: IpNet,
}

/// The rules to have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRules {
    /// nft table name (in the `inet` family).
    pub table: String,
    /// IPv4 networks, if IPv4 is on.
    pub v4: Option<FamilyNets>,
    /// IPv6 networks, if IPv6 is on.
    pub v6: Option<FamilyNets>,
    /// Masquerade pod traffic leaving the cluster network.
    pub masquerade: bool,
    /// Accept forwarded cluster traffic (for hosts whose FORWARD policy drops).
    pub forward: bool,
}

impl NodeRules {
    /// The nft script that replaces the table's chains with the desired rules. Every rule
    /// carries a comment with the fingerprint of the whole set, so [`NodeRules::in_place`]
    /// can tell an exact match from drift.
    pub fn script(&self) -> String {
        let t = &self.table;
        let tag = format!("\"ferrocni {:016x}\"", self.fingerprint());
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(
            s,
            "add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
        );
        let _ = writeln!(
            s,
            "add chain inet {t} forward {{ type filter hook forward priority filter; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} postrouting");
        let _ = writeln!(s, "flush chain inet {t} forward");
        let mut rule = |chain: &str, body: String| {
            let _ = writeln!(s, "add rule inet {t} {chain} {body} comment {tag}");
        };
        if self.masquerade {
            rule("postrouting", format!("meta mark & {KUBE_PROXY_MARK:#x} == {KUBE_PROXY_MARK:#x} return"));
            for (fam, nets, mcast) in self.families() {
                let (net, pods) = (nets.network, nets.pods);
                rule("postrouting", format!("{fam} saddr {pods} {fam} daddr {net} return"));
                rule("postrouting", format!("{fam} saddr {net} {fam} daddr {pods} return"));
                // Outside traffic to local pods keeps its source (flannel's nft variant tests
                // the pod subnet here, which shadows the next rule but one).
                rule("postrouting", format!("{fam} saddr != {net} {fam} daddr {pods} return"));
                rule(
                    "postrouting",
                    format!("{fam} saddr {net} {fam} daddr != {mcast} masquerade fully-random"),
                );
                rule(
                    "postrouting",
                    format!("{fam} saddr != {net} {fam} daddr {net} masquerade fully-random"),
                );
            }
        }
        if self.forward {
            for (fam, nets, _) in self.families() {
                rule("forward", format!("{fam} saddr {} accept", nets.network));
                rule("forward", format!("{fam} daddr {} accept", nets.network));
            }
        }
        s
    }

    fn families(&self) -> Vec<(&'static str, &FamilyNets, &'static str)> {
        let mut v = Vec::new();
        if let Some(n) = &self.v4 {
            v.push(("ip", n, "224.0.0.0/4"));
        }
        if let Some(n) = &self.v6 {
            v.push(("ip6", n, "ff00::/8"));
        }
        v
    }

    fn expected_rules(&self) -> usize {
        let per_family = self.families().len();
        let masq = if self.masquerade { 1 + 5 * per_family } else { 0 };
        let fwd = if self.forward { 2 * per_family } else { 0 };
        masq + fwd
    }

    fn fingerprint(&self) -> u64 {
        let desc = format!("{:?}", (&self.v4, &self.v6, self.masquerade, self.forward));
        desc.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
    }

    /// Whether the table holds exactly these rules.
    pub fn in_place(&self) -> Result<bool> {
        let Some(json) = nft::list_json(&["table", "inet", &self.table], "listing the overlay rules")? else {
            return Ok(false);
        };
        let tag = format!("ferrocni {:016x}", self.fingerprint());
        let rules: Vec<&Value> =
            json["nftables"].as_array().into_iter().flatten().filter_map(|o| o.get("rule")).collect();
        Ok(rules.len() == self.expected_rules() && rules.iter().all(|r| r["comment"].as_str() == Some(&tag)))
    }

    /// Writes the rules (one transaction).
    pub fn apply(&self) -> Result<()> {
        nft::apply(&self.script(), "applying the overlay rules")
    }

    /// Writes the rules only if they drifted; returns whether it wrote.
    pub fn ensure(&self) -> Result<bool> {
        if self.in_place()? {
            return Ok(false);
        }
        self.apply()?;
        Ok(true)
    }

    /// Removes the table.
    pub fn remove(table: &str) -> Result<()> {
        match nft::apply(&format!("delete table inet {table}\n"), "removing the overlay rules") {
            Err(KernelError::Command { stderr, .. }) if stderr.contains("No such file") => Ok(()),
            other => other,
        }
    }
}
