//! Shaping by the peer's subnet: an `htb` root qdisc (handle `1:`) with a capped class and an
//! uncapped one, and `u32` filters that put packets whose peer address (source or
//! destination, IPv4 or IPv6) lies in one of the given subnets into one of them, everything
//! else going to the qdisc's default class. The layout is the reference bandwidth plugin's
//! (since v1.6), built over rtnetlink.

use ipnet::IpNet;
use netlink_packet_core::{DefaultNla, Nla, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage as Rtm;
use netlink_packet_route::tc::{
    TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcOption, TcU32Key, TcU32Selector,
    TcU32SelectorFlags,
};

use super::{LINKLAYER_ETHERNET, TBF_HANDLE, Tbf, ignore_gone, tc_message};
use crate::error::Result;
use crate::netlink::{Netlink, Request, flags, nl_err};

/// `TCA_HTB_PARMS`: `struct tc_htb_opt` of a class.
const TCA_HTB_PARMS: u16 = 1;
/// `TCA_HTB_INIT`: `struct tc_htb_glob` of the qdisc.
const TCA_HTB_INIT: u16 = 2;
/// `TCA_HTB_RATE64` / `TCA_HTB_CEIL64`: rates that do not fit 32 bits.
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`, and the rate-to-quantum divisor `tc` uses by default.
const HTB_VERSION: u32 = 3;
const HTB_R2Q: u32 = 10;
/// The class that holds shaped traffic (`1:30` in hex, as the reference's).
pub const SHAPED_CLASS: u32 = TBF_HANDLE | 48;
/// The class for traffic that is not shaped (`1:1`).
pub const UNSHAPED_CLASS: u32 = TBF_HANDLE | 1;
/// The uncapped class's rate, bytes per second (100 Gbit/s, as the reference's).
pub const UNCAPPED_RATE: u64 = 100_000_000_000;
/// Filter priorities: the kernel keeps one protocol per priority.
pub const PRIO_V4: u16 = 16;
pub const PRIO_V6: u16 = 15;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Which address of a packet the filters look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Source,
    Destination,
}

/// An `htb` setup: the capped class's bucket and which subnets go where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetShaping {
    /// The capped class's rate (bytes/s) and bucket (ticks); the queue limit is unused.
    pub bucket: Tbf,
    /// The subnets the filters classify.
    pub subnets: Vec<IpNet>,
    /// `true`: the subnets are shaped and everything else is not (`shapedSubnets`);
    /// `false`: the subnets are exempt and everything else is shaped (`unshapedSubnets`).
    pub subnets_shaped: bool,
    /// The address compared with the subnets.
    pub field: Field,
}

/// One `htb` class as the kernel holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HtbClass {
    pub handle: u32,
    /// Bytes per second.
    pub rate: u64,
    pub ceil: u64,
    /// Scheduler ticks.
    pub buffer: u32,
    pub cbuffer: u32,
}

/// One `u32` key: the 32-bit word at `off` in the network header, masked, equals `val`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct U32Match {
    pub off: i32,
    pub val: u32,
    pub mask: u32,
}

/// One classifying `u32` filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubnetFilter {
    /// Ethernet protocol (host order).
    pub protocol: u16,
    pub prio: u16,
    pub class: u32,
    pub keys: Vec<U32Match>,
}

/// What an `htb` root of a link holds, in a comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbState {
    /// The default class's minor number.
    pub default_minor: u32,
    /// Sorted by handle.
    pub classes: Vec<HtbClass>,
    /// Sorted.
    pub filters: Vec<SubnetFilter>,
}

/// The `u32` keys matching `net` at `field`: one per 32-bit word the prefix covers (a `/0`
/// gets one empty key, which matches every packet of the protocol).
pub fn keys_for(net: &IpNet, field: Field) -> Vec<U32Match> {
    let (addr, mask, base): (Vec<u8>, Vec<u8>, i32) = match net {
        IpNet::V4(n) => (
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
            if field == Field::Source { 12 } else { 16 },
        ),
        IpNet::V6(n) => (
            n.network().octets().to_vec(),
            n.netmask().octets().to_vec(),
            if field == Field::Source { 8 } else { 24 },
        ),
    };
    let word = |b: &[u8], i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let keys: Vec<U32Match> = (0..addr.len())
        .step_by(4)
        .filter(|&i| word(&mask, i) != 0)
        .map(|i| U32Match {
            off: base + i as i32,
            val: word(&addr, i) & word(&mask, i),
            mask: word(&mask, i),
        })
        .collect();
    if keys.is_empty() { vec![U32Match { off: base, val: 0, mask: 0 }] } else { keys }
}

impl SubnetShaping {
    fn default_class(&self) -> u32 {
        if self.subnets_shaped { UNSHAPED_CLASS } else { SHAPED_CLASS }
    }

    fn classes(&self) -> [HtbClass; 2] {
        let b = self.bucket;
        [
            HtbClass {
                handle: UNSHAPED_CLASS,
                rate: UNCAPPED_RATE,
                ceil: UNCAPPED_RATE,
                buffer: 0,
                cbuffer: 0,
            },
            // As the reference: a ceiling of twice the rate, which a class directly under the
            // qdisc never reaches (it has no parent to borrow from).
            HtbClass {
                handle: SHAPED_CLASS,
                rate: b.rate,
                ceil: b.rate * 2,
                buffer: b.buffer,
                cbuffer: b.buffer,
            },
        ]
    }

    fn filters(&self) -> Vec<SubnetFilter> {
        let class = if self.subnets_shaped { SHAPED_CLASS } else { UNSHAPED_CLASS };
        self.subnets
            .iter()
            .map(|n| {
                let (protocol, prio) = match n {
                    IpNet::V4(_) => (ETH_P_IP, PRIO_V4),
                    IpNet::V6(_) => (ETH_P_IPV6, PRIO_V6),
                };
                SubnetFilter { protocol, prio, class, keys: keys_for(n, self.field) }
            })
            .collect()
    }

    /// What the kernel holds once [`Netlink::add_root_htb`] made this.
    pub fn expected(&self) -> HtbState {
        let mut filters = self.filters();
        filters.sort();
        HtbState { default_minor: self.default_class() & 0xffff, classes: self.classes().to_vec(), filters }
    }
}

fn u32_ne(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}

/// `struct tc_ratespec` with the 32-bit rate field.
fn ratespec(rate: u64) -> Vec<u8> {
    let mut v = vec![0, LINKLAYER_ETHERNET];
    v.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    v.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    v.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    v.extend_from_slice(&u32_ne(rate.min(u32::MAX as u64) as u32));
    v
}

fn options_nla(kind: u16, value: Vec<u8>) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value))
}

fn qdisc_request(index: u32, default_class: u32) -> Request {
    let mut m = tc_message(index, TBF_HANDLE, TcHandle::ROOT.into());
    m.attributes.push(TcAttribute::Kind("htb".into()));
    // struct tc_htb_glob: version, rate2quantum, defcls, debug, direct_pkts.
    let mut glob = Vec::with_capacity(20);
    for v in [HTB_VERSION, HTB_R2Q, default_class & 0xffff, 0, 0] {
        glob.extend_from_slice(&u32_ne(v));
    }
    m.attributes.push(TcAttribute::Options(vec![options_nla(TCA_HTB_INIT, glob)]));
    Request::new(flags::ADD, Rtm::NewQueueDiscipline(m))
}

fn class_request(index: u32, c: &HtbClass) -> Request {
    let mut m = tc_message(index, c.handle, TBF_HANDLE);
    m.attributes.push(TcAttribute::Kind("htb".into()));
    // struct tc_htb_opt: rate, ceil, buffer, cbuffer, quantum (0: rate / r2q), level, prio.
    let mut opt = ratespec(c.rate);
    opt.extend_from_slice(&ratespec(c.ceil));
    for v in [c.buffer, c.cbuffer, 0, 0, 0] {
        opt.extend_from_slice(&u32_ne(v));
    }
    let mut opts = vec![options_nla(TCA_HTB_PARMS, opt)];
    if c.rate >= u32::MAX as u64 {
        opts.push(options_nla(TCA_HTB_RATE64, c.rate.to_ne_bytes().to_vec()));
    }
    if c.ceil >= u32::MAX as u64 {
        opts.push(options_nla(TCA_HTB_CEIL64, c.ceil.to_ne_bytes().to_vec()));
    }
    m.attributes.push(TcAttribute::Options(opts));
    Request::new(flags::ADD, Rtm::NewTrafficClass(m))
}

fn filter_request(index: u32, f: &SubnetFilter) -> Request {
    let mut m = tc_message(index, 0, TBF_HANDLE);
    m.header.info = ((f.prio as u32) << 16) | f.protocol.to_be() as u32;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = f.keys.len() as u8;
    sel.keys = f
        .keys
        .iter()
        .map(|k| {
            let mut key = TcU32Key::default();
            key.off = k.off;
            key.val = k.val;
            key.mask = k.mask;
            key
        })
        .collect();
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::ClassId(f.class.into())),
        TcOption::U32(TcFilterU32Option::Selector(sel)),
    ]));
    Request::new(flags::ADD, Rtm::NewTrafficFilter(m))
}

/// The raw `TCA_OPTIONS` of a kind the library does not know, as nested attributes.
fn raw_options(m: &TcMessage) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    for a in &m.attributes {
        let TcAttribute::Options(opts) = a else { continue };
        for o in opts {
            let TcOption::Other(nla) = o else { continue };
            let mut v = vec![0u8; nla.value_len()];
            nla.emit_value(&mut v);
            // The library keeps an unknown kind's options whole: TCA_OPTIONS itself.
            for n in NlasIterator::new(&v[..]).flatten() {
                out.push((n.kind(), n.value().to_vec()));
            }
        }
    }
    out
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_ne_bytes)
}

fn u64_of(b: &[u8]) -> Option<u64> {
    b.get(..8).and_then(|s| s.try_into().ok()).map(u64::from_ne_bytes)
}

fn kind_of(m: &TcMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(k) => Some(k.as_str()),
        _ => None,
    })
}

impl Netlink {
    /// Makes an `htb` the root qdisc (handle `1:`) of link `index`, with its two classes and
    /// the subnet filters. EEXIST when a root qdisc with that handle is there; if a later
    /// step fails, the qdisc (with whatever was added under it) is removed again.
    pub fn add_root_htb(&self, index: u32, s: &SubnetShaping) -> Result<()> {
        self.ack(qdisc_request(index, s.default_class()))
            .map_err(nl_err(format!("adding an htb qdisc to link {index}")))?;
        let rest = || -> Result<()> {
            for c in s.classes() {
                self.ack(class_request(index, &c)).map_err(nl_err(format!(
                    "adding htb class {:x}:{:x} to link {index}",
                    c.handle >> 16,
                    c.handle & 0xffff
                )))?;
            }
            for f in s.filters() {
                self.ack(filter_request(index, &f))
                    .map_err(nl_err(format!("adding a subnet filter to link {index}")))?;
            }
            Ok(())
        };
        rest().inspect_err(|_| {
            let _ = self.delete_root_htb(index);
        })
    }

    /// Removes link `index`'s root qdisc if it is an `htb` with handle `1:` (its classes and
    /// filters go with it); anything else, or nothing, is left alone.
    pub fn delete_root_htb(&self, index: u32) -> Result<()> {
        let ours = self
            .qdiscs(index)?
            .into_iter()
            .any(|q| q.kind == "htb" && q.handle == TBF_HANDLE && q.parent == u32::from(TcHandle::ROOT));
        if !ours {
            return Ok(());
        }
        let req = Request::new(
            flags::ACK,
            Rtm::DelQueueDiscipline(tc_message(index, TBF_HANDLE, TcHandle::ROOT.into())),
        );
        ignore_gone(self.ack(req).map_err(nl_err(format!("removing the htb qdisc of link {index}"))))
    }

    /// What link `index`'s `htb` root (handle `1:`) holds; `None` when there is none.
    pub fn root_htb(&self, index: u32) -> Result<Option<HtbState>> {
        let req = Request::new(flags::DUMP, Rtm::GetQueueDiscipline(TcMessage::with_index(index as i32)));
        let msgs = self.dump(req).map_err(nl_err(format!("listing the qdiscs of link {index}")))?;
        let Some(q) = msgs.into_iter().find_map(|m| match m {
            Rtm::NewQueueDiscipline(q)
                if q.header.index == index as i32
                    && u32::from(q.header.handle) == TBF_HANDLE
                    && kind_of(&q) == Some("htb") =>
            {
                Some(q)
            }
            _ => None,
        }) else {
            return Ok(None);
        };
        let default_minor = raw_options(&q)
            .iter()
            .find(|(k, _)| *k == TCA_HTB_INIT)
            .and_then(|(_, v)| u32_at(v, 8))
            .unwrap_or(u32::MAX);
        let req = Request::new(flags::DUMP, Rtm::GetTrafficClass(tc_message(index, 0, 0)));
        let msgs = self.dump(req).map_err(nl_err(format!("listing the classes of link {index}")))?;
        let mut classes: Vec<HtbClass> = msgs
            .into_iter()
            .filter_map(|m| match m {
                Rtm::NewTrafficClass(c) if c.header.index == index as i32 && kind_of(&c) == Some("htb") => {
                    htb_class(&c)
                }
                _ => None,
            })
            .collect();
        classes.sort();
        let req = Request::new(flags::DUMP, Rtm::GetTrafficFilter(tc_message(index, 0, TBF_HANDLE)));
        let msgs = self.dump(req).map_err(nl_err(format!("listing the filters of link {index}")))?;
        let mut filters: Vec<SubnetFilter> = msgs
            .into_iter()
            .filter_map(|m| match m {
                Rtm::NewTrafficFilter(f) if f.header.index == index as i32 => subnet_filter(&f),
                _ => None,
            })
            .collect();
        filters.sort();
        Ok(Some(HtbState { default_minor, classes, filters }))
    }
}

fn htb_class(m: &TcMessage) -> Option<HtbClass> {
    let opts = raw_options(m);
    let get = |k: u16| opts.iter().find(|(kind, _)| *kind == k).map(|(_, v)| v.as_slice());
    let p = get(TCA_HTB_PARMS)?;
    let rate32 = u32_at(p, 8)? as u64;
    let ceil32 = u32_at(p, 20)? as u64;
    Some(HtbClass {
        handle: m.header.handle.into(),
        rate: get(TCA_HTB_RATE64).and_then(u64_of).unwrap_or(rate32),
        ceil: get(TCA_HTB_CEIL64).and_then(u64_of).unwrap_or(ceil32),
        buffer: u32_at(p, 24)?,
        cbuffer: u32_at(p, 28)?,
    })
}

/// A classifying `u32` filter (the hash-table entries the kernel lists with it have no
/// selector and are skipped).
fn subnet_filter(m: &TcMessage) -> Option<SubnetFilter> {
    if kind_of(m) != Some("u32") {
        return None;
    }
    let (mut class, mut sel) = (None, None);
    for a in &m.attributes {
        let TcAttribute::Options(opts) = a else { continue };
        for o in opts {
            match o {
                TcOption::U32(TcFilterU32Option::ClassId(c)) => class = Some(u32::from(*c)),
                TcOption::U32(TcFilterU32Option::Selector(s)) => sel = Some(s),
                _ => {}
            }
        }
    }
    let sel = sel?;
    Some(SubnetFilter {
        protocol: u16::from_be(m.header.info as u16),
        prio: (m.header.info >> 16) as u16,
        class: class.unwrap_or(0),
        keys: sel.keys.iter().map(|k| U32Match { off: k.off, val: k.val, mask: k.mask }).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn keys_cover_the_prefix() {
        assert_eq!(
            keys_for(&net("10.1.2.3/16"), Field::Destination),
            vec![U32Match { off: 16, val: 0x0a01_0000, mask: 0xffff_0000 }]
        );
        assert_eq!(keys_for(&net("10.1.0.0/16"), Field::Source)[0].off, 12);
        // Only the words the prefix covers.
        let k = keys_for(&net("fd00:1:2:3::/56"), Field::Source);
        assert_eq!(
            k,
            vec![
                U32Match { off: 8, val: 0xfd00_0001, mask: u32::MAX },
                U32Match { off: 12, val: 0x0002_0000, mask: 0xffff_ff00 },
            ]
        );
        assert_eq!(keys_for(&net("::/0"), Field::Destination), vec![U32Match { off: 24, val: 0, mask: 0 }]);
        assert_eq!(keys_for(&net("2001:db8::1/128"), Field::Destination).len(), 4);
    }

    #[test]
    fn expected_layout() {
        let s = SubnetShaping {
            bucket: Tbf { rate: 125_000, limit: 0, buffer: 1000 },
            subnets: vec![net("10.0.0.0/8"), net("fd00::/8")],
            subnets_shaped: false,
            field: Field::Destination,
        };
        let e = s.expected();
        assert_eq!(e.default_minor, 48);
        assert_eq!(
            e.classes[1],
            HtbClass { handle: SHAPED_CLASS, rate: 125_000, ceil: 250_000, buffer: 1000, cbuffer: 1000 }
        );
        assert!(e.filters.iter().all(|f| f.class == UNSHAPED_CLASS));
        assert_eq!(e.filters.iter().map(|f| f.prio).collect::<Vec<_>>(), vec![PRIO_V4, PRIO_V6]);
        let s = SubnetShaping { subnets_shaped: true, ..s };
        assert_eq!(s.expected().default_minor, 1);
    }
}
