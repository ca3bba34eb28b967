//! Connectivity checks between test hosts, each bounded in time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::TestNs;

/// Whether `from` gets an answer to one ping to `to` within `timeout_secs`.
pub fn ping(from: &TestNs, to: &str, timeout_secs: u32) -> bool {
    let wait = timeout_secs.max(1).to_string();
    from.try_exec(&["ping", "-c", "1", "-W", &wait, to])
}

/// A TCP echo server listening inside a namespace until dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr` (e.g. `10.0.0.2:7000`, or port 0 for any) inside `ns`.
    pub fn start(ns: &TestNs, addr: &str) -> Self {
        let addr: SocketAddr = addr.parse().expect("a socket address");
        // The socket belongs to the namespace it is created in: create it there.
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("listening on {addr} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("bound address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = [0u8; 64 * 1024];
                        while let Ok(n) = conn.read(&mut buf) {
                            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        EchoServer { addr, stop, thread: Some(thread) }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `from` to `to`, sends `bytes` bytes and reads them back, all within
/// `timeout`. Returns the number of bytes echoed, or the error.
pub fn tcp_echo(from: &TestNs, to: SocketAddr, bytes: usize, timeout: Duration) -> std::io::Result<usize> {
    let mut conn = from.run(|| TcpStream::connect_timeout(&to, timeout))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    let payload: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = conn.try_clone()?;
        let payload = payload.clone();
        std::thread::spawn(move || w.write_all(&payload))
    };
    let mut got = vec![0u8; bytes];
    conn.read_exact(&mut got)?;
    writer.join().map_err(|_| std::io::Error::other("writer panicked"))??;
    if got != payload {
        return Err(std::io::Error::other("echoed bytes differ"));
    }
    Ok(bytes)
}
