//! The DaemonSet's install step (`overlayctl install-cni`, run as an init container): copies
//! the CNI plugins from the image to the node's `/opt/cni/bin` and writes the conflist into
//! `/etc/cni/net.d`, each file atomically (a temporary file in the same directory, fsync,
//! rename): the container runtime, which reads both at any moment, sees the old file or the
//! new one, never a half-written one. A running plugin keeps its old inode. Files already
//! identical are left alone, so a restart of the pod rewrites nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What to install where.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallOptions {
    /// Directory holding the plugin binaries (in the image).
    #[arg(long, default_value = "/opt/ferrocni/bin")]
    pub from: PathBuf,
    /// The node's CNI binary directory (mounted from the host).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// Plugins to copy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vxlan,bridge,host-local,loopback,portmap,firewall,tuning,bandwidth"
    )]
    pub plugins: Vec<String>,
    /// The conflist to install (the ConfigMap's `cni-conf.json`).
    #[arg(long, default_value = "/etc/kube-flannel/cni-conf.json")]
    pub conflist: PathBuf,
    /// The node's CNI config directory (mounted from the host).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the conflist there (the runtime uses the first in lexical order).
    #[arg(long, default_value = "10-ferrocni.conflist")]
    pub conf_name: String,
}

/// What was done to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written (new or changed).
    Written(PathBuf),
    /// Already identical.
    Unchanged(PathBuf),
}

/// Writes `data` to `path` atomically with `mode`; `Ok(false)` when it already held exactly
/// that with that mode.
pub fn install_file(path: &Path, data: &[u8], mode: u32) -> Result<bool, String> {
    if let Ok(old) = std::fs::read(path)
        && old == data
        && std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
    {
        return Ok(false);
    }
    let dir = path.parent().ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    cni_spec::fs::write_atomic(path, data, mode).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(true)
}

/// Checks that `text` is a CNI network configuration list (or a single config).
pub fn check_conflist(text: &[u8]) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("not a JSON object")?;
    let name = o.get("name").and_then(|n| n.as_str()).unwrap_or_default();
    if name.is_empty() {
        return Err("no \"name\"".into());
    }
    match o.get("plugins") {
        Some(serde_json::Value::Array(ps)) if !ps.is_empty() => {
            for p in ps {
                if p.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
                    return Err("a plugin without \"type\"".into());
                }
            }
            Ok(())
        }
        Some(_) => Err("\"plugins\" is not a non-empty list".into()),
        None if o.get("type").and_then(|t| t.as_str()).is_some() => Ok(()),
        None => Err("neither \"plugins\" nor \"type\"".into()),
    }
}

/// Installs the plugins, then the conflist (last: the runtime must not find a config naming a
/// plugin that is not there yet).
pub fn install(o: &InstallOptions) -> Result<Vec<Outcome>, String> {
    let mut out = Vec::new();
    for p in &o.plugins {
        let src = o.from.join(p);
        let data = std::fs::read(&src).map_err(|e| format!("reading {}: {e}", src.display()))?;
        let dst = o.bin_dir.join(p);
        out.push(if install_file(&dst, &data, 0o755)? {
            Outcome::Written(dst)
        } else {
            Outcome::Unchanged(dst)
        });
    }
    let text = std::fs::read(&o.conflist).map_err(|e| format!("reading {}: {e}", o.conflist.display()))?;
    check_conflist(&text).map_err(|e| format!("{}: {e}", o.conflist.display()))?;
    let dst = o.conf_dir.join(&o.conf_name);
    out.push(if install_file(&dst, &text, 0o644)? { Outcome::Written(dst) } else { Outcome::Unchanged(dst) });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_atomically_and_only_what_changed() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("image");
        std::fs::create_dir_all(&from).unwrap();
        for p in ["vxlan", "bridge"] {
            std::fs::write(from.join(p), format!("binary {p}")).unwrap();
        }
        let conf = d.path().join("cni-conf.json");
        std::fs::write(&conf, r#"{"cniVersion":"1.0.0","name":"cbr0","plugins":[{"type":"vxlan"}]}"#)
            .unwrap();
        let o = InstallOptions {
            from,
            bin_dir: d.path().join("host/opt/cni/bin"),
            plugins: vec!["vxlan".into(), "bridge".into()],
            conflist: conf.clone(),
            conf_dir: d.path().join("host/etc/cni/net.d"),
            conf_name: "10-ferrocni.conflist".into(),
        };
        let r = install(&o).unwrap();
        assert!(r.iter().all(|x| matches!(x, Outcome::Written(_))), "{r:?}");
        let m = std::fs::metadata(o.bin_dir.join("vxlan")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
        // Again: nothing to do, and no temporary file is left anywhere.
        let r = install(&o).unwrap();
        assert!(r.iter().all(|x| matches!(x, Outcome::Unchanged(_))), "{r:?}");
        for dir in [&o.bin_dir, &o.conf_dir] {
            let names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert!(names.iter().all(|n| !n.to_string_lossy().contains("tmp")), "{names:?}");
        }
        // A bad conflist is refused before anything of it is written.
        std::fs::write(&conf, "{").unwrap();
        assert!(install(&o).unwrap_err().contains("not JSON"));
        assert!(check_conflist(br#"{"name":"x","plugins":[{}]}"#).is_err());
        assert!(check_conflist(br#"{"name":"x","type":"vxlan"}"#).is_ok());
    }
}
