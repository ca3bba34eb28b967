//! The timer thread: boringtun's timers (keepalive, rekey, expiry) every tick, handshake
//! retries every second while a peer has no working session (boringtun alone would wait
//! 5 s), the end of old sessions and of the previous key after a key change, and the
//! handshake rate limiters' reset.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;

use super::control::{publish, send_initiation};
use super::peers::Session;
use super::{KEY_OVERLAP, KeySet, Shared};

const TICK: Duration = Duration::from_millis(100);
/// Handshake retry while no session works: every second for the first 30 s, then every 5 s
/// (a node that is down should not get a packet per second forever).
const FAST_RETRY: Duration = Duration::from_secs(1);
const SLOW_RETRY: Duration = Duration::from_secs(5);
const FAST_RETRY_FOR: Duration = Duration::from_secs(30);

fn retry_due(s: &Session, now: Instant) -> bool {
    let every = if now.duration_since(s.created) < FAST_RETRY_FOR { FAST_RETRY } else { SLOW_RETRY };
    !s.ready() && s.last_init.is_none_or(|t| now.duration_since(t) >= every)
}

pub(crate) fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; 2048];
    let mut last_reset = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::sleep(TICK);
        let now = Instant::now();
        let keys = shared.keys();
        if now.duration_since(last_reset) >= Duration::from_secs(1) {
            last_reset = now;
            keys.current.limiter.reset_count();
            if let Some((k, _)) = &keys.previous {
                k.limiter.reset_count();
            }
        }
        if keys.previous.as_ref().is_some_and(|(_, until)| *until <= now) {
            let mut w = shared.keys.write().unwrap_or_else(|p| p.into_inner());
            // Only if no other key change came in between.
            if w.current.generation == keys.current.generation {
                *w = Arc::new(KeySet { current: keys.current.clone(), previous: None });
            }
        }
        tick_peers(&shared, &mut buf, now, keys.current.generation);
    }
}

fn tick_peers(shared: &Shared, buf: &mut [u8], now: Instant, generation: u64) {
    let table = shared.table();
    let mut flipped = false;
    let mut dropped_old = false;
    for e in &table.entries {
        let mut st = e.peer.lock();
        let endpoint = st.endpoint;
        // The old session only decrypts; its own timers would start handshakes with a key
        // that is going away.
        let st_ref = &mut *st;
        for s in [st_ref.active.as_mut(), st_ref.pending.as_mut()].into_iter().flatten() {
            match s.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(p) => {
                    if p.first() == Some(&1) {
                        s.last_init = Some(now);
                    }
                    shared.send_to(p, &endpoint);
                }
                TunnResult::Err(e) => tracing::trace!(error = ?e, "tunnel: timers"),
                _ => {}
            }
        }
        let active_current = st.active.as_ref().is_some_and(|s| st.matches(s, generation));
        if let Some(s) = st.active.as_mut()
            && active_current
            && retry_due(s, now)
        {
            send_initiation(shared, s, endpoint);
        }
        if let Some(s) = st.pending.as_mut()
            && retry_due(s, now)
        {
            send_initiation(shared, s, endpoint);
        }
        if st.old.as_ref().is_some_and(|(_, until)| *until <= now) {
            st.old = None;
            dropped_old = true;
        }
        flipped |= st.refresh(generation, now + KEY_OVERLAP);
    }
    drop(table);
    if dropped_old {
        let mut ctl = shared.control();
        publish(shared, &mut ctl);
    }
    if flipped {
        shared.bump_changes();
    }
}
