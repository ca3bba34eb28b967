//! Command-line and environment settings (every flag also reads `OVERLAYD_<NAME>`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::etcd::{EtcdOptions, EtcdStore};
use crate::store::{SharedStore, StoreError};

/// Parses `24h`, `90m`, `3s`, `500ms`, `2d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (like 24h, 90m, 3s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The kinds of store `--store` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// etcd v3 at `--etcd-endpoints` (what giving endpoints means anyway).
    Etcd,
    /// The embedded SQLite store in `--store-file`: one machine only.
    Embedded,
}

/// What a daemon or `overlayctl` given no store says: the embedded store is never a silent
/// default, since daemons on two machines that both fell back to it would each hand out the
/// same subnets (a split brain).
pub const NO_STORE: &str = "no store given: use --etcd-endpoints URL,… (etcd), --kube-subnet-mgr (the \
     Kubernetes API), or --store embedded (a SQLite file that only the daemons of this one machine \
     share: never for a cluster of machines)";

/// Which store, and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Which store: `etcd` (needs --etcd-endpoints; implied by them) or `embedded` (a
    /// single machine's file). Required when there are no --etcd-endpoints (outside
    /// --kube-subnet-mgr): the embedded store is never chosen silently.
    // Its own id: `overlayctl encryption enable` has a `kind` of its own, which would
    // shadow a global argument of that id.
    #[arg(id = "store_kind", long = "store", global = true, env = "OVERLAYD_STORE", value_enum)]
    pub kind: Option<StoreKind>,
    /// etcd client URLs, comma separated.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// CA bundle that signed the etcd servers' certificates.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_CAFILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_CERTFILE")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_KEYFILE")]
    pub etcd_keyfile: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_USERNAME")]
    pub etcd_username: Option<String>,
    /// etcd password (prefer --etcd-password-file: flags show in `ps`).
    #[arg(long, global = true, env = "OVERLAYD_ETCD_PASSWORD", hide_env_values = true)]
    pub etcd_password: Option<String>,
    /// File holding the etcd password.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_PASSWORD_FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Key prefix: the config is `<prefix>/config`, leases `<prefix>/subnets/…`.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_PREFIX", default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// The embedded store's database file (shared by every daemon on this machine).
    #[arg(long, global = true, env = "OVERLAYD_STORE_FILE", default_value = "/var/lib/overlayd/store.db")]
    pub store_file: PathBuf,
    /// Allow etcd credentials (user name and password) over plain `http://`: they would
    /// cross the network in clear text.
    #[arg(long, global = true, env = "OVERLAYD_ETCD_INSECURE_PLAINTEXT")]
    pub etcd_insecure_plaintext: bool,
    /// How often the embedded store is polled for changes.
    #[arg(long, global = true, env = "OVERLAYD_STORE_POLL", default_value = "100ms", value_parser = parse_duration)]
    pub store_poll: Duration,
}

impl StoreArgs {
    /// The store these options name, or why they name none.
    pub fn kind(&self) -> Result<StoreKind, StoreError> {
        match (self.kind, self.etcd_endpoints.is_empty()) {
            (Some(StoreKind::Embedded), false) => Err(StoreError::Options(
                "--store embedded and --etcd-endpoints contradict each other: give one".into(),
            )),
            (Some(StoreKind::Etcd), true) => {
                Err(StoreError::Options("--store etcd needs --etcd-endpoints URL,…".into()))
            }
            (None, true) => Err(StoreError::Options(NO_STORE.into())),
            (Some(StoreKind::Embedded), true) => Ok(StoreKind::Embedded),
            (_, false) => Ok(StoreKind::Etcd),
        }
    }

    /// Opens the configured store.
    pub async fn open(&self) -> Result<SharedStore, StoreError> {
        if self.kind()? == StoreKind::Embedded {
            let mut o = EmbeddedOptions::new(&self.store_file);
            o.poll = self.store_poll;
            let s = tokio::task::spawn_blocking(move || EmbeddedStore::open(o))
                .await
                .map_err(|e| StoreError::Internal(e.to_string()))??;
            return Ok(Arc::new(s));
        }
        let password = match (&self.etcd_password, &self.etcd_password_file) {
            (_, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| StoreError::Rejected(format!("reading {}: {e}", f.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            (p, None) => p.clone(),
        };
        if password.is_some()
            && !self.etcd_insecure_plaintext
            && let Some(plain) = self.etcd_endpoints.iter().find(|e| !e.starts_with("https://"))
        {
            return Err(StoreError::Rejected(format!(
                "refusing to send etcd credentials to {plain} in clear text: use https:// (with --etcd-cafile) \
                 or, on a network you trust, --etcd-insecure-plaintext"
            )));
        }
        let s = EtcdStore::connect(EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
            username: self.etcd_username.clone(),
            password,
            ..Default::default()
        })
        .await?;
        Ok(Arc::new(s))
    }
}

/// `overlayd`'s settings.
/// `--ipsec-datapath`: where ESP runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IpsecDatapath {
    /// Kernel ESP when the kernel has it, else kernel-libipsec.
    Auto,
    /// The kernel's XFRM with ESP.
    Kernel,
    /// charon's kernel-libipsec (ESP in userspace over a TUN device).
    Libipsec,
}

impl IpsecDatapath {
    /// The datapath forced, `None` for `auto` (detected at start).
    pub fn forced(self) -> Option<crate::encryption::ipsec::charon::Datapath> {
        use crate::encryption::ipsec::charon::Datapath;
        match self {
            IpsecDatapath::Auto => None,
            IpsecDatapath::Kernel => Some(Datapath::Kernel),
            IpsecDatapath::Libipsec => Some(Datapath::Libipsec),
        }
    }
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "overlayd", version = crate::VERSION, about = "Per-node overlay daemon: subnet leases and peers")]
pub struct DaemonArgs {
    /// Store settings.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Kubernetes mode (the API as the store).
    #[command(flatten)]
    pub kube: crate::kube::KubeArgs,
    /// Underlay interface (name or one of its addresses); repeatable: the first that exists
    /// with a usable address wins. Default: the default route's.
    #[arg(long, env = "OVERLAYD_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Underlay interface by regular expression over names and addresses; repeatable, tried
    /// in order after --iface.
    #[arg(long, env = "OVERLAYD_IFACE_REGEX", value_parser = crate::underlay::parse_iface_regex)]
    pub iface_regex: Vec<String>,
    /// Underlay interface: the one the route to this address leaves by (`ip route get`),
    /// tried after --iface and --iface-regex.
    #[arg(long, env = "OVERLAYD_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<std::net::IpAddr>,
    /// IPv4 address peers reach this node at (default: the interface's first address).
    #[arg(long, env = "OVERLAYD_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// IPv6 address peers reach this node at.
    #[arg(long, env = "OVERLAYD_PUBLIC_IPV6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// State directory (node ID, last lease, VTEP MAC).
    #[arg(long, env = "OVERLAYD_STATE_DIR", default_value = "/var/lib/overlayd")]
    pub state_dir: PathBuf,
    /// API socket (root only).
    #[arg(long, env = "OVERLAYD_SOCKET", default_value = "/run/overlayd/overlayd.sock")]
    pub socket: PathBuf,
    /// flannel-compatible subnet file.
    #[arg(long, env = "OVERLAYD_SUBNET_FILE", default_value = "/run/flannel/subnet.env")]
    pub subnet_file: PathBuf,
    /// Address for /healthz, /readyz and /metrics over TCP (off when unset).
    #[arg(long, env = "OVERLAYD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Lease TTL.
    #[arg(long, env = "OVERLAYD_SUBNET_LEASE_TTL", default_value = "24h", value_parser = parse_duration)]
    pub subnet_lease_ttl: Duration,
    /// Time between renewals (default: a third of the TTL).
    #[arg(long, env = "OVERLAYD_SUBNET_LEASE_RENEW_INTERVAL", value_parser = parse_duration)]
    pub subnet_lease_renew_interval: Option<Duration>,
    /// Pod MTU to announce (default: Backend.MTU, else the underlay's minus VXLAN overhead).
    #[arg(long, env = "OVERLAYD_MTU")]
    pub mtu: Option<u32>,
    /// Announce that this daemon masquerades (FLANNEL_IPMASQ=true).
    #[arg(long, env = "OVERLAYD_IP_MASQ")]
    pub ip_masq: bool,
    /// Leases and peers only: program no datapath (for tests and simulations).
    #[arg(long, env = "OVERLAYD_NO_DATAPATH")]
    pub no_datapath: bool,
    /// This node takes no part in encryption, whatever the network config says: it never
    /// publishes a key (for nodes that cannot run the tunnel; strict peers refuse it).
    #[arg(long, env = "OVERLAYD_NO_ENCRYPTION")]
    pub no_encryption: bool,
    /// Worker threads of the encryption tunnel (0 = one per CPU, at most 4).
    #[arg(long, env = "OVERLAYD_TUNNEL_THREADS", default_value_t = 0)]
    pub tunnel_threads: usize,
    /// strongSwan's IKE daemon, started by overlayd when the cluster encrypts with IPsec.
    #[arg(long, env = "OVERLAYD_CHARON", default_value = crate::encryption::ipsec::charon::DEFAULT_BINARY)]
    pub charon: PathBuf,
    /// Where ESP runs: `auto` (kernel ESP when the kernel has it, else charon's
    /// kernel-libipsec in userspace), `kernel` or `libipsec`.
    #[arg(long, env = "OVERLAYD_IPSEC_DATAPATH", value_enum, default_value_t = IpsecDatapath::Auto)]
    pub ipsec_datapath: IpsecDatapath,
    /// A net-conf.json to store as the network config when the store has none yet; in kube
    /// mode, the network config itself (default /etc/kube-flannel/net-conf.json).
    #[arg(long, env = "OVERLAYD_NET_CONFIG_FILE", visible_alias = "net-config-path")]
    pub net_config_file: Option<PathBuf>,
    /// Take over a flannel lease (no node ID) that holds this node's public IP: for migrating
    /// a node from flanneld. Off by default: anyone who can write the store could plant one.
    #[arg(long, env = "OVERLAYD_ADOPT_FLANNEL_LEASE")]
    pub adopt_flannel_lease: bool,
    /// Remove flanneld's leftover rules once at start (its FLANNEL-POSTRTG and FLANNEL-FWD
    /// chains, iptables-nft and legacy, and its nftables-mode tables `flannel-ipv4` and
    /// `flannel-ipv6`): for a node migrated from flanneld, which must not run any more.
    #[arg(long, env = "OVERLAYD_REMOVE_FLANNEL_LEFTOVERS")]
    pub remove_flannel_leftovers: bool,
    /// How long readiness waits for the peers to answer across the overlay (peers still
    /// silent then are named in `overlayctl status`; the node becomes ready without them).
    #[arg(long, env = "OVERLAYD_READY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Log filter (tracing-subscriber syntax), e.g. `info` or `overlayd=debug`.
    #[arg(long, env = "OVERLAYD_LOG", default_value = "info")]
    pub log: String,
    /// Log line format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, env = "OVERLAYD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// flanneld's environment variables whose flag has another name here.
const FLANNEL_ENV_RENAMED: &[(&str, &str)] = &[("FLANNELD_NET_CONFIG_PATH", "net_config_file")];

impl DaemonArgs {
    /// The interface selection these flags make.
    pub fn iface_selection(&self) -> crate::underlay::IfaceSelection {
        crate::underlay::IfaceSelection {
            ifaces: self.iface.clone(),
            regexes: self.iface_regex.clone(),
            can_reach: self.iface_can_reach,
        }
    }

    /// Refuses options that name no store, or two (checked before anything is created).
    pub fn check_store(&self) -> Result<(), StoreError> {
        if self.kube.kube_subnet_mgr {
            if self.store.kind.is_some() || !self.store.etcd_endpoints.is_empty() {
                return Err(StoreError::Options(
                    "--kube-subnet-mgr uses the Kubernetes API as the store: drop --store and --etcd-endpoints"
                        .into(),
                ));
            }
            return Ok(());
        }
        self.store.kind().map(|_| ())
    }

    /// The command line parser, reading flanneld's `FLANNELD_<FLAG>` for every flag whose
    /// `OVERLAYD_<FLAG>` is unset (`OVERLAYD_*` wins when both are), so that a node's
    /// flanneld environment carries over. `var` looks a variable up (the process
    /// environment in production).
    pub fn command_with_flannel_env(var: impl Fn(&str) -> bool) -> clap::Command {
        use clap::CommandFactory;
        let mut cmd = DaemonArgs::command();
        let mut swaps: Vec<(String, String)> = Vec::new();
        for a in cmd.get_arguments() {
            let Some(ours) = a.get_env().and_then(|e| e.to_str()) else { continue };
            let Some(name) = ours.strip_prefix("OVERLAYD_") else { continue };
            let flannel = format!("FLANNELD_{name}");
            if !var(ours) && var(&flannel) {
                swaps.push((a.get_id().to_string(), flannel));
            }
        }
        for (env, id) in FLANNEL_ENV_RENAMED {
            let ours = cmd
                .get_arguments()
                .find(|a| a.get_id() == *id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_owned());
            if ours.is_some_and(|o| !var(&o.to_string_lossy())) && var(env) {
                swaps.push((id.to_string(), env.to_string()));
            }
        }
        for (id, env) in swaps {
            cmd = cmd.mut_arg(id, |a| a.env(env));
        }
        cmd
    }

    /// Parses the command line and the environment (`OVERLAYD_*`, else `FLANNELD_*`); exits
    /// with clap's message on bad input.
    pub fn parse_with_flannel_env() -> Self {
        use clap::FromArgMatches;
        let matches = Self::command_with_flannel_env(|v| std::env::var_os(v).is_some()).get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "h", "3x", "-1s", "0", "1e9d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_and_defaults() {
        let a = DaemonArgs::try_parse_from([
            "overlayd",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--subnet-lease-ttl",
            "3s",
        ])
        .unwrap();
        assert_eq!(a.store.etcd_endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(a.subnet_lease_ttl, Duration::from_secs(3));
        assert_eq!(a.store.etcd_prefix, "/coreos.com/network");
        assert_eq!(a.socket, PathBuf::from("/run/overlayd/overlayd.sock"));
        assert!(a.metrics_addr.is_none());
        assert_eq!(a.store.kind().unwrap(), StoreKind::Etcd);
    }

    #[test]
    fn repeatable_interface_flags() {
        let a = DaemonArgs::try_parse_from([
            "overlayd",
            "--iface",
            "eth1",
            "--iface",
            "10.0.0.5",
            "--iface-regex",
            "^enp[0-9]+s0$",
            "--iface-regex",
            "^192\\.168\\.",
            "--iface-can-reach",
            "10.0.0.1",
            "--net-config-path",
            "/etc/kube-flannel/net-conf.json",
        ])
        .unwrap();
        let s = a.iface_selection();
        assert_eq!(s.ifaces, ["eth1", "10.0.0.5"]);
        assert_eq!(s.regexes.len(), 2);
        assert_eq!(s.can_reach, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.net_config_file.unwrap(), PathBuf::from("/etc/kube-flannel/net-conf.json"));
        let bad = DaemonArgs::try_parse_from(["overlayd", "--iface-regex", "(eth"]).unwrap_err().to_string();
        assert!(bad.contains("--iface-regex"), "{bad}");
        assert!(DaemonArgs::try_parse_from(["overlayd", "--iface-can-reach", "host.example"]).is_err());
    }

    #[test]
    fn flanneld_variables_stand_in_for_unset_overlayd_ones() {
        let env_of =
            |set: &'static [&'static str]| DaemonArgs::command_with_flannel_env(move |v| set.contains(&v));
        let env = |cmd: &clap::Command, id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        let c = env_of(&[
            "FLANNELD_IFACE",
            "FLANNELD_ETCD_ENDPOINTS",
            "FLANNELD_NET_CONFIG_PATH",
            "FLANNELD_IP_MASQ",
        ]);
        assert_eq!(env(&c, "iface").as_deref(), Some("FLANNELD_IFACE"));
        assert_eq!(env(&c, "etcd_endpoints").as_deref(), Some("FLANNELD_ETCD_ENDPOINTS"));
        assert_eq!(env(&c, "net_config_file").as_deref(), Some("FLANNELD_NET_CONFIG_PATH"));
        assert_eq!(env(&c, "ip_masq").as_deref(), Some("FLANNELD_IP_MASQ"));
        assert_eq!(env(&c, "public_ip").as_deref(), Some("OVERLAYD_PUBLIC_IP"), "unset stays ours");
        // Ours wins when both are set.
        let c = env_of(&["FLANNELD_IFACE", "OVERLAYD_IFACE"]);
        assert_eq!(env(&c, "iface").as_deref(), Some("OVERLAYD_IFACE"));
    }

    #[test]
    fn the_embedded_store_only_when_asked_for() {
        let parse = |args: &[&str]| {
            let mut all = vec!["overlayd"];
            all.extend_from_slice(args);
            DaemonArgs::try_parse_from(all).unwrap().store.kind()
        };
        let none = parse(&[]).unwrap_err().to_string();
        assert!(none.contains("--store embedded") && none.contains("--etcd-endpoints"), "{none}");
        assert_eq!(parse(&["--store", "embedded"]).unwrap(), StoreKind::Embedded);
        assert_eq!(
            parse(&["--store", "etcd", "--etcd-endpoints", "http://a:2379"]).unwrap(),
            StoreKind::Etcd
        );
        assert!(parse(&["--store", "etcd"]).is_err());
        assert!(parse(&["--store", "embedded", "--etcd-endpoints", "http://a:2379"]).is_err());
        assert!(DaemonArgs::try_parse_from(["overlayd", "--store", "sqlite"]).is_err());
    }
}
