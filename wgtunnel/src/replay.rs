//! The replay guard for handshake initiations: the newest TAI64N timestamp accepted from
//! each peer key, kept across that peer's sessions (boringtun keeps it per `Tunn`, so a new
//! session, a removed and re-added peer or a restart forgot it) and exportable, so that the
//! control plane can persist it and restore it after a restart, as kernel WireGuard keeps it
//! per peer.
//!
//! Reading the timestamp needs the initiation opened as far as its second AEAD (boringtun
//! does this inside `Tunn` and keeps the value private): [`open_static`] and
//! [`Opened::timestamp`] follow the WireGuard paper's first message, with the RustCrypto
//! primitives boringtun itself is built on.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Digest};
use boringtun::x25519::{PublicKey, StaticSecret};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use tokio::sync::watch;

/// A TAI64N label: 8 bytes of seconds and 4 of nanoseconds, both big-endian, so byte order
/// is time order.
pub type Tai64N = [u8; 12];

/// Entries of keys no longer among the peers are forgotten after this long unseen.
pub const RETAIN_REMOVED: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most peer keys remembered (beyond it, the longest unseen of removed peers go first).
pub const MAX_ENTRIES: usize = 65_536;

/// The newest handshake initiation timestamp accepted from one peer key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTimestamp {
    /// The peer's static public key.
    pub peer: [u8; 32],
    /// The TAI64N label of its newest accepted initiation.
    pub tai64n: Tai64N,
    /// When it was accepted (our clock; for forgetting removed peers).
    pub seen: SystemTime,
}

/// Every peer key's newest timestamp, shared by the workers.
pub(crate) struct Timestamps {
    map: Mutex<HashMap<[u8; 32], (Tai64N, SystemTime)>>,
    changed: watch::Sender<u64>,
}

impl Timestamps {
    pub fn new() -> Self {
        Timestamps { map: Mutex::new(HashMap::new()), changed: watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Tai64N, SystemTime)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `t` is newer than anything accepted from `peer` (a first one always is).
    pub fn is_fresh(&self, peer: &[u8; 32], t: &Tai64N) -> bool {
        self.lock().get(peer).is_none_or(|(newest, _)| t > newest)
    }

    /// Records an accepted initiation's timestamp.
    pub fn accept(&self, peer: [u8; 32], t: Tai64N) {
        let mut m = self.lock();
        let e = m.entry(peer).or_insert(([0; 12], SystemTime::UNIX_EPOCH));
        if t > e.0 {
            *e = (t, SystemTime::now());
            drop(m);
            self.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Raises the floors to `entries` (never lowers one).
    pub fn restore(&self, entries: &[PeerTimestamp]) {
        let mut m = self.lock();
        for p in entries {
            let e = m.entry(p.peer).or_insert(([0; 12], p.seen));
            if p.tai64n > e.0 {
                *e = (p.tai64n, p.seen.max(e.1));
            }
        }
    }

    /// Forgets keys not in `current` that were last seen before `RETAIN_REMOVED`, and
    /// beyond [`MAX_ENTRIES`] the longest unseen of them.
    pub fn prune(&self, current: &dyn Fn(&[u8; 32]) -> bool) {
        let now = SystemTime::now();
        let mut m = self.lock();
        m.retain(|k, (_, seen)| current(k) || now.duration_since(*seen).unwrap_or_default() < RETAIN_REMOVED);
        if m.len() > MAX_ENTRIES {
            let mut removed: Vec<([u8; 32], SystemTime)> =
                m.iter().filter(|(k, _)| !current(k)).map(|(k, (_, s))| (*k, *s)).collect();
            removed.sort_by_key(|(_, s)| *s);
            let excess = m.len() - MAX_ENTRIES;
            for (k, _) in removed.into_iter().take(excess) {
                m.remove(&k);
            }
        }
    }

    pub fn export(&self) -> Vec<PeerTimestamp> {
        let mut v: Vec<PeerTimestamp> =
            self.lock().iter().map(|(k, (t, s))| PeerTimestamp { peer: *k, tai64n: *t, seen: *s }).collect();
        v.sort_by_key(|p| p.peer);
        v
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

// ---- opening an initiation (the WireGuard paper, section 5.4.2) ----

const CONSTRUCTION: &[u8] = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
const IDENTIFIER: &[u8] = b"WireGuard v1 zx2c4 Jason@zx2c4.com";
/// Offsets in the 148-byte initiation.
const EPHEMERAL: std::ops::Range<usize> = 8..40;
const STATIC: std::ops::Range<usize> = 40..88;
const TIMESTAMP: std::ops::Range<usize> = 88..116;
const INIT_LEN: usize = 148;

/// (chaining key, hash) before the responder's static key is mixed in.
static INITIAL: LazyLock<([u8; 32], [u8; 32])> = LazyLock::new(|| {
    let ck = hash(CONSTRUCTION, &[]);
    (ck, hash(&ck, IDENTIFIER))
});

fn hash(a: &[u8], b: &[u8]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, a);
    Digest::update(&mut h, b);
    h.finalize().into()
}

fn hmac(key: &[u8], a: &[u8], b: &[u8]) -> [u8; 32] {
    // HMAC-BLAKE2s as WireGuard defines it (RFC 2104 over BLAKE2s-256), not keyed BLAKE2s.
    let mut m = <hmac::SimpleHmac<Blake2s256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes keys of any length");
    m.update(a);
    m.update(b);
    m.finalize_fixed().into()
}

/// KDF2: the next chaining key and an AEAD key.
fn kdf2(ck: &[u8; 32], input: &[u8]) -> ([u8; 32], [u8; 32]) {
    let t0 = hmac(ck, input, &[]);
    let t1 = hmac(&t0, &[1], &[]);
    let t2 = hmac(&t0, &t1, &[2]);
    (t1, t2)
}

fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
    let cipher = ChaCha20Poly1305::new(key.into());
    // Counter 0: an all-zero nonce.
    cipher.decrypt(&Nonce::default(), Payload { msg: sealed, aad }).ok()
}

/// An initiation opened as far as the initiator's static key.
pub(crate) struct Opened {
    pub peer_static: [u8; 32],
    ck: [u8; 32],
    h: [u8; 32],
    sealed_timestamp: [u8; 28],
}

/// Decrypts the initiator's static key from a 148-byte initiation sent to `our` key; `None`
/// when it was not sent to this key or is damaged. One Diffie-Hellman.
pub(crate) fn open_static(our: &StaticSecret, our_public: &PublicKey, init: &[u8]) -> Option<Opened> {
    if init.len() != INIT_LEN {
        return None;
    }
    let (ck, h) = *INITIAL;
    let h = hash(&h, our_public.as_bytes());
    let e: [u8; 32] = init[EPHEMERAL].try_into().ok()?;
    let h = hash(&h, &e);
    let ck = hmac(&hmac(&ck, &e, &[]), &[1], &[]);
    let dh = our.diffie_hellman(&PublicKey::from(e));
    let (ck, key) = kdf2(&ck, dh.as_bytes());
    let peer_static: [u8; 32] = open(&key, &init[STATIC], &h)?.try_into().ok()?;
    let h = hash(&h, &init[STATIC]);
    Some(Opened { peer_static, ck, h, sealed_timestamp: init[TIMESTAMP].try_into().ok()? })
}

impl Opened {
    /// The initiation's TAI64N label, given DH(our static, the initiator's static); `None`
    /// when it does not authenticate.
    pub fn timestamp(&self, static_shared: &[u8; 32]) -> Option<Tai64N> {
        let (_, key) = kdf2(&self.ck, static_shared);
        open(&key, &self.sealed_timestamp, &self.h)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};

    fn pair() -> (StaticSecret, StaticSecret) {
        (StaticSecret::from([7u8; 32]), StaticSecret::from([9u8; 32]))
    }

    /// A real initiation from boringtun's initiator side: `i` to `r`.
    fn initiation(i: &StaticSecret, r: &StaticSecret) -> Vec<u8> {
        let mut t = Tunn::new(i.clone(), PublicKey::from(r), None, None, 1, None);
        let mut buf = [0u8; 256];
        match t.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        }
    }

    fn tai64n_now() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + (1u64 << 62) + 37
    }

    #[test]
    fn opens_boringtuns_initiation() {
        let (i, r) = pair();
        let init = initiation(&i, &r);
        let o = open_static(&r, &PublicKey::from(&r), &init).expect("opens");
        assert_eq!(o.peer_static, PublicKey::from(&i).to_bytes());
        let ss = r.diffie_hellman(&PublicKey::from(o.peer_static));
        let t = o.timestamp(ss.as_bytes()).expect("timestamp authenticates");
        let secs = u64::from_be_bytes(t[..8].try_into().unwrap());
        assert!(secs.abs_diff(tai64n_now()) <= 2, "a TAI64N label of now: {secs}");
        // A later initiation carries a later label.
        std::thread::sleep(Duration::from_millis(2));
        let o2 = open_static(&r, &PublicKey::from(&r), &initiation(&i, &r)).unwrap();
        assert!(o2.timestamp(ss.as_bytes()).unwrap() > t);
    }

    #[test]
    fn refuses_other_keys_and_damage() {
        let (i, r) = pair();
        let init = initiation(&i, &r);
        let other = StaticSecret::from([3u8; 32]);
        assert!(open_static(&other, &PublicKey::from(&other), &init).is_none(), "not sent to this key");
        let o = open_static(&r, &PublicKey::from(&r), &init).unwrap();
        let wrong = other.diffie_hellman(&PublicKey::from(o.peer_static));
        assert!(o.timestamp(wrong.as_bytes()).is_none(), "the static DH authenticates the label");
        for at in [8, 40, 87, 90] {
            let mut bad = init.clone();
            bad[at] ^= 1;
            let ok = open_static(&r, &PublicKey::from(&r), &bad).and_then(|o| {
                let ss = r.diffie_hellman(&PublicKey::from(o.peer_static));
                o.timestamp(ss.as_bytes())
            });
            assert!(ok.is_none(), "byte {at} changed");
        }
        assert!(open_static(&r, &PublicKey::from(&r), &init[..147]).is_none());
    }

    #[test]
    fn floors_only_rise_and_removed_keys_age_out() {
        let ts = Timestamps::new();
        let mut rx = ts.subscribe();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let t1 = [0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0];
        let t2 = [0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 1];
        assert!(ts.is_fresh(&a, &t1));
        ts.accept(a, t2);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert!(!ts.is_fresh(&a, &t1) && !ts.is_fresh(&a, &t2), "older and equal are replays");
        ts.accept(a, t1);
        assert!(!rx.has_changed().unwrap(), "never lowered");
        assert!(ts.is_fresh(&b, &t1), "per key");
        let old = SystemTime::now() - RETAIN_REMOVED - Duration::from_secs(1);
        ts.restore(&[
            PeerTimestamp { peer: a, tai64n: t1, seen: old },
            PeerTimestamp { peer: b, tai64n: t2, seen: old },
        ]);
        assert_eq!(ts.export().iter().find(|p| p.peer == a).unwrap().tai64n, t2, "restore never lowers");
        assert!(!ts.is_fresh(&b, &t2));
        ts.prune(&|k| *k == a);
        assert_eq!(ts.export().len(), 1, "b removed long ago is forgotten; a is a peer");
        ts.prune(&|_| false);
        assert_eq!(ts.export().len(), 1, "a was seen recently");
    }
}
