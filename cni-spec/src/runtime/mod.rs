//! The runtime side (what libcni does): run a network config list's plugins for ADD, DEL,
//! CHECK, STATUS and GC, chain results, keep the result cache.
//!
//! ```no_run
//! use cni_spec::runtime::{Runtime, Attach, load_conf_list};
//! let list = load_conf_list("/etc/cni/net.d".as_ref(), "mynet")?;
//! let rt = Runtime::new(vec!["/opt/cni/bin".into()]);
//! let pod = Attach::new("pod1", "/run/netns/pod1", "eth0");
//! let result = rt.add(&list, &pod)?;
//! rt.check(&list, &pod)?;
//! rt.del(&list, &pod)?;
//! # Ok::<(), cni_spec::Error>(())
//! ```

mod cache;
mod load;

use std::collections::HashSet;
use std::path::PathBuf;

use serde_json::{Map, Value};

pub use cache::{CACHE_KIND, CachedAttachment, ResultCache};
pub use load::{conf_files, conf_list_from_file, load_conf_list};

use crate::config::{NetConfList, Object};
use crate::env::{CniArgs, Command};
use crate::error::{Code, Error};
use crate::exec::{Invocation, find_plugin};
use crate::plugin::{Attachment, LEGACY_ATTACHMENTS_KEY, VALID_ATTACHMENTS_KEY};
use crate::result::SuccessResult;
use crate::version::{Version, VersionInfo};

/// The default cache directory.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// One attachment as the runtime sees it (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attach {
    /// The container ID.
    pub container_id: String,
    /// The netns path (may be absent on DEL).
    pub netns: Option<PathBuf>,
    /// The interface name in the container.
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, `ips`, `mac`, …), turned into `runtimeConfig`
    /// for the plugins that declare the capability.
    pub capability_args: Object,
}

impl Attach {
    /// An attachment of `container_id` in `netns` as `ifname`.
    pub fn new(container_id: &str, netns: impl Into<PathBuf>, ifname: &str) -> Self {
        Attach {
            container_id: container_id.into(),
            netns: Some(netns.into()),
            ifname: ifname.into(),
            ..Default::default()
        }
    }

    /// libcni's checks before any plugin runs: the container ID and the interface name
    /// (which also name the cache file). Code 4 naming the variable.
    fn validate(&self) -> Result<(), Error> {
        if !crate::config::is_valid_name(&self.container_id) {
            return Err(Error::invalid_env(
                "CNI_CONTAINERID",
                format!("{:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", self.container_id),
            ));
        }
        crate::env::validate_ifname(&self.ifname)
    }

    fn invocation(&self, command: Command, path: &[PathBuf]) -> Invocation {
        let mut inv =
            Invocation::new(command).container(&self.container_id, self.netns.clone(), &self.ifname);
        inv.args = CniArgs { pairs: self.args.clone() };
        inv.path = path.to_vec();
        inv
    }
}

/// A CNI runtime: where plugins are and where the result cache lives.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The plugin search path (`CNI_PATH`).
    pub path: Vec<PathBuf>,
    /// The result cache.
    pub cache: ResultCache,
}

impl Runtime {
    /// A runtime with the default cache directory.
    pub fn new(path: Vec<PathBuf>) -> Self {
        Runtime { path, cache: ResultCache::new(DEFAULT_CACHE_DIR) }
    }

    /// Uses another cache directory.
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = ResultCache::new(dir);
        self
    }

    /// ADD: each plugin in order, each given the previous result as `prevResult`; the final
    /// result is cached and returned. Stops at the first error (the caller should then DEL).
    pub fn add(&self, list: &NetConfList, att: &Attach) -> Result<SuccessResult, Error> {
        att.validate()?;
        let version = list.version()?;
        let mut prev: Option<SuccessResult> = None;
        for plugin in &list.plugins {
            let conf = request_config(list, version, plugin, prev.as_ref(), Some(att))?;
            let out = self.exec(plugin, att.invocation(Command::Add, &self.path), &conf)?;
            prev = Some(SuccessResult::from_slice(&out, version)?.converted(version)?);
        }
        let result = prev.unwrap_or_default();
        self.cache.store(&CachedAttachment {
            container_id: att.container_id.clone(),
            config: list.to_bytes(),
            if_name: att.ifname.clone(),
            network_name: list.name.clone(),
            netns: att.netns.as_ref().map(|p| p.display().to_string()),
            cni_args: att.args.iter().map(|(k, v)| [k.clone(), v.clone()]).collect(),
            capability_args: att.capability_args.clone(),
            result: Some(result.to_value(version)?),
            ..Default::default()
        })?;
        Ok(result)
    }

    /// DEL: each plugin in reverse order, with the cached final result as `prevResult`
    /// (0.4.0 and later); runs without one when the cache has none. The cache entry is
    /// removed afterwards.
    pub fn del(&self, list: &NetConfList, att: &Attach) -> Result<(), Error> {
        att.validate()?;
        let version = list.version()?;
        let cached = if version.has_check() { self.cached_result(list, att).unwrap_or(None) } else { None };
        for plugin in list.plugins.iter().rev() {
            let conf = request_config(list, version, plugin, cached.as_ref(), Some(att))?;
            self.exec(plugin, att.invocation(Command::Del, &self.path), &conf)?;
        }
        self.cache.remove(&list.name, &att.container_id, &att.ifname)
    }

    /// CHECK: each plugin in order with the cached result. Needs 0.4.0 and a cached result;
    /// does nothing when the list sets `disableCheck`.
    pub fn check(&self, list: &NetConfList, att: &Attach) -> Result<(), Error> {
        att.validate()?;
        let version = list.version()?;
        if !version.has_check() {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("configuration version {version} does not support CHECK"),
            ));
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self.cached_result(list, att)?.ok_or_else(|| {
            Error::new(
                Code::UnknownContainer,
                format!(
                    "no cached result for {}/{}/{}: CHECK needs a prior ADD",
                    list.name, att.container_id, att.ifname
                ),
            )
        })?;
        for plugin in &list.plugins {
            let conf = request_config(list, version, plugin, Some(&cached), Some(att))?;
            self.exec(plugin, att.invocation(Command::Check, &self.path), &conf)?;
        }
        Ok(())
    }

    /// STATUS: each plugin in order; the first error is returned. Lists older than 1.1.0
    /// have no STATUS and succeed.
    pub fn status(&self, list: &NetConfList) -> Result<(), Error> {
        let version = list.version()?;
        if !version.has_status() {
            return Ok(());
        }
        for plugin in &list.plugins {
            let conf = request_config(list, version, plugin, None, None)?;
            self.exec(plugin, Invocation::new(Command::Status).with_path(&self.path), &conf)?;
        }
        Ok(())
    }

    /// GC: first a DEL for every cached attachment of this network that is not in `valid`,
    /// then (1.1.0 and later) GC to every plugin with both `cni.dev/valid-attachments` and
    /// `cni.dev/attachments`. Keeps going on errors and returns them joined. Does nothing
    /// when the list sets `disableGC`.
    pub fn gc(&self, list: &NetConfList, valid: &[Attachment]) -> Result<(), Error> {
        if list.disable_gc {
            return Ok(());
        }
        let version = list.version()?;
        let keep: HashSet<(&str, &str)> =
            valid.iter().map(|a| (a.container_id.as_str(), a.ifname.as_str())).collect();
        let mut errors = Vec::new();
        for cached in self.cache.attachments(&list.name)? {
            if keep.contains(&(cached.container_id.as_str(), cached.if_name.as_str())) {
                continue;
            }
            let att = Attach {
                container_id: cached.container_id.clone(),
                netns: cached.netns.as_ref().map(PathBuf::from),
                ifname: cached.if_name.clone(),
                args: cached.cni_args.iter().map(|[k, v]| (k.clone(), v.clone())).collect(),
                capability_args: cached.capability_args.clone(),
            };
            if let Err(e) = self.del(list, &att) {
                errors.push(format!("deleting stale attachment {} {}: {e}", att.container_id, att.ifname));
            }
        }
        if version.has_gc() {
            let valid_json = serde_json::to_value(valid).expect("attachments serialize");
            for plugin in &list.plugins {
                let mut conf = request_config(list, version, plugin, None, None)?;
                conf.insert(VALID_ATTACHMENTS_KEY.into(), valid_json.clone());
                conf.insert(LEGACY_ATTACHMENTS_KEY.into(), valid_json.clone());
                if let Err(e) = self.exec(plugin, Invocation::new(Command::Gc).with_path(&self.path), &conf) {
                    errors.push(e.to_string());
                }
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(Error::internal(errors.join("; "))) }
    }

    /// The cached result of an attachment, converted to the list's version.
    pub fn cached_result(&self, list: &NetConfList, att: &Attach) -> Result<Option<SuccessResult>, Error> {
        let version = list.version()?;
        match self.cache.load(&list.name, &att.container_id, &att.ifname)? {
            Some(entry) => entry.result_as(version),
            None => Ok(None),
        }
    }

    /// Asks a plugin which versions it supports (`VERSION`).
    pub fn version_info(&self, plugin_type: &str) -> Result<VersionInfo, Error> {
        let binary = find_plugin(plugin_type, &self.path)?;
        let ask = format!(r#"{{"cniVersion":"{}"}}"#, Version::CURRENT);
        let out = Invocation::new(Command::Version).with_path(&self.path).run(&binary, ask.as_bytes())?;
        VersionInfo::parse(&out)
    }

    fn exec(&self, plugin: &Object, inv: Invocation, conf: &Object) -> Result<Vec<u8>, Error> {
        let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default();
        let binary = find_plugin(kind, &self.path)?;
        let stdin = serde_json::to_vec(conf).expect("configs serialize");
        inv.run(&binary, &stdin)
    }
}

/// Builds the config one plugin receives (libcni's `buildOneConfig`): the plugin object
/// with the list's `name` and the selected `cniVersion`, `prevResult` when there is one,
/// and `runtimeConfig` with the capability arguments the plugin declares.
pub fn request_config(
    list: &NetConfList,
    version: Version,
    plugin: &Object,
    prev: Option<&SuccessResult>,
    att: Option<&Attach>,
) -> Result<Object, Error> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(version.to_string()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.to_value(version)?);
    }
    if let Some(att) = att {
        let runtime_config = runtime_config(plugin, &att.capability_args);
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
        }
    }
    Ok(conf)
}

/// The capability arguments whose capability the plugin declares as `true`.
fn runtime_config(plugin: &Object, capability_args: &Object) -> Map<String, Value> {
    let Some(Value::Object(caps)) = plugin.get("capabilities") else {
        return Map::new();
    };
    caps.iter()
        .filter(|(_, enabled)| enabled.as_bool() == Some(true))
        .filter_map(|(cap, _)| capability_args.get(cap).map(|v| (cap.clone(), v.clone())))
        .collect()
}
