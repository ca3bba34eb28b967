//! MAC spoofing protection on bridge ports: frames entering the bridge from a container's
//! port must carry the container's MAC. One `bridge` family table, one tagged rule per
//! port, found again by its tag (so it can be removed after the port is gone).

use crate::error::{KernelError, Result};
use crate::link::Mac;
use crate::nft;
use crate::nftables::expr::{self, Base, CmpOp, Expr, REG_1, meta};
use crate::nftables::{self, BaseChain, Batch, Family, Hook, Verdict};

const BRIDGE: Family = Family::Bridge;
const CHAIN: &str = "prerouting";

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
        let comment = nftables::comment(tag)?;
        let mut b = Batch::new();
        b.add_table(BRIDGE, t);
        let hook = BaseChain { kind: "filter", hook: Hook::Prerouting, priority: -300, accept: true };
        b.add_chain(BRIDGE, t, CHAIN, Some(&hook));
        // iifname "<port>" ether saddr != <mac> drop, as nft compiles it.
        let rule = [
            Expr::Meta { key: meta::IIFNAME, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: expr::ifname_bytes(ifname) },
            Expr::Payload { base: Base::Link, offset: 6, len: 6, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: mac.to_vec() },
            expr::verdict(Verdict::Drop),
        ];
        b.add_rule(BRIDGE, t, CHAIN, &rule, Some(&comment));
        nftables::apply(&b, &format!("adding MAC spoof protection on {ifname}"))
    }

    /// The rules' (handle, tag) pairs.
    fn rules(&self) -> Result<Vec<(u64, String)>> {
        let rules = nftables::rules(BRIDGE, &self.table, CHAIN, "listing MAC spoof rules")?;
        Ok(rules.into_iter().flatten().map(|r| (r.handle, r.comment.unwrap_or_default())).collect())
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
        let mut b = Batch::new();
        for h in &doomed {
            b.delete_rule(BRIDGE, &self.table, CHAIN, *h);
        }
        match nftables::apply(&b, "removing MAC spoof rules") {
            // A concurrent remover got there first: what matters is that they are gone.
            Err(_) if self.rules()?.iter().all(|(_, t)| !matches(t)) => Ok(doomed.len()),
            Err(e) => Err(e),
            Ok(()) => Ok(doomed.len()),
        }
    }
}
