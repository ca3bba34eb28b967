//! The blocking `NETLINK_ROUTE` socket under a [`super::Netlink`]: opened once, in the
//! namespace of the calling thread, and kept for every request made through the handle.

use std::io;
use std::os::fd::AsFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{setsockopt, sockopt};

/// The receive buffer asked for. A batch keeps a window of ACKs queued and a dump a few
/// 32 KiB chunks; the kernel only charges what is queued, so a generous limit costs nothing
/// until it is needed, and an overflow (ENOBUFS) loses replies.
const RCVBUF: usize = 4 << 20;

/// How one exchange reaches the kernel. [`super::conn::Conn`] is written against this so its
/// request/reply logic can be tested with scripted replies.
pub(crate) trait Transport {
    /// Sends one datagram (one or more netlink messages).
    fn send(&mut self, buf: &[u8]) -> io::Result<()>;

    /// Receives one datagram into `buf`'s spare capacity (after clearing it) and returns its
    /// full length, which is larger than `buf.len()` when the datagram was truncated. With
    /// `nonblocking`, an empty queue is `WouldBlock`.
    fn recv(&mut self, buf: &mut Vec<u8>, nonblocking: bool) -> io::Result<usize>;

    /// Starts watching rtnetlink multicast group `group` for changes, forgetting older ones.
    fn watch(&mut self, group: u32) -> io::Result<()>;

    /// Stops watching `group`; whether it changed since [`Transport::watch`] (a notification
    /// came, or so many that they overflowed the watcher).
    fn unwatch(&mut self, group: u32) -> bool;
}

/// The real socket, and a second one in the same namespace that joins a multicast group
/// during the dumps the kernel does not flag when they are torn.
#[derive(Debug)]
pub(crate) struct NlSocket {
    sock: Socket,
    watcher: Socket,
}

impl NlSocket {
    /// Opens a route socket in the calling thread's namespace, connected to the kernel (so
    /// only the kernel's unicasts reach it), with capped and extended ACKs.
    pub(crate) fn open() -> io::Result<Self> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // ACKs carry only the request's header (not the whole request): smaller, so a
        // window of them fits the queue. Extended ACKs add the kernel's reason to errors.
        // Both are optional (old kernels): the exchange works without them.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        // Root may go past net.core.rmem_max; anyone else gets what rmem_max allows.
        if setsockopt(&sock.as_fd(), sockopt::RcvBufForce, &RCVBUF).is_err() {
            setsockopt(&sock.as_fd(), sockopt::RcvBuf, &RCVBUF).map_err(io::Error::from)?;
        }
        let mut watcher = Socket::new(NETLINK_ROUTE)?;
        watcher.bind_auto()?;
        watcher.set_non_blocking(true)?;
        Ok(NlSocket { sock, watcher })
    }

    /// Reads everything the watcher has queued; whether there was anything (an overflow
    /// counts: it means there was a lot).
    fn drain_watcher(&mut self) -> bool {
        let mut buf = Vec::with_capacity(8192);
        let mut any = false;
        loop {
            buf.clear();
            match self.watcher.recv(&mut buf, 0) {
                Ok(_) => any = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(_) => return true,
            }
        }
    }
}

impl Transport for NlSocket {
    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        loop {
            match self.sock.send(buf, 0) {
                Ok(n) if n == buf.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!("netlink send took {n} of {} bytes", buf.len())));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recv(&mut self, buf: &mut Vec<u8>, nonblocking: bool) -> io::Result<usize> {
        // MSG_TRUNC: the return value is the datagram's real length, so a truncation shows.
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            buf.clear();
            match self.sock.recv(buf, flags) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn watch(&mut self, group: u32) -> io::Result<()> {
        self.watcher.add_membership(group)?;
        self.drain_watcher();
        Ok(())
    }

    fn unwatch(&mut self, group: u32) -> bool {
        let changed = self.drain_watcher();
        // Failing to leave would only cost spurious "changed" answers later.
        let _ = self.watcher.drop_membership(group);
        self.drain_watcher();
        changed
    }
}
