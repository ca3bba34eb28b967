//! Kubernetes mode (`--kube-subnet-mgr`): the Kubernetes API as the store, as flannel's kube
//! subnet manager does it.
//!
//! - The node's subnets are its Node's `spec.podCIDRs` (assigned by kube-controller-manager);
//!   the daemon never allocates ([`keeper`]).
//! - Every node's lease is its Node object: flannel's annotations plus ours
//!   ([`annotations`]), so flanneld and overlayd nodes see each other.
//! - The network config is a file (the ConfigMap's `net-conf.json`), authoritative, followed
//!   live as the etcd key is.
//! - One reflector per daemon (list, then watch from the list's resourceVersion, bookmarks,
//!   a new list after 410 Gone) feeds one in-memory cache ([`cache`]); every read is served
//!   from it. There is no per-node request: 5,000 nodes cost one watch.
//!
//! The cache is presented through the same [`Store`](crate::store::Store) trait as etcd and
//! the embedded store ([`store::KubeStore`]): the watcher, the validator, the reconciler,
//! the backends, the encryption controller and the API do not know which store they run on.
//! Only the lease keeper differs (there is nothing to allocate or renew), and the daemon
//! picks it by mode.

pub mod annotations;
pub mod cache;
pub mod client;
pub mod events;
pub mod install;
pub mod keeper;
pub mod nodes;
mod reflector;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use store::KubeStore;

use crate::options::parse_duration;

/// Where the network config is in kube mode, unless `--net-config-file` says.
pub const DEFAULT_NET_CONFIG: &str = "/etc/kube-flannel/net-conf.json";

/// Kube mode's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Use the Kubernetes API as the store: subnets from Node podCIDRs, leases as Node
    /// annotations (flannel's `--kube-subnet-mgr`).
    #[arg(long, env = "OVERLAYD_KUBE_SUBNET_MGR")]
    pub kube_subnet_mgr: bool,
    /// API server URL (overrides the kubeconfig's or the in-cluster one).
    #[arg(long, env = "OVERLAYD_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// kubeconfig file (default: the pod's service account, in-cluster).
    #[arg(long, env = "OVERLAYD_KUBECONFIG_FILE")]
    pub kubeconfig_file: Option<PathBuf>,
    /// This node's Node name (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub kube_node_name: Option<String>,
    /// Annotation prefix (flannel's `--kube-annotation-prefix`).
    #[arg(long, env = "OVERLAYD_KUBE_ANNOTATION_PREFIX", default_value = "flannel.alpha.coreos.com")]
    pub kube_annotation_prefix: String,
    /// The service account's token, CA and namespace (in-cluster).
    #[arg(long, env = "OVERLAYD_KUBE_SERVICE_ACCOUNT_DIR", default_value = client::SERVICE_ACCOUNT_DIR)]
    pub kube_service_account_dir: PathBuf,
    /// Set the Node's NetworkUnavailable condition to False once the node is ready.
    #[arg(long, env = "OVERLAYD_SET_NODE_NETWORK_UNAVAILABLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub set_node_network_unavailable: bool,
    /// How often the network config file is read for changes.
    #[arg(long, env = "OVERLAYD_KUBE_CONFIG_POLL", default_value = "1s", value_parser = parse_duration)]
    pub kube_config_poll: Duration,
}

impl Default for KubeArgs {
    fn default() -> Self {
        KubeArgs {
            kube_subnet_mgr: false,
            kube_api_url: None,
            kubeconfig_file: None,
            kube_node_name: None,
            kube_annotation_prefix: "flannel.alpha.coreos.com".into(),
            kube_service_account_dir: client::SERVICE_ACCOUNT_DIR.into(),
            set_node_network_unavailable: true,
            kube_config_poll: Duration::from_secs(1),
        }
    }
}

/// Everything a [`KubeStore`] needs.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// This node's Node name.
    pub node_name: String,
    /// How to reach the API.
    pub client: client::ClientOptions,
    /// Annotation names.
    pub annotations: annotations::Annotations,
    /// The network config file.
    pub net_config_file: PathBuf,
    /// Its poll interval.
    pub config_poll: Duration,
    /// Key prefix the rest of the daemon uses (`--etcd-prefix`).
    pub prefix: String,
    /// Post Events about Nodes (off in benchmarks with thousands of stores in one process).
    pub events: bool,
}

impl KubeArgs {
    /// The options, or why the flags do not make a kube mode.
    pub fn options(&self, net_config_file: Option<&PathBuf>, prefix: &str) -> Result<KubeOptions, String> {
        let node_name = self
            .kube_node_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .ok_or("kube mode needs the Node's name: --kube-node-name or NODE_NAME (the DaemonSet sets it from spec.nodeName)")?;
        Ok(KubeOptions {
            node_name,
            client: client::ClientOptions {
                api_url: self.kube_api_url.clone(),
                kubeconfig: self.kubeconfig_file.clone(),
                service_account_dir: self.kube_service_account_dir.clone(),
            },
            annotations: annotations::Annotations::new(&self.kube_annotation_prefix)?,
            net_config_file: net_config_file.cloned().unwrap_or_else(|| DEFAULT_NET_CONFIG.into()),
            config_poll: self.kube_config_poll,
            prefix: prefix.to_string(),
            events: true,
        })
    }
}

/// The kube store when `--kube-subnet-mgr` is given (`None` otherwise).
pub async fn open(
    args: &crate::options::DaemonArgs,
) -> Result<Option<Arc<KubeStore>>, crate::store::StoreError> {
    if !args.kube.kube_subnet_mgr {
        return Ok(None);
    }
    let opts = args
        .kube
        .options(args.net_config_file.as_ref(), &args.store.etcd_prefix)
        .map_err(crate::store::StoreError::Rejected)?;
    KubeStore::open(opts).await.map(Some)
}
