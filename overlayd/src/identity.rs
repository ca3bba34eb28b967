//! The node's identity: one Ed25519 key pair, made by the node on its first start and kept
//! in its state directory (`identity.pem`, PKCS#8, mode 0600). Its public half is what the
//! rest of the cluster knows the node by: it signs the node's lease, so no other node can
//! write a lease in its name, and it is the key IKE authenticates the node with when the
//! cluster encrypts with IPsec. Nobody ever types it; the private half never leaves the file
//! (logs and the API show only the public half).

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

/// The file in the state directory.
pub const FILE: &str = "identity.pem";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file holds no Ed25519 private key.
    #[error(
        "{path} is not an Ed25519 private key in PKCS#8 PEM ({why}); move it away to make a new identity"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        why: String,
    },
}

/// A node's key pair.
pub struct Identity {
    key: SigningKey,
    path: PathBuf,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("public", &self.public_b64()).finish()
    }
}

/// A public key as published: base64 of its 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form; `None` unless it is 32 bytes that are a valid Ed25519 point.
    pub fn parse(s: &str) -> Option<PublicKey> {
        let bytes: [u8; 32] = B64.decode(s.as_bytes()).ok()?.try_into().ok()?;
        VerifyingKey::from_bytes(&bytes).ok()?;
        Some(PublicKey(bytes))
    }

    /// Whether `signature` is this key's over `message` (strict verification: no malleable
    /// or small-order forms).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let (Ok(key), Ok(sig)) = (VerifyingKey::from_bytes(&self.0), Signature::from_slice(signature)) else {
            return false;
        };
        key.verify_strict(message, &sig).is_ok() && key.verify(message, &sig).is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl Identity {
    /// Loads `<state_dir>/identity.pem`, or makes it (mode 0600) the first time.
    pub fn load_or_create(state_dir: &Path) -> Result<Identity, IdentityError> {
        let path = state_dir.join(FILE);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|e| IdentityError::Damaged { path: path.clone(), why: e.to_string() })?;
                Ok(Identity { key, path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed = crate::state::random_bytes::<32>().map_err(io)?;
                let key = SigningKey::from_bytes(&seed);
                let pem = key
                    .to_pkcs8_pem(Default::default())
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                cni_spec::fs::write_atomic(&path, pem.as_bytes(), 0o600).map_err(io)?;
                tracing::info!(public_key = %PublicKey(key.verifying_key().to_bytes()), "made this node's identity key");
                Ok(Identity { key, path })
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// The public half, base64.
    pub fn public_b64(&self) -> String {
        self.public().to_string()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Where the private key is (IKE loads it from there).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn made_once_kept_private_and_signs() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.public(), b.public(), "the same identity after a restart");

        let sig = a.sign(b"lease bytes");
        assert!(a.public().verifies(b"lease bytes", &sig));
        assert!(!a.public().verifies(b"lease bytez", &sig));
        assert!(!a.public().verifies(b"lease bytes", &sig[..63]));
        let other = Identity::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(!other.public().verifies(b"lease bytes", &sig));

        // The published form round-trips; anything else is refused.
        assert_eq!(PublicKey::parse(&a.public_b64()), Some(a.public()));
        for bad in ["", "AAAA", "!!!", &B64.encode([0u8; 31])] {
            assert_eq!(PublicKey::parse(bad), None, "{bad}");
        }
        // Debug shows the public half only.
        let pem = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not a key").unwrap();
        let e = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("move it away"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join(FILE)).unwrap(), "not a key");
    }
}
