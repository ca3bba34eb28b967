//! A stand-in for overlayd's `GET /v1/cni` on a unix socket, for the vxlan plugin's input
//! tests (hostile.rs, no_panic.rs): always ready, one fixed subnet.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;

use serde_json::json;

/// Serves the socket at `path` from a thread until the test process ends.
pub fn serve(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            // The whole request head, as a real server reads it before answering.
            let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = json!({"ready": true, "subnet": "10.87.3.0/24", "network": "10.87.0.0/16",
                "mtu": 1450, "ip_masq": true})
            .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}
