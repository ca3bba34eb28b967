//! Requests and their replies on one socket: sequence numbers, multi-part replies, ACKs and
//! errors, dumps repeated when the kernel says they were torn, and windows of pipelined
//! requests matched to their ACKs by sequence number.

use std::collections::HashMap;
use std::io;

use netlink_packet_core::{
    Emitable, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
    NLMSG_OVERRUN, NetlinkHeader, NetlinkSerializable,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::error::NetlinkError;
use super::socket::Transport;

/// How many times a dump is tried before [`NetlinkError::DumpInterrupted`].
pub(crate) const MAX_DUMP_ATTEMPTS: u32 = 10;

/// How many times the unanswered requests of a batch are sent again after the receive queue
/// overflowed, before they are reported as failed.
const MAX_BATCH_RESENDS: u32 = 10;

/// The receive buffer a connection starts with: the kernel fills dump datagrams up to
/// 32 KiB; a larger datagram grows it.
const RX_START: usize = 64 << 10;

/// `NLMSGERR_ATTR_MSG`: the extended ACK's text.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// One request: the rtnetlink message and its `NLM_F_*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// `NLM_F_*` flags, as each kind of request sets them.
    pub(crate) flags: u16,
    /// The message.
    pub(crate) message: RouteNetlinkMessage,
}

impl Request {
    pub(crate) fn new(flags: u16, message: RouteNetlinkMessage) -> Self {
        Request { flags, message }
    }

    /// Appends the request as sequence number `seq` to `out`, padded to the 4-byte boundary
    /// the next message in the same datagram must start on.
    pub(crate) fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        let len = 16 + NetlinkSerializable::buffer_len(&self.message);
        let mut header = NetlinkHeader::default();
        header.length = len as u32;
        header.message_type = NetlinkSerializable::message_type(&self.message);
        header.flags = self.flags;
        header.sequence_number = seq;
        let start = out.len();
        out.resize(start + align4(len), 0);
        header.emit(&mut out[start..start + 16]);
        NetlinkSerializable::serialize(&self.message, &mut out[start + 16..start + len]);
    }
}

/// What one message of a reply is.
#[derive(Debug)]
enum Reply {
    /// `NLMSG_ERROR` with code 0.
    Ack,
    /// `NLMSG_ERROR` with an errno.
    Error(NetlinkError),
    /// `NLMSG_DONE` (with an errno when the dump failed).
    Done(Option<NetlinkError>),
    /// `NLMSG_OVERRUN`.
    Overrun,
    /// An rtnetlink message.
    Message(RouteNetlinkMessage),
    /// An rtnetlink message left undecoded for now (see [`Conn::dump_once`]).
    Unparsed,
    /// An rtnetlink message the parser cannot read (a dump leaves it out, as rtnetlink
    /// did, rather than failing the whole listing).
    Undecodable(String),
    /// `NLMSG_NOOP`.
    Skip,
}

/// One received message: its header's sequence number and flags, and what it is.
#[derive(Debug)]
struct Received {
    seq: u32,
    flags: u16,
    reply: Reply,
}

/// A connection: a transport, the next sequence number and the buffers.
#[derive(Debug)]
pub(crate) struct Conn<T> {
    transport: T,
    seq: u32,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Dumps repeated because they were torn or overflowed, since the connection opened.
    pub(crate) dump_retries: u64,
}

impl<T: Transport> Conn<T> {
    pub(crate) fn new(transport: T) -> Self {
        Conn { transport, seq: 0, rx: Vec::with_capacity(RX_START), tx: Vec::new(), dump_retries: 0 }
    }

    #[cfg(test)]
    pub(crate) fn transport(&self) -> &T {
        &self.transport
    }

    #[cfg(test)]
    pub(crate) fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    fn next_seq(&mut self) -> u32 {
        // 0 is left out: the kernel's own notifications carry it.
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&mut self, req: &Request) -> Result<u32, NetlinkError> {
        let seq = self.next_seq();
        self.tx.clear();
        req.encode(seq, &mut self.tx);
        self.transport.send(&self.tx)?;
        Ok(seq)
    }

    /// Reads one datagram and decodes its messages (rtnetlink objects only when `objects`).
    fn recv(&mut self, nonblocking: bool, objects: bool) -> Result<Vec<Received>, NetlinkError> {
        let n = self.recv_raw(nonblocking)?;
        decode(&self.rx[..n], objects)
    }

    /// Reads one datagram into the receive buffer; its length. ENOBUFS (replies were
    /// dropped) is [`NetlinkError::Overrun`]; a truncated datagram grows the buffer and is an
    /// overrun too (part of it is lost).
    fn recv_raw(&mut self, nonblocking: bool) -> Result<usize, NetlinkError> {
        let n = match self.transport.recv(&mut self.rx, nonblocking) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(NetlinkError::Overrun),
            Err(e) => return Err(e.into()),
        };
        if n > self.rx.len() {
            self.rx = Vec::with_capacity(n.next_power_of_two());
            return Err(NetlinkError::Overrun);
        }
        Ok(n)
    }

    /// Reads, without waiting, whatever is queued (replies to requests given up on), so the
    /// next exchange starts on an empty queue. Each read also lets the kernel go on with a
    /// dump it still runs for this socket, so this runs such a dump to its end.
    fn drain(&mut self) {
        let mut budget = 1 << 20;
        while budget > 0 {
            budget -= 1;
            match self.transport.recv(&mut self.rx, true) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(_) => return,
            }
        }
    }

    /// Sends a request that carries `NLM_F_ACK` and waits for its ACK or error.
    pub(crate) fn ack(&mut self, req: &Request) -> Result<(), NetlinkError> {
        let seq = self.send(req)?;
        loop {
            for r in self.recv(false, false)? {
                if r.seq != seq {
                    continue;
                }
                match r.reply {
                    Reply::Ack | Reply::Done(None) => return Ok(()),
                    Reply::Error(e) | Reply::Done(Some(e)) => return Err(e),
                    Reply::Overrun => return Err(NetlinkError::Overrun),
                    Reply::Message(_) | Reply::Unparsed | Reply::Undecodable(_) | Reply::Skip => {}
                }
            }
        }
    }

    /// Sends a request for one object (no dump, no ACK) and returns the object.
    pub(crate) fn get(&mut self, req: &Request) -> Result<RouteNetlinkMessage, NetlinkError> {
        let seq = self.send(req)?;
        loop {
            for r in self.recv(false, true)? {
                if r.seq != seq {
                    continue;
                }
                match r.reply {
                    Reply::Message(m) => return Ok(m),
                    Reply::Error(e) | Reply::Done(Some(e)) => return Err(e),
                    Reply::Ack | Reply::Done(None) => {
                        return Err(NetlinkError::Protocol(
                            "the kernel answered a get without an object".into(),
                        ));
                    }
                    Reply::Overrun => return Err(NetlinkError::Overrun),
                    Reply::Undecodable(e) => return Err(NetlinkError::Protocol(e)),
                    Reply::Unparsed | Reply::Skip => {}
                }
            }
        }
    }

    /// Runs a dump (`NLM_F_DUMP`) and returns every object of one consistent pass. A pass the
    /// kernel flags `NLM_F_DUMP_INTR` (the table changed under it), or whose replies
    /// overflowed the socket, is thrown away and the whole dump asked again, up to
    /// [`MAX_DUMP_ATTEMPTS`] times.
    ///
    /// Some tables are dumped without that flag even when they change between two parts of
    /// the dump (IPv6 routes: the kernel restarts its walk and skips as many entries as it
    /// had sent, so it repeats or drops entries). For those, `watch` names the multicast
    /// group their changes are announced on: a dump of several parts during which a change
    /// was announced counts as interrupted. (The kernel announces a change while it still
    /// holds the table's lock, so no part of the dump can see the change before it is
    /// announced; a dump of one part was read under that lock in one go.)
    pub(crate) fn dump(
        &mut self,
        req: &Request,
        watch: Option<u32>,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for attempt in 1..=MAX_DUMP_ATTEMPTS {
            if let Some(group) = watch {
                self.transport.watch(group)?;
            }
            let pass = self.dump_once(req);
            let changed = watch.is_some_and(|group| self.transport.unwatch(group));
            let failure = match pass {
                Ok(Some(pass)) if pass.datagrams.len() <= 1 || !changed => return pass.decode(),
                Ok(_) => NetlinkError::DumpInterrupted { attempts: attempt },
                Err(e) if e.dump_retriable() => {
                    self.drain();
                    e
                }
                Err(e) => return Err(e),
            };
            if attempt == MAX_DUMP_ATTEMPTS {
                return Err(match failure {
                    NetlinkError::Overrun => NetlinkError::Overrun,
                    _ => NetlinkError::DumpInterrupted { attempts: attempt },
                });
            }
            self.dump_retries += 1;
        }
        unreachable!("the last attempt returns")
    }

    /// One pass of a dump: its sequence number and the datagrams that hold its objects, or
    /// `None` when the kernel flagged it interrupted (read to its end all the same, so the
    /// socket is ready for the next one). The datagrams are only scanned here, and decoded
    /// once the pass is known to be whole: the dump is read as fast as the kernel writes it,
    /// which keeps the window for a change to land in it short, and an interrupted pass
    /// costs no decoding.
    fn dump_once(&mut self, req: &Request) -> Result<Option<Pass>, NetlinkError> {
        let seq = self.send(req)?;
        let mut datagrams: Vec<Vec<u8>> = Vec::new();
        let mut interrupted = false;
        loop {
            let n = self.recv_raw(false)?;
            let mut ours = false;
            let mut done = false;
            for r in decode(&self.rx[..n], false)? {
                if r.seq != seq {
                    continue;
                }
                interrupted |= r.flags & NLM_F_DUMP_INTR != 0;
                match r.reply {
                    Reply::Unparsed | Reply::Message(_) | Reply::Undecodable(_) => ours = true,
                    Reply::Done(None) | Reply::Ack => done = true,
                    Reply::Error(e) | Reply::Done(Some(e)) => return Err(e),
                    Reply::Overrun => return Err(NetlinkError::Overrun),
                    Reply::Skip => {}
                }
            }
            if ours && !interrupted {
                datagrams.push(self.rx[..n].to_vec());
            }
            if done {
                return Ok((!interrupted).then_some(Pass { seq, datagrams }));
            }
        }
    }

    /// Sends `reqs` (each with `NLM_F_ACK`) in windows of `window` requests per datagram and
    /// matches the ACKs and errors to them by sequence number; returns one result per
    /// request, in order. The requests must be idempotent: when the receive queue overflows
    /// and ACKs are lost, the unanswered ones are sent again.
    pub(crate) fn batch(&mut self, reqs: &[Request], window: usize) -> Vec<Result<(), NetlinkError>> {
        let mut results: Vec<Option<Result<(), NetlinkError>>> = reqs.iter().map(|_| None).collect();
        let mut queue: Vec<usize> = (0..reqs.len()).rev().collect();
        let mut pending: HashMap<u32, usize> = HashMap::new();
        let mut resends = 0;
        while !queue.is_empty() {
            // One datagram with the next window of requests.
            self.tx.clear();
            while pending.len() < window.max(1) {
                let Some(i) = queue.pop() else { break };
                let seq = self.next_seq();
                reqs[i].encode(seq, &mut self.tx);
                pending.insert(seq, i);
            }
            if let Err(e) = self.transport.send(&self.tx) {
                let e = NetlinkError::Io(e);
                for (_, i) in pending.drain() {
                    results[i] = Some(Err(copy(&e)));
                }
                continue;
            }
            // Their replies; the kernel handled the whole datagram before send returned.
            while !pending.is_empty() {
                match self.recv(false, false) {
                    Ok(replies) => settle(replies, &mut pending, &mut results),
                    Err(NetlinkError::Overrun) => {
                        // ACKs were dropped: collect what is queued, send the rest again.
                        while let Ok(replies) = self.recv(true, false) {
                            settle(replies, &mut pending, &mut results);
                        }
                        resends += 1;
                        let mut lost: Vec<usize> = pending.drain().map(|(_, i)| i).collect();
                        if resends > MAX_BATCH_RESENDS {
                            for i in lost {
                                results[i] = Some(Err(NetlinkError::Overrun));
                            }
                        } else {
                            lost.sort_unstable_by(|a, b| b.cmp(a));
                            queue.extend(lost);
                        }
                    }
                    Err(e) => {
                        for (_, i) in pending.drain() {
                            results[i] = Some(Err(copy(&e)));
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(NetlinkError::Protocol("request left unanswered".into()))))
            .collect()
    }
}

/// Gives the requests of a batch that `replies` answer their result.
fn settle(
    replies: Vec<Received>,
    pending: &mut HashMap<u32, usize>,
    results: &mut [Option<Result<(), NetlinkError>>],
) {
    for r in replies {
        let outcome = match r.reply {
            Reply::Ack | Reply::Done(None) => Ok(()),
            Reply::Error(e) | Reply::Done(Some(e)) => Err(e),
            _ => continue,
        };
        if let Some(i) = pending.remove(&r.seq) {
            results[i] = Some(outcome);
        }
    }
}

/// A dump pass the kernel did not flag: its sequence number and the datagrams that hold its
/// objects (one per part of the dump), not decoded yet.
struct Pass {
    seq: u32,
    datagrams: Vec<Vec<u8>>,
}

impl Pass {
    /// The pass's objects.
    fn decode(&self) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut msgs = Vec::new();
        for d in &self.datagrams {
            for r in decode(d, true)? {
                if let (true, Reply::Message(m)) = (r.seq == self.seq, r.reply) {
                    msgs.push(m);
                }
            }
        }
        Ok(msgs)
    }
}

/// The same error again, for each request a socket failure hit.
fn copy(e: &NetlinkError) -> NetlinkError {
    match e {
        NetlinkError::Io(io) => NetlinkError::Io(io::Error::new(io.kind(), io.to_string())),
        NetlinkError::Kernel { errno, message } => {
            NetlinkError::Kernel { errno: *errno, message: message.clone() }
        }
        NetlinkError::DumpInterrupted { attempts } => NetlinkError::DumpInterrupted { attempts: *attempts },
        NetlinkError::Overrun => NetlinkError::Overrun,
        NetlinkError::Protocol(m) => NetlinkError::Protocol(m.clone()),
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Decodes the messages of one datagram; rtnetlink messages only when `objects`.
fn decode(mut buf: &[u8], objects: bool) -> Result<Vec<Received>, NetlinkError> {
    let mut out = Vec::new();
    // The header by hand (struct nlmsghdr, host byte order): this runs on every message of
    // a dump while the dump is being read, and must stay cheap even in a debug build.
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let u32_at = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    while buf.len() >= 16 {
        let len = u32_at(buf, 0) as usize;
        if len < 16 || len > buf.len() {
            return Err(NetlinkError::Protocol(format!(
                "message length {len} in a {}-byte datagram",
                buf.len()
            )));
        }
        let (kind, flags, seq, port) = (u16_at(buf, 4), u16_at(buf, 6), u32_at(buf, 8), u32_at(buf, 12));
        let payload = &buf[16..len];
        let reply = match kind {
            NLMSG_ERROR => match errno_of(payload) {
                Some(0) => Reply::Ack,
                Some(code) => Reply::Error(NetlinkError::Kernel {
                    errno: -code,
                    message: extack_message(payload, flags, true),
                }),
                None => return Err(NetlinkError::Protocol("short NLMSG_ERROR".into())),
            },
            NLMSG_DONE => match errno_of(payload) {
                Some(code) if code < 0 => Reply::Done(Some(NetlinkError::Kernel {
                    errno: -code,
                    message: extack_message(payload, flags, false),
                })),
                _ => Reply::Done(None),
            },
            NLMSG_OVERRUN => Reply::Overrun,
            NLMSG_NOOP => Reply::Skip,
            _ if !objects => Reply::Unparsed,
            _ => {
                let mut header = NetlinkHeader::default();
                header.length = len as u32;
                header.message_type = kind;
                header.flags = flags;
                header.sequence_number = seq;
                header.port_number = port;
                use netlink_packet_core::NetlinkDeserializable;
                match RouteNetlinkMessage::deserialize(&header, payload) {
                    Ok(m) => Reply::Message(m),
                    Err(e) => Reply::Undecodable(format!("message type {kind}: {e}")),
                }
            }
        };
        out.push(Received { seq, flags, reply });
        buf = buf.get(align4(len)..).unwrap_or_default();
    }
    Ok(out)
}

fn errno_of(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?))
}

/// The text of an extended ACK (`NLMSGERR_ATTR_MSG`), if the kernel attached one. In an
/// `NLMSG_ERROR` the attributes follow the echoed request (only its header when the ACK is
/// capped); in an `NLMSG_DONE` they follow the code.
pub(crate) fn extack_message(payload: &[u8], flags: u16, is_error: bool) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let mut off = 4;
    if is_error {
        let echoed = if flags & NLM_F_CAPPED != 0 {
            16
        } else {
            u32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?) as usize
        };
        off += align4(echoed);
    }
    let mut tlvs = payload.get(off..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned()).filter(|s| !s.is_empty());
        }
        tlvs = tlvs.get(align4(len)..).unwrap_or_default();
    }
    None
}
