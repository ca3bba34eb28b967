//! A synchronous rtnetlink handle bound to one network namespace.
//!
//! A [`Netlink`] is one `NETLINK_ROUTE` socket (and an idle second one that only listens
//! for change announcements during some dumps), created in the namespace of the thread that
//! made it, so a handle made with [`Netlink::in_netns`] keeps acting there from any thread.
//! It is meant to be kept: every call reuses the socket (no runtime, no background task),
//! which suits the short-lived plugins and the daemon's reconciler alike. Dumps are repeated
//! when the kernel flags them torn (`NLM_F_DUMP_INTR`), or, for the tables it does not flag,
//! when a change was announced while they were read, so a listing is one consistent pass
//! over the table.

mod conn;
mod error;
mod socket;
#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};

use netlink_packet_route::RouteNetlinkMessage;

use self::conn::Conn;
pub(crate) use self::conn::{Request, extack_message};
pub use self::error::NetlinkError;
use self::socket::NlSocket;
use crate::error::{KernelError, Result};
use crate::netns::NetNs;

/// The `NLM_F_*` flags of each kind of request, as rtnetlink 0.24 (which this layer used to
/// be built on) sent them.
pub(crate) mod flags {
    use netlink_packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    };

    /// Create; EEXIST if it is there.
    pub(crate) const ADD: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    /// Create or replace.
    pub(crate) const REPLACE: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
    /// `RTM_SETLINK` (the kernel ignores the create flags there).
    pub(crate) const SET: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    /// Delete, or change without creating.
    pub(crate) const ACK: u16 = NLM_F_REQUEST | NLM_F_ACK;
    /// List.
    pub(crate) const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;
    /// Read one object.
    pub(crate) const GET: u16 = NLM_F_REQUEST;
}

/// How many requests [`Netlink::batch`] puts in one datagram (and so how many ACKs wait in
/// the receive queue at once).
const WINDOW: usize = 128;

/// An rtnetlink connection in one namespace.
pub struct Netlink {
    // A mutex rather than `&mut self` methods: the handle is shared between threads (it is
    // `Send + Sync`), and one exchange at a time keeps replies in order on the socket.
    conn: Mutex<Conn<NlSocket>>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn current() -> Result<Self> {
        let sock = NlSocket::open().map_err(KernelError::io("opening a netlink socket"))?;
        Ok(Netlink { conn: Mutex::new(Conn::new(sock)) })
    }

    /// A connection inside `ns` (the socket is created there; the caller does not move).
    pub fn in_netns(ns: &NetNs) -> Result<Self> {
        ns.run(Self::current)?
    }

    /// How many dumps this handle had to repeat because the kernel flagged them
    /// interrupted (or their replies overflowed the socket).
    pub fn dump_retries(&self) -> u64 {
        self.lock().dump_retries
    }

    fn lock(&self) -> MutexGuard<'_, Conn<NlSocket>> {
        // A panic in another thread mid-exchange leaves at worst stale replies queued, which
        // the next exchange skips by sequence number.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a request with `NLM_F_ACK` and waits for the kernel's answer.
    pub(crate) fn ack(&self, req: Request) -> std::result::Result<(), NetlinkError> {
        self.lock().ack(&req)
    }

    /// Asks for one object (not a dump).
    pub(crate) fn get(&self, req: Request) -> std::result::Result<RouteNetlinkMessage, NetlinkError> {
        self.lock().get(&req)
    }

    /// Runs a dump; the result is one pass that the kernel did not flag as interrupted.
    pub(crate) fn dump(&self, req: Request) -> std::result::Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.lock().dump(&req, None)
    }

    /// Runs a dump of a table whose torn dumps the kernel does not flag; a change announced
    /// on multicast group `group` during a dump of several parts interrupts it.
    pub(crate) fn dump_watching(
        &self,
        req: Request,
        group: u32,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.lock().dump(&req, Some(group))
    }

    /// Sends idempotent requests with `NLM_F_ACK`, many per datagram; one result per request.
    pub(crate) fn batch(&self, reqs: &[Request]) -> Vec<std::result::Result<(), NetlinkError>> {
        self.lock().batch(reqs, WINDOW)
    }
}

/// Maps a netlink error with what was being done.
pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, errno: source.errno(), source }
}
