//! Sysctls under `/proc/sys`. The `net.*` ones belong to the namespace of the calling
//! thread, so they are set from inside the namespace (see [`crate::NetNs::run`]).

use std::fs;
use std::path::PathBuf;

use crate::error::{KernelError, Result};

fn path(key: &str) -> Result<PathBuf> {
    let rel = key.replace('.', "/");
    if key.is_empty() || rel.split('/').any(|p| p.is_empty() || p == "..") {
        return Err(KernelError::InvalidName { name: key.to_string(), why: "not a sysctl key" });
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

/// Writes `value` to the sysctl `key` (`net/ipv4/ip_forward` or `net.ipv4.ip_forward`;
/// interface names with dots must use the slash form).
pub fn write(key: &str, value: &str) -> Result<()> {
    let p = if key.contains('/') { PathBuf::from("/proc/sys").join(key) } else { path(key)? };
    if key.contains('/') && key.split('/').any(|s| s.is_empty() || s == "..") {
        return Err(KernelError::InvalidName { name: key.to_string(), why: "not a sysctl key" });
    }
    fs::write(&p, value).map_err(KernelError::io(format!("writing {} = {value}", p.display())))
}

/// Reads the sysctl `key`, trimmed.
pub fn read(key: &str) -> Result<String> {
    let p = if key.contains('/') { PathBuf::from("/proc/sys").join(key) } else { path(key)? };
    fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(KernelError::io(format!("reading {}", p.display())))
}
