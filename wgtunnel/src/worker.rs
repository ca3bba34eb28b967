//! A worker: one TUN queue and one UDP socket (per address family), polled together.
//! TUN → look up the peer by destination → segment (TSO) → encrypt into the send arena →
//! `sendmmsg`/UDP GSO. UDP (`recvmmsg`, GRO) → look up the peer by receiver index or, for a
//! handshake initiation, by the initiator's static key → decrypt → check the inner source
//! → TUN. All buffers are allocated once, here.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use netkernel::tun::TunQueue;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::coalesce::Coalescer;
use super::offload::{self, F_DATA_VALID, GSO_NONE, VNET_HDR_LEN, VnetHdr};
use super::peers::{PeerTable, Session, dst_addr};
use super::udp::{RecvBatch, SendBatch, UdpSocket};
use super::{KEY_OVERLAP, Shared};

/// The largest TUN read (a 64 KB super-packet plus its vnet header).
const TUN_BUF: usize = 65_536 + VNET_HDR_LEN + 64;
/// Messages per `recvmmsg`.
const RX_BATCH: usize = 32;
/// One received message (a GRO batch of datagrams can be 64 KB).
const RX_SLOT: usize = 65_536;
/// Send arena: many TUN reads' worth of encrypted datagrams per `sendmmsg`.
const TX_ARENA: usize = 1 << 20;
const TX_RUNS: usize = 256;
/// Room a TUN read may need in the arena (a 64 KB super-packet in small segments, with the
/// per-datagram overhead) and in runs.
const TX_NEED: usize = 2 * 65_536;
/// TUN reads per wake-up before looking at the socket again.
const TUN_READS: usize = 64;
/// What `encapsulate`/`decapsulate` need beyond the packet (boringtun panics without it).
const WG_OVERHEAD: usize = 32;
const WG_MIN_DST: usize = 148;

pub(crate) struct WorkerSetup {
    pub shared: Arc<Shared>,
    pub tun: TunQueue,
    /// Reads and writes carry a virtio-net header.
    pub vnet: bool,
    /// The TUN hands us super-packets (TSO on).
    pub tso: bool,
    /// Coalesce TCP segments for the TUN write.
    pub gro: bool,
    pub udp4: UdpSocket,
    pub udp6: Option<UdpSocket>,
    pub stop: OwnedFd,
}

/// Counters of one wake-up, added to the shared ones at its end.
#[derive(Default)]
struct Local {
    rx: u64,
    tx: u64,
    no_peer: u64,
    bad_source: u64,
    invalid: u64,
    io: u64,
    handshakes: u64,
}

struct Worker {
    shared: Arc<Shared>,
    tun: TunQueue,
    vnet: bool,
    tso: bool,
    udp4: UdpSocket,
    udp6: Option<UdpSocket>,
    stop: OwnedFd,
    table: Arc<PeerTable>,
    table_gen: u64,
    rbuf: Vec<u8>,
    scratch: Vec<u8>,
    dbuf: Vec<u8>,
    tx: SendBatch,
    rx: RecvBatch,
    gro: Option<Coalescer>,
    c: Local,
    tun_dead: bool,
}

pub(crate) fn run(s: WorkerSetup) {
    let gro = s.gro.then(Coalescer::new);
    let mut w = Worker {
        table: s.shared.table(),
        table_gen: s.shared.table_gen.load(Ordering::Acquire),
        shared: s.shared,
        tun: s.tun,
        vnet: s.vnet,
        tso: s.tso,
        udp4: s.udp4,
        udp6: s.udp6,
        stop: s.stop,
        rbuf: vec![0; TUN_BUF],
        scratch: vec![0; TUN_BUF],
        dbuf: vec![0; RX_SLOT + VNET_HDR_LEN + WG_MIN_DST],
        tx: SendBatch::new(TX_ARENA, TX_RUNS),
        rx: RecvBatch::new(RX_BATCH, RX_SLOT),
        gro,
        c: Local::default(),
        tun_dead: false,
    };
    w.run();
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

impl Worker {
    fn run(&mut self) {
        loop {
            let [tun, udp4, udp6, stop] = match self.wait() {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "tunnel worker: poll failed; stopping");
                    return;
                }
            };
            if stop || self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            self.refresh_table();
            if tun {
                self.on_tun_readable();
            }
            if udp4 {
                self.on_udp_readable(false);
            }
            if udp6 {
                self.on_udp_readable(true);
            }
            self.flush_counters();
        }
    }

    /// Waits until something is readable (or in error): the TUN, the IPv4 socket, the IPv6
    /// socket, the stop eventfd. A TUN that errors (deleted device) is no longer polled,
    /// instead of spinning on it; in its place, as in that of a missing IPv6 socket, the
    /// stop eventfd is polled twice and the slot reported as not ready.
    fn wait(&self) -> io::Result<[bool; 4]> {
        let stop = self.stop.as_fd();
        let tun = if self.tun_dead { stop } else { self.tun.as_fd() };
        let udp6 = self.udp6.as_ref().map_or(stop, |s| s.as_fd());
        let mut fds = [tun, self.udp4.as_fd(), udp6, stop].map(|fd| PollFd::new(fd, PollFlags::POLLIN));
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
        Ok([ready(0) && !self.tun_dead, ready(1), ready(2) && self.udp6.is_some(), ready(3)])
    }

    fn refresh_table(&mut self) {
        let generation = self.shared.table_gen.load(Ordering::Acquire);
        if generation != self.table_gen {
            self.table = self.shared.table();
            self.table_gen = generation;
        }
    }

    fn flush_counters(&mut self) {
        let c = std::mem::take(&mut self.c);
        let s = &self.shared.counters;
        let add = |a: &AtomicU64, v: u64| {
            if v > 0 {
                a.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&s.rx_packets, c.rx);
        add(&s.tx_packets, c.tx);
        add(&s.dropped_no_peer, c.no_peer);
        add(&s.dropped_bad_source, c.bad_source);
        add(&s.dropped_invalid, c.invalid);
        add(&s.dropped_io, c.io);
        add(&s.handshakes_completed, c.handshakes);
    }

    fn flush_tx(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        self.tx.flush(&mut self.udp4, self.udp6.as_mut());
        self.c.io += std::mem::take(&mut self.tx.failed);
        self.tx.sent = 0;
    }

    // ---- TUN → network ----

    fn on_tun_readable(&mut self) {
        for _ in 0..TUN_READS {
            if !self.tx.has_room(TX_NEED) {
                self.flush_tx();
            }
            let n = match self.tun.read(&mut self.rbuf) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    tracing::error!(error = %e, "tunnel worker: TUN read failed; no longer reading it");
                    self.tun_dead = true;
                    break;
                }
            };
            self.encrypt(n);
        }
        self.flush_tx();
    }

    /// Encrypts what one TUN read returned (`rbuf[..n]`) into the send arena.
    fn encrypt(&mut self, n: usize) {
        let (hdr, pkt) = if self.vnet {
            match VnetHdr::parse(&self.rbuf[..n]) {
                Some(h) => (h, &mut self.rbuf[VNET_HDR_LEN..n]),
                None => {
                    self.c.invalid += 1;
                    return;
                }
            }
        } else {
            (VnetHdr::default(), &mut self.rbuf[..n])
        };
        let Some(dst) = dst_addr(pkt) else {
            self.c.invalid += 1;
            return;
        };
        let Some(entry) = self.table.route(dst) else {
            self.c.no_peer += 1;
            return;
        };
        let mut st = entry.peer.lock();
        let ep = st.endpoint;
        let gso = if ep.is_ipv4() { self.udp4.gso } else { self.udp6.as_ref().is_some_and(|s| s.gso) };
        let Some(sess) = st.active.as_mut() else {
            self.c.no_peer += 1;
            return;
        };
        let tx = &mut self.tx;
        let c = &mut self.c;
        let mut bytes = 0u64;
        if hdr.gso_type != GSO_NONE && self.tso {
            let r = offload::segment_tcp(pkt, &hdr, &mut self.scratch, |seg| {
                encap(&mut sess.tunn, seg, tx, ep, gso, c, &mut bytes)
            });
            if let Err(e) = r {
                tracing::trace!(error = %e, "tunnel worker: super-packet dropped");
                c.invalid += 1;
            }
        } else {
            match offload::finish_single(pkt, &hdr) {
                Ok(p) => encap(&mut sess.tunn, p, tx, ep, gso, c, &mut bytes),
                Err(_) => c.invalid += 1,
            }
        }
        drop(st);
        entry.peer.add_tx(bytes);
    }

    // ---- network → TUN ----

    fn on_udp_readable(&mut self, v6: bool) {
        // The batch is moved out so its buffers can be read while `self` is mutated.
        let mut rx = std::mem::replace(&mut self.rx, RecvBatch::new(0, 0));
        let sock = if v6 { self.udp6.as_ref() } else { Some(&self.udp4) };
        let got = match sock.map(|s| rx.recv(s)) {
            Some(Ok(n)) => n,
            Some(Err(e)) if would_block(&e) => 0,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "tunnel worker: recvmmsg failed");
                0
            }
            None => 0,
        };
        for i in 0..got {
            match rx.get(i) {
                Some(m) => {
                    // An empty datagram yields no chunk below but is still one that failed.
                    if m.data.is_empty() {
                        self.c.invalid += 1;
                    }
                    for d in m.datagrams() {
                        self.datagram(m.from, d);
                    }
                }
                None => self.c.invalid += 1,
            }
        }
        self.rx = rx;
        self.flush_tun();
        self.flush_tx();
    }

    fn datagram(&mut self, from: SocketAddr, d: &[u8]) {
        if !self.tx.has_room(2048) {
            self.flush_tx();
        }
        match classify(d) {
            Kind::Data(receiver) => self.data(from, d, receiver),
            Kind::Reply(receiver) => self.handshake_reply(from, d, receiver),
            Kind::Init => self.initiation(from, d),
            Kind::Invalid => self.c.invalid += 1,
        }
    }

    /// A data message: decrypt, check the source, write to the TUN.
    fn data(&mut self, from: SocketAddr, d: &[u8], receiver: u32) {
        let Some(entry) = self.table.by_receiver(receiver) else {
            self.c.invalid += 1;
            return;
        };
        let mut st = entry.peer.lock();
        let on_active = st.active.as_ref().is_some_and(|s| s.index == receiver >> 8);
        let Some(s) = st.session_mut(receiver >> 8) else {
            self.c.invalid += 1;
            return;
        };
        let mut reply = 0;
        let (len, src) = match s.tunn.decapsulate(Some(from.ip()), d, &mut self.dbuf[VNET_HDR_LEN..]) {
            TunnResult::WriteToTunnelV4(p, a) => (p.len(), IpAddr::V4(a)),
            TunnResult::WriteToTunnelV6(p, a) => (p.len(), IpAddr::V6(a)),
            TunnResult::Done => (0, from.ip()),
            TunnResult::WriteToNetwork(p) => {
                reply = p.len();
                (0, from.ip())
            }
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "tunnel worker: data message dropped");
                self.c.invalid += 1;
                return;
            }
        };
        s.confirmed = true;
        if reply > 0 && self.tx.has_room(reply + WG_MIN_DST) {
            // Not expected for data, but never lose what boringtun wants sent.
            let r = self.dbuf[VNET_HDR_LEN..VNET_HDR_LEN + reply].to_vec();
            self.tx.space()[..reply].copy_from_slice(&r);
            self.tx.commit(from, reply, false);
        }
        // Authenticated: this is where the peer is now (WireGuard roaming).
        if st.endpoint != from {
            st.endpoint = from;
        }
        // The common case (established, active session) skips this: a pending session's
        // first data makes it the active one.
        if !on_active || !st.established {
            self.after_handshake(&mut st);
        }
        drop(st);
        if len == 0 {
            return;
        }
        if !entry.allows_source(src) {
            self.c.bad_source += 1;
            return;
        }
        entry.peer.add_rx(len as u64);
        self.c.rx += 1;
        self.write_tun(len);
    }

    /// Promotes/re-evaluates after a handshake step, and tells the control plane on a flip.
    fn after_handshake(&self, st: &mut super::peers::PeerState) {
        let generation = self.shared.key_gen.load(Ordering::Acquire);
        if st.refresh(generation, Instant::now() + KEY_OVERLAP) {
            self.shared.bump_changes();
        }
    }

    /// A handshake response or cookie reply, for the session owning `receiver`.
    fn handshake_reply(&mut self, from: SocketAddr, d: &[u8], receiver: u32) {
        let Some(entry) = self.table.by_receiver(receiver) else {
            self.c.invalid += 1;
            return;
        };
        let mut st = entry.peer.lock();
        let Some(s) = st.session_mut(receiver >> 8) else {
            self.c.invalid += 1;
            return;
        };
        let is_response = d[0] == 2;
        match s.tunn.decapsulate(Some(from.ip()), d, self.tx.space()) {
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                self.tx.commit(from, n, false);
            }
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "tunnel worker: handshake reply dropped");
                self.c.invalid += 1;
                return;
            }
            _ => {}
        }
        if is_response {
            s.confirmed = true;
            self.c.handshakes += 1;
            st.endpoint = from;
            // Packets boringtun queued while it had no session go out now.
            if let Some(s) = st.session_mut(receiver >> 8) {
                drain_queue(s, &mut self.tx, from, &mut self.c);
            }
        }
        self.after_handshake(&mut st);
    }

    /// A handshake initiation: find the initiator by its static key (trying our current,
    /// then our previous key) and let the matching session answer.
    fn initiation(&mut self, from: SocketAddr, d: &[u8]) {
        let Ok(Packet::HandshakeInit(init)) = Tunn::parse_incoming_packet(d) else {
            self.c.invalid += 1;
            return;
        };
        let keys = self.shared.keys();
        let mut cookie = [0u8; 64];
        let candidates = [Some(&keys.current), keys.previous.as_ref().map(|(k, _)| k)];
        for k in candidates.into_iter().flatten() {
            // mac1 (cheap, and names the key it was sent to) and the load check before the
            // Diffie-Hellman.
            match k.limiter.verify_packet(Some(from.ip()), d, &mut cookie) {
                Ok(_) => {}
                Err(TunnResult::WriteToNetwork(c)) => {
                    let n = c.len();
                    self.tx.space()[..n].copy_from_slice(c);
                    self.tx.commit(from, n, false);
                    return;
                }
                Err(_) => continue,
            }
            let Ok(half) = parse_handshake_anon(&k.secret, &k.public, &init) else {
                continue;
            };
            let Some(entry) = self.table.by_key(&half.peer_static_public) else {
                tracing::trace!("tunnel worker: handshake from an unknown key dropped");
                self.c.invalid += 1;
                return;
            };
            let mut st = entry.peer.lock();
            let fits = |s: &Session| s.key_gen == k.generation && s.peer_public == half.peer_static_public;
            let st_ref = &mut *st;
            let s = match (st_ref.pending.as_mut(), st_ref.active.as_mut(), st_ref.old.as_mut()) {
                (Some(s), _, _) if fits(s) => s,
                (_, Some(s), _) if fits(s) => s,
                (_, _, Some((s, _))) if fits(s) => s,
                _ => {
                    self.c.invalid += 1;
                    return;
                }
            };
            match s.tunn.decapsulate(Some(from.ip()), d, self.tx.space()) {
                TunnResult::WriteToNetwork(p) => {
                    let n = p.len();
                    self.tx.commit(from, n, false);
                    self.c.handshakes += 1;
                }
                TunnResult::Err(e) => {
                    tracing::trace!(error = ?e, "tunnel worker: handshake initiation dropped");
                    self.c.invalid += 1;
                    return;
                }
                _ => {}
            }
            drain_queue(s, &mut self.tx, from, &mut self.c);
            st.endpoint = from;
            self.after_handshake(&mut st);
            return;
        }
        self.c.invalid += 1;
    }

    /// Writes the decrypted packet at `dbuf[VNET_HDR_LEN..][..len]` to the TUN (or hands it
    /// to the coalescer).
    fn write_tun(&mut self, len: usize) {
        if let Some(g) = self.gro.as_mut()
            && g.push(&self.dbuf[VNET_HDR_LEN..VNET_HDR_LEN + len], &self.tun)
        {
            return;
        }
        let buf = if self.vnet {
            // Authenticated by the AEAD: no need for the kernel to verify checksums again
            // (what the kernel's WireGuard does too).
            let h = VnetHdr { flags: F_DATA_VALID, ..Default::default() };
            h.write(&mut self.dbuf[..VNET_HDR_LEN]);
            &self.dbuf[..VNET_HDR_LEN + len]
        } else {
            &self.dbuf[VNET_HDR_LEN..VNET_HDR_LEN + len]
        };
        if let Err(e) = self.tun.write(buf) {
            tracing::trace!(error = %e, "tunnel worker: TUN write failed");
            self.c.io += 1;
        }
    }

    fn flush_tun(&mut self) {
        if let Some(g) = self.gro.as_mut() {
            self.c.io += g.flush(&self.tun);
        }
    }
}

/// What a datagram is by its type and length (boringtun's rules), with the receiver index
/// of data messages, handshake responses and cookie replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data(u32),
    Reply(u32),
    Init,
    Invalid,
}

fn classify(d: &[u8]) -> Kind {
    let le = |i: usize| d.get(i..i + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let (Some(t), Some(at4), at8) = (le(0), le(4), le(8)) else {
        return Kind::Invalid;
    };
    match (t, d.len(), at8) {
        (4, 32.., _) => Kind::Data(at4),
        (2, 92, Some(r)) => Kind::Reply(r),
        (3, 64, _) => Kind::Reply(at4),
        (1, 148, _) => Kind::Init,
        _ => Kind::Invalid,
    }
}

/// Encrypts one packet into the arena as a datagram to `ep`.
fn encap(
    tunn: &mut Tunn,
    pkt: &[u8],
    tx: &mut SendBatch,
    ep: SocketAddr,
    gso: bool,
    c: &mut Local,
    bytes: &mut u64,
) {
    let out = tx.space();
    if out.len() < (pkt.len() + WG_OVERHEAD).max(WG_MIN_DST) {
        // Cannot happen with TX_NEED headroom; boringtun would panic, so drop instead.
        c.io += 1;
        return;
    }
    match tunn.encapsulate(pkt, out) {
        TunnResult::WriteToNetwork(p) => {
            let n = p.len();
            // A handshake initiation (no session yet) is never glued to data datagrams.
            let data = p.first() == Some(&4);
            tx.commit(ep, n, gso && data);
            if data {
                c.tx += 1;
                *bytes += pkt.len() as u64;
            }
        }
        // Queued inside boringtun until the handshake completes.
        TunnResult::Done => {}
        _ => c.io += 1,
    }
}

/// Sends what boringtun queued while it had no session (call after a handshake step).
fn drain_queue(s: &mut Session, tx: &mut SendBatch, ep: SocketAddr, c: &mut Local) {
    for _ in 0..256 {
        // A queued packet is at most one TUN MTU (≤ 64 KB); boringtun panics without room.
        if !tx.has_room(TX_NEED) {
            // The rest stays queued; the next handshake step or packet sends it.
            return;
        }
        match s.tunn.decapsulate(None, &[], tx.space()) {
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                tx.commit(ep, n, false);
                c.tx += 1;
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use boringtun::x25519::{PublicKey, StaticSecret};
    use proptest::prelude::*;

    /// The part of `dbuf` `data()` decrypts into.
    const DECAP_DST: usize = RX_SLOT + WG_MIN_DST;

    // boringtun panics unless dst ≥ ciphertext (datagram − 16) for data and ≥ 148 bytes;
    // the largest datagram a worker hands on is one full receive slot.
    const _: () = assert!(DECAP_DST >= RX_SLOT + WG_OVERHEAD && DECAP_DST >= WG_MIN_DST);
    const _: () = assert!(TX_NEED >= TUN_BUF - VNET_HDR_LEN + WG_OVERHEAD);

    #[test]
    fn classify_follows_boringtun_rules() {
        let mut d = vec![0u8; 148];
        d[0] = 1;
        assert_eq!(classify(&d), Kind::Init);
        d.truncate(147);
        assert_eq!(classify(&d), Kind::Invalid);
        assert_eq!(classify(&[4, 0, 0, 0]), Kind::Invalid);
        assert_eq!(classify(&[]), Kind::Invalid);
        let mut d = vec![0u8; 32];
        d[0] = 4;
        d[4..8].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        assert_eq!(classify(&d), Kind::Data(0x0102_0304));
        // Reserved bytes must be zero.
        d[1] = 1;
        assert_eq!(classify(&d), Kind::Invalid);
    }

    /// Two boringtun peers with a completed handshake: (initiator, responder).
    fn session_pair() -> (Tunn, Tunn) {
        let (ka, kb) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
        let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
        let mut a = Tunn::new(ka, pb, None, None, 1, None);
        let mut b = Tunn::new(kb, pa, None, None, 2, None);
        let mut buf = vec![0u8; 2048];
        let mut out = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = a.format_handshake_initiation(&mut buf, false) else {
            panic!("initiation");
        };
        let TunnResult::WriteToNetwork(resp) = b.decapsulate(None, init, &mut out) else {
            panic!("response");
        };
        let resp = resp.to_vec();
        let TunnResult::WriteToNetwork(keepalive) = a.decapsulate(None, &resp, &mut buf) else {
            panic!("keepalive");
        };
        let keepalive = keepalive.to_vec();
        assert!(matches!(b.decapsulate(None, &keepalive, &mut out), TunnResult::Done));
        (a, b)
    }

    /// An IPv4 packet of `len` bytes (length field telling the truth).
    fn ip4(len: usize) -> Vec<u8> {
        let mut p = vec![0x33u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p
    }

    /// The biggest datagram a worker hands to `data()`: one full receive slot.
    #[test]
    fn full_slot_data_message_fits_the_decrypt_buffer() {
        let (mut a, mut b) = session_pair();
        let mut enc = vec![0u8; RX_SLOT + 64];
        let TunnResult::WriteToNetwork(d) = a.encapsulate(&ip4(RX_SLOT - WG_OVERHEAD), &mut enc) else {
            panic!("encapsulate");
        };
        assert_eq!(d.len(), RX_SLOT);
        assert!(matches!(classify(d), Kind::Data(r) if r >> 8 == 2), "for the responder's index");
        let mut dst = vec![0u8; DECAP_DST];
        let r = b.decapsulate(None, d, &mut dst);
        assert!(matches!(r, TunnResult::WriteToTunnelV4(p, _) if p.len() == RX_SLOT - WG_OVERHEAD));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// The dispatch never panics and agrees with boringtun's own parser.
        #[test]
        fn classify_agrees_with_boringtun(
            t in prop_oneof![1u8..=4, any::<u8>()],
            zeros in any::<bool>(),
            len in prop_oneof![Just(148usize), Just(92), Just(64), Just(32), 0usize..200],
            fill in any::<u8>(),
        ) {
            let mut d = vec![fill; len];
            if let Some(b) = d.first_mut() {
                *b = t;
            }
            if zeros && len >= 4 {
                d[1..4].fill(0);
            }
            let want = match Tunn::parse_incoming_packet(&d) {
                Ok(Packet::PacketData(p)) => Kind::Data(p.receiver_idx),
                Ok(Packet::HandshakeResponse(p)) => Kind::Reply(p.receiver_idx),
                Ok(Packet::PacketCookieReply(p)) => Kind::Reply(p.receiver_idx),
                Ok(Packet::HandshakeInit(_)) => Kind::Init,
                Err(_) => Kind::Invalid,
            };
            prop_assert_eq!(classify(&d), want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

        /// Data messages for the real session, then garbled (bytes changed, truncated,
        /// extended, counter moved, replayed), decrypted into a buffer of the worker's size:
        /// never a panic; only the untouched first copy decrypts.
        #[test]
        fn garbled_data_messages_are_refused(
            len in prop_oneof![0usize..200, 1200usize..1500],
            pokes in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
            cut in prop::option::of(any::<prop::sample::Index>()),
            extra in 0usize..64,
            counter in prop::option::of(any::<u64>()),
        ) {
            // One handshake for all cases (X25519 is slow unoptimised); each case sends new
            // counters, and nothing garbled may advance the responder's replay window.
            static PAIR: std::sync::LazyLock<std::sync::Mutex<(Tunn, Tunn)>> =
                std::sync::LazyLock::new(|| std::sync::Mutex::new(session_pair()));
            let mut pair = PAIR.lock().unwrap_or_else(|p| p.into_inner());
            let (a, b) = &mut *pair;
            let mut enc = vec![0u8; 2048];
            let TunnResult::WriteToNetwork(d) = a.encapsulate(&ip4(len.max(20)), &mut enc) else {
                panic!("encapsulate");
            };
            let good = d.to_vec();
            let mut bad = good.clone();
            // Garble past the header: type and index stay valid-looking.
            for (at, x) in &pokes {
                let i = 16 + at.index(bad.len() - 16);
                bad[i] ^= x;
            }
            if let Some(c) = counter {
                bad[8..16].copy_from_slice(&c.to_le_bytes());
            }
            if let Some(c) = cut {
                bad.truncate(c.index(bad.len() + 1));
            }
            bad.resize(bad.len() + extra, 0xee);
            let garbled = bad != good;
            let mut dst = vec![0u8; DECAP_DST];
            if garbled && classify(&bad) != Kind::Invalid {
                let r = b.decapsulate(None, &bad, &mut dst);
                prop_assert!(matches!(r, TunnResult::Err(_)), "garbled message refused");
            }
            let r = b.decapsulate(None, &good, &mut dst);
            prop_assert!(matches!(r, TunnResult::WriteToTunnelV4(..)), "the real one still decrypts");
            let r = b.decapsulate(None, &good, &mut dst);
            prop_assert!(matches!(r, TunnResult::Err(_)), "a replay is refused");
        }
    }
}
