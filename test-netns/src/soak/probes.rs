//! The probe matrix: every pod probes every other pod with UDP echo requests carrying
//! sequence numbers, 20 a second, and keeps one TCP connection to each that echoes a
//! counter every 100 ms. One thread per pod, inside the pod's namespace, does both sides
//! (answering and asking) with non-blocking sockets and `poll(2)`.
//!
//! A probe counts as lost when its answer has not come back within [`PROBE_TIMEOUT`]. Runs of
//! consecutive lost probes of one pair are reported to the [`Collector`] as [`LossRun`]s: the
//! unreachability window of the run is its length times [`PROBE_INTERVAL`].

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netkernel::NetNs;

/// The UDP echo port of every pod.
pub const UDP_PORT: u16 = 7101;
/// The TCP echo port of every pod.
pub const TCP_PORT: u16 = 7102;
/// Time between two probes of one pair.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// An answer later than this is a loss.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Time between two counters on a TCP connection.
pub const TCP_INTERVAL: Duration = Duration::from_millis(100);
/// A TCP connection whose echo is this late is stalled.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// A TCP connection stalled this long is given up (closed and reconnected).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// A connect that has not completed in this time failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

const MAGIC: &[u8; 4] = b"FSK1";
const REQ: u8 = 1;
const RESP: u8 = 2;
const MSG_LEN: usize = 29;

/// A pod others probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The pod's soak-wide number (never reused).
    pub uid: u64,
    /// The id of the node it runs on.
    pub node: usize,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// The pods that are probed, shared by every prober.
#[derive(Debug, Default)]
pub struct Targets {
    list: RwLock<Arc<Vec<Target>>>,
}

impl Targets {
    /// Starts probing `t`.
    pub fn add(&self, t: Target) {
        let mut l = self.list.write().unwrap_or_else(|p| p.into_inner());
        let mut v = (**l).clone();
        v.retain(|x| x.uid != t.uid);
        v.push(t);
        *l = Arc::new(v);
    }

    /// Stops probing `uid` (outstanding probes still complete).
    pub fn remove(&self, uid: u64) {
        let mut l = self.list.write().unwrap_or_else(|p| p.into_inner());
        let v: Vec<Target> = l.iter().filter(|x| x.uid != uid).cloned().collect();
        *l = Arc::new(v);
    }

    /// The current list.
    pub fn snapshot(&self) -> Arc<Vec<Target>> {
        self.list.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Consecutive lost probes of one pair.
#[derive(Debug, Clone)]
pub struct LossRun {
    /// Prober.
    pub src: u64,
    /// Probed.
    pub dst: u64,
    /// Their nodes.
    pub src_node: usize,
    /// Their nodes.
    pub dst_node: usize,
    /// When the first lost probe was sent (since the soak's start).
    pub start: Duration,
    /// Lost probes in a row.
    pub count: u32,
}

impl LossRun {
    /// The unreachability window: lost probes × interval.
    pub fn window(&self) -> Duration {
        PROBE_INTERVAL * self.count
    }
}

/// What happened to a TCP connection.
#[derive(Debug, Clone, PartialEq)]
pub enum TcpKind {
    /// An established connection failed (RST, error, or closed by the other end).
    Reset(String),
    /// The echo was late by more than [`STALL_AFTER`]; how long, once it came back (or the
    /// connection was given up or closed).
    Stall(Duration),
    /// A connection could not be made.
    ConnectFailed(String),
    /// The echo was not the counter sent.
    Corrupt,
}

/// One TCP event.
#[derive(Debug, Clone)]
pub struct TcpEvent {
    /// Client pod.
    pub src: u64,
    /// Server pod.
    pub dst: u64,
    /// Their nodes.
    pub src_node: usize,
    /// Their nodes.
    pub dst_node: usize,
    /// When (since the soak's start): for a stall, when it began.
    pub at: Duration,
    /// What.
    pub kind: TcpKind,
}

/// Collects what the probers see.
#[derive(Debug)]
pub struct Collector {
    start: Instant,
    runs: Mutex<Vec<LossRun>>,
    tcp: Mutex<Vec<TcpEvent>>,
    /// Probes sent and finished (answered or lost).
    pub probes: AtomicU64,
    /// Probes lost.
    pub lost: AtomicU64,
    /// Counters echoed over TCP.
    pub echoes: AtomicU64,
    /// UDP requests that reached a pod they were not meant for (an address held twice).
    pub misdelivered: AtomicU64,
    last_loss: AtomicU64,
}

impl Collector {
    /// A collector whose clock starts now.
    pub fn new() -> Self {
        Collector {
            start: Instant::now(),
            runs: Mutex::default(),
            tcp: Mutex::default(),
            probes: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            misdelivered: AtomicU64::new(0),
            last_loss: AtomicU64::new(0),
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// The soak's clock at `t`.
    pub fn at(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.start)
    }

    fn loss_run(&self, r: LossRun) {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    fn tcp_event(&self, e: TcpEvent) {
        self.tcp.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    }

    fn note_loss(&self, sent: Duration) {
        self.last_loss.fetch_max(sent.as_millis() as u64, Ordering::Relaxed);
    }

    /// When the latest lost probe was sent (soak clock), if any was.
    pub fn last_loss(&self) -> Option<Duration> {
        let ms = self.last_loss.load(Ordering::Relaxed);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Every loss run so far.
    pub fn runs(&self) -> Vec<LossRun> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every TCP event so far.
    pub fn tcp_events(&self) -> Vec<TcpEvent> {
        self.tcp.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until no probe sent in the last `quiet` was lost, at most `limit`; returns
    /// whether it got quiet.
    pub fn wait_quiet(&self, quiet: Duration, limit: Duration, stop: &AtomicBool) -> bool {
        let deadline = Instant::now() + limit;
        // A probe is judged PROBE_TIMEOUT after it was sent.
        std::thread::sleep(PROBE_TIMEOUT);
        loop {
            let now = self.now();
            let judged_until = now.saturating_sub(PROBE_TIMEOUT);
            let since_loss = self.last_loss().map(|l| judged_until.saturating_sub(l));
            if since_loss.is_none_or(|d| d >= quiet) {
                return true;
            }
            if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Default for Collector {
    fn default() -> Self {
        Self::new()
    }
}

/// A running prober; [`Prober::stop`] ends it and closes its sockets.
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts the prober of pod `me` inside `netns` (the pod's namespace): binds its echo
    /// ports on the pod's address, then probes the [`Targets`] until stopped.
    pub fn start(
        netns: NetNs,
        me: Target,
        targets: Arc<Targets>,
        collector: Arc<Collector>,
    ) -> Result<Prober, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("probe-{}", me.uid))
            .spawn(move || {
                if let Err(e) = nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET) {
                    let _ = tx.send(Err(format!("entering the pod's netns: {e}")));
                    return;
                }
                // The namespace stays referenced by this thread only: the handle goes.
                drop(netns);
                let mut p = match PodLoop::bind(me, targets, collector) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                p.run(&flag);
            })
            .map_err(|e| e.to_string())?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Prober { stop, thread: Some(thread) }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the prober thread died".into()),
        }
    }

    /// Stops the prober and waits for its thread (its sockets are closed then).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Pair {
    dst: Target,
    next_seq: u64,
    /// Sequence number of `outstanding[0]`.
    base: u64,
    outstanding: VecDeque<(Instant, bool)>,
    /// The run of losses in progress: (first lost probe's send time, count).
    run: Option<(Instant, u32)>,
    draining: bool,
}

enum Conn {
    Idle { retry_at: Instant },
    Connecting { sock: socket2::Socket, since: Instant },
    Up(Box<UpConn>),
}

struct UpConn {
    stream: TcpStream,
    next_send: Instant,
    sent: u64,
    acked: u64,
    last_progress: Instant,
    stalled_since: Option<Instant>,
    rbuf: Vec<u8>,
}

struct Client {
    dst: Target,
    conn: Conn,
}

struct Served {
    stream: TcpStream,
    pending: Vec<u8>,
}

struct PodLoop {
    me: Target,
    udp: UdpSocket,
    listener: TcpListener,
    served: Vec<Served>,
    clients: HashMap<u64, Client>,
    pairs: HashMap<u64, Pair>,
    targets: Arc<Targets>,
    collector: Arc<Collector>,
}

fn encode(kind: u8, seq: u64, src: u64, dst: u64) -> [u8; MSG_LEN] {
    let mut b = [0u8; MSG_LEN];
    b[..4].copy_from_slice(MAGIC);
    b[4] = kind;
    b[5..13].copy_from_slice(&seq.to_be_bytes());
    b[13..21].copy_from_slice(&src.to_be_bytes());
    b[21..29].copy_from_slice(&dst.to_be_bytes());
    b
}

fn decode(b: &[u8]) -> Option<(u8, u64, u64, u64)> {
    if b.len() != MSG_LEN || &b[..4] != MAGIC {
        return None;
    }
    let n = |r: std::ops::Range<usize>| u64::from_be_bytes(b[r].try_into().expect("8 bytes"));
    Some((b[4], n(5..13), n(13..21), n(21..29)))
}

impl PodLoop {
    fn bind(me: Target, targets: Arc<Targets>, collector: Arc<Collector>) -> Result<PodLoop, String> {
        let udp = UdpSocket::bind(SocketAddrV4::new(me.ip, UDP_PORT))
            .map_err(|e| format!("binding {}:{UDP_PORT}: {e}", me.ip))?;
        udp.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sock = socket2::SockRef::from(&udp);
        let _ = sock.set_recv_buffer_size(4 << 20);
        let _ = sock.set_send_buffer_size(4 << 20);
        let listener = TcpListener::bind(SocketAddrV4::new(me.ip, TCP_PORT))
            .map_err(|e| format!("listening on {}:{TCP_PORT}: {e}", me.ip))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(PodLoop {
            me,
            udp,
            listener,
            served: Vec::new(),
            clients: HashMap::new(),
            pairs: HashMap::new(),
            targets,
            collector,
        })
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut next_tick = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_tick {
                self.sync_targets(now);
                self.send_probes(now);
                self.finish_probes(now);
                self.tcp_tick(now);
                next_tick += PROBE_INTERVAL;
                if next_tick < now {
                    // Far behind (the machine was busy): skip rather than burst.
                    next_tick = now + PROBE_INTERVAL;
                }
            }
            let wait = next_tick.saturating_duration_since(Instant::now()).min(Duration::from_millis(20));
            self.poll(wait);
            self.udp_recv();
            self.accept();
            self.serve();
            self.client_io(Instant::now());
        }
        // Closing: finish what can be judged, end the stalls and the runs in progress.
        let now = Instant::now();
        self.finish_probes(now);
        for p in self.pairs.values_mut() {
            end_run(&self.collector, &self.me, p);
        }
        for c in self.clients.values_mut() {
            end_client(&self.collector, &self.me, c, now);
        }
    }

    fn sync_targets(&mut self, now: Instant) {
        let list = self.targets.snapshot();
        for t in list.iter().filter(|t| t.uid != self.me.uid) {
            self.pairs.entry(t.uid).or_insert_with(|| Pair {
                dst: t.clone(),
                next_seq: 0,
                base: 0,
                outstanding: VecDeque::new(),
                run: None,
                draining: false,
            });
            self.clients
                .entry(t.uid)
                .or_insert_with(|| Client { dst: t.clone(), conn: Conn::Idle { retry_at: now } });
        }
        for p in self.pairs.values_mut() {
            if !list.iter().any(|t| t.uid == p.dst.uid) {
                p.draining = true;
            }
        }
        let gone: Vec<u64> =
            self.clients.keys().filter(|u| !list.iter().any(|t| t.uid == **u)).copied().collect();
        for u in gone {
            if let Some(mut c) = self.clients.remove(&u) {
                end_client(&self.collector, &self.me, &mut c, now);
            }
        }
    }

    fn send_probes(&mut self, now: Instant) {
        for p in self.pairs.values_mut().filter(|p| !p.draining) {
            let msg = encode(REQ, p.next_seq, self.me.uid, p.dst.uid);
            let to = SocketAddrV4::new(p.dst.ip, UDP_PORT);
            // A send error (no route, for one) is a probe that gets no answer: a loss.
            let _ = self.udp.send_to(&msg, to);
            if p.outstanding.is_empty() {
                p.base = p.next_seq;
            }
            p.outstanding.push_back((now, false));
            p.next_seq += 1;
        }
    }

    fn finish_probes(&mut self, now: Instant) {
        let c = &self.collector;
        let me = &self.me;
        for p in self.pairs.values_mut() {
            while let Some(&(sent, got)) = p.outstanding.front() {
                if now.saturating_duration_since(sent) < PROBE_TIMEOUT {
                    break;
                }
                p.outstanding.pop_front();
                p.base += 1;
                c.probes.fetch_add(1, Ordering::Relaxed);
                if got {
                    end_run(c, me, p);
                } else {
                    c.lost.fetch_add(1, Ordering::Relaxed);
                    c.note_loss(c.at(sent));
                    p.run = Some(match p.run {
                        Some((first, n)) => (first, n + 1),
                        None => (sent, 1),
                    });
                }
            }
        }
        let done: Vec<u64> = self
            .pairs
            .iter()
            .filter(|(_, p)| p.draining && p.outstanding.is_empty())
            .map(|(u, _)| *u)
            .collect();
        for u in done {
            if let Some(mut p) = self.pairs.remove(&u) {
                end_run(c, me, &mut p);
            }
        }
    }

    fn udp_recv(&mut self) {
        let mut buf = [0u8; 128];
        loop {
            match self.udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let Some((kind, seq, src, dst)) = decode(&buf[..n]) else { continue };
                    match kind {
                        REQ if dst == self.me.uid => {
                            let _ = self.udp.send_to(&encode(RESP, seq, src, dst), from);
                        }
                        REQ => {
                            self.collector.misdelivered.fetch_add(1, Ordering::Relaxed);
                        }
                        RESP if src == self.me.uid => {
                            if let Some(p) = self.pairs.get_mut(&dst)
                                && seq >= p.base
                                && let Some(slot) = p.outstanding.get_mut((seq - p.base) as usize)
                            {
                                slot.1 = true;
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // ICMP errors surface here (port unreachable, …): the probe is lost anyway.
                Err(_) => continue,
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.set_nodelay(true);
                    self.served.push(Served { stream, pending: Vec::new() });
                }
                Err(_) => return,
            }
        }
    }

    fn serve(&mut self) {
        let mut buf = [0u8; 4096];
        self.served.retain_mut(|s| {
            loop {
                match s.stream.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(n) => s.pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            while !s.pending.is_empty() {
                match s.stream.write(&s.pending) {
                    Ok(n) => {
                        s.pending.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => return false,
                }
            }
            true
        });
    }

    fn tcp_tick(&mut self, now: Instant) {
        let (c, me) = (&self.collector, &self.me);
        for cl in self.clients.values_mut() {
            match &mut cl.conn {
                Conn::Idle { retry_at } if now >= *retry_at => {
                    cl.conn = match connect_start(SocketAddrV4::new(cl.dst.ip, TCP_PORT)) {
                        Ok(sock) => Conn::Connecting { sock, since: now },
                        Err(e) => {
                            event(c, me, &cl.dst, now, TcpKind::ConnectFailed(e));
                            Conn::Idle { retry_at: now + Duration::from_millis(500) }
                        }
                    }
                }
                Conn::Connecting { since, .. } if now.saturating_duration_since(*since) > CONNECT_TIMEOUT => {
                    event(c, me, &cl.dst, *since, TcpKind::ConnectFailed("timed out".into()));
                    cl.conn = Conn::Idle { retry_at: now };
                }
                Conn::Up(up) => {
                    let mut failed = None;
                    while now >= up.next_send {
                        up.next_send += TCP_INTERVAL;
                        match up.stream.write(&(up.sent + 1).to_be_bytes()) {
                            Ok(8) => up.sent += 1,
                            // A full send buffer: the connection is stalled, seen below.
                            Ok(_) | Err(_) if failed.is_some() => {}
                            Ok(_) => failed = Some("short write".to_string()),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                            Err(e) => failed = Some(e.to_string()),
                        }
                    }
                    if up.next_send < now {
                        up.next_send = now + TCP_INTERVAL;
                    }
                    if up.sent > up.acked
                        && up.stalled_since.is_none()
                        && now.saturating_duration_since(up.last_progress) > STALL_AFTER
                    {
                        up.stalled_since = Some(up.last_progress);
                    }
                    if let Some(since) = up.stalled_since
                        && now.saturating_duration_since(since) > GIVE_UP_AFTER
                    {
                        failed = Some("stalled for 30 s: given up".into());
                    }
                    if let Some(why) = failed {
                        if let Some(since) = up.stalled_since {
                            event(
                                c,
                                me,
                                &cl.dst,
                                since,
                                TcpKind::Stall(now.saturating_duration_since(since)),
                            );
                        }
                        event(c, me, &cl.dst, now, TcpKind::Reset(why));
                        cl.conn = Conn::Idle { retry_at: now + Duration::from_millis(200) };
                    }
                }
                _ => {}
            }
        }
    }

    fn client_io(&mut self, now: Instant) {
        let (c, me) = (&self.collector, &self.me);
        for cl in self.clients.values_mut() {
            match &mut cl.conn {
                Conn::Connecting { sock, since } => match connect_result(sock) {
                    None => {}
                    Some(Ok(())) => {
                        let sock = std::mem::replace(sock, placeholder());
                        let stream: TcpStream = sock.into();
                        let _ = stream.set_nodelay(true);
                        cl.conn = Conn::Up(Box::new(UpConn {
                            stream,
                            next_send: now,
                            sent: 0,
                            acked: 0,
                            last_progress: now,
                            stalled_since: None,
                            rbuf: Vec::new(),
                        }));
                    }
                    Some(Err(e)) => {
                        event(c, me, &cl.dst, *since, TcpKind::ConnectFailed(e));
                        cl.conn = Conn::Idle { retry_at: now + Duration::from_millis(500) };
                    }
                },
                Conn::Up(up) => {
                    let mut buf = [0u8; 1024];
                    let mut failed = None;
                    loop {
                        match up.stream.read(&mut buf) {
                            Ok(0) => {
                                failed = Some("closed by the server".to_string());
                                break;
                            }
                            Ok(n) => up.rbuf.extend_from_slice(&buf[..n]),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => {
                                failed = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let mut corrupt = false;
                    while up.rbuf.len() >= 8 {
                        let v = u64::from_be_bytes(up.rbuf[..8].try_into().expect("8 bytes"));
                        up.rbuf.drain(..8);
                        if v != up.acked + 1 {
                            corrupt = true;
                            break;
                        }
                        up.acked = v;
                        up.last_progress = now;
                        c.echoes.fetch_add(1, Ordering::Relaxed);
                        if let Some(since) = up.stalled_since.take() {
                            event(
                                c,
                                me,
                                &cl.dst,
                                since,
                                TcpKind::Stall(now.saturating_duration_since(since)),
                            );
                        }
                    }
                    if corrupt {
                        event(c, me, &cl.dst, now, TcpKind::Corrupt);
                        failed = failed.or(Some("corrupt echo".into()));
                    }
                    if let Some(why) = failed {
                        if let Some(since) = up.stalled_since.take() {
                            event(
                                c,
                                me,
                                &cl.dst,
                                since,
                                TcpKind::Stall(now.saturating_duration_since(since)),
                            );
                        }
                        event(c, me, &cl.dst, now, TcpKind::Reset(why));
                        cl.conn = Conn::Idle { retry_at: now + Duration::from_millis(200) };
                    }
                }
                Conn::Idle { .. } => {}
            }
        }
    }

    fn poll(&self, wait: Duration) {
        let mut fds = Vec::with_capacity(2 + self.served.len() + self.clients.len());
        let pfd = |fd: i32, events: i16| libc::pollfd { fd, events, revents: 0 };
        fds.push(pfd(self.udp.as_raw_fd(), libc::POLLIN));
        fds.push(pfd(self.listener.as_raw_fd(), libc::POLLIN));
        for s in &self.served {
            let ev = if s.pending.is_empty() { libc::POLLIN } else { libc::POLLIN | libc::POLLOUT };
            fds.push(pfd(s.stream.as_raw_fd(), ev));
        }
        for c in self.clients.values() {
            match &c.conn {
                Conn::Connecting { sock, .. } => fds.push(pfd(sock.as_raw_fd(), libc::POLLOUT)),
                Conn::Up(up) => fds.push(pfd(up.stream.as_raw_fd(), libc::POLLIN)),
                Conn::Idle { .. } => {}
            }
        }
        // SAFETY: poll(2) on descriptors we own, with a correctly sized array.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait.as_millis() as i32) };
    }
}

fn placeholder() -> socket2::Socket {
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket")
}

fn connect_start(to: SocketAddrV4) -> Result<socket2::Socket, String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    match s.connect(&SocketAddr::V4(to).into()) {
        Ok(()) => Ok(s),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
        Err(e) => Err(e.to_string()),
    }
}

/// None while still connecting.
fn connect_result(s: &socket2::Socket) -> Option<Result<(), String>> {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: poll(2) on one descriptor we own, no wait.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n <= 0 {
        return None;
    }
    match s.take_error() {
        Ok(None) => Some(s.peer_addr().map(|_| ()).map_err(|e| e.to_string())),
        Ok(Some(e)) | Err(e) => Some(Err(e.to_string())),
    }
}

fn event(c: &Collector, me: &Target, dst: &Target, at: Instant, kind: TcpKind) {
    c.tcp_event(TcpEvent {
        src: me.uid,
        dst: dst.uid,
        src_node: me.node,
        dst_node: dst.node,
        at: c.at(at),
        kind,
    });
}

fn end_run(c: &Collector, me: &Target, p: &mut Pair) {
    if let Some((first, count)) = p.run.take() {
        c.loss_run(LossRun {
            src: me.uid,
            dst: p.dst.uid,
            src_node: me.node,
            dst_node: p.dst.node,
            start: c.at(first),
            count,
        });
    }
}

fn end_client(c: &Collector, me: &Target, cl: &mut Client, now: Instant) {
    if let Conn::Up(up) = &mut cl.conn
        && let Some(since) = up.stalled_since.take()
    {
        event(c, me, &cl.dst, since, TcpKind::Stall(now.saturating_duration_since(since)));
    }
    cl.conn = Conn::Idle { retry_at: now };
}
