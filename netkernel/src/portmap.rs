//! Port forwarding from the node to containers (DNAT), with hairpin and localhost SNAT, in
//! one nftables table whose rule count does not grow with the number of containers.
//!
//! ```text
//! table inet <name>
//!   map hostports4/6  proto . port              : container addr . port   (any local address)
//!   map hostip4/6     host addr . proto . port  : container addr . port   (one host address)
//!   set hairpin4/6    subnet . container        (a container reached by a host port from its own
//!                                               subnet: itself, or a neighbour on its bridge)
//!   set localnet4     container                 (reached from 127.0.0.0/8 on the node)
//!   chain prerouting, output (nat, dstnat): fib daddr type local → hostports
//!   chain hostports: dnat through hostip4/6, then hostports4/6
//!   chain postrouting (nat, srcnat): masquerade hairpin and localhost traffic
//!   chain input (filter): drop 127.0.0.0/8 arriving on another link unless it was DNATed
//! ```
//!
//! Every element carries a comment, its tag, so an attachment's elements are found and
//! removed without knowing its addresses (DEL after the netns is gone, GC).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::Result;
use crate::nft;
use crate::nftables::expr::{self, Base, CmpOp, Expr, REG_1, meta, reg_at};
use crate::nftables::{self, BaseChain, Batch, Data, Family, Hook, KeyType, MapData, SetSpec, Verdict};

const INET: Family = Family::Inet;

/// A transport protocol a port can be forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// The nft name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// The IP protocol number (`meta l4proto`).
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    fn from_number(n: u8) -> Option<Proto> {
        [Proto::Tcp, Proto::Udp, Proto::Sctp].into_iter().find(|p| p.number() == n)
    }
}

/// One forwarded port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    /// Protocol.
    pub proto: Proto,
    /// The host address it is bound to; `None` for every local address.
    pub host_ip: Option<IpAddr>,
    /// The port on the host.
    pub host_port: u16,
    /// The container address.
    pub dest: IpAddr,
    /// The port in the container.
    pub dest_port: u16,
}

impl Forward {
    fn v4(&self) -> bool {
        self.dest.is_ipv4()
    }

    fn map(&self) -> &'static str {
        match (self.host_ip.is_some(), self.v4()) {
            (false, true) => "hostports4",
            (false, false) => "hostports6",
            (true, true) => "hostip4",
            (true, false) => "hostip6",
        }
    }

    /// The map key as the kernel holds it: `[host address .] proto . port`, each part
    /// padded to 4 bytes (how `nft` lays out a concatenation).
    fn key(&self) -> Vec<u8> {
        let mut k = self.host_ip.map(expr::addr_bytes).unwrap_or_default();
        k.extend([self.proto.number(), 0, 0, 0]);
        k.extend(port_word(self.host_port));
        k
    }

    /// The map data: `container address . port`.
    fn data(&self) -> Vec<u8> {
        let mut d = expr::addr_bytes(self.dest);
        d.extend(port_word(self.dest_port));
        d
    }

    /// Whether `other` claims the same host port (then only one can have it).
    pub fn same_key(&self, other: &Forward) -> bool {
        self.map() == other.map() && self.key() == other.key()
    }

    /// The forward an element of `map` holds.
    fn parse(map: &str, key: &[u8], data: &[u8]) -> Option<Forward> {
        let alen = if map.ends_with('4') { 4 } else { 16 };
        let (host_ip, rest) = match map {
            "hostports4" | "hostports6" => (None, key),
            "hostip4" | "hostip6" => (Some(expr::ip_from_bytes(key.get(..alen)?)?), key.get(alen..)?),
            _ => return None,
        };
        if rest.len() != 8 || data.len() != alen + 4 {
            return None;
        }
        Some(Forward {
            proto: Proto::from_number(rest[0])?,
            host_ip,
            host_port: u16::from_be_bytes([rest[4], rest[5]]),
            dest: expr::ip_from_bytes(&data[..alen])?,
            dest_port: u16::from_be_bytes([data[alen], data[alen + 1]]),
        })
    }
}

/// A port in a 4-byte register word (big-endian, then padding).
fn port_word(port: u16) -> [u8; 4] {
    let [hi, lo] = port.to_be_bytes();
    [hi, lo, 0, 0]
}

/// One element of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// A forwarded port.
    Forward(Forward),
    /// SNAT for DNATed traffic from the container's own subnet to it: the container itself
    /// (hairpin) or a neighbour whose replies would otherwise bypass the node's conntrack.
    Hairpin {
        /// The container's subnet.
        subnet: IpNet,
        /// The container address.
        ip: IpAddr,
    },
    /// Localhost SNAT for a container address (IPv4 only).
    Localnet(IpAddr),
}

/// The sets and maps elements live in.
const SETS: [&str; 7] =
    ["hostports4", "hostports6", "hostip4", "hostip6", "hairpin4", "hairpin6", "localnet4"];

impl Element {
    /// The set or map it lives in, and how the kernel holds it (with `comment`).
    fn encode(&self, comment: Option<&str>) -> (&'static str, nftables::Element) {
        let comment = comment.map(str::to_string);
        match self {
            Element::Forward(f) => {
                let e = nftables::Element {
                    key: f.key(),
                    data: Some(Data::Value(f.data())),
                    comment,
                    ..Default::default()
                };
                (f.map(), e)
            }
            // An interval of a concatenation: from the subnet's first address to its last,
            // each followed by the container address.
            Element::Hairpin { subnet, ip } => {
                let set = if ip.is_ipv4() { "hairpin4" } else { "hairpin6" };
                let mut key = expr::addr_bytes(subnet.network());
                key.extend(expr::addr_bytes(*ip));
                let mut end = expr::addr_bytes(subnet.broadcast());
                end.extend(expr::addr_bytes(*ip));
                (set, nftables::Element { key, key_end: Some(end), comment, ..Default::default() })
            }
            Element::Localnet(ip) => {
                ("localnet4", nftables::Element { key: expr::addr_bytes(*ip), comment, ..Default::default() })
            }
        }
    }

    /// The element `set` holds as `e`, if it is one of ours.
    fn decode(set: &str, e: &nftables::Element) -> Option<Element> {
        match set {
            "hairpin4" | "hairpin6" => {
                let half = e.key.len() / 2;
                let end = e.key_end.as_deref().unwrap_or(&e.key);
                if e.key.len() != 2 * half || end.len() != e.key.len() || !matches!(half, 4 | 16) {
                    return None;
                }
                let (first, last) =
                    (expr::ip_from_bytes(&e.key[..half])?, expr::ip_from_bytes(&end[..half])?);
                let subnet = match (first, last) {
                    (IpAddr::V4(a), IpAddr::V4(b)) => {
                        single(ipnet::Ipv4Subnets::new(a, b, 0).map(IpNet::V4))?
                    }
                    (IpAddr::V6(a), IpAddr::V6(b)) => {
                        single(ipnet::Ipv6Subnets::new(a, b, 0).map(IpNet::V6))?
                    }
                    _ => return None,
                };
                Some(Element::Hairpin { subnet, ip: expr::ip_from_bytes(&e.key[half..])? })
            }
            "localnet4" => expr::ip_from_bytes(&e.key).filter(IpAddr::is_ipv4).map(Element::Localnet),
            map => match &e.data {
                Some(Data::Value(d)) => Forward::parse(map, &e.key, d).map(Element::Forward),
                _ => None,
            },
        }
    }
}

/// The one prefix a range is, if it is one.
fn single(mut nets: impl Iterator<Item = IpNet>) -> Option<IpNet> {
    let first = nets.next()?;
    nets.next().is_none().then_some(first)
}

/// An element and the tag it was added with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tagged {
    /// The tag.
    pub tag: String,
    /// The element.
    pub element: Element,
}

/// The port-forwarding table.
#[derive(Debug, Clone)]
pub struct PortmapTable {
    table: String,
}

impl PortmapTable {
    /// The table named `table` in the `inet` family (created on first use).
    pub fn new(table: &str) -> Result<Self> {
        Ok(PortmapTable { table: nft::table_name(table)? })
    }

    /// The shared structure, rebuilt identically by every caller (so concurrent ADDs agree):
    /// what `nft` made of the script this table was first written as, message for message.
    fn structure(&self, b: &mut Batch) {
        let t = &self.table;
        b.add_table(INET, t);
        let (v4, v6, proto, port) =
            (KeyType::IPV4_ADDR, KeyType::IPV6_ADDR, KeyType::INET_PROTO, KeyType::INET_SERVICE);
        for (name, key, data) in [
            ("hostports4", KeyType::concat(&[proto, port]), v4),
            ("hostports6", KeyType::concat(&[proto, port]), v6),
            ("hostip4", KeyType::concat(&[v4, proto, port]), v4),
            ("hostip6", KeyType::concat(&[v6, proto, port]), v6),
        ] {
            let data = Some(MapData::Value(KeyType::concat(&[data, port])));
            b.add_set(INET, t, &SetSpec { name: name.into(), key, data, flags: 0, auto_merge: false });
        }
        for (name, addr) in [("hairpin4", v4), ("hairpin6", v6)] {
            let spec = SetSpec {
                name: name.into(),
                key: KeyType::concat(&[addr, addr]),
                data: None,
                flags: nftables::set_flags::INTERVAL,
                auto_merge: false,
            };
            b.add_set(INET, t, &spec);
        }
        let spec = SetSpec { name: "localnet4".into(), key: v4, data: None, flags: 0, auto_merge: false };
        b.add_set(INET, t, &spec);

        // A host-address mapping wins over an any-address one for the same port:
        // `dnat ip[6] to [ip[6] daddr .] meta l4proto . th dport map @<map>`.
        b.add_chain(INET, t, "hostports", None).flush_chain(INET, t, "hostports");
        for (host, is_v6, map) in [
            (true, false, "hostip4"),
            (true, true, "hostip6"),
            (false, false, "hostports4"),
            (false, true, "hostports6"),
        ] {
            let mut r = expr::nfproto(is_v6);
            let mut slot = 0;
            if host {
                let Expr::Payload { base, offset, len, .. } = expr::load_addr(is_v6, false) else {
                    unreachable!()
                };
                r.push(Expr::Payload { base, offset, len, dreg: reg_at(slot) });
                slot += len / 4;
            }
            r.push(Expr::Meta { key: meta::L4PROTO, dreg: reg_at(slot) });
            r.push(Expr::Payload { base: Base::Transport, offset: 2, len: 2, dreg: reg_at(slot + 1) });
            r.push(Expr::Lookup { set: map.into(), sreg: REG_1, dreg: Some(REG_1), invert: false });
            let family = u32::from(if is_v6 { expr::NFPROTO_IPV6 } else { expr::NFPROTO_IPV4 });
            let proto = reg_at(if is_v6 { 4 } else { 1 });
            r.push(Expr::Nat { dnat: true, family, addr: Some(REG_1), proto: Some(proto), flags: 0 });
            b.add_rule(INET, t, "hostports", &r, None);
        }
        // dstnat is -100: `fib daddr type local jump hostports`.
        for (chain, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
            let base = BaseChain { kind: "nat", hook, priority: -100, accept: true };
            b.add_chain(INET, t, chain, Some(&base)).flush_chain(INET, t, chain);
            let mut r = expr::fib_daddr_local();
            r.push(expr::verdict(Verdict::Jump("hostports".into())));
            b.add_rule(INET, t, chain, &r, None);
        }
        let base = BaseChain { kind: "nat", hook: Hook::Postrouting, priority: 100, accept: true };
        b.add_chain(INET, t, "postrouting", Some(&base)).flush_chain(INET, t, "postrouting");
        // `ct status dnat ip[6] saddr . ip[6] daddr @hairpin4/6 masquerade`
        for (is_v6, set) in [(false, "hairpin4"), (true, "hairpin6")] {
            let mut r = expr::ct_dnat(true);
            r.extend(expr::nfproto(is_v6));
            r.push(expr::load_addr(is_v6, true));
            let Expr::Payload { base, offset, len, .. } = expr::load_addr(is_v6, false) else {
                unreachable!()
            };
            r.push(Expr::Payload { base, offset, len, dreg: reg_at(len / 4) });
            r.push(Expr::Lookup { set: set.into(), sreg: REG_1, dreg: None, invert: false });
            r.push(Expr::Masq { flags: 0 });
            b.add_rule(INET, t, "postrouting", &r, None);
        }
        // `ip saddr 127.0.0.0/8 ip daddr @localnet4 ct status dnat masquerade`
        let loopback: IpNet = "127.0.0.0/8".parse().expect("a valid prefix");
        let mut r = expr::match_net(&loopback, true, CmpOp::Eq);
        r.push(expr::load_addr(false, false));
        r.push(Expr::Lookup { set: "localnet4".into(), sreg: REG_1, dreg: None, invert: false });
        r.extend(expr::ct_dnat(true));
        r.push(Expr::Masq { flags: 0 });
        b.add_rule(INET, t, "postrouting", &r, None);
        // route_localnet lets 127.0.0.0/8 in on the links it is set on; only what was
        // DNATed (replies to localhost host ports) may come in that way:
        // `iifname != "lo" ip daddr 127.0.0.0/8 ct status ! dnat drop`.
        let base = BaseChain { kind: "filter", hook: Hook::Input, priority: 0, accept: true };
        b.add_chain(INET, t, "input", Some(&base)).flush_chain(INET, t, "input");
        let mut r = vec![
            Expr::Meta { key: meta::IIFNAME, dreg: REG_1 },
            Expr::Cmp { sreg: REG_1, op: CmpOp::Neq, data: expr::ifname_bytes("lo") },
        ];
        r.extend(expr::match_net(&loopback, false, CmpOp::Eq));
        r.extend(expr::ct_dnat(false));
        r.push(expr::verdict(Verdict::Drop));
        b.add_rule(INET, t, "input", &r, None);
    }

    /// The elements of [`PortmapTable::add`], after the whole structure when `structure`.
    fn add_batch(&self, structure: bool, elements: &[Element], comment: &str) -> Batch {
        let mut b = Batch::new();
        if structure {
            self.structure(&mut b);
        }
        for set in SETS {
            let elems: Vec<nftables::Element> = elements
                .iter()
                .map(|e| e.encode(Some(comment)))
                .filter(|(s, _)| *s == set)
                .map(|e| e.1)
                .collect();
            if set.starts_with("host") {
                // `create`: a host port another attachment holds (even to the same address)
                // is an error, not silently shared.
                b.create_elements(INET, &self.table, set, &elems);
            } else {
                b.add_elements(INET, &self.table, set, &elems);
            }
        }
        b
    }

    /// Adds `elements` tagged `tag` in one transaction (creating the table when missing).
    /// A host port that another tag holds makes the whole call fail, changing nothing.
    pub fn add(&self, elements: &[Element], tag: &str) -> Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let comment = nftables::comment(tag)?;
        let what = format!("adding port mappings tagged {tag:?}");
        // After the first ADD on a node the structure exists: the elements alone are a much
        // smaller transaction. Only when that fails is the structure (re)built with them.
        if nftables::apply(&self.add_batch(false, elements, &comment), &what).is_ok() {
            return Ok(());
        }
        nftables::apply(&self.add_batch(true, elements, &comment), &what)
    }

    /// Every element of the table.
    pub fn elements(&self) -> Result<Vec<Tagged>> {
        let mut out = Vec::new();
        for set in SETS {
            let Some(elems) = nftables::set_elements(INET, &self.table, set, "listing port mappings")? else {
                continue;
            };
            out.extend(elems.iter().filter_map(|e| {
                let element = Element::decode(set, e)?;
                Some(Tagged { tag: e.comment.clone().unwrap_or_default(), element })
            }));
        }
        out.sort();
        Ok(out)
    }

    /// Removes `elements` (one transaction; fails, changing nothing, if one is missing).
    pub fn remove(&self, elements: &[Element]) -> Result<()> {
        let mut b = Batch::new();
        for set in SETS {
            // A key names an element: as `nft` does, no data is sent.
            let elems: Vec<nftables::Element> = elements
                .iter()
                .map(|e| e.encode(None))
                .filter(|(s, _)| *s == set)
                .map(|(_, e)| nftables::Element { data: None, ..e })
                .collect();
            b.delete_elements(INET, &self.table, set, &elems);
        }
        nftables::apply(&b, "removing port mappings")
    }

    /// Removes every element whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<Element> =
            self.elements()?.into_iter().filter(|t| matches(&t.tag)).map(|t| t.element).collect();
        if let Err(e) = self.remove(&doomed) {
            // Another caller may have removed some meanwhile: what matters is that they are gone.
            if self.elements()?.iter().any(|t| matches(&t.tag)) {
                return Err(e);
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(set: &str, e: &nftables::Element) -> Element {
        Element::decode(set, e).unwrap_or_else(|| panic!("{set}: {e:?} is not read back"))
    }

    #[test]
    fn elements_are_laid_out_as_nft_lays_them_out() {
        // `nft --debug=netlink`: `create element inet t hostports4 { tcp . 8080 … : 10.0.0.2 . 80 }`
        // is `element 00000006 0000901f : 0200000a 00005000` (words, little-endian).
        let f = Forward {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 8080,
            dest: "10.0.0.2".parse().unwrap(),
            dest_port: 80,
        };
        let (map, e) = Element::Forward(f.clone()).encode(Some("x"));
        assert_eq!(map, "hostports4");
        assert_eq!(e.key, [6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
        assert_eq!(e.data, Some(Data::Value(vec![10, 0, 0, 2, 0, 80, 0, 0])));
        assert_eq!(e.comment.as_deref(), Some("x"));
        assert_eq!(element(map, &e), Element::Forward(f));
        // `hostip4 { 1.2.3.4 . sctp . 9 : 10.0.0.3 . 9 }`: `04030201 00000084 00000900 : 0300000a 00000900`.
        let f = Forward {
            proto: Proto::Sctp,
            host_ip: Some("1.2.3.4".parse().unwrap()),
            host_port: 9,
            dest: "10.0.0.3".parse().unwrap(),
            dest_port: 9,
        };
        let (map, e) = Element::Forward(f.clone()).encode(None);
        assert_eq!((map, e.key.as_slice()), ("hostip4", &[1, 2, 3, 4, 132, 0, 0, 0, 0, 9, 0, 0][..]));
        assert_eq!(element(map, &e), Element::Forward(f));
        // `hairpin4 { 10.0.0.0/24 . 10.0.0.2 }`: `0000000a 0200000a - ff00000a 0200000a`.
        let h = Element::Hairpin { subnet: "10.0.0.0/24".parse().unwrap(), ip: "10.0.0.2".parse().unwrap() };
        let (set, e) = h.encode(None);
        assert_eq!((set, e.key.as_slice()), ("hairpin4", &[10, 0, 0, 0, 10, 0, 0, 2][..]));
        assert_eq!(e.key_end.as_deref(), Some(&[10, 0, 0, 255, 10, 0, 0, 2][..]));
        assert_eq!(element(set, &e), h);
        let h6 = Element::Hairpin { subnet: "fd00::/64".parse().unwrap(), ip: "fd00::2".parse().unwrap() };
        let (set, e) = h6.encode(None);
        assert_eq!(&e.key_end.as_ref().unwrap()[8..16], &[0xff; 8]);
        assert_eq!(element(set, &e), h6);
        let l = Element::Localnet("10.0.0.2".parse().unwrap());
        let (set, e) = l.encode(None);
        assert_eq!(element(set, &e), l);
    }

    fn forward(proto: Proto, host_ip: Option<&str>, host_port: u16, dest: &str, dest_port: u16) -> Element {
        Element::Forward(Forward {
            proto,
            host_ip: host_ip.map(|h| h.parse().unwrap()),
            host_port,
            dest: dest.parse().unwrap(),
            dest_port,
        })
    }

    /// The whole transaction of a first ADD, message for message, against what `nft` sent
    /// for the script this module used to run (`nftables/testdata/portmap.nft`).
    #[test]
    fn the_first_add_is_what_nft_sends_for_the_old_script() {
        let want: Vec<(u16, Vec<u8>)> = include_str!("nftables/testdata/portmap.hex")
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (kind, hex) = l.split_once(' ').unwrap();
                let bytes =
                    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap());
                (kind.parse::<u16>().unwrap() & 0xff, bytes.collect())
            })
            .collect();
        let elements = [
            forward(Proto::Tcp, None, 8080, "10.0.0.2", 80),
            forward(Proto::Udp, None, 53, "fd00::2", 5353),
            forward(Proto::Sctp, Some("192.0.2.1"), 9, "10.0.0.2", 9),
            forward(Proto::Tcp, Some("2001:db8::1"), 443, "fd00::2", 8443),
            Element::Hairpin { subnet: "10.0.0.0/24".parse().unwrap(), ip: "10.0.0.2".parse().unwrap() },
            Element::Hairpin { subnet: "fd00::/64".parse().unwrap(), ip: "fd00::2".parse().unwrap() },
            Element::Localnet("10.0.0.2".parse().unwrap()),
        ];
        let b = PortmapTable::new("t").unwrap().add_batch(true, &elements, "n/c1/eth0");
        assert_eq!(b.msgs.len(), want.len());
        for (i, (m, (kind, attrs))) in b.msgs.iter().zip(&want).enumerate() {
            assert_eq!(m.kind, *kind, "message {i} ({})", m.what);
            if i == 0 {
                // `nft` adds the table's flags (0); the name is all that is sent here.
                assert!(attrs.starts_with(&m.attrs.buf), "message {i} ({})", m.what);
                continue;
            }
            assert_eq!(m.attrs.buf, *attrs, "message {i} ({})", m.what);
        }
        // Host ports are created (NLM_F_EXCL), the other elements added.
        let excl: Vec<bool> = b.msgs[b.msgs.len() - 7..]
            .iter()
            .map(|m| m.flags & netlink_packet_core::NLM_F_EXCL != 0)
            .collect();
        assert_eq!(excl, [true, true, true, true, false, false, false]);
    }

    #[test]
    fn what_is_not_ours_is_not_read() {
        let e = |key: Vec<u8>, data: Vec<u8>| nftables::Element {
            key,
            data: Some(Data::Value(data)),
            ..Default::default()
        };
        // An unknown protocol, a short key, data of the other family.
        assert_eq!(
            Element::decode("hostports4", &e(vec![1, 0, 0, 0, 0, 80, 0, 0], vec![10, 0, 0, 2, 0, 80, 0, 0])),
            None
        );
        assert_eq!(Element::decode("hostports4", &e(vec![6, 0, 0, 0], vec![10, 0, 0, 2, 0, 80, 0, 0])), None);
        assert_eq!(Element::decode("hostports4", &e(vec![6, 0, 0, 0, 0, 80, 0, 0], vec![0; 20])), None);
        // A hairpin range that is not one prefix.
        let odd = nftables::Element {
            key: vec![10, 0, 0, 1, 10, 0, 0, 2],
            key_end: Some(vec![10, 0, 0, 5, 10, 0, 0, 2]),
            ..Default::default()
        };
        assert_eq!(Element::decode("hairpin4", &odd), None);
        assert_eq!(
            Element::decode("other", &e(vec![6, 0, 0, 0, 0, 80, 0, 0], vec![10, 0, 0, 2, 0, 80, 0, 0])),
            None
        );
    }
}
