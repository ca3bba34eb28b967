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

use std::net::IpAddr;

use crate::error::{KernelError, Result};
use crate::nft;
use crate::nftables::expr::{self, CmpOp, Expr, REG_1, REG_VERDICT, meta};
use crate::nftables::{
    self, BaseChain, Batch, Data, Element, Family, Hook, KeyType, MapData, SetSpec, Verdict,
};

const INET: Family = Family::Inet;
/// `NFT_CT_STATE`, and the established and related bits of a state.
const CT_STATE: u32 = 0;
const ESTABLISHED_RELATED: u32 = 0x2 | 0x4;

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

    /// The shared structure, rebuilt identically by every caller.
    fn structure(&self, b: &mut Batch) {
        let t = &self.table;
        b.add_table(INET, t);
        let set =
            |name: &str, key, data| SetSpec { name: name.into(), key, data, flags: 0, auto_merge: false };
        b.add_set(INET, t, &set("allowed4", KeyType::IPV4_ADDR, None));
        b.add_set(INET, t, &set("allowed6", KeyType::IPV6_ADDR, None));
        b.add_set(INET, t, &set("isolated", KeyType::IFNAME, None));
        b.add_set(INET, t, &set("isolation", KeyType::IFNAME, Some(MapData::Verdict)));
        b.add_chain(INET, t, "admin", None);
        let hook = BaseChain { kind: "filter", hook: Hook::Forward, priority: 0, accept: true };
        b.add_chain(INET, t, "forward", Some(&hook)).flush_chain(INET, t, "forward");
        b.add_rule(INET, t, "forward", &[expr::verdict(Verdict::Jump("admin".into()))], None);
        let vmap = [
            Expr::Meta { key: meta::IIFNAME, dreg: REG_1 },
            Expr::Lookup { set: "isolation".into(), sreg: REG_1, dreg: Some(REG_VERDICT), invert: false },
        ];
        b.add_rule(INET, t, "forward", &vmap, None);
        let lookup = |v6: bool, src: bool| {
            let mut r = expr::nfproto(v6);
            r.push(expr::load_addr(v6, src));
            let set = if v6 { "allowed6" } else { "allowed4" };
            r.push(Expr::Lookup { set: set.into(), sreg: REG_1, dreg: None, invert: false });
            r.push(expr::verdict(Verdict::Accept));
            r
        };
        for v6 in [false, true] {
            // ct state established,related ip[6] daddr @allowed accept
            let mut r = vec![
                Expr::Ct { key: CT_STATE, dreg: REG_1 },
                Expr::Bitwise {
                    sreg: REG_1,
                    dreg: REG_1,
                    mask: ESTABLISHED_RELATED.to_ne_bytes().to_vec(),
                    xor: vec![0; 4],
                },
                Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: vec![0; 4] },
            ];
            r.extend(lookup(v6, false));
            b.add_rule(INET, t, "forward", &r, None);
        }
        for v6 in [false, true] {
            b.add_rule(INET, t, "forward", &lookup(v6, true), None);
        }
    }

    fn isolation(&self, b: &mut Batch, bridge: &str) {
        let t = &self.table;
        let chain = format!("iso_{:016x}", fnv64(bridge));
        b.add_chain(INET, t, &chain, None).flush_chain(INET, t, &chain);
        let oifname = Expr::Meta { key: meta::OIFNAME, dreg: REG_1 };
        let own = [
            oifname.clone(),
            Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: expr::ifname_bytes(bridge) },
            expr::verdict(Verdict::Return),
        ];
        b.add_rule(INET, t, &chain, &own, None);
        let others = [
            oifname,
            Expr::Lookup { set: "isolated".into(), sreg: REG_1, dreg: None, invert: false },
            expr::verdict(Verdict::Drop),
        ];
        b.add_rule(INET, t, &chain, &others, None);
        b.add_elements(INET, t, "isolated", &[Element::key(expr::ifname_bytes(bridge))]);
        let jump = Element {
            key: expr::ifname_bytes(bridge),
            key_end: None,
            end: false,
            data: Some(Data::Verdict(Verdict::Jump(chain))),
            comment: None,
        };
        b.add_elements(INET, t, "isolation", &[jump]);
    }

    /// Accepts forwarding for `ips` (tagged `tag`) and, when `isolate` names a bridge, drops
    /// traffic between it and the other isolated bridges; one transaction.
    pub fn add(&self, ips: &[IpAddr], tag: &str, isolate: Option<&str>) -> Result<()> {
        if let Some(br) = isolate
            && !is_ifname(br)
        {
            return Err(KernelError::InvalidName { name: br.into(), why: "not an interface name" });
        }
        let comment = nftables::comment(tag)?;
        let body = |b: &mut Batch| {
            if let Some(br) = isolate {
                self.isolation(b, br);
            }
            for (v6, set) in [(false, "allowed4"), (true, "allowed6")] {
                let elems: Vec<Element> = ips
                    .iter()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .map(|ip| Element {
                        key: expr::addr_bytes(*ip),
                        key_end: None,
                        end: false,
                        data: None,
                        comment: Some(comment.clone()),
                    })
                    .collect();
                b.add_elements(INET, &self.table, set, &elems);
            }
        };
        let what = format!("adding firewall entries tagged {tag:?}");
        let mut elements = Batch::new();
        body(&mut elements);
        if nftables::apply(&elements, &what).is_ok() {
            return Ok(());
        }
        let mut all = Batch::new();
        self.structure(&mut all);
        body(&mut all);
        nftables::apply(&all, &what)
    }

    /// Every allowed address.
    pub fn allowed(&self) -> Result<Vec<Allowed>> {
        let mut out = Vec::new();
        for set in ["allowed4", "allowed6"] {
            let elems = nftables::set_elements(INET, &self.table, set, "listing firewall entries")?;
            out.extend(elems.into_iter().flatten().filter_map(|e| {
                Some(Allowed { ip: expr::ip_from_bytes(&e.key)?, tag: e.comment.unwrap_or_default() })
            }));
        }
        out.sort();
        Ok(out)
    }

    /// The bridges with isolation.
    pub fn isolated(&self) -> Result<Vec<String>> {
        let elems = nftables::set_elements(INET, &self.table, "isolated", "listing isolated bridges")?;
        Ok(elems.into_iter().flatten().map(|e| expr::ifname_from_bytes(&e.key)).collect())
    }

    /// Removes the addresses whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<Allowed> = self.allowed()?.into_iter().filter(|a| matches(&a.tag)).collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut b = Batch::new();
        for (v6, set) in [(false, "allowed4"), (true, "allowed6")] {
            let elems: Vec<Element> = doomed
                .iter()
                .filter(|a| a.ip.is_ipv6() == v6)
                .map(|a| Element::key(expr::addr_bytes(a.ip)))
                .collect();
            b.delete_elements(INET, &self.table, set, &elems);
        }
        if let Err(e) = nftables::apply(&b, "removing firewall entries")
            && self.allowed()?.iter().any(|a| matches(&a.tag))
        {
            return Err(e);
        }
        Ok(doomed.len())
    }
}
