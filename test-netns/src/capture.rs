//! Packet captures in test namespaces: `tcpdump` writes pcap to a pipe, and the packets are
//! decoded here (including the frames inside VXLAN), so a test can assert what an interface
//! carried, e.g. that an encrypted overlay never shows pod addresses on the underlay.
//!
//! ```no_run
//! use test_netns::{Capture, TestNs};
//! let ns = TestNs::new("node");
//! let cap = Capture::start(&ns, "ul").unwrap();
//! // ... traffic ...
//! let packets = cap.stop().unwrap();
//! assert!(!packets.any_plaintext_between("10.244.0.2", "10.244.1.2"), "{}", packets.summary(20));
//! ```

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::TestNs;

/// UDP ports whose payload is decoded as VXLAN: Linux's and flannel's default (8472; tcpdump
/// itself decodes this port as OTV, not VXLAN) and the IANA port (4789).
pub const VXLAN_PORTS: [u16; 2] = [8472, 4789];

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// A pcap filter expression (`udp port 51820`); none: everything.
    pub filter: Option<String>,
    /// Bytes kept per packet. The headers of a VXLAN packet and of the frame inside it fit
    /// in the default; the length on the wire is kept in any case.
    pub snaplen: u32,
    /// The kernel buffer in KiB (`tcpdump -B`): more drops less under load.
    pub buffer_kib: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions { filter: None, snaplen: 256, buffer_kib: 4096 }
    }
}

/// A running `tcpdump` on one interface of a namespace. [`Capture::stop`] ends it and
/// returns the packets; dropping it without stopping just ends it.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    what: String,
    pcap: Arc<Mutex<Vec<u8>>>,
    last_data: Arc<Mutex<Instant>>,
    stderr: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
}

impl Capture {
    /// Captures every packet on `dev` in `ns`.
    pub fn start(ns: &TestNs, dev: &str) -> Result<Self, String> {
        Self::start_with(ns, dev, &CaptureOptions::default())
    }

    /// Captures on `dev` in `ns` as `opts` say. Returns once tcpdump is capturing: every
    /// packet that crosses the interface after this returns is in the capture.
    pub fn start_with(ns: &TestNs, dev: &str, opts: &CaptureOptions) -> Result<Self, String> {
        let what = format!("tcpdump on {dev} in {}", ns.name());
        let mut cmd = ns.command("tcpdump");
        // --immediate-mode: libpcap's TPACKET_V3 ring otherwise hands packets over in blocks
        // with a timeout, and the packets of the last, unfinished block are lost on SIGINT.
        // -U: each packet is written to the pipe as soon as it is read.
        cmd.args(["-i", dev, "-n", "-U", "--immediate-mode", "-w", "-"]).args([
            "-s",
            &opts.snaplen.to_string(),
            "-B",
            &opts.buffer_kib.to_string(),
        ]);
        if let Some(f) = &opts.filter {
            cmd.args(f.split_whitespace());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {what} (apt-get install tcpdump): {e}"))?;
        let mut out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let pcap = Arc::new(Mutex::new(Vec::new()));
        let last_data = Arc::new(Mutex::new(Instant::now()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (listening_tx, listening_rx) = mpsc::channel();
        let mut cap = Capture { child: Some(child), what, pcap, last_data, stderr, threads: Vec::new() };
        let (buf, last) = (cap.pcap.clone(), cap.last_data.clone());
        cap.threads.push(std::thread::spawn(move || {
            let mut chunk = [0u8; 64 * 1024];
            while let Ok(n) = out.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                *last.lock().unwrap() = Instant::now();
            }
        }));
        let text = cap.stderr.clone();
        cap.threads.push(std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // tcpdump says this once the socket is bound and the filter attached.
                if line.contains("listening on") {
                    let _ = listening_tx.send(());
                }
                let mut t = text.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        }));
        match listening_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(cap),
            // The sender is gone: tcpdump closed stderr, i.e. it exited.
            Err(e) => {
                cap.kill();
                Err(format!("{} did not start capturing ({e:?}): {}", cap.what, cap.stderr_text()))
            }
        }
    }

    /// What tcpdump printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().trim().to_string()
    }

    /// Stops tcpdump and returns what it captured. Waits first (up to 1 s) until tcpdump has
    /// written nothing for 100 ms, so that packets sent just before are in.
    pub fn stop(mut self) -> Result<Packets, String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline
            && self.last_data.lock().unwrap().elapsed() < Duration::from_millis(100)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let Some(mut child) = self.child.take() else { return Err("already stopped".into()) };
        // SIGINT: tcpdump flushes, prints its counters and exits.
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let pcap = std::mem::take(&mut *self.pcap.lock().unwrap());
        let stderr = self.stderr_text();
        let mut packets =
            Packets::parse(&pcap).map_err(|e| format!("{}: {e}; stderr: {stderr}", self.what))?;
        packets.dropped_by_kernel = counter(&stderr, "packets dropped by kernel");
        Ok(packets)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `N <what>` in tcpdump's closing counters.
fn counter(stderr: &str, what: &str) -> Option<u64> {
    stderr.lines().find_map(|l| l.trim().strip_suffix(what)?.trim().parse().ok())
}

/// The protocol of a packet (the innermost header decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP for IPv4.
    Icmp,
    /// ICMPv6.
    Icmpv6,
    /// ARP (no addresses are reported for it).
    Arp,
    /// Another IP protocol, by number.
    Ip(u8),
    /// Not IP: the EtherType (0 when unknown).
    Other(u16),
}

/// One decoded packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Capture time, since the Unix epoch.
    pub time: Duration,
    /// Length on the wire (the frame, or the IP packet on an interface without link layer).
    pub length: u32,
    /// The transport protocol (or what else it is).
    pub protocol: Protocol,
    /// IP source.
    pub src: Option<IpAddr>,
    /// IP destination.
    pub dst: Option<IpAddr>,
    /// TCP/UDP source port.
    pub src_port: Option<u16>,
    /// TCP/UDP destination port.
    pub dst_port: Option<u16>,
    /// VXLAN network identifier, when the payload was decoded as VXLAN.
    pub vni: Option<u32>,
    /// The frame inside VXLAN.
    pub inner: Option<Box<Packet>>,
    /// The captured bytes (at most the snap length).
    pub data: Vec<u8>,
}

impl Packet {
    /// Whether this is an IP packet between `a` and `b` (either way).
    pub fn is_between(&self, a: IpAddr, b: IpAddr) -> bool {
        matches!((self.src, self.dst), (Some(s), Some(d)) if (s == a && d == b) || (s == b && d == a))
    }

    /// This packet and the ones nested in it, outermost first.
    pub fn layers(&self) -> impl Iterator<Item = &Packet> {
        std::iter::successors(Some(self), |p| p.inner.as_deref())
    }

    /// Whether it is IPv6 link housekeeping (neighbour discovery, MLD from link-local or
    /// unspecified addresses), which every IPv6-enabled link sends on its own.
    pub fn is_link_housekeeping(&self) -> bool {
        let local = |a: Option<IpAddr>| match a {
            Some(IpAddr::V6(v6)) => v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80,
            _ => false,
        };
        self.protocol == Protocol::Icmpv6 && local(self.src)
    }
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |a: Option<IpAddr>, p: Option<u16>| match (a, p) {
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a.to_string(),
            _ => "?".into(),
        };
        write!(
            f,
            "{:?} {} > {} len {}",
            self.protocol,
            ep(self.src, self.src_port),
            ep(self.dst, self.dst_port),
            self.length
        )?;
        if let Some(inner) = &self.inner {
            write!(f, " [VXLAN vni {}: {inner}]", self.vni.unwrap_or(0))?;
        }
        Ok(())
    }
}

/// What a capture got.
#[derive(Debug, Clone, Default)]
pub struct Packets {
    /// The packets, in capture order.
    pub packets: Vec<Packet>,
    /// The pcap link type (1 Ethernet, 101 raw IP as on a TUN device, 113/276 Linux cooked).
    pub link_type: u32,
    /// tcpdump's count of packets the kernel dropped (the capture is incomplete if > 0).
    pub dropped_by_kernel: Option<u64>,
    pcap: Vec<u8>,
}

impl Packets {
    /// Decodes a pcap file (as tcpdump writes it). A record cut short at the end (tcpdump
    /// killed while writing) is left out.
    pub fn parse(pcap: &[u8]) -> Result<Packets, String> {
        if pcap.len() < 24 {
            return Err(format!("no pcap header ({} bytes)", pcap.len()));
        }
        let magic = u32::from_le_bytes(pcap[0..4].try_into().unwrap());
        let (le, nanos) = match magic {
            0xa1b2_c3d4 => (true, false),
            0xa1b2_3c4d => (true, true),
            0xd4c3_b2a1 => (false, false),
            0x4d3c_b2a1 => (false, true),
            m => return Err(format!("not a pcap file (magic {m:#x})")),
        };
        let u32_at = |b: &[u8], i: usize| {
            let v: [u8; 4] = b[i..i + 4].try_into().unwrap();
            if le { u32::from_le_bytes(v) } else { u32::from_be_bytes(v) }
        };
        // The upper bits may carry FCS information.
        let link_type = u32_at(pcap, 20) & 0xffff;
        let mut packets = Vec::new();
        let mut off = 24;
        while off + 16 <= pcap.len() {
            let (sec, frac) = (u32_at(pcap, off), u32_at(pcap, off + 4));
            let (incl, orig) = (u32_at(pcap, off + 8) as usize, u32_at(pcap, off + 12));
            let start = off + 16;
            if start + incl > pcap.len() {
                break;
            }
            let data = &pcap[start..start + incl];
            let time = Duration::new(sec as u64, if nanos { frac } else { frac.saturating_mul(1000) });
            packets.push(decode(link_type, data, orig, time));
            off = start + incl;
        }
        Ok(Packets { packets, link_type, dropped_by_kernel: None, pcap: pcap.to_vec() })
    }

    /// How many packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The packets.
    pub fn iter(&self) -> std::slice::Iter<'_, Packet> {
        self.packets.iter()
    }

    /// The IP packets that are not UDP to `port`, leaving out IPv6 link housekeeping. Non-IP
    /// frames (ARP) are left out too.
    pub fn not_udp_to_port(&self, port: u16) -> Vec<&Packet> {
        self.iter()
            .filter(|p| p.src.is_some() && !p.is_link_housekeeping())
            .filter(|p| !(p.protocol == Protocol::Udp && p.dst_port == Some(port)))
            .collect()
    }

    /// Whether every IP packet is UDP to `port` (see [`Packets::not_udp_to_port`]). True for
    /// an empty capture: check [`Packets::len`] too.
    pub fn only_udp_to_port(&self, port: u16) -> bool {
        self.not_udp_to_port(port).is_empty()
    }

    /// The packets that show traffic between `a` and `b` in the clear: an IP packet between
    /// them, at any layer (also inside VXLAN), or their two addresses side by side in the
    /// captured bytes, as in any IP header, which catches encapsulations this module does not
    /// decode. Panics when `a` or `b` is not an IP address.
    pub fn plaintext_between(&self, a: &str, b: &str) -> Vec<&Packet> {
        let (a, b) = (ip(a), ip(b));
        let (ab, ba) = ([octets(a), octets(b)].concat(), [octets(b), octets(a)].concat());
        self.iter()
            .filter(|p| {
                p.layers().any(|l| l.is_between(a, b)) || contains(&p.data, &ab) || contains(&p.data, &ba)
            })
            .collect()
    }

    /// Whether any packet shows traffic between `a` and `b` in the clear (see
    /// [`Packets::plaintext_between`]).
    pub fn any_plaintext_between(&self, a: &str, b: &str) -> bool {
        !self.plaintext_between(a, b).is_empty()
    }

    /// The packets with, at any layer, an IP source or destination in `cidr` (e.g. the pod
    /// network `10.244.0.0/16`). Panics when `cidr` is not a network.
    pub fn with_address_in(&self, cidr: &str) -> Vec<&Packet> {
        let (net, len) = cidr.split_once('/').unwrap_or_else(|| panic!("{cidr} is not a network"));
        let (net, len): (IpAddr, u32) = (ip(net), len.parse().unwrap_or_else(|e| panic!("{cidr}: {e}")));
        let inside = |a: Option<IpAddr>| a.is_some_and(|a| in_prefix(a, net, len));
        self.iter().filter(|p| p.layers().any(|l| inside(l.src) || inside(l.dst))).collect()
    }

    /// The first `n` packets, one per line, for assertion messages.
    pub fn summary(&self, n: usize) -> String {
        let mut s: String = self.iter().take(n).map(|p| format!("{p}\n")).collect();
        if self.len() > n {
            s += &format!("... {} more\n", self.len() - n);
        }
        if let Some(d) = self.dropped_by_kernel.filter(|d| *d > 0) {
            s += &format!("({d} packets dropped by the kernel)\n");
        }
        s
    }

    /// Writes the capture as a pcap file (for Wireshark, when a test fails).
    pub fn write_pcap(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, &self.pcap)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s:?} is not an IP address: {e}"))
}

fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn in_prefix(a: IpAddr, net: IpAddr, len: u32) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Packet {
    /// A record with nothing decoded yet.
    fn undecoded(time: Duration, length: u32, data: &[u8]) -> Packet {
        Packet {
            time,
            length,
            protocol: Protocol::Other(0),
            src: None,
            dst: None,
            src_port: None,
            dst_port: None,
            vni: None,
            inner: None,
            data: data.to_vec(),
        }
    }
}

/// Decodes one captured record of link type `link_type`.
fn decode(link_type: u32, data: &[u8], orig: u32, time: Duration) -> Packet {
    let mut p = Packet::undecoded(time, orig, data);
    match link_type {
        1 => decode_ethernet(&mut p, data, 0),
        // Raw IP (TUN devices): the version nibble tells which.
        12 | 101 => decode_ip(&mut p, data, 0),
        228 => decode_l3(&mut p, 0x0800, data, 0),
        229 => decode_l3(&mut p, 0x86dd, data, 0),
        // Linux cooked v1 (`-i any`): 16-byte header, protocol last.
        113 if data.len() >= 16 => decode_l3(&mut p, be16(data, 14), &data[16..], 0),
        // Linux cooked v2: 20-byte header, protocol first.
        276 if data.len() >= 20 => decode_l3(&mut p, be16(data, 0), &data[20..], 0),
        _ => {}
    }
    p
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn decode_ethernet(p: &mut Packet, data: &[u8], depth: u8) {
    if data.len() < 14 {
        return;
    }
    let (mut ethertype, mut off) = (be16(data, 12), 14);
    // 802.1Q / 802.1ad tags.
    while matches!(ethertype, 0x8100 | 0x88a8) && data.len() >= off + 4 {
        ethertype = be16(data, off + 2);
        off += 4;
    }
    decode_l3(p, ethertype, &data[off..], depth);
}

fn decode_ip(p: &mut Packet, data: &[u8], depth: u8) {
    match data.first().map(|b| b >> 4) {
        Some(4) => decode_l3(p, 0x0800, data, depth),
        Some(6) => decode_l3(p, 0x86dd, data, depth),
        _ => {}
    }
}

fn decode_l3(p: &mut Packet, ethertype: u16, data: &[u8], depth: u8) {
    p.protocol = Protocol::Other(ethertype);
    let (proto, l4) = match ethertype {
        0x0806 => {
            p.protocol = Protocol::Arp;
            return;
        }
        0x0800 if data.len() >= 20 => {
            let ihl = usize::from(data[0] & 0x0f) * 4;
            p.src = Some(IpAddr::V4(Ipv4Addr::new(data[12], data[13], data[14], data[15])));
            p.dst = Some(IpAddr::V4(Ipv4Addr::new(data[16], data[17], data[18], data[19])));
            let frag_offset = be16(data, 6) & 0x1fff;
            // Later fragments carry no transport header.
            let l4 = if frag_offset == 0 && data.len() >= ihl { &data[ihl..] } else { &[][..] };
            (data[9], l4)
        }
        0x86dd if data.len() >= 40 => {
            let a = |i: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&data[i..i + 16]).unwrap());
            p.src = Some(IpAddr::V6(a(8)));
            p.dst = Some(IpAddr::V6(a(24)));
            let (mut next, mut off, mut first_fragment) = (data[6], 40, true);
            // Extension headers: hop-by-hop, routing, destination options, fragment.
            while matches!(next, 0 | 43 | 60 | 44) && data.len() >= off + 8 {
                let len = if next == 44 { 8 } else { (usize::from(data[off + 1]) + 1) * 8 };
                // Later fragments carry no transport header.
                if next == 44 && be16(data, off + 2) & 0xfff8 != 0 {
                    first_fragment = false;
                }
                next = data[off];
                off += len;
            }
            (next, if first_fragment { data.get(off..).unwrap_or(&[]) } else { &[][..] })
        }
        _ => return,
    };
    p.protocol = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        1 => Protocol::Icmp,
        58 => Protocol::Icmpv6,
        n => Protocol::Ip(n),
    };
    if matches!(p.protocol, Protocol::Tcp | Protocol::Udp) && l4.len() >= 4 {
        p.src_port = Some(be16(l4, 0));
        p.dst_port = Some(be16(l4, 2));
    }
    // VXLAN: an 8-byte header with the I flag, then the inner Ethernet frame. Depth-limited
    // so that a crafted packet cannot nest forever.
    if p.protocol == Protocol::Udp && depth < 4 && p.dst_port.is_some_and(|d| VXLAN_PORTS.contains(&d)) {
        let payload = l4.get(8..).unwrap_or(&[]);
        if payload.len() >= 8 + 14 && payload[0] & 0x08 != 0 {
            let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
            let frame = &payload[8..];
            // The inner frame's length on the wire: what the outer length leaves for it.
            let consumed = (p.data.len() - frame.len().min(p.data.len())) as u32;
            let mut inner = Packet::undecoded(p.time, p.length.saturating_sub(consumed), frame);
            decode_ethernet(&mut inner, frame, depth + 1);
            p.vni = Some(vni);
            p.inner = Some(Box::new(inner));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ping, veth_between};

    fn pair(la: &str, lb: &str) -> (TestNs, TestNs) {
        let (a, b) = (TestNs::new(la), TestNs::new(lb));
        veth_between(&a, "ul", &b, "ul");
        a.add_address("ul", "192.0.2.1/24");
        b.add_address("ul", "192.0.2.2/24");
        (a, b)
    }

    /// The predicate can fail: plain traffic on the wire is seen and flagged.
    #[test]
    fn sees_plain_ping() {
        crate::require_root!();
        let (a, _b) = pair("capa", "capb");
        let cap = Capture::start(&a, "ul").unwrap();
        assert!(ping(&a, "192.0.2.2", 2));
        let pk = cap.stop().unwrap();
        assert_eq!(pk.link_type, 1, "Ethernet on a veth");
        assert_eq!(pk.dropped_by_kernel, Some(0), "{}", pk.summary(20));
        let icmp: Vec<_> = pk.iter().filter(|p| p.protocol == Protocol::Icmp).collect();
        // Both the request and the reply: stop() waited for the last packet.
        assert_eq!(icmp.len(), 2, "{}", pk.summary(20));
        assert_eq!(icmp[0].src, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(icmp[0].dst, Some("192.0.2.2".parse().unwrap()));
        // A ping of 56 bytes: 14 + 20 + 8 + 56.
        assert_eq!(icmp[0].length, 98);
        assert!(pk.any_plaintext_between("192.0.2.2", "192.0.2.1"));
        assert!(!pk.any_plaintext_between("192.0.2.1", "192.0.2.3"));
        assert!(!pk.only_udp_to_port(8472));
        assert_eq!(
            pk.with_address_in("192.0.2.0/30").len(),
            pk.iter().filter(|p| p.src.is_some_and(|s| s.is_ipv4())).count()
        );
        // The filter applies, and the pcap written is tcpdump's own.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pcap");
        pk.write_pcap(&file).unwrap();
        let read = a.exec(&["tcpdump", "-n", "-r", file.to_str().unwrap(), "icmp"]);
        assert_eq!(read.lines().count(), 2, "{read}");
    }

    #[test]
    fn filter_and_udp_ports() {
        crate::require_root!();
        let (a, b) = pair("capfa", "capfb");
        let opts = CaptureOptions { filter: Some("udp and dst port 9999".into()), ..Default::default() };
        let cap = Capture::start_with(&b, "ul", &opts).unwrap();
        // Traffic that the filter leaves out, and one datagram it keeps.
        assert!(ping(&a, "192.0.2.2", 2));
        a.run(|| {
            let s = std::net::UdpSocket::bind("192.0.2.1:0").unwrap();
            s.send_to(b"hello", "192.0.2.2:9999").unwrap();
        });
        let pk = cap.stop().unwrap();
        assert_eq!(pk.len(), 1, "{}", pk.summary(20));
        let p = &pk.packets[0];
        assert_eq!((p.protocol, p.dst_port, p.length), (Protocol::Udp, Some(9999), 14 + 20 + 8 + 5));
        assert!(pk.only_udp_to_port(9999));
        assert!(!pk.only_udp_to_port(9998));
    }

    #[test]
    fn bad_interface_is_an_error() {
        crate::require_root!();
        let ns = TestNs::new("capbad");
        let e = Capture::start(&ns, "nonexistent0").unwrap_err();
        assert!(e.contains("nonexistent0"), "{e}");
    }

    /// Pod-like addresses inside VXLAN on the underlay are plaintext too: found by decoding
    /// VXLAN on 8472, and by the byte scan on a port that is not decoded.
    #[test]
    fn sees_plaintext_inside_vxlan() {
        crate::require_root!();
        for port in [8472u16, 9472] {
            let (a, b) = pair("capva", "capvb");
            for (ns, local, remote, inner) in
                [(&a, "192.0.2.1", "192.0.2.2", "10.9.1.1/16"), (&b, "192.0.2.2", "192.0.2.1", "10.9.2.1/16")]
            {
                ns.exec(&[
                    "ip",
                    "link",
                    "add",
                    "vx0",
                    "type",
                    "vxlan",
                    "id",
                    "42",
                    "local",
                    local,
                    "remote",
                    remote,
                    "dstport",
                    &port.to_string(),
                    "dev",
                    "ul",
                ]);
                ns.add_address("vx0", inner);
            }
            let cap = Capture::start(&a, "ul").unwrap();
            assert!(ping(&a, "10.9.2.1", 2), "ping over vxlan port {port}");
            let pk = cap.stop().unwrap();
            assert!(pk.any_plaintext_between("10.9.1.1", "10.9.2.1"), "port {port}: {}", pk.summary(30));
            assert!(pk.only_udp_to_port(port), "port {port}: {:?}", pk.not_udp_to_port(port));
            let decoded: Vec<_> = pk
                .iter()
                .filter(|p| p.inner.as_ref().is_some_and(|i| i.protocol == Protocol::Icmp))
                .collect();
            if port == 8472 {
                assert_eq!(decoded.len(), 2, "{}", pk.summary(30));
                let (outer, inner) = (decoded[0], decoded[0].inner.as_ref().unwrap());
                assert_eq!(outer.vni, Some(42));
                assert_eq!(outer.src, Some("192.0.2.1".parse().unwrap()));
                assert_eq!(inner.src, Some("10.9.1.1".parse().unwrap()));
                assert_eq!(inner.dst, Some("10.9.2.1".parse().unwrap()));
                // The inner frame is the outer one less 14 + 20 + 8 + 8 bytes of headers.
                assert_eq!(inner.length + 50, outer.length);
                assert!(!pk.with_address_in("10.9.0.0/16").is_empty());
            } else {
                // Not decoded: only the byte scan found it.
                assert!(decoded.is_empty());
                assert!(pk.with_address_in("10.9.0.0/16").is_empty());
            }
        }
    }

    /// A wireguard-go tunnel: the underlay shows only UDP to the WireGuard port and no inner
    /// addresses; the tunnel device itself (raw IP) shows the plaintext.
    #[test]
    fn wireguard_underlay_hides_the_inner_addresses() {
        crate::require_root!();
        let (a, b) = pair("capwa", "capwb");
        let pa = crate::WgGoPeer::start(&a, 51820).unwrap();
        let pb = crate::WgGoPeer::start(&b, 51820).unwrap();
        pa.set_peer(pb.public_key(), Some("192.0.2.2:51820"), &["10.9.2.0/24"], None).unwrap();
        pb.set_peer(pa.public_key(), Some("192.0.2.1:51820"), &["10.9.1.0/24"], None).unwrap();
        for (p, addr, remote) in [(&pa, "10.9.1.1/32", "10.9.2.0/24"), (&pb, "10.9.2.1/32", "10.9.1.0/24")] {
            p.add_address(addr).unwrap();
            p.up(1420).unwrap();
            p.route(remote).unwrap();
        }
        let under = Capture::start(&a, "ul").unwrap();
        let tun = Capture::start(&a, pa.device()).unwrap();
        assert!((0..5).any(|_| ping(&a, "10.9.2.1", 2)), "{} / {}", pa.log_text(), pb.log_text());
        let (under, tun) = (under.stop().unwrap(), tun.stop().unwrap());
        assert!(under.len() >= 4, "handshake and ping: {}", under.summary(20));
        assert!(!under.any_plaintext_between("10.9.1.1", "10.9.2.1"), "{}", under.summary(20));
        assert!(under.with_address_in("10.9.0.0/16").is_empty());
        assert!(under.only_udp_to_port(51820), "{:?}", under.not_udp_to_port(51820));
        assert_eq!(tun.link_type, 101, "raw IP on a TUN device");
        assert!(tun.any_plaintext_between("10.9.1.1", "10.9.2.1"), "{}", tun.summary(20));
    }

    #[test]
    fn truncated_and_foreign_input() {
        assert!(Packets::parse(b"short").is_err());
        assert!(Packets::parse(&[0u8; 24]).is_err());
        // A header, one whole record of a 60-byte frame, and a record cut short.
        let mut f = Vec::new();
        for v in [0xa1b2_c3d4u32, 0x0004_0002, 0, 0, 256, 1] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for _ in 0..2 {
            for v in [1u32, 2, 60, 60] {
                f.extend_from_slice(&v.to_le_bytes());
            }
            f.extend_from_slice(&[0u8; 60]);
        }
        f.truncate(f.len() - 10);
        let pk = Packets::parse(&f).unwrap();
        assert_eq!(pk.len(), 1);
        assert_eq!(pk.packets[0].time, Duration::new(1, 2000));
        assert_eq!(pk.packets[0].protocol, Protocol::Other(0));
    }
}
