//! virtio-net headers and the offloads the kernel hands to us: TCP segmentation (TSO) of the
//! super-packets a TUN with IFF_VNET_HDR returns, completion of partial checksums, and the
//! checksums themselves. Pure functions over byte slices; nothing allocates.

/// `struct virtio_net_hdr` without `num_buffers`: the header size netkernel's `TunQueue`
/// sets (TUNSETVNETHDRSZ) when it opens a queue with `vnet_hdr`, so defined there only.
pub use netkernel::tun::VNET_HDR_LEN;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the receiver need not verify the checksum.
pub const F_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_*`.
pub const GSO_NONE: u8 = 0;
/// TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// The ECN bit of `gso_type`.
pub const GSO_ECN: u8 = 0x80;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// A parsed `virtio_net_hdr` (little-endian fields on the wire, as TUN uses on x86/arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parses the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes it into the first [`VNET_HDR_LEN`] bytes of `b` (which must be that long).
    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// Why a packet from the TUN could not be segmented or checksummed (it is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("packet too short for its headers")]
    Truncated,
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("unsupported gso type {0:#x}")]
    UnsupportedGso(u8),
    #[error("segment larger than the scratch buffer")]
    TooLarge,
}

/// Adds `data` (big-endian 16-bit words, an odd last byte padded) to a running sum.
#[inline]
pub fn csum_add(mut acc: u64, data: &[u8]) -> u64 {
    // 32-bit words into a 64-bit accumulator: a+b*65536 ≡ a+b (mod 65535), and no overflow
    // before 2^32 words.
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u32::from_be_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc + u32::from_be_bytes(tail) as u64
}

/// Folds a running sum to 16 bits (not complemented).
#[inline]
pub fn csum_fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The IPv4 header checksum of `hdr` (whose checksum field must be zero).
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    !csum_fold(csum_add(0, hdr))
}

/// The pseudo-header sum of an IP packet for a transport of `proto` and `l4_len` bytes.
fn pseudo_sum(pkt: &[u8], proto: u8, l4_len: usize) -> u64 {
    let addrs = if pkt[0] >> 4 == 4 { &pkt[12..20] } else { &pkt[8..40] };
    csum_add(0, addrs) + proto as u64 + (l4_len as u64 & 0xffff) + (l4_len as u64 >> 16)
}

/// Computes a full transport checksum in place: `pkt[l4..]` is the TCP/UDP segment and
/// `csum_at` the checksum field's offset in `pkt`.
fn fill_l4_checksum(pkt: &mut [u8], l4: usize, csum_at: usize, proto: u8) {
    pkt[csum_at] = 0;
    pkt[csum_at + 1] = 0;
    let sum = pseudo_sum(pkt, proto, pkt.len() - l4);
    let mut c = !csum_fold(csum_add(sum, &pkt[l4..]));
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    pkt[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at
/// `start + offset` holds the pseudo-header sum; the checksum covers `pkt[start..]`.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    // Both sums checked: the offsets come from a header the packet's sender wrote.
    let end = start.checked_add(offset).and_then(|a| a.checked_add(2)).ok_or(OffloadError::Truncated)?;
    if end > pkt.len() {
        return Err(OffloadError::Truncated);
    }
    let at = end - 2;
    let c = !csum_fold(csum_add(0, &pkt[start..]));
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Where the IP and TCP headers of a TSO super-packet are.
#[derive(Debug, Clone, Copy)]
struct TcpLayout {
    v4: bool,
    ip_hlen: usize,
    l4: usize,
    hlen: usize,
}

fn tcp_layout(pkt: &[u8], hdr: &VnetHdr) -> Result<TcpLayout, OffloadError> {
    let first = *pkt.first().ok_or(OffloadError::Truncated)?;
    let (v4, ip_hlen, l4) = match first >> 4 {
        4 => {
            let ihl = (first & 0xf) as usize * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err(OffloadError::Malformed("IPv4 header length"));
            }
            if pkt[9] != 6 {
                return Err(OffloadError::Malformed("TSO of a non-TCP IPv4 packet"));
            }
            (true, ihl, ihl)
        }
        6 => {
            if pkt.len() < 40 {
                return Err(OffloadError::Truncated);
            }
            // Extension headers: trust the kernel's csum_start for where TCP begins.
            let l4 = if pkt[6] == 6 { 40 } else { hdr.csum_start as usize };
            if l4 < 40 {
                return Err(OffloadError::Malformed("IPv6 transport offset"));
            }
            (false, 40, l4)
        }
        _ => return Err(OffloadError::Malformed("IP version")),
    };
    if pkt.len() < l4 + 20 {
        return Err(OffloadError::Truncated);
    }
    let thl = (pkt[l4 + 12] >> 4) as usize * 4;
    if thl < 20 || pkt.len() < l4 + thl {
        return Err(OffloadError::Malformed("TCP header length"));
    }
    Ok(TcpLayout { v4, ip_hlen, l4, hlen: l4 + thl })
}

/// Makes one packet out of a TUN read that needs no segmentation: completes its checksum
/// if partial. Returns the packet.
pub fn finish_single<'a>(pkt: &'a mut [u8], hdr: &VnetHdr) -> Result<&'a mut [u8], OffloadError> {
    if hdr.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(pkt, hdr.csum_start as usize, hdr.csum_offset as usize)?;
    }
    Ok(pkt)
}

/// Splits a TCP super-packet (gso_type TCPV4/TCPV6) into segments of at most `gso_size`
/// payload bytes, each with its own IP length/ID/checksum, TCP sequence number, flags (FIN
/// and PSH only on the last, CWR only on the first) and full TCP checksum. Each segment is
/// built in `scratch` and handed to `emit`. Returns the number of segments.
pub fn segment_tcp(
    pkt: &[u8],
    hdr: &VnetHdr,
    scratch: &mut [u8],
    mut emit: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_TCPV4 | GSO_TCPV6 => {}
        other => return Err(OffloadError::UnsupportedGso(other)),
    }
    let lay = tcp_layout(pkt, hdr)?;
    let gso = hdr.gso_size as usize;
    if gso == 0 {
        return Err(OffloadError::Malformed("gso_size 0"));
    }
    let (head, payload) = pkt.split_at(lay.hlen);
    // Every segment's length must fit the IP length field (a 16-bit total for IPv4, a
    // 16-bit payload length for IPv6), or its header would lie about it.
    let longest = lay.hlen + gso.min(payload.len());
    if longest - if lay.v4 { 0 } else { 40 } > u16::MAX as usize {
        return Err(OffloadError::Malformed("segment longer than the IP length field allows"));
    }
    if payload.is_empty() {
        let seg = scratch.get_mut(..pkt.len()).ok_or(OffloadError::TooLarge)?;
        seg.copy_from_slice(pkt);
        fix_segment(seg, &lay, 0, u16::from_be_bytes([pkt[4], pkt[5]]), pkt[lay.l4 + 13]);
        emit(seg);
        return Ok(1);
    }
    if scratch.len() < longest {
        return Err(OffloadError::TooLarge);
    }
    let seq0 = u32::from_be_bytes([head[lay.l4 + 4], head[lay.l4 + 5], head[lay.l4 + 6], head[lay.l4 + 7]]);
    let id0 = u16::from_be_bytes([head[4], head[5]]);
    let flags0 = head[lay.l4 + 13];
    let count = payload.len().div_ceil(gso);
    for (i, chunk) in payload.chunks(gso).enumerate() {
        let len = lay.hlen + chunk.len();
        let seg = &mut scratch[..len];
        seg[..lay.hlen].copy_from_slice(head);
        seg[lay.hlen..].copy_from_slice(chunk);
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        let seq = seq0.wrapping_add((i * gso) as u32);
        seg[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        fix_segment(seg, &lay, i, id0, flags);
        emit(seg);
    }
    Ok(count)
}

/// Sets the IP length (and IPv4 ID and header checksum), the TCP flags and the TCP checksum
/// of one segment.
fn fix_segment(seg: &mut [u8], lay: &TcpLayout, i: usize, id0: u16, flags: u8) {
    let len = seg.len();
    if lay.v4 {
        seg[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        seg[10] = 0;
        seg[11] = 0;
        let c = ipv4_header_checksum(&seg[..lay.ip_hlen]);
        seg[10..12].copy_from_slice(&c.to_be_bytes());
    } else {
        seg[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    }
    seg[lay.l4 + 13] = flags;
    fill_l4_checksum(seg, lay.l4, lay.l4 + 16, 6);
}

/// The (source, destination) addresses of an IP packet, as 16 bytes (IPv4 mapped into the
/// first 4), and the version; `None` when too short.
pub fn ip_version(pkt: &[u8]) -> Option<u8> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(4),
        6 if pkt.len() >= 40 => Some(6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet with `payload`, checksums right, built field by field.
    fn tcp4(payload: &[u8], seq: u32, flags: u8, id: u16) -> Vec<u8> {
        let mut p = vec![0u8; 20 + 20 + payload.len()];
        p[0] = 0x45;
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        let c = ipv4_header_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5201u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&64240u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        // The TCP checksum by the textbook: pseudo header + segment, 16-bit words.
        let mut sum: u32 = 0;
        let mut words = |b: &[u8]| {
            for w in b.chunks(2) {
                sum += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
            }
        };
        words(&p[12..20]);
        words(&[0, 6]);
        words(&((p.len() - 20) as u16).to_be_bytes());
        words(&p[20..]);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let c = !(sum as u16);
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp6(payload: &[u8], seq: u32, flags: u8) -> Vec<u8> {
        let v4 = tcp4(payload, seq, flags, 0);
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[6] = 6;
        p[7] = 64;
        p[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(&v4[20..]);
        // Recompute the TCP checksum for the IPv6 pseudo header.
        let l4 = 40;
        fill_l4_checksum(&mut p, l4, l4 + 16, 6);
        p
    }

    fn verify_tcp(p: &[u8]) -> bool {
        let l4 = if p[0] >> 4 == 4 { 20 } else { 40 };
        csum_fold(csum_add(pseudo_sum(p, 6, p.len() - l4), &p[l4..])) == 0xffff
    }

    #[test]
    fn checksum_matches_textbook() {
        let p = tcp4(b"hello, odd length!!", 1, 0x18, 9);
        assert!(verify_tcp(&p));
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0xffff, "IPv4 header checksum verifies");
        let mut q = p.clone();
        fill_l4_checksum(&mut q, 20, 36, 6);
        assert_eq!(p, q);
    }

    #[test]
    fn tso4_segments_equal_hand_built_packets() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut sup = tcp4(&payload, 1000, 0x19 /* FIN|PSH|ACK */, 100);
        // The kernel hands a partial checksum; segmentation recomputes it anyway.
        sup[36] = 0xde;
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, gso_size: 1400, ..Default::default() };
        let mut scratch = vec![0u8; 2000];
        let mut got = Vec::new();
        let n = segment_tcp(&sup, &hdr, &mut scratch, |s| got.push(s.to_vec())).unwrap();
        assert_eq!(n, 3);
        let want = [
            tcp4(&payload[..1400], 1000, 0x10, 100),
            tcp4(&payload[1400..2800], 2400, 0x10, 101),
            tcp4(&payload[2800..], 3800, 0x19, 102),
        ];
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w);
            assert!(verify_tcp(g));
        }
    }

    #[test]
    fn tso6_segments_and_cwr_only_first() {
        let payload = vec![0xabu8; 2500];
        let sup = tcp6(&payload, u32::MAX - 100, 0x80 | 0x10 | 0x08);
        let hdr = VnetHdr { gso_type: GSO_TCPV6, gso_size: 1000, csum_start: 40, ..Default::default() };
        let mut scratch = vec![0u8; 1500];
        let mut got = Vec::new();
        segment_tcp(&sup, &hdr, &mut scratch, |s| got.push(s.to_vec())).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], tcp6(&payload[..1000], u32::MAX - 100, 0x90));
        assert_eq!(got[1], tcp6(&payload[1000..2000], (u32::MAX - 100).wrapping_add(1000), 0x10));
        assert_eq!(got[2], tcp6(&payload[2000..], (u32::MAX - 100).wrapping_add(2000), 0x18));
    }

    #[test]
    fn partial_checksum_completed() {
        let want = tcp4(b"abcdefg", 5, 0x18, 1);
        let mut p = want.clone();
        // What the kernel leaves for CHECKSUM_PARTIAL: the folded pseudo-header sum.
        let ps = csum_fold(pseudo_sum(&p, 6, p.len() - 20));
        p[36..38].copy_from_slice(&ps.to_be_bytes());
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
        assert_eq!(finish_single(&mut p, &hdr).unwrap(), &want[..]);
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 100, ..Default::default() };
        let mut scratch = [0u8; 256];
        for bad in [&[][..], &[0x45; 10][..], &[0x4f; 30][..], &[0x60; 20][..], &[0x12; 60][..]] {
            assert!(segment_tcp(bad, &hdr, &mut scratch, |_| {}).is_err());
        }
        let zero = VnetHdr { gso_size: 0, ..hdr };
        assert!(segment_tcp(&tcp4(&[1; 300], 0, 0x10, 0), &zero, &mut scratch, |_| {}).is_err());
        let big = VnetHdr { gso_size: 1000, ..hdr };
        assert_eq!(
            segment_tcp(&tcp4(&[1; 3000], 0, 0x10, 0), &big, &mut scratch, |_| {}),
            Err(OffloadError::TooLarge)
        );
        let mut short = [0u8; 10];
        assert!(complete_checksum(&mut short, 8, 6).is_err());
        assert!(complete_checksum(&mut short, usize::MAX, 6).is_err());
        assert!(VnetHdr::parse(&[0; 9]).is_none());
    }

    use proptest::prelude::*;

    /// The scratch size the worker uses (a 64 KB read plus header room).
    const SCRATCH: usize = 65_536 + VNET_HDR_LEN + 64;

    fn any_hdr() -> impl Strategy<Value = VnetHdr> {
        // Mostly the GSO types the TUN uses, sometimes anything.
        let gso_type = prop_oneof![Just(GSO_TCPV4), Just(GSO_TCPV6), Just(GSO_TCPV4 | GSO_ECN), any::<u8>()];
        (any::<u8>(), gso_type, any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()).prop_map(
            |(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)| VnetHdr {
                flags,
                gso_type,
                hdr_len,
                gso_size,
                csum_start,
                csum_offset,
            },
        )
    }

    /// Checks what `segment_tcp` emitted for `pkt`: bounded by the scratch and the header,
    /// IP lengths that tell the truth, and the payload handed on whole and in order.
    fn check_segments(pkt: &[u8], hdr: &VnetHdr, scratch_len: usize) -> Result<(), TestCaseError> {
        let mut scratch = vec![0u8; scratch_len];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let r = segment_tcp(pkt, hdr, &mut scratch, |s| segs.push(s.to_vec()));
        let Ok(n) = r else {
            prop_assert!(segs.is_empty(), "nothing emitted before an error");
            return Ok(());
        };
        prop_assert_eq!(n, segs.len());
        let lay = tcp_layout(pkt, hdr).expect("segmented packets have a layout");
        let payload = &pkt[lay.hlen..];
        let gso = hdr.gso_size as usize;
        prop_assert!(n >= 1 && n <= payload.len().max(1));
        let mut joined = Vec::new();
        for s in &segs {
            prop_assert!(s.len() <= scratch_len && s.len() <= lay.hlen + gso);
            let ip_len = if lay.v4 {
                u16::from_be_bytes([s[2], s[3]]) as usize
            } else {
                u16::from_be_bytes([s[4], s[5]]) as usize + 40
            };
            prop_assert_eq!(ip_len, s.len(), "IP length field matches the segment");
            joined.extend_from_slice(&s[lay.hlen..]);
        }
        prop_assert_eq!(&joined[..], payload);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Arbitrary bytes under an arbitrary virtio header: an error or sane segments.
        #[test]
        fn segment_tcp_survives_arbitrary_bytes(
            pkt in proptest::collection::vec(any::<u8>(), 0..600),
            hdr in any_hdr(),
            scratch_len in prop_oneof![Just(SCRATCH), 0usize..700],
        ) {
            check_segments(&pkt, &hdr, scratch_len)?;
        }

        /// A real super-packet whose header fields then lie (IHL, version, protocol, data
        /// offset, lengths), truncated or not, under a header with any gso_size/csum_start.
        #[test]
        fn segment_tcp_survives_lying_headers(
            v6 in any::<bool>(),
            payload_len in 0usize..4000,
            pokes in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
            gso in prop_oneof![1u16..1500, any::<u16>()],
            mut hdr in any_hdr(),
        ) {
            hdr.gso_size = gso;
            let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
            let mut p = if v6 { tcp6(&payload, 7, 0x18) } else { tcp4(&payload, 7, 0x18, 1) };
            hdr.gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            for (at, v) in pokes {
                if let Some(b) = p.get_mut(at) {
                    *b = v;
                }
            }
            if truncate {
                p.truncate(cut.index(p.len() + 1));
            }
            check_segments(&p, &hdr, SCRATCH)?;
        }

        /// Partial-checksum completion with offsets anywhere: an error, or exactly the two
        /// checksum bytes changed.
        #[test]
        fn finish_single_survives_arbitrary_offsets(
            pkt in proptest::collection::vec(any::<u8>(), 0..300),
            hdr in any_hdr(),
        ) {
            let mut p = pkt.clone();
            let res = finish_single(&mut p, &hdr).map(|q| q.len());
            let at = hdr.csum_start as usize + hdr.csum_offset as usize;
            if hdr.flags & F_NEEDS_CSUM == 0 {
                prop_assert_eq!(res, Ok(pkt.len()));
                prop_assert_eq!(&p, &pkt);
            } else if at + 2 > pkt.len() {
                prop_assert_eq!(res, Err(OffloadError::Truncated));
                prop_assert_eq!(&p, &pkt);
            } else {
                prop_assert_eq!(res, Ok(pkt.len()));
                prop_assert!(p.iter().zip(&pkt).enumerate().all(|(i, (a, b))| a == b || i == at || i == at + 1));
            }
        }

        #[test]
        fn complete_checksum_never_overflows(start in any::<usize>(), offset in any::<usize>(), len in 0usize..64) {
            let mut p = vec![0u8; len];
            let fits = start.checked_add(offset).and_then(|a| a.checked_add(2)).is_some_and(|e| e <= len);
            prop_assert_eq!(complete_checksum(&mut p, start, offset).is_ok(), fits);
        }

        #[test]
        fn vnet_parse_and_ip_version_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(VnetHdr::parse(&b).is_some(), b.len() >= VNET_HDR_LEN);
            if let Some(v) = ip_version(&b) {
                let min = if v == 4 { 20 } else { 40 };
                prop_assert!(b.len() >= min);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Super-packets up to and beyond 64 KB with small and huge gso sizes.
        #[test]
        fn segment_tcp_oversized(
            v6 in any::<bool>(),
            payload_len in 60_000usize..65_520,
            gso in prop_oneof![1u16..64, 60_000u16..=u16::MAX],
        ) {
            let payload = vec![0x5au8; payload_len];
            let p = if v6 { tcp6(&payload, 1, 0x10) } else { tcp4(&payload, 1, 0x10, 1) };
            let gso_type = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            let hdr = VnetHdr { gso_type, gso_size: gso, csum_start: if v6 { 40 } else { 20 }, ..Default::default() };
            check_segments(&p, &hdr, SCRATCH)?;
        }
    }

    /// Regression: a 64 KB segment (IPv4 headers + a gso_size near 65535) used to be
    /// emitted with a total length that wrapped around 16 bits.
    #[test]
    fn segment_longer_than_ip_allows_is_refused() {
        let p = tcp4(&vec![1u8; 65_495], 1, 0x10, 1);
        let p = [&p[..], &[0u8; 40]].concat(); // a read longer than its IP header says
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: u16::MAX, ..Default::default() };
        let mut scratch = vec![0u8; SCRATCH];
        let mut emitted = 0;
        let r = segment_tcp(&p, &hdr, &mut scratch, |_| emitted += 1);
        assert!(matches!(r, Err(OffloadError::Malformed(_))), "{r:?}");
        assert_eq!(emitted, 0);
    }

    #[test]
    fn complete_checksum_at_the_end_of_the_address_space() {
        let mut p = [0u8; 8];
        assert_eq!(complete_checksum(&mut p, usize::MAX - 1, 0), Err(OffloadError::Truncated));
        assert_eq!(complete_checksum(&mut p, 0, usize::MAX), Err(OffloadError::Truncated));
    }

    #[test]
    fn vnet_header_roundtrip() {
        let h =
            VnetHdr { flags: 1, gso_type: 4, hdr_len: 66, gso_size: 1388, csum_start: 40, csum_offset: 16 };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
    }
}
