//! A synchronous rtnetlink handle bound to one network namespace.
//!
//! The socket belongs to the namespace it was created in, so a handle made with
//! [`Netlink::in_netns`] keeps acting there from any thread. Each call runs the request on a
//! small current-thread runtime: plugins are short-lived and sequential, and the daemon
//! calls this from its own reconciler thread.

use std::future::Future;

use rtnetlink::Handle;

use crate::error::{KernelError, Result};
use crate::netns::NetNs;

/// An rtnetlink connection in one namespace.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn current() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(KernelError::io("starting the netlink runtime"))?;
        let handle = {
            let _guard = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(KernelError::io("opening a netlink socket"))?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink { rt, handle })
    }

    /// A connection inside `ns` (the socket is created there; the caller does not move).
    pub fn in_netns(ns: &NetNs) -> Result<Self> {
        ns.run(Self::current)?
    }

    /// The async handle, for requests this module does not wrap.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs a request to completion.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// The errno of a netlink error, negative as the kernel sends it, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code()),
        _ => None,
    }
}

/// Maps a netlink error with what was being done.
pub(crate) fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, errno: errno(&source).map(|e| -e), source }
}
