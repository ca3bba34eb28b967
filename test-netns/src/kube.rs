//! A real Kubernetes API server for tests, benchmarks and the demo: Debian's etcd and a
//! `kube-apiserver` binary (v1.20.2 in `shared/kube/`) on free 127.0.0.1 ports of the host
//! namespace, with the flags of `shared/kube/start-apiserver.sh` (RBAC, a bearer token for an
//! admin, a service-account signing key); a TCP relay that makes it reachable from the node
//! namespaces of the cluster harness at `10.96.0.1:443` (the API server's service address, in
//! its certificate, as a pod sees it through `KUBERNETES_SERVICE_HOST`); and `kubectl`.
//!
//! Why a relay: the API server listens on the host's loopback, which no node namespace can
//! reach, and `kube-apiserver` cannot listen inside a namespace we give it a socket of. The
//! relay's listening socket is made inside an infra namespace on the underlay; each
//! connection is forwarded from the host namespace. It also counts the bytes each way.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::TestNs;

/// The service address the relay listens on in the infra namespace.
pub const SERVICE_IP: &str = "10.96.0.1";
/// The infra namespace's underlay address (the route to [`SERVICE_IP`] goes through it).
pub const INFRA_IP: &str = "198.18.0.250";

/// The `kube-apiserver` binary: `KUBE_APISERVER`, else `shared/kube/bin/kube-apiserver` in
/// the repository's parent directory. `Err` says why there is none (the test then skips,
/// or fails under `CI=true`).
pub fn apiserver_binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("KUBE_APISERVER") {
        return if Path::new(&p).is_file() {
            Ok(p.into())
        } else {
            Err(format!("KUBE_APISERVER={p} is not a file"))
        };
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("test-netns is inside the repository");
    let p = repo.parent().unwrap_or(Path::new("/")).join("shared/kube/bin/kube-apiserver");
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("no kube-apiserver: set KUBE_APISERVER or put the binary at {}", p.display()))
    }
}

/// Whether `kubectl` runs.
pub fn kubectl_available() -> bool {
    Command::new("kubectl").arg("version").arg("--client").output().is_ok_and(|o| o.status.success())
}

/// The deployment manifests of the repository (`deploy/kubernetes`).
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository").join("deploy/kubernetes")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and changes only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// etcd and kube-apiserver on 127.0.0.1; stopped on drop.
#[derive(Debug)]
pub struct ApiServer {
    dir: PathBuf,
    bin: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    args: Vec<String>,
    /// The API server's port on 127.0.0.1.
    pub port: u16,
    /// The admin's bearer token (group system:masters).
    pub token: String,
}

impl ApiServer {
    /// Starts both in `dir` (created; keeps the data, certificates, logs, kubeconfig) and
    /// waits for `/readyz`.
    pub fn start(dir: &Path) -> Result<ApiServer, String> {
        let bin = apiserver_binary()?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let run = |argv: &[&str]| -> Result<(), String> {
            let o =
                Command::new(argv[0]).args(&argv[1..]).output().map_err(|e| format!("{}: {e}", argv[0]))?;
            if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) }
        };
        let key = dir.join("sa.key");
        let key_s = key.to_str().unwrap();
        run(&["openssl", "genrsa", "-out", key_s, "2048"])?;
        run(&["openssl", "rsa", "-in", key_s, "-pubout", "-out", dir.join("sa.pub").to_str().unwrap()])?;
        let mut raw = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut raw))
            .map_err(|e| e.to_string())?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.join("token"), &token).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("tokens.csv"), format!("{token},admin,admin,system:masters\n"))
            .map_err(|e| e.to_string())?;
        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd_log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let etcd = die_with_parent(&mut Command::new("etcd"))
            .args(["--name", "local", "--data-dir"])
            .arg(dir.join("etcd-data"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("local={peer_url}")])
            .stdout(Stdio::null())
            .stderr(etcd_log)
            .spawn()
            .map_err(|e| format!("starting etcd (apt-get install etcd-server): {e}"))?;
        let d = |p: &str| dir.join(p).display().to_string();
        let args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            "--insecure-port=0".into(),
            "--allow-privileged=true".into(),
            format!("--cert-dir={}", d("certs")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--disable-admission-plugins=ServiceAccount".into(),
        ];
        let mut s =
            ApiServer { dir: dir.to_path_buf(), bin, etcd: Some(etcd), apiserver: None, args, port, token };
        s.write_kubeconfig()?;
        s.start_apiserver()?;
        Ok(s)
    }

    fn write_kubeconfig(&self) -> Result<(), String> {
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\ncurrent-context: local\n",
            self.port,
            self.ca().display(),
            self.token
        );
        std::fs::write(self.kubeconfig(), kc).map_err(|e| e.to_string())
    }

    /// Starts kube-apiserver (again, on the same port and data) and waits for `/readyz`.
    pub fn start_apiserver(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("apiserver.log"))
            .map_err(|e| e.to_string())?;
        let child = die_with_parent(&mut Command::new(&self.bin))
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.apiserver = Some(child);
        let end = Instant::now() + Duration::from_secs(90);
        while Instant::now() < end {
            if self.kubectl(&["get", "--raw", "/readyz"]).is_ok_and(|o| o.trim() == "ok") {
                return Ok(());
            }
            if let Some(c) = self.apiserver.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!(
                    "kube-apiserver exited ({st}):\n{}",
                    tail(&self.dir.join("apiserver.log"), 20)
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("kube-apiserver not ready after 90 s:\n{}", tail(&self.dir.join("apiserver.log"), 20)))
    }

    /// Stops kube-apiserver only (etcd keeps the data): an outage.
    pub fn stop_apiserver(&mut self) {
        stop_child(&mut self.apiserver);
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The admin's kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The API server's (self-signed) certificate: the CA clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("apiserver.log"), lines)
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig()).args(args);
        c
    }

    /// `kubectl ARGS` as the admin: stdout, or stderr as the error.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_in(args, None)
    }

    /// `kubectl ARGS` with `stdin`.
    pub fn kubectl_in(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut c = self.kubectl_cmd(args);
        c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|e| format!("kubectl: {e}"))?;
        if let Some(s) = stdin {
            let _ = child.stdin.take().expect("piped").write_all(s.as_bytes());
        }
        let o = child.wait_with_output().map_err(|e| format!("kubectl: {e}"))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr).trim()))
        }
    }

    /// `kubectl ARGS` with another bearer token (no admin credentials).
    pub fn kubectl_as(&self, token: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["--token", token];
        all.extend_from_slice(args);
        self.kubectl(&all)
    }

    /// A raw request with bearer `token` (`curl`, no kubectl: it would GET first):
    /// (HTTP status, body).
    pub fn raw_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let o = Command::new("curl")
            .args(["-sS", "-X", method, "--cacert"])
            .arg(self.ca())
            .args([
                "-H",
                &format!("Authorization: Bearer {token}"),
                "-H",
                &format!("Content-Type: {content_type}"),
            ])
            .args(["--data-binary", body, "-w", "\n%{http_code}", &url])
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').ok_or_else(|| format!("curl: {out}"))?;
        Ok((code.trim().parse().map_err(|_| format!("curl: {out}"))?, body.to_string()))
    }

    /// A merge patch of Node `name`'s status subresource with `token`: (HTTP status, body).
    pub fn patch_node_status_as(
        &self,
        token: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(u16, String), String> {
        self.raw_as(
            token,
            "PATCH",
            &format!("/api/v1/nodes/{name}/status"),
            "application/merge-patch+json",
            &patch.to_string(),
        )
    }

    /// `kubectl apply -f -` of one object.
    pub fn apply(&self, obj: &Value) -> Result<(), String> {
        self.kubectl_in(&["apply", "-f", "-"], Some(&obj.to_string())).map(drop)
    }

    /// Creates (or updates) Node `name` with `pod_cidrs` and `annotations`.
    pub fn create_node(
        &self,
        name: &str,
        pod_cidrs: &[&str],
        annotations: &[(&str, &str)],
    ) -> Result<(), String> {
        let mut spec = json!({});
        if let Some(first) = pod_cidrs.first() {
            spec = json!({"podCIDR": first, "podCIDRs": pod_cidrs});
        }
        let ann: serde_json::Map<String, Value> =
            annotations.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.kubectl_in(
            &["create", "-f", "-"],
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": ann}, "spec": spec}).to_string()),
        )
        .map(drop)
    }

    /// Node `name` as JSON.
    pub fn node(&self, name: &str) -> Result<Value, String> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| e.to_string())
    }

    /// A token for service account `ns/name` from the TokenRequest API (the server signs it
    /// with its service-account key; no token controller is needed), valid for a day.
    pub fn service_account_token(&self, ns: &str, name: &str) -> Result<String, String> {
        let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}});
        let out = self.kubectl_in(
            &["create", "--raw", &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"), "-f", "-"],
            Some(&req.to_string()),
        )?;
        let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        v["status"]["token"].as_str().map(str::to_string).ok_or_else(|| format!("no token in {out}"))
    }

    /// A pod's service-account directory for `ns/name` in `dir`: `token`, `ca.crt`, `namespace`.
    pub fn service_account_dir(&self, ns: &str, name: &str, dir: &Path) -> Result<PathBuf, String> {
        let token = self.service_account_token(ns, name)?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("token"), token).map_err(|e| e.to_string())?;
        std::fs::copy(self.ca(), dir.join("ca.crt")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("namespace"), ns).map_err(|e| e.to_string())?;
        Ok(dir.to_path_buf())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kube-apiserver log (end) ---\n{}", self.log_tail(30));
        }
        stop_child(&mut self.apiserver);
        stop_child(&mut self.etcd);
    }
}

/// Bytes the relay moved.
#[derive(Debug, Default)]
pub struct RelayCounters {
    /// Client to API server.
    pub up: AtomicU64,
    /// API server to client.
    pub down: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
}

/// A TCP relay from a namespace's address to an address of the host namespace; stopped
/// (every connection closed) on drop.
#[derive(Debug)]
pub struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// What went through.
    pub counters: Arc<RelayCounters>,
    /// Where it listens.
    pub listen: SocketAddr,
}

impl Relay {
    /// Listens on `listen` inside `ns` and forwards each connection to `upstream`.
    pub fn start(ns: &TestNs, listen: SocketAddr, upstream: SocketAddr) -> Relay {
        let listener = ns
            .run(|| TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("relay listening on {listen} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (flag, c, o) = (stop.clone(), counters.clone(), open.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                c.connections.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                // Connected from this thread: the host namespace.
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = server.set_nodelay(true);
                let mut list = o.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|s| s.peer_addr().is_ok());
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        list.push(s);
                    }
                }
                drop(list);
                for (from, to, count) in [
                    (client.try_clone(), server.try_clone(), Which::Up),
                    (server.try_clone(), client.try_clone(), Which::Down),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else { continue };
                    let c = c.clone();
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    let counter = match count {
                                        Which::Up => &c.up,
                                        Which::Down => &c.down,
                                    };
                                    counter.fetch_add(n as u64, Ordering::Relaxed);
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { stop, thread: Some(thread), open, counters, listen }
    }

    /// Closes every connection it carries (the clients see the server go away).
    pub fn cut(&self) {
        for s in self.open.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// (up, down) bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.counters.up.load(Ordering::Relaxed), self.counters.down.load(Ordering::Relaxed))
    }
}

#[derive(Clone, Copy)]
enum Which {
    Up,
    Down,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.cut();
    }
}

/// An API server reachable from a cluster's underlay: the server, the infra namespace
/// holding the relay at `10.96.0.1:443`, and the service account the daemons run as
/// (`kube-system/overlayd`, with the RBAC of `deploy/kubernetes/rbac.yaml`).
#[derive(Debug)]
pub struct KubeEnv {
    /// The relay (first: dropped before the server).
    pub relay: Relay,
    /// The server.
    pub api: ApiServer,
    /// The infra namespace (relay) on the underlay at [`INFRA_IP`].
    pub infra: TestNs,
    /// The daemons' service-account directory (`--kube-service-account-dir`).
    pub sa_dir: PathBuf,
}

impl KubeEnv {
    /// Starts the server in `dir`, applies the RBAC manifest, makes the service account's
    /// token, and plugs the relay into `underlay`.
    pub fn start(dir: &Path, underlay: &crate::Underlay) -> Result<KubeEnv, String> {
        let api = ApiServer::start(dir)?;
        api.kubectl(&["apply", "-f", manifests_dir().join("rbac.yaml").to_str().unwrap()])?;
        let sa_dir = api.service_account_dir("kube-system", "overlayd", &dir.join("serviceaccount"))?;
        let infra = TestNs::new("kubeinfra");
        underlay.attach(&infra, "ul", &format!("{INFRA_IP}/24"));
        infra.exec(&["ip", "addr", "add", &format!("{SERVICE_IP}/32"), "dev", "lo"]);
        let relay = Relay::start(&infra, format!("{SERVICE_IP}:443").parse().unwrap(), api.addr());
        Ok(KubeEnv { relay, api, infra, sa_dir })
    }

    /// Lets node namespace `ns` reach the API at `10.96.0.1:443`.
    pub fn route_from(&self, ns: &TestNs) {
        ns.exec(&["ip", "route", "replace", &format!("{SERVICE_IP}/32"), "via", INFRA_IP]);
    }

    /// The environment and arguments a DaemonSet pod gives overlayd (`deploy/kubernetes/
    /// daemonset.yaml`), for node `name`, with the service account at [`KubeEnv::sa_dir`].
    pub fn daemon_env(&self, name: &str) -> Vec<(String, String)> {
        vec![
            ("NODE_NAME".into(), name.into()),
            ("KUBERNETES_SERVICE_HOST".into(), SERVICE_IP.into()),
            ("KUBERNETES_SERVICE_PORT".into(), "443".into()),
            ("OVERLAYD_KUBE_SERVICE_ACCOUNT_DIR".into(), self.sa_dir.display().to_string()),
        ]
    }
}
