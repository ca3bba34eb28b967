//! ICMP echo probes: does a round trip to each of a set of addresses work right now?
//!
//! The overlay daemon uses it to confirm, before it calls itself ready, that its peers can
//! answer it: a reply proves the whole path in both directions (our route, neighbour and
//! FDB entry for the peer, and the peer's for us), which no store acknowledgement can.
//! One raw socket per source address (root or `CAP_NET_RAW`); echo requests carry an
//! identifier of this call, and a reply counts only when it comes from the address probed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockProtocol, SockType, SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage,
    bind, recvfrom, sendto, setsockopt, socket, sockopt,
};

use crate::error::{KernelError, Result};

/// One address to probe, and the local address to send from (`None`: the kernel picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EchoTarget {
    /// Source address; must be ours (our end of the path being checked).
    pub src: Option<IpAddr>,
    /// The address that must answer.
    pub dst: IpAddr,
}

/// How a probe round went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoOutcome {
    /// Per target (same order as given): whether it answered.
    pub answered: Vec<bool>,
    /// Echo requests sent in all.
    pub sent: usize,
}

impl EchoOutcome {
    /// The targets that never answered.
    pub fn silent<'a>(&'a self, targets: &'a [EchoTarget]) -> impl Iterator<Item = &'a EchoTarget> {
        targets.iter().zip(&self.answered).filter(|(_, a)| !**a).map(|(t, _)| t)
    }
}

const ICMP_ECHO: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;
/// Requests sent before the socket is drained of replies, so a large probe does not overrun
/// the receive buffer.
const SEND_BURST: usize = 256;

/// An ICMP echo request: type, code 0, checksum (IPv4 only: the kernel computes ICMPv6's),
/// identifier, sequence, 8 bytes of payload.
fn echo_request(v6: bool, id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = if v6 { ICMP6_ECHO } else { ICMP_ECHO };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"ferrocni");
    if !v6 {
        let sum = internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// RFC 1071 checksum.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 =
        data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The identifier of an echo reply in what a raw socket delivered (IPv4: with its IP
/// header; IPv6: the ICMPv6 message alone), if it is one.
fn reply_id(v6: bool, packet: &[u8]) -> Option<u16> {
    let icmp = if v6 {
        packet
    } else {
        let ihl = usize::from(*packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    };
    let want = if v6 { ICMP6_ECHO_REPLY } else { ICMP_ECHO_REPLY };
    (icmp.len() >= 8 && icmp[0] == want && icmp[1] == 0).then(|| u16::from_be_bytes([icmp[4], icmp[5]]))
}

struct Prober {
    fd: OwnedFd,
    v6: bool,
    /// Target indices by the address that must answer.
    by_dst: HashMap<IpAddr, Vec<usize>>,
}

impl Prober {
    fn open(src: Option<IpAddr>, v6: bool) -> Result<Self> {
        let (family, proto) = if v6 {
            (AddressFamily::Inet6, SockProtocol::IcmpV6)
        } else {
            (AddressFamily::Inet, SockProtocol::Icmp)
        };
        let fd = socket(family, SockType::Raw, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, proto)
            .map_err(KernelError::sys("opening a raw ICMP socket"))?;
        // Many peers answer at once; as root the buffer may exceed rmem_max.
        let size = 4 << 20;
        if setsockopt(&fd, sockopt::RcvBufForce, &size).is_err() {
            let _ = setsockopt(&fd, sockopt::RcvBuf, &size);
        }
        match src {
            Some(a) => bind(fd.as_raw_fd(), &*sockaddr(a)),
            None => Ok(()),
        }
        .map_err(KernelError::sys(format!("binding the probe socket to {src:?}")))?;
        Ok(Prober { fd, v6, by_dst: HashMap::new() })
    }

    fn send(&self, dst: IpAddr, id: u16, seq: u16) {
        let packet = echo_request(self.v6, id, seq);
        // A send can fail for one target (no route yet, EHOSTUNREACH): it stays silent and is
        // tried again next round.
        let _ = sendto(self.raw(), &packet, &*sockaddr(dst), nix::sys::socket::MsgFlags::empty());
    }

    /// Reads every queued packet; marks the targets whose reply came.
    fn drain(&self, id: u16, answered: &mut [bool]) {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = recvfrom::<SockaddrStorage>(self.raw(), &mut buf) {
            let Some(from) = from.as_ref().and_then(source_ip) else { continue };
            if reply_id(self.v6, &buf[..n]) != Some(id) {
                continue;
            }
            for &i in self.by_dst.get(&from).into_iter().flatten() {
                answered[i] = true;
            }
        }
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A socket address for `ip` with port 0 (raw sockets have no ports).
fn sockaddr(ip: IpAddr) -> Box<dyn SockaddrLike> {
    match ip {
        IpAddr::V4(a) => Box::new(SockaddrIn::from(std::net::SocketAddrV4::new(a, 0))),
        IpAddr::V6(a) => Box::new(SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0))),
    }
}

fn source_ip(s: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    s.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}

/// Sends an echo request to every target, again every `interval` to those that have not
/// answered, until all have or `deadline` has passed. Runs in the calling thread's network
/// namespace and blocks.
pub fn echo_all(targets: &[EchoTarget], interval: Duration, deadline: Duration) -> Result<EchoOutcome> {
    let mut out = EchoOutcome { answered: vec![false; targets.len()], sent: 0 };
    if targets.is_empty() {
        return Ok(out);
    }
    // Different for every call, so a late reply to an earlier probe is never counted.
    let id = (std::process::id() as u16) ^ next_call();
    let mut probers: Vec<(Option<IpAddr>, bool, Prober)> = Vec::new();
    let mut which = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        let v6 = t.dst.is_ipv6();
        let pos = match probers.iter().position(|(s, f, _)| *s == t.src && *f == v6) {
            Some(p) => p,
            None => {
                probers.push((t.src, v6, Prober::open(t.src, v6)?));
                probers.len() - 1
            }
        };
        probers[pos].2.by_dst.entry(t.dst).or_default().push(i);
        which.push(pos);
    }
    let start = Instant::now();
    let mut round = 0u16;
    loop {
        let mut burst = 0;
        for (i, t) in targets.iter().enumerate() {
            if out.answered[i] {
                continue;
            }
            let p = &probers[which[i]].2;
            p.send(t.dst, id, round.wrapping_mul(4096).wrapping_add(i as u16));
            out.sent += 1;
            burst += 1;
            if burst % SEND_BURST == 0 {
                for (_, _, p) in &probers {
                    p.drain(id, &mut out.answered);
                }
            }
        }
        round = round.wrapping_add(1);
        let next_round = Instant::now() + interval;
        loop {
            for (_, _, p) in &probers {
                p.drain(id, &mut out.answered);
            }
            if out.answered.iter().all(|a| *a) {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= start + deadline {
                return Ok(out);
            }
            if now >= next_round {
                break;
            }
            let wait = (next_round.min(start + deadline) - now).as_millis().clamp(1, 1000) as u16;
            let mut fds: Vec<PollFd> =
                probers.iter().map(|(_, _, p)| PollFd::new(p.fd.as_fd(), PollFlags::POLLIN)).collect();
            poll(&mut fds, PollTimeout::from(wait)).map_err(KernelError::sys("waiting for echo replies"))?;
        }
    }
}

fn next_call() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static CALLS: AtomicU16 = AtomicU16::new(0);
    CALLS.fetch_add(0x9e37, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // `ping` would send this request (id 0x1234, seq 1, payload "ferrocni"): the sum of the
        // whole message with its checksum in place folds to zero.
        let p = echo_request(false, 0x1234, 1);
        assert_eq!(internet_checksum(&p), 0);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 1]);
        // ICMPv6: the kernel fills the checksum in.
        let p6 = echo_request(true, 7, 2);
        assert_eq!((p6[0], p6[2], p6[3]), (ICMP6_ECHO, 0, 0));
    }

    #[test]
    fn replies_are_recognised_and_nothing_else() {
        let mut v4 = vec![0x45u8; 20];
        v4.extend_from_slice(&[ICMP_ECHO_REPLY, 0, 0, 0, 0xab, 0xcd, 0, 1]);
        assert_eq!(reply_id(false, &v4), Some(0xabcd));
        let mut request = v4.clone();
        request[20] = ICMP_ECHO;
        assert_eq!(reply_id(false, &request), None);
        assert_eq!(reply_id(false, &v4[..25]), None, "truncated");
        assert_eq!(reply_id(false, &[]), None);
        assert_eq!(reply_id(false, &[0x4f; 10]), None, "header longer than the packet");
        assert_eq!(reply_id(true, &[ICMP6_ECHO_REPLY, 0, 0, 0, 0, 9, 0, 0]), Some(9));
        assert_eq!(reply_id(true, &[ICMP6_ECHO_REPLY, 1, 0, 0, 0, 9, 0, 0]), None, "code must be 0");
    }

    #[test]
    fn no_targets_is_an_immediate_answer() {
        let o = echo_all(&[], Duration::from_millis(10), Duration::from_secs(5)).unwrap();
        assert_eq!(o, EchoOutcome::default());
    }
}
