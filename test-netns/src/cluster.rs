//! A cluster on one machine: node namespaces on an underlay switch, `overlayd` in each, pods
//! attached with the `vxlan` plugin through the cni-spec runtime. Used by the demo and the
//! cluster tests; everything it starts is stopped and removed on drop.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_spec::NetConfList;
use cni_spec::runtime::{Attach, Runtime};
use serde_json::json;

use crate::kube::KubeEnv;
use crate::{TestNs, Underlay};

mod etcd_roles;
use etcd_roles::EtcdAuth;
pub use etcd_roles::EtcdCredentials;

/// Which store the daemons share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One SQLite file in the cluster's work directory.
    Embedded,
    /// Debian's etcd on the underlay: one member, or a cluster of several
    /// ([`ClusterOptions::etcd_members`]), each in an infra namespace of its own.
    Etcd,
    /// A real kube-apiserver (`crate::kube`): the daemons run as the DaemonSet runs them
    /// (`--kube-subnet-mgr`, NODE_NAME, the pod's service account, the API at
    /// `10.96.0.1:443`), node `i` is Node `node<i>` with podCIDR `10.244.<i+1>.0/24`.
    Kube,
}

/// How to build the cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Nodes to start with.
    pub nodes: usize,
    /// The store.
    pub store: StoreKind,
    /// Where overlayd, overlayctl, vxlan, bridge and host-local are.
    pub bin_dir: PathBuf,
    /// The cluster network.
    pub network: String,
    /// Lease TTL for the daemons.
    pub lease_ttl: String,
    /// etcd members (with [`StoreKind::Etcd`]): 1, or 3 for a cluster that survives the loss
    /// of one member.
    pub etcd_members: usize,
    /// etcd with authentication on and the documented roles ([`ClusterOptions::etcd_with_roles`]).
    pub etcd_auth: bool,
    /// The cluster's IPv6 network (`IPv6Network`, with `EnableIPv6`), when the pods get IPv6.
    pub ipv6_network: Option<String>,
    /// Whether the pods get IPv4 (`EnableIPv4`; `network` is not published without it).
    pub enable_ipv4: bool,
    /// Which address families the underlay carries (IPv4 `198.18.0.0/24`, IPv6 `fd18::/64`).
    pub underlay: UnderlayFamilies,
    /// Extra keys of the network config's `Backend` object (e.g. encryption settings).
    pub backend_extra: serde_json::Map<String, serde_json::Value>,
    /// The network config's `Backend.Type` (`vxlan` unless set).
    pub backend_type: String,
}

/// The address families of the cluster's underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnderlayFamilies {
    /// Nodes have an IPv4 underlay address.
    pub v4: bool,
    /// Nodes have an IPv6 underlay address.
    pub v6: bool,
}

impl UnderlayFamilies {
    /// IPv4 only (the default).
    pub const V4: UnderlayFamilies = UnderlayFamilies { v4: true, v6: false };
    /// IPv6 only.
    pub const V6: UnderlayFamilies = UnderlayFamilies { v4: false, v6: true };
    /// Both.
    pub const DUAL: UnderlayFamilies = UnderlayFamilies { v4: true, v6: true };
}

/// The IPv6 test network the pods get with [`ClusterOptions::dual_stack`] and
/// [`ClusterOptions::ipv6_only`].
pub const IPV6_POD_NETWORK: &str = "fd10:244::/56";

impl ClusterOptions {
    /// `nodes` nodes on the embedded store, binaries from `bin_dir`.
    pub fn new(nodes: usize, bin_dir: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            nodes,
            store: StoreKind::Embedded,
            bin_dir: bin_dir.into(),
            network: "10.244.0.0/16".into(),
            lease_ttl: "24h".into(),
            etcd_members: 1,
            etcd_auth: false,
            ipv6_network: None,
            enable_ipv4: true,
            underlay: UnderlayFamilies::V4,
            backend_extra: serde_json::Map::new(),
            backend_type: "vxlan".into(),
        }
    }

    /// `Backend.Type` of the network config (`host-gw`, …).
    pub fn backend(mut self, kind: &str) -> Self {
        self.backend_type = kind.into();
        self
    }

    /// The store is etcd with authentication on and the roles of docs/security.md: each
    /// daemon runs as a user of its own with the node role (it may read the config and write
    /// under `subnets/`), [`Cluster::overlayctl`] as the operator.
    pub fn etcd_with_roles(mut self) -> Self {
        self.store = StoreKind::Etcd;
        self.etcd_auth = true;
        self
    }

    /// Pods get both families.
    pub fn dual_stack(mut self) -> Self {
        self.ipv6_network = Some(IPV6_POD_NETWORK.into());
        self.enable_ipv4 = true;
        self
    }

    /// Pods get IPv6 only (`EnableIPv4: false`).
    pub fn ipv6_only(mut self) -> Self {
        self.ipv6_network = Some(IPV6_POD_NETWORK.into());
        self.enable_ipv4 = false;
        self
    }

    /// The underlay's families.
    pub fn with_underlay(mut self, underlay: UnderlayFamilies) -> Self {
        self.underlay = underlay;
        self
    }

    /// The network config the cluster publishes.
    pub fn net_config(&self) -> serde_json::Value {
        let mut backend = serde_json::Map::new();
        backend.insert("Type".into(), self.backend_type.clone().into());
        backend.extend(self.backend_extra.clone());
        let mut conf = json!({"Backend": backend});
        if self.enable_ipv4 {
            conf["Network"] = self.network.clone().into();
        } else {
            conf["EnableIPv4"] = false.into();
        }
        if let Some(v6) = &self.ipv6_network {
            conf["EnableIPv6"] = true.into();
            conf["IPv6Network"] = v6.clone().into();
        }
        conf
    }
}

/// One node.
#[derive(Debug)]
pub struct ClusterNode {
    /// Its stable number: names it (`node<id>`), its directory and its underlay address
    /// (`198.18.0.<id + 1>`). Indices into [`Cluster::nodes`] shift when a node is removed;
    /// ids never do, and are never reused.
    pub id: usize,
    /// Its namespace.
    pub ns: TestNs,
    /// Its underlay address (IPv4 when the underlay has IPv4, else IPv6).
    pub underlay_ip: String,
    /// Its IPv6 underlay address, when the underlay has IPv6 (`fd18::<id + 1>`).
    pub underlay_ipv6: Option<String>,
    /// Its files: state, socket, subnet.env, IPAM, saved configs, result cache, log.
    pub dir: PathBuf,
    /// Its own store user, when etcd has the roles ([`ClusterOptions::etcd_with_roles`]).
    pub etcd_credentials: Option<EtcdCredentials>,
    daemon: std::sync::Mutex<Option<Child>>,
    extra_args: Vec<String>,
}

impl ClusterNode {
    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("overlayd.sock")
    }

    /// The network config list the node's runtime uses.
    pub fn conflist(&self) -> NetConfList {
        let list = json!({"cniVersion": "1.1.0", "name": "cluster", "plugins": [{
            "type": "vxlan",
            "socket": self.socket(),
            "dataDir": self.dir.join("vxlan"),
            "ipamDataDir": self.dir.join("ipam"),
            "flannelDataDir": self.dir.join("flannel-cni"),
        }]});
        NetConfList::parse(list.to_string().as_bytes()).expect("a valid list")
    }

    /// Whether the daemon answers ready.
    pub fn ready(&self) -> bool {
        http_get(&self.socket(), "/readyz").is_some_and(|(status, _)| status == 200)
    }

    /// The daemon's pid, while the harness has one running.
    pub fn daemon_pid(&self) -> Option<u32> {
        let mut d = self.daemon.lock().unwrap_or_else(|p| p.into_inner());
        let c = d.as_mut()?;
        matches!(c.try_wait(), Ok(None)).then(|| c.id())
    }

    /// The node ID the daemon keeps in its state directory (None before its first start).
    pub fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("state/node-id")).ok().map(|s| s.trim().to_string())
    }

    /// Stops the daemon with `signal` (SIGTERM: graceful; SIGKILL: a crash) and reaps it.
    pub fn stop_daemon(&self, signal: i32) {
        let child = self.daemon.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut child) = child {
            stop(&mut child, signal);
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop_daemon(libc::SIGTERM);
    }
}

/// One etcd member of the cluster's store.
#[derive(Debug)]
pub struct EtcdMember {
    /// Its name (`etcd<i>`).
    pub name: String,
    /// Its namespace on the underlay.
    pub ns: TestNs,
    /// Its underlay address (`198.18.0.250` and up).
    pub ip: String,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    child: Option<Child>,
}

impl EtcdMember {
    /// The client URL.
    pub fn client_url(&self) -> String {
        format!("http://{}:2379", self.ip)
    }

    /// Whether the harness has this member's process running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn start(&mut self) -> Result<(), String> {
        if self.running() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let ip = &self.ip;
        let child = self
            .ns
            .command("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &format!("http://{ip}:2379")])
            .args(["--advertise-client-urls", &format!("http://{ip}:2379")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "ferrocni"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting etcd (apt-get install etcd-server): {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn stop(&mut self, signal: i32) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, signal);
        }
    }

    /// What the member says about itself (`/v3/maintenance/status` of etcd's JSON gateway):
    /// (its member ID, the leader's member ID), or None when it does not answer.
    pub fn status(&self) -> Option<(String, String)> {
        // Asked from inside the member's namespace: the host cannot reach the underlay.
        let addr = format!("{}:2379", self.ip);
        let body = self.ns.run(|| http_post_tcp(&addr, "/v3/maintenance/status", "{}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let id = v["header"]["member_id"].as_str()?.to_string();
        let leader = v["leader"].as_str()?.to_string();
        Some((id, leader))
    }
}

/// A pod.
#[derive(Debug)]
pub struct ClusterPod {
    /// Its namespace.
    pub ns: TestNs,
    /// The node it runs on.
    pub node: usize,
    /// Its first address.
    pub ip: String,
    /// All its addresses (one per family the network has), IPv4 first.
    pub ips: Vec<String>,
    /// How the runtime attached it.
    pub attach: Attach,
    /// What ADD returned.
    pub result: cni_spec::SuccessResult,
}

/// The cluster.
pub struct Cluster {
    opts: ClusterOptions,
    work: tempfile::TempDir,
    underlay: Underlay,
    /// The etcd members (empty on the embedded store).
    pub etcd: Vec<EtcdMember>,
    etcd_auth: Option<EtcdAuth>,
    etcd_operator: Option<EtcdCredentials>,
    kube: Option<KubeEnv>,
    /// The nodes, by index.
    pub nodes: Vec<ClusterNode>,
    next_id: usize,
}

impl Cluster {
    /// Starts the store and the nodes, stores the network config, and waits until every
    /// daemon is ready.
    pub fn start(opts: ClusterOptions) -> Result<Self, String> {
        for b in ["overlayd", "overlayctl", "vxlan", "bridge", "host-local"] {
            if !opts.bin_dir.join(b).exists() {
                return Err(format!(
                    "{} is missing: build the workspace first",
                    opts.bin_dir.join(b).display()
                ));
            }
        }
        let work =
            tempfile::Builder::new().prefix("ferrocni-cluster.").tempdir().map_err(|e| e.to_string())?;
        let underlay = Underlay::new(None);
        let mut cluster = Cluster {
            opts,
            work,
            underlay,
            etcd: Vec::new(),
            etcd_auth: None,
            etcd_operator: None,
            kube: None,
            nodes: Vec::new(),
            next_id: 0,
        };
        if cluster.opts.store == StoreKind::Etcd {
            if !cluster.opts.underlay.v4 {
                return Err("the harness runs etcd on the IPv4 underlay: give the underlay IPv4".into());
            }
            let members = cluster.opts.etcd_members.max(1);
            let ips: Vec<String> = (0..members).map(|m| format!("198.18.0.{}", 250 + m)).collect();
            let initial_cluster = ips
                .iter()
                .enumerate()
                .map(|(m, ip)| format!("etcd{m}=http://{ip}:2380"))
                .collect::<Vec<_>>()
                .join(",");
            for (m, ip) in ips.iter().enumerate() {
                let ns = TestNs::new(&format!("etcd{m}"));
                cluster.underlay.attach(&ns, "ul", &format!("{ip}/24"));
                let mut member = EtcdMember {
                    name: format!("etcd{m}"),
                    ns,
                    ip: ip.clone(),
                    data_dir: cluster.work.path().join(format!("etcd{m}")),
                    log: cluster.work.path().join(format!("etcd{m}.log")),
                    initial_cluster: initial_cluster.clone(),
                    child: None,
                };
                member.start()?;
                cluster.etcd.push(member);
            }
            if cluster.opts.etcd_auth {
                let (auth, operator) = EtcdAuth::enable(&cluster.etcd[0], cluster.work.path())?;
                cluster.etcd_auth = Some(auth);
                cluster.etcd_operator = Some(operator);
            }
        }
        let conf = cluster.work.path().join("net-conf.json");
        let body = cluster.opts.net_config();
        std::fs::write(&conf, body.to_string()).map_err(|e| e.to_string())?;
        if cluster.opts.store == StoreKind::Kube {
            // The ConfigMap's file is the config: there before any daemon.
            cluster.kube = Some(KubeEnv::start(&cluster.work.path().join("kube"), &cluster.underlay)?);
        }
        for _ in 0..cluster.opts.nodes {
            cluster.add_node()?;
        }
        let first = cluster.nodes.first().ok_or("a cluster needs a node")?;
        wait_for(Duration::from_secs(30), "the first daemon's socket", || first.socket().exists())?;
        if cluster.opts.store != StoreKind::Kube {
            let set = cluster.overlayctl(0, &["network", "set", conf.to_str().unwrap()])?;
            if !set.0 {
                return Err(format!("overlayctl network set: {}", set.1));
            }
        }
        for i in 0..cluster.nodes.len() {
            if let Err(e) = cluster.wait_ready(i) {
                return Err(format!("{e}\n{}", cluster.diagnostics()));
            }
        }
        Ok(cluster)
    }

    /// The cluster's work directory.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// How the cluster was built.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Adds a node (namespace, underlay port, daemon); returns its index. Waits for its
    /// socket, not for readiness. In kube mode its Node object is created first, with podCIDR
    /// `10.244.<i+1>.0/24`.
    pub fn add_node(&mut self) -> Result<usize, String> {
        let cidr = format!("10.244.{}.0/24", self.next_id + 1);
        self.add_node_with(&[cidr.as_str()])
    }

    /// [`Cluster::add_node`] with these podCIDRs on its Node object (none: the daemon waits
    /// for one); the same as `add_node` outside kube mode.
    pub fn add_node_with(&mut self, pod_cidrs: &[&str]) -> Result<usize, String> {
        self.add_node_inner(pod_cidrs, None)
    }

    /// Adds a node whose IPv4 underlay address is `addr` (with its prefix, e.g.
    /// `198.19.0.5/24`) instead of one in `198.18.0.0/24`: a node on another L2 network of
    /// the same wire. Embedded store only (the store is a file, reachable from any subnet).
    pub fn add_node_at(&mut self, addr: &str) -> Result<usize, String> {
        if self.opts.store != StoreKind::Embedded || self.opts.underlay != UnderlayFamilies::V4 {
            return Err("add_node_at: embedded store and an IPv4-only underlay only".into());
        }
        let cidr = format!("10.244.{}.0/24", self.next_id + 1);
        self.add_node_inner(&[cidr.as_str()], Some(addr))
    }

    /// A node on the underlay with its directory but no daemon started (e.g. one whose
    /// datapath a test makes by hand, as another daemon would); [`Cluster::start_daemon`]
    /// starts overlayd there later. Embedded or etcd store.
    pub fn add_node_idle(&mut self) -> Result<usize, String> {
        if self.opts.store == StoreKind::Kube {
            return Err("add_node_idle: not in kube mode".into());
        }
        self.add_node_inner_with(&[], None, false)
    }

    fn add_node_inner(&mut self, pod_cidrs: &[&str], v4_at: Option<&str>) -> Result<usize, String> {
        self.add_node_inner_with(pod_cidrs, v4_at, true)
    }

    fn add_node_inner_with(
        &mut self,
        pod_cidrs: &[&str],
        v4_at: Option<&str>,
        start: bool,
    ) -> Result<usize, String> {
        let id = self.next_id;
        if id >= 240 {
            return Err("out of underlay addresses: 240 nodes were made".into());
        }
        self.next_id += 1;
        let ns = TestNs::new(&format!("node{id}"));
        let fams = self.opts.underlay;
        let (v4, v4_prefix) = match v4_at.and_then(|a| a.split_once('/')) {
            Some((ip, len)) => (ip.to_string(), len.to_string()),
            None => (format!("198.18.0.{}", id + 1), "24".to_string()),
        };
        let v6 = format!("fd18::{:x}", id + 1);
        let underlay_ip = if fams.v4 { v4.clone() } else { v6.clone() };
        let underlay_ipv6 = fams.v6.then(|| v6.clone());
        let mut addrs = Vec::new();
        if fams.v4 {
            addrs.push(format!("{v4}/{v4_prefix}"));
        }
        if fams.v6 {
            addrs.push(format!("{v6}/64"));
        }
        self.underlay.attach_all(&ns, "ul", &addrs);
        if let Some(k) = &self.kube {
            k.route_from(&ns);
            k.api.create_node(&format!("node{id}"), pod_cidrs, &[])?;
        }
        let dir = self.work.path().join(format!("node{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let etcd_credentials = match &self.etcd_auth {
            Some(auth) => Some(auth.add_node_user(&self.etcd[0], id)?),
            None => None,
        };
        let node = ClusterNode {
            id,
            ns,
            underlay_ip,
            underlay_ipv6,
            dir,
            etcd_credentials,
            daemon: std::sync::Mutex::new(None),
            extra_args: Vec::new(),
        };
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        if start {
            self.start_daemon(i)?;
        }
        Ok(i)
    }

    /// Node `i`'s Node object name in kube mode (`node<id>`, by its stable id).
    pub fn node_name(&self, i: usize) -> String {
        format!("node{}", self.nodes[i].id)
    }

    /// The API server and its relay, in kube mode.
    pub fn kube(&self) -> Option<&KubeEnv> {
        self.kube.as_ref()
    }

    /// The same, mutable (to stop and restart the API server).
    pub fn kube_mut(&mut self) -> Option<&mut KubeEnv> {
        self.kube.as_mut()
    }

    /// The index of the node with stable id `id`, while it is in the cluster.
    pub fn index_of(&self, id: usize) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Takes node `i` out of the cluster and returns it; dropping it stops its daemon
    /// (SIGTERM, if still running) and deletes its namespace, which unplugs it from the
    /// underlay. Its directory stays in the work directory for inspection. Call
    /// `overlayctl leave` first for a node that leaves for good.
    pub fn remove_node(&mut self, i: usize) -> ClusterNode {
        self.nodes.remove(i)
    }

    /// The etcd client URLs, comma separated (empty on the embedded store).
    pub fn etcd_endpoints(&self) -> String {
        self.etcd.iter().map(EtcdMember::client_url).collect::<Vec<_>>().join(",")
    }

    /// Stops etcd member `m` with `signal` (SIGKILL: a crash) and reaps it.
    pub fn etcd_stop(&mut self, m: usize, signal: i32) {
        self.etcd[m].stop(signal);
    }

    /// Starts etcd member `m` again (on its data directory).
    pub fn etcd_start(&mut self, m: usize) -> Result<(), String> {
        self.etcd[m].start()
    }

    /// The member that leads, as every running member that answers agrees; None while there
    /// is no agreed leader (an election, a lost quorum).
    pub fn etcd_leader(&self) -> Option<usize> {
        let answers: Vec<(usize, String, String)> = self
            .etcd
            .iter()
            .enumerate()
            .filter_map(|(m, member)| member.status().map(|(id, leader)| (m, id, leader)))
            .collect();
        let leader = answers.first()?.2.clone();
        if leader == "0" || answers.iter().any(|(_, _, l)| *l != leader) {
            return None;
        }
        answers.iter().find(|(_, id, _)| *id == leader).map(|(m, _, _)| *m)
    }

    /// Waits until the etcd members agree on a leader and return it.
    pub fn wait_etcd_leader(&self, limit: Duration) -> Result<usize, String> {
        let mut leader = None;
        wait_for(limit, "an etcd leader", || {
            leader = self.etcd_leader();
            leader.is_some()
        })?;
        Ok(leader.expect("set when the wait succeeds"))
    }

    /// The operator's etcd user, when etcd has the roles.
    pub fn etcd_operator(&self) -> Option<&EtcdCredentials> {
        self.etcd_operator.as_ref()
    }

    /// The store options of node `i`'s daemon: [`Cluster::store_args`] with the node's own
    /// store user in place of the operator's.
    pub fn daemon_store_args(&self, i: usize) -> Vec<String> {
        self.store_args_as(self.nodes[i].etcd_credentials.as_ref())
    }

    /// The store options of the operator's commands (for kube mode, the DaemonSet's
    /// arguments, deploy/kubernetes/daemonset.yaml); on etcd with the roles, the operator's
    /// user.
    pub fn store_args(&self) -> Vec<String> {
        self.store_args_as(self.etcd_operator.as_ref())
    }

    fn store_args_as(&self, user: Option<&EtcdCredentials>) -> Vec<String> {
        match self.opts.store {
            StoreKind::Etcd => {
                let mut args = vec!["--etcd-endpoints".into(), self.etcd_endpoints()];
                args.extend(user.map(EtcdCredentials::args).unwrap_or_default());
                args
            }
            StoreKind::Embedded => {
                vec![
                    "--store".into(),
                    "embedded".into(),
                    "--store-file".into(),
                    self.work.path().join("store.db").display().to_string(),
                ]
            }
            StoreKind::Kube => vec![
                "--kube-subnet-mgr".into(),
                "--net-config-file".into(),
                self.work.path().join("net-conf.json").display().to_string(),
            ],
        }
    }

    /// Starts node `i`'s daemon (again); takes `&self` so that a running cluster can be shared.
    pub fn start_daemon(&self, i: usize) -> Result<(), String> {
        let env: Vec<(String, String)> = match self.opts.store {
            StoreKind::Kube => {
                let k = self.kube.as_ref().ok_or("kube mode without an API server")?;
                k.daemon_env(&self.node_name(i))
            }
            _ => Vec::new(),
        };
        let store = self.daemon_store_args(i);
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("overlayd.log"))
            .map_err(|e| e.to_string())?;
        let child = node
            .ns
            .command(self.opts.bin_dir.join("overlayd").to_str().unwrap())
            .args(&store)
            .args(["--iface", "ul", "--ip-masq", "--subnet-lease-ttl", &self.opts.lease_ttl])
            .arg("--state-dir")
            .arg(node.dir.join("state"))
            .arg("--socket")
            .arg(node.socket())
            .arg("--subnet-file")
            .arg(node.dir.join("subnet.env"))
            .args(&node.extra_args)
            .envs(env)
            .env("RUST_LOG", "info")
            // Its own process group: a Ctrl-C in the terminal reaches the harness, which
            // stops the daemons in order, not every daemon at once.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting overlayd on node{}: {e}", node.id))?;
        let mut slot = node.daemon.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut old) = slot.replace(child) {
            // Never two daemons on one node: the old one is stopped first by callers; if
            // not, it goes now.
            stop(&mut old, libc::SIGKILL);
        }
        Ok(())
    }

    /// A namespace of its own on the cluster's underlay with `addr` (e.g. a hand-made peer).
    pub fn attach_to_underlay(&self, label: &str, addr: &str) -> TestNs {
        let ns = TestNs::new(label);
        self.underlay.attach(&ns, "ul", addr);
        ns
    }

    /// Node `i`'s pod subnet from its subnet.env (`10.244.7.0/24`).
    pub fn pod_subnet(&self, i: usize) -> Result<String, String> {
        let env = std::fs::read_to_string(self.nodes[i].dir.join("subnet.env")).map_err(|e| e.to_string())?;
        let line = env.lines().find(|l| l.starts_with("FLANNEL_SUBNET=")).ok_or("no FLANNEL_SUBNET")?;
        // FLANNEL_SUBNET=10.244.7.1/24 names the gateway; the subnet starts at .0.
        let net: ipnet::IpNet =
            line.trim_start_matches("FLANNEL_SUBNET=").parse().map_err(|e| format!("{line}: {e}"))?;
        Ok(net.trunc().to_string())
    }

    /// Node `i`'s pod subnets in every family it leases (`FLANNEL_SUBNET` and
    /// `FLANNEL_IPV6_SUBNET` of its subnet.env), IPv4 first: `["10.244.7.0/24",
    /// "fd10:244:7::/64"]`.
    pub fn pod_subnets(&self, i: usize) -> Result<Vec<ipnet::IpNet>, String> {
        let env = std::fs::read_to_string(self.nodes[i].dir.join("subnet.env")).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for key in ["FLANNEL_SUBNET=", "FLANNEL_IPV6_SUBNET="] {
            if let Some(line) = env.lines().find(|l| l.starts_with(key)) {
                let net: ipnet::IpNet =
                    line.trim_start_matches(key).parse().map_err(|e| format!("{line}: {e}"))?;
                out.push(net.trunc());
            }
        }
        if out.is_empty() { Err("no pod subnet in subnet.env".into()) } else { Ok(out) }
    }

    /// What node `i`'s kernel still has toward `subnets` (e.g. a gone node's): every route of
    /// the main table, either family, whose destination lies in one of them (a wider route,
    /// a default or the whole cluster network, is not toward that node), and every permanent
    /// neighbour entry holding an address in one. Empty when nothing points there.
    pub fn routes_toward(&self, i: usize, subnets: &[ipnet::IpNet]) -> Vec<String> {
        let nl = self.nodes[i].ns.netlink();
        let inside = |n: &ipnet::IpNet| subnets.iter().any(|s| s.contains(n));
        let mut out: Vec<String> = [false, true]
            .into_iter()
            .flat_map(|v6| nl.routes(v6, None).unwrap())
            .filter(|r| inside(&r.dst))
            .map(|r| format!("route {} via {:?} oif {:?}", r.dst, r.gateway, r.oif))
            .collect();
        for link in nl.links().unwrap() {
            for n in nl.neighbours(link.index).unwrap_or_default() {
                if subnets.iter().any(|s| s.contains(&n.ip)) {
                    out.push(format!("neighbour {} on {}", n.ip, link.name));
                }
            }
        }
        out
    }

    /// Extra `overlayd` arguments for node `i`, used from its next (re)start.
    pub fn set_daemon_args(&mut self, i: usize, args: &[&str]) {
        self.nodes[i].extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Stops node `i`'s daemon with `signal` (SIGTERM: graceful; SIGKILL: a crash).
    pub fn stop_daemon(&self, i: usize, signal: i32) {
        self.nodes[i].stop_daemon(signal);
    }

    /// The pid of node `i`'s charon (IPsec), from the pid file overlayd keeps it under.
    pub fn charon_pid(&self, i: usize) -> Option<i32> {
        let f = self.nodes[i].dir.join("state/ipsec/run/charon.pid");
        let pid: i32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Every charon process in node `i`'s network namespace, whatever its pid file says (a
    /// leak check: a charon nobody tracks would keep its SAs and TUN device).
    pub fn charons(&self, i: usize) -> Vec<i32> {
        crate::pids_in_netns(&self.nodes[i].ns.path())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).next().is_some_and(|a| a.ends_with(b"/charon")))
                    && process_alive(*pid)
            })
            .collect()
    }

    /// Stops node `i`'s charon with `signal` and waits until it is gone (at most 5 s).
    pub fn kill_charon(&self, i: usize, signal: i32) {
        let Some(pid) = self.charon_pid(i) else { return };
        // SAFETY: kill(2) on the pid of a charon this cluster's daemon started.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `i`'s daemon is ready.
    pub fn wait_ready(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        wait_for(Duration::from_secs(30), &format!("node{i} ready"), || node.ready())
    }

    /// Runs `overlayctl` against node `i`; returns (success, stdout + stderr).
    pub fn overlayctl(&self, i: usize, args: &[&str]) -> Result<(bool, String), String> {
        // In the node (where the store is reachable), with the store options: the operator's
        // commands write the config to the store themselves.
        let out = self.nodes[i]
            .ns
            .command(&self.opts.bin_dir.join("overlayctl").display().to_string())
            .arg("--socket")
            .arg(self.nodes[i].socket())
            .args(args)
            // In kube mode the config is the ConfigMap's file: nothing for overlayctl to write.
            .args(if matches!(self.opts.store, StoreKind::Kube) { Vec::new() } else { self.store_args() })
            .output()
            .map_err(|e| e.to_string())?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    /// `overlayctl` on node `i`, which must succeed; its output.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let (ok, out) =
            self.overlayctl(i, args).unwrap_or_else(|e| panic!("overlayctl {args:?} on node{i}: {e}"));
        assert!(ok, "overlayctl {args:?} on node{i}: {out}");
        out
    }

    /// `overlayctl --json encryption status` on node `i`.
    pub fn encryption_status(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.ctl(i, &["--json", "encryption", "status"])).unwrap()
    }

    /// Waits until `f(self, i, j)` holds for every ordered pair of distinct `nodes`; on a
    /// timeout, panics with each node's encryption status.
    pub fn wait_all_pairs(
        &self,
        nodes: &[usize],
        what: &str,
        timeout: Duration,
        f: impl Fn(&Cluster, usize, usize) -> bool,
    ) {
        let r =
            wait_for(timeout, what, || nodes.iter().all(|&i| nodes.iter().all(|&j| i == j || f(self, i, j))));
        if let Err(e) = r {
            let st: Vec<String> = nodes.iter().map(|&i| self.encryption_status(i).to_string()).collect();
            panic!("{e}: {st:#?}");
        }
    }

    /// The runtime of node `i` (the plugins in the bin directory, the node's result cache).
    pub fn runtime(&self, node: usize) -> Runtime {
        Runtime::new(vec![self.opts.bin_dir.clone()]).with_cache_dir(self.nodes[node].dir.join("cni-cache"))
    }

    /// Routes node `i` has into the pod network (10.244.0.0/16 or fd10:244::/32 by `v6`)
    /// via a gateway on the underlay: host-gw's routes, as (destination, gateway).
    pub fn host_gw_routes(&self, i: usize, v6: bool) -> Vec<(String, String)> {
        let nl = self.nodes[i].ns.netlink();
        let ul = nl.require_link("ul").unwrap();
        nl.routes(v6, None)
            .unwrap()
            .into_iter()
            .filter(|r| r.oif == Some(ul.index) && r.gateway.is_some())
            .filter(|r| r.dst.to_string().starts_with(if v6 { "fd10:244:" } else { "10.244." }))
            .map(|r| (r.dst.to_string(), r.gateway.unwrap().to_string()))
            .collect()
    }

    /// Creates a pod on `node` and attaches it (ADD through the runtime, in the node).
    pub fn add_pod(&self, node: usize, name: &str) -> Result<ClusterPod, String> {
        let ns = TestNs::new(name);
        let attach = Attach::new(&format!("node{node}-{name}"), ns.path(), "eth0");
        let n = &self.nodes[node];
        let list = n.conflist();
        let rt = self.runtime(node);
        let result =
            n.ns.run(|| rt.add(&list, &attach)).map_err(|e| format!("ADD {name} on node{node}: {e}"))?;
        let mut addrs: Vec<std::net::IpAddr> = result.ips.iter().map(|ip| ip.address.addr()).collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        let ips: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let ip = ips.first().cloned().ok_or("ADD gave no address")?;
        Ok(ClusterPod { ns, node, ip, ips, attach, result })
    }

    /// Detaches a pod (DEL through the runtime, in its node).
    pub fn del_pod(&self, pod: &ClusterPod) -> Result<(), String> {
        let n = &self.nodes[pod.node];
        let list = n.conflist();
        let rt = self.runtime(pod.node);
        n.ns.run(|| rt.del(&list, &pod.attach)).map_err(|e| format!("DEL {}: {e}", pod.ip))
    }

    /// Leaks everything on purpose (the demo's `--keep`): namespaces and daemons live on.
    pub fn keep(self) -> PathBuf {
        let path = self.work.path().to_path_buf();
        std::mem::forget(self);
        path
    }
}

impl Cluster {
    /// What each node's kernel and daemon say: routes, overlay neighbours and FDB, the
    /// masquerade table, conntrack and the end of the daemon's log. Printed when a test
    /// fails with the cluster still up, so a failure in CI can be read afterwards.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!("===== node{} ({}) =====\n", n.id, n.underlay_ip));
            for argv in [
                &["ip", "-d", "route", "show", "table", "all"][..],
                &["ip", "neigh"],
                &["bridge", "fdb", "show"],
                &["nft", "list", "ruleset"],
                &["conntrack", "-L"],
            ] {
                let text = match n.ns.command(argv[0]).args(&argv[1..]).output() {
                    Ok(o) => format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(e) => format!("{e}\n"),
                };
                out.push_str(&format!("--- {}\n{text}", argv.join(" ")));
            }
            let log = std::fs::read_to_string(n.dir.join("overlayd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            out.push_str("--- overlayd.log (end)\n");
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        for n in &self.nodes {
            n.stop_daemon(libc::SIGTERM);
        }
        // charon (IPsec) outlives a stopped daemon on purpose; not the cluster.
        for i in 0..self.nodes.len() {
            if self.charon_pid(i).is_some() {
                self.kill_charon(i, libc::SIGTERM);
            }
            for pid in self.charon_pid(i).into_iter().chain(self.charons(i)) {
                // SAFETY: kill(2) on the pid of a charon in this cluster's node namespace,
                // which ignored SIGTERM or lost its pid file.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for m in &mut self.etcd {
            m.stop(libc::SIGTERM);
        }
        self.kube.take();
    }
}

/// Whether `pid` runs (a zombie does not).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false);
    exists && !zombie
}

/// GET over a unix socket: (status, body).
pub fn http_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: overlayd\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// POST `body` (JSON) to `path` on a plain-HTTP TCP server at `addr` (`ip:port`), within
/// 2 s; the body of a 200 answer.
pub fn http_post_tcp(addr: &str, path: &str, body: &str) -> Option<String> {
    match http_post_tcp_with(addr, path, body, &[]) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// [`http_post_tcp`] with extra request headers; (status, body) of any answer, or why there
/// was none.
pub fn http_post_tcp_with(
    addr: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let io = |e: std::io::Error| format!("POST {path} to {addr}: {e}");
    s.set_read_timeout(Some(Duration::from_secs(2))).map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(2))).map_err(io)?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(io)?;
    let bad = || format!("POST {path} to {addr}: not an HTTP answer: {out:?}");
    let status: u16 = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let (head, rest) = out.split_once("\r\n\r\n").ok_or_else(bad)?;
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// target/debug (or release) of the running test: where the workspace's binaries are.
/// They are built once per test process (a no-op when up to date), so a test never runs
/// a daemon or plugin older than the code it tests.
pub fn bin_dir() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "overlayd", "-p", "plugins", "-p", "cni-spec", "--bins"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().is_ok_and(|s| s.success()), "building overlayd and the plugins");
    });
    dir
}

/// A 100-packets-per-second ping from `from` to `to` for `secs` seconds, running.
pub fn ping_flood(from: &TestNs, to: &str, secs: u32) -> Child {
    from.command("ping")
        .args(["-i", "0.01", "-c", &(secs * 100).to_string(), "-q", to])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a [`ping_flood`]: (sent, received).
pub fn ping_result(child: Child) -> (u32, u32) {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
    let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|s| s.parse().ok()).collect();
    (nums[0], nums[1])
}
