//! Admission of handshake messages (initiations and responses) before any Diffie-Hellman,
//! as kernel WireGuard does it: every message must carry a valid mac1 for one of our keys;
//! past [`LOAD_LIMIT`] messages a second the node is under load and a message must also
//! carry a valid mac2, i.e. a cookie we gave to its source address (else it gets a cookie
//! reply, cheap and no larger than the message); and under load each proven source address
//! (IPv4, or IPv6 /64) may pass at most [`PER_SOURCE_RATE`] a second with a burst of
//! [`PER_SOURCE_BURST`], so one flooding source cannot starve the others. Each message is
//! counted once.
//!
//! mac1 and mac2/cookie handling is boringtun's `RateLimiter`, built with a limit of 0 so
//! that it always checks mac2 and tells us whether the source is proven; the load count and
//! the per-source buckets are here. The `Tunn`s get a limiter that only checks mac1 (it
//! never counts toward a limit), so nothing is limited twice.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::rate_limiter::RateLimiter;

/// Handshake messages a second, from all sources, before cookies are demanded.
pub const LOAD_LIMIT: u64 = 200;
/// Handshake messages a second one proven source may send under load.
pub const PER_SOURCE_RATE: u64 = 20;
/// How many it may send at once.
pub const PER_SOURCE_BURST: u64 = 5;
/// Sources tracked at once; a new source beyond this is refused while under load.
const MAX_SOURCES: usize = 16_384;

const COST: Duration = Duration::from_nanos(1_000_000_000 / PER_SOURCE_RATE);
const FULL: Duration = Duration::from_nanos(1_000_000_000 / PER_SOURCE_RATE * PER_SOURCE_BURST);

/// What to do with a handshake message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Process it.
    Pass,
    /// Send the cookie reply written into the buffer (this many bytes) instead.
    Cookie(usize),
    /// Its source has used its share.
    Limited,
    /// mac1 is not for this key (or the message is damaged).
    NotForKey,
}

/// A source address as limited: IPv4, or the /64 of IPv6 (one host's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(a) => Source::V4(a.octets()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => Source::V6(a.octets()[..8].try_into().expect("8 of 16 bytes")),
            },
        }
    }
}

/// A token bucket counted in time: `credit` is how much sending time the source has banked.
struct Bucket {
    credit: Duration,
    at: Instant,
}

/// The load count and the per-source buckets, for all keys and workers.
pub(crate) struct Gate {
    load: AtomicU64,
    sources: Mutex<HashMap<Source, Bucket>>,
}

impl Gate {
    pub fn new() -> Self {
        Gate { load: AtomicU64::new(0), sources: Mutex::new(HashMap::new()) }
    }

    /// Judges one handshake message `d` from `from`, received for the key whose cookie
    /// checker is `cookies` (a limit-0 `RateLimiter` of that key). A cookie reply is
    /// written into `buf` (64 bytes).
    pub fn check(&self, cookies: &RateLimiter, from: IpAddr, d: &[u8], buf: &mut [u8]) -> Verdict {
        let proven = match cookies.verify_packet(Some(from), d, buf) {
            Ok(_) => true,
            Err(TunnResult::WriteToNetwork(c)) => {
                let n = c.len();
                if !self.count() {
                    return Verdict::Pass;
                }
                return Verdict::Cookie(n);
            }
            Err(_) => return Verdict::NotForKey,
        };
        debug_assert!(proven);
        if self.count() && !self.allow(Source::of(from), Instant::now()) {
            return Verdict::Limited;
        }
        Verdict::Pass
    }

    /// Counts a message with a valid mac1; whether the node is now under load.
    fn count(&self) -> bool {
        self.load.fetch_add(1, Ordering::Relaxed) >= LOAD_LIMIT
    }

    fn allow(&self, src: Source, now: Instant) -> bool {
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SOURCES && !m.contains_key(&src) {
            return false;
        }
        let b = m.entry(src).or_insert(Bucket { credit: FULL, at: now });
        b.credit = (b.credit + now.duration_since(b.at)).min(FULL);
        b.at = now;
        match b.credit.checked_sub(COST) {
            Some(rest) => {
                b.credit = rest;
                true
            }
            None => false,
        }
    }

    /// Once a second (the timer thread): a new load count, and sources whose bucket is
    /// full again are forgotten.
    pub fn tick(&self, now: Instant) {
        self.load.store(0, Ordering::Relaxed);
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, b| b.credit + now.duration_since(b.at) < FULL);
    }

    #[cfg(test)]
    fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed)
    }
}

/// The cookie checker of one of our keys: mac1 always, mac2 always (limit 0).
pub(crate) fn cookie_checker(public: &boringtun::x25519::PublicKey) -> RateLimiter {
    RateLimiter::new(public, 0)
}

/// The limiter handed to a key's `Tunn`s: mac1 only, never "under load" (the gate has
/// already judged the message).
pub(crate) fn mac1_only(public: &boringtun::x25519::PublicKey) -> RateLimiter {
    RateLimiter::new(public, u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    struct Initiator {
        tunn: Tunn,
    }

    impl Initiator {
        fn new(seed: u8, to: &PublicKey) -> Self {
            Initiator { tunn: Tunn::new(StaticSecret::from([seed; 32]), *to, None, None, 1, None) }
        }

        fn init(&mut self) -> Vec<u8> {
            let mut buf = [0u8; 256];
            match self.tunn.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(p) => p.to_vec(),
                _ => panic!("no initiation"),
            }
        }

        /// Takes a cookie reply (as boringtun's initiator does: its next initiation has mac2).
        fn take_cookie(&mut self, reply: &[u8]) {
            let mut buf = [0u8; 256];
            assert!(matches!(self.tunn.decapsulate(None, reply, &mut buf), TunnResult::Done));
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn counted_once_cookies_under_load_and_limited_per_source() {
        let me = StaticSecret::from([2u8; 32]);
        let me_pub = PublicKey::from(&me);
        let cookies = cookie_checker(&me_pub);
        let gate = Gate::new();
        let mut buf = [0u8; 64];
        let mut a = Initiator::new(10, &me_pub);
        let mut b = Initiator::new(11, &me_pub);
        let (ia, ib) = (ip("192.0.2.10"), ip("2001:db8:1:2::11"));

        // Below the load limit everything with a valid mac1 passes, counted once each.
        let msg = a.init();
        for _ in 0..LOAD_LIMIT {
            assert_eq!(gate.check(&cookies, ia, &msg, &mut buf), Verdict::Pass);
        }
        assert_eq!(gate.load(), LOAD_LIMIT, "one count per message");
        // A wrong mac1 (another key's message) is not ours and not counted.
        let other = PublicKey::from(&StaticSecret::from([3u8; 32]));
        let stray = Initiator::new(12, &other).init();
        assert_eq!(gate.check(&cookies, ia, &stray, &mut buf), Verdict::NotForKey);
        assert_eq!(gate.load(), LOAD_LIMIT);

        // Under load: a cookie reply, then with the cookie (mac2) the source is proven and
        // held to its burst.
        let Verdict::Cookie(n) = gate.check(&cookies, ia, &msg, &mut buf) else { panic!("cookie") };
        a.take_cookie(&buf[..n]);
        let proven = a.init();
        let mut passed = 0;
        for _ in 0..50 {
            match gate.check(&cookies, ia, &proven, &mut buf) {
                Verdict::Pass => passed += 1,
                Verdict::Limited => {}
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(passed, PER_SOURCE_BURST, "the burst, then nothing");
        // The cookie is bound to the address: from elsewhere the same bytes get a cookie.
        assert!(matches!(gate.check(&cookies, ip("192.0.2.99"), &proven, &mut buf), Verdict::Cookie(_)));

        // Another source is not starved: its own cookie, then it passes.
        let Verdict::Cookie(n) = gate.check(&cookies, ib, &b.init(), &mut buf) else { panic!("cookie") };
        b.take_cookie(&buf[..n]);
        assert_eq!(gate.check(&cookies, ib, &b.init(), &mut buf), Verdict::Pass);

        // A new second: not under load, everything passes again; the bucket refills in time.
        gate.tick(Instant::now());
        assert_eq!(gate.check(&cookies, ia, &msg, &mut buf), Verdict::Pass);
    }

    #[test]
    fn buckets_refill_at_the_rate_and_are_keyed_by_host() {
        let g = Gate::new();
        let t0 = Instant::now();
        let src = Source::of(ip("2001:db8::1"));
        assert_eq!(src, Source::of(ip("2001:db8::ffff:1")), "one /64 is one source");
        assert_ne!(src, Source::of(ip("2001:db8:0:1::1")));
        assert_eq!(Source::of(ip("::ffff:192.0.2.1")), Source::of(ip("192.0.2.1")));
        for _ in 0..PER_SOURCE_BURST {
            assert!(g.allow(src, t0));
        }
        assert!(!g.allow(src, t0));
        assert!(!g.allow(src, t0 + COST / 2));
        assert!(g.allow(src, t0 + COST), "one message's worth of time, one message");
        assert!(!g.allow(src, t0 + COST));
        // A long pause refills to the burst, never more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..PER_SOURCE_BURST {
            assert!(g.allow(src, later));
        }
        assert!(!g.allow(src, later));
        // Full buckets are forgotten; used ones are kept.
        g.tick(later);
        assert_eq!(g.sources.lock().unwrap().len(), 1);
        g.tick(later + FULL);
        assert!(g.sources.lock().unwrap().is_empty());
    }
}
