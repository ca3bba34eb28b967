//! Shared by the benches: when to run, the binaries, machine load, statistics, commands in
//! namespaces, and netlink notification monitors.
//!
//! A bench runs only under `cargo bench` (which passes `--bench`); under `cargo test
//! --benches` it says it skipped. `--smoke` makes every bench a short sanity pass.

#![allow(dead_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_netns::TestNs;

/// How the bench was invoked.
#[derive(Debug, Clone)]
pub struct Run {
    /// `--smoke`: a few-second sanity pass.
    pub smoke: bool,
    args: Vec<String>,
}

impl Run {
    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }

    /// The value after `--name`, if given.
    pub fn value(&self, name: &str) -> Option<String> {
        self.args.iter().position(|a| a == name).and_then(|i| self.args.get(i + 1)).cloned()
    }

    /// A comma-separated list after `--name`, or `default`.
    pub fn list<T>(&self, name: &str, default: &[T]) -> Vec<T>
    where
        T: std::str::FromStr + Clone,
        T::Err: std::fmt::Debug,
    {
        match self.value(name) {
            Some(v) => v.split(',').map(|x| x.trim().parse().expect("a list of numbers")).collect(),
            None => default.to_vec(),
        }
    }
}

/// `Some` when the bench should run: invoked with `--bench` (as `cargo bench` does) and as
/// root. Raises the priority of this process (and so of everything it starts) like
/// perf-baselines.sh does (`nice -10`), to shield the runs from other tenants' builds.
pub fn gate(name: &str) -> Option<Run> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("{name}: a benchmark, skipped (run it with `cargo bench -p test-netns --bench {name}`)");
        return None;
    }
    if !test_netns::is_root() {
        eprintln!("{name}: skipped: needs root to create network namespaces");
        return None;
    }
    // SAFETY: setpriority(2) on this thread; children inherit the nice value.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -10) } != 0 {
        eprintln!("{name}: could not renice to -10; running at the default priority");
    }
    test_netns::tear_down_on_termination();
    Some(Run { smoke: args.iter().any(|a| a == "--smoke"), args })
}

/// target/release: where the daemon and plugin binaries are. Unless `--no-build` was given,
/// builds them first (a no-op when they are up to date) so that a bench never measures stale
/// binaries.
pub fn bin_dir(run: &Run) -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let needed = ["overlayd", "overlayctl", "vxlan", "bridge", "host-local"];
    if run.flag("--no-build") {
        assert!(
            needed.iter().all(|b| dir.join(b).exists()),
            "--no-build: {} lacks the binaries",
            dir.display()
        );
        let to = private_copy(&dir, &needed);
        override_overlayd(run, &to);
        return to;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("release").to_string();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q", "-p", "overlayd", "-p", "plugins", "--bins"]);
    if profile == "release" {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    if !ok {
        assert!(
            needed.iter().all(|b| dir.join(b).exists()),
            "building overlayd and the plugins failed and {} lacks them",
            dir.display()
        );
        eprintln!("warning: building the binaries failed; using the ones in {}", dir.display());
    }
    let to = private_copy(&dir, &needed);
    override_overlayd(run, &to);
    to
}

/// `--overlayd PATH`: run that binary (or wrapper script) as the daemon instead, e.g. an
/// unstripped build under `perf record`.
fn override_overlayd(run: &Run, to: &Path) {
    if let Some(p) = run.value("--overlayd") {
        std::fs::copy(&p, to.join("overlayd")).unwrap_or_else(|e| panic!("--overlayd {p}: {e}"));
        eprintln!("using {p} as overlayd");
    }
}

/// Copies the binaries to a directory of this run, so that other builds in the shared
/// target directory cannot swap them in the middle of a measurement.
fn private_copy(dir: &Path, names: &[&str]) -> PathBuf {
    let to = std::env::temp_dir().join(format!("test-netns-bench-bin-{}", std::process::id()));
    std::fs::create_dir_all(&to).expect("a directory for the binaries");
    for n in names {
        std::fs::copy(dir.join(n), to.join(n)).unwrap_or_else(|e| panic!("copying {n}: {e}"));
    }
    to
}

/// The binaries' build time and the source revision, for the record.
pub fn bin_info(bin: &Path) -> String {
    let mtime = Command::new("stat")
        .args(["-c", "%y", bin.join("overlayd").to_str().unwrap_or_default()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let dirty = git(&["status", "--short", "--", "../overlayd", "../netkernel", "../plugins"]);
    format!(
        "overlayd built {mtime}; HEAD {}; uncommitted changes under overlayd/netkernel/plugins: {}",
        git(&["rev-parse", "--short", "HEAD"]),
        if dirty.is_empty() { "none".to_string() } else { dirty.lines().collect::<Vec<_>>().join(", ") }
    )
}

#[path = "../../../build-support/bench_json.rs"]
mod bench_json;

/// `--json-out FILE` (or `$BENCH_JSON`): appends one JSON object per result to FILE, with
/// `bench` and `kind` set, for `bench-report` to plot (`run` holds the same command line).
pub fn emit(_run: &Run, bench: &str, kind: &str, fields: serde_json::Value) {
    bench_json::emit(bench, kind, fields);
}

/// Where raw results go: `$BENCH_OUT` or a fresh directory under /tmp.
pub fn out_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("BENCH_OUT").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    let stamp = chrono_stamp();
    let dir = base.join(format!("test-netns-{name}-{stamp}"));
    std::fs::create_dir_all(&dir).expect("creating the output directory");
    dir
}

fn chrono_stamp() -> String {
    let out = Command::new("date").arg("+%Y%m%d-%H%M%S").output().ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::process::id().to_string())
}

/// UTC wall time, for the record.
pub fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ------------------------------------------------------------------ machine load

/// `/proc/stat` totals in USER_HZ ticks: (busy, idle).
pub fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    (g(0) + g(1) + g(2) + g(5) + g(6), g(3) + g(4))
}

/// Ticks per second of /proc accounting.
pub fn hz() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Machine busy share (0..100, of all CPUs) between two snapshots.
pub fn busy_pct(a: (u64, u64), b: (u64, u64)) -> f64 {
    let busy = b.0.saturating_sub(a.0) as f64;
    let idle = b.1.saturating_sub(a.1) as f64;
    if busy + idle == 0.0 { 0.0 } else { 100.0 * busy / (busy + idle) }
}

/// Waits (at most `max`) until the machine has been below 10% busy for one second; returns
/// the busy share of the last half second.
pub fn wait_quiet(max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    let mut quiet = 0;
    loop {
        let a = cpu_ticks();
        std::thread::sleep(Duration::from_millis(500));
        let pct = busy_pct(a, cpu_ticks());
        quiet = if pct < 10.0 { quiet + 1 } else { 0 };
        if quiet >= 2 || Instant::now() >= deadline {
            return pct;
        }
    }
}

/// utime + stime of processes, in seconds (threads included).
pub fn pid_cpu(pids: &[u32]) -> f64 {
    let mut ticks = 0u64;
    for p in pids {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(rest) = s.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After "pid (comm) ": state is field 0; utime and stime are fields 11 and 12.
        ticks += f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / hz()
}

/// Processes whose command name starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            out.push(pid);
        }
    }
    out
}

/// Processes running in namespace `ns` whose command name is `comm`.
pub fn pids_in(ns: &TestNs, comm: &str) -> Vec<u32> {
    let out = Command::new("ip").args(["netns", "pids", ns.name()]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .collect()
}

/// `/proc/loadavg`, first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Other heavy processes on the machine right now (for the record): `ps` top 5 by CPU.
pub fn top_processes() -> String {
    Command::new("ps")
        .args(["-eo", "pcpu,etime,comm", "--sort=-pcpu"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().take(6).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

// ------------------------------------------------------------------ statistics

/// Median (mean of the middle two for even counts); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
}

/// Nearest-rank percentile (`p` in 0..=100); NaN for none.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

/// Minimum and maximum.
pub fn range(v: &[f64]) -> (f64, f64) {
    let s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    (s.iter().copied().fold(f64::INFINITY, f64::min), s.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

// ------------------------------------------------------------------ commands

/// Runs `argv` inside `ns`; stdout, or an error with stderr.
pub fn sh(ns: &TestNs, argv: &[&str]) -> Result<String, String> {
    let out = ns.command(argv[0]).args(&argv[1..]).output().map_err(|e| format!("{argv:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{argv:?} in {} failed ({}): {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`sh`] with a whitespace-separated command line.
pub fn shl(ns: &TestNs, line: &str) -> Result<String, String> {
    let argv: Vec<&str> = line.split_whitespace().collect();
    sh(ns, &argv)
}

/// A long-running process inside a namespace, killed on drop.
#[derive(Debug)]
pub struct Server(pub std::process::Child);

impl Server {
    /// Starts `argv` in `ns` with output discarded.
    pub fn start(ns: &TestNs, argv: &[&str]) -> Server {
        let child = ns
            .command(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        Server(child)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace of another test-netns object (e.g. the cluster's switch), found by label
/// among this process's namespaces.
pub fn own_netns_named(label: &str) -> Option<PathBuf> {
    let prefix = format!("tn{}-", std::process::id());
    let mut found: Vec<PathBuf> = std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.rsplit('-').next() == Some(label))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Runs `argv` in the namespace mounted at `path`.
pub fn sh_path(path: &Path, argv: &[&str]) -> Result<String, String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let out = Command::new("ip")
        .args(["netns", "exec", name])
        .args(argv)
        .output()
        .map_err(|e| format!("{argv:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{argv:?} in {name}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ------------------------------------------------------------------ netlink monitor

/// rtnetlink multicast groups (the legacy bitmask `bind` takes).
pub const GRP_NEIGH: u32 = 0x4;
/// IPv4 routes.
pub const GRP_IPV4_ROUTE: u32 = 0x40;

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// RTM_NEWROUTE / RTM_DELROUTE.
    Route {
        /// Added (or replaced) rather than deleted.
        new: bool,
        /// Destination network address.
        dst: IpAddr,
        /// Prefix length.
        len: u8,
        /// Output interface.
        oif: Option<u32>,
        /// Next hop.
        gateway: Option<IpAddr>,
        /// Routing table.
        table: u32,
    },
    /// RTM_NEWNEIGH / RTM_DELNEIGH, ARP/NDP entries and bridge/VXLAN FDB entries alike.
    Neigh {
        /// Added (or replaced) rather than deleted.
        new: bool,
        /// An FDB entry (AF_BRIDGE).
        bridge: bool,
        /// The link.
        ifindex: u32,
        /// NDA_DST: the neighbour's IP, or an FDB entry's remote VTEP.
        ip: Option<IpAddr>,
        /// NDA_LLADDR.
        mac: Option<[u8; 6]>,
    },
    /// The socket's receive buffer overflowed: notifications were lost.
    Overrun,
}

/// A netlink socket subscribed to rtnetlink notifications in one namespace.
#[derive(Debug)]
pub struct Monitor {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Monitor {
    /// Subscribes to `groups` inside `ns`, with a large receive buffer and `timeout` per
    /// [`Monitor::recv`].
    pub fn open(ns: &TestNs, groups: u32, timeout: Duration) -> io::Result<Monitor> {
        let fd = ns.run(move || -> io::Result<OwnedFd> {
            // SAFETY: plain socket calls on a descriptor we own.
            unsafe {
                let fd =
                    libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let fd = OwnedFd::from_raw_fd(fd);
                let size: libc::c_int = 256 << 20;
                let p = &size as *const libc::c_int as *const libc::c_void;
                let l = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                if libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, l) != 0 {
                    libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, p, l);
                }
                let tv = libc::timeval {
                    tv_sec: timeout.as_secs() as libc::time_t,
                    tv_usec: timeout.subsec_micros() as libc::suseconds_t,
                };
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
                let mut sa: libc::sockaddr_nl = std::mem::zeroed();
                sa.nl_family = libc::AF_NETLINK as u16;
                sa.nl_groups = groups;
                let sap = &sa as *const libc::sockaddr_nl as *const libc::sockaddr;
                if libc::bind(fd.as_raw_fd(), sap, std::mem::size_of::<libc::sockaddr_nl>() as u32) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(fd)
            }
        })?;
        Ok(Monitor { fd, buf: vec![0; 1 << 20] })
    }

    /// Waits (up to the timeout) for one datagram and appends its notifications to `out`;
    /// returns how many were added (0 on timeout).
    pub fn recv(&mut self, out: &mut Vec<Event>) -> io::Result<usize> {
        // SAFETY: recv into our own buffer.
        let n = unsafe {
            libc::recv(self.fd.as_raw_fd(), self.buf.as_mut_ptr() as *mut libc::c_void, self.buf.len(), 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                Some(libc::ENOBUFS) => {
                    out.push(Event::Overrun);
                    Ok(1)
                }
                _ => Err(e),
            };
        }
        let before = out.len();
        parse_messages(&self.buf[..n as usize], out);
        Ok(out.len() - before)
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn ip_of(raw: &[u8]) -> Option<IpAddr> {
    match raw.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        16 => <[u8; 16]>::try_from(raw).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

/// Attributes after a fixed header: (type, payload).
fn attrs(b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        let len = u16_at(b, i) as usize;
        let ty = u16_at(b, i + 2) & 0x3fff;
        if len < 4 || i + len > b.len() {
            break;
        }
        out.push((ty, &b[i + 4..i + len]));
        i += (len + 3) & !3;
    }
    out
}

fn parse_messages(mut b: &[u8], out: &mut Vec<Event>) {
    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const RTM_NEWNEIGH: u16 = 28;
    const RTM_DELNEIGH: u16 = 29;
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let ty = u16_at(b, 4);
        if len < 16 || len > b.len() {
            break;
        }
        let body = &b[16..len];
        match ty {
            RTM_NEWROUTE | RTM_DELROUTE if body.len() >= 12 => {
                let (dst_len, mut table) = (body[1], body[4] as u32);
                let (mut dst, mut oif, mut gateway) = (None, None, None);
                for (t, v) in attrs(&body[12..]) {
                    match t {
                        1 => dst = ip_of(v),
                        4 if v.len() == 4 => oif = Some(u32_at(v, 0)),
                        5 => gateway = ip_of(v),
                        15 if v.len() == 4 => table = u32_at(v, 0),
                        _ => {}
                    }
                }
                let dst = dst.unwrap_or(if body[0] == libc::AF_INET6 as u8 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                out.push(Event::Route { new: ty == RTM_NEWROUTE, dst, len: dst_len, oif, gateway, table });
            }
            RTM_NEWNEIGH | RTM_DELNEIGH if body.len() >= 12 => {
                let bridge = body[0] == libc::AF_BRIDGE as u8;
                let ifindex = u32_at(body, 4);
                let (mut ip, mut mac) = (None, None);
                for (t, v) in attrs(&body[12..]) {
                    match t {
                        1 => ip = ip_of(v),
                        2 => mac = <[u8; 6]>::try_from(v).ok(),
                        _ => {}
                    }
                }
                out.push(Event::Neigh { new: ty == RTM_NEWNEIGH, bridge, ifindex, ip, mac });
            }
            _ => {}
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
}

/// Prints a markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    s += &format!(
        "|{}|\n",
        header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---" } else { "---:" })
            .collect::<Vec<_>>()
            .join("|")
    );
    for r in rows {
        s += &format!("| {} |\n", r.join(" | "));
    }
    s
}

/// `x` with `d` decimals, or `–` when not a number.
pub fn f(x: f64, d: usize) -> String {
    if x.is_finite() { format!("{x:.d$}") } else { "–".into() }
}

/// `a / b` as a percentage.
pub fn pct(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 { format!("{:.0}%", 100.0 * a / b) } else { "–".into() }
}
