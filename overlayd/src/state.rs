//! The daemon's state directory: its node ID (the identity that finds its lease again,
//! unlike flannel's public IP), the last lease it held, and the VTEP MAC it publishes
//! (kept so that peers' FDB entries stay right across restarts: flannel #1828).

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::subnet::SubnetKey;

/// The lease as last held, enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLease {
    /// Subnet key (`10.5.34.0-24`).
    pub key: String,
    /// Store lease that owned it.
    pub store_lease: i64,
    /// Its `mod_revision` when written.
    pub mod_revision: i64,
}

impl SavedLease {
    /// The subnet key, if the file holds a valid one.
    pub fn subnet_key(&self) -> Option<SubnetKey> {
        SubnetKey::parse(&self.key).ok()
    }
}

/// Files in the state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Creates `dir` and its parents with `mode` for the ones it makes.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir)
}

/// `N` random bytes from the kernel's random source (getrandom(2), through the `getrandom`
/// crate): the one source of secrets and identifiers here (node IDs, MACs, private keys,
/// pre-shared keys, the identity seed). Non-secret randomness (jitter, picks) uses `fastrand`.
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b)?;
    Ok(b)
}

impl StateDir {
    /// Opens (creating, mode 0700) `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        ensure_dir(&dir, 0o700)?;
        Ok(StateDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads `name`, or creates it with `make()` the first time.
    fn get_or_create(&self, name: &str, make: impl FnOnce() -> io::Result<String>) -> io::Result<String> {
        let p = self.dir.join(name);
        match std::fs::read_to_string(&p) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let v = make()?;
        cni_spec::fs::write_atomic(&p, format!("{v}\n").as_bytes(), 0o600)?;
        Ok(v)
    }

    /// This node's ID: 128 random bits in hex, made once and kept.
    pub fn node_id(&self) -> io::Result<String> {
        self.get_or_create("node-id", || {
            Ok(random_bytes::<16>()?.iter().map(|b| format!("{b:02x}")).collect())
        })
    }

    /// Whether a VTEP MAC is kept already.
    pub fn has_vtep_mac(&self) -> bool {
        std::fs::read_to_string(self.dir.join("vtep-mac")).is_ok_and(|s| !s.trim().is_empty())
    }

    /// Keeps `mac` as the VTEP MAC (a node taking over flanneld's device keeps its MAC).
    pub fn set_vtep_mac(&self, mac: [u8; 6]) -> io::Result<()> {
        let text = format!("{}\n", crate::attrs::format_mac(&mac));
        cni_spec::fs::write_atomic(&self.dir.join("vtep-mac"), text.as_bytes(), 0o600)
    }

    /// A VTEP MAC made once and kept: random, locally administered, unicast.
    pub fn vtep_mac(&self) -> io::Result<[u8; 6]> {
        let s = self.get_or_create("vtep-mac", || {
            let mut m = random_bytes::<6>()?;
            m[0] = (m[0] & 0xfe) | 0x02;
            Ok(crate::attrs::format_mac(&m))
        })?;
        crate::attrs::parse_mac(&s).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {s:?} is not a MAC", self.dir.join("vtep-mac").display()),
            )
        })
    }

    /// The last lease saved, if any and readable.
    pub fn load_lease(&self) -> Option<SavedLease> {
        let p = self.dir.join("lease.json");
        let text = std::fs::read(&p).ok()?;
        match serde_json::from_slice(&text) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %e, "ignoring unreadable saved lease");
                None
            }
        }
    }

    /// Saves the lease held now.
    pub fn save_lease(&self, l: &SavedLease) -> io::Result<()> {
        let data = serde_json::to_vec_pretty(l).expect("saved lease serializes");
        cni_spec::fs::write_atomic(&self.dir.join("lease.json"), &data, 0o600)
    }

    /// Forgets the lease (after `leave`).
    pub fn clear_lease(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join("lease.json")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_and_mac_persist() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path().join("state")).unwrap();
        let id = s.node_id().unwrap();
        assert_eq!(id.len(), 32);
        let mac = s.vtep_mac().unwrap();
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        let again = StateDir::open(d.path().join("state")).unwrap();
        assert_eq!(again.node_id().unwrap(), id);
        assert_eq!(again.vtep_mac().unwrap(), mac);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("state")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn lease_save_load_clear() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        assert!(s.load_lease().is_none());
        let l = SavedLease { key: "10.1.2.0-24".into(), store_lease: 7, mod_revision: 9 };
        s.save_lease(&l).unwrap();
        assert_eq!(s.load_lease(), Some(l));
        s.clear_lease().unwrap();
        s.clear_lease().unwrap();
        assert!(s.load_lease().is_none());
        std::fs::write(d.path().join("lease.json"), "garbage").unwrap();
        assert!(s.load_lease().is_none());
    }
}
