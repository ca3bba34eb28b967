//! Peers and the lookup table the workers read: destination → peer (longest prefix of
//! `allowed`), receiver index → peer, static public key → peer, and the inner-source check.
//!
//! A peer holds up to three boringtun `Tunn`s: `active` (encrypts), `pending` (handshaking
//! with a new key while `active` keeps carrying traffic) and `old` (decrypts only, until it
//! expires after a key change).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use boringtun::noise::Tunn;
use ipnet::IpNet;

/// One boringtun state machine with what it was made from.
pub(crate) struct Session {
    pub tunn: Box<Tunn>,
    /// The 24-bit index; boringtun's receiver indices are `index << 8 | n`.
    pub index: u32,
    /// Which of our private keys it uses.
    pub key_gen: u64,
    pub peer_public: [u8; 32],
    pub psk: Option<[u8; 32]>,
    /// When we last sent a handshake initiation ourselves (for the fast retry).
    pub last_init: Option<Instant>,
    /// The peer has proven it holds the session: we got its handshake response, or a data
    /// packet (keepalive included) decrypted. A pending session is promoted only then, so a
    /// lost handshake response never makes us send what the peer cannot decrypt.
    pub confirmed: bool,
    pub created: Instant,
}

impl Session {
    /// Whether it has a session usable for sending.
    pub fn ready(&self) -> bool {
        self.tunn.time_since_last_handshake().is_some()
    }
}

/// The mutable part of a peer, behind its lock.
pub(crate) struct PeerState {
    pub public_key: [u8; 32],
    pub psk: Option<[u8; 32]>,
    pub keepalive: Option<u16>,
    pub allowed: Vec<IpNet>,
    /// The endpoint from the spec; a changed one overrides a roamed endpoint.
    pub spec_endpoint: SocketAddr,
    /// Where we send: the spec's, or where the last authenticated packet came from.
    pub endpoint: SocketAddr,
    pub active: Option<Session>,
    pub pending: Option<Session>,
    pub old: Option<(Session, Instant)>,
    /// Last value reported through `changes`.
    pub established: bool,
    pub last_handshake: Option<Instant>,
}

impl PeerState {
    /// The session owning receiver index `idx24`, if any.
    pub fn session_mut(&mut self, idx24: u32) -> Option<&mut Session> {
        if let Some(s) = self.active.as_mut().filter(|s| s.index == idx24) {
            return Some(s);
        }
        if let Some(s) = self.pending.as_mut().filter(|s| s.index == idx24) {
            return Some(s);
        }
        self.old.as_mut().map(|(s, _)| s).filter(|s| s.index == idx24)
    }

    /// Whether `s` was made for the current spec and our current key.
    pub fn matches(&self, s: &Session, key_gen: u64) -> bool {
        s.key_gen == key_gen && s.peer_public == self.public_key && s.psk == self.psk
    }

    /// Promotes a ready `pending` to `active` (the old active is kept for decrypting until
    /// `old_until`) and recomputes `established`. Returns whether `established` flipped.
    pub fn refresh(&mut self, key_gen: u64, old_until: Instant) -> bool {
        if self.pending.as_ref().is_some_and(|s| s.confirmed && s.ready()) {
            let now_active = self.pending.take();
            if let Some(prev) = std::mem::replace(&mut self.active, now_active) {
                self.old = Some((prev, old_until));
            }
        }
        let est = self.active.as_ref().is_some_and(|s| s.ready() && self.matches(s, key_gen));
        if est && !self.established {
            self.last_handshake = Some(Instant::now());
        }
        std::mem::replace(&mut self.established, est) != est
    }

    /// The indices of all its sessions.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.active.iter().chain(self.pending.iter()).chain(self.old.iter().map(|(s, _)| s)).map(|s| s.index)
    }
}

/// A remote node.
pub(crate) struct Peer {
    pub id: String,
    state: Mutex<PeerState>,
    pub rx_bytes: AtomicU64,
    pub tx_bytes: AtomicU64,
}

impl Peer {
    pub fn new(id: String, state: PeerState) -> Peer {
        Peer { id, state: Mutex::new(state), rx_bytes: AtomicU64::new(0), tx_bytes: AtomicU64::new(0) }
    }

    /// Locks the state; a panic elsewhere while holding it does not poison the datapath.
    pub fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add_rx(&self, n: u64) {
        if n > 0 {
            self.rx_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_tx(&self, n: u64) {
        if n > 0 {
            self.tx_bytes.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// A peer as the workers see it: the peer and its `allowed` at the time the table was built.
pub(crate) struct Entry {
    pub peer: Arc<Peer>,
    pub allowed: Vec<IpNet>,
}

impl Entry {
    /// Whether `src` may appear as the inner source of packets from this peer.
    pub fn allows_source(&self, src: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(&src))
    }
}

/// Immutable snapshot; rebuilt on every change and swapped in whole.
#[derive(Default)]
pub(crate) struct PeerTable {
    pub entries: Vec<Entry>,
    by_key: HashMap<[u8; 32], usize>,
    by_index: HashMap<u32, usize>,
    /// Per prefix length (longest first): masked network → entry.
    v4: Vec<(u8, HashMap<u32, usize>)>,
    v6: Vec<(u8, HashMap<u128, usize>)>,
}

fn mask4(a: u32, len: u8) -> u32 {
    if len == 0 { 0 } else { a & (u32::MAX << (32 - len as u32)) }
}

fn mask6(a: u128, len: u8) -> u128 {
    if len == 0 { 0 } else { a & (u128::MAX << (128 - len as u32)) }
}

impl PeerTable {
    /// Builds the table. `entries` come with the session indices of each peer. A prefix
    /// listed by two peers goes to the later one, as in WireGuard.
    pub fn build(items: Vec<(Entry, [u8; 32], Vec<u32>)>) -> PeerTable {
        let mut t = PeerTable::default();
        let mut v4: HashMap<u8, HashMap<u32, usize>> = HashMap::new();
        let mut v6: HashMap<u8, HashMap<u128, usize>> = HashMap::new();
        for (i, (entry, key, indices)) in items.into_iter().enumerate() {
            t.by_key.insert(key, i);
            for idx in indices {
                t.by_index.insert(idx, i);
            }
            for net in &entry.allowed {
                match net {
                    IpNet::V4(n) => {
                        let len = n.prefix_len();
                        v4.entry(len).or_default().insert(mask4(n.addr().to_bits(), len), i);
                    }
                    IpNet::V6(n) => {
                        let len = n.prefix_len();
                        v6.entry(len).or_default().insert(mask6(n.addr().to_bits(), len), i);
                    }
                }
            }
            t.entries.push(entry);
        }
        t.v4 = v4.into_iter().collect();
        t.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        t.v6 = v6.into_iter().collect();
        t.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        t
    }

    /// The peer whose `allowed` holds `dst` (longest prefix).
    pub fn route(&self, dst: IpAddr) -> Option<&Entry> {
        let i = match dst {
            IpAddr::V4(a) => {
                let a = a.to_bits();
                self.v4.iter().find_map(|(len, m)| m.get(&mask4(a, *len)))
            }
            IpAddr::V6(a) => {
                let a = a.to_bits();
                self.v6.iter().find_map(|(len, m)| m.get(&mask6(a, *len)))
            }
        }?;
        self.entries.get(*i)
    }

    /// The peer owning a receiver index as found in data, response and cookie messages.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Entry> {
        self.entries.get(*self.by_index.get(&(receiver_idx >> 8))?)
    }

    /// The peer with static public key `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Entry> {
        self.entries.get(*self.by_key.get(key)?)
    }
}

/// The destination of an IP packet; `None` when it is not a complete IPv4/IPv6 header.
#[inline]
pub(crate) fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => {
            let b: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        6 => {
            let b: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, allowed: &[&str]) -> (Entry, Vec<IpNet>) {
        let allowed: Vec<IpNet> = allowed.iter().map(|s| s.parse().unwrap()).collect();
        let st = PeerState {
            public_key: [0; 32],
            psk: None,
            keepalive: None,
            allowed: allowed.clone(),
            spec_endpoint: "192.0.2.1:51820".parse().unwrap(),
            endpoint: "192.0.2.1:51820".parse().unwrap(),
            active: None,
            pending: None,
            old: None,
            established: false,
            last_handshake: None,
        };
        (Entry { peer: Arc::new(Peer::new(id.into(), st)), allowed: allowed.clone() }, allowed)
    }

    fn table() -> PeerTable {
        let (a, _) = peer("a", &["10.244.1.0/24", "fd00:1::/64"]);
        let (b, _) = peer("b", &["10.244.0.0/16"]);
        let (c, _) = peer("c", &["10.244.1.128/25", "0.0.0.0/0"]);
        PeerTable::build(vec![(a, [1; 32], vec![5, 6]), (b, [2; 32], vec![7]), (c, [3; 32], vec![0xffffff])])
    }

    fn id(e: Option<&Entry>) -> Option<&str> {
        e.map(|e| e.peer.id.as_str())
    }

    #[test]
    fn longest_prefix_routing() {
        let t = table();
        assert_eq!(id(t.route("10.244.1.7".parse().unwrap())), Some("a"));
        assert_eq!(id(t.route("10.244.1.200".parse().unwrap())), Some("c"));
        assert_eq!(id(t.route("10.244.9.1".parse().unwrap())), Some("b"));
        assert_eq!(id(t.route("8.8.8.8".parse().unwrap())), Some("c"));
        assert_eq!(id(t.route("fd00:1::9".parse().unwrap())), Some("a"));
        assert_eq!(id(t.route("fd00:2::9".parse().unwrap())), None);
        assert_eq!(id(PeerTable::default().route("10.0.0.1".parse().unwrap())), None);
    }

    #[test]
    fn index_and_key_lookup() {
        let t = table();
        // boringtun's receiver index is index << 8 | session number.
        assert_eq!(id(t.by_receiver(5 << 8 | 3)), Some("a"));
        assert_eq!(id(t.by_receiver(6 << 8)), Some("a"));
        assert_eq!(id(t.by_receiver(7 << 8 | 255)), Some("b"));
        assert_eq!(id(t.by_receiver(0xffffff << 8 | 1)), Some("c"));
        assert_eq!(id(t.by_receiver(8 << 8)), None);
        assert_eq!(id(t.by_key(&[2; 32])), Some("b"));
        assert_eq!(id(t.by_key(&[9; 32])), None);
    }

    #[test]
    fn allowed_source() {
        let t = table();
        let a = t.by_key(&[1; 32]).unwrap();
        assert!(a.allows_source("10.244.1.9".parse().unwrap()));
        assert!(a.allows_source("fd00:1::1".parse().unwrap()));
        assert!(!a.allows_source("10.244.2.9".parse().unwrap()));
        assert!(!a.allows_source("::ffff:10.244.1.9".parse().unwrap()));
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Any bytes from the TUN: the same destination boringtun reads, and a route lookup
        /// (longest prefix over every length) that never panics.
        #[test]
        fn dst_addr_of_any_bytes(
            first in prop_oneof![Just(0x45u8), Just(0x60), any::<u8>()],
            rest in proptest::collection::vec(any::<u8>(), 0..60),
        ) {
            let p = [&[first][..], &rest].concat();
            let dst = dst_addr(&p);
            prop_assert_eq!(dst, Tunn::dst_address(&p));
            if let Some(d) = dst {
                let t = table();
                let e = t.route(d);
                prop_assert!(e.is_none_or(|e| e.allowed.iter().any(|n| n.contains(&d))));
            }
        }

        #[test]
        fn receiver_lookup_of_any_index(idx in any::<u32>()) {
            let t = table();
            let known = [5u32, 6, 7, 0xffffff].contains(&(idx >> 8));
            prop_assert_eq!(t.by_receiver(idx).is_some(), known);
        }
    }

    #[test]
    fn dst_of_short_or_odd_packets() {
        assert_eq!(dst_addr(&[]), None);
        assert_eq!(dst_addr(&[0x45; 19]), None);
        assert_eq!(dst_addr(&[0x60; 39]), None);
        assert_eq!(dst_addr(&[0x12; 60]), None);
        let mut p = [0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(dst_addr(&p), Some("10.1.2.3".parse().unwrap()));
    }
}
