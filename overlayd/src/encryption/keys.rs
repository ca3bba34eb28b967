//! This node's WireGuard key pair, kept in the state directory (`wireguard-key.json`, mode
//! 0600) so that restarts keep it: peers need not learn a new key, and sessions come back
//! with one handshake. Never logged: `Debug` shows only the public key.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::settings::{decode_key, encode_key};
use crate::state::write_atomic;

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "wireguard-key.json";

/// A key pair and when and why it was made.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeKey {
    /// Private key (clamped by x25519 when used).
    pub private: [u8; 32],
    /// Public key, as published in the lease.
    pub public: [u8; 32],
    /// The cluster's `KeyGeneration` it was made for.
    pub generation: u64,
    /// When it was made.
    pub created: SystemTime,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &encode_key(&self.public))
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    #[serde(rename = "PrivateKey")]
    private_key: String,
    #[serde(rename = "Generation")]
    generation: u64,
    #[serde(rename = "Created")]
    created: u64,
}

/// The public key of a private one (the engine's computation: one definition).
pub use wgtunnel::public_key;

/// 32 bytes of secret key material (see [`crate::state::random_bytes`]).
pub fn random_key() -> io::Result<[u8; 32]> {
    crate::state::random_bytes::<32>()
}

impl NodeKey {
    /// A fresh key pair from the kernel's random source.
    pub fn generate(generation: u64) -> io::Result<NodeKey> {
        let private = random_key()?;
        // Whole seconds, as the file keeps it, so a saved key equals the one in memory.
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Ok(NodeKey {
            public: public_key(&private),
            private,
            generation,
            created: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    /// How old the key is.
    pub fn age(&self) -> Duration {
        SystemTime::now().duration_since(self.created).unwrap_or_default()
    }

    /// Whether the key must be replaced: made for an older generation, or older than the
    /// rotation period.
    pub fn due(&self, generation: u64, period: Option<Duration>) -> bool {
        self.generation < generation || period.is_some_and(|p| self.age() >= p)
    }
}

/// Where the key lives.
#[derive(Debug, Clone)]
pub struct KeyStore {
    path: PathBuf,
}

impl KeyStore {
    /// The key file in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        KeyStore { path: state_dir.join(KEY_FILE) }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved key, if the file holds a valid one (a damaged file is reported and replaced
    /// by the caller, never half-used).
    pub fn load(&self) -> io::Result<Option<NodeKey>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let f: KeyFile = serde_json::from_str(&text).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", self.path.display()))
        })?;
        let private = decode_key(&f.private_key).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a WireGuard key", self.path.display()),
            )
        })?;
        Ok(Some(NodeKey {
            public: public_key(&private),
            private,
            generation: f.generation,
            created: UNIX_EPOCH + Duration::from_secs(f.created),
        }))
    }

    /// Saves `key` (0600, atomically: a crash leaves the old key or the new one).
    pub fn save(&self, key: &NodeKey) -> io::Result<()> {
        let f = KeyFile {
            private_key: encode_key(&key.private),
            generation: key.generation,
            created: key.created.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
        };
        let data = serde_json::to_vec(&f).map_err(io::Error::other)?;
        write_atomic(&self.path, &data, 0o600)?;
        // write_atomic creates with the mode, but an old file's mode is not ours to trust.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))
    }

    /// The key to use for `generation` with an optional rotation `period`: the saved one
    /// unless it is missing, damaged, of an older generation or older than the period, in
    /// which case a new one is made and saved. Returns the key and whether it is new.
    pub fn current(&self, generation: u64, period: Option<Duration>) -> io::Result<(NodeKey, bool)> {
        let saved = match self.load() {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "unreadable WireGuard key file; making a new key");
                None
            }
        };
        if let Some(k) = saved
            && !k.due(generation, period)
        {
            return Ok((k, false));
        }
        let k = NodeKey::generate(generation)?;
        self.save(&k)?;
        Ok((k, true))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn kept_across_loads_private_and_replaced_on_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(dir.path());
        let (a, new) = ks.current(0, None).unwrap();
        assert!(new);
        assert_eq!(std::fs::metadata(ks.path()).unwrap().permissions().mode() & 0o777, 0o600);
        let (b, new) = ks.current(0, None).unwrap();
        assert!(!new);
        assert_eq!(a, b, "a restart keeps the key");
        assert_eq!(b.public, public_key(&b.private));
        let (c, new) = ks.current(1, None).unwrap();
        assert!(new && c.private != a.private && c.generation == 1, "a higher generation rotates");
        assert!(!format!("{c:?}").contains(&encode_key(&c.private)), "Debug must not show the private key");
    }

    #[test]
    fn period_and_damaged_files() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::new(dir.path());
        let mut old = NodeKey::generate(0).unwrap();
        old.created = SystemTime::now() - Duration::from_secs(7200);
        ks.save(&old).unwrap();
        let (k, new) = ks.current(0, Some(Duration::from_secs(3600))).unwrap();
        assert!(new && k != old, "older than the period: rotated");
        std::fs::write(ks.path(), "{not json").unwrap();
        let (k2, new) = ks.current(0, None).unwrap();
        assert!(new && k2 != k);
        assert!(ks.load().unwrap().is_some());
    }

    #[test]
    fn public_key_matches_wg() {
        // `echo <private> | wg pubkey`, from the WireGuard documentation's example pair.
        let private = decode_key("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(encode_key(&public_key(&private)), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
    }
}
