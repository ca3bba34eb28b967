//! Source-NAT (masquerade) for container addresses, with a rule count that does not grow
//! with the number of containers.
//!
//! One `inet` table holds two verdict maps, `src4` and `src6`, from a container address to
//! `jump <group chain>`. Each group (one per network) has a chain that returns for its own
//! subnets (set `<group>_d4`/`<group>_d6`) and multicast, and masquerades the rest. Every
//! map element carries a comment, its tag, so entries can be found and removed without
//! knowing the container's addresses (e.g. on DEL after the netns is gone).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::{KernelError, Result};
use crate::nft;
use crate::nftables::expr::{self, CmpOp, Expr, REG_1, REG_VERDICT};
use crate::nftables::{
    self, BaseChain, Batch, Data, Element, Family, Hook, KeyType, MapData, SetSpec, Verdict, set_flags,
};

const INET: Family = Family::Inet;

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
        let comment = nftables::comment(tag)?;
        // The shared part (table, maps, chains, rules) exists after the first ADD on a host:
        // then adding the elements alone is a much smaller transaction. Only when that fails
        // (something missing) is the whole structure (re)built, elements included.
        let what = format!("adding masquerade entries tagged {tag:?}");
        let elements = self.add_batch(false, group, exempt, sources, &comment);
        if nftables::apply(&elements, &what).is_ok() {
            return Ok(());
        }
        nftables::apply(&self.add_batch(true, group, exempt, sources, &comment), &what)
    }

    /// The transaction of [`MasqTable::add`]: the elements, after the whole structure when
    /// `structure`.
    fn add_batch(
        &self,
        structure: bool,
        group: &str,
        exempt: &[IpNet],
        sources: &[IpAddr],
        comment: &str,
    ) -> Batch {
        let t = &self.table;
        let mut b = Batch::new();
        if structure {
            b.add_table(INET, t);
            for (map, key) in [("src4", KeyType::IPV4_ADDR), ("src6", KeyType::IPV6_ADDR)] {
                let spec = SetSpec {
                    name: map.into(),
                    key,
                    data: Some(MapData::Verdict),
                    flags: 0,
                    auto_merge: false,
                };
                b.add_set(INET, t, &spec);
            }
            for (set, key) in [("d4", KeyType::IPV4_ADDR), ("d6", KeyType::IPV6_ADDR)] {
                let spec = SetSpec {
                    name: format!("{group}_{set}"),
                    key,
                    data: None,
                    flags: set_flags::INTERVAL,
                    auto_merge: true,
                };
                b.add_set(INET, t, &spec);
            }
            b.add_chain(INET, t, group, None).flush_chain(INET, t, group);
            let ret = || expr::verdict(Verdict::Return);
            for (v6, set) in [(false, "d4"), (true, "d6")] {
                let mut r = expr::nfproto(v6);
                r.push(expr::load_addr(v6, false));
                r.push(Expr::Lookup {
                    set: format!("{group}_{set}"),
                    sreg: REG_1,
                    dreg: None,
                    invert: false,
                });
                r.push(ret());
                b.add_rule(INET, t, group, &r, None);
            }
            for multicast in ["224.0.0.0/4", "ff00::/8"] {
                let mut r = expr::match_net(&multicast.parse().expect("a valid prefix"), false, CmpOp::Eq);
                r.push(ret());
                b.add_rule(INET, t, group, &r, None);
            }
            b.add_rule(INET, t, group, &[Expr::Masq { flags: 0 }], None);
            let hook = BaseChain { kind: "nat", hook: Hook::Postrouting, priority: 100, accept: true };
            b.add_chain(INET, t, "postrouting", Some(&hook)).flush_chain(INET, t, "postrouting");
            for (v6, map) in [(false, "src4"), (true, "src6")] {
                let mut r = expr::nfproto(v6);
                r.push(expr::load_addr(v6, true));
                r.push(Expr::Lookup { set: map.into(), sreg: REG_1, dreg: Some(REG_VERDICT), invert: false });
                b.add_rule(INET, t, "postrouting", &r, None);
            }
        }
        for (v6, set) in [(false, "d4"), (true, "d6")] {
            let elems: Vec<Element> = exempt
                .iter()
                .filter(|n| matches!(n, IpNet::V6(_)) == v6)
                .flat_map(|n| nftables::interval(&n.trunc()))
                .collect();
            b.add_elements(INET, t, &format!("{group}_{set}"), &elems);
        }
        for (v6, map) in [(false, "src4"), (true, "src6")] {
            let elems: Vec<Element> = sources
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| Element {
                    key: expr::addr_bytes(*ip),
                    key_end: None,
                    end: false,
                    data: Some(Data::Verdict(Verdict::Jump(group.to_string()))),
                    comment: Some(comment.to_string()),
                })
                .collect();
            b.add_elements(INET, t, map, &elems);
        }
        b
    }

    /// Every masqueraded source.
    pub fn entries(&self) -> Result<Vec<MasqEntry>> {
        let mut out = Vec::new();
        for map in ["src4", "src6"] {
            let Some(elems) = nftables::set_elements(INET, &self.table, map, "listing masquerade entries")?
            else {
                continue;
            };
            out.extend(elems.into_iter().filter_map(|e| {
                let ip = expr::ip_from_bytes(&e.key)?;
                let group = match e.data {
                    Some(Data::Verdict(Verdict::Jump(g) | Verdict::Goto(g))) => g,
                    _ => String::new(),
                };
                Some(MasqEntry { ip, tag: e.comment.unwrap_or_default(), group })
            }));
        }
        out.sort();
        Ok(out)
    }

    /// Removes the entries for `ips` directly, without listing first: one transaction.
    /// Fails (changing nothing) if any of them is not there.
    pub fn remove_ips(&self, ips: &[IpAddr]) -> Result<()> {
        let mut b = Batch::new();
        for (v6, map) in [(false, "src4"), (true, "src6")] {
            let elems: Vec<Element> = ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| Element::key(expr::addr_bytes(*ip)))
                .collect();
            b.delete_elements(INET, &self.table, map, &elems);
        }
        nftables::apply(&b, "removing masquerade entries")
    }

    /// Removes the given entries (in one transaction).
    pub fn remove(&self, entries: &[MasqEntry]) -> Result<()> {
        let ips: Vec<IpAddr> = entries.iter().map(|e| e.ip).collect();
        self.remove_ips(&ips)
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
            if let Some(elems) = nftables::set_elements(INET, &self.table, &name, "listing exempt subnets")? {
                out.extend(nftables::interval_prefixes(&elems));
            }
        }
        Ok(out)
    }
}
