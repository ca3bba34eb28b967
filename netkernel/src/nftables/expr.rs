//! Rule expressions: the subset of nf_tables' virtual machine the tables here use, and
//! helpers that spell the matches `nft` compiles (`ip daddr …`, `iifname …`) the same way.

use std::net::IpAddr;

use super::wire::{Attrs, attr};

/// `NFT_REG_VERDICT`: where a verdict goes.
pub const REG_VERDICT: u32 = 0;
/// `NFT_REG_1`: the 16-byte register `nft` loads single values into.
pub const REG_1: u32 = 1;
/// `NFT_REG32_00`: the first 4-byte register (concatenations are laid out from it).
pub const REG32_00: u32 = 8;

/// The register `slot` 4-byte words into the register file, numbered as `nft` numbers it:
/// as a 16-byte register when it starts one, else as a 4-byte one.
pub fn reg_at(slot: u32) -> u32 {
    if slot.is_multiple_of(4) { REG_1 + slot / 4 } else { REG32_00 + slot }
}

/// `NFT_CT_*` keys.
pub mod ct {
    pub const STATE: u32 = 0;
    pub const STATUS: u32 = 2;
    /// `IPS_DST_NAT`: the connection was destination-NATed (`ct status dnat`).
    pub const STATUS_DNAT: u32 = 1 << 5;
}

/// `NFTA_FIB_F_*` and `NFT_FIB_RESULT_*`, and the `RTN_*` type `fib … type` compares.
pub mod fib {
    pub const F_SADDR: u32 = 1 << 0;
    pub const F_DADDR: u32 = 1 << 1;
    pub const F_IIF: u32 = 1 << 3;
    /// The result is whether there is one (`… oif missing`/`exists`), not its value.
    pub const F_PRESENT: u32 = 1 << 5;
    pub const RESULT_OIF: u32 = 1;
    pub const RESULT_ADDRTYPE: u32 = 3;
    pub const RTN_LOCAL: u32 = 2;
}

/// `NFT_META_*` keys.
pub mod meta {
    pub const MARK: u32 = 3;
    pub const IIF: u32 = 4;
    pub const OIF: u32 = 5;
    pub const IIFNAME: u32 = 6;
    pub const OIFNAME: u32 = 7;
    pub const NFPROTO: u32 = 15;
    pub const L4PROTO: u32 = 16;
    /// Whether the packet has a security path (IPsec decrypted it): `meta ipsec`.
    pub const SECPATH: u32 = 25;
}

/// `NFT_PAYLOAD_*_HEADER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The link layer header.
    Link = 0,
    /// The network header.
    Network = 1,
    /// The transport header.
    Transport = 2,
}

/// `NFT_CMP_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// A verdict (`enum nft_verdicts` and the netfilter ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Continue,
    Jump(String),
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    pub(crate) fn from_code(code: i32, chain: Option<String>) -> Option<Verdict> {
        Some(match code {
            0 => Verdict::Drop,
            1 => Verdict::Accept,
            -1 => Verdict::Continue,
            -3 => Verdict::Jump(chain?),
            -4 => Verdict::Goto(chain?),
            -5 => Verdict::Return,
            _ => return None,
        })
    }

    /// `NFTA_DATA_VERDICT` inside the current nest.
    pub(crate) fn encode(&self, a: &mut Attrs) {
        a.nest(attr::data::VERDICT, |a| {
            a.u32(attr::verdict::CODE, self.code() as u32);
            if let Verdict::Jump(c) | Verdict::Goto(c) = self {
                a.str(attr::verdict::CHAIN, c);
            }
        });
    }
}

/// Data: a value or a verdict (`nft_data_attributes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    Value(Vec<u8>),
    Verdict(Verdict),
}

impl Data {
    pub(crate) fn encode(&self, a: &mut Attrs) {
        match self {
            Data::Value(v) => {
                a.put(attr::data::VALUE, v);
            }
            Data::Verdict(v) => v.encode(a),
        }
    }
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads a meta key into `dreg`.
    Meta { key: u32, dreg: u32 },
    /// Sets a meta key from `sreg`.
    MetaSet { key: u32, sreg: u32 },
    /// Loads `len` bytes at `offset` of a header into `dreg`.
    Payload { base: Base, offset: u32, len: u32, dreg: u32 },
    /// Compares `sreg` with `data`; breaks the rule when false.
    Cmp { sreg: u32, op: CmpOp, data: Vec<u8> },
    /// `dreg = (sreg & mask) ^ xor`.
    Bitwise { sreg: u32, dreg: u32, mask: Vec<u8>, xor: Vec<u8> },
    /// Looks `sreg` up in `set`; with `dreg`, a map lookup (`dreg` 0: a verdict map).
    Lookup { set: String, sreg: u32, dreg: Option<u32>, invert: bool },
    /// Looks `sreg` up in the anonymous set with transaction id `id`
    /// ([`super::Batch::add_anon_set`], earlier in the same batch).
    AnonLookup { id: u32, sreg: u32, invert: bool },
    /// Puts `data` in `dreg` (register 0: the rule's verdict).
    Immediate { dreg: u32, data: Data },
    /// Counts packets and bytes.
    Counter,
    /// Masquerades; `flags` are `NF_NAT_RANGE_*`.
    Masq { flags: u32 },
    /// Source or destination NAT to the address (and port) in registers.
    Nat { dnat: bool, family: u32, addr: Option<u32>, proto: Option<u32>, flags: u32 },
    /// Loads a conntrack key into `dreg`.
    Ct { key: u32, dreg: u32 },
    /// Loads a FIB lookup's `result` (`fib::RESULT_*`) for the packet, keyed by `flags`
    /// (`fib::F_*`), into `dreg`.
    Fib { flags: u32, result: u32, dreg: u32 },
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Payload { .. } => "payload",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } | Expr::AnonLookup { .. } => "lookup",
            Expr::Immediate { .. } => "immediate",
            Expr::Counter => "counter",
            Expr::Masq { .. } => "masq",
            Expr::Nat { .. } => "nat",
            Expr::Ct { .. } => "ct",
            Expr::Fib { .. } => "fib",
        }
    }

    /// One `NFTA_LIST_ELEM` of `NFTA_RULE_EXPRESSIONS`; `set_id` gives the transaction id of
    /// a set added earlier in the same batch.
    pub(crate) fn encode(&self, a: &mut Attrs, set_id: &dyn Fn(&str) -> Option<u32>) {
        a.nest(attr::LIST_ELEM, |a| {
            a.str(attr::expr::NAME, self.name());
            a.nest(attr::expr::DATA, |a| self.encode_data(a, set_id));
        });
    }

    fn encode_data(&self, a: &mut Attrs, set_id: &dyn Fn(&str) -> Option<u32>) {
        match self {
            Expr::Meta { key, dreg } => {
                a.u32(2, *key).u32(1, *dreg);
            }
            Expr::MetaSet { key, sreg } => {
                a.u32(2, *key).u32(3, *sreg);
            }
            Expr::Payload { base, offset, len, dreg } => {
                a.u32(1, *dreg).u32(2, *base as u32).u32(3, *offset).u32(4, *len);
            }
            Expr::Cmp { sreg, op, data } => {
                a.u32(1, *sreg).u32(2, *op as u32).nest(3, |a| {
                    a.put(attr::data::VALUE, data);
                });
            }
            Expr::Bitwise { sreg, dreg, mask, xor } => {
                a.u32(1, *sreg).u32(2, *dreg).u32(3, mask.len() as u32);
                a.nest(4, |a| {
                    a.put(attr::data::VALUE, mask);
                });
                a.nest(5, |a| {
                    a.put(attr::data::VALUE, xor);
                });
            }
            // Attributes in the order `nft` writes them.
            Expr::Lookup { set, sreg, dreg, invert } => {
                a.u32(2, *sreg);
                if let Some(d) = dreg {
                    a.u32(3, *d);
                }
                a.str(1, set);
                if let Some(id) = set_id(set) {
                    a.u32(4, id);
                }
                if *invert {
                    a.u32(5, 1);
                }
            }
            Expr::AnonLookup { id, sreg, invert } => {
                // The kernel names it when it is created: refer to it by the template `nft` sends.
                a.u32(2, *sreg).str(1, super::batch::ANON_SET).u32(4, *id);
                if *invert {
                    a.u32(5, 1);
                }
            }
            Expr::Immediate { dreg, data } => {
                a.u32(1, *dreg).nest(2, |a| data.encode(a));
            }
            Expr::Counter => {
                a.u64(1, 0).u64(2, 0);
            }
            Expr::Masq { flags } => {
                if *flags != 0 {
                    a.u32(1, *flags);
                }
            }
            Expr::Nat { dnat, family, addr, proto, flags } => {
                a.u32(1, u32::from(*dnat)).u32(2, *family);
                if let Some(r) = addr {
                    a.u32(3, *r);
                }
                if let Some(r) = proto {
                    a.u32(5, *r);
                }
                if *flags != 0 {
                    a.u32(7, *flags);
                }
            }
            Expr::Ct { key, dreg } => {
                a.u32(2, *key).u32(1, *dreg);
            }
            Expr::Fib { flags, result, dreg } => {
                a.u32(3, *flags).u32(2, *result).u32(1, *dreg);
            }
        }
    }
}

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// `meta nfproto ipv4|ipv6`: what `nft` puts before an `ip`/`ip6` match in an inet table.
pub fn nfproto(v6: bool) -> Vec<Expr> {
    vec![
        Expr::Meta { key: meta::NFPROTO, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: vec![if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }] },
    ]
}

/// Loads the IPv4 or IPv6 source (`src`) or destination address into register 1.
pub fn load_addr(v6: bool, src: bool) -> Expr {
    let (offset, len) = match (v6, src) {
        (false, true) => (12, 4),
        (false, false) => (16, 4),
        (true, true) => (8, 16),
        (true, false) => (24, 16),
    };
    Expr::Payload { base: Base::Network, offset, len, dreg: REG_1 }
}

/// `ip[6] saddr|daddr <net>` in an inet table, as `nft` compiles it: the protocol check,
/// then [`match_prefix`].
pub fn match_net(net: &ipnet::IpNet, src: bool, op: CmpOp) -> Vec<Expr> {
    let mut out = nfproto(matches!(net, ipnet::IpNet::V6(_)));
    out.extend(match_prefix(net, src, op));
    out
}

/// The address match alone (after a protocol check): the load, then for a prefix a mask
/// (whole bytes: a shorter load instead) and the compare.
pub fn match_prefix(net: &ipnet::IpNet, src: bool, op: CmpOp) -> Vec<Expr> {
    let v6 = matches!(net, ipnet::IpNet::V6(_));
    let mut out = Vec::new();
    let Expr::Payload { base, offset, len, dreg } = load_addr(v6, src) else { unreachable!() };
    let bytes = addr_bytes(net.trunc().addr());
    let plen = u32::from(net.prefix_len());
    if plen == len * 8 {
        out.push(Expr::Payload { base, offset, len, dreg });
        out.push(Expr::Cmp { sreg: REG_1, op, data: bytes });
    } else if plen % 8 == 0 {
        let n = (plen / 8) as usize;
        out.push(Expr::Payload { base, offset, len: n as u32, dreg });
        out.push(Expr::Cmp { sreg: REG_1, op, data: bytes[..n].to_vec() });
    } else {
        // As `nft` does: the whole address, masked.
        let n = len as usize;
        let mask: Vec<u8> = (0..n)
            .map(|i| {
                let bits = plen.saturating_sub(8 * i as u32).min(8);
                (0xffu16 << (8 - bits)) as u8
            })
            .collect();
        out.push(Expr::Payload { base, offset, len: n as u32, dreg });
        out.push(Expr::Bitwise { sreg: REG_1, dreg: REG_1, mask, xor: vec![0; n] });
        out.push(Expr::Cmp { sreg: REG_1, op, data: bytes[..n].to_vec() });
    }
    out
}

/// An address as the kernel compares it (network byte order).
pub fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An address from a key or register value of 4 or 16 bytes.
pub fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// An interface name from a NUL-padded key.
pub fn ifname_from_bytes(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

/// An interface name as `nft` compares it: the name padded with NULs to `IFNAMSIZ`.
pub fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// `ct status dnat` (`set`) or `ct status ! dnat`: the status bit masked and compared.
pub fn ct_dnat(set: bool) -> Vec<Expr> {
    vec![
        Expr::Ct { key: ct::STATUS, dreg: REG_1 },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: ct::STATUS_DNAT.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp { sreg: REG_1, op: if set { CmpOp::Neq } else { CmpOp::Eq }, data: vec![0; 4] },
    ]
}

/// `fib daddr type local`.
pub fn fib_daddr_local() -> Vec<Expr> {
    vec![
        Expr::Fib { flags: fib::F_DADDR, result: fib::RESULT_ADDRTYPE, dreg: REG_1 },
        Expr::Cmp { sreg: REG_1, op: CmpOp::Eq, data: fib::RTN_LOCAL.to_ne_bytes().to_vec() },
    ]
}

/// A verdict as the last expression of a rule.
pub fn verdict(v: Verdict) -> Expr {
    Expr::Immediate { dreg: REG_VERDICT, data: Data::Verdict(v) }
}
