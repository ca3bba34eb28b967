//! Test harness: etcd members and overlayd daemons as child processes inside test
//! namespaces, killed on drop (also when the test panics, after printing their logs).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod scenarios;

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use overlayd::client::{Reply, request_blocking};
use serde_json::Value;
use test_netns::{NetNs, TestNs};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique in this machine for this run (`<pid>-<n>`).
pub fn unique(label: &str) -> String {
    format!("{label}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A temporary directory on tmpfs when there is one (etcd fsyncs a lot).
pub fn tempdir() -> tempfile::TempDir {
    let b = tempfile::Builder::new().prefix("overlayd-test-").tempdir_in("/dev/shm");
    b.or_else(|_| tempfile::tempdir()).expect("a temporary directory")
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs an async body on a fresh runtime whose threads live in `ns`.
pub fn block_on_in<T: Send, F: Future<Output = T>>(ns: &TestNs, f: impl FnOnce() -> F + Send) -> T {
    ns.run(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f())
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Children die with the test thread that started them, even if the test binary is
/// killed before its destructors run.
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and changes only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One etcd member running inside a test namespace.
pub struct Etcd {
    pub name: String,
    pub ip: String,
    /// `http` or `https` (then `extra` carries the TLS flags).
    pub scheme: &'static str,
    extra: Vec<String>,
    ns: NetNs,
    data: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    child: Option<Child>,
}

impl Etcd {
    /// A single-member cluster on `ip` (which also listens on 127.0.0.1 when `ip` is not
    /// loopback), data under `dir`.
    pub fn single(ns: &TestNs, ip: &str, dir: &Path) -> Etcd {
        Etcd::single_with(ns, ip, dir, "http", &[])
    }

    /// [`Etcd::single`] with the client URLs on `scheme` and extra flags (TLS files).
    pub fn single_with(ns: &TestNs, ip: &str, dir: &Path, scheme: &'static str, extra: &[&str]) -> Etcd {
        let mut e = Etcd::new(ns, "m0", ip, &format!("m0=http://{ip}:2380"), dir);
        e.scheme = scheme;
        e.extra = extra.iter().map(|s| s.to_string()).collect();
        e.spawn();
        e.wait_healthy(Duration::from_secs(20));
        e
    }

    /// One member of a cluster described by `initial_cluster` (not waited for: members
    /// of a new cluster only become healthy together).
    pub fn member(ns: &TestNs, name: &str, ip: &str, initial_cluster: &str, dir: &Path) -> Etcd {
        let mut e = Etcd::new(ns, name, ip, initial_cluster, dir);
        e.spawn();
        e
    }

    fn new(ns: &TestNs, name: &str, ip: &str, initial_cluster: &str, dir: &Path) -> Etcd {
        let data = dir.join(format!("etcd-{name}"));
        Etcd {
            name: name.to_string(),
            ip: ip.to_string(),
            scheme: "http",
            extra: Vec::new(),
            ns: NetNs::open(ns.path()).expect("open the test namespace"),
            log: dir.join(format!("etcd-{name}.log")),
            data,
            initial_cluster: initial_cluster.to_string(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let ip = &self.ip;
        let scheme = self.scheme;
        let mut client = format!("{scheme}://{ip}:2379");
        if ip != "127.0.0.1" && !self.initial_cluster.contains(',') {
            client += &format!(",{scheme}://127.0.0.1:2379");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("etcd log");
        let mut cmd = self.ns.command("etcd");
        let child = die_with_parent(&mut cmd)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &format!("{scheme}://{ip}:2379")])
            // Plain-HTTP /health whatever the client URLs use.
            .args(["--listen-metrics-urls", &format!("http://{ip}:2381")])
            .args(["--listen-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-advertise-peer-urls", &format!("http://{ip}:2380")])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "overlayd-test"])
            // Quick elections keep the cluster test short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (apt-get install etcd-server)");
        self.child = Some(child);
    }

    /// `http://ip:2379` (or https).
    pub fn endpoint(&self) -> String {
        format!("{}://{}:2379", self.scheme, self.ip)
    }

    /// Whether `/health` answers true (from inside the member's namespace).
    pub fn healthy(&self) -> bool {
        let addr: std::net::SocketAddr = format!("{}:2381", self.ip).parse().unwrap();
        self.ns
            .run(|| {
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out.contains("\"health\":\"true\""))
            })
            .ok()
            .flatten()
            .unwrap_or(false)
    }

    pub fn wait_healthy(&self, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.healthy()),
            "etcd {} not healthy after {timeout:?}:\n{}",
            self.name,
            tail(&self.log, 30)
        );
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an operator stopping the service.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, libc::SIGTERM);
            if wait_timeout(&mut c, Duration::from_secs(10)).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Starts again on the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "etcd {} is still running", self.name);
        // Restarting members rejoin from their data dir; the flags for a new cluster are
        // ignored then.
        self.spawn();
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- etcd {} log tail ---\n{}", self.name, tail(&self.log, 20));
        }
        self.kill();
    }
}

/// One overlayd process inside a node namespace.
pub struct Daemon {
    pub name: String,
    ns: NetNs,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub subnet_file: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The umask the daemon starts with (the test's own when `None`).
    umask: Option<libc::mode_t>,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `overlayd` in `ns` with its files under `dir/<name>` plus `args`.
    pub fn start(ns: &TestNs, name: &str, dir: &Path, args: &[&str]) -> Daemon {
        Daemon::start_env(ns, name, dir, args, &[])
    }

    /// [`Daemon::start`] with extra environment variables.
    pub fn start_env(ns: &TestNs, name: &str, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::start_inner(ns, name, dir, args, env, None)
    }

    /// [`Daemon::start`] under `umask` (e.g. 0: a permissive service manager or shell).
    pub fn start_umask(ns: &TestNs, name: &str, dir: &Path, args: &[&str], umask: libc::mode_t) -> Daemon {
        Daemon::start_inner(ns, name, dir, args, &[], Some(umask))
    }

    fn start_inner(
        ns: &TestNs,
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        umask: Option<libc::mode_t>,
    ) -> Daemon {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = Daemon {
            name: name.to_string(),
            ns: NetNs::open(ns.path()).expect("open the node namespace"),
            socket: dir.join("overlayd.sock"),
            subnet_file: dir.join("run/subnet.env"),
            log: dir.join("overlayd.log"),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            umask,
            dir,
            child: None,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_overlayd"));
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt;
            // SAFETY: umask(2) is async-signal-safe and changes only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        let child = die_with_parent(&mut cmd)
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--subnet-file")
            .arg(&self.subnet_file)
            .args(["--log", "overlayd=debug,info"])
            .args(&self.args)
            .env_remove("NOTIFY_SOCKET")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("overlayd runs");
        self.child = Some(child);
    }

    /// A request to the API (status 0 when the daemon does not answer).
    pub fn api(&self, method: &str, path: &str) -> Reply {
        request_blocking(&self.socket, method, path, None).unwrap_or(Reply { status: 0, body: Vec::new() })
    }

    /// `GET path` as JSON (`Null` when not 200).
    pub fn get(&self, path: &str) -> Value {
        let r = self.api("GET", path);
        if r.status == 200 { r.json() } else { Value::Null }
    }

    pub fn status(&self) -> Value {
        self.get("/v1/status")
    }

    /// The subnet key this daemon holds, if any.
    pub fn key(&self) -> Option<String> {
        self.status()["key"].as_str().map(str::to_string)
    }

    /// The peers' keys, sorted.
    pub fn peer_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .get("/v1/peers")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["key"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn ready(&self) -> bool {
        self.api("GET", "/readyz").status == 200
    }

    pub fn wait_ready(&self, timeout: Duration) {
        if !wait_until(timeout, || self.ready()) {
            panic!("{} not ready after {timeout:?}:\n{}", self.name, self.log_tail());
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Runs `overlayctl --socket … args` in the daemon's namespace (where its store is reachable).
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ns
            .command(env!("CARGO_BIN_EXE_overlayctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("overlayctl runs")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn term(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(&c, libc::SIGTERM);
        wait_timeout(&mut c, Duration::from_secs(15)).unwrap_or_else(|| {
            let _ = c.kill();
            panic!("{} ignored SIGTERM:\n{}", self.name, self.log_tail())
        })
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself (after `leave`).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        wait_timeout(&mut c, timeout).unwrap_or_else(|| {
            let _ = c.kill();
            panic!("{} did not exit:\n{}", self.name, self.log_tail())
        })
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Runs `f` inside the daemon's namespace.
    pub fn run_in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.ns.run(f).expect("entering the node namespace")
    }

    /// A raw HTTP GET over TCP from inside the daemon's namespace ("" if no answer).
    pub fn get_tcp(&self, addr: &str, path: &str) -> String {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let req = format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n");
        self.run_in_ns(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
            s.write_all(req.as_bytes()).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        })
        .unwrap_or_default()
    }

    /// A metric's value from `/metrics` (first sample whose name+labels start with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.api("GET", "/metrics").text();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- overlayd {} log tail ---\n{}", self.name, tail(&self.log, 25));
        }
        self.kill9();
    }
}

/// An underlay with an infra namespace running one etcd at 192.0.2.254, and node
/// namespaces attached at 192.0.2.1, .2, …
pub struct Cluster {
    pub underlay: test_netns::Underlay,
    pub infra: TestNs,
    pub etcd: Etcd,
    pub nodes: Vec<TestNs>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new(nodes: usize) -> Cluster {
        let dir = tempdir();
        let underlay = test_netns::Underlay::new(None);
        let infra = TestNs::new("infra");
        underlay.attach(&infra, "ul", "192.0.2.254/24");
        let etcd = Etcd::single(&infra, "192.0.2.254", dir.path());
        let nodes = (0..nodes)
            .map(|i| {
                let n = TestNs::new(&format!("node{i}"));
                underlay.attach(&n, "ul", &format!("192.0.2.{}/24", i + 1));
                n
            })
            .collect();
        Cluster { underlay, infra, etcd, nodes, dir }
    }

    /// Daemon args for this cluster's etcd.
    pub fn etcd_args(&self) -> Vec<String> {
        vec!["--etcd-endpoints".into(), self.etcd.endpoint(), "--iface".into(), "ul".into()]
    }

    /// Starts a daemon on node `i` with `extra` args.
    pub fn daemon(&self, i: usize, extra: &[&str]) -> Daemon {
        let mut args: Vec<String> = self.etcd_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Daemon::start(&self.nodes[i], &format!("node{i}"), self.dir.path(), &refs)
    }

    /// Writes `text` to a file in the test dir and returns its path.
    pub fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }

    /// Runs an async body against this etcd from inside the infra namespace.
    pub fn with_store<T: Send, F: Future<Output = T>>(
        &self,
        f: impl FnOnce(overlayd::store::SharedStore) -> F + Send,
    ) -> T {
        let ep = self.etcd.endpoint();
        block_on_in(&self.infra, || async move {
            let store = etcd_store(&[ep]).await;
            f(store).await
        })
    }
}

/// An etcd store client for `endpoints`.
pub async fn etcd_store(endpoints: &[String]) -> overlayd::store::SharedStore {
    let s = overlayd::store::etcd::EtcdStore::connect(overlayd::store::etcd::EtcdOptions {
        endpoints: endpoints.to_vec(),
        ..Default::default()
    })
    .await
    .expect("etcd client");
    std::sync::Arc::new(s)
}
