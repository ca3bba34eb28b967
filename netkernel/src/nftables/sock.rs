//! The `NETLINK_NETFILTER` socket: a batch sent and its answers read, and dumps.

use std::io;
use std::os::fd::AsFd;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};

use super::batch::{Batch, put_msg};
use super::wire::{SUBSYS_NFTABLES, align4};
use crate::netlink::{NetlinkError, extack_message};

/// Room for the answers to a large batch (one per message) and dump chunks.
const RCVBUF: usize = 4 << 20;
/// How many times a dump the kernel flags as torn is repeated.
const DUMP_ATTEMPTS: u32 = 10;

pub(crate) struct NfSock {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

/// A failed batch: which message (its index in the batch, `None` for the batch itself) and why.
pub(crate) type BatchError = (Option<usize>, NetlinkError);

impl NfSock {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        if setsockopt(&sock.as_fd(), sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&sock.as_fd(), sockopt::RcvBuf, &RCVBUF);
        }
        // A batch goes out as one datagram; the default send buffer caps its size.
        if setsockopt(&sock.as_fd(), sockopt::SndBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&sock.as_fd(), sockopt::SndBuf, &RCVBUF);
        }
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        Ok(NfSock { sock, seq, rx: Vec::with_capacity(64 << 10) })
    }

    fn send(&self, buf: &[u8]) -> Result<(), NetlinkError> {
        loop {
            match self.sock.send(buf, 0) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(n) => return Err(NetlinkError::Protocol(format!("sent {n} of {} bytes", buf.len()))),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One datagram; `None` when `nonblocking` and nothing is queued.
    fn recv(&mut self, nonblocking: bool) -> Result<Option<usize>, NetlinkError> {
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            self.rx.clear();
            match self.sock.recv(&mut self.rx, flags) {
                Ok(n) if n > self.rx.capacity() => {
                    self.rx = Vec::with_capacity(n.next_power_of_two());
                    return Err(NetlinkError::Overrun);
                }
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Err(NetlinkError::Overrun),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `batch` and reads its answers: every message asks for an ACK, so a committed
    /// batch answers each with success. The kernel handles the batch while it is sent, so
    /// every answer is queued when `send` returns.
    pub(crate) fn apply(&mut self, batch: &Batch) -> Result<(), BatchError> {
        let first = self.seq.wrapping_add(1).max(1);
        // Sequence numbers must not wrap inside the batch (they identify its messages).
        let first = if first.checked_add(batch.len() as u32 + 2).is_none() { 1 } else { first };
        self.seq = first + batch.len() as u32 + 1;
        let buf = batch.encode(first);
        // The socket is kept between calls: nothing of an earlier exchange may be queued.
        while let Ok(Some(_)) = self.recv(true) {}
        self.send(&buf).map_err(|e| (None, e))?;
        let mut answered = vec![false; batch.len()];
        let mut failure: Option<BatchError> = None;
        loop {
            let n = match self.recv(true) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => return Err((None, e)),
            };
            for (seq, kind, flags, payload) in messages(&self.rx[..n]) {
                // Only answers to this batch (its begin marker included) count.
                if kind != NLMSG_ERROR || seq < first || seq > first + batch.len() as u32 + 1 {
                    continue;
                }
                let Some(code) = payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())) else {
                    continue;
                };
                let index = seq.checked_sub(first + 1).map(|i| i as usize).filter(|i| *i < batch.len());
                if let Some(i) = index {
                    answered[i] = true;
                }
                if code != 0 && failure.is_none() {
                    let message = extack_message(payload, flags, true);
                    failure = Some((index, NetlinkError::Kernel { errno: -code, message }));
                }
            }
        }
        if let Some(f) = failure {
            return Err(f);
        }
        if let Some(i) = answered.iter().position(|a| !a) {
            return Err((Some(i), NetlinkError::Protocol("the kernel did not answer".into())));
        }
        Ok(())
    }

    /// Dumps objects of nf_tables message type `kind` matching `attrs`: the attributes of
    /// each (after its nfgenmsg). ENOENT when the table or the object named is not there.
    pub(crate) fn dump(&mut self, kind: u16, family: u8, attrs: &[u8]) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.dump_once(kind, family, attrs) {
                Ok(Some(objects)) => return Ok(objects),
                Ok(None) if attempts < DUMP_ATTEMPTS => {}
                Ok(None) => return Err(NetlinkError::DumpInterrupted { attempts }),
                Err(NetlinkError::Overrun) if attempts < DUMP_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One dump; `None` when the kernel flagged it as torn.
    fn dump_once(
        &mut self,
        kind: u16,
        family: u8,
        attrs: &[u8],
    ) -> Result<Option<Vec<Vec<u8>>>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        while let Ok(Some(_)) = self.recv(true) {}
        let mut req = Vec::new();
        put_msg(&mut req, 0, (SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_DUMP, seq, family, attrs);
        self.send(&req)?;
        let mut out = Vec::new();
        let mut torn = false;
        loop {
            let Some(n) = self.recv(false)? else { continue };
            for (s, kind, flags, payload) in messages(&self.rx[..n]) {
                if s != seq {
                    continue;
                }
                torn |= flags & NLM_F_DUMP_INTR != 0;
                let code = || payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap()));
                match kind {
                    NLMSG_DONE => {
                        if let Some(c) = code().filter(|c| *c < 0) {
                            let message = extack_message(payload, flags, false);
                            return Err(NetlinkError::Kernel { errno: -c, message });
                        }
                        return Ok((!torn).then_some(out));
                    }
                    NLMSG_ERROR => match code() {
                        Some(0) => {}
                        Some(c) => {
                            let message = extack_message(payload, flags, true);
                            return Err(NetlinkError::Kernel { errno: -c, message });
                        }
                        None => return Err(NetlinkError::Protocol("short NLMSG_ERROR".into())),
                    },
                    _ => out.push(payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }
}

/// The messages of a datagram: (sequence number, type, flags, payload).
fn messages(mut buf: &[u8]) -> impl Iterator<Item = (u32, u16, u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > buf.len() {
            buf = &[];
            return None;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let payload = &buf[16..len];
        buf = buf.get(align4(len)..).unwrap_or_default();
        Some((seq, kind, flags, payload))
    })
}
