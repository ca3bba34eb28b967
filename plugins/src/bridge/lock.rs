//! A lock per bridge, so that an ADD that creates a bridge (and may have to remove it again)
//! never races another ADD on the same bridge.
//!
//! The lock is an abstract unix socket bound to `ferrocni/bridge/<name>`: abstract sockets
//! belong to the network namespace, so bridges of the same name on different hosts (test
//! namespaces) do not share a lock; the kernel releases it when the process ends, however it
//! ends; and it leaves no file behind.

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::{Duration, Instant};

use super::error::BridgeError;

/// How long an ADD waits for another ADD on the same bridge.
pub const WAIT: Duration = Duration::from_secs(60);

/// Held while an ADD changes a bridge; released on drop.
#[derive(Debug)]
pub struct BridgeLock {
    _socket: UnixListener,
}

impl BridgeLock {
    /// Takes the lock of `bridge` (in the current network namespace), waiting up to `wait`;
    /// code 11 (try again later) if it stays taken.
    pub fn acquire(bridge: &str, wait: Duration) -> Result<BridgeLock, BridgeError> {
        let name = format!("ferrocni/bridge/{bridge}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| BridgeError::Conflict(format!("locking bridge {bridge:?}: {e}")))?;
        let deadline = Instant::now() + wait;
        let mut pause = Duration::from_millis(1);
        loop {
            match UnixListener::bind_addr(&addr) {
                Ok(socket) => return Ok(BridgeLock { _socket: socket }),
                Err(e) if e.kind() == ErrorKind::AddrInUse => {
                    if Instant::now() >= deadline {
                        return Err(BridgeError::Busy(bridge.to_string()));
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(BridgeError::Conflict(format!("locking bridge {bridge:?}: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time() {
        let name = format!("locktest{}", std::process::id());
        let held = BridgeLock::acquire(&name, WAIT).unwrap();
        let e = BridgeLock::acquire(&name, Duration::from_millis(30)).unwrap_err();
        assert!(matches!(e, BridgeError::Busy(_)), "{e}");
        drop(held);
        BridgeLock::acquire(&name, Duration::from_millis(30)).unwrap();
    }
}
