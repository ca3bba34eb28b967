//! The `loopback` plugin: brings the container's `lo` up (the kernel gives it 127.0.0.1/8
//! and, with IPv6 on, ::1/128), as containerd and CRI-O ask for every pod. `CNI_IFNAME` is
//! ignored, as by the reference: this only ever acts on `lo`.

use std::path::Path;

use cni_spec::{Error, Interface, IpConfig, Plugin, Request, SuccessResult};
use ipnet::IpNet;
use netkernel::Netlink;

use crate::error::PluginError;
use crate::nsutil;

/// The plugin.
pub struct Loopback;

/// The interface this plugin acts on, whatever `CNI_IFNAME` says.
const LO: &str = "lo";

impl Plugin for Loopback {
    fn about(&self) -> String {
        "loopback: bring the container's lo up".into()
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

/// The addresses on `lo` must all be loopback ones: anything else means `lo` was made into
/// something this plugin should not vouch for.
fn loopback_addresses(nl: &Netlink, index: u32) -> Result<Vec<IpNet>, PluginError> {
    let addrs = nl.addresses(index).map_err(PluginError::kernel("reading the addresses of lo"))?;
    if let Some(bad) = addrs.iter().find(|a| !a.addr().is_loopback()) {
        return Err(PluginError::Conflict(format!(
            "loopback interface found with non-loopback address {}",
            bad.addr()
        )));
    }
    Ok(addrs)
}

fn add(req: &Request) -> Result<SuccessResult, PluginError> {
    let prev = req.prev_result()?;
    let ns = nsutil::open(req)?;
    let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    let lo = nl.require_link(LO).map_err(PluginError::kernel("reading lo"))?;
    loopback_addresses(&nl, lo.index)?;
    if !lo.up {
        nl.set_up(lo.index).map_err(PluginError::kernel("bringing lo up"))?;
    }
    let addrs = match loopback_addresses(&nl, lo.index) {
        Ok(a) => a,
        Err(e) => {
            // Put it back as it was: a refused ADD changes nothing.
            if !lo.up {
                let _ = nl.set_down(lo.index);
            }
            return Err(e);
        }
    };
    if let Some(prev) = prev {
        // Chained after another plugin: its result passes through unchanged.
        return Ok(prev);
    }
    let sandbox = req.env.netns.as_deref().map(Path::to_string_lossy).unwrap_or_default();
    let mut result = SuccessResult {
        interfaces: vec![Interface::new(LO).with_mac("00:00:00:00:00:00").with_sandbox(sandbox.into_owned())],
        ..Default::default()
    };
    for v4 in [true, false] {
        if let Some(a) = addrs.iter().find(|a| a.addr().is_ipv4() == v4) {
            let mut ip = IpConfig::new(*a);
            ip.interface = Some(0);
            result.ips.push(ip);
        }
    }
    Ok(result)
}

fn del(req: &Request) -> Result<(), PluginError> {
    let Some(ns) = nsutil::open_if_present(req)? else { return Ok(()) };
    let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    if let Some(lo) = nl.link(LO).map_err(PluginError::kernel("reading lo"))?
        && lo.up
    {
        nl.set_down(lo.index).map_err(PluginError::kernel("bringing lo down"))?;
    }
    Ok(())
}

fn check(req: &Request) -> Result<(), PluginError> {
    let ns = nsutil::open(req)?;
    let nl = Netlink::in_netns(&ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    let lo = nl.require_link(LO).map_err(PluginError::kernel("reading lo"))?;
    if !lo.up {
        return Err(PluginError::Check("loopback interface is down".into()));
    }
    loopback_addresses(&nl, lo.index)?;
    Ok(())
}
