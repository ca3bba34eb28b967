//! A node's masquerade and forward rules for the overlay (flannel's rule set, in one nft
//! table): replaced in one transaction, so there is never a moment without them, and
//! checked cheaply so a periodic resync only writes when something drifted.

use std::fmt::Write;

use ipnet::IpNet;

use crate::error::Result;
use crate::nftables::expr::{self, CmpOp, Expr, REG_1, meta};
use crate::nftables::{self, BaseChain, Batch, Family, Hook, Verdict};

const INET: Family = Family::Inet;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
const FULLY_RANDOM: u32 = 0x10;

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

    /// The transaction [`NodeRules::apply`] sends: what [`NodeRules::script`] says, as
    /// netfilter netlink messages.
    pub fn batch(&self) -> Result<Batch> {
        let t = crate::nft::table_name(&self.table)?;
        let tag = format!("ferrocni {:016x}", self.fingerprint());
        let mut b = Batch::new();
        b.add_table(INET, &t);
        let nat = BaseChain { kind: "nat", hook: Hook::Postrouting, priority: 100, accept: true };
        let filter = BaseChain { kind: "filter", hook: Hook::Forward, priority: 0, accept: true };
        b.add_chain(INET, &t, "postrouting", Some(&nat)).add_chain(INET, &t, "forward", Some(&filter));
        b.flush_chain(INET, &t, "postrouting").flush_chain(INET, &t, "forward");
        let ret = || expr::verdict(Verdict::Return);
        let masq = Expr::Masq { flags: FULLY_RANDOM };
        // `<fam> saddr [!=] a <fam> daddr [!=] b`: one protocol check, two matches.
        let pair = |s: &IpNet, sop, d: &IpNet, dop| {
            let mut r = expr::nfproto(matches!(s, IpNet::V6(_)));
            r.extend(expr::match_prefix(s, true, sop));
            r.extend(expr::match_prefix(d, false, dop));
            r
        };
        if self.masquerade {
            let mark = KUBE_PROXY_MARK.to_ne_bytes().to_vec();
            let r = [
                Expr::Meta { key: meta::MARK, dreg: REG_1 },
                Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask: mark.clone(), xor: vec![0; 4] },
                Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: mark },
                ret(),
            ];
            b.add_rule(INET, &t, "postrouting", &r, Some(&tag));
            for (_, nets, mcast) in self.families() {
                let (net, pods) = (&nets.network, &nets.pods);
                let mcast: IpNet = mcast.parse().expect("a valid prefix");
                let (eq, ne) = (CmpOp::Eq, CmpOp::Neq);
                for (mut r, last) in [
                    (pair(pods, eq, net, eq), ret()),
                    (pair(net, eq, pods, eq), ret()),
                    (pair(net, ne, pods, eq), ret()),
                    (pair(net, eq, &mcast, ne), masq.clone()),
                    (pair(net, ne, net, eq), masq.clone()),
                ] {
                    r.push(last);
                    b.add_rule(INET, &t, "postrouting", &r, Some(&tag));
                }
            }
        }
        if self.forward {
            for (_, nets, _) in self.families() {
                for src in [true, false] {
                    let mut r = expr::match_net(&nets.network, src, CmpOp::Eq);
                    r.push(expr::verdict(Verdict::Accept));
                    b.add_rule(INET, &t, "forward", &r, Some(&tag));
                }
            }
        }
        Ok(b)
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
        let tag = format!("ferrocni {:016x}", self.fingerprint());
        let mut count = 0;
        for chain in ["postrouting", "forward"] {
            let Some(rules) = nftables::rules(INET, &self.table, chain, "listing the overlay rules")? else {
                return Ok(false);
            };
            if rules.iter().any(|r| r.comment.as_deref() != Some(&tag)) {
                return Ok(false);
            }
            count += rules.len();
        }
        Ok(count == self.expected_rules())
    }

    /// Writes the rules (one transaction).
    pub fn apply(&self) -> Result<()> {
        nftables::apply(&self.batch()?, "applying the overlay rules")
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
        let table = crate::nft::table_name(table)?;
        let mut b = Batch::new();
        b.delete_table(INET, &table);
        match nftables::apply(&b, "removing the overlay rules") {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}
