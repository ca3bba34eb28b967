//! The UDP side: sockets bound with SO_REUSEPORT (one per worker), batched receive with
//! `recvmmsg` (+ UDP GRO: one read may carry many same-size datagrams) and batched send with
//! `sendmmsg` where consecutive same-size datagrams to one endpoint go out as one UDP GSO
//! message (`UDP_SEGMENT`). Buffers are allocated once per worker.
//!
//! Sockets are made, configured and bound through `nix`; the two batched calls are the
//! crate's only system calls made by hand (see the comments at each for why).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    self as sock, AddressFamily, MsgFlags, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
    sockopt,
};

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// Socket buffers: deep enough for a few GSO batches per worker.
const SOCK_BUF: usize = 4 << 20;
/// The most datagrams one GSO message may carry (the kernel's UDP_MAX_SEGMENTS is ≥ 64).
const MAX_GSO_SEGMENTS: usize = 64;
/// The most bytes one GSO message may carry (a UDP payload fits in 65507 bytes over IPv4).
const MAX_GSO_BYTES: usize = 65_000;
/// Space for one cmsg carrying an int.
const CMSG_SPACE: usize = 32;

/// A control-message buffer, aligned as `struct cmsghdr` needs (its widest field is a
/// `size_t`).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Ctrl([u8; CMSG_SPACE]);

/// `addr` in the kernel's layout (as `SockaddrStorage` it is read by its family).
fn to_storage(addr: &SocketAddr) -> SockaddrStorage {
    SockaddrStorage::from(*addr)
}

/// The exact length of `addr` in the kernel's layout.
fn sockaddr_len(addr: &SocketAddr) -> libc::socklen_t {
    let n = if addr.is_ipv4() { size_of::<libc::sockaddr_in>() } else { size_of::<libc::sockaddr_in6>() };
    n as libc::socklen_t
}

/// A kernel-written address (`None` for a family other than IPv4 and IPv6).
fn from_storage(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(sin) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*sin)));
    }
    let a = SocketAddrV6::from(*s.as_sockaddr_in6()?);
    // An IPv4 peer reaching the IPv6 socket is impossible (V6ONLY), but be tidy.
    match a.ip().to_ipv4_mapped() {
        Some(v4) => Some(SocketAddr::V4(SocketAddrV4::new(v4, a.port()))),
        None => Some(SocketAddr::V6(a)),
    }
}

/// An all-zero `mmsghdr`: no name, no buffers, no control. Built this way rather than as a
/// literal because `msghdr` has private padding fields on musl.
fn empty_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct of integers and raw pointers; all-zero is a valid
    // value of each (null pointers, zero lengths).
    unsafe { zeroed() }
}

/// A bound UDP socket and what the kernel let us switch on.
#[derive(Debug)]
pub(crate) struct UdpSocket {
    fd: OwnedFd,
    pub gro: bool,
    pub gso: bool,
}

impl UdpSocket {
    /// Binds `addr` with SO_REUSEPORT (every worker binds the same port), large buffers,
    /// and UDP GRO if `offload` and the kernel has it. Blocking: a full send buffer slows the
    /// sender down instead of dropping; receives pass MSG_DONTWAIT.
    pub fn bind(addr: SocketAddr, offload: bool) -> io::Result<UdpSocket> {
        let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        let fd = sock::socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
        sock::setsockopt(&fd, sockopt::ReusePort, &true)?;
        if addr.is_ipv6() {
            sock::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
        }
        // FORCE ignores rmem_max/wmem_max (read-only in a child netns); plain is the fallback.
        if sock::setsockopt(&fd, sockopt::RcvBufForce, &SOCK_BUF).is_err() {
            let _ = sock::setsockopt(&fd, sockopt::RcvBuf, &SOCK_BUF);
        }
        if sock::setsockopt(&fd, sockopt::SndBufForce, &SOCK_BUF).is_err() {
            let _ = sock::setsockopt(&fd, sockopt::SndBuf, &SOCK_BUF);
        }
        match addr {
            SocketAddr::V4(a) => sock::bind(fd.as_raw_fd(), &SockaddrIn::from(a))?,
            SocketAddr::V6(a) => sock::bind(fd.as_raw_fd(), &SockaddrIn6::from(a))?,
        }
        let gro = offload && sock::setsockopt(&fd, sockopt::UdpGroSegment, &true).is_ok();
        Ok(UdpSocket { fd, gro, gso: offload })
    }

    /// The bound port.
    pub fn local_port(&self) -> io::Result<u16> {
        let ss: SockaddrStorage = sock::getsockname(self.fd.as_raw_fd())?;
        from_storage(&ss).map(|a| a.port()).ok_or_else(|| io::Error::other("unknown address family"))
    }

    /// A second handle on the same socket (for the control path's sends).
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        Ok(UdpSocket { fd: self.fd.try_clone()?, gro: self.gro, gso: self.gso })
    }

    /// Sends one datagram.
    pub fn send_to(&self, buf: &[u8], dst: &SocketAddr) -> io::Result<()> {
        let raw = self.fd.as_raw_fd();
        let flags = MsgFlags::MSG_DONTWAIT;
        match *dst {
            SocketAddr::V4(a) => sock::sendto(raw, buf, &SockaddrIn::from(a), flags)?,
            SocketAddr::V6(a) => sock::sendto(raw, buf, &SockaddrIn6::from(a), flags)?,
        };
        Ok(())
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One received message: where from, the bytes, and the GRO segment size (0: one datagram).
pub(crate) struct Received<'a> {
    pub from: SocketAddr,
    pub data: &'a [u8],
    pub segment: usize,
}

impl<'a> Received<'a> {
    /// The datagrams it holds (GRO glued same-size datagrams from one sender together).
    pub fn datagrams(&self) -> std::slice::Chunks<'a, u8> {
        let seg = if self.segment == 0 { self.data.len().max(1) } else { self.segment };
        self.data.chunks(seg)
    }
}

/// Preallocated `recvmmsg` state.
pub(crate) struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    addrs: Vec<SockaddrStorage>,
    ctrl: Vec<Ctrl>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    count: usize,
}

impl RecvBatch {
    /// `n` messages of up to `slot` bytes each (64 KiB with GRO).
    pub fn new(n: usize, slot: usize) -> RecvBatch {
        RecvBatch {
            bufs: vec![0; n * slot],
            slot,
            // Overwritten by every receive; any address will do as the starting value.
            addrs: vec![to_storage(&SocketAddr::from(([0, 0, 0, 0], 0))); n],
            ctrl: vec![Ctrl([0; CMSG_SPACE]); n],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; n],
            hdrs: vec![empty_mmsghdr(); n],
            count: 0,
        }
    }

    /// Receives what is queued, without waiting; returns how many messages.
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.hdrs.len();
        // The pointers are set afresh each time: the Vecs never move, but this keeps the
        // self-references obviously valid.
        for i in 0..n {
            self.iovs[i] =
                libc::iovec { iov_base: self.bufs[i * self.slot..].as_mut_ptr().cast(), iov_len: self.slot };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut SockaddrStorage).cast();
            h.msg_namelen = size_of::<SockaddrStorage>() as _;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].0.as_mut_ptr().cast();
            h.msg_controllen = CMSG_SPACE as _;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // No safe API can do this without cost: nix's recvmmsg does not reset msg_namelen
        // and msg_controllen between calls (a reused batch would lose the GRO cmsg after a
        // message without one), socket2 has no recvmmsg, and one recvmsg per message is a
        // system call per message.
        // SAFETY: the n headers were just pointed at memory owned by self and not otherwise
        // borrowed until the call returns: each iovec at its own `slot` bytes of `bufs`
        // (in bounds: bufs is n * slot long), msg_name at a whole SockaddrStorage,
        // msg_control at a whole CMSG_SPACE-byte, 8-aligned Ctrl. The kernel writes at most
        // the stated lengths into each and nothing after returning.
        let rc = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as _,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = rc as usize;
        Ok(self.count)
    }

    /// Message `i` of the last `recv`; `None` for an unknown address family.
    pub fn get(&self, i: usize) -> Option<Received<'_>> {
        if i >= self.count {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(self.slot);
        let from = from_storage(&self.addrs[i])?;
        let ctrl = &self.ctrl[i].0;
        #[allow(clippy::unnecessary_cast)] // size_t on glibc, socklen_t on musl
        let controllen = h.msg_hdr.msg_controllen as usize;
        let segment = gro_segment(&ctrl[..controllen.min(CMSG_SPACE)]);
        Some(Received { from, data: &self.bufs[i * self.slot..i * self.slot + len], segment })
    }
}

// `struct cmsghdr` as bytes: where its fields are (cmsg_len is a size_t on glibc, a socklen_t
// and padding on musl) and CMSG_ALIGN (to the size of size_t on Linux, glibc and musl), so
// that control buffers are read and written as plain bytes.
const CMSG_HDR: usize = size_of::<libc::cmsghdr>();
const CMSG_LEN_AT: usize = std::mem::offset_of!(libc::cmsghdr, cmsg_len);
const CMSG_LEVEL_AT: usize = std::mem::offset_of!(libc::cmsghdr, cmsg_level);
const CMSG_TYPE_AT: usize = std::mem::offset_of!(libc::cmsghdr, cmsg_type);

/// CMSG_ALIGN (`None` past usize::MAX).
fn cmsg_align(n: usize) -> Option<usize> {
    n.checked_next_multiple_of(size_of::<usize>())
}

/// The size of `cmsghdr.cmsg_len` (4 or 8 bytes).
fn cmsg_len_size() -> usize {
    fn size_of_field<T, F>(_: impl Fn(&T) -> &F) -> usize {
        size_of::<F>()
    }
    size_of_field(|c: &libc::cmsghdr| &c.cmsg_len)
}

/// A native-endian int at `at` of a cmsg header's bytes (`h` is CMSG_HDR long).
fn cmsg_int(h: &[u8], at: usize) -> libc::c_int {
    libc::c_int::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]])
}

/// The UDP_GRO segment size in a control buffer (0: none). Parsed by hand rather than with
/// the libc macros so that no length in it, however wrong, is trusted past the buffer.
fn gro_segment(ctrl: &[u8]) -> usize {
    let Some(data_at) = cmsg_align(CMSG_HDR) else { return 0 };
    let len_size = cmsg_len_size();
    let mut segment = 0;
    let mut off = 0;
    while let Some(h) = ctrl.get(off..off + CMSG_HDR) {
        let l = &h[CMSG_LEN_AT..CMSG_LEN_AT + len_size];
        let len = match *l {
            [a, b, c, d] => u32::from_ne_bytes([a, b, c, d]) as usize,
            [a, b, c, d, e, f, g, i] => match usize::try_from(u64::from_ne_bytes([a, b, c, d, e, f, g, i])) {
                Ok(n) => n,
                Err(_) => break,
            },
            _ => break,
        };
        if len < CMSG_HDR || len > ctrl.len() - off {
            break;
        }
        if cmsg_int(h, CMSG_LEVEL_AT) == SOL_UDP
            && cmsg_int(h, CMSG_TYPE_AT) == UDP_GRO
            && len >= data_at + 4
            && let Some(v) = ctrl.get(off + data_at..off + data_at + 4)
        {
            segment = libc::c_int::from_ne_bytes([v[0], v[1], v[2], v[3]]).max(0) as usize;
        }
        match cmsg_align(len) {
            Some(next) => off += next,
            None => break,
        }
    }
    segment
}

/// Writes a UDP_SEGMENT control message carrying `seg` at the start of `buf`, laid out as
/// CMSG_FIRSTHDR/CMSG_DATA/CMSG_LEN would; returns its CMSG_SPACE (the msg_controllen).
fn put_udp_segment(buf: &mut [u8; CMSG_SPACE], seg: u16) -> usize {
    let data_at = CMSG_HDR.next_multiple_of(size_of::<usize>());
    let len = data_at + size_of::<u16>();
    let space = data_at + size_of::<u16>().next_multiple_of(size_of::<usize>());
    buf[..space].fill(0);
    match cmsg_len_size() {
        4 => buf[CMSG_LEN_AT..CMSG_LEN_AT + 4].copy_from_slice(&(len as u32).to_ne_bytes()),
        _ => buf[CMSG_LEN_AT..CMSG_LEN_AT + 8].copy_from_slice(&(len as u64).to_ne_bytes()),
    }
    buf[CMSG_LEVEL_AT..CMSG_LEVEL_AT + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
    buf[CMSG_TYPE_AT..CMSG_TYPE_AT + 4].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    buf[data_at..data_at + 2].copy_from_slice(&seg.to_ne_bytes());
    space
}

/// A run of datagrams laid end to end in the arena, all `seg` bytes but maybe the last.
#[derive(Clone, Copy)]
struct Run {
    dst: SocketAddr,
    start: usize,
    len: usize,
    seg: usize,
    count: usize,
}

/// Outgoing datagrams of one worker: written into `arena` by the encrypter, then sent with
/// as few system calls as possible.
pub(crate) struct SendBatch {
    arena: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    addrs: Vec<SockaddrStorage>,
    ctrl: Vec<Ctrl>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Indices into `runs` of the messages being sent (one address family at a time).
    sel: Vec<usize>,
    /// Datagrams sent and dropped (send errors) since the last `take_counts`.
    pub sent: u64,
    pub failed: u64,
}

impl SendBatch {
    pub fn new(arena: usize, max_runs: usize) -> SendBatch {
        SendBatch {
            arena: vec![0; arena],
            used: 0,
            runs: Vec::with_capacity(max_runs),
            // Each is set before it is sent from.
            addrs: vec![to_storage(&SocketAddr::from(([0, 0, 0, 0], 0))); max_runs],
            ctrl: vec![Ctrl([0; CMSG_SPACE]); max_runs],
            iovs: vec![libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; max_runs],
            hdrs: vec![empty_mmsghdr(); max_runs],
            sel: Vec::with_capacity(max_runs),
            sent: 0,
            failed: 0,
        }
    }

    /// Whether `need` bytes fit and another run can be started.
    pub fn has_room(&self, need: usize) -> bool {
        self.arena.len() - self.used >= need && self.runs.len() < self.runs.capacity()
    }

    /// The free part of the arena, to encrypt into.
    pub fn space(&mut self) -> &mut [u8] {
        &mut self.arena[self.used..]
    }

    /// Takes the first `len` bytes of `space()` as a datagram to `dst`.
    pub fn commit(&mut self, dst: SocketAddr, len: usize, gso: bool) {
        let len = len.min(self.arena.len() - self.used);
        if let Some(r) = self.runs.last_mut() {
            // Extend the run if GSO can carry it: same endpoint, same size as the others
            // (a shorter one ends the run), within the kernel's limits.
            let full = r.len == r.seg * r.count;
            if gso
                && r.dst == dst
                && full
                && len <= r.seg
                && r.count < MAX_GSO_SEGMENTS
                && r.len + len <= MAX_GSO_BYTES
            {
                r.len += len;
                r.count += 1;
                self.used += len;
                return;
            }
        }
        if self.runs.len() == self.runs.capacity() {
            self.failed += 1;
            return;
        }
        self.runs.push(Run { dst, start: self.used, len, seg: len, count: 1 });
        self.used += len;
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Sends everything: IPv4 runs on `v4`, IPv6 runs on `v6` (dropped when there is none).
    pub fn flush(&mut self, v4: &mut UdpSocket, v6: Option<&mut UdpSocket>) {
        if self.runs.is_empty() {
            return;
        }
        let has_v6 = self.runs.iter().any(|r| r.dst.is_ipv6());
        self.flush_family(v4, false);
        if has_v6 {
            match v6 {
                Some(s) => self.flush_family(s, true),
                None => {
                    self.failed +=
                        self.runs.iter().filter(|r| r.dst.is_ipv6()).map(|r| r.count as u64).sum::<u64>()
                }
            }
        }
        self.runs.clear();
        self.used = 0;
    }

    fn flush_family(&mut self, sock: &mut UdpSocket, v6: bool) {
        let mut n = 0;
        self.sel.clear();
        for (ri, r) in self.runs.iter().enumerate().filter(|(_, r)| r.dst.is_ipv6() == v6) {
            self.sel.push(ri);
            self.addrs[n] = to_storage(&r.dst);
            self.iovs[n] =
                libc::iovec { iov_base: self.arena[r.start..].as_mut_ptr().cast(), iov_len: r.len };
            let h = &mut self.hdrs[n].msg_hdr;
            h.msg_name = (&mut self.addrs[n] as *mut SockaddrStorage).cast();
            h.msg_namelen = sockaddr_len(&r.dst);
            h.msg_iov = &mut self.iovs[n];
            h.msg_iovlen = 1;
            h.msg_flags = 0;
            if r.count > 1 {
                let space = put_udp_segment(&mut self.ctrl[n].0, r.seg as u16);
                h.msg_control = self.ctrl[n].0.as_mut_ptr().cast();
                h.msg_controllen = space as _;
            } else {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
            }
            n += 1;
        }
        let mut off = 0;
        while off < n {
            // No safe API can do this without cost: nix's sendmmsg gives every message the
            // same cmsgs (each GSO run needs its own segment size, a single datagram none),
            // socket2 has no sendmmsg, and one sendmsg per run is a system call per run.
            // SAFETY: headers [off, n) were just pointed at memory owned by self and not
            // otherwise borrowed until the call returns: each iovec at its run's bytes of
            // the arena (start + len ≤ used ≤ arena.len()), msg_name at addrs[i] with the
            // exact length of its family, msg_control at ctrl[i] with a complete cmsg or
            // null with length 0. The kernel only reads them.
            let rc =
                unsafe { libc::sendmmsg(sock.as_raw_fd(), self.hdrs[off..].as_mut_ptr(), (n - off) as _, 0) };
            if rc > 0 {
                for i in off..off + rc as usize {
                    self.sent += self.runs[self.sel[i]].count as u64;
                }
                off += rc as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The message at `off` failed. A GSO message the kernel refuses (no GSO, or a
            // segment over the path MTU) goes out datagram by datagram instead.
            let r = self.runs[self.sel[off]];
            if r.count > 1 {
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EIO) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)
                ) {
                    sock.gso = false;
                }
                for chunk in self.arena[r.start..r.start + r.len].chunks(r.seg) {
                    match sock.send_to(chunk, &r.dst) {
                        Ok(()) => self.sent += 1,
                        Err(_) => self.failed += 1,
                    }
                }
            } else {
                self.failed += 1;
            }
            off += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(b: &SendBatch) -> Vec<(u16, usize, usize, usize)> {
        b.runs.iter().map(|r| (r.dst.port(), r.seg, r.count, r.len)).collect()
    }

    #[test]
    fn same_size_datagrams_to_one_endpoint_form_gso_runs() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let c: SocketAddr = "192.0.2.1:2".parse().unwrap();
        let mut b = SendBatch::new(1 << 20, 16);
        for _ in 0..3 {
            b.commit(a, 1000, true);
        }
        // A shorter one ends the run as its last member.
        b.commit(a, 500, true);
        b.commit(a, 1000, true);
        // Another endpoint, and a datagram that must not be glued.
        b.commit(c, 1000, true);
        b.commit(c, 1000, false);
        assert_eq!(
            runs(&b),
            vec![(1, 1000, 4, 3500), (1, 1000, 1, 1000), (2, 1000, 1, 1000), (2, 1000, 1, 1000)]
        );
    }

    #[test]
    fn runs_respect_kernel_limits() {
        let a: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut b = SendBatch::new(1 << 20, 16);
        for _ in 0..100 {
            b.commit(a, 100, true);
        }
        assert_eq!(runs(&b)[0].2, MAX_GSO_SEGMENTS);
        let mut b = SendBatch::new(1 << 20, 16);
        for _ in 0..60 {
            b.commit(a, 1472, true);
        }
        let r = runs(&b);
        assert!(r.iter().all(|r| r.3 <= MAX_GSO_BYTES), "{r:?}");
        assert_eq!(r.iter().map(|r| r.2).sum::<usize>(), 60);
        // When runs are exhausted, datagrams are counted as failed, not lost silently.
        let mut b = SendBatch::new(1 << 20, 1);
        b.commit(a, 100, false);
        b.commit(a, 100, false);
        assert_eq!(b.failed, 1);
        assert!(!b.has_room(10));
    }

    use proptest::prelude::*;

    /// A control buffer as the kernel writes it for UDP GRO, built with the libc macros.
    fn gro_cmsg(seg: libc::c_int) -> Ctrl {
        let mut ctrl = Ctrl([0; CMSG_SPACE]);
        // SAFETY: a zeroed msghdr is valid; it points at `ctrl` (CMSG_SPACE bytes,
        // 8-aligned), and the cmsg for one int (CMSG_SPACE(4), 24 bytes on 64-bit Linux) fits in it, so
        // CMSG_FIRSTHDR is non-null and every write stays inside `ctrl`.
        unsafe {
            let mut m: libc::msghdr = zeroed();
            m.msg_control = ctrl.0.as_mut_ptr().cast();
            m.msg_controllen = libc::CMSG_SPACE(size_of::<libc::c_int>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&m);
            (*c).cmsg_level = SOL_UDP;
            (*c).cmsg_type = UDP_GRO;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::c_int>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), seg);
        }
        ctrl
    }

    fn bytes(ctrl: &Ctrl) -> Vec<u8> {
        ctrl.0.to_vec()
    }

    #[test]
    fn udp_segment_cmsg_is_laid_out_as_the_libc_macros_do() {
        for seg in [0u16, 1, 1452, 0xffff] {
            let mut want = Ctrl([0; CMSG_SPACE]);
            let controllen;
            // SAFETY: a zeroed msghdr is valid; it points at `want` (CMSG_SPACE bytes,
            // 8-aligned), and the cmsg for a u16 (CMSG_SPACE(2), 24 bytes on 64-bit Linux)
            // fits in it, so CMSG_FIRSTHDR is non-null and every write stays inside `want`.
            unsafe {
                let mut m: libc::msghdr = zeroed();
                m.msg_control = want.0.as_mut_ptr().cast();
                m.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
                controllen = m.msg_controllen as usize;
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
            let mut got = Ctrl([0xaa; CMSG_SPACE]);
            assert_eq!(put_udp_segment(&mut got.0, seg), controllen);
            assert_eq!(got.0[..controllen], want.0[..controllen], "seg {seg}");
        }
    }

    #[test]
    fn gro_segment_from_a_kernel_style_cmsg() {
        assert_eq!(gro_segment(&bytes(&gro_cmsg(1452))), 1452);
        assert_eq!(gro_segment(&bytes(&gro_cmsg(-5))), 0, "a negative size is no size");
        assert_eq!(gro_segment(&[]), 0);
        // cmsg_len claiming more than the buffer, or less than a header: ignored.
        let hdr = size_of::<libc::cmsghdr>();
        for lie in [usize::MAX, CMSG_SPACE + 1, hdr - 1, 0, hdr] {
            let mut b = bytes(&gro_cmsg(1452));
            b[..size_of::<usize>()].copy_from_slice(&lie.to_ne_bytes());
            assert_eq!(gro_segment(&b), 0, "cmsg_len {lie}");
        }
        // A controllen cut short of the data.
        assert_eq!(gro_segment(&bytes(&gro_cmsg(1452))[..hdr + 2]), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn gro_segment_takes_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..80)) {
            let seg = gro_segment(&b);
            prop_assert!(seg <= i32::MAX as usize);
        }

        /// A whole `recvmmsg` result as a lying kernel could leave it: a length beyond the
        /// slot, any control length and bytes, any address family.
        #[test]
        fn recv_batch_get_is_bounded(
            msg_len in any::<u32>(),
            controllen in prop_oneof![0usize..=CMSG_SPACE, any::<usize>()],
            ctrl in proptest::array::uniform32(any::<u8>()),
            seg in prop_oneof![Just(None), any::<libc::c_int>().prop_map(Some)],
            family in prop_oneof![Just(libc::AF_INET), Just(libc::AF_INET6), any::<libc::c_int>()],
        ) {
            const SLOT: usize = 2048;
            let mut b = RecvBatch::new(2, SLOT);
            b.ctrl[0] = seg.map_or(Ctrl(ctrl), gro_cmsg);
            b.hdrs[0].msg_len = msg_len;
            b.hdrs[0].msg_hdr.msg_controllen = controllen as _;
            let ss = (&mut b.addrs[0] as *mut SockaddrStorage).cast::<libc::sockaddr_storage>();
            // SAFETY: SockaddrStorage is a repr(C) union with a sockaddr_storage member, so
            // the cast pointer is valid and aligned for it; ss_family is an integer field.
            unsafe { (*ss).ss_family = family as _ };
            b.count = 1;
            prop_assert!(b.get(1).is_none(), "only what was received");
            let Some(m) = b.get(0) else {
                prop_assert!(family != libc::AF_INET && family != libc::AF_INET6);
                return Ok(());
            };
            prop_assert_eq!(m.data.len(), (msg_len as usize).min(SLOT));
            let mut total = 0;
            for d in m.datagrams() {
                prop_assert!(!d.is_empty() && (m.segment == 0 || d.len() <= m.segment));
                total += d.len();
            }
            prop_assert_eq!(total, m.data.len());
        }
    }

    #[test]
    fn socket_addresses_roundtrip() {
        for s in ["192.0.2.7:51820", "[2001:db8::1]:4242"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(from_storage(&to_storage(&a)), Some(a));
        }
    }
}
