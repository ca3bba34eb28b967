//! The `tuning` plugin: network sysctls inside the container's namespace (only `net.*`),
//! and the container interface's MAC, MTU, promiscuous and all-multicast modes and transmit
//! queue length. What it changes is saved first (in `dataDir`, one file per attachment) and
//! put back on DEL; a failed ADD puts everything back at once.

pub mod config;
mod saved;

use std::path::PathBuf;

use cni_spec::{Error, Plugin, Request, SuccessResult};
use netkernel::link::{Link, format_mac};
use netkernel::{KernelError, NetNs, Netlink, sysctl};

use self::config::{TuningConf, resolve_key};
use self::saved::Saved;
use crate::error::PluginError;
use crate::nsutil;

/// The plugin.
pub struct Tuning;

impl Plugin for Tuning {
    fn about(&self) -> String {
        "tuning: set network sysctls and interface attributes in the container".into()
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        add(req).map_err(Error::from)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req).map_err(Error::from)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req).map_err(Error::from)
    }
}

/// The file that keeps one attachment's original values.
fn saved_path(conf: &TuningConf, req: &Request) -> PathBuf {
    conf.data_dir.join(format!("{}_{}.json", req.env.container_id, req.env.ifname))
}

/// The sysctl files of the config, resolved inside the container: (key as written, file).
fn sysctl_files(conf: &TuningConf, ifname: &str) -> Result<Vec<(String, PathBuf)>, PluginError> {
    let mut out = Vec::new();
    for (key, _) in &conf.sysctl {
        let resolved = resolve_key(key, ifname);
        let p = sysctl::net_path(&resolved).map_err(|e| match e {
            KernelError::NoSuchSysctl(_) => {
                PluginError::config(format!("sysctl[{key:?}]"), "no such sysctl in the container's namespace")
            }
            e => PluginError::config(format!("sysctl[{key:?}]"), e),
        })?;
        out.push((key.clone(), p));
    }
    Ok(out)
}

fn container_link(nl: &Netlink, ifname: &str) -> Result<Link, PluginError> {
    nl.link(ifname)
        .map_err(PluginError::kernel("reading the container interface"))?
        .ok_or_else(|| PluginError::env("CNI_IFNAME", format!("{ifname:?} does not exist in the container")))
}

fn add(req: &Request) -> Result<SuccessResult, PluginError> {
    let conf = TuningConf::load(req)?;
    let mut result = PluginError::require_prev(req, "tuning")?;
    let ifname = req.env.ifname.clone();
    let ns = nsutil::open(req)?;
    let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    let link = if conf.changes_link() { Some(container_link(&nl, &ifname)?) } else { None };

    // The originals, read inside the container, before anything changes.
    let c = conf.clone();
    let name = ifname.clone();
    let sysctls = ns
        .run(move || -> Result<Vec<(String, PathBuf, String)>, PluginError> {
            let mut out = Vec::new();
            for (key, file) in sysctl_files(&c, &name)? {
                let old =
                    sysctl::read_path(&file).map_err(PluginError::kernel(format!("reading sysctl {key}")))?;
                out.push((key, file, old));
            }
            Ok(out)
        })
        .map_err(PluginError::kernel("entering the container"))??;
    let saved = Saved::of(&conf, link.as_ref(), &sysctls);
    if saved.is_empty() {
        return Ok(result);
    }
    let path = saved_path(&conf, req);
    let created = saved.write(&path)?;

    // The changes; on failure, everything put back and the file removed.
    if let Err(e) = apply(&ns, &nl, &conf, link.as_ref(), &sysctls) {
        saved.restore(&ns, &nl, &ifname).ok();
        saved.remove(&path, &created);
        return Err(e);
    }
    if let Some(mac) = conf.mac {
        for i in result.interfaces.iter_mut().filter(|i| i.name == ifname) {
            i.mac = Some(format_mac(&mac));
        }
    }
    Ok(result)
}

fn apply(
    ns: &NetNs,
    nl: &Netlink,
    conf: &TuningConf,
    link: Option<&Link>,
    sysctls: &[(String, PathBuf, String)],
) -> Result<(), PluginError> {
    let writes: Vec<(String, PathBuf, String)> = sysctls
        .iter()
        .zip(&conf.sysctl)
        .map(|((key, file, _), (_, value))| (key.clone(), file.clone(), value.clone()))
        .collect();
    ns.run(move || -> Result<(), PluginError> {
        for (key, file, value) in &writes {
            sysctl::write_path(file, value).map_err(PluginError::kernel(format!("setting sysctl {key}")))?;
        }
        Ok(())
    })
    .map_err(PluginError::kernel("entering the container"))??;
    let Some(link) = link else { return Ok(()) };
    if let Some(mac) = conf.mac {
        nl.set_mac(link.index, mac).map_err(PluginError::kernel("setting the MAC"))?;
    }
    if conf.promisc {
        nl.set_promisc(link.index, true).map_err(PluginError::kernel("setting promiscuous mode"))?;
    }
    if let Some(mtu) = conf.mtu {
        nl.set_mtu(link.index, mtu).map_err(PluginError::kernel("setting the MTU"))?;
    }
    if let Some(on) = conf.allmulti {
        nl.set_allmulti(link.index, on).map_err(PluginError::kernel("setting all-multicast mode"))?;
    }
    if let Some(q) = conf.txqlen {
        nl.set_txqlen(link.index, q).map_err(PluginError::kernel("setting the transmit queue length"))?;
    }
    Ok(())
}

fn del(req: &Request) -> Result<(), PluginError> {
    let conf = TuningConf::load(req)?;
    let path = saved_path(&conf, req);
    let Some(saved) = Saved::read(&path)? else { return Ok(()) };
    if let Some(ns) = nsutil::open_if_present(req)? {
        let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
        saved.restore(&ns, &nl, &req.env.ifname)?;
    }
    saved.remove(&path, &[]);
    Ok(())
}

fn check(req: &Request) -> Result<(), PluginError> {
    let conf = TuningConf::load(req)?;
    PluginError::require_prev(req, "tuning")?;
    let ifname = req.env.ifname.clone();
    let ns = nsutil::open(req)?;
    let c = conf.clone();
    let name = ifname.clone();
    ns.run(move || -> Result<(), PluginError> {
        for ((key, file), (_, want)) in sysctl_files(&c, &name)?.into_iter().zip(&c.sysctl) {
            let now =
                sysctl::read_path(&file).map_err(PluginError::kernel(format!("reading sysctl {key}")))?;
            if now.trim() != want.trim() {
                return Err(PluginError::Check(format!("sysctl {key} is {now:?}, the config says {want:?}")));
            }
        }
        Ok(())
    })
    .map_err(PluginError::kernel("entering the container"))??;
    let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    let link = container_link(&nl, &ifname)?;
    if let Some(mac) = conf.mac
        && link.mac != Some(mac)
    {
        return Err(PluginError::Check(format!(
            "{ifname:?} has MAC {:?}, the config says {}",
            link.mac.map(|m| format_mac(&m)),
            format_mac(&mac)
        )));
    }
    if link.promisc != conf.promisc {
        return Err(PluginError::Check(format!(
            "{ifname:?} promiscuous mode is {}, the config says {}",
            link.promisc, conf.promisc
        )));
    }
    if let Some(mtu) = conf.mtu
        && link.mtu != mtu
    {
        return Err(PluginError::Check(format!("{ifname:?} has MTU {}, the config says {mtu}", link.mtu)));
    }
    if let Some(on) = conf.allmulti
        && link.allmulti != on
    {
        return Err(PluginError::Check(format!(
            "{ifname:?} all-multicast mode is {}, the config says {on}",
            link.allmulti
        )));
    }
    if let Some(q) = conf.txqlen
        && link.txqlen != q
    {
        return Err(PluginError::Check(format!(
            "{ifname:?} has transmit queue length {}, the config says {q}",
            link.txqlen
        )));
    }
    Ok(())
}
