//! GRO for the TUN write: consecutive TCP segments of one flow (in order, same ACK and
//! options, full-size but for the last) are glued into one super-packet written with a
//! virtio-net GSO header, so the kernel takes ~40 segments in one `write`. A few flows at a
//! time; everything is written out at the end of each receive batch.

use netkernel::tun::TunQueue;

use super::offload::{
    F_DATA_VALID, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, VnetHdr, csum_add, csum_fold,
};

/// Flows coalesced at once.
const SLOTS: usize = 8;
/// The largest super-packet (IP total length is 16 bits).
const MAX_PKT: usize = 65_535;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

/// A TCP segment's coordinates, parsed once.
#[derive(Clone, Copy)]
struct Seg {
    v4: bool,
    /// Offset of the TCP header (= IP header length).
    l4: usize,
    /// IP + TCP header length.
    hlen: usize,
    seq: u32,
    flags: u8,
}

fn parse(p: &[u8]) -> Option<Seg> {
    // An IPv6 packet may say 65535 + 40 bytes; a slot holds 65535.
    if p.len() > MAX_PKT {
        return None;
    }
    let (v4, l4) = match p.first()? >> 4 {
        4 => {
            // No IP options, not a fragment, TCP, and the length field agrees.
            if p.len() < 40 || p[0] != 0x45 || p[9] != 6 || u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
                return None;
            }
            if u16::from_be_bytes([p[2], p[3]]) as usize != p.len() {
                return None;
            }
            (true, 20)
        }
        6 => {
            if p.len() < 60 || p[6] != 6 || u16::from_be_bytes([p[4], p[5]]) as usize + 40 != p.len() {
                return None;
            }
            (false, 40)
        }
        _ => return None,
    };
    let thl = (p[l4 + 12] >> 4) as usize * 4;
    if thl < 20 || p.len() < l4 + thl {
        return None;
    }
    let seq = u32::from_be_bytes([p[l4 + 4], p[l4 + 5], p[l4 + 6], p[l4 + 7]]);
    Some(Seg { v4, l4, hlen: l4 + thl, seq, flags: p[l4 + 13] })
}

struct Slot {
    /// vnet header room, then the super-packet.
    buf: Vec<u8>,
    /// Bytes of packet in `buf` after the header room; 0 = empty.
    len: usize,
    seg: Seg,
    /// Payload size of the first segment: the GSO size.
    gso: usize,
    count: usize,
    next_seq: u32,
    /// The last segment was shorter than `gso` or had PSH: nothing may follow.
    closed: bool,
    /// Writes since it was last used, to pick a slot to evict.
    age: u32,
}

/// Whether `a` (the slot's first packet) and `b` are the same flow with the same headers
/// but for the fields segmentation changes.
fn same_flow(a: &[u8], sa: &Seg, b: &[u8], sb: &Seg) -> bool {
    if sa.v4 != sb.v4 || sa.hlen != sb.hlen {
        return false;
    }
    let l4 = sa.l4;
    let addrs = if sa.v4 { 12..20 } else { 8..40 };
    a[addrs.clone()] == b[addrs] && a[l4..l4 + 4] == b[l4..l4 + 4]
}

/// Whether `b` can be appended to the slot: same ACK number, window and options, same
/// TTL/TOS (or traffic class/hop limit), only ACK (PSH allowed on the last).
fn mergeable(a: &[u8], sa: &Seg, b: &[u8], sb: &Seg) -> bool {
    let l4 = sa.l4;
    let ip_same = if sa.v4 { a[1] == b[1] && a[8] == b[8] } else { a[0..4] == b[0..4] && a[7] == b[7] };
    ip_same && a[l4 + 8..l4 + 12] == b[l4 + 8..l4 + 12] && a[l4 + 14..l4 + 16] == b[l4 + 14..l4 + 16]
        // options
        && a[l4 + 20..sa.hlen] == b[l4 + 20..sb.hlen]
}

/// Where super-packets go: the TUN queue, or a recorder in tests.
pub(crate) trait Sink {
    /// Writes one packet (with its vnet header); false when the write failed.
    fn write_packet(&self, b: &[u8]) -> bool;
}

impl Sink for TunQueue {
    fn write_packet(&self, b: &[u8]) -> bool {
        self.write(b).is_ok()
    }
}

pub(crate) struct Coalescer {
    slots: Vec<Slot>,
}

impl Coalescer {
    pub fn new() -> Coalescer {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                buf: vec![0; VNET_HDR_LEN + MAX_PKT],
                len: 0,
                seg: Seg { v4: true, l4: 0, hlen: 0, seq: 0, flags: 0 },
                gso: 0,
                count: 0,
                next_seq: 0,
                closed: false,
                age: 0,
            })
            .collect();
        Coalescer { slots }
    }

    /// Takes a decrypted packet. Returns false when the caller must write it itself (not
    /// a mergeable TCP segment); any segments of its flow held here are written first so
    /// the flow stays in order.
    pub fn push(&mut self, p: &[u8], tun: &impl Sink) -> bool {
        let Some(s) = parse(p) else {
            return false;
        };
        let payload = p.len() - s.hlen;
        let plain = s.flags & !(TCP_PSH) == TCP_ACK;
        let found =
            self.slots.iter().position(|sl| sl.len > 0 && same_flow(&sl.buf[VNET_HDR_LEN..], &sl.seg, p, &s));
        if let Some(i) = found {
            let sl = &mut self.slots[i];
            let first = &sl.buf[VNET_HDR_LEN..VNET_HDR_LEN + sl.seg.hlen];
            if plain
                && payload > 0
                && !sl.closed
                && s.seq == sl.next_seq
                && payload <= sl.gso
                && sl.len + payload <= MAX_PKT
                && mergeable(first, &sl.seg, p, &s)
            {
                let at = VNET_HDR_LEN + sl.len;
                sl.buf[at..at + payload].copy_from_slice(&p[s.hlen..]);
                sl.len += payload;
                sl.count += 1;
                sl.next_seq = s.seq.wrapping_add(payload as u32);
                if s.flags & TCP_PSH != 0 {
                    sl.buf[VNET_HDR_LEN + sl.seg.l4 + 13] |= TCP_PSH;
                    sl.closed = true;
                }
                if payload < sl.gso {
                    sl.closed = true;
                }
                sl.age = 0;
                return true;
            }
            // Same flow but not mergeable: what is held goes first.
            write_slot(sl, tun);
        }
        if !plain || payload == 0 {
            return false;
        }
        // Start a new run in a free slot, or the least recently used one.
        for sl in &mut self.slots {
            sl.age = sl.age.saturating_add(1);
        }
        let i = self.slots.iter().position(|sl| sl.len == 0).unwrap_or_else(|| {
            self.slots.iter().enumerate().max_by_key(|(_, sl)| sl.age).map_or(0, |(i, _)| i)
        });
        let sl = &mut self.slots[i];
        if sl.len > 0 {
            write_slot(sl, tun);
        }
        sl.buf[VNET_HDR_LEN..VNET_HDR_LEN + p.len()].copy_from_slice(p);
        sl.len = p.len();
        sl.seg = s;
        sl.gso = payload;
        sl.count = 1;
        sl.next_seq = s.seq.wrapping_add(payload as u32);
        sl.closed = s.flags & TCP_PSH != 0;
        sl.age = 0;
        true
    }

    /// Writes out everything held; returns the number of failed writes.
    pub fn flush(&mut self, tun: &impl Sink) -> u64 {
        let mut failed = 0;
        for sl in &mut self.slots {
            if sl.len > 0 && !write_slot(sl, tun) {
                failed += 1;
            }
        }
        failed
    }
}

/// Writes a slot (one packet as is, several as a GSO super-packet) and empties it.
fn write_slot(sl: &mut Slot, tun: &impl Sink) -> bool {
    let len = sl.len;
    sl.len = 0;
    let s = sl.seg;
    let (hdr, pkt) = sl.buf.split_at_mut(VNET_HDR_LEN);
    let pkt = &mut pkt[..len];
    let vh = if sl.count == 1 {
        VnetHdr { flags: F_DATA_VALID, ..Default::default() }
    } else {
        if s.v4 {
            pkt[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            pkt[10] = 0;
            pkt[11] = 0;
            let c = !csum_fold(csum_add(0, &pkt[..20]));
            pkt[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            pkt[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel finishes
        // it per segment if the packet is forwarded, and trusts it if delivered locally.
        let l4_len = len - s.l4;
        let addrs = if s.v4 { &pkt[12..20] } else { &pkt[8..40] };
        let ps = csum_fold(csum_add(0, addrs) + 6 + l4_len as u64);
        pkt[s.l4 + 16..s.l4 + 18].copy_from_slice(&ps.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if s.v4 { GSO_TCPV4 } else { GSO_TCPV6 },
            hdr_len: s.hlen as u16,
            gso_size: sl.gso as u16,
            csum_start: s.l4 as u16,
            csum_offset: 16,
        }
    };
    vh.write(hdr);
    tun.write_packet(&sl.buf[..VNET_HDR_LEN + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg4(seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 52 + payload];
        p[0] = 0x45;
        let l = p.len() as u16;
        p[2..4].copy_from_slice(&l.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 8 << 4; // 32-byte TCP header: timestamps
        p[33] = flags;
        p[40..52].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p
    }

    #[test]
    fn parses_and_rejects() {
        assert!(parse(&seg4(1, 10, TCP_ACK)).is_some());
        let mut frag = seg4(1, 10, TCP_ACK);
        frag[6] = 0x20; // MF
        assert!(parse(&frag).is_none());
        let mut opts = seg4(1, 10, TCP_ACK);
        opts[0] = 0x46;
        assert!(parse(&opts).is_none());
        assert!(parse(&[0x45; 30]).is_none());
        assert!(parse(&[]).is_none());
    }

    use proptest::prelude::*;
    use std::cell::RefCell;

    use crate::offload::{self, GSO_NONE};

    /// Records what would be written to the TUN.
    #[derive(Default)]
    struct Rec(RefCell<Vec<Vec<u8>>>);

    impl Sink for Rec {
        fn write_packet(&self, b: &[u8]) -> bool {
            self.0.borrow_mut().push(b.to_vec());
            true
        }
    }

    /// A TCP segment of flow `flow` (its ports), IPv4 or IPv6, 32-byte TCP header.
    fn seg(v6: bool, flow: u16, seq: u32, payload: usize, flags: u8) -> Vec<u8> {
        let v4 = seg4(seq, payload, flags);
        let mut p = if v6 {
            let mut p = vec![0u8; 40];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((v4.len() - 20) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[8] = 0xfd;
            p[24] = 0xfd;
            p[39] = 2;
            p.extend_from_slice(&v4[20..]);
            p
        } else {
            v4
        };
        let l4 = if v6 { 40 } else { 20 };
        p[l4..l4 + 2].copy_from_slice(&(1000 + flow).to_be_bytes());
        p
    }

    /// TCP payload bytes of a packet as `parse` sees it.
    fn payload_of(p: &[u8]) -> usize {
        parse(p).map_or(0, |s| p.len() - s.hlen)
    }

    #[derive(Debug, Clone)]
    struct Step {
        v6: bool,
        flow: u16,
        payload: usize,
        in_order: bool,
        flags: u8,
        poke: Option<(usize, u8)>,
        cut: Option<usize>,
    }

    fn any_step() -> impl Strategy<Value = Step> {
        (
            any::<bool>(),
            0u16..3,
            prop_oneof![Just(0usize), Just(1000), Just(1000), 1usize..1400],
            prop::bool::weighted(0.9),
            prop_oneof![Just(TCP_ACK), Just(TCP_ACK | TCP_PSH), any::<u8>()],
            prop::option::weighted(0.2, (0usize..60, any::<u8>())),
            prop::option::weighted(0.1, 0usize..1100),
        )
            .prop_map(|(v6, flow, payload, in_order, flags, poke, cut)| Step {
                v6,
                flow,
                payload,
                in_order,
                flags,
                poke,
                cut,
            })
    }

    /// Checks one written packet and returns its TCP payload bytes.
    fn check_written(b: &[u8]) -> Result<usize, TestCaseError> {
        prop_assert!(b.len() <= VNET_HDR_LEN + MAX_PKT);
        let h = VnetHdr::parse(b).expect("vnet header present");
        let pkt = &b[VNET_HDR_LEN..];
        if h.gso_type == GSO_NONE {
            return Ok(payload_of(pkt));
        }
        let s = parse(pkt);
        prop_assert!(s.is_some(), "super-packet parses: IP length matches");
        let s = s.unwrap();
        prop_assert!(h.gso_size > 0 && h.hdr_len as usize == s.hlen && h.csum_start as usize == s.l4);
        let mut scratch = vec![0u8; VNET_HDR_LEN + MAX_PKT];
        let mut total = 0;
        let n = offload::segment_tcp(pkt, &h, &mut scratch, |seg| total += seg.len() - s.hlen);
        prop_assert!(n.is_ok(), "the kernel could segment it: {:?}", n);
        Ok(total)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        /// Runs of segments (in order or not, any flags, some corrupted or truncated) and
        /// random bytes: no panic, every write a well-formed packet, no payload byte lost
        /// or invented.
        #[test]
        fn coalescer_conserves_payload(
            steps in proptest::collection::vec(any_step(), 1..60),
            junk in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..4),
        ) {
            let mut c = Coalescer::new();
            let rec = Rec::default();
            let mut next = [[0u32; 3]; 2];
            let mut held = 0usize;
            for st in &steps {
                let n = &mut next[st.v6 as usize][st.flow as usize];
                let seq = if st.in_order { *n } else { n.wrapping_add(7) };
                let mut p = seg(st.v6, st.flow, seq, st.payload, st.flags);
                if let Some((at, v)) = st.poke
                    && let Some(b) = p.get_mut(at)
                {
                    *b = v;
                }
                if let Some(cut) = st.cut {
                    p.truncate(cut);
                }
                let pl = payload_of(&p);
                if c.push(&p, &rec) {
                    held += pl;
                    *n = seq.wrapping_add(pl as u32);
                }
            }
            for j in &junk {
                prop_assert!(!c.push(j, &rec) || parse(j).is_some());
            }
            c.flush(&rec);
            let mut written = 0;
            for b in rec.0.borrow().iter() {
                written += check_written(b)?;
            }
            prop_assert_eq!(written, held);
        }

        #[test]
        fn parse_takes_any_bytes(p in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Some(s) = parse(&p) {
                prop_assert!(s.hlen <= p.len() && s.l4 + 20 <= s.hlen);
            }
        }
    }

    #[test]
    fn in_order_run_becomes_one_gso_write() {
        let mut c = Coalescer::new();
        let rec = Rec::default();
        for i in 0..3 {
            assert!(c.push(&seg4(100 + i * 1000, 1000, TCP_ACK), &rec));
        }
        assert!(c.push(&seg4(3100, 10, TCP_ACK | TCP_PSH), &rec));
        c.flush(&rec);
        let w = rec.0.borrow();
        assert_eq!(w.len(), 1);
        let h = VnetHdr::parse(&w[0]).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (GSO_TCPV4, 1000, 52));
        assert_eq!(check_written(&w[0]).unwrap(), 3010);
    }

    /// Regression: an IPv6 packet may be up to 65575 bytes by its length field; it used to
    /// be copied into a 65535-byte slot (a panic). Now the caller writes it itself.
    #[test]
    fn oversized_ipv6_is_not_held() {
        let mut p = seg(true, 0, 1, 65_535 - 32, TCP_ACK);
        assert_eq!(p.len(), 65_575);
        assert_eq!(u16::from_be_bytes([p[4], p[5]]), u16::MAX);
        let mut c = Coalescer::new();
        let rec = Rec::default();
        assert!(!c.push(&p, &rec));
        p.truncate(MAX_PKT);
        p[4..6].copy_from_slice(&((MAX_PKT - 40) as u16).to_be_bytes());
        assert!(c.push(&p, &rec), "the largest that fits is still coalesced");
        assert_eq!(c.flush(&rec), 0);
        assert_eq!(rec.0.borrow()[0].len(), VNET_HDR_LEN + MAX_PKT);
    }

    #[test]
    fn merge_rules() {
        let a = seg4(100, 1000, TCP_ACK);
        let sa = parse(&a).unwrap();
        let b = seg4(1100, 1000, TCP_ACK);
        let sb = parse(&b).unwrap();
        assert!(same_flow(&a, &sa, &b, &sb) && mergeable(&a, &sa, &b, &sb));
        let mut other_ts = b.clone();
        other_ts[51] = 9;
        assert!(!mergeable(&a, &sa, &other_ts, &parse(&other_ts).unwrap()));
        let mut other_port = b.clone();
        other_port[21] = 1;
        assert!(!same_flow(&a, &sa, &other_port, &parse(&other_port).unwrap()));
    }
}
