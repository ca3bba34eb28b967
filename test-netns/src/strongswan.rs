//! A strongSwan `charon` configured by hand with `swanctl` (no overlayd): the interop peer of
//! the IPsec tests and the hand-made baseline of the benchmarks. One per namespace, with its
//! own `strongswan.conf`, VICI socket and a private mount namespace (its pid file is fixed at
//! `/run/charon.pid`). ESP by kernel-libipsec on the TUN device `ipsec0`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::TestNs;
use crate::cluster::wait_for;

/// Debian's charon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// kernel-libipsec, in `libcharon-extra-plugins`.
pub const LIBIPSEC: &str = "/usr/lib/ipsec/plugins/libstrongswan-kernel-libipsec.so";
/// swanctl.
pub const SWANCTL: &str = "/usr/sbin/swanctl";

/// Whether charon, kernel-libipsec and swanctl are installed.
pub fn installed() -> bool {
    [CHARON, LIBIPSEC, SWANCTL].iter().all(|p| Path::new(p).exists())
}

/// One hand-configured charon.
pub struct HandSwan {
    dir: PathBuf,
    /// `unshare` execs `sh`, which execs charon: this child is charon.
    child: Child,
}

impl HandSwan {
    /// Starts charon in `ns` with its files under `dir` and the key pair `private_pem`
    /// (PKCS#8) / `public_pem` (SubjectPublicKeyInfo), and waits for its socket.
    pub fn start(ns: &TestNs, dir: &Path, private_pem: &[u8], public_pem: &str) -> Result<HandSwan, String> {
        Self::start_with(ns, dir, private_pem, public_pem, false)
    }

    /// As [`HandSwan::start`]; `own_session`: charon is started in a session of its own
    /// (`setsid`), which with the kernel's autogroup scheduling is also a scheduling group of
    /// its own (how overlayd started its charon before 2026-12-06; a benchmark diagnostic).
    pub fn start_with(
        ns: &TestNs,
        dir: &Path,
        private_pem: &[u8],
        public_pem: &str,
        own_session: bool,
    ) -> Result<HandSwan, String> {
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        for d in ["run", "sw/private", "sw/pubkey"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io)?;
        }
        std::fs::write(dir.join("sw/private/me.pem"), private_pem).map_err(io)?;
        std::fs::write(dir.join("sw/pubkey/me.pem"), public_pem).map_err(io)?;
        std::fs::write(
            dir.join("strongswan.conf"),
            format!(
                "charon {{\n load = random nonce openssl pem pkcs1 pkcs8 pubkey kdf kernel-libipsec kernel-netlink socket-default vici\n install_routes = no\n filelog {{\n  f {{\n   path = {d}/charon.log\n   default = 1\n  }}\n }}\n plugins {{\n  vici {{\n   socket = unix://{d}/vici\n  }}\n }}\n}}\n",
                d = dir.display()
            ),
        )
        .map_err(io)?;
        // setsid(1) execs without forking (the child is no group leader): charon keeps this pid.
        let prefix: &[&str] = if own_session { &["-m", "setsid", "sh", "-c"] } else { &["-m", "sh", "-c"] };
        let child = ns
            .command("unshare")
            .args(prefix)
            .arg(format!(
                "mount --make-rprivate / && mount --bind {}/run /run && exec {CHARON}",
                dir.display()
            ))
            .env("STRONGSWAN_CONF", dir.join("strongswan.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting charon: {e}"))?;
        let h = HandSwan { dir: dir.to_path_buf(), child };
        wait_for(Duration::from_secs(10), "the hand-configured charon's socket", || {
            std::os::unix::net::UnixStream::connect(dir.join("vici")).is_ok()
        })?;
        Ok(h)
    }

    /// Runs swanctl against it; stdout and stderr.
    pub fn swanctl(&self, ns: &TestNs, args: &[&str]) -> String {
        let uri = format!("unix://{}/vici", self.dir.display());
        match ns.command(SWANCTL).args(args).args(["--uri", &uri]).output() {
            Ok(out) => {
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
            }
            Err(e) => format!("swanctl: {e}"),
        }
    }

    /// Loads one connection `name` to `remote` (authenticated by the public key `remote_pem`), child SA
    /// `local_ts` ↔ `remote_ts`, AES-256-GCM (charon responds; see [`HandSwan::initiate`]).
    pub fn connect(
        &self,
        ns: &TestNs,
        name: &str,
        remote: &str,
        remote_pem: &str,
        local_ts: &str,
        remote_ts: &str,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| format!("{}: {e}", self.dir.display());
        std::fs::write(self.dir.join(format!("sw/pubkey/{name}.pem")), remote_pem).map_err(io)?;
        let conf = self.dir.join("sw/swanctl.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap_or_else(|_| "connections {\n}\n".into());
        let body = format!(
            " {name} {{\n  version = 2\n  remote_addrs = {remote}\n  encap = yes\n  proposals = aes256gcm16-prfsha384-x25519\n  local {{\n   auth = pubkey\n   pubkeys = me.pem\n  }}\n  remote {{\n   auth = pubkey\n   pubkeys = {name}.pem\n  }}\n  children {{\n   {name} {{\n    local_ts = {local_ts}\n    remote_ts = {remote_ts}\n    esp_proposals = aes256gcm16\n   }}\n  }}\n }}\n}}\n"
        );
        let end = text.rfind('}').ok_or("swanctl.conf")?;
        text.replace_range(end.., &body);
        std::fs::write(&conf, text).map_err(io)?;
        let out = self.swanctl(ns, &["--load-all", "--file", conf.to_str().ok_or("path")?]);
        if !out.contains(&format!("loaded connection '{name}'")) {
            return Err(format!("swanctl --load-all: {out}"));
        }
        Ok(())
    }

    /// Brings connection `name` up from this side.
    pub fn initiate(&self, ns: &TestNs, name: &str) -> Result<(), String> {
        let out = self.swanctl(ns, &["--initiate", "--child", name]);
        if !out.contains("successfully") {
            return Err(format!("swanctl --initiate: {out}"));
        }
        Ok(())
    }
}

impl Drop for HandSwan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
