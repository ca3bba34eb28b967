//! The operator's writes: the network config and its `Encryption` section. They go to the
//! store with the operator's credentials (`overlayctl network set`, `overlayctl encryption
//! …`), never through a daemon: a node needs only read access to the config, so a node's
//! credentials cannot switch the cluster's encryption off (docs/security.md).

use serde::Serialize;

use crate::config::{ConfigError, NetworkConfig};
use crate::encryption::admin::{self, AdminError};
use crate::encryption::settings::redact;
use crate::store::{Cas, Revision, Store, StoreError};
use crate::subnet::KeyLayout;

/// How often a compare-and-swap is retried before giving up on a busy key.
const CAS_ATTEMPTS: usize = 5;

/// Why an operator write failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The new config is not valid.
    #[error("the new network config: {0}")]
    Invalid(ConfigError),
    /// The encryption change cannot be applied.
    #[error(transparent)]
    Encryption(#[from] AdminError),
    /// Nothing to change.
    #[error("no network config in the store (store one with `overlayctl network set`)")]
    NoConfig,
    /// The store refused or failed (a node's credentials get "permission denied" here).
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    /// Other writers kept winning.
    #[error("the network config kept changing; try again")]
    Busy,
}

/// What `network set` stored.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStored {
    /// The store revision of the write.
    pub revision: Revision,
    /// Accepted, but probably not what was meant.
    pub warnings: Vec<String>,
    /// The effective config, pre-shared key redacted.
    pub config: serde_json::Value,
}

/// What an encryption change stored.
#[derive(Debug, Clone, Serialize)]
pub struct EncryptionStored {
    /// The store revision of the write.
    pub revision: Revision,
    /// Encryption on.
    pub enabled: bool,
    /// The engine (`wireguard` or `ipsec`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Plaintext pod traffic between nodes dropped.
    pub strict: bool,
    /// Tunnel port.
    pub port: u16,
    /// Key generation (rotations).
    pub key_generation: u64,
    /// A pre-shared key is handed out (never the key itself).
    pub preshared_key: bool,
}

/// Validates `text` and stores it as the network config. Daemons apply the `Encryption`
/// section live and the rest when restarted.
pub async fn set_config(
    store: &dyn Store,
    layout: &KeyLayout,
    text: &str,
) -> Result<ConfigStored, OperatorError> {
    let parsed = NetworkConfig::parse(text).map_err(OperatorError::Invalid)?;
    let revision = store.put(&layout.config(), text.as_bytes()).await?;
    tracing::info!(revision, "network config stored");
    Ok(ConfigStored { revision, warnings: parsed.warnings, config: redact(parsed.config.to_json()) })
}

/// Rewrites the stored config's `Encryption` section as `request` says, with a
/// compare-and-swap: a concurrent writer makes us read again, never lose its change.
pub async fn change_encryption(
    store: &dyn Store,
    layout: &KeyLayout,
    request: &admin::Request,
) -> Result<EncryptionStored, OperatorError> {
    let key = layout.config();
    for _ in 0..CAS_ATTEMPTS {
        let kv = store.get(&key).await?.ok_or(OperatorError::NoConfig)?;
        let (text, s) = admin::apply(&String::from_utf8_lossy(&kv.value), request)?;
        match store.update(&key, text.as_bytes(), kv.lease, kv.mod_revision).await? {
            Cas::Done(revision) => {
                tracing::info!(action = ?request.action, revision, "encryption settings stored");
                return Ok(EncryptionStored {
                    revision,
                    enabled: s.enabled,
                    kind: s.kind.name(),
                    strict: s.strict,
                    port: s.port,
                    key_generation: s.key_generation,
                    preshared_key: s.preshared_key.is_some(),
                });
            }
            Cas::Conflict(_) => continue,
        }
    }
    Err(OperatorError::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encryption::admin::Action;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};

    fn request(action: Action) -> admin::Request {
        admin::Request {
            action,
            kind: None,
            strict: None,
            port: None,
            preshared_key: Some(action == Action::Enable),
            rotation_period: None,
            persistent_keepalive: None,
        }
    }

    #[tokio::test]
    async fn set_then_enable_rotate_disable_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path().join("s.db"))).unwrap();
        let layout = KeyLayout::new("/coreos.com/network");
        let missing = change_encryption(&store, &layout, &request(Action::Enable)).await.unwrap_err();
        assert!(matches!(missing, OperatorError::NoConfig), "{missing}");
        let bad = set_config(&store, &layout, r#"{"Network":"10.0.0.0/33"}"#).await.unwrap_err();
        assert!(matches!(bad, OperatorError::Invalid(_)), "{bad}");
        assert!(store.get(&layout.config()).await.unwrap().is_none(), "an invalid config was stored");

        set_config(&store, &layout, r#"{"Network":"10.244.0.0/16"}"#).await.unwrap();
        let on = change_encryption(&store, &layout, &request(Action::Enable)).await.unwrap();
        assert!(on.enabled && on.preshared_key);
        let stored = String::from_utf8(store.get(&layout.config()).await.unwrap().unwrap().value).unwrap();
        assert!(stored.contains("PresharedKey"), "{stored}");
        let rotated = change_encryption(&store, &layout, &request(Action::Rotate)).await.unwrap();
        assert_eq!(rotated.key_generation, on.key_generation + 1);
        let off = change_encryption(&store, &layout, &request(Action::Disable)).await.unwrap();
        assert!(!off.enabled && !off.strict);
        // What set_config answers never carries the key.
        let shown = set_config(&store, &layout, &stored).await.unwrap();
        assert_eq!(shown.config["Encryption"]["PresharedKey"], "<redacted>", "{}", shown.config);
    }
}
