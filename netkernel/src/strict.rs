//! Strict encryption: one nft table that keeps pod traffic between nodes on the tunnel.
//! It drops pod traffic entering or leaving through the plaintext overlay devices (the
//! VXLAN ones), and packets with a pod-network source arriving in plaintext anywhere else:
//! a remote pod's address is accepted only from the tunnel device (or loopback), and one of
//! this node's own pod range only where the route back to it leads (the pod bridge or the
//! pods' own links; strict reverse-path). Replaced in one transaction; removed by deleting
//! the table.

use std::fmt::Write;

use ipnet::IpNet;

use crate::error::Result;
use crate::nft;

/// What the rules are made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StrictRules {
    /// The plaintext overlay devices (e.g. `flannel.1`, `flannel-v6.1`).
    pub plaintext_devices: Vec<String>,
    /// The tunnel device: the only way in for a remote pod's address.
    pub tunnel: String,
    /// The cluster's pod networks (one per family).
    pub pod_networks: Vec<IpNet>,
    /// This node's own pod subnets (within those networks).
    pub own_subnets: Vec<IpNet>,
}

fn family(n: &IpNet) -> &'static str {
    match n {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    }
}

/// The rule set in `inet <table>`.
pub fn script(table: &str, r: &StrictRules) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {table}");
    // Before the node's accept rules (priority filter) so nothing else can let it through.
    for (chain, hook) in [("input", "input"), ("forward", "forward"), ("output", "output")] {
        let _ = writeln!(
            s,
            "add chain inet {table} {chain} {{ type filter hook {hook} priority filter - 10; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {table} {chain}");
    }
    if !r.plaintext_devices.is_empty() {
        let set = r.plaintext_devices.iter().map(|d| nft::quote(d)).collect::<Vec<_>>().join(", ");
        let comment = nft::quote("ferrocni strict: unencrypted overlay traffic");
        let _ = writeln!(s, "add rule inet {table} input iifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} forward iifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} forward oifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} output oifname {{ {set} }} counter drop comment {comment}");
    }
    let tunnel = nft::quote(&r.tunnel);
    let lo = nft::quote("lo");
    for net in &r.pod_networks {
        let fam = family(net);
        let own = r.own_subnets.iter().find(|o| family(o) == fam && net.contains(*o));
        let not_own = own.map(|o| format!(" {fam} saddr != {}", o.trunc())).unwrap_or_default();
        let remote = nft::quote("ferrocni strict: remote pod source not from the tunnel");
        for chain in ["input", "forward"] {
            let _ = writeln!(
                s,
                "add rule inet {table} {chain} iifname != {{ {tunnel}, {lo} }} {fam} saddr {}{not_own} counter drop comment {remote}",
                net.trunc()
            );
        }
        if let Some(o) = own {
            let local = nft::quote("ferrocni strict: local pod source off its route");
            for chain in ["input", "forward"] {
                let _ = writeln!(
                    s,
                    "add rule inet {table} {chain} {fam} saddr {} fib saddr . iif oif missing counter drop comment {local}",
                    o.trunc()
                );
            }
        }
    }
    s
}

/// Installs (or replaces) the strict rules.
pub fn ensure(table: &str, rules: &StrictRules) -> Result<()> {
    nft::apply(&script(table, rules), "installing the strict encryption rules")
}

/// Whether the table exists.
pub fn present(table: &str) -> Result<bool> {
    Ok(nft::list_json(&["table", "inet", table], "reading the strict encryption rules")?.is_some())
}

/// Removes the rules (nothing to do when absent).
pub fn remove(table: &str) -> Result<()> {
    if present(table)? {
        nft::apply(&format!("delete table inet {table}\n"), "removing the strict encryption rules")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_family_with_and_without_an_own_subnet() {
        let r = StrictRules {
            plaintext_devices: vec!["flannel.1".into()],
            tunnel: "ferro-wg".into(),
            pod_networks: vec!["10.244.0.0/16".parse().unwrap(), "fd00:10::/56".parse().unwrap()],
            own_subnets: vec!["10.244.3.0/24".parse().unwrap()],
        };
        let s = script("t", &r);
        assert!(s.contains(
            r#"add rule inet t forward iifname != { "ferro-wg", "lo" } ip saddr 10.244.0.0/16 ip saddr != 10.244.3.0/24 counter drop"#
        ), "{s}");
        assert!(
            s.contains(
                "add rule inet t input ip saddr 10.244.3.0/24 fib saddr . iif oif missing counter drop"
            ),
            "{s}"
        );
        // No own IPv6 subnet: every source of that network must come from the tunnel.
        assert!(
            s.contains(
                r#"add rule inet t input iifname != { "ferro-wg", "lo" } ip6 saddr fd00:10::/56 counter drop"#
            ),
            "{s}"
        );
        assert!(!s.contains("ip6 saddr != "), "{s}");
        assert!(s.contains(r#"iifname { "flannel.1" } counter drop"#));
        // Nothing but the chains without devices or networks.
        let empty = script("t", &StrictRules { tunnel: "x".into(), ..Default::default() });
        assert!(!empty.contains("add rule"), "{empty}");
    }
}
