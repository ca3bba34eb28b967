//! The original values of what one ADD changed, kept in a file until DEL puts them back.
//! The file has the reference's fields (`mac`, `promisc`, `mtu`, `allmulti`), so files it
//! wrote are restored too, plus `txQLen` and the sysctls' old values.

use std::path::{Path, PathBuf};

use netkernel::link::{Link, format_mac, parse_mac};
use netkernel::{NetNs, Netlink, sysctl};
use serde::{Deserialize, Serialize};

use super::config::TuningConf;
use crate::error::PluginError;
use crate::fsutil;

/// One sysctl's old value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OldSysctl {
    /// The key, resolved (slash form, under `net/`).
    pub key: String,
    /// Its value before ADD.
    pub value: String,
}

/// What ADD changed, as it was before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    promisc: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen", skip_serializing_if = "Option::is_none")]
    txqlen: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sysctl: Vec<OldSysctl>,
}

impl Saved {
    /// The originals of what `conf` changes: `link` as it is now, and each sysctl's
    /// (key, file, value) read before.
    pub fn of(conf: &TuningConf, link: Option<&Link>, sysctls: &[(String, PathBuf, String)]) -> Saved {
        let mut s = Saved::default();
        if let Some(l) = link {
            s.mac = conf.mac.and(l.mac).map(|m| format_mac(&m));
            s.promisc = conf.promisc.then_some(l.promisc);
            s.mtu = conf.mtu.map(|_| l.mtu);
            s.allmulti = conf.allmulti.map(|_| l.allmulti);
            s.txqlen = conf.txqlen.map(|_| l.txqlen);
        }
        s.sysctl = sysctls
            .iter()
            .map(|(_, file, value)| OldSysctl {
                key: file
                    .strip_prefix("/proc/sys")
                    .unwrap_or(file)
                    .to_string_lossy()
                    .trim_start_matches('/')
                    .into(),
                value: value.clone(),
            })
            .collect();
        s
    }

    /// Whether nothing was saved (nothing to change).
    pub fn is_empty(&self) -> bool {
        *self == Saved::default()
    }

    /// Writes the file (0600, its directory 0700 when made here; replaced whole, never half
    /// written); returns the directories this made.
    pub fn write(&self, path: &Path) -> Result<Vec<PathBuf>, PluginError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let created = fsutil::create_dirs(dir, 0o700)
            .map_err(PluginError::io(format!("creating {}", dir.display())))?;
        let body = serde_json::to_vec_pretty(self).expect("plain data serializes");
        let written = cni_spec::fs::write_atomic(path, &body, 0o600);
        if let Err(e) = written {
            fsutil::remove_dirs(&created);
            return Err(PluginError::io(format!("saving the original values to {}", path.display()))(e));
        }
        Ok(created)
    }

    /// Reads the file; `None` when there is none. A file that does not decode is reported
    /// on stderr and treated as none (it cannot be restored from).
    pub fn read(path: &Path) -> Result<Option<Saved>, PluginError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PluginError::io(format!("reading {}", path.display()))(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                eprintln!("tuning: ignoring {} ({e}): nothing to restore from it", path.display());
                Ok(Some(Saved::default()))
            }
        }
    }

    /// Removes the file and the directories `created` made for it.
    pub fn remove(&self, path: &Path, created: &[PathBuf]) {
        let _ = std::fs::remove_file(path);
        fsutil::remove_dirs(created);
    }

    /// Puts the originals back: the link's (if it is still there), then the sysctls (in
    /// reverse). Keeps going on errors and reports them all.
    pub fn restore(&self, ns: &NetNs, nl: &Netlink, ifname: &str) -> Result<(), PluginError> {
        let mut errors = Vec::new();
        let link = nl.link(ifname).ok().flatten();
        if let Some(l) = &link {
            let mut step = |what: &str, r: netkernel::error::Result<()>| {
                if let Err(e) = r {
                    errors.push(format!("restoring {what}: {e}"));
                }
            };
            if let Some(mtu) = self.mtu.filter(|m| (68..=65535).contains(m)) {
                step("the MTU", nl.set_mtu(l.index, mtu));
            }
            if let Some(mac) = self.mac.as_deref().and_then(parse_mac) {
                step("the MAC", nl.set_mac(l.index, mac));
            }
            if let Some(on) = self.promisc {
                step("promiscuous mode", nl.set_promisc(l.index, on));
            }
            if let Some(on) = self.allmulti {
                step("all-multicast mode", nl.set_allmulti(l.index, on));
            }
            if let Some(q) = self.txqlen {
                step("the transmit queue length", nl.set_txqlen(l.index, q));
            }
        }
        let sysctls = self.sysctl.clone();
        let sysctl_errors = ns
            .run(move || {
                let mut errors = Vec::new();
                for s in sysctls.iter().rev() {
                    // Checked again: the file is state on disk, not trusted blindly.
                    match sysctl::net_path(&s.key) {
                        Ok(p) => {
                            if let Err(e) = sysctl::write_path(&p, &s.value) {
                                errors.push(format!("restoring sysctl {}: {e}", s.key));
                            }
                        }
                        // Gone with its interface: nothing to restore.
                        Err(netkernel::KernelError::NoSuchSysctl(_)) => {}
                        Err(e) => errors.push(format!("restoring sysctl {}: {e}", s.key)),
                    }
                }
                errors
            })
            .unwrap_or_else(|e| vec![format!("entering the container: {e}")]);
        errors.extend(sysctl_errors);
        if errors.is_empty() { Ok(()) } else { Err(PluginError::Many(errors)) }
    }
}
