//! The network config: the node's one source of it. At start it is read from the store
//! (seeded from `--net-config-file` when the store has none), waiting until there is a
//! valid one; afterwards it is followed: the `Encryption` section and `RequireSignedLeases`
//! are applied live (every daemon follows `overlayctl encryption …` within a store round
//! trip, and judges every lease again when the signing rule changes); other changes
//! (networks, backend) need a restart and are only reported. An invalid or deleted config is
//! reported and the last good one kept: it never reaches the datapath.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::node::Node;
use crate::retry::Backoff;
use crate::store::{Create, Revision, SharedStore, WatchEvent, WatchMessage};
use crate::subnet::KeyLayout;

/// Why the config file given at start is refused.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// It cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// It is not a valid network config.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// Stores `file` as the network config unless the store has one already (best effort: the
/// wait in [`load`] keeps reading).
pub async fn seed(store: &SharedStore, layout: &KeyLayout, file: &Path) -> Result<(), SeedError> {
    let path = file.display().to_string();
    let text =
        std::fs::read_to_string(file).map_err(|source| SeedError::Read { path: path.clone(), source })?;
    NetworkConfig::parse(&text).map_err(|e| SeedError::Invalid { path, why: e.to_string() })?;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    for _ in 0..10 {
        // Read first: with the documented store roles a node may only read the config.
        if let Ok(Some(_)) = store.get(&layout.config()).await {
            return Ok(());
        }
        match store.create(&layout.config(), text.as_bytes(), 0).await {
            Ok(Create::Created(_)) => {
                tracing::info!(file = %file.display(), "stored the network config");
                return Ok(());
            }
            Ok(Create::Exists(_)) => return Ok(()),
            Err(e) if !e.is_transient() => {
                tracing::warn!(error = %e, "this node may not store the network config; waiting for the operator's (overlayctl network set)");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "storing the network config failed; retrying");
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
    Ok(())
}

/// Reads the network config, waiting (and logging) until there is a valid one; publishes it
/// on `tx`. `None` on shutdown.
pub async fn load(
    node: &Node,
    tx: &watch::Sender<Option<NetworkConfig>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<NetworkConfig> {
    let key = node.layout.config();
    let mut last_complaint: Option<(String, Instant)> = None;
    loop {
        let problem = match node.store.get(&key).await {
            Ok(Some(kv)) => match NetworkConfig::parse(&String::from_utf8_lossy(&kv.value)) {
                Ok(p) => {
                    for w in &p.warnings {
                        tracing::warn!(warning = %w, "network config");
                    }
                    tx.send_replace(Some(p.config.clone()));
                    return Some(p.config);
                }
                Err(e) => format!("network config at {key} is invalid: {e}"),
            },
            Ok(None) => format!("no network config at {key} yet (overlayctl network set FILE)"),
            Err(e) => format!("reading the network config: {e}"),
        };
        // Same complaint at most every 30 s: an unconfigured cluster must not flood logs.
        let repeat = last_complaint
            .as_ref()
            .is_some_and(|(p, t)| *p == problem && t.elapsed() < Duration::from_secs(30));
        if !repeat {
            tracing::warn!("{problem}; waiting");
            last_complaint = Some((problem, Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// Runs until shutdown, publishing the effective config on `tx` (which [`load`] filled).
pub async fn follow_config(node: Node, tx: watch::Sender<Option<NetworkConfig>>) {
    let mut shutdown = node.shutdown.clone();
    let key = node.layout.config();
    loop {
        // Read, then watch from just after what was read: no change can fall in between.
        let from = match node.store.get(&key).await {
            Ok(kv) => {
                let rev = kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
                if let Some(kv) = kv {
                    apply(&tx, &kv.value);
                }
                rev
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the network config");
                if sleep_or_shutdown(&mut shutdown, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        };
        if watch_from(&node, &tx, &key, from, &mut shutdown).await {
            return;
        }
        if sleep_or_shutdown(&mut shutdown, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn sleep_or_shutdown(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

/// Watches until the stream ends; `true` on shutdown.
async fn watch_from(
    node: &Node,
    tx: &watch::Sender<Option<NetworkConfig>>,
    key: &str,
    from: Revision,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut w = match node.store.watch(key, from + 1).await {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "watching the network config");
            return false;
        }
    };
    loop {
        let msg = tokio::select! {
            m = w.next() => m,
            _ = shutdown.changed() => return true,
        };
        match msg {
            Some(Ok(WatchMessage::Events(evs))) => {
                for ev in evs.iter().filter(|e| e.key() == key) {
                    match ev {
                        WatchEvent::Put(kv) => apply(tx, &kv.value),
                        WatchEvent::Delete { .. } => {
                            tracing::warn!(
                                "the network config was deleted from the store; keeping the last one"
                            )
                        }
                    }
                }
            }
            Some(Ok(WatchMessage::Progress(_))) => {}
            Some(Ok(WatchMessage::Compacted(_))) | Some(Err(_)) | None => return false,
        }
    }
}

/// Adopts a new config's live parts (the `Encryption` section and `RequireSignedLeases`);
/// reports what else changed.
fn apply(tx: &watch::Sender<Option<NetworkConfig>>, value: &[u8]) {
    let parsed = match NetworkConfig::parse(&String::from_utf8_lossy(value)) {
        Ok(p) => p.config,
        Err(e) => {
            tracing::warn!(error = %e, "the network config in the store is invalid; keeping the last good one");
            return;
        }
    };
    let Some(mut current) = tx.borrow().clone() else { return };
    if !same_apart_from_live_parts(&parsed, &current) {
        warn_restart_needed();
    }
    let encryption_changed = parsed.encryption != current.encryption;
    let signing_changed = parsed.require_signed_leases != current.require_signed_leases;
    if !encryption_changed && !signing_changed {
        return;
    }
    current.encryption = parsed.encryption;
    current.require_signed_leases = parsed.require_signed_leases;
    if encryption_changed {
        tracing::info!(encryption = ?current.encryption_settings(), "encryption settings changed");
    }
    if signing_changed {
        tracing::info!(require_signed_leases = current.require_signed_leases, "lease signing rule changed");
    }
    tx.send_replace(Some(current));
}

/// Whether two configs differ only in what is applied live.
fn same_apart_from_live_parts(a: &NetworkConfig, b: &NetworkConfig) -> bool {
    let fixed =
        |c: &NetworkConfig| NetworkConfig { encryption: None, require_signed_leases: false, ..c.clone() };
    fixed(a) == fixed(b)
}

fn warn_restart_needed() {
    tracing::warn!(
        "the network config changed outside its live parts (Encryption, RequireSignedLeases); those changes take effect when the daemon restarts"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(text: &str) -> watch::Sender<Option<NetworkConfig>> {
        watch::Sender::new(Some(NetworkConfig::parse(text).unwrap().config))
    }

    #[test]
    fn the_live_parts_are_adopted_and_the_rest_kept_until_a_restart() {
        let tx = sender(r#"{"Network":"10.5.0.0/16"}"#);
        let mut rx = tx.subscribe();
        apply(&tx, br#"{"Network":"10.5.0.0/16","RequireSignedLeases":true}"#);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().as_ref().unwrap().require_signed_leases);
        apply(
            &tx,
            br#"{"Network":"10.5.0.0/16","RequireSignedLeases":true,"Encryption":{"Type":"wireguard"}}"#,
        );
        assert!(rx.borrow_and_update().as_ref().unwrap().encryption.is_some());
        // Another network: reported, not adopted; the live parts of the same write are.
        apply(&tx, br#"{"Network":"10.6.0.0/16"}"#);
        let now = rx.borrow_and_update().clone().unwrap();
        assert_eq!(now.ipv4.unwrap().network.to_string(), "10.5.0.0/16");
        assert!(!now.require_signed_leases && now.encryption.is_none());
        // Invalid: nothing changes.
        apply(&tx, b"{not json");
        assert!(!rx.has_changed().unwrap());
    }
}
