//! nftables, through the `nft` binary (Debian `nftables`): a script is applied as one atomic
//! transaction, and state is read back as JSON. It acts in the namespace of the calling
//! thread, like everything here.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::error::{KernelError, Result};

/// The `nft` binary.
const NFT: &str = "nft";

/// Where `nft` is when `PATH` does not say: plugins are often run with a bare environment
/// (a runtime passes the `CNI_*` variables, not always `PATH`), and `nft` lives in `sbin`.
const NFT_FALLBACKS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/local/sbin/nft", "/usr/bin/nft"];

/// The `nft` to run: from `PATH`, else the first of the usual places that exists.
fn nft_binary() -> std::path::PathBuf {
    let in_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(NFT)).find(|p| p.is_file()));
    in_path
        .or_else(|| NFT_FALLBACKS.iter().map(std::path::PathBuf::from).find(|p| p.is_file()))
        .unwrap_or_else(|| NFT.into())
}

fn run(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String> {
    let mut child = Command::new(nft_binary())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KernelError::io(format!("{what}: running {NFT} (is the nftables package installed?)")))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).map_err(KernelError::io(format!("{what}: writing to {NFT}")))?;
    }
    let out = child.wait_with_output().map_err(KernelError::io(format!("{what}: waiting for {NFT}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(KernelError::Command {
            what: what.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Applies `script` (nft syntax) as one transaction: all of it or nothing.
pub fn apply(script: &str, what: &str) -> Result<()> {
    run(&["-f", "-"], Some(script), what).map(drop)
}

/// Lists an object as JSON, e.g. `["map", "inet", "t", "m"]`; `None` when it (or its table)
/// does not exist.
pub fn list_json(object: &[&str], what: &str) -> Result<Option<Value>> {
    let mut args = vec!["-j", "list"];
    args.extend_from_slice(object);
    match run(&args, None, what) {
        Ok(out) => serde_json::from_str(&out).map(Some).map_err(|e| KernelError::Command {
            what: what.to_string(),
            stderr: format!("unreadable JSON from {NFT}: {e}"),
        }),
        Err(KernelError::Command { stderr, .. }) if stderr.contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Quotes a string for an nft script (comments): only characters that cannot break out.
pub fn quote(s: &str) -> String {
    let clean: String =
        s.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ').collect();
    format!("\"{clean}\"")
}
