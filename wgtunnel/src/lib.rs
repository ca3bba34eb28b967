//! wgtunnel: a userspace WireGuard engine. A multi-queue TUN device (opened through
//! `netkernel::tun`), one worker thread per queue (each with its own SO_REUSEPORT UDP
//! socket), boringtun's `Tunn` per peer for the protocol, and a timer thread. The control
//! plane (overlayd's encryption controller) gives the full peer set and our private key; it
//! moves routes when `changes()` says a peer's `established` flipped.
//!
//! Modules: `peers` (peer state and lookup table), `control` (set_peers/set_private_key),
//! `worker` (the datapath), `udp` (batched socket I/O), `offload` (TSO/checksums),
//! `timers` (WireGuard timers, fast handshake retry, expiry of old sessions).
//!
//! Unsafe code is confined to the UDP hot path (`udp`: the `recvmmsg`/`sendmmsg` calls and
//! their zeroed headers, for which no safe API exists without a cost); socket set-up, the
//! stop eventfd and `poll` go through `nix`, control messages are read and written as
//! bytes. Every unsafe block says why it is sound.

#![deny(clippy::undocumented_unsafe_blocks)]

mod coalesce;
mod control;
pub mod offload;
mod peers;
mod timers;
mod udp;
mod worker;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use netkernel::tun::{TunOptions, TunQueue};
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::watch;

use self::control::Control;
use self::peers::PeerTable;
use self::udp::UdpSocket;

/// Handshake messages per second (per key) before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 200;
/// How long the previous private key and the sessions made with it keep working after a
/// key change.
pub const KEY_OVERLAP: Duration = Duration::from_secs(30);
/// The most worker threads `threads: 0` picks.
const MAX_AUTO_THREADS: usize = 4;

/// How to run the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelConfig {
    /// TUN device name, e.g. "ferro-wg".
    pub name: String,
    /// UDP listen port on 0.0.0.0 and (if IPv6 works) [::]; 0 picks one.
    pub port: u16,
    /// Worker threads = TUN queues; 0 = number of CPUs (at most 4).
    pub threads: usize,
    /// TUNSETPERSIST: the device and its routes survive the process; a new Tunnel with the
    /// same name re-attaches.
    pub persist: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig { name: "ferro-wg".into(), port: 51820, threads: 0, persist: false }
    }
}

/// Kernel offloads the datapath uses when the kernel allows them (all on by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// IFF_VNET_HDR + TSO/checksum offload on the TUN: 64 KB reads, segmented here.
    pub tun_tso: bool,
    /// UDP GSO on send and GRO on receive.
    pub udp: bool,
    /// Coalesce received TCP segments into super-packets for the TUN write.
    pub tun_gro: bool,
}

impl Default for Offloads {
    fn default() -> Self {
        Offloads { tun_tso: true, udp: true, tun_gro: true }
    }
}

/// A remote node as the control plane wants it.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Opaque, stable per remote node (the lease key, e.g. "10.244.3.0-24").
    pub id: String,
    pub public_key: [u8; 32],
    /// An IPv4-mapped IPv6 address (`[::ffff:192.0.2.1]:51820`) is taken as the IPv4 one.
    pub endpoint: SocketAddr,
    /// Destinations routed to this peer AND the only inner sources accepted from it.
    pub allowed: Vec<ipnet::IpNet>,
    pub preshared_key: Option<[u8; 32]>,
    /// Persistent keepalive, seconds (takes effect with the peer's next key change).
    pub keepalive: Option<u16>,
}

impl std::fmt::Debug for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The preshared key is a secret: never in logs.
        f.debug_struct("PeerSpec")
            .field("id", &self.id)
            .field("public_key", &KeyPrefix(&self.public_key))
            .field("endpoint", &self.endpoint)
            .field("allowed", &self.allowed)
            .field("preshared_key", &self.preshared_key.map(|_| "<redacted>"))
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// A public key shown by its first bytes, enough to tell keys apart in logs.
struct KeyPrefix<'a>(&'a [u8; 32]);

impl std::fmt::Debug for KeyPrefix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// What a peer is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: String,
    pub public_key: [u8; 32],
    /// A session usable for sending with the current spec and our current key.
    pub established: bool,
    /// Some session can carry traffic, maybe one made with the previous key or the peer's
    /// previous key while the new one handshakes (true through a key change).
    pub can_send: bool,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake: Option<Instant>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Datapath counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Packets decrypted and written to the TUN.
    pub rx_packets: u64,
    /// Packets (after segmentation) encrypted and sent.
    pub tx_packets: u64,
    /// Packets from the TUN whose destination is no peer's.
    pub dropped_no_peer: u64,
    /// Decrypted packets whose inner source is outside the sender's `allowed`.
    pub dropped_bad_source: u64,
    /// Datagrams that failed to parse, authenticate or decrypt, or came for no session.
    pub dropped_invalid: u64,
    /// Packets lost on send (socket errors) or TUN write errors.
    pub dropped_io: u64,
    pub handshakes_completed: u64,
}

/// Why the tunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("opening TUN device {name:?}: {source}")]
    Tun {
        name: String,
        // Boxed: KernelError is large and this is the rare path.
        #[source]
        source: Box<netkernel::KernelError>,
    },
    #[error("UDP socket on {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The public key of a private key (what peers must be told).
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private_key)).to_bytes()
}

/// One of our static keys with its handshake rate limiter (keyed by the public key).
#[derive(Clone)]
pub(crate) struct OwnKey {
    pub secret: StaticSecret,
    pub public: PublicKey,
    pub generation: u64,
    pub limiter: Arc<RateLimiter>,
}

impl OwnKey {
    fn new(private: [u8; 32], generation: u64) -> OwnKey {
        let secret = StaticSecret::from(private);
        let public = PublicKey::from(&secret);
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        OwnKey { secret, public, generation, limiter }
    }
}

/// Our current key and, for [`KEY_OVERLAP`] after a change, the previous one.
pub(crate) struct KeySet {
    pub current: OwnKey,
    pub previous: Option<(OwnKey, Instant)>,
}

/// Counters shared by the threads (each worker adds its batch totals).
#[derive(Default)]
pub(crate) struct Counters {
    pub rx_packets: AtomicU64,
    pub tx_packets: AtomicU64,
    pub dropped_no_peer: AtomicU64,
    pub dropped_bad_source: AtomicU64,
    pub dropped_invalid: AtomicU64,
    pub dropped_io: AtomicU64,
    pub handshakes_completed: AtomicU64,
}

/// What all threads share.
pub(crate) struct Shared {
    pub keys: RwLock<Arc<KeySet>>,
    /// `keys.current.generation`, readable without the lock.
    pub key_gen: AtomicU64,
    pub table: RwLock<Arc<PeerTable>>,
    /// Bumped after every table swap so workers know to pick up the new one.
    pub table_gen: AtomicU64,
    pub control: Mutex<Control>,
    pub counters: Counters,
    pub changes: watch::Sender<u64>,
    pub stop: AtomicBool,
    /// Sockets for the control path (handshakes from set_peers and the timer thread).
    pub send4: UdpSocket,
    pub send6: Option<UdpSocket>,
}

impl Shared {
    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn table(&self) -> Arc<PeerTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the control plane that some peer's `established` flipped.
    pub fn bump_changes(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sends one control-path datagram.
    pub fn send_to(&self, buf: &[u8], dst: &SocketAddr) {
        let sock = if dst.is_ipv4() { Some(&self.send4) } else { self.send6.as_ref() };
        if let Some(s) = sock
            && let Err(e) = s.send_to(buf, dst)
        {
            tracing::debug!(%dst, error = %e, "tunnel: control datagram not sent");
        }
    }
}

/// A running tunnel.
pub struct Tunnel {
    shared: Arc<Shared>,
    ifindex: u32,
    port: u16,
    threads: Vec<JoinHandle<()>>,
    /// Written once to stop: every worker polls it.
    stop_fd: EventFd,
}

impl Tunnel {
    /// Starts in the calling thread's network namespace with all offloads: creates or
    /// re-attaches the TUN, binds the sockets, starts the threads. Addresses, routes, MTU
    /// and link state are the caller's.
    pub fn start(cfg: TunnelConfig, private_key: [u8; 32]) -> Result<Tunnel, TunnelError> {
        Self::start_with(cfg, private_key, Offloads::default())
    }

    /// [`Tunnel::start`] with a choice of offloads (benchmarks and fallbacks).
    pub fn start_with(
        cfg: TunnelConfig,
        private_key: [u8; 32],
        off: Offloads,
    ) -> Result<Tunnel, TunnelError> {
        let n = match cfg.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_AUTO_THREADS),
            n => n.min(64),
        };
        let tun_err = |e| TunnelError::Tun { name: cfg.name.clone(), source: Box::new(e) };
        let mut queues = Vec::with_capacity(n);
        let mut vnet = off.tun_tso;
        for i in 0..n {
            let opts = TunOptions { multi_queue: true, vnet_hdr: vnet };
            let q = match TunQueue::open(&cfg.name, opts) {
                Ok(q) => q,
                Err(e) if i == 0 && vnet => {
                    tracing::warn!(error = %e, "tunnel: TUN with vnet header refused; without offloads");
                    vnet = false;
                    TunQueue::open(&cfg.name, TunOptions { multi_queue: true, vnet_hdr: false })
                        .map_err(tun_err)?
                }
                Err(e) => return Err(tun_err(e)),
            };
            queues.push(q);
        }
        let mut tso = false;
        if vnet {
            use netkernel::tun::offload::{CSUM, TSO4, TSO6};
            match queues[0].set_offload(CSUM | TSO4 | TSO6) {
                Ok(()) => tso = true,
                Err(e) => tracing::warn!(error = %e, "tunnel: TUN offloads refused; MTU-sized reads"),
            }
        }
        if !tso {
            // A re-attached persistent device may still have offloads on from an earlier
            // run; without a vnet header we could not tell a super-packet from a packet.
            let _ = queues[0].set_offload(0);
        }
        queues[0].set_persist(cfg.persist).map_err(tun_err)?;
        let ifindex = queues[0].ifindex();

        // Worker 0 binds first so that port 0 turns into a real port the others share.
        let mut port = cfg.port;
        let mut socks4 = Vec::with_capacity(n);
        let mut socks6 = Vec::with_capacity(n);
        for i in 0..n {
            let a4 = SocketAddr::from(([0, 0, 0, 0], port));
            let s4 =
                UdpSocket::bind(a4, off.udp).map_err(|source| TunnelError::Socket { addr: a4, source })?;
            if i == 0 {
                port = s4.local_port().map_err(|source| TunnelError::Socket { addr: a4, source })?;
            }
            socks4.push(s4);
            let a6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
            match UdpSocket::bind(a6, off.udp) {
                Ok(s) => socks6.push(Some(s)),
                Err(e) => {
                    if i == 0 {
                        tracing::info!(error = %e, "tunnel: no IPv6 socket; IPv4 endpoints only");
                    }
                    socks6.push(None);
                }
            }
        }
        let io = |what| move |source| TunnelError::Io { what, source };
        let send4 = socks4[0].try_clone().map_err(io("duplicating the socket"))?;
        let send6 = match socks6[0].as_ref() {
            Some(s) => Some(s.try_clone().map_err(io("duplicating the socket"))?),
            None => None,
        };

        let stop_fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| io("creating the stop eventfd")(e.into()))?;

        let keys = KeySet { current: OwnKey::new(private_key, 1), previous: None };
        let (changes, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(keys)),
            key_gen: AtomicU64::new(1),
            table: RwLock::new(Arc::new(PeerTable::default())),
            table_gen: AtomicU64::new(1),
            control: Mutex::new(Control::new()),
            counters: Counters::default(),
            changes,
            stop: AtomicBool::new(false),
            send4,
            send6,
        });

        let mut tunnel = Tunnel { shared: shared.clone(), ifindex, port, threads: Vec::new(), stop_fd };
        let gro = off.tun_gro && tso;
        for (i, ((q, s4), s6)) in queues.into_iter().zip(socks4).zip(socks6).enumerate() {
            let stop =
                tunnel.stop_fd.as_fd().try_clone_to_owned().map_err(io("duplicating the stop eventfd"))?;
            let w = worker::WorkerSetup {
                shared: shared.clone(),
                tun: q,
                vnet,
                tso,
                gro,
                udp4: s4,
                udp6: s6,
                stop,
            };
            let h = std::thread::Builder::new()
                .name(format!("wg-worker-{i}"))
                .spawn(move || worker::run(w))
                .map_err(io("spawning a worker thread"))?;
            tunnel.threads.push(h);
        }
        let t = shared.clone();
        let h = std::thread::Builder::new()
            .name("wg-timers".into())
            .spawn(move || timers::run(t))
            .map_err(io("spawning the timer thread"))?;
        tunnel.threads.push(h);
        tracing::info!(name = %cfg.name, ifindex, port, workers = n, vnet, tso, "tunnel: started");
        Ok(tunnel)
    }

    /// The TUN device's interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The UDP port (the one picked when the config said 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Our public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.keys().current.public.to_bytes()
    }

    /// Changes our private key without loss: every peer handshakes anew with it while the
    /// old sessions carry traffic; the old key answers handshakes for [`KEY_OVERLAP`].
    pub fn set_private_key(&self, key: [u8; 32]) {
        control::set_private_key(&self.shared, key);
    }

    /// Sets the full peer set. Unchanged peers keep their sessions; a changed public or
    /// preshared key handshakes anew without loss; new peers handshake right away.
    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        control::set_peers(&self.shared, peers);
    }

    /// Every peer's state, in `set_peers` order.
    pub fn status(&self) -> Vec<PeerStatus> {
        control::status(&self.shared)
    }

    /// The datapath counters.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TunnelStats {
            rx_packets: g(&c.rx_packets),
            tx_packets: g(&c.tx_packets),
            dropped_no_peer: g(&c.dropped_no_peer),
            dropped_bad_source: g(&c.dropped_bad_source),
            dropped_invalid: g(&c.dropped_invalid),
            dropped_io: g(&c.dropped_io),
            handshakes_completed: g(&c.handshakes_completed),
        }
    }

    /// A receiver whose value changes whenever some peer's `established` flips.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops and joins the threads. With `persist` the device stays (without queues it
    /// drops what is routed to it until a new Tunnel re-attaches); otherwise it is gone.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.shared.stop.store(true, Ordering::Release);
        // Cannot fail short of a counter at u64::MAX - 1, and the flag above is read anyway.
        let _ = self.stop_fd.write(1);
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                tracing::error!("tunnel: a thread panicked");
            }
        }
        tracing::info!(ifindex = self.ifindex, "tunnel: stopped");
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Tunnel").field("ifindex", &self.ifindex).field("port", &self.port).finish()
    }
}
