//! strongSwan's IKE daemon, `charon`, one per node, started by overlayd.
//!
//! It runs in the node's network namespace with a `strongswan.conf` of its own (written in
//! `<state-dir>/ipsec/`), its VICI socket there, and a private mount namespace in which
//! `<state-dir>/ipsec/run` is mounted on `/run`: charon's pid file is fixed at
//! `/var/run/charon.pid`, so this is what lets several nodes (and a host's own strongSwan)
//! run side by side. It is started detached (a process group of its own, in overlayd's
//! session, so that the scheduler treats it as it treats overlayd: see
//! [`netkernel::process::detach_with_private_run`]): it outlives a restart of overlayd, like
//! the WireGuard device does, and the next overlayd adopts it through its socket. Nothing but
//! the VICI socket configures it.
//!
//! The datapath: with kernel ESP (XFRM and the esp4/esp6 modules), charon's kernel-netlink
//! plugin installs SAs and policies in the kernel. Without it, kernel-libipsec does ESP in
//! charon's userspace over a TUN device, [`LIBIPSEC_DEVICE`], whose MTU it fixes at
//! [`LIBIPSEC_MTU`]. [`detect`] finds out which by asking the kernel for an ESP state.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::vici::{Client, Message, ViciError};

/// Debian's charon (package `strongswan-charon`).
pub const DEFAULT_BINARY: &str = "/usr/lib/ipsec/charon";
/// The TUN device of kernel-libipsec.
pub const LIBIPSEC_DEVICE: &str = "ipsec0";
/// kernel-libipsec's fixed TUN MTU (strongSwan 5.9): it reads no larger packet.
pub const LIBIPSEC_MTU: u32 = 1400;
/// ESP in UDP over the underlay, worst case: outer IPv6 (40) + UDP (8) + ESP header (8) +
/// IV (8) + padding (≤ 3) + trailer (2) + ICV (16) = 85, rounded up.
pub const OVERHEAD: u32 = 88;
/// How long a VICI call may take.
pub const VICI_TIMEOUT: Duration = Duration::from_secs(5);

/// Where ESP happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datapath {
    /// The kernel's XFRM with ESP: charon installs SAs and policies there.
    Kernel,
    /// charon's kernel-libipsec: ESP in userspace over a TUN device.
    Libipsec,
}

impl Datapath {
    /// As shown in status, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Kernel => "kernel-esp",
            Datapath::Libipsec => "libipsec",
        }
    }

    /// The pod MTU that fits this datapath over `underlay_mtu`.
    pub fn mtu(self, underlay_mtu: u32) -> u32 {
        let m = underlay_mtu.saturating_sub(OVERHEAD);
        match self {
            Datapath::Kernel => m,
            Datapath::Libipsec => m.min(LIBIPSEC_MTU),
        }
    }
}

/// Whether this network namespace's kernel does ESP (asked by adding an ESP state;
/// [`netkernel::xfrm::esp_available`]).
pub fn detect() -> Datapath {
    if netkernel::xfrm::esp_available() { Datapath::Kernel } else { Datapath::Libipsec }
}

/// Paths of one node's charon.
#[derive(Debug, Clone)]
pub struct CharonPaths {
    /// `<state-dir>/ipsec`.
    pub dir: PathBuf,
}

impl CharonPaths {
    /// Under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        CharonPaths { dir: state_dir.join("ipsec") }
    }
    /// The VICI socket.
    pub fn vici(&self) -> PathBuf {
        self.dir.join("charon.vici")
    }
    /// The generated `strongswan.conf`.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("strongswan.conf")
    }
    /// Mounted on `/run` in charon's mount namespace (holds `charon.pid`).
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }
    /// charon's pid file, as seen from outside.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("charon.pid")
    }
    /// charon's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("charon.log")
    }
}

/// The `strongswan.conf` overlayd runs charon with: only the plugins it needs, routes left
/// to overlayd (`install_routes = no`), quick retransmits (peers are one hop away), a log
/// file in the state directory and the VICI socket.
pub fn strongswan_conf(paths: &CharonPaths, datapath: Datapath) -> String {
    let libipsec = if datapath == Datapath::Libipsec { "kernel-libipsec " } else { "" };
    format!(
        "# Written by overlayd for its own charon; not read by anything else.\n\
         charon {{\n\
         \x20 load = random nonce openssl pem pkcs1 pkcs8 pubkey kdf {libipsec}kernel-netlink socket-default vici\n\
         \x20 install_routes = no\n\
         \x20 install_virtual_ip = no\n\
         \x20 retransmit_timeout = 1.0\n\
         \x20 retransmit_base = 1.4\n\
         \x20 retransmit_tries = 5\n\
         \x20 make_before_break = yes\n\
         \x20 filelog {{\n\
         \x20   charon {{\n\
         \x20     path = {log}\n\
         \x20     default = 1\n\
         \x20     time_format = %Y-%m-%dT%H:%M:%S\n\
         \x20   }}\n\
         \x20 }}\n\
         \x20 syslog {{\n\
         \x20   daemon {{\n\
         \x20     default = -1\n\
         \x20   }}\n\
         \x20 }}\n\
         \x20 plugins {{\n\
         \x20   vici {{\n\
         \x20     socket = unix://{vici}\n\
         \x20   }}\n\
         \x20 }}\n\
         }}\n",
        log = paths.log().display(),
        vici = paths.vici().display(),
    )
}

/// A charon this overlayd started or adopted.
#[derive(Debug)]
pub struct Charon {
    paths: CharonPaths,
    /// Ours to reap when we started it.
    child: Option<Child>,
    /// Its pid, when known.
    pub pid: Option<i32>,
    /// Its version string (`charon 5.9.8`).
    pub version: String,
    /// Whether this run started it (else adopted).
    pub started_here: bool,
}

fn version(paths: &CharonPaths) -> Result<String, ViciError> {
    let mut c = Client::connect(&paths.vici(), VICI_TIMEOUT)?;
    let v = c.call("version", Message::new())?;
    Ok(format!("{} {}", v.str("daemon").unwrap_or("charon"), v.str("version").unwrap_or("?")))
}

fn read_pid(paths: &CharonPaths) -> Option<i32> {
    std::fs::read_to_string(paths.pid_file()).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    netkernel::process::alive(pid)
}

impl Charon {
    /// The charon answering on the node's socket, else a new one (`binary`), waiting up to
    /// 10 s for its socket.
    pub fn ensure(paths: &CharonPaths, binary: &Path, datapath: Datapath) -> Result<Charon, String> {
        if let Ok(version) = version(paths) {
            return Ok(Charon {
                paths: paths.clone(),
                child: None,
                pid: read_pid(paths),
                version,
                started_here: false,
            });
        }
        if !binary.exists() {
            return Err(format!(
                "{} is not installed (Debian: apt-get install strongswan-charon libcharon-extra-plugins)",
                binary.display()
            ));
        }
        // A charon that holds the pid file but does not answer is hung: replace it.
        if let Some(pid) = read_pid(paths).filter(|p| alive(*p) && is_charon(*p)) {
            tracing::warn!(pid, "charon does not answer on its socket; restarting it");
            terminate(pid);
        }
        crate::state::ensure_dir(&paths.dir, 0o700).map_err(|e| format!("{}: {e}", paths.dir.display()))?;
        crate::state::ensure_dir(&paths.run_dir(), 0o700)
            .map_err(|e| format!("{}: {e}", paths.run_dir().display()))?;
        let _ = std::fs::remove_file(paths.pid_file());
        let _ = std::fs::remove_file(paths.vici());
        let conf = strongswan_conf(paths, datapath);
        cni_spec::fs::write_atomic(&paths.conf(), conf.as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", paths.conf().display()))?;
        let child = spawn(binary, paths)?;
        let pid = child.id() as i32;
        let mut charon = Charon {
            paths: paths.clone(),
            child: Some(child),
            pid: Some(pid),
            version: String::new(),
            started_here: true,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(v) = version(paths) {
                charon.version = v;
                return Ok(charon);
            }
            if let Some(status) = charon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("charon exited at start ({status}); see {}", paths.log().display()));
            }
            if Instant::now() >= deadline {
                charon.stop();
                return Err(format!("charon did not open {} within 10 s", paths.vici().display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it still runs and answers.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = &mut self.child
            && c.try_wait().ok().flatten().is_some()
        {
            self.child = None;
            return false;
        }
        version(&self.paths).is_ok()
    }

    /// A VICI connection to it.
    pub fn client(&self) -> Result<Client, ViciError> {
        Client::connect(&self.paths.vici(), VICI_TIMEOUT)
    }

    /// Stops it (SIGTERM, then SIGKILL after 3 s); its TUN device and SAs go with it.
    pub fn stop(&mut self) {
        let pid = self.pid.or_else(|| read_pid(&self.paths));
        if let Some(pid) = pid.filter(|p| alive(*p)) {
            terminate(pid);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.paths.vici());
    }
}

/// Stops the charon of `paths`, if one runs (used when a node leaves with no engine up).
pub fn stop_leftover(paths: &CharonPaths) {
    if let Some(pid) = read_pid(paths).filter(|p| alive(*p) && is_charon(*p)) {
        terminate(pid);
    }
}

fn is_charon(pid: i32) -> bool {
    netkernel::process::runs(pid, "charon")
}

fn terminate(pid: i32) {
    use netkernel::process::Signal;
    netkernel::process::signal(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while alive(pid) && Instant::now() < deadline {
        // Reap it if it is our child (else it is init's to reap).
        netkernel::process::reap(pid, false);
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive(pid) {
        netkernel::process::signal(pid, Signal::SIGKILL);
        netkernel::process::reap(pid, true);
    }
}

fn spawn(binary: &Path, paths: &CharonPaths) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.dir.join("charon.stderr"))
        .map_err(|e| format!("charon's stderr file: {e}"))?;
    let _ = writeln!(&log, "--- starting {}", binary.display());
    let mut cmd = Command::new(binary);
    cmd.env("STRONGSWAN_CONF", paths.conf()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    netkernel::process::detach_with_private_run(&mut cmd, &paths.run_dir())
        .map_err(|e| format!("{}: {e}", paths.run_dir().display()))?;
    cmd.spawn().map_err(|e| format!("starting {}: {e}", binary.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_the_socket_log_and_datapath_plugins() {
        let p = CharonPaths::new(Path::new("/var/lib/overlayd"));
        let c = strongswan_conf(&p, Datapath::Libipsec);
        assert!(c.contains("socket = unix:///var/lib/overlayd/ipsec/charon.vici"), "{c}");
        assert!(c.contains("kernel-libipsec kernel-netlink"));
        assert!(c.contains("install_routes = no"));
        assert!(!strongswan_conf(&p, Datapath::Kernel).contains("libipsec"));
        assert_eq!(Datapath::Libipsec.mtu(1500), 1400);
        assert_eq!(Datapath::Kernel.mtu(1500), 1412);
        assert_eq!(Datapath::Libipsec.mtu(1450), 1362);
    }
}
