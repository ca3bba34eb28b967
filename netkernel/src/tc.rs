//! Traffic control over rtnetlink (no `tc` process): a token-bucket filter (`tbf`) as a
//! link's root qdisc, the `ingress` qdisc, a filter there that redirects everything arriving
//! on a link to another link's egress (`mirred`), and `ifb` links to shape that traffic on.
//! This is what the bandwidth plugin needs, and nothing more; [`htb`] adds shaping by subnet.

pub mod htb;

use netlink_packet_core::{DefaultNla, Nla, NlasIterator};
use netlink_packet_route::RouteNetlinkMessage as Rtm;
use netlink_packet_route::link::{InfoKind, LinkAttribute};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType,
    TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

use crate::error::Result;
use crate::link::new_link;
use crate::netlink::{Netlink, Request, flags, nl_err};

/// `TCA_TBF_PARMS`: `struct tc_tbf_qopt`.
const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: the rate when it does not fit the 32-bit field.
const TCA_TBF_RATE64: u16 = 4;
/// `TC_LINKLAYER_ETHERNET`, as `tc` sets it (no rate table then).
const LINKLAYER_ETHERNET: u8 = 1;
/// `ETH_P_ALL`: a filter for every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The handle the root token bucket gets (`1:`), as the reference bandwidth plugin's.
pub const TBF_HANDLE: u32 = 0x0001_0000;
/// The ingress qdisc's handle (`ffff:`).
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// The priority of the redirect filter.
pub const REDIRECT_PRIORITY: u16 = 1;
/// The largest bucket the kernel keeps as given: it holds the bucket's time in nanoseconds
/// in 32 bits (about 4.29 s at the rate), so a larger `buffer` (in 64 ns ticks) is cut to
/// this here, where the reference's arithmetic lets it wrap to an arbitrary value.
pub const MAX_BUFFER_TICKS: u32 = u32::MAX >> 6;

/// A token bucket, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// Rate, bytes per second.
    pub rate: u64,
    /// Bytes that may wait in the queue.
    pub limit: u32,
    /// The bucket's size, as the time the rate takes to fill it, in scheduler ticks.
    pub buffer: u32,
}

/// A qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// The link's index.
    pub index: u32,
    /// Kind (`tbf`, `ingress`, `noqueue`, …).
    pub kind: String,
    /// Handle (`major << 16 | minor`).
    pub handle: u32,
    /// Parent handle.
    pub parent: u32,
    /// The parameters, for a `tbf`.
    pub tbf: Option<Tbf>,
}

/// The scheduler's clock, from `/proc/net/psched`: ticks per microsecond (15.625 on every
/// kernel since 2.6.x, where a tick is 64 ns).
pub fn ticks_per_usec() -> f64 {
    let parse = |s: &str| -> Option<f64> {
        let f: Vec<u64> = s
            .split_whitespace()
            .map(|w| u64::from_str_radix(w, 16))
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        let (mut t2us, us2t, res) = (*f.first()?, *f.get(1)?, *f.get(2)?);
        if us2t == 0 || t2us == 0 || res == 0 {
            return None;
        }
        // As iproute2 and the reference read it: a nanosecond clock resolution means the
        // first two fields are not a ratio.
        if res == 1_000_000_000 {
            t2us = us2t;
        }
        Some(t2us as f64 / us2t as f64 * (res as f64 / 1_000_000.0))
    };
    std::fs::read_to_string("/proc/net/psched").ok().as_deref().and_then(parse).unwrap_or(15.625)
}

impl Tbf {
    /// The bucket the reference bandwidth plugin makes for `rate` and `burst` (both in bits):
    /// the bucket holds `burst`, the queue `burst` plus 25 ms at the rate. The bucket is cut
    /// to what the kernel keeps ([`MAX_BUFFER_TICKS`], about 4.29 s at the rate) and the
    /// queue to 32 bits; `None` when the rate or burst is under a byte.
    pub fn for_bits(rate_bits: u64, burst_bits: u64, ticks_per_usec: f64) -> Option<Tbf> {
        let rate = rate_bits / 8;
        let burst = burst_bits / 8;
        if rate == 0 || burst == 0 {
            return None;
        }
        const LATENCY_USEC: f64 = 25_000.0;
        // The same float steps as the reference, so the kernel holds the same numbers.
        let usec = (burst as f64 * 1e6 / rate as f64).min(u32::MAX as f64).trunc();
        let buffer = (usec * ticks_per_usec).min(MAX_BUFFER_TICKS as f64) as u32;
        let limit = (rate as f64 * LATENCY_USEC / 1e6).trunc() + burst as f64;
        Some(Tbf { rate, limit: limit.min(u32::MAX as f64) as u32, buffer })
    }

    /// `TCA_OPTIONS` of a `tbf` qdisc: `struct tc_tbf_qopt` (and the 64-bit rate when it
    /// does not fit).
    fn options(&self) -> Vec<TcOption> {
        let mut parms = Vec::with_capacity(36);
        // struct tc_ratespec rate: cell_log, linklayer, overhead, cell_align, mpu, rate.
        parms.extend_from_slice(&[0, LINKLAYER_ETHERNET]);
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&0i16.to_ne_bytes());
        parms.extend_from_slice(&0u16.to_ne_bytes());
        parms.extend_from_slice(&(self.rate.min(u32::MAX as u64) as u32).to_ne_bytes());
        // struct tc_ratespec peakrate: none.
        parms.extend_from_slice(&[0u8; 12]);
        parms.extend_from_slice(&self.limit.to_ne_bytes());
        parms.extend_from_slice(&self.buffer.to_ne_bytes());
        parms.extend_from_slice(&0u32.to_ne_bytes());
        let mut out = vec![TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, parms))];
        if self.rate >= u32::MAX as u64 {
            out.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, self.rate.to_ne_bytes().to_vec())));
        }
        out
    }

    /// Reads the parameters back from a dumped qdisc's `TCA_OPTIONS`.
    fn parse(options: &[TcOption]) -> Option<Tbf> {
        // The library keeps an unknown kind's options as one attribute: TCA_OPTIONS itself.
        let nested: Vec<u8> = options
            .iter()
            .filter_map(|o| match o {
                TcOption::Other(nla) => {
                    let mut v = vec![0u8; nla.value_len()];
                    nla.emit_value(&mut v);
                    Some(v)
                }
                _ => None,
            })
            .next()?;
        let (mut parms, mut rate64) = (None, None);
        for nla in NlasIterator::new(&nested[..]) {
            let nla = nla.ok()?;
            match nla.kind() {
                TCA_TBF_PARMS => parms = Some(nla.value().to_vec()),
                TCA_TBF_RATE64 => {
                    rate64 = nla.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_ne_bytes)
                }
                _ => {}
            }
        }
        let p = parms?;
        let u32_at = |i: usize| p.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
        let rate32 = u32_at(8)? as u64;
        Some(Tbf { rate: rate64.unwrap_or(rate32).max(rate32), limit: u32_at(24)?, buffer: u32_at(28)? })
    }
}

fn tc_message(index: u32, handle: u32, parent: u32) -> TcMessage {
    let mut m = TcMessage::with_index(index as i32);
    m.header.handle = handle.into();
    m.header.parent = parent.into();
    m
}

/// Adding a `tbf` as `index`'s root qdisc (handle `1:`); EEXIST when one is there.
pub(crate) fn tbf_request(index: u32, tbf: &Tbf) -> Request {
    let mut m = tc_message(index, TBF_HANDLE, TcHandle::ROOT.into());
    m.attributes.push(TcAttribute::Kind("tbf".into()));
    m.attributes.push(TcAttribute::Options(tbf.options()));
    Request::new(flags::ADD, Rtm::NewQueueDiscipline(m))
}

/// Adding the `ingress` qdisc (handle `ffff:`) to `index`.
pub(crate) fn ingress_request(index: u32) -> Request {
    let mut m = tc_message(index, INGRESS_HANDLE, TcHandle::INGRESS.into());
    m.attributes.push(TcAttribute::Kind("ingress".into()));
    m.attributes.push(TcAttribute::Options(vec![]));
    Request::new(flags::ADD, Rtm::NewQueueDiscipline(m))
}

/// A `u32` filter on `index`'s ingress qdisc that matches every packet and redirects it to
/// the egress of link `to` (`tc filter add dev X parent ffff: protocol all prio 1 u32 match
/// u32 0 0 action mirred egress redirect dev Y`).
pub(crate) fn redirect_request(index: u32, to: u32) -> Request {
    let mut m = tc_message(index, 0, INGRESS_HANDLE);
    // tcm_info: priority in the upper half, the protocol (network order) in the lower.
    m.header.info = ((REDIRECT_PRIORITY as u32) << 16) | ETH_P_ALL.to_be() as u32;
    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic = TcActionGeneric::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = to;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];
    m.attributes.push(TcAttribute::Kind("u32".into()));
    m.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    Request::new(flags::ADD, Rtm::NewTrafficFilter(m))
}

/// Creating an `ifb` link, up, with `mtu` and `txqlen`.
pub(crate) fn ifb_request(name: &str, mtu: u32, txqlen: u32) -> Request {
    let attrs = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::TxQueueLen(txqlen),
    ];
    Request::new(flags::ADD, Rtm::NewLink(new_link(true, attrs, InfoKind::Ifb, None)))
}

impl Netlink {
    /// Makes a `tbf` the root qdisc of link `index`; EEXIST when a `1:` root is there.
    pub fn add_root_tbf(&self, index: u32, tbf: &Tbf) -> Result<()> {
        self.ack(tbf_request(index, tbf)).map_err(nl_err(format!("adding a tbf qdisc to link {index}")))
    }

    /// Adds the `ingress` qdisc to link `index`; EEXIST when it is there.
    pub fn add_ingress_qdisc(&self, index: u32) -> Result<()> {
        self.ack(ingress_request(index)).map_err(nl_err(format!("adding the ingress qdisc to link {index}")))
    }

    /// Redirects every packet arriving on link `index` to the egress of link `to` (needs the
    /// ingress qdisc).
    pub fn add_ingress_redirect(&self, index: u32, to: u32) -> Result<()> {
        self.ack(redirect_request(index, to))
            .map_err(nl_err(format!("adding a redirect from link {index} to link {to}")))
    }

    /// Creates an `ifb` link named `name`, up.
    pub fn add_ifb(&self, name: &str, mtu: u32, txqlen: u32) -> Result<()> {
        self.ack(ifb_request(name, mtu, txqlen)).map_err(nl_err(format!("creating ifb {name:?}")))
    }

    /// The qdiscs of link `index` (the kernel lists every link's; the others are left out).
    pub fn qdiscs(&self, index: u32) -> Result<Vec<Qdisc>> {
        let req = Request::new(flags::DUMP, Rtm::GetQueueDiscipline(TcMessage::with_index(index as i32)));
        let msgs = self.dump(req).map_err(nl_err(format!("listing the qdiscs of link {index}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                Rtm::NewQueueDiscipline(q) if q.header.index == index as i32 => Some(qdisc_of(&q)),
                _ => None,
            })
            .collect())
    }

    /// The links that filters on link `index`'s ingress qdisc redirect packets to.
    pub fn ingress_redirects(&self, index: u32) -> Result<Vec<u32>> {
        let req = Request::new(flags::DUMP, Rtm::GetTrafficFilter(tc_message(index, 0, INGRESS_HANDLE)));
        let msgs = match self.dump(req) {
            Ok(m) => m,
            // No ingress qdisc: no filters.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::ENOENT)) => return Ok(vec![]),
            Err(e) => return Err(nl_err(format!("listing the ingress filters of link {index}"))(e)),
        };
        let mut out = Vec::new();
        for m in msgs {
            let Rtm::NewTrafficFilter(f) = m else { continue };
            for a in &f.attributes {
                let TcAttribute::Options(opts) = a else { continue };
                for o in opts {
                    let TcOption::U32(TcFilterU32Option::Action(actions)) = o else { continue };
                    for act in actions {
                        for aa in &act.attributes {
                            let TcActionAttribute::Options(aos) = aa else { continue };
                            for ao in aos {
                                if let TcActionOption::Mirror(TcActionMirrorOption::Parms(p)) = ao
                                    && p.eaction == TcMirrorActionType::EgressRedir
                                {
                                    out.push(p.ifindex);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes link `index`'s root qdisc if it is a `tbf` with handle `1:` (what
    /// [`Netlink::add_root_tbf`] made); anything else, or nothing, is left alone.
    pub fn delete_root_tbf(&self, index: u32) -> Result<()> {
        let ours = self
            .qdiscs(index)?
            .into_iter()
            .any(|q| q.kind == "tbf" && q.handle == TBF_HANDLE && q.parent == u32::from(TcHandle::ROOT));
        if !ours {
            return Ok(());
        }
        let req = Request::new(
            flags::ACK,
            Rtm::DelQueueDiscipline(tc_message(index, TBF_HANDLE, TcHandle::ROOT.into())),
        );
        ignore_gone(self.ack(req).map_err(nl_err(format!("removing the tbf qdisc of link {index}"))))
    }

    /// Removes link `index`'s `ingress` qdisc (and its filters); none is not an error.
    pub fn delete_ingress_qdisc(&self, index: u32) -> Result<()> {
        if !self.qdiscs(index)?.iter().any(|q| q.kind == "ingress") {
            return Ok(());
        }
        let req = Request::new(
            flags::ACK,
            Rtm::DelQueueDiscipline(tc_message(index, INGRESS_HANDLE, TcHandle::INGRESS.into())),
        );
        ignore_gone(self.ack(req).map_err(nl_err(format!("removing the ingress qdisc of link {index}"))))
    }
}

fn ignore_gone(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

fn qdisc_of(m: &TcMessage) -> Qdisc {
    let mut q = Qdisc {
        index: m.header.index as u32,
        kind: String::new(),
        handle: m.header.handle.into(),
        parent: m.header.parent.into(),
        tbf: None,
    };
    for a in &m.attributes {
        if let TcAttribute::Kind(k) = a {
            q.kind = k.clone();
        }
    }
    if q.kind == "tbf" {
        q.tbf = m.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(o) => Tbf::parse(o),
            _ => None,
        });
    }
    q
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn bucket_matches_the_reference_arithmetic() {
        // 1 Mbit/s, 1 Mbit burst: 125000 B/s, 1 s of bucket = 15625000 ticks, queue
        // 125000 + 25 ms × 125000 B/s.
        let t = Tbf::for_bits(1_000_000, 1_000_000, 15.625).unwrap();
        assert_eq!(t, Tbf { rate: 125_000, limit: 128_125, buffer: 15_625_000 });
        // The burst a runtime sends for "no burst limit" (u32::MAX bits) is cut to the
        // kernel's longest bucket rather than wrapping.
        let t = Tbf::for_bits(10_000_000, u32::MAX as u64, 15.625).unwrap();
        assert_eq!(t.buffer, MAX_BUFFER_TICKS);
        assert_eq!(t.limit, 536_870_911 + 31_250);
        assert_eq!(Tbf::for_bits(7, 8000, 15.625), None);
        assert_eq!(Tbf::for_bits(8000, 7, 15.625), None);
    }

    #[test]
    fn options_round_trip() {
        for rate in [125_000u64, u32::MAX as u64 + 5] {
            let t = Tbf { rate, limit: 77, buffer: 99 };
            let opts = t.options();
            // As the kernel sends them back: one TCA_OPTIONS holding the attributes.
            let mut nested = Vec::new();
            for o in &opts {
                let mut b = vec![0u8; o.buffer_len()];
                o.emit(&mut b);
                nested.extend_from_slice(&b);
            }
            let back = Tbf::parse(&[TcOption::Other(DefaultNla::new(2, nested))]).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn psched_clock() {
        let t = ticks_per_usec();
        assert!((t - 15.625).abs() < 1e-9, "{t}");
    }
}
