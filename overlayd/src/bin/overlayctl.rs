//! Talks to overlayd over its socket: network config, this node's lease, all leases,
//! peers, store health, leave. `--json` prints the daemon's JSON for scripts.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "overlayctl", version, about = "Control and inspect overlayd")]
struct Cli {
    /// overlayd's API socket.
    #[arg(long, env = "OVERLAYD_SOCKET", default_value = "/run/overlayd/overlayd.sock")]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
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
    /// Encryption between nodes (WireGuard in userspace or IPsec), for the whole cluster.
    Encryption {
        #[command(subcommand)]
        cmd: EncryptionCmd,
    },
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
enum NetworkCmd {
    /// Show the effective config (defaults filled in) and the MTU.
    Show,
    /// Store a new config (net-conf.json; `-` reads stdin). Validated first.
    Set {
        /// The file.
        file: PathBuf,
    },
}

fn encryption_request(cmd: &EncryptionCmd) -> Value {
    match cmd {
        EncryptionCmd::Status => Value::Null,
        EncryptionCmd::Enable { kind, strict, port, psk, no_psk, rotation_period, keepalive } => {
            let mut v = serde_json::json!({"action": "enable", "strict": strict});
            if let Some(k) = kind {
                v["type"] = k.as_str().into();
            }
            if let Some(p) = port {
                v["port"] = (*p).into();
            }
            if *psk || *no_psk {
                v["preshared_key"] = Value::Bool(*psk);
            }
            if let Some(r) = rotation_period {
                v["rotation_period"] = r.as_secs().into();
            }
            if let Some(k) = keepalive {
                v["persistent_keepalive"] = k.as_secs().min(u16::MAX as u64).into();
            }
            v
        }
        EncryptionCmd::Disable => serde_json::json!({"action": "disable"}),
        EncryptionCmd::Rotate => serde_json::json!({"action": "rotate"}),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlayctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn call(cli: &Cli, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<Value, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let r = rt
        .block_on(overlayd::client::request(&cli.socket, method, path, body, Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let v = r.json();
    if r.status >= 400 {
        let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| r.text());
        return Err(format!("{method} {path}: {msg} (HTTP {})", r.status));
    }
    Ok(v)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
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

fn fields(v: &Value, keys: &[&str]) {
    for k in keys {
        println!("{k:<16} {}", s(&v[*k]));
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let out = match &cli.cmd {
        Cmd::Network { cmd: NetworkCmd::Show } => call(cli, "GET", "/v1/network", None)?,
        Cmd::Network { cmd: NetworkCmd::Set { file } } => {
            let mut text = Vec::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut text).map_err(|e| e.to_string())?;
            } else {
                text = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
            }
            // Validate here too, for a precise message before anything is sent.
            overlayd::config::NetworkConfig::parse(&String::from_utf8_lossy(&text))
                .map_err(|e| format!("{}: {e}", file.display()))?;
            call(cli, "PUT", "/v1/config", Some(text))?
        }
        Cmd::Lease => call(cli, "GET", "/v1/lease", None)?,
        Cmd::Leases => call(cli, "GET", "/v1/leases", None)?,
        Cmd::Peers => call(cli, "GET", "/v1/peers", None)?,
        Cmd::Health => call(cli, "GET", "/v1/store", None)?,
        Cmd::Status => call(cli, "GET", "/v1/status", None)?,
        Cmd::Leave => call(cli, "POST", "/v1/leave", None)?,
        Cmd::Encryption { cmd: EncryptionCmd::Status } => call(cli, "GET", "/v1/encryption", None)?,
        Cmd::Encryption { cmd } => {
            let body = encryption_request(cmd);
            call(cli, "POST", "/v1/encryption", Some(body.to_string().into_bytes()))?
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
            if out["restart_needed"] == Value::Bool(true) {
                println!("running daemons apply it when restarted");
            }
        }
        Cmd::Lease => fields(
            &out,
            &["subnet", "ipv6_subnet", "public_ip", "node_id", "backend_type", "renewals", "store_ok", "key"],
        ),
        Cmd::Leases => table(
            &["KEY", "PUBLIC-IP", "NODE", "OWN", "VALID"],
            out["leases"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    vec![
                        s(&l["key"]),
                        s(&l["value"]["PublicIP"]),
                        s(&l["value"]["NodeID"]),
                        s(&l["own"]),
                        if l["valid"] == Value::Bool(true) {
                            "yes".into()
                        } else {
                            format!("no: {}", s(&l["reason"]))
                        },
                    ]
                })
                .collect(),
        ),
        Cmd::Peers => table(
            &["SUBNET", "IPV6-SUBNET", "PUBLIC-IP", "VTEP-MAC", "NODE"],
            out.as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    vec![
                        s(&p["subnet"]),
                        s(&p["ipv6_subnet"]),
                        s(&p["public_ip"]),
                        s(&p["backend_data"]["VtepMAC"]),
                        s(&p["node_id"]),
                    ]
                })
                .collect(),
        ),
        Cmd::Health => {
            println!("store     {}", s(&out["store"]));
            println!("healthy   {}", s(&out["health"]["healthy"]));
            println!("revision  {}", s(&out["health"]["revision"]));
            if let Some(e) = out["last_error"].as_str() {
                println!("last error {e}");
            }
            table(
                &["ENDPOINT", "HEALTHY", "LEADER", "VERSION", "ERROR"],
                out["health"]["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            s(&e["endpoint"]),
                            s(&e["healthy"]),
                            s(&e["is_leader"]),
                            s(&e["version"]),
                            s(&e["error"]),
                        ]
                    })
                    .collect(),
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
        Cmd::Encryption { cmd: EncryptionCmd::Status } if out["type"] == "ipsec" => {
            fields(&out, &["type", "phase", "enabled", "strict", "key_generation"]);
            let ip = &out["ipsec"];
            fields(ip, &["phase", "datapath", "device", "mtu", "charon_restarts", "error"]);
            table(
                &["LEASE", "ENDPOINT", "AUTH", "IKE", "ESTABLISHED", "ROUTED", "RX", "TX"],
                ip["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            s(&p["lease"]),
                            s(&p["endpoint"]),
                            s(&p["auth"]),
                            s(&p["ike_state"]),
                            s(&p["established"]),
                            s(&p["routed_through_tunnel"]),
                            s(&p["rx_bytes"]),
                            s(&p["tx_bytes"]),
                        ]
                    })
                    .collect(),
            );
        }
        Cmd::Encryption { cmd: EncryptionCmd::Status } => {
            fields(
                &out,
                &["type", "phase", "enabled", "strict", "port", "device", "public_key", "key_generation"],
            );
            table(
                &["LEASE", "ENDPOINT", "ESTABLISHED", "ROUTED", "HANDSHAKE", "RX", "TX"],
                out["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            s(&p["lease"]),
                            s(&p["endpoint"]),
                            s(&p["established"]),
                            s(&p["routed_through_tunnel"]),
                            p["last_handshake_seconds_ago"]
                                .as_u64()
                                .map_or("-".into(), |x| format!("{x}s ago")),
                            s(&p["rx_bytes"]),
                            s(&p["tx_bytes"]),
                        ]
                    })
                    .collect(),
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
    }
    Ok(())
}
