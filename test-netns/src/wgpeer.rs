//! A standard WireGuard peer for interop tests and benchmarks: Debian's `wireguard-go`,
//! configured with `wg` and `ip`, inside a test namespace.
//!
//! ```no_run
//! use test_netns::{TestNs, WgGoPeer, veth_between};
//! let (a, b) = (TestNs::new("a"), TestNs::new("b"));
//! veth_between(&a, "ul", &b, "ul");
//! a.add_address("ul", "192.0.2.1/24");
//! b.add_address("ul", "192.0.2.2/24");
//! let (pa, pb) = (WgGoPeer::start(&a, 51820).unwrap(), WgGoPeer::start(&b, 51820).unwrap());
//! pa.set_peer(pb.public_key(), Some("192.0.2.2:51820"), &["10.9.0.2/32"], None).unwrap();
//! pb.set_peer(pa.public_key(), Some("192.0.2.1:51820"), &["10.9.0.1/32"], None).unwrap();
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use netkernel::NetNs;

use crate::TestNs;

/// Where wireguard-go puts its UAPI sockets. It is a path in the mount namespace, so it is
/// shared by every network namespace on the machine.
pub const UAPI_DIR: &str = "/var/run/wireguard";

/// Device names are `tw<pid>-<n>`: unique per process and per device, and the pid lets a
/// later process recognise sockets left by a killed one.
const DEV_PREFIX: &str = "tw";

/// Interface names are limited to IFNAMSIZ - 1.
const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running `wireguard-go -f <dev>` in a namespace, with its key. Dropping it stops the
/// process and removes the device and its UAPI socket.
#[derive(Debug)]
pub struct WgGoPeer {
    dev: String,
    ns: NetNs,
    ns_name: String,
    child: Option<Child>,
    private_key: String,
    public_key: String,
    log: tempfile::NamedTempFile,
}

/// One peer as `wg show <dev> dump` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerStatus {
    /// Base64 public key.
    pub public_key: String,
    /// `ip:port`, if known.
    pub endpoint: Option<String>,
    /// The allowed IPs, as CIDRs.
    pub allowed_ips: Vec<String>,
    /// When the last handshake completed (none yet: `None`).
    pub latest_handshake: Option<SystemTime>,
    /// Bytes received from this peer (on the wire, including WireGuard overhead).
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
    /// Persistent keepalive interval in seconds, if set.
    pub keepalive: Option<u16>,
}

/// The device as `wg show <dev> dump` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgShow {
    /// Base64 public key of the device.
    pub public_key: String,
    /// UDP port it listens on.
    pub listen_port: u16,
    /// Its peers.
    pub peers: Vec<WgPeerStatus>,
}

impl WgShow {
    /// The peer with public key `key`.
    pub fn peer(&self, key: &str) -> Option<&WgPeerStatus> {
        self.peers.iter().find(|p| p.public_key == key)
    }
}

impl WgGoPeer {
    /// Starts wireguard-go in `ns` with a fresh key (`wg genkey`), listening on UDP
    /// `listen_port` (0: a port of the kernel's choice, see [`WgShow::listen_port`]).
    pub fn start(ns: &TestNs, listen_port: u16) -> Result<Self, String> {
        let key = wg_tool(&["genkey"], None)?;
        Self::start_with_key(ns, listen_port, key.trim())
    }

    /// Like [`WgGoPeer::start`] with a given base64 private key.
    pub fn start_with_key(ns: &TestNs, listen_port: u16, private_key: &str) -> Result<Self, String> {
        sweep_stale_sockets();
        let public_key = wg_tool(&["pubkey"], Some(private_key))?.trim().to_string();
        let dev = device_name(std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let log = tempfile::Builder::new()
            .prefix(&format!("wireguard-go-{dev}."))
            .suffix(".log")
            .tempfile()
            .map_err(|e| format!("a log file for wireguard-go: {e}"))?;
        let netns = NetNs::open(ns.path()).map_err(|e| format!("opening {}: {e}", ns.name()))?;
        let program = std::env::var("WIREGUARD_GO").unwrap_or_else(|_| "wireguard-go".into());
        let stderr = log.reopen().map_err(|e| e.to_string())?;
        let child = netns
            .command(&program)
            .args(["-f", &dev])
            .env("LOG_LEVEL", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {program} (apt-get install wireguard-go): {e}"))?;
        let mut peer = WgGoPeer {
            dev,
            ns: netns,
            ns_name: ns.name().to_string(),
            child: Some(child),
            private_key: private_key.to_string(),
            public_key,
            log,
        };
        // From here on, Drop cleans up whatever went wrong.
        peer.wait_ready(Duration::from_secs(10))?;
        let port = listen_port.to_string();
        // The key goes through stdin, not a file or argv, so it is never on disk or in ps.
        peer.wg_stdin(&["set", &peer.dev, "private-key", "/dev/stdin", "listen-port", &port], private_key)?;
        Ok(peer)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            // The socket comes last: wireguard-go creates the TUN device first.
            if self.socket_path().exists() && self.ip_ok(&["link", "show", "dev", &self.dev]) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("wireguard-go {} exited ({status}): {}", self.dev, self.log_text()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "wireguard-go {} not ready after {limit:?} in {}: {}",
                    self.dev,
                    self.ns_name,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The device name (unique on the machine while this peer lives).
    pub fn device(&self) -> &str {
        &self.dev
    }

    /// The base64 public key.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The base64 private key.
    pub fn private_key(&self) -> &str {
        &self.private_key
    }

    /// The wireguard-go process id (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The UAPI socket of the device.
    pub fn socket_path(&self) -> PathBuf {
        PathBuf::from(UAPI_DIR).join(format!("{}.sock", self.dev))
    }

    /// What wireguard-go has logged so far (errors only).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default().trim().to_string()
    }

    /// Adds or updates a peer: `wg set <dev> peer KEY [endpoint E] allowed-ips A,B
    /// [persistent-keepalive N]`. The allowed IPs replace the peer's previous ones.
    pub fn set_peer(
        &self,
        public_key: &str,
        endpoint: Option<&str>,
        allowed_ips: &[&str],
        keepalive: Option<u16>,
    ) -> Result<(), String> {
        let allowed = allowed_ips.join(",");
        let keepalive = keepalive.map(|k| k.to_string());
        let mut argv = vec!["set", &self.dev, "peer", public_key, "allowed-ips", &allowed];
        if let Some(e) = endpoint {
            argv.extend(["endpoint", e]);
        }
        if let Some(k) = &keepalive {
            argv.extend(["persistent-keepalive", k]);
        }
        self.wg(&argv).map(drop)
    }

    /// Removes a peer.
    pub fn remove_peer(&self, public_key: &str) -> Result<(), String> {
        self.wg(&["set", &self.dev, "peer", public_key, "remove"]).map(drop)
    }

    /// `ip addr add <cidr> dev <dev>`.
    pub fn add_address(&self, cidr: &str) -> Result<(), String> {
        self.ip(&["addr", "add", cidr, "dev", &self.dev])
    }

    /// Sets the MTU and brings the device (and `lo`) up.
    pub fn up(&self, mtu: u32) -> Result<(), String> {
        self.ip(&["link", "set", "dev", &self.dev, "mtu", &mtu.to_string(), "up"])?;
        self.ip(&["link", "set", "dev", "lo", "up"])
    }

    /// `ip route replace <subnet> dev <dev>`: traffic to `subnet` goes through the tunnel.
    pub fn route(&self, subnet: &str) -> Result<(), String> {
        self.ip(&["route", "replace", subnet, "dev", &self.dev])
    }

    /// `wg show <dev> dump`, parsed.
    pub fn show(&self) -> Result<WgShow, String> {
        parse_dump(&self.wg(&["show", &self.dev, "dump"])?)
    }

    /// Waits until a handshake with `public_key` has completed. A handshake only happens
    /// when there is traffic (or a keepalive), so send some first.
    pub fn wait_handshake(&self, public_key: &str, limit: Duration) -> Result<WgPeerStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            let show = self.show()?;
            if let Some(p) = show.peer(public_key).filter(|p| p.latest_handshake.is_some()) {
                return Ok(p.clone());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no handshake on {} with {public_key} after {limit:?}: {show:?}",
                    self.dev
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wg(&self, argv: &[&str]) -> Result<String, String> {
        run(self.ns.command("wg").args(argv), None, &self.ns_name)
    }

    fn wg_stdin(&self, argv: &[&str], input: &str) -> Result<String, String> {
        run(self.ns.command("wg").args(argv), Some(input), &self.ns_name)
    }

    fn ip(&self, argv: &[&str]) -> Result<(), String> {
        run(self.ns.command("ip").args(argv), None, &self.ns_name).map(drop)
    }

    fn ip_ok(&self, argv: &[&str]) -> bool {
        self.ns.command("ip").args(argv).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for WgGoPeer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM first: wireguard-go then closes the device and unlinks its socket.
            // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        // After a SIGKILL (or a crash) these may be left; never panic in drop.
        if self.ip_ok(&["link", "show", "dev", &self.dev]) {
            let _ = self.ns.command("ip").args(["link", "del", "dev", &self.dev]).output();
        }
        let sock = self.socket_path();
        if let Err(e) = std::fs::remove_file(&sock)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("test-netns: could not remove {}: {e}", sock.display());
        }
    }
}

/// `tw<pid>-<n>`, which must fit in an interface name.
fn device_name(pid: u32, n: u32) -> String {
    let name = format!("{DEV_PREFIX}{pid}-{n}");
    assert!(name.len() <= IFNAME_MAX, "device name {name} is longer than {IFNAME_MAX} characters");
    name
}

/// Runs a command (with `input` on stdin) and returns stdout, or an error with stderr.
fn run(cmd: &mut Command, input: Option<&str>, ns_name: &str) -> Result<String, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{what} in {ns_name}: {e}"))?;
    if let Some(input) = input {
        // Dropping stdin after the write closes it, so the tool sees EOF.
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(input.as_bytes()).map_err(|e| format!("{what}: writing stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("{what} in {ns_name}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} in {ns_name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `wg genkey` / `wg pubkey`: these need no namespace.
fn wg_tool(argv: &[&str], input: Option<&str>) -> Result<String, String> {
    run(Command::new("wg").args(argv), input, "the root namespace")
        .map_err(|e| format!("{e} (apt-get install wireguard-tools)"))
}

/// Parses `wg show <dev> dump`: a line for the device (private key, public key, listen
/// port, fwmark), then one per peer (public key, preshared key, endpoint, allowed ips,
/// latest handshake, rx, tx, persistent keepalive), tab-separated.
pub fn parse_dump(text: &str) -> Result<WgShow, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let dev: Vec<&str> = lines.next().ok_or("empty wg dump")?.split('\t').collect();
    if dev.len() != 4 {
        return Err(format!("unexpected device line in wg dump: {dev:?}"));
    }
    let listen_port = dev[2].parse().map_err(|e| format!("listen port {:?}: {e}", dev[2]))?;
    let none = |s: &str| if s == "(none)" || s == "off" { None } else { Some(s.to_string()) };
    let num = |s: &str, what: &str| s.parse::<u64>().map_err(|e| format!("{what} {s:?} in wg dump: {e}"));
    let mut peers = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 8 {
            return Err(format!("unexpected peer line in wg dump: {f:?}"));
        }
        let hs = num(f[4], "latest handshake")?;
        peers.push(WgPeerStatus {
            public_key: f[0].to_string(),
            endpoint: none(f[2]),
            allowed_ips: none(f[3]).map(|a| a.split(',').map(str::to_string).collect()).unwrap_or_default(),
            latest_handshake: (hs != 0).then(|| UNIX_EPOCH + Duration::from_secs(hs)),
            rx_bytes: num(f[5], "rx")?,
            tx_bytes: num(f[6], "tx")?,
            keepalive: none(f[7])
                .map(|k| k.parse().map_err(|e| format!("keepalive {k:?}: {e}")))
                .transpose()?,
        });
    }
    Ok(WgShow { public_key: dev[1].to_string(), listen_port, peers })
}

/// Removes UAPI sockets of our devices whose process is gone (a killed test run), once per
/// process: wireguard-go would reuse a stale socket, but the directory should not fill up.
fn sweep_stale_sockets() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(UAPI_DIR) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_suffix(".sock")
                .and_then(|n| n.strip_prefix(DEV_PREFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ping, veth_between};

    #[test]
    fn device_names_fit() {
        // The largest pid Linux hands out (pid_max up to 2^22) and a large counter.
        assert_eq!(device_name(4_194_304, 99_999), "tw4194304-99999");
        assert!(device_name(1, 0).len() <= IFNAME_MAX);
    }

    #[test]
    fn dump_parses() {
        let text = "cHJpdg==\tcHVi\t51820\toff\n\
                    cGVlcg==\t(none)\t192.0.2.2:51820\t10.9.0.2/32,10.9.1.0/24\t1764133200\t1234\t5678\t25\n\
                    cGVlcjI=\t(none)\t(none)\t(none)\t0\t0\t0\toff\n";
        let s = parse_dump(text).unwrap();
        assert_eq!((s.public_key.as_str(), s.listen_port), ("cHVi", 51820));
        let p = s.peer("cGVlcg==").unwrap();
        assert_eq!(p.endpoint.as_deref(), Some("192.0.2.2:51820"));
        assert_eq!(p.allowed_ips, ["10.9.0.2/32", "10.9.1.0/24"]);
        assert_eq!(p.latest_handshake, Some(UNIX_EPOCH + Duration::from_secs(1_764_133_200)));
        assert_eq!((p.rx_bytes, p.tx_bytes, p.keepalive), (1234, 5678, Some(25)));
        let q = s.peer("cGVlcjI=").unwrap();
        assert_eq!(
            (&q.endpoint, q.allowed_ips.len(), q.latest_handshake, q.keepalive),
            (&None, 0, None, None)
        );
        assert!(parse_dump("").is_err());
    }

    /// Two namespaces on a veth "underlay", a wireguard-go device in each: ping through the
    /// tunnel, the handshake and the counters show up, and everything is gone afterwards.
    #[test]
    fn two_peers_ping_through_the_tunnel() {
        crate::require_root!();
        let (a, b) = (TestNs::new("wga"), TestNs::new("wgb"));
        veth_between(&a, "ul", &b, "ul");
        a.add_address("ul", "192.0.2.1/24");
        b.add_address("ul", "192.0.2.2/24");
        let (sock, dev);
        {
            let pa = WgGoPeer::start(&a, 51820).unwrap();
            let pb = WgGoPeer::start(&b, 51820).unwrap();
            assert_ne!(pa.device(), pb.device());
            assert_ne!(pa.public_key(), pb.public_key());
            // A key given back in gives the same public key.
            assert_eq!(
                wg_tool(&["pubkey"], Some(pa.private_key())).unwrap().trim(),
                pa.public_key(),
                "public key of the private key"
            );
            pa.set_peer(pb.public_key(), Some("192.0.2.2:51820"), &["10.9.2.0/24"], None).unwrap();
            pb.set_peer(pa.public_key(), Some("192.0.2.1:51820"), &["10.9.1.0/24"], None).unwrap();
            for (p, addr, remote) in
                [(&pa, "10.9.1.1/32", "10.9.2.0/24"), (&pb, "10.9.2.1/32", "10.9.1.0/24")]
            {
                p.add_address(addr).unwrap();
                p.up(1420).unwrap();
                p.route(remote).unwrap();
            }
            let before = pa.show().unwrap();
            assert_eq!(before.listen_port, 51820);
            assert_eq!(before.public_key, pa.public_key());
            assert_eq!(before.peer(pb.public_key()).unwrap().latest_handshake, None);

            // The first ping may be spent on the handshake.
            let ok = (0..5).any(|_| ping(&a, "10.9.2.1", 2));
            assert!(ok, "no ping through the tunnel; logs: {:?} / {:?}", pa.log_text(), pb.log_text());
            let st = pa.wait_handshake(pb.public_key(), Duration::from_secs(5)).unwrap();
            assert!(st.rx_bytes > 0 && st.tx_bytes > 0, "{st:?}");
            assert_eq!(st.endpoint.as_deref(), Some("192.0.2.2:51820"));
            // Updating a peer. Only now: a keepalive makes wireguard-go start a handshake at once,
            // and two simultaneous initiations can leave both sides waiting for the 5 s retry.
            pb.set_peer(pa.public_key(), Some("192.0.2.1:51820"), &["10.9.1.0/24"], Some(25)).unwrap();
            assert_eq!(pb.show().unwrap().peer(pa.public_key()).unwrap().keepalive, Some(25));
            // The tunnel, not the underlay, carries it: the route says so.
            let via = a.exec(&["ip", "route", "get", "10.9.2.1"]);
            assert!(via.contains(&format!("dev {}", pa.device())), "{via}");

            // Removing the peer cuts the tunnel.
            pa.remove_peer(pb.public_key()).unwrap();
            assert!(pa.show().unwrap().peers.is_empty());
            assert!(!ping(&a, "10.9.2.1", 1));
            sock = pa.socket_path();
            dev = pa.device().to_string();
            assert!(sock.exists());
        }
        assert!(!sock.exists(), "{} outlived its peer", sock.display());
        assert!(!a.try_exec(&["ip", "link", "show", "dev", &dev]), "{dev} outlived its peer");
    }

    /// Drop cleans up also when the process is already dead (killed from outside).
    #[test]
    fn drop_after_the_process_died() {
        crate::require_root!();
        let ns = TestNs::new("wgkill");
        let p = WgGoPeer::start(&ns, 0).unwrap();
        assert_ne!(p.show().unwrap().listen_port, 0, "a port of the kernel's choice");
        // SAFETY: kill(2) on the child this peer owns.
        unsafe { libc::kill(p.pid().unwrap() as i32, libc::SIGKILL) };
        let sock = p.socket_path();
        drop(p);
        assert!(!sock.exists(), "{} left behind", sock.display());
    }
}
