//! Talks to overlayd over its socket: network config, this node's lease, all leases,
//! peers, store health, leave. `--json` prints the daemon's JSON for scripts.
//! The operator's commands (`network set`, `encryption enable|disable|rotate`) write the
//! network config to the store itself, with the store options and credentials given here
//! (the operator's, not a node's): no daemon can write the config.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use overlayd::encryption::admin;
use overlayd::logsafe::printable;
use overlayd::subnet::KeyLayout;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "overlayctl", version = overlayd::VERSION, about = "Control and inspect overlayd")]
struct Cli {
    /// overlayd's API socket.
    #[arg(long, env = "OVERLAYD_SOCKET", default_value = "/run/overlayd/overlayd.sock")]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// The store, for the operator's commands (the same options as overlayd's).
    #[command(flatten)]
    store: overlayd::options::StoreArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The network config.
    Network {
        #[command(subcommand)]
        cmd: NetworkCmd,
    },
    /// This node's lease.
    Lease,
    /// Every lease in the store, with this node's verdict on each.
    Leases,
    /// The valid remote leases this node uses.
    Peers,
    /// Store reachability, per endpoint.
    Health,
    /// The daemon's status.
    Status,
    /// Release this node's lease and stop the daemon.
    Leave,
    /// This node's identity key and the identities it has pinned other nodes to.
    Identity {
        #[command(subcommand)]
        cmd: IdentityCmd,
    },
    /// Encryption between nodes (WireGuard in userspace or IPsec), for the whole cluster.
    Encryption {
        #[command(subcommand)]
        cmd: EncryptionCmd,
    },
    /// Copy the CNI plugins and the conflist onto the node, atomically (the DaemonSet's init
    /// container; needs no daemon).
    InstallCni(overlayd::kube::install::InstallOptions),
    /// Print a shell completion script (needs no daemon), e.g.
    /// `overlayctl completions bash >/etc/bash_completion.d/overlayctl`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
        /// The program the script completes.
        #[arg(long, value_enum, default_value = "overlayctl")]
        program: Program,
    },
    /// Print a man page in roff (needs no daemon), e.g.
    /// `overlayctl man >/usr/local/share/man/man1/overlayctl.1`.
    Man {
        /// The program the page describes.
        #[arg(long, value_enum, default_value = "overlayctl")]
        program: Program,
    },
}

/// The binaries of this package, for completions and man pages.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Program {
    Overlayctl,
    Overlayd,
}

impl Program {
    fn command(self) -> clap::Command {
        use clap::CommandFactory;
        match self {
            Program::Overlayctl => Cli::command(),
            Program::Overlayd => overlayd::options::DaemonArgs::command(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum EncryptionCmd {
    /// This node's tunnel: key, peers, sessions, counters.
    Status,
    /// Turn encryption on for every node (or change its options).
    Enable {
        /// The engine: wireguard or ipsec (default: the current one, else wireguard).
        #[arg(long = "type", value_parser = ["wireguard", "ipsec"])]
        kind: Option<String>,
        /// Drop pod traffic between nodes that is not encrypted.
        #[arg(long)]
        strict: bool,
        /// Tunnel UDP port (default 51820).
        #[arg(long)]
        port: Option<u16>,
        /// Hand out a new random pre-shared key through the store.
        #[arg(long)]
        psk: bool,
        /// Remove the pre-shared key.
        #[arg(long, conflicts_with = "psk")]
        no_psk: bool,
        /// Rotate every node's key this often (e.g. 24h; at least 60s).
        #[arg(long, value_parser = overlayd::options::parse_duration)]
        rotation_period: Option<Duration>,
        /// Keepalive for peers behind NAT (e.g. 25s).
        #[arg(long, value_parser = overlayd::options::parse_duration)]
        keepalive: Option<Duration>,
    },
    /// Turn encryption off for every node (traffic moves back to VXLAN).
    Disable,
    /// Give every node a new key (no traffic is lost).
    Rotate,
}

#[derive(Debug, Subcommand)]
enum IdentityCmd {
    /// This node's identity and its pins (node ID → identity key).
    Show,
    /// Pin NODE to KEY on this node, replacing what it had pinned (a node reinstalled with a
    /// new key but its old node ID: KEY is what `identity show` prints there). Run it on
    /// every node.
    Pin {
        /// The node ID.
        node: String,
        /// Its identity key (base64).
        key: String,
    },
    /// Forget the identity pinned for NODE on this node; its next signed lease is pinned
    /// anew on first sight.
    Forget {
        /// The node ID.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum NetworkCmd {
    /// Show the effective config (defaults filled in) and the MTU.
    Show,
    /// Store a new config (net-conf.json; `-` reads stdin). Validated first.
    Set {
        /// The file.
        file: PathBuf,
    },
}

fn encryption_request(cmd: &EncryptionCmd) -> admin::Request {
    let mut r = admin::Request {
        action: admin::Action::Disable,
        kind: None,
        strict: None,
        port: None,
        preshared_key: None,
        rotation_period: None,
        persistent_keepalive: None,
    };
    match cmd {
        EncryptionCmd::Enable { kind, strict, port, psk, no_psk, rotation_period, keepalive } => {
            r.action = admin::Action::Enable;
            r.kind = kind.clone();
            r.strict = Some(*strict);
            r.port = *port;
            r.preshared_key = (*psk || *no_psk).then_some(*psk);
            r.rotation_period = rotation_period.map(|d| d.as_secs());
            r.persistent_keepalive = keepalive.map(|k| k.as_secs().min(u16::MAX as u64) as u16);
        }
        EncryptionCmd::Rotate => r.action = admin::Action::Rotate,
        EncryptionCmd::Disable | EncryptionCmd::Status => {}
    }
    r
}

/// Refuses a store other than the one this node's daemon uses (when it answers): an operator
/// who forgot `--etcd-endpoints` must not write a local file nobody reads.
fn check_same_store(cli: &Cli) -> Result<(), String> {
    cli.store.kind().map_err(|e| e.to_string())?;
    let Ok(daemon) = call(cli, "GET", "/v1/store", None, Duration::from_secs(3)) else { return Ok(()) };
    let theirs = daemon["store"].as_str().unwrap_or_default().to_string();
    let same = match cli.store.kind() {
        Ok(overlayd::options::StoreKind::Embedded) => {
            theirs == format!("embedded {}", cli.store.store_file.display())
        }
        Ok(overlayd::options::StoreKind::Etcd) => theirs.starts_with("etcd "),
        Err(_) => false,
    };
    if same {
        Ok(())
    } else {
        Err(format!(
            "overlayd on this node uses the store `{theirs}`; give the same store (--etcd-endpoints, or \
             --store embedded with its --store-file) with the operator's credentials"
        ))
    }
}

/// Runs an operator write against the store.
fn operator_write<T: serde::Serialize, F>(cli: &Cli, write: F) -> Result<Value, String>
where
    F: AsyncFnOnce(&dyn overlayd::store::Store, &KeyLayout) -> Result<T, overlayd::operator::OperatorError>,
{
    check_same_store(cli)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let store = cli.store.open().await.map_err(|e| format!("opening the store: {e}"))?;
        let layout = KeyLayout::new(&cli.store.etcd_prefix);
        let out = write(store.as_ref(), &layout).await.map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(out).expect("json serializes"))
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {}", printable(&e));
            ExitCode::FAILURE
        }
    }
}

fn call(
    cli: &Cli,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let r = rt
        .block_on(overlayd::client::request(&cli.socket, method, path, body, timeout))
        .map_err(|e| e.to_string())?;
    let v = r.json();
    if r.status >= 400 {
        let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| r.text());
        return Err(format!("{method} {path}: {msg} (HTTP {})", r.status));
    }
    Ok(v)
}

/// The API path of a node's pin; node IDs are plain tokens.
fn pin_path(node: &str) -> Result<String, String> {
    if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        return Err(format!("{:?} is not a node ID", printable(node)));
    }
    Ok(format!("/v1/pins/{node}"))
}

fn get(cli: &Cli, path: &str) -> Result<Value, String> {
    call(cli, "GET", path, None, Duration::from_secs(60))
}

/// A field for the terminal: lease fields come from any node, so control characters
/// (escape sequences) are shown escaped, never sent to the terminal.
fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s),
        other => printable(&other.to_string()),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// One row per element of the array `items`, made by `row`.
fn rows_with(items: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    items.as_array().into_iter().flatten().map(row).collect()
}

/// A cell of `item` per JSON pointer (`/value/PublicIP`).
fn cells(item: &Value, pointers: &[&str]) -> Vec<String> {
    pointers.iter().map(|p| s(item.pointer(p).unwrap_or(&Value::Null))).collect()
}

/// One row per element of the array `items`, a cell per JSON pointer.
fn rows(items: &Value, pointers: &[&str]) -> Vec<Vec<String>> {
    rows_with(items, |item| cells(item, pointers))
}

fn fields(v: &Value, keys: &[&str]) {
    for k in keys {
        println!("{k:<16} {}", s(&v[*k]));
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let out = match &cli.cmd {
        Cmd::Completions { shell, program } => {
            let mut cmd = program.command();
            let name = cmd.get_name().to_string();
            clap_complete::generate(*shell, &mut cmd, name, &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Man { program } => {
            return clap_mangen::Man::new(program.command())
                .render(&mut std::io::stdout())
                .map_err(|e| format!("writing the man page: {e}"));
        }
        Cmd::InstallCni(o) => {
            for r in overlayd::kube::install::install(o)? {
                match r {
                    overlayd::kube::install::Outcome::Written(p) => println!("installed {}", p.display()),
                    overlayd::kube::install::Outcome::Unchanged(p) => println!("unchanged {}", p.display()),
                }
            }
            return Ok(());
        }
        Cmd::Network { cmd: NetworkCmd::Show } => get(cli, "/v1/network")?,
        Cmd::Network { cmd: NetworkCmd::Set { file } } => {
            let mut text = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut text).map_err(|e| e.to_string())?;
            } else {
                text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            }
            let text = String::from_utf8(text).map_err(|_| format!("{}: not UTF-8", file.display()))?;
            operator_write(cli, async |store, layout| {
                overlayd::operator::set_config(store, layout, &text).await
            })?
        }
        Cmd::Lease => get(cli, "/v1/lease")?,
        Cmd::Leases => get(cli, "/v1/leases")?,
        Cmd::Peers => get(cli, "/v1/peers")?,
        Cmd::Health => get(cli, "/v1/store")?,
        Cmd::Status => get(cli, "/v1/status")?,
        Cmd::Leave => call(cli, "POST", "/v1/leave", None, Duration::from_secs(60))?,
        Cmd::Identity { cmd: IdentityCmd::Show } => get(cli, "/v1/identity")?,
        Cmd::Identity { cmd: IdentityCmd::Forget { node } } => {
            call(cli, "DELETE", &pin_path(node)?, None, Duration::from_secs(10))?
        }
        Cmd::Identity { cmd: IdentityCmd::Pin { node, key } } => {
            call(cli, "PUT", &pin_path(node)?, Some(key.clone().into_bytes()), Duration::from_secs(10))?
        }
        Cmd::Encryption { cmd: EncryptionCmd::Status } => get(cli, "/v1/encryption")?,
        Cmd::Encryption { cmd } => {
            let request = encryption_request(cmd);
            operator_write(cli, async |store, layout| {
                overlayd::operator::change_encryption(store, layout, &request).await
            })?
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out).expect("json serializes"));
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Network { cmd: NetworkCmd::Show } => {
            println!("{}", serde_json::to_string_pretty(&out["config"]).expect("json serializes"));
            println!("MTU {}", s(&out["mtu"]));
        }
        Cmd::Network { cmd: NetworkCmd::Set { .. } } => {
            for w in out["warnings"].as_array().into_iter().flatten() {
                eprintln!("warning: {}", s(w));
            }
            println!("stored at revision {}", s(&out["revision"]));
            println!("running daemons apply its Encryption section now, anything else when restarted");
        }
        Cmd::Lease => fields(
            &out,
            &["subnet", "ipv6_subnet", "public_ip", "node_id", "backend_type", "renewals", "store_ok", "key"],
        ),
        Cmd::Leases => table(
            &["KEY", "PUBLIC-IP", "NODE", "OWN", "VALID"],
            rows_with(&out["leases"], |l| {
                let valid = if l["valid"] == Value::Bool(true) {
                    "yes".into()
                } else {
                    format!("no: {}", s(&l["reason"]))
                };
                vec![s(&l["key"]), s(&l["value"]["PublicIP"]), s(&l["value"]["NodeID"]), s(&l["own"]), valid]
            }),
        ),
        Cmd::Peers => table(
            &["SUBNET", "IPV6-SUBNET", "PUBLIC-IP", "VTEP-MAC", "NODE"],
            rows(&out, &["/subnet", "/ipv6_subnet", "/public_ip", "/backend_data/VtepMAC", "/node_id"]),
        ),
        Cmd::Health => {
            println!("store     {}", s(&out["store"]));
            println!("healthy   {}", s(&out["health"]["healthy"]));
            println!("revision  {}", s(&out["health"]["revision"]));
            if let Some(e) = out["last_error"].as_str() {
                println!("last error {}", printable(e));
            }
            table(
                &["ENDPOINT", "HEALTHY", "LEADER", "VERSION", "ERROR"],
                rows(
                    &out["health"]["endpoints"],
                    &["/endpoint", "/healthy", "/is_leader", "/version", "/error"],
                ),
            );
        }
        Cmd::Status => fields(
            &out,
            &[
                "ready",
                "node_id",
                "subnet",
                "ipv6_subnet",
                "peers",
                "readiness",
                "datapath",
                "store",
                "store_ok",
                "last_error",
                "renewals",
                "subnet_changes",
            ],
        ),
        Cmd::Leave => println!("lease released; overlayd is stopping"),
        Cmd::Identity { cmd: IdentityCmd::Show } => {
            fields(&out, &["node_id", "identity"]);
            table(
                &["NODE", "PINNED-IDENTITY"],
                out["pins"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(n, k)| vec![printable(n), s(k)])
                    .collect(),
            );
        }
        Cmd::Identity { cmd: IdentityCmd::Forget { node } } => {
            println!("forgot the identity pinned for {}", printable(node))
        }
        Cmd::Identity { cmd: IdentityCmd::Pin { node, .. } } => {
            println!("{} is pinned to {}", printable(node), s(&out["identity"]))
        }
        Cmd::Encryption { cmd: EncryptionCmd::Status } if out["type"] == "ipsec" => {
            fields(&out, &["type", "phase", "enabled", "strict", "key_generation"]);
            let ip = &out["ipsec"];
            fields(ip, &["phase", "datapath", "device", "mtu", "charon_restarts", "error"]);
            table(
                &["LEASE", "ENDPOINT", "AUTH", "IKE", "ESTABLISHED", "ROUTED", "RX", "TX"],
                rows(
                    &ip["peers"],
                    &[
                        "/lease",
                        "/endpoint",
                        "/auth",
                        "/ike_state",
                        "/established",
                        "/routed_through_tunnel",
                        "/rx_bytes",
                        "/tx_bytes",
                    ],
                ),
            );
        }
        Cmd::Encryption { cmd: EncryptionCmd::Status } => {
            fields(
                &out,
                &["type", "phase", "enabled", "strict", "port", "device", "public_key", "key_generation"],
            );
            table(
                &["LEASE", "ENDPOINT", "ESTABLISHED", "ROUTED", "HANDSHAKE", "RX", "TX"],
                rows_with(&out["peers"], |p| {
                    let handshake =
                        p["last_handshake_seconds_ago"].as_u64().map_or("-".into(), |x| format!("{x}s ago"));
                    let mut row =
                        cells(p, &["/lease", "/endpoint", "/established", "/routed_through_tunnel"]);
                    row.extend([handshake, s(&p["rx_bytes"]), s(&p["tx_bytes"])]);
                    row
                }),
            );
        }
        Cmd::Encryption { .. } => {
            println!(
                "stored at revision {}: encryption {}{}, key generation {}; every daemon follows it now",
                s(&out["revision"]),
                if out["enabled"] == Value::Bool(true) { s(&out["type"]) } else { "off".into() },
                if out["strict"] == Value::Bool(true) { " (strict)" } else { "" },
                s(&out["key_generation"]),
            );
        }
        Cmd::InstallCni(_) | Cmd::Completions { .. } | Cmd::Man { .. } => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_fields_reach_the_terminal_without_control_characters() {
        let hostile = Value::String("node\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m".into());
        let shown = s(&hostile);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.starts_with("node\\u{1b}]0;pwned"), "{shown}");
        assert_eq!(s(&Value::String("10.244.1.0-24".into())), "10.244.1.0-24");
    }

    #[test]
    fn table_rows_follow_pointers_and_show_what_is_missing_as_a_dash() {
        let items = serde_json::json!([
            {"key": "10.244.1.0-24", "value": {"PublicIP": "192.0.2.1"}},
            {"key": "k\u{1b}[2J", "value": {}},
        ]);
        let r = rows(&items, &["/key", "/value/PublicIP"]);
        assert_eq!(r[0], ["10.244.1.0-24", "192.0.2.1"]);
        assert_eq!(r[1][1], "-");
        assert!(!r[1][0].chars().any(char::is_control), "{:?}", r[1][0]);
        assert!(rows(&Value::Null, &["/key"]).is_empty());
    }

    #[test]
    fn store_flags_after_any_subcommand() {
        for args in [
            &["overlayctl", "encryption", "enable", "--type", "ipsec", "--store", "embedded"][..],
            &["overlayctl", "network", "set", "f.json", "--store", "embedded", "--store-file", "/x.db"],
            &["overlayctl", "--store", "embedded", "encryption", "disable"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.store.kind().unwrap(), overlayd::options::StoreKind::Embedded, "{args:?}");
        }
    }
}
