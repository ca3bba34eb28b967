//! Strict encryption: one nft table that keeps pod traffic between nodes on the tunnel.
//! It drops pod traffic entering or leaving through the plaintext overlay devices (the
//! VXLAN ones), and packets with a pod-network source arriving in plaintext anywhere else:
//! a remote pod's address is accepted only from the tunnel device (or loopback), and one of
//! this node's own pod range only where the route back to it leads (the pod bridge or the
//! pods' own links; strict reverse-path). Replaced in one transaction (netfilter netlink,
//! no `nft` process); removed by deleting the table.

use std::fmt::Write;

use ipnet::IpNet;

use crate::error::{KernelError, Result};
use crate::nft;
use crate::nftables::expr::{self, CmpOp, Expr, REG_1, meta};
use crate::nftables::{self, BaseChain, Batch, Family, Hook, KeyType, Verdict};

const INET: Family = Family::Inet;

/// The rules' comments, which `nft list` shows with their counters.
const PLAINTEXT: &str = "ferrocni strict: unencrypted overlay traffic";
const REMOTE: &str = "ferrocni strict: remote pod source not from the tunnel";
const LOCAL: &str = "ferrocni strict: local pod source off its route";

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

/// The rule set in `inet <table>` as an `nft` script: what [`batch`] sends, for reading
/// and as the oracle of the tests.
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
        let comment = nft::quote(PLAINTEXT);
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
        let remote = nft::quote(REMOTE);
        for chain in ["input", "forward"] {
            let _ = writeln!(
                s,
                "add rule inet {table} {chain} iifname != {{ {ways_in} }} {fam} saddr {}{not_own}{not_esp} counter drop comment {remote}",
                net.trunc()
            );
        }
        if let Some(o) = own {
            let local = nft::quote(LOCAL);
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

/// Whether `s` is an interface name the rules can match.
fn is_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

/// The rule set in `inet <table>` as one transaction (what [`script`] says, in messages).
pub fn batch(table: &str, r: &StrictRules) -> Result<Batch> {
    let table = nft::table_name(table)?;
    let t = table.as_str();
    if let Some(bad) = r.plaintext_devices.iter().chain(&r.tunnels).find(|d| !is_ifname(d)) {
        return Err(KernelError::InvalidName { name: bad.clone(), why: "not an interface name" });
    }
    let mut b = Batch::new();
    b.add_table(INET, t);
    // Before the node's accept rules (priority filter) so nothing else can let it through.
    for (chain, hook) in [("input", Hook::Input), ("forward", Hook::Forward), ("output", Hook::Output)] {
        let base = BaseChain { kind: "filter", hook, priority: -10, accept: true };
        b.add_chain(INET, t, chain, Some(&base)).flush_chain(INET, t, chain);
    }
    let drop_rule = |b: &mut Batch, chain: &str, mut r: Vec<Expr>, comment: &str| {
        r.push(Expr::Counter);
        r.push(expr::verdict(Verdict::Drop));
        b.add_rule(INET, t, chain, &r, Some(comment));
    };
    // `iifname|oifname [!=] { "a", "b" }`: an anonymous set per rule, as `nft` makes it.
    let names = |b: &mut Batch, key: u32, names: &[&str], invert: bool| {
        let keys: Vec<Vec<u8>> = names.iter().map(|n| expr::ifname_bytes(n)).collect();
        let id = b.add_anon_set(INET, t, KeyType::IFNAME, Some(key), &keys);
        vec![Expr::Meta { key, dreg: REG_1 }, Expr::AnonLookup { id, sreg: REG_1, invert }]
    };
    if !r.plaintext_devices.is_empty() {
        let devices: Vec<&str> = r.plaintext_devices.iter().map(String::as_str).collect();
        for (chain, key) in [
            ("input", meta::IIFNAME),
            ("forward", meta::IIFNAME),
            ("forward", meta::OIFNAME),
            ("output", meta::OIFNAME),
        ] {
            let m = names(&mut b, key, &devices, false);
            drop_rule(&mut b, chain, m, PLAINTEXT);
        }
    }
    let ways_in: Vec<&str> = r.tunnels.iter().map(String::as_str).chain(["lo"]).collect();
    for net in &r.pod_networks {
        let v6 = matches!(net, IpNet::V6(_));
        let own = r.own_subnets.iter().find(|o| matches!(o, IpNet::V6(_)) == v6 && net.contains(*o));
        for chain in ["input", "forward"] {
            let mut m = names(&mut b, meta::IIFNAME, &ways_in, true);
            m.extend(expr::nfproto(v6));
            m.extend(expr::match_prefix(&net.trunc(), true, CmpOp::Eq));
            if let Some(o) = own {
                m.extend(expr::match_prefix(&o.trunc(), true, CmpOp::Neq));
            }
            if r.xfrm {
                // `meta ipsec missing`
                m.push(Expr::Meta { key: meta::SECPATH, dreg: REG_1 });
                m.push(Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![0] });
            }
            drop_rule(&mut b, chain, m, REMOTE);
        }
        if let Some(o) = own {
            for chain in ["input", "forward"] {
                // `<fam> saddr <own> fib saddr . iif oif missing`
                let mut m = expr::match_net(&o.trunc(), true, CmpOp::Eq);
                let flags = expr::fib::F_SADDR | expr::fib::F_IIF | expr::fib::F_PRESENT;
                m.push(Expr::Fib { flags, result: expr::fib::RESULT_OIF, dreg: REG_1 });
                m.push(Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![0; 4] });
                drop_rule(&mut b, chain, m, LOCAL);
            }
        }
    }
    Ok(b)
}

/// Installs (or replaces) the strict rules.
pub fn ensure(table: &str, rules: &StrictRules) -> Result<()> {
    nftables::apply(&batch(table, rules)?, "installing the strict encryption rules")
}

/// Whether the table exists.
pub fn present(table: &str) -> Result<bool> {
    nftables::table_exists(INET, &nft::table_name(table)?, "reading the strict encryption rules")
}

/// Removes the rules (nothing to do when absent).
pub fn remove(table: &str) -> Result<()> {
    if present(table)? {
        let mut b = Batch::new();
        b.delete_table(INET, table);
        nftables::apply(&b, "removing the strict encryption rules")?;
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
