//! Talks to overlayd over its socket: network config, this node's lease, all leases,
//! peers, store health, leave. `--json` prints the daemon's JSON for scripts.

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
                "store",
                "store_ok",
                "last_error",
                "renewals",
                "subnet_changes",
            ],
        ),
        Cmd::Leave => println!("lease released; overlayd is stopping"),
    }
    Ok(())
}
