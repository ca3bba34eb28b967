//! What this node's lease means outside the store: the state directory remembers it (a
//! restart asks for the same subnet), `subnet.env` says it (flannel's file, for flannel's
//! CNI plugin and scripts), the node adopts it (`own`: the watcher, the controller and
//! readiness follow), and the backend programs it. Also where `leave` ends the daemon.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::backend::BackendEvent;
use crate::config::NetworkConfig;
use crate::node::Node;
use crate::state::{SavedLease, StateDir};
use crate::subnet::SubnetKey;
use crate::subnet_env::SubnetEnv;

/// How soon a failed `subnet.env` write is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The lease outputs' task.
pub struct LeaseOutputs {
    /// The state directory.
    pub state: StateDir,
    /// The config (`subnet.env` carries its networks).
    pub config: NetworkConfig,
    /// Owned: the subnet this node has adopted.
    pub own: watch::Sender<Option<SubnetKey>>,
    /// To the backend: our lease.
    pub backend: mpsc::Sender<BackendEvent>,
}

/// Why the outputs stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The daemon is stopping.
    Shutdown,
    /// `leave`: the lease is released; the daemon stops.
    Left,
}

impl LeaseOutputs {
    /// Follows the keeper (and the pod MTU, which `subnet.env` carries) until shutdown or
    /// `leave`.
    pub async fn run(self, node: Node) -> Ended {
        let mut status = node.keeper.clone();
        let mut mtu = node.mtu.clone();
        let mut mtu_open = true;
        let mut shutdown = node.shutdown.clone();
        let mut saved: Option<SavedLease> = None;
        let mut env_for: Option<(SubnetKey, u32)> = None;
        let mut retry = false;
        loop {
            let s = status.borrow_and_update().clone();
            if s.released {
                let _ = self.state.clear_lease();
                let _ = std::fs::remove_file(&node.subnet_file);
                self.own.send_replace(None);
                tracing::info!("left the network; stopping");
                // Let the API finish answering the `leave` request before shutdown.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ended::Left;
            }
            if let Some(l) = &s.lease {
                let now = SavedLease {
                    key: l.key.to_string(),
                    store_lease: l.store_lease,
                    mod_revision: l.mod_revision,
                };
                if saved.as_ref() != Some(&now) {
                    if let Err(e) = self.state.save_lease(&now) {
                        tracing::error!(error = %e, "saving the lease in the state directory");
                    }
                    saved = Some(now);
                }
                let pod_mtu = *mtu.borrow_and_update();
                if env_for != Some((l.key, pod_mtu)) {
                    match SubnetEnv::new(&self.config, &l.key, pod_mtu, node.ip_masq).write(&node.subnet_file)
                    {
                        Ok(_) => {
                            env_for = Some((l.key, pod_mtu));
                            retry = false;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, file = %node.subnet_file.display(), "writing subnet.env; retrying");
                            retry = true;
                        }
                    }
                }
                // Adopted once subnet.env says so.
                if env_for.is_some_and(|(k, _)| k == l.key) && *self.own.borrow() != Some(l.key) {
                    self.own.send_replace(Some(l.key));
                    let _ = self.backend.send(BackendEvent::OwnLease(Box::new(l.clone()))).await;
                }
            }
            tokio::select! {
                r = status.changed() => if r.is_err() { return Ended::Shutdown },
                r = mtu.changed(), if mtu_open => mtu_open = r.is_ok(),
                _ = tokio::time::sleep(RETRY), if retry => {}
                _ = shutdown.changed() => return Ended::Shutdown,
            }
        }
    }
}
