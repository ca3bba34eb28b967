//! Wiring: store, config, lease keeper, watcher, backend, outputs and the API.
//!
//! Start-up order: state directory → store → API socket (so health and `overlayctl
//! network set` work while waiting) → network config (waits until there is a valid one)
//! → lease → subnet.env → watcher → ready (`READY=1`). Shutdown (SIGTERM/SIGINT) keeps
//! the lease so that a restart gets the same subnet; `leave` releases it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use crate::attrs::{LeaseAttrs, Validator, VxlanData};
use crate::backend::{Backend, BackendEvent, ControlPlaneOnly, DatapathReport, run_backend};
use crate::config::NetworkConfig;
use crate::encryption::controller::{
    Controller, ControllerIo, ControllerSettings, PeerMap, encrypted_mtu, initial_publication,
};
use crate::encryption::routes::SharedRoutes;
use crate::lease::{KeeperCommand, KeeperStatus, LeaseManager, LeaseSettings, run_keeper};
use crate::metrics::{Gauges, Metrics};
use crate::options::DaemonArgs;
use crate::readiness::{Confirmation, confirm_datapath};
use crate::state::{SavedLease, StateDir};
use crate::store::{Create, SharedStore, StoreError};
use crate::subnet::{KeyLayout, SubnetKey};
use crate::subnet_env::SubnetEnv;
use crate::underlay::{Underlay, VXLAN_V4_OVERHEAD};
use crate::watcher::{LeaseView, Peer, PeerEvent, Watcher, WatcherIo};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// State directory or files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The config file given with --net-config-file is invalid.
    #[error("{0}")]
    Config(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// What the API reads.
pub struct Shared {
    /// This node.
    pub node_id: String,
    /// The store.
    pub store: SharedStore,
    /// Key layout.
    pub layout: KeyLayout,
    /// The network config, once loaded.
    pub config: RwLock<Option<NetworkConfig>>,
    /// Lease keeper status.
    pub keeper: watch::Receiver<KeeperStatus>,
    /// Valid peers by store key.
    pub peers: RwLock<BTreeMap<String, Peer>>,
    /// Pod MTU.
    pub mtu: RwLock<Option<u32>>,
    /// Lease held, subnet.env written, peers listed, programmed and confirmed
    /// (see [`crate::readiness`]).
    pub ready: AtomicBool,
    /// What the datapath has applied so far.
    pub datapath: watch::Receiver<DatapathReport>,
    /// The readiness check's outcome for the current lease.
    pub readiness: watch::Receiver<Option<Confirmation>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// To the keeper (`leave`).
    pub commands: mpsc::Sender<KeeperCommand>,
    /// Shutdown switch.
    pub shutdown: watch::Sender<bool>,
    /// Where subnet.env goes.
    pub subnet_file: PathBuf,
    /// The underlay found at start.
    pub underlay: Underlay,
    /// Whether this daemon masquerades pod traffic (then the bridge plugin must not).
    pub ip_masq: bool,
    /// Start time.
    pub started: Instant,
    /// The encryption controller's status (for `overlayctl encryption status`).
    pub encryption: RwLock<serde_json::Value>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node_id", &self.node_id).finish()
    }
}

impl Shared {
    /// Scrape-time values.
    pub fn gauges(&self) -> Gauges {
        let k = self.keeper.borrow();
        Gauges {
            ready: self.ready.load(Ordering::Relaxed),
            has_lease: k.lease.is_some(),
            store_ok: k.store_ok,
            peers: self.peers.read().map(|p| p.len()).unwrap_or(0),
            subnet_changes: k.subnet_changes,
            ops: self.store.ops(),
        }
    }

    /// The config, if loaded.
    pub fn config(&self) -> Option<NetworkConfig> {
        self.config.read().ok().and_then(|c| c.clone())
    }
}

/// Reads the network config, waiting (and logging) until there is a valid one.
async fn wait_for_config(
    store: &SharedStore,
    layout: &KeyLayout,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<NetworkConfig> {
    let mut last_complaint: Option<(String, Instant)> = None;
    loop {
        let problem = match store.get(&layout.config()).await {
            Ok(Some(kv)) => match NetworkConfig::parse(&String::from_utf8_lossy(&kv.value)) {
                Ok(p) => {
                    for w in &p.warnings {
                        tracing::warn!(warning = %w, "network config");
                    }
                    return Some(p.config);
                }
                Err(e) => format!("network config at {} is invalid: {e}", layout.config()),
            },
            Ok(None) => format!("no network config at {} yet (overlayctl network set FILE)", layout.config()),
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

/// Binds the API socket with mode 0600 before it becomes visible under its name (bound
/// under a temporary name, chmod, rename), so there is no window where others connect.
pub fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("/"));
    crate::state::ensure_dir(dir, 0o755).map_err(io_err(format!("creating {}", dir.display())))?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::Io {
                what: format!("{} is in use by a running overlayd", path.display()),
                source: std::io::ErrorKind::AddrInUse.into(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let tmp = dir.join(format!(".overlayd.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = tokio::net::UnixListener::bind(&tmp).map_err(io_err(format!("binding {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod socket"))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))?;
    Ok(l)
}

/// Runs the daemon until shutdown or `leave`.
pub async fn run(args: DaemonArgs, underlay: Underlay) -> Result<(), DaemonError> {
    let state = StateDir::open(&args.state_dir)
        .map_err(io_err(format!("state directory {}", args.state_dir.display())))?;
    let node_id = state.node_id().map_err(io_err("node ID"))?;
    let vtep_mac = state.vtep_mac().map_err(io_err("VTEP MAC"))?;
    tracing::info!(node_id = %node_id, public_ip = ?underlay.public_ip, iface = ?underlay.iface, "starting");
    // With etcd authentication the client logs in while connecting: wait for etcd
    // rather than exit (signals still have their default action here).
    let store = loop {
        match args.store.open().await {
            Ok(s) => break s,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot reach the store yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(store = %store.describe(), "store");
    let layout = KeyLayout::new(&args.store.etcd_prefix);
    let metrics = Arc::new(Metrics::default());
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel(KeeperStatus::default());
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (datapath_tx, datapath_rx) = watch::channel(DatapathReport::default());
    let (readiness_tx, readiness_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        node_id: node_id.clone(),
        store: store.clone(),
        layout: layout.clone(),
        config: RwLock::new(None),
        keeper: status_rx.clone(),
        peers: RwLock::new(BTreeMap::new()),
        mtu: RwLock::new(None),
        ready: AtomicBool::new(false),
        datapath: datapath_rx.clone(),
        readiness: readiness_rx,
        metrics: metrics.clone(),
        commands: cmd_tx,
        shutdown: shutdown_tx.clone(),
        subnet_file: args.subnet_file.clone(),
        ip_masq: args.ip_masq,
        underlay: underlay.clone(),
        started: Instant::now(),
        encryption: RwLock::new(serde_json::Value::Null),
    });

    spawn_signal_handler(shutdown_tx.clone());
    let listener = bind_socket(&args.socket)?;
    let mut tasks = vec![tokio::spawn(crate::api::serve_unix(listener, shared.clone(), shutdown_rx.clone()))];
    if let Some(addr) = args.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(io_err(format!("binding {addr}")))?;
        tasks.push(tokio::spawn(crate::api::serve_tcp(l, shared.clone(), shutdown_rx.clone())));
    }

    let result = async {
        if let Some(f) = &args.net_config_file {
            seed_config(&store, &layout, f).await?;
        }
        let Some(config) = wait_for_config(&store, &layout, &mut shutdown_rx).await else {
            return Ok(());
        };
        tracing::info!(config = %crate::encryption::settings::redact(config.to_json()), "network config");
        *shared.config.write().expect("config lock") = Some(config.clone());
        let encryption = config.encryption_settings();
        let encrypting = encryption.enabled && !args.no_encryption && !args.no_datapath;
        let underlay_mtu = underlay.mtu.unwrap_or(1500);
        let mtu = args
            .mtu
            .or((config.vxlan().mtu > 0).then_some(config.vxlan().mtu))
            .or(underlay.mtu.map(|m| m.saturating_sub(VXLAN_V4_OVERHEAD)))
            // Pods must fit the tunnel too when the cluster encrypts.
            .map(|m| if encrypting && args.mtu.is_none() { m.min(encrypted_mtu(underlay_mtu)) } else { m });
        *shared.mtu.write().expect("mtu lock") = mtu;
        let tunnel_routes: SharedRoutes = Arc::default();
        let vx = config.vxlan();
        let vxlan_devices = vec![format!("flannel.{}", vx.vni), format!("flannel-v6.{}", vx.vni)];
        let controller = (!args.no_datapath).then(|| {
            let c = Controller::new(
                ControllerSettings {
                    state_dir: args.state_dir.clone(),
                    underlay_mtu,
                    vxlan_devices: vxlan_devices.clone(),
                    opt_out: args.no_encryption,
                    threads: args.tunnel_threads,
                },
                tunnel_routes.clone(),
            );
            if encrypting {
                c.seed_routes();
            }
            c
        });
        let backend: Box<dyn Backend> = if args.no_datapath {
            Box::new(ControlPlaneOnly::new(VxlanData { vni: config.vxlan().vni, vtep_mac }, mtu))
        } else {
            Box::new(
                crate::vxlan::VxlanBackend::new(crate::vxlan::VxlanSettings {
                    vni: vx.vni,
                    port: if vx.port == 0 { crate::vxlan::DEFAULT_PORT } else { vx.port },
                    direct_routing: vx.direct_routing,
                    underlay: underlay.iface.clone().unwrap_or_default(),
                    public_ip: underlay.public_ip.map(std::net::IpAddr::V4),
                    public_ipv6: underlay.public_ipv6.map(std::net::IpAddr::V6),
                    network: config.ipv4_network().map(ipnet::IpNet::V4),
                    ipv6_network: config.ipv6_network().map(ipnet::IpNet::V6),
                    mac: vtep_mac,
                    mac_v6: crate::vxlan::v6_mac(vtep_mac),
                    mtu: mtu.unwrap_or(crate::vxlan::FALLBACK_MTU),
                    ip_masq: args.ip_masq,
                })
                .with_tunnel_routes(tunnel_routes.clone()),
            )
        };
        // The key is in the lease from its first write, so a restart publishes the same value.
        let published = if args.no_datapath {
            serde_json::Value::Null
        } else {
            initial_publication(&args.state_dir, &encryption, args.no_encryption)
                .map_err(io_err("the WireGuard key file"))?
        };
        let attrs = LeaseAttrs {
            public_ip: underlay.public_ip,
            public_ipv6: underlay.public_ipv6,
            backend_type: backend.backend_type().into(),
            backend_data: backend.lease_data(),
            backend_v6_data: if config.ipv6.is_some() && config.ipv4.is_some() {
                backend.lease_data()
            } else {
                backend.lease_v6_data()
            },
            node_id: Some(node_id.clone()),
            encryption: published,
        };
        let mut settings = LeaseSettings::with_ttl(args.subnet_lease_ttl);
        if let Some(r) = args.subnet_lease_renew_interval {
            settings.renew_every = r;
        }
        let saved = state.load_lease().and_then(|l| l.subnet_key());
        let from_file = SubnetEnv::read_previous(&args.subnet_file);
        let mgr = LeaseManager::new(store.clone(), layout.clone(), config.clone(), attrs, settings)
            .with_previous(saved, from_file);
        let own_touched = Arc::new(Notify::new());
        tasks.push(tokio::spawn(run_keeper(
            mgr,
            status_tx,
            cmd_rx,
            own_touched.clone(),
            shutdown_rx.clone(),
            metrics.clone(),
        )));
        let (btx, brx) = mpsc::channel(256);
        tasks.push(tokio::spawn(run_backend(backend, brx, datapath_tx, metrics.clone())));
        tasks.push(tokio::spawn(confirm_datapath(
            datapath_rx,
            readiness_tx,
            args.ready_timeout,
            metrics.clone(),
            shutdown_rx.clone(),
        )));
        let (config_tx, config_rx) = watch::channel(Some(config.clone()));
        tasks.push(tokio::spawn(crate::config_watch::follow_config(shared.clone(), config_tx)));
        let (own_tx, own_rx) = watch::channel::<Option<SubnetKey>>(None);
        let (peers_tx, peers_rx) = watch::channel(Arc::new(BTreeMap::new()));
        if let Some(c) = controller {
            let io = ControllerIo {
                config: config_rx,
                own: own_rx.clone(),
                peers: peers_rx,
                backend: btx.clone(),
                keeper: shared.commands.clone(),
                shared: shared.clone(),
                shutdown: shutdown_rx.clone(),
            };
            tasks.push(tokio::spawn(c.run(io)));
        }
        let outputs = Outputs { own_tx, own_rx, peers_tx };
        follow(shared.clone(), state, config, args.ip_masq, btx, own_touched, outputs, &mut tasks).await
    }
    .await;

    let _ = shutdown_tx.send(true);
    for t in tasks {
        // Tasks watch the shutdown switch; do not hang on one that does not.
        if tokio::time::timeout(Duration::from_secs(5), t).await.is_err() {
            tracing::warn!("a task did not stop in time");
        }
    }
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("stopped");
    result
}

/// Stores `file` as the network config unless the store has one already.
async fn seed_config(store: &SharedStore, layout: &KeyLayout, file: &Path) -> Result<(), DaemonError> {
    let text = std::fs::read_to_string(file).map_err(io_err(format!("reading {}", file.display())))?;
    NetworkConfig::parse(&text).map_err(|e| DaemonError::Config(format!("{}: {e}", file.display())))?;
    let mut backoff = crate::lease::Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    for _ in 0..10 {
        match store.create(&layout.config(), text.as_bytes(), 0).await {
            Ok(Create::Created(_)) => {
                tracing::info!(file = %file.display(), "stored the network config");
                return Ok(());
            }
            Ok(Create::Exists(_)) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "storing the network config failed; retrying");
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
    // The config wait below keeps trying to read; seeding is best effort.
    Ok(())
}

/// Where `follow` announces our subnets and the peers (the watcher and the encryption
/// controller listen).
struct Outputs {
    own_tx: watch::Sender<Option<SubnetKey>>,
    own_rx: watch::Receiver<Option<SubnetKey>>,
    peers_tx: watch::Sender<PeerMap>,
}

/// Follows the keeper: writes outputs when the lease changes, starts the watcher once
/// there is a lease, forwards peer events, flips readiness, and stops after `leave`.
#[expect(clippy::too_many_arguments, reason = "the daemon's wiring, called once")]
async fn follow(
    shared: Arc<Shared>,
    state: StateDir,
    config: NetworkConfig,
    ip_masq: bool,
    backend: mpsc::Sender<BackendEvent>,
    own_touched: Arc<Notify>,
    outputs: Outputs,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), DaemonError> {
    let mut status = shared.keeper.clone();
    let mut shutdown = shared.shutdown.subscribe();
    let Outputs { own_tx, own_rx, peers_tx } = outputs;
    let (peer_tx, mut peer_rx) = mpsc::channel::<Vec<PeerEvent>>(64);
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let mut watcher_io = Some(WatcherIo {
        events: peer_tx,
        own: own_rx,
        own_touched,
        shutdown: shutdown.clone(),
        synced: synced_tx,
    });
    let mut synced_open = true;
    let mut synced_sent = false;
    let mut saved: Option<SavedLease> = None;
    let mut env_written = false;
    let mut notified = false;
    let mut confirmed = shared.readiness.clone();
    loop {
        tokio::select! {
            r = status.changed() => {
                if r.is_err() {
                    // The keeper stopped (shutdown).
                    return Ok(());
                }
                let s = status.borrow_and_update().clone();
                if s.released {
                    let _ = state.clear_lease();
                    let _ = std::fs::remove_file(&shared.subnet_file);
                    shared.ready.store(false, Ordering::Relaxed);
                    tracing::info!("left the network; stopping");
                    // Let the API finish answering the `leave` request before shutdown.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(());
                }
                let Some(l) = s.lease else { continue };
                let now = SavedLease {
                    key: l.key.to_string(),
                    store_lease: l.store_lease,
                    mod_revision: l.mod_revision,
                };
                if saved.as_ref() != Some(&now) {
                    if let Err(e) = state.save_lease(&now) {
                        tracing::error!(error = %e, "saving the lease in the state directory");
                    }
                    saved = Some(now);
                }
                if *own_tx.borrow() != Some(l.key) {
                    let mtu = shared.mtu.read().ok().and_then(|m| *m).unwrap_or(1450);
                    let env = SubnetEnv::new(&config, &l.key, mtu, ip_masq);
                    match env.write(&shared.subnet_file) {
                        Ok(_) => env_written = true,
                        Err(e) => tracing::error!(error = %e, file = %shared.subnet_file.display(), "writing subnet.env"),
                    }
                    own_tx.send_replace(Some(l.key));
                    let _ = backend.send(BackendEvent::OwnLease(Box::new(l.clone()))).await;
                    if let Some(mut io) = watcher_io.take() {
                        let validator = Validator::new(config.clone(), shared.node_id.clone());
                        let view = LeaseView::new(validator, shared.layout.clone(), Some(l.key));
                        let mut w = Watcher::new(shared.store.clone(), view, shared.metrics.clone());
                        tasks.push(tokio::spawn(async move { w.run(&mut io).await }));
                    }
                }
            }
            Some(batch) = peer_rx.recv() => forward_peers(&shared, &peers_tx, &backend, batch).await,
            r = synced_rx.changed(), if synced_open => {
                // Closed when the watcher stops (shutdown); stop polling it then.
                synced_open = r.is_ok();
                if synced_open && *synced_rx.borrow() && !synced_sent {
                    synced_sent = true;
                    // Batches queued before the flag went up belong to the full listing.
                    while let Ok(batch) = peer_rx.try_recv() {
                        forward_peers(&shared, &peers_tx, &backend, batch).await;
                    }
                    let _ = backend.send(BackendEvent::Synced).await;
                }
            }
            r = confirmed.changed() => if r.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
        let own = *own_tx.borrow();
        let ready = env_written
            && *synced_rx.borrow()
            && own.is_some()
            && confirmed.borrow().as_ref().map(|c| c.own) == own;
        if shared.ready.swap(ready, Ordering::Relaxed) != ready && !ready {
            tracing::info!("not ready: the datapath for the new subnet is being confirmed");
        }
        if ready && !notified {
            notified = true;
            tracing::info!(subnet = ?saved.as_ref().map(|s| &s.key), "ready");
            if let Err(e) = crate::notify::sd_notify("READY=1") {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }
}

/// Records a batch of peer events and passes it on to the controller and the backend.
async fn forward_peers(
    shared: &Shared,
    peers_tx: &watch::Sender<PeerMap>,
    backend: &mpsc::Sender<BackendEvent>,
    batch: Vec<PeerEvent>,
) {
    if let Ok(mut peers) = shared.peers.write() {
        for e in &batch {
            let key = shared.layout.lease(e.key());
            match e {
                PeerEvent::Added(p) | PeerEvent::Changed { new: p, .. } => {
                    peers.insert(key, p.clone());
                }
                PeerEvent::Removed(_) => {
                    peers.remove(&key);
                }
            }
        }
        peers_tx.send_replace(Arc::new(peers.clone()));
    }
    let _ = backend.send(BackendEvent::Peers(batch)).await;
}

fn spawn_signal_handler(shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down, keeping the lease"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down, keeping the lease"),
        }
        let _ = crate::notify::sd_notify("STOPPING=1");
        let _ = shutdown.send(true);
    });
}
