//! Follows the network config in the store after start-up. The `Encryption` section is
//! applied live (every daemon follows `overlayctl encryption …` within a store round trip);
//! other changes (networks, backend) need a restart and are only reported. An invalid or
//! deleted config is reported and the last good one kept: it never reaches the datapath.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::NetworkConfig;
use crate::daemon::Shared;
use crate::store::{Revision, WatchEvent, WatchMessage};

/// Runs until shutdown, publishing the effective config on `tx`.
pub async fn follow_config(shared: Arc<Shared>, tx: watch::Sender<Option<NetworkConfig>>) {
    let mut shutdown = shared.shutdown.subscribe();
    let key = shared.layout.config();
    loop {
        // Read, then watch from just after what was read: no change can fall in between.
        let from = match shared.store.get(&key).await {
            Ok(kv) => {
                let rev = kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0);
                if let Some(kv) = kv {
                    apply(&shared, &tx, &kv.value);
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
        if watch_from(&shared, &tx, &key, from, &mut shutdown).await {
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
    shared: &Shared,
    tx: &watch::Sender<Option<NetworkConfig>>,
    key: &str,
    from: Revision,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut w = match shared.store.watch(key, from + 1).await {
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
                        WatchEvent::Put(kv) => apply(shared, tx, &kv.value),
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

/// Adopts a new config's `Encryption` section; reports what else changed.
fn apply(shared: &Shared, tx: &watch::Sender<Option<NetworkConfig>>, value: &[u8]) {
    let parsed = match NetworkConfig::parse(&String::from_utf8_lossy(value)) {
        Ok(p) => p.config,
        Err(e) => {
            tracing::warn!(error = %e, "the network config in the store is invalid; keeping the last good one");
            return;
        }
    };
    let Some(mut current) = shared.config() else { return };
    if parsed.encryption == current.encryption {
        if !same_apart_from_encryption(&parsed, &current) {
            warn_restart_needed();
        }
        return;
    }
    if !same_apart_from_encryption(&parsed, &current) {
        warn_restart_needed();
    }
    current.encryption = parsed.encryption;
    tracing::info!(encryption = ?current.encryption_settings(), "encryption settings changed");
    if let Ok(mut c) = shared.config.write() {
        *c = Some(current.clone());
    }
    tx.send_replace(Some(current));
}

fn same_apart_from_encryption(a: &NetworkConfig, b: &NetworkConfig) -> bool {
    NetworkConfig { encryption: None, ..a.clone() } == NetworkConfig { encryption: None, ..b.clone() }
}

fn warn_restart_needed() {
    tracing::warn!(
        "the network config changed outside its Encryption section; those changes take effect when the daemon restarts"
    );
}
