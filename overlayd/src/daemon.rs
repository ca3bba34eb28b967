//! Wiring: the node's state (`node`), the tasks that own each part of it, and the API.
//! Nothing here decides anything; each module says what it does.
//!
//! Start-up order: state directory → store → API socket (so health and `overlayctl
//! network set` work while waiting) → network config (waits until there is a valid one)
//! → lease keeper, lease outputs (`subnet.env`), watcher, backend, encryption controller,
//! readiness. Shutdown (SIGTERM/SIGINT) keeps the lease so that a restart gets the same
//! subnet; `leave` releases it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::attrs::{LeaseAttrs, VxlanData};
use crate::backend::{Backend, ControlPlaneOnly, run_backend};
use crate::config::NetworkConfig;
use crate::config_watch::{SeedError, follow_config, load, seed};
use crate::encryption::controller::{
    Controller, ControllerIo, ControllerSettings, encrypted_mtu, initial_publication,
};
use crate::encryption::routes::SharedRoutes;
use crate::identity::{Identity, IdentityError};
use crate::lease::{LeaseManager, LeaseSettings, run_keeper};
use crate::node::{Node, NodeFacts, NodeWriters, pod_mtu};
use crate::options::DaemonArgs;
use crate::outputs::LeaseOutputs;
use crate::pins::Pins;
use crate::readiness::{confirm_datapath, follow_ready};
use crate::state::StateDir;
use crate::store::StoreError;
use crate::subnet::KeyLayout;
use crate::subnet_env::SubnetEnv;
use crate::underlay::Underlay;
use crate::watcher::{LeaseView, Watcher, WatcherIo};

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
    #[error(transparent)]
    Config(#[from] SeedError),
    /// The node's identity key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The kernel cannot be reached (no netlink).
    #[error("the kernel: {0}")]
    Kernel(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
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
    // Bound inside a fresh 0700 directory of a random name, so that nobody can connect
    // before the chmod, whatever the umask; then moved into place.
    // The mode is asked for explicitly: tempfile's default is 0777 less the umask, which
    // is 0777 under a permissive umask (caught by embedded.rs's umask-0 test).
    let private = tempfile::Builder::new()
        .prefix(".overlayd-sock-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(dir)
        .map_err(io_err(format!("a private directory in {}", dir.display())))?;
    let tmp = private.path().join("s");
    let l = tokio::net::UnixListener::bind(&tmp).map_err(io_err(format!("binding {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod socket"))?;
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming to {}", path.display())))?;
    Ok(l)
}

/// Removes flanneld's leftover chains and tables once (asked for by
/// `--remove-flannel-leftovers`); a failure is logged, never fatal: the overlay does not
/// depend on it.
async fn remove_flannel_leftovers() {
    match tokio::task::spawn_blocking(netkernel::flannel::remove_leftovers).await {
        Ok(Ok(removed)) if removed.is_empty() => tracing::info!("no flannel leftovers to remove"),
        Ok(Ok(removed)) => {
            for what in &removed {
                tracing::info!(removed = %what, "flannel leftover removed");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "removing flannel's leftovers failed; remove them by hand"),
        Err(e) => tracing::warn!(error = %e, "removing flannel's leftovers did not finish"),
    }
}

/// Runs the daemon until shutdown or `leave`.
pub async fn run(args: DaemonArgs, underlay: Underlay) -> Result<(), DaemonError> {
    // Before anything is created: a daemon without a store it was told to use does nothing.
    args.check_store()?;
    let state = StateDir::open(&args.state_dir)
        .map_err(io_err(format!("state directory {}", args.state_dir.display())))?;
    // In kube mode the node is its Node object: its name is its identity (as in flannel).
    let kube = crate::kube::open(&args).await?;
    let node_id = match &kube {
        Some(k) => k.node_name().to_string(),
        None => state.node_id().map_err(io_err("node ID"))?,
    };
    let identity = Arc::new(Identity::load_or_create(&args.state_dir)?);
    if args.remove_flannel_leftovers {
        remove_flannel_leftovers().await;
    }
    tracing::info!(node_id = %node_id, identity = %identity.public_b64(), public_ip = ?underlay.public_ip, iface = ?underlay.iface, "starting");
    // With etcd authentication the client logs in while connecting: wait for etcd
    // rather than exit (signals still have their default action here).
    let store = loop {
        if let Some(k) = &kube {
            break k.clone() as crate::store::SharedStore;
        }
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
    let (node, writers) = Node::new(NodeFacts {
        id: node_id,
        store,
        layout: KeyLayout::new(&args.store.etcd_prefix),
        underlay,
        ip_masq: args.ip_masq,
        subnet_file: args.subnet_file.clone(),
        pins: Pins::load(&args.state_dir).shared(),
        identity: identity.public(),
    });
    let shutdown = writers.shutdown.clone();
    spawn_signal_handler(shutdown.clone());
    let api_node = Arc::new(node.clone());
    let listener = bind_socket(&args.socket)?;
    let mut tasks =
        vec![tokio::spawn(crate::api::serve_unix(listener, api_node.clone(), node.shutdown.clone()))];
    if let Some(addr) = args.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr).await.map_err(io_err(format!("binding {addr}")))?;
        tasks.push(tokio::spawn(crate::api::serve_tcp(l, api_node, node.shutdown.clone())));
    }

    let result = start(&args, state, &identity, node, writers, kube, &mut tasks).await;

    let _ = shutdown.send(true);
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

/// Everything after the API is up: waits for the config, starts the tasks, and runs the
/// lease outputs until shutdown or `leave`.
#[allow(clippy::too_many_arguments, reason = "wiring: each argument is one owned part")]
async fn start(
    args: &DaemonArgs,
    state: StateDir,
    identity: &Arc<Identity>,
    node: Node,
    writers: NodeWriters,
    kube: Option<Arc<crate::kube::KubeStore>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(), DaemonError> {
    let NodeWriters {
        config: config_tx,
        keeper: keeper_tx,
        own: own_tx,
        peers: peers_tx,
        mtu: mtu_tx,
        encryption: encryption_tx,
        datapath: datapath_tx,
        readiness: readiness_tx,
        ready: ready_tx,
        commands,
        shutdown: _,
    } = writers;
    let mut shutdown = node.shutdown.clone();
    if let Some(f) = &args.net_config_file
        && kube.is_none()
    {
        seed(&node.store, &node.layout, f).await?;
    }
    let Some(config) = load(&node, &config_tx, &mut shutdown).await else {
        return Ok(());
    };
    let vtep_mac = vtep_mac(args, &config, &state)?;
    tracing::info!(config = %crate::encryption::settings::redact(config.to_json()), "network config");
    let encryption = config.encryption_settings();
    let encrypting = encryption.enabled && !args.no_encryption && !args.no_datapath;
    let underlay = &node.underlay;
    let underlay_mtu = underlay.mtu.unwrap_or(1500);
    let encrypted = match encryption.kind {
        crate::encryption::settings::Kind::WireGuard => encrypted_mtu(underlay_mtu),
        // The datapath is not known yet: the smaller of the two (kernel-libipsec's).
        crate::encryption::settings::Kind::Ipsec => {
            crate::encryption::ipsec::charon::Datapath::Libipsec.mtu(underlay_mtu)
        }
    };
    let mtu = pod_mtu(
        args.mtu,
        &config,
        underlay.mtu,
        underlay.public_ipv6.is_some(),
        encrypting.then_some(encrypted),
    );
    mtu_tx.send_replace(mtu);

    let tunnel_routes: SharedRoutes = Arc::default();
    let backend = datapath(args, &config, &node, vtep_mac, mtu, &tunnel_routes);
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
        backend_v6_data: backend.lease_v6_data(),
        node_id: Some(node.id.clone()),
        identity: Some(identity.public_b64()),
        signature: None,
        encryption: published,
    };
    let mut settings = LeaseSettings::with_ttl(args.subnet_lease_ttl);
    if let Some(r) = args.subnet_lease_renew_interval {
        settings.renew_every = r;
    }
    let saved = state.load_lease().and_then(|l| l.subnet_key());
    let from_file = SubnetEnv::read_previous(&args.subnet_file);
    let mgr =
        LeaseManager::new(node.store.clone(), node.layout.clone(), config.clone(), attrs.clone(), settings)
            .with_previous(saved, from_file)
            .with_identity(identity.clone())
            .adopting_flannel(args.adopt_flannel_lease);
    let (own_key_tx, own_key_rx) = mpsc::channel(16);
    let metrics = node.metrics.clone();
    let validator = node.validator().expect("the config is loaded");
    if let Some(k) = &kube {
        // The podCIDR is the lease: nothing to allocate or renew (crate::kube::keeper).
        k.set_validator(validator.clone());
        let keeper = crate::kube::keeper::KubeKeeper::new(
            k.clone(),
            config.clone(),
            attrs,
            identity.clone(),
            args.kube.set_node_network_unavailable,
        );
        tasks.push(tokio::spawn(keeper.run(crate::kube::keeper::KeeperIo {
            status: keeper_tx,
            commands,
            own_key: own_key_rx,
            ready: node.ready.clone(),
            shutdown: shutdown.clone(),
            metrics: metrics.clone(),
        })));
    } else {
        tasks.push(tokio::spawn(run_keeper(
            mgr,
            keeper_tx,
            commands,
            own_key_rx,
            shutdown.clone(),
            metrics.clone(),
        )));
    }
    tasks.push(tokio::spawn(follow_config(node.clone(), config_tx)));

    let (backend_tx, backend_rx) = mpsc::channel(256);
    tasks.push(tokio::spawn(run_backend(
        backend,
        backend_rx,
        node.peers.clone(),
        datapath_tx,
        metrics.clone(),
    )));
    let view = LeaseView::new(validator, node.layout.clone(), None);
    let mut watcher = Watcher::new(node.store.clone(), view, metrics.clone());
    let mut io = WatcherIo {
        peers: peers_tx,
        events: backend_tx.clone(),
        own: node.own.clone(),
        own_key: own_key_tx,
        config: node.config.clone(),
        shutdown: shutdown.clone(),
    };
    tasks.push(tokio::spawn(async move {
        // Leases are judged against our own subnet (the overlap check): list once it is known.
        let mut own = io.own.clone();
        if own.wait_for(Option::is_some).await.is_ok() {
            watcher.run(&mut io).await;
        }
    }));
    if !args.no_datapath {
        let c = Controller::new(
            ControllerSettings {
                state_dir: args.state_dir.clone(),
                underlay_mtu,
                vxlan_devices: vxlan_devices(&config),
                opt_out: args.no_encryption,
                threads: args.tunnel_threads,
                fixed_mtu: args.mtu.is_some(),
                outer: crate::peer::Outer {
                    v4: underlay.public_ip.is_some(),
                    v6: underlay.public_ipv6.is_some(),
                },
                charon: args.charon.clone(),
                ipsec_datapath: args.ipsec_datapath.forced(),
            },
            tunnel_routes,
        )
        .map_err(|e| DaemonError::Kernel(e.to_string()))?;
        c.seed_routes();
        let io = ControllerIo {
            config: node.config.clone(),
            own: node.own.clone(),
            peers: node.peers.clone(),
            node: node.clone(),
            backend: backend_tx.clone(),
            keeper: node.commands.clone(),
            mtu: mtu_tx,
            status: encryption_tx,
            shutdown: shutdown.clone(),
        };
        tasks.push(tokio::spawn(c.run(io)));
    }
    tasks.push(tokio::spawn(confirm_datapath(
        node.datapath.clone(),
        readiness_tx,
        args.ready_timeout,
        metrics,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(follow_ready(node.own.clone(), node.readiness.clone(), ready_tx, shutdown)));
    LeaseOutputs { state, config, own: own_tx, backend: backend_tx }.run(node).await;
    Ok(())
}

fn vxlan_devices(config: &NetworkConfig) -> Vec<String> {
    use crate::vxlan::{device_name, reconcile::Fam};
    // host-gw has no devices (and refuses encryption).
    let Some(vx) = config.vxlan() else { return Vec::new() };
    vec![device_name(Fam::V4, vx.vni), device_name(Fam::V6, vx.vni)]
}

/// The VTEP MAC kept in the state directory. A node adopting flanneld's lease
/// (`--adopt-flannel-lease`) for the first time keeps the MAC of flanneld's device, which
/// that lease publishes: the peers' neighbour and FDB entries stay right, so no packet is
/// lost to a MAC change while their daemons catch up.
fn vtep_mac(
    args: &DaemonArgs,
    config: &NetworkConfig,
    state: &StateDir,
) -> Result<netkernel::link::Mac, DaemonError> {
    if args.adopt_flannel_lease
        && !args.no_datapath
        && !state.has_vtep_mac()
        && let Some(vx) = config.vxlan()
    {
        let name = crate::vxlan::device_name(crate::vxlan::reconcile::Fam::V4, vx.vni);
        let found = crate::kernel::blocking(|| netkernel::Netlink::current().and_then(|nl| nl.link(&name)));
        match found {
            Ok(Some(netkernel::link::Link { mac: Some(mac), kind, .. }))
                if kind.as_deref() == Some("vxlan") =>
            {
                state.set_vtep_mac(mac).map_err(io_err("VTEP MAC"))?;
                tracing::info!(device = %name, mac = %crate::attrs::format_mac(&mac), "kept the VTEP MAC of flanneld's device");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(device = %name, error = %e, "reading flanneld's device; making a new VTEP MAC")
            }
        }
    }
    state.vtep_mac().map_err(io_err("VTEP MAC"))
}

/// The datapath this node runs.
fn datapath(
    args: &DaemonArgs,
    config: &NetworkConfig,
    node: &Node,
    vtep_mac: netkernel::link::Mac,
    mtu: u32,
    tunnel_routes: &SharedRoutes,
) -> Box<dyn Backend> {
    let underlay = &node.underlay;
    let Some(vx) = config.vxlan() else {
        if args.no_datapath {
            return Box::new(ControlPlaneOnly::host_gw());
        }
        return Box::new(crate::hostgw::HostGwBackend::new(crate::hostgw::HostGwSettings {
            underlay: underlay.iface.clone().unwrap_or_default(),
            public_ip: underlay.public_ip.map(std::net::IpAddr::V4),
            public_ipv6: underlay.public_ipv6.map(std::net::IpAddr::V6),
            network: config.ipv4_network().map(ipnet::IpNet::V4),
            ipv6_network: config.ipv6_network().map(ipnet::IpNet::V6),
            ip_masq: args.ip_masq,
        }));
    };
    if args.no_datapath {
        return Box::new(ControlPlaneOnly::new(VxlanData { vni: vx.vni, vtep_mac }));
    }
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
            mtu,
            ip_masq: args.ip_masq,
        })
        .with_tunnel_routes(tunnel_routes.clone()),
    )
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
