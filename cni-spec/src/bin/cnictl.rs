//! `cnictl`: drive CNI plugins by hand, with cnitool's interface.
//!
//! ```text
//! cnictl add|del|check NETNAME NETNS_PATH
//! cnictl status NETNAME
//! cnictl gc NETNAME [--valid CONTAINERID:IFNAME ...]
//! cnictl completions bash|zsh|fish|elvish|powershell
//! cnictl man
//! ```
//! Environment: `CNI_PATH`, `NETCONFPATH` (default `/etc/cni/net.d`), `CNI_IFNAME`
//! (default `eth0`), `CNI_ARGS`, `CAP_ARGS` (JSON object), `CNI_CONTAINERID`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cni_spec::plugin::Attachment;
use cni_spec::runtime::{Attach, Runtime, load_conf_list};
use cni_spec::{CniArgs, Code, Error};
use sha2::{Digest, Sha512};

#[derive(Parser)]
#[command(
    name = "cnictl",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("FERROCNI_GIT_COMMIT"), ")"),
    about = "Run CNI network config lists against a network namespace")]
struct Cli {
    /// Directory holding the network configs.
    #[arg(long, env = "NETCONFPATH", default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// Plugin search path, `:`-separated.
    #[arg(long, env = "CNI_PATH", default_value = "")]
    cni_path: String,
    /// Directory of the result cache (results go in its `results/`).
    #[arg(long, env = "CNI_CACHE_DIR", default_value = cni_spec::runtime::DEFAULT_CACHE_DIR)]
    cache_dir: PathBuf,
    /// Interface name inside the container.
    #[arg(long, env = "CNI_IFNAME", default_value = "eth0")]
    ifname: String,
    /// `K=V;K=V` args for the plugins.
    #[arg(long, env = "CNI_ARGS", default_value = "")]
    cni_args: String,
    /// Capability arguments, a JSON object (e.g. `{"portMappings":[...]}`).
    #[arg(long, env = "CAP_ARGS")]
    cap_args: Option<String>,
    /// Container ID; derived from the netns path (as cnitool does) when unset.
    #[arg(long, env = "CNI_CONTAINERID")]
    container_id: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach: run ADD through the list and print the result.
    Add { net: String, netns: PathBuf },
    /// Detach: run DEL through the list in reverse.
    Del { net: String, netns: PathBuf },
    /// Verify an attachment against its cached result.
    Check { net: String, netns: PathBuf },
    /// Ask every plugin of the list whether it is ready.
    Status { net: String, netns: Option<PathBuf> },
    /// Release everything not belonging to the listed attachments (none listed: everything).
    Gc {
        net: String,
        netns: Option<PathBuf>,
        /// A still-valid attachment, `CONTAINERID:IFNAME`; repeat for more.
        #[arg(long = "valid", value_name = "CONTAINERID:IFNAME")]
        valid: Vec<String>,
    },
    /// Print a shell completion script, e.g.
    /// `cnictl completions bash >/etc/bash_completion.d/cnictl`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff, e.g. `cnictl man >/usr/local/share/man/man1/cnictl.1`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cnictl: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    use clap::CommandFactory;
    match &cli.command {
        Cmd::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "cnictl", &mut std::io::stdout());
            return Ok(());
        }
        Cmd::Man => {
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(|e| Error::io("writing the man page", &e));
        }
        _ => {}
    }
    let path: Vec<PathBuf> = cli.cni_path.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
    let rt = Runtime::new(path).with_cache_dir(&cli.cache_dir);
    match &cli.command {
        Cmd::Add { net, netns } => {
            let list = load_conf_list(&cli.conf_dir, net)?;
            let result = rt.add(&list, &attach(cli, netns)?)?;
            let json = result.to_value(list.version()?)?;
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON values print"));
            Ok(())
        }
        Cmd::Del { net, netns } => rt.del(&load_conf_list(&cli.conf_dir, net)?, &attach(cli, netns)?),
        Cmd::Check { net, netns } => rt.check(&load_conf_list(&cli.conf_dir, net)?, &attach(cli, netns)?),
        Cmd::Status { net, .. } => rt.status(&load_conf_list(&cli.conf_dir, net)?),
        Cmd::Gc { net, valid, .. } => {
            let valid = valid.iter().map(|v| parse_attachment(v)).collect::<Result<Vec<_>, _>>()?;
            rt.gc(&load_conf_list(&cli.conf_dir, net)?, &valid)
        }
        Cmd::Completions { .. } | Cmd::Man => Ok(()),
    }
}

fn attach(cli: &Cli, netns: &Path) -> Result<Attach, Error> {
    let netns = std::path::absolute(netns).map_err(|e| Error::io("resolving the netns path", &e))?;
    let netns = clean(&netns);
    let container_id = cli.container_id.clone().unwrap_or_else(|| container_id_for(&netns));
    cni_spec::env::validate_ifname(&cli.ifname)?;
    let capability_args = match &cli.cap_args {
        None => Default::default(),
        Some(s) => serde_json::from_str(s)
            .map_err(|e| Error::new(Code::DecodingFailure, format!("CAP_ARGS: not a JSON object: {e}")))?,
    };
    let mut att = Attach::new(&container_id, netns, &cli.ifname);
    att.args = CniArgs::parse(&cli.cni_args)?.pairs;
    att.capability_args = capability_args;
    Ok(att)
}

/// Removes `..` lexically, as Go's `filepath.Abs` (which cleans) does and
/// `std::path::absolute` does not, so cnitool and cnictl derive the same ID.
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// cnitool's container ID: `cnitool-` and the first 10 bytes of the SHA-512 of the netns
/// path, in hex. Keeping it lets cnitool and cnictl act on each other's attachments.
fn container_id_for(netns: &Path) -> String {
    let digest = Sha512::digest(netns.as_os_str().as_encoded_bytes());
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("cnitool-{hex}")
}

fn parse_attachment(s: &str) -> Result<Attachment, Error> {
    match s.split_once(':') {
        Some((id, ifname)) if !id.is_empty() && !ifname.is_empty() => Ok(Attachment::new(id, ifname)),
        _ => Err(Error::new(Code::InvalidConfig, format!("--valid {s:?}: expected CONTAINERID:IFNAME"))),
    }
}
