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
    /// The tunnel devices (WireGuard's, kernel-libipsec's, both during a switch): the only
    /// ways in for a remote pod's address.
    pub tunnels: Vec<String>,
    /// Also accept a remote pod's address on packets the kernel's XFRM decrypted (IPsec with
    /// kernel ESP has no tunnel device: they arrive on the underlay device).
    pub xfrm: bool,
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
    let ways_in: Vec<String> = r.tunnels.iter().map(|t| nft::quote(t)).chain([nft::quote("lo")]).collect();
    let ways_in = ways_in.join(", ");
    let not_esp = if r.xfrm { " meta ipsec missing" } else { "" };
    for net in &r.pod_networks {
        let fam = family(net);
        let own = r.own_subnets.iter().find(|o| family(o) == fam && net.contains(*o));
        let not_own = own.map(|o| format!(" {fam} saddr != {}", o.trunc())).unwrap_or_default();
        let remote = nft::quote("ferrocni strict: remote pod source not from the tunnel");
        for chain in ["input", "forward"] {
            let _ = writeln!(
                s,
                "add rule inet {table} {chain} iifname != {{ {ways_in} }} {fam} saddr {}{not_own}{not_esp} counter drop comment {remote}",
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
            tunnels: vec!["ferro-wg".into()],
            xfrm: false,
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
        let empty = script("t", &StrictRules { tunnels: vec!["x".into()], ..Default::default() });
        assert!(!empty.contains("add rule"), "{empty}");
        // Two tunnels (a switch between engines): a remote pod may come in through either.
        let two = StrictRules { tunnels: vec!["ferro-wg".into(), "ipsec0".into()], ..r };
        let both = script("t", &two);
        assert!(both.contains(r#"iifname != { "ferro-wg", "ipsec0", "lo" } ip saddr"#), "{both}");
        assert!(!both.contains("meta ipsec"), "{both}");
        let esp = script("t", &StrictRules { xfrm: true, ..two });
        assert!(esp.contains("ip saddr != 10.244.3.0/24 meta ipsec missing counter drop"), "{esp}");
    }
}
