//! Test hosts on one machine: network namespaces with unique names that disappear when the
//! test that made them ends, also when it panics.
//!
//! ```no_run
//! let ns = test_netns::TestNs::new("pod");
//! let out = ns.exec(&["ip", "-j", "link"]);
//! assert!(out.contains("\"lo\""));
//! ```

mod capture;
pub mod cluster;
mod connectivity;
pub mod kube;
pub mod soak;
pub mod strongswan;
mod topology;
mod wgpeer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub use capture::{Capture, CaptureOptions, Packet, Packets, Protocol, VXLAN_PORTS};
pub use connectivity::{EchoServer, ping, tcp_echo};
use netkernel::netns::NETNS_RUN_DIR;
pub use netkernel::{NetNs, Netlink};
pub use topology::{Underlay, veth_between};
pub use wgpeer::{WgGoPeer, WgPeerStatus, WgShow};

/// The prefix of every namespace this crate makes: `tn<pid>-<n>-<label>`.
const PREFIX: &str = "tn";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Whether the tests can do kernel work (root). Tests that need it call
/// [`require_root!`] first, which says clearly why it skips.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the calling test, with a message on stderr, when not running as root; under
/// `CI=true` a test that cannot run fails instead (see [`skip`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip(module_path!(), "needs root to create network namespaces");
            return;
        }
    };
}

/// Says why a test does not run. A skipped test passes on a developer's machine, but in CI
/// (`CI=true`) it fails: a suite that silently runs nothing must not look green.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} cannot run: {why} (CI=true: a skipped test fails)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// A named network namespace owned by a test; deleted on drop.
#[derive(Debug)]
pub struct TestNs {
    name: String,
    ns: NetNs,
}

impl TestNs {
    /// Creates `tn<pid>-<n>-<label>` (label cut to keep the name short). Panics with a clear
    /// message when that fails: a test cannot go on without its host.
    pub fn new(label: &str) -> Self {
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let label: String = label.chars().filter(|c| c.is_ascii_alphanumeric()).take(12).collect();
        let name = format!("{PREFIX}{}-{n}-{label}", std::process::id());
        let ns = NetNs::create_named(&name)
            .unwrap_or_else(|e| panic!("creating test netns {name}: {e} (are we root?)"));
        TestNs { name, ns }
    }

    /// The name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mount path, e.g. for `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_RUN_DIR).join(&self.name)
    }

    /// The open namespace.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Runs `f` inside the namespace on a thread of its own.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).unwrap_or_else(|e| panic!("entering {}: {e}", self.name))
    }

    /// A netlink connection inside the namespace.
    pub fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.ns).unwrap_or_else(|e| panic!("netlink in {}: {e}", self.name))
    }

    /// Index of link `name`; panics if it does not exist.
    pub fn link_index(&self, name: &str) -> u32 {
        self.netlink().require_link(name).unwrap_or_else(|e| panic!("{name} in {}: {e}", self.name)).index
    }

    /// Adds an address (`10.0.0.1/24`) to link `ifname` and brings the link and `lo` up.
    pub fn add_address(&self, ifname: &str, addr: &str) {
        let nl = self.netlink();
        let idx = self.link_index(ifname);
        let net = addr.parse().unwrap_or_else(|e| panic!("address {addr}: {e}"));
        nl.add_address(idx, net).unwrap_or_else(|e| panic!("adding {addr} in {}: {e}", self.name));
        nl.set_up(idx).unwrap_or_else(|e| panic!("{ifname} up in {}: {e}", self.name));
        self.lo_up();
        if addr.contains(':') {
            self.wait_not_tentative(ifname);
        }
    }

    /// Waits until no IPv6 address of `ifname` is tentative. Even with DAD off, the kernel
    /// clears the flag from a work queue after the address is added: a bind in between fails
    /// with "Cannot assign requested address".
    pub fn wait_not_tentative(&self, ifname: &str) {
        let started = std::time::Instant::now();
        while !self.exec(&["ip", "-6", "-o", "addr", "show", "dev", ifname, "tentative"]).trim().is_empty() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "an IPv6 address of {ifname} in {} stays tentative (duplicate address detection)",
                self.name
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Brings `lo` up.
    pub fn lo_up(&self) {
        let nl = self.netlink();
        let lo = nl.require_link("lo").expect("every namespace has lo");
        if !lo.up {
            nl.set_up(lo.index).unwrap_or_else(|e| panic!("lo up in {}: {e}", self.name));
        }
    }

    /// A command that will run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    /// Runs `argv` inside the namespace and returns its stdout; panics (with stderr) when it
    /// fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        let out = self
            .command(argv[0])
            .args(&argv[1..])
            .output()
            .unwrap_or_else(|e| panic!("running {argv:?} in {}: {e}", self.name));
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `argv` succeeds inside the namespace.
    pub fn try_exec(&self, argv: &[&str]) -> bool {
        self.command(argv[0]).args(&argv[1..]).output().is_ok_and(|o| o.status.success())
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if let Err(e) = NetNs::delete_named(&self.name) {
            // Never panic in drop (we may already be unwinding): say it instead.
            eprintln!("test-netns: could not delete {}: {e}", self.name);
        }
    }
}

/// Deletes namespaces left by test processes that were killed (their pid is gone), once
/// per process.
fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| remove_namespaces(|pid| !Path::new(&format!("/proc/{pid}")).exists()));
}

/// Removes every namespace of this crate whose owner pid matches `whose`, killing the
/// processes still inside first (a namespace outlives its bind mount while a process such
/// as an iperf3 server or a daemon is in it).
fn remove_namespaces(whose: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(NETNS_RUN_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix(PREFIX).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if whose(pid) {
            for inside in pids_in_netns(&entry.path()) {
                // SAFETY: kill(2) of a process inside a namespace this crate made for a test
                // or bench run that is gone or being torn down.
                unsafe { libc::kill(inside, libc::SIGKILL) };
            }
            let _ = NetNs::delete_named(&name);
        }
    }
}

/// The processes whose network namespace is the one bound (or opened) at `path`.
pub fn pids_in_netns(path: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(ns) = std::fs::metadata(path) else { return Vec::new() };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == ns.ino() && m.dev() == ns.dev())
        })
        .collect()
}

static TERMINATED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_termination(signal: libc::c_int) {
    TERMINATED.store(signal, Ordering::SeqCst);
}

/// For long-running programs (the benches): on SIGINT or SIGTERM, kill what runs in this
/// process's namespaces, delete them and exit (128 + the signal), instead of dying with
/// the namespaces and their processes left behind. Drop-based cleanup covers panics; this
/// covers a user stopping a run.
pub fn tear_down_on_termination() {
    // SAFETY: the handler only stores to an atomic; handlers are reset in exec'd children.
    unsafe {
        libc::signal(libc::SIGINT, on_termination as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_termination as *const () as libc::sighandler_t);
    }
    std::thread::spawn(|| {
        loop {
            let signal = TERMINATED.load(Ordering::SeqCst);
            if signal != 0 {
                eprintln!("signal {signal}: removing this run's namespaces and what runs in them");
                let me = std::process::id();
                remove_namespaces(|pid| pid == me);
                std::process::exit(128 + signal);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_lifecycle() {
        require_root!();
        let path;
        {
            let ns = TestNs::new("life");
            path = ns.path();
            assert!(path.exists());
            let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
            assert!(String::from_utf8_lossy(&listed.stdout).contains(ns.name()));
            // A fresh namespace has only `lo`.
            let links = ns.exec(&["ip", "-o", "link"]);
            assert_eq!(links.lines().count(), 1, "{links}");
            // The caller's thread stayed where it was.
            let here = NetNs::current().unwrap();
            assert!(!here.same_as(ns.netns()));
            assert!(ns.run(|| NetNs::current().unwrap().same_as(ns.netns())));
        }
        assert!(!path.exists(), "{} outlived its test", path.display());
    }

    #[test]
    fn removed_on_panic() {
        require_root!();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = std::thread::spawn(move || {
            let ns = TestNs::new("panic");
            tx.send(ns.path()).unwrap();
            panic!("test failure inside");
        })
        .join();
        assert!(r.is_err());
        let path = rx.recv().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn names_are_unique_in_parallel() {
        require_root!();
        let names: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| TestNs::new("par").name().to_string())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
    }

    #[test]
    fn open_rejects_non_netns() {
        let e = NetNs::open("/etc/hostname").unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
        assert!(NetNs::open("/nonexistent/ns").unwrap_err().is_not_found());
    }
}
