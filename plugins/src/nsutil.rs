//! The container's network namespace, as the chained plugins open it.

use std::path::Path;

use cni_spec::Request;
use netkernel::{KernelError, NetNs};

use crate::error::PluginError;

/// Opens a namespace path, refusing without opening anything that is not a regular file
/// (namespace files are): opening a FIFO would block.
pub fn open_path(path: &Path) -> Result<NetNs, KernelError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| KernelError::Io { what: format!("opening netns {}", path.display()), source: e })?;
    if !meta.is_file() {
        return Err(KernelError::NotNetns(path.to_path_buf()));
    }
    NetNs::open(path)
}

/// Whether a failure to open a namespace means it is gone (DEL then has nothing to undo
/// inside it).
pub fn is_gone(e: &KernelError) -> bool {
    e.is_not_found() || matches!(e, KernelError::NotNetns(_))
}

/// The container's namespace from `CNI_NETNS` (code 4 when missing, unusable, or the
/// plugin's own namespace).
pub fn open(req: &Request) -> Result<NetNs, PluginError> {
    let path = req.env.netns.as_deref().ok_or_else(|| PluginError::env("CNI_NETNS", "missing"))?;
    let ns = open_path(path).map_err(|e| PluginError::env("CNI_NETNS", e))?;
    refuse_own(&ns)?;
    Ok(ns)
}

/// For DEL: the namespace if it is still there, `None` when `CNI_NETNS` is empty or gone.
pub fn open_if_present(req: &Request) -> Result<Option<NetNs>, PluginError> {
    let Some(path) = req.env.netns.as_deref() else { return Ok(None) };
    match open_path(path) {
        Ok(ns) => {
            refuse_own(&ns)?;
            Ok(Some(ns))
        }
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(PluginError::env("CNI_NETNS", e)),
    }
}

/// For plugins that never enter the container's namespace (portmap, firewall): a
/// `CNI_NETNS` that names the plugin's own namespace is still refused (code 4), as every
/// plugin refuses it: a runtime that passes it is misconfigured. A path that cannot be
/// opened is left alone (these plugins do not need it).
pub fn refuse_own_if_given(req: &Request) -> Result<(), PluginError> {
    match req.env.netns.as_deref().map(open_path) {
        Some(Ok(ns)) => refuse_own(&ns),
        _ => Ok(()),
    }
}

/// The container's namespace must not be the plugin's own: the plugin would change the
/// host's own interfaces.
pub fn refuse_own(ns: &NetNs) -> Result<(), PluginError> {
    let here = NetNs::current().map_err(PluginError::kernel("opening the plugin's own netns"))?;
    if ns.same_as(&here) {
        return Err(PluginError::env(
            "CNI_NETNS",
            format!("{} is the plugin's own network namespace, not a container's", ns.path().display()),
        ));
    }
    Ok(())
}
