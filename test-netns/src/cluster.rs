//! A cluster on one machine: node namespaces on an underlay switch, `overlayd` in each, pods
//! attached with the `vxlan` plugin through the cni-spec runtime. Used by the demo and the
//! cluster tests; everything it starts is stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_spec::NetConfList;
use cni_spec::runtime::{Attach, Runtime};
use serde_json::json;

use crate::{TestNs, Underlay};

/// Which store the daemons share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One SQLite file in the cluster's work directory.
    Embedded,
    /// Debian's etcd in an infra namespace on the underlay.
    Etcd,
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
}

impl ClusterOptions {
    /// `nodes` nodes on the embedded store, binaries from `bin_dir`.
    pub fn new(nodes: usize, bin_dir: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            nodes,
            store: StoreKind::Embedded,
            bin_dir: bin_dir.into(),
            network: "10.244.0.0/16".into(),
            lease_ttl: "24h".into(),
        }
    }
}

/// One node.
#[derive(Debug)]
pub struct ClusterNode {
    /// Its namespace.
    pub ns: TestNs,
    /// Its underlay address.
    pub underlay_ip: String,
    /// Its files: state, socket, subnet.env, IPAM, saved configs, result cache, log.
    pub dir: PathBuf,
    daemon: Option<Child>,
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
        }]});
        NetConfList::parse(list.to_string().as_bytes()).expect("a valid list")
    }

    /// Whether the daemon answers ready.
    pub fn ready(&self) -> bool {
        http_get(&self.socket(), "/readyz").is_some_and(|(status, _)| status == 200)
    }
}

/// A pod.
#[derive(Debug)]
pub struct ClusterPod {
    /// Its namespace.
    pub ns: TestNs,
    /// The node it runs on.
    pub node: usize,
    /// Its address.
    pub ip: String,
    /// How the runtime attached it.
    pub attach: Attach,
}

/// The cluster.
pub struct Cluster {
    opts: ClusterOptions,
    work: tempfile::TempDir,
    underlay: Underlay,
    etcd: Option<(TestNs, Child)>,
    /// The nodes, by index.
    pub nodes: Vec<ClusterNode>,
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
        let mut cluster = Cluster { opts, work, underlay, etcd: None, nodes: Vec::new() };
        if cluster.opts.store == StoreKind::Etcd {
            let infra = TestNs::new("infra");
            cluster.underlay.attach(&infra, "ul", "198.18.0.250/24");
            let child = infra
                .command("etcd")
                .args(["--name", "cluster", "--data-dir"])
                .arg(cluster.work.path().join("etcd"))
                .args(["--listen-client-urls", "http://198.18.0.250:2379"])
                .args(["--advertise-client-urls", "http://198.18.0.250:2379"])
                .args(["--listen-peer-urls", "http://198.18.0.250:2380"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting etcd (apt-get install etcd-server): {e}"))?;
            cluster.etcd = Some((infra, child));
        }
        for _ in 0..cluster.opts.nodes {
            cluster.add_node()?;
        }
        let conf = cluster.work.path().join("net-conf.json");
        let body = json!({"Network": cluster.opts.network, "Backend": {"Type": "vxlan"}});
        std::fs::write(&conf, body.to_string()).map_err(|e| e.to_string())?;
        let first = cluster.nodes.first().ok_or("a cluster needs a node")?;
        wait_for(Duration::from_secs(30), "the first daemon's socket", || first.socket().exists())?;
        let set = cluster.overlayctl(0, &["network", "set", conf.to_str().unwrap()])?;
        if !set.0 {
            return Err(format!("overlayctl network set: {}", set.1));
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i)?;
        }
        Ok(cluster)
    }

    /// The cluster's work directory.
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Adds a node (namespace, underlay port, daemon); returns its index. Waits for its
    /// socket, not for readiness.
    pub fn add_node(&mut self) -> Result<usize, String> {
        let i = self.nodes.len();
        let ns = TestNs::new(&format!("node{i}"));
        let underlay_ip = format!("198.18.0.{}", i + 1);
        self.underlay.attach(&ns, "ul", &format!("{underlay_ip}/24"));
        let dir = self.work.path().join(format!("node{i}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        self.nodes.push(ClusterNode { ns, underlay_ip, dir, daemon: None, extra_args: Vec::new() });
        self.start_daemon(i)?;
        Ok(i)
    }

    /// Starts node `i`'s daemon (again).
    pub fn start_daemon(&mut self, i: usize) -> Result<(), String> {
        let store: Vec<String> = match self.opts.store {
            StoreKind::Etcd => vec!["--etcd-endpoints".into(), "http://198.18.0.250:2379".into()],
            StoreKind::Embedded => {
                vec!["--store-file".into(), self.work.path().join("store.db").display().to_string()]
            }
        };
        let node = &mut self.nodes[i];
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
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting overlayd on node{i}: {e}"))?;
        node.daemon = Some(child);
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

    /// Extra `overlayd` arguments for node `i`, used from its next (re)start.
    pub fn set_daemon_args(&mut self, i: usize, args: &[&str]) {
        self.nodes[i].extra_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Stops node `i`'s daemon with `signal` (SIGTERM: graceful; SIGKILL: a crash).
    pub fn stop_daemon(&mut self, i: usize, signal: i32) {
        if let Some(mut child) = self.nodes[i].daemon.take() {
            stop(&mut child, signal);
        }
    }

    /// The pid of node `i`'s charon (IPsec), from the pid file overlayd keeps it under.
    pub fn charon_pid(&self, i: usize) -> Option<i32> {
        let f = self.nodes[i].dir.join("state/ipsec/run/charon.pid");
        let pid: i32 = std::fs::read_to_string(f).ok()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
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
        let out = Command::new(self.opts.bin_dir.join("overlayctl"))
            .arg("--socket")
            .arg(self.nodes[i].socket())
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    }

    fn runtime(&self, node: usize) -> Runtime {
        Runtime::new(vec![self.opts.bin_dir.clone()]).with_cache_dir(self.nodes[node].dir.join("cni-cache"))
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
        let ip = result.ips.first().map(|ip| ip.address.addr().to_string()).ok_or("ADD gave no address")?;
        Ok(ClusterPod { ns, node, ip, attach })
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
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!("===== node{i} ({}) =====\n", n.underlay_ip));
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
        for n in &mut self.nodes {
            if let Some(mut child) = n.daemon.take() {
                stop(&mut child, libc::SIGTERM);
            }
        }
        // charon (IPsec) outlives a stopped daemon on purpose; not the cluster.
        for i in 0..self.nodes.len() {
            if self.charon_pid(i).is_some() {
                self.kill_charon(i, libc::SIGTERM);
            }
            if let Some(pid) = self.charon_pid(i) {
                // SAFETY: kill(2) on the pid of this cluster's charon, which ignored SIGTERM.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some((_, mut child)) = self.etcd.take() {
            stop(&mut child, libc::SIGTERM);
        }
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
        cmd.args(["build", "-q", "-p", "overlayd", "-p", "plugins", "--bins"]);
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
