//! The control path: applying the peer set and key changes, publishing the lookup table the
//! workers read, and reporting status. Lock order: `Shared::control`, then a peer's lock.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;

use super::peers::{Entry, Peer, PeerState, PeerTable, Session};
use super::{KEY_OVERLAP, KeySet, OwnKey, PeerSpec, PeerStatus, Shared};

/// The peer list in `set_peers` order and the receiver indices in use.
pub(crate) struct Control {
    pub peers: Vec<Arc<Peer>>,
    live: HashSet<u32>,
    next: u32,
}

impl Control {
    pub fn new() -> Control {
        // A random start makes indices of a restarted tunnel unlikely to match stale ones.
        Control { peers: Vec::new(), live: HashSet::new(), next: fastrand::u32(1..0x00ff_ffff) }
    }

    /// A 24-bit index no live session uses.
    fn alloc_index(&mut self) -> u32 {
        loop {
            let i = self.next & 0x00ff_ffff;
            self.next = self.next.wrapping_add(1);
            if i != 0 && self.live.insert(i) {
                return i;
            }
        }
    }

    /// A fresh session for `st` with our key `key`. Its first handshake initiation is sent
    /// by [`initiate`] once the session is in the published table (a response that came back
    /// before was dropped: the workers could not find its session).
    pub fn new_session(&mut self, _shared: &Shared, key: &OwnKey, st: &PeerState) -> Session {
        let index = self.alloc_index();
        let tunn = Tunn::new(
            key.secret.clone(),
            PublicKey::from(st.public_key),
            st.psk,
            st.keepalive,
            index,
            Some(key.limiter.clone()),
        );
        Session {
            tunn: Box::new(tunn),
            index,
            key_gen: key.generation,
            peer_public: st.public_key,
            psk: st.psk,
            last_init: None,
            confirmed: false,
            created: Instant::now(),
        }
    }
}

/// Sends the first handshake initiation of the sessions `fresh` (peer, session index):
/// call after [`publish`], so that the workers can match the response.
fn initiate(shared: &Shared, fresh: &[(Arc<Peer>, u32)]) {
    for (p, index) in fresh {
        let mut st = p.lock();
        let endpoint = st.endpoint;
        let st = &mut *st;
        for s in [st.active.as_mut(), st.pending.as_mut()].into_iter().flatten() {
            if s.index == *index {
                send_initiation(shared, s, endpoint);
            }
        }
    }
}

/// Sends a handshake initiation for `s` now (also when one is in flight: this is the fast
/// retry).
pub(crate) fn send_initiation(shared: &Shared, s: &mut Session, endpoint: SocketAddr) {
    let mut buf = [0u8; 256];
    if let TunnResult::WriteToNetwork(p) = s.tunn.format_handshake_initiation(&mut buf, true) {
        shared.send_to(p, &endpoint);
    }
    s.last_init = Some(Instant::now());
}

/// Starts a new session for a key change: next to an active session that works (it keeps
/// carrying traffic), or in place of one that does not.
/// Returns the new session's index (its initiation is sent by [`initiate`]).
fn rekey(ctl: &mut Control, shared: &Shared, key: &OwnKey, st: &mut PeerState) -> u32 {
    let s = ctl.new_session(shared, key, st);
    let index = s.index;
    if st.active.as_ref().is_some_and(Session::ready) {
        st.pending = Some(s);
    } else {
        st.active = Some(s);
        st.pending = None;
    }
    index
}

/// Rebuilds the lookup table from the peers and swaps it in.
pub(crate) fn publish(shared: &Shared, ctl: &mut Control) {
    let mut items = Vec::with_capacity(ctl.peers.len());
    let mut live = HashSet::new();
    for p in &ctl.peers {
        let st = p.lock();
        let idx: Vec<u32> = st.indices().collect();
        live.extend(idx.iter().copied());
        items.push((Entry { peer: p.clone(), allowed: st.allowed.clone() }, st.public_key, idx));
    }
    ctl.live = live;
    let table = Arc::new(PeerTable::build(items));
    *shared.table.write().unwrap_or_else(|p| p.into_inner()) = table;
    shared.table_gen.fetch_add(1, Ordering::AcqRel);
}

/// Recomputes every peer's `established` (promoting ready pending sessions); tells the
/// control plane if any flipped.
fn refresh_all(shared: &Shared, ctl: &Control) {
    let generation = shared.keys().current.generation;
    let until = Instant::now() + KEY_OVERLAP;
    let mut flipped = false;
    for p in &ctl.peers {
        flipped |= p.lock().refresh(generation, until);
    }
    if flipped {
        shared.bump_changes();
    }
}

/// The form of an endpoint we send to and compare: an IPv4-mapped IPv6 address is the IPv4
/// address. The IPv6 socket is V6ONLY (it refuses to send to a mapped address), and the
/// source of a received datagram is reported in IPv4 form, so a mapped spec endpoint would
/// be unreachable and would differ from the same peer's roamed endpoint.
fn canonical_endpoint(ep: SocketAddr) -> SocketAddr {
    match ep {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), a.port()),
            None => ep,
        },
        SocketAddr::V4(_) => ep,
    }
}

pub(crate) fn set_peers(shared: &Shared, specs: Vec<PeerSpec>) {
    let mut ctl = shared.control();
    let keys = shared.keys();
    let mut next: Vec<Arc<Peer>> = Vec::with_capacity(specs.len());
    let mut removed_established = false;
    let mut fresh = Vec::new();
    for mut spec in specs {
        spec.endpoint = canonical_endpoint(spec.endpoint);
        // A repeated id: the later spec wins.
        next.retain(|p| p.id != spec.id);
        let existing = ctl.peers.iter().find(|p| p.id == spec.id).cloned();
        let peer = match existing {
            Some(peer) => {
                let mut st = peer.lock();
                st.allowed = spec.allowed;
                st.keepalive = spec.keepalive;
                if spec.endpoint != st.spec_endpoint {
                    st.spec_endpoint = spec.endpoint;
                    st.endpoint = spec.endpoint;
                }
                if spec.public_key != st.public_key || spec.preshared_key != st.psk {
                    st.public_key = spec.public_key;
                    st.psk = spec.preshared_key;
                    let index = rekey(&mut ctl, shared, &keys.current, &mut st);
                    fresh.push((peer.clone(), index));
                }
                drop(st);
                peer
            }
            None => {
                let mut st = PeerState {
                    public_key: spec.public_key,
                    psk: spec.preshared_key,
                    keepalive: spec.keepalive,
                    allowed: spec.allowed,
                    spec_endpoint: spec.endpoint,
                    endpoint: spec.endpoint,
                    active: None,
                    pending: None,
                    old: None,
                    established: false,
                    last_handshake: None,
                };
                let session = ctl.new_session(shared, &keys.current, &st);
                let index = session.index;
                st.active = Some(session);
                tracing::debug!(peer = %spec.id, "tunnel: peer added");
                let peer = Arc::new(Peer::new(spec.id, st));
                fresh.push((peer.clone(), index));
                peer
            }
        };
        next.push(peer);
    }
    for old in &ctl.peers {
        if !next.iter().any(|p| Arc::ptr_eq(p, old)) {
            tracing::debug!(peer = %old.id, "tunnel: peer removed");
            removed_established |= old.lock().established;
        }
    }
    ctl.peers = next;
    publish(shared, &mut ctl);
    initiate(shared, &fresh);
    refresh_all(shared, &ctl);
    if removed_established {
        shared.bump_changes();
    }
}

pub(crate) fn set_private_key(shared: &Shared, key: [u8; 32]) {
    let mut ctl = shared.control();
    let old = shared.keys();
    if old.current.secret.to_bytes() == key {
        return;
    }
    let current = OwnKey::new(key, old.current.generation + 1);
    let keys = Arc::new(KeySet {
        current: current.clone(),
        previous: Some((old.current.clone(), Instant::now() + KEY_OVERLAP)),
    });
    *shared.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    shared.key_gen.store(current.generation, Ordering::Release);
    let peers = ctl.peers.clone();
    let mut fresh = Vec::with_capacity(peers.len());
    for p in &peers {
        let mut st = p.lock();
        fresh.push((p.clone(), rekey(&mut ctl, shared, &current, &mut st)));
    }
    tracing::info!(peers = peers.len(), "tunnel: private key changed; handshaking anew");
    publish(shared, &mut ctl);
    initiate(shared, &fresh);
    refresh_all(shared, &ctl);
}

pub(crate) fn status(shared: &Shared) -> Vec<PeerStatus> {
    let ctl = shared.control();
    let now = Instant::now();
    ctl.peers
        .iter()
        .map(|p| {
            let st = p.lock();
            let since = st.active.as_ref().and_then(|s| s.tunn.time_since_last_handshake());
            PeerStatus {
                id: p.id.clone(),
                public_key: st.public_key,
                established: st.established,
                can_send: st.active.as_ref().is_some_and(Session::ready),
                endpoint: Some(st.endpoint),
                last_handshake: since.and_then(|d| now.checked_sub(d)).or(st.last_handshake),
                rx_bytes: p.rx_bytes.load(Ordering::Relaxed),
                tx_bytes: p.tx_bytes.load(Ordering::Relaxed),
            }
        })
        .collect()
}
