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

/// The `/proc/sys` path of a network sysctl given as `net.ipv4.ip_forward` (dots) or
/// `net/ipv4/conf/eth0.100/forwarding` (slashes, for interface names with dots). Anything
/// outside `net/` is refused, and so is every path trick: empty, `.` or `..` components,
/// characters an interface name or sysctl cannot have, a path that leaves `/proc/sys/net`
/// once resolved. A key the kernel does not have is [`KernelError::NoSuchSysctl`].
///
/// ```
/// assert!(netkernel::sysctl::net_path("net.ipv4.ip_forward").is_ok());
/// assert!(netkernel::sysctl::net_path("kernel.hostname").is_err());
/// assert!(netkernel::sysctl::net_path("net/../kernel/hostname").is_err());
/// assert!(netkernel::sysctl::net_path("net.ipv4.conf..forwarding").is_err());
/// ```
pub fn net_path(key: &str) -> Result<PathBuf> {
    let invalid = |why: &'static str| KernelError::InvalidName { name: key.to_string(), why };
    if key.is_empty() || key.len() > 256 {
        return Err(invalid("not a sysctl key"));
    }
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | '+')) {
        return Err(invalid("not a sysctl key: unexpected character"));
    }
    let parts: Vec<&str> =
        if key.contains('/') { key.split('/').collect() } else { key.split('.').collect() };
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(invalid("not a sysctl key: empty, . or .. component"));
    }
    if parts[0] != "net" || parts.len() < 2 {
        return Err(invalid("not a network sysctl (net.*)"));
    }
    let p = parts.iter().fold(PathBuf::from("/proc/sys"), |p, part| p.join(part));
    // Nothing under /proc/sys is a link today; resolving makes sure it stays inside.
    match fs::canonicalize(&p) {
        Ok(real) if real.starts_with("/proc/sys/net/") && real.is_file() => Ok(real),
        Ok(_) => Err(invalid("not a network sysctl file")),
        Err(_) => Err(KernelError::NoSuchSysctl(key.to_string())),
    }
}

/// Reads a file found by [`net_path`], trimmed of its trailing newline.
pub fn read_path(p: &std::path::Path) -> Result<String> {
    fs::read_to_string(p)
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(KernelError::io(format!("reading {}", p.display())))
}

/// Writes a file found by [`net_path`].
pub fn write_path(p: &std::path::Path, value: &str) -> Result<()> {
    fs::write(p, value).map_err(KernelError::io(format!("writing {} = {value}", p.display())))
}
