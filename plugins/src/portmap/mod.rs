//! The `portmap` plugin: forwards host ports to the container (capability `portMappings`),
//! tcp, udp and sctp, IPv4 and IPv6, any host address or one, with masquerading of hairpin
//! traffic (a container reaching itself through a host port) and of connections to host
//! ports on 127.0.0.1. All of it lives in one nftables table of maps and sets; an
//! attachment's elements carry its tag (see `netkernel::portmap`).

pub mod config;

use std::net::IpAddr;

use ipnet::IpNet;

use cni_spec::plugin::Attachment;
use cni_spec::{Error, Plugin, Request, SuccessResult};
use netkernel::portmap::{Element, Forward, PortmapTable, Tagged};
use netkernel::{Netlink, sysctl};

use self::config::{PortmapConf, container_ips};
use crate::bridge::masq::{tag, tag_of_network};
use crate::error::PluginError;

/// The nft table the portmap plugin owns.
pub const TABLE: &str = "ferrocni_portmap";

/// The plugin.
pub struct Portmap;

impl Plugin for Portmap {
    fn about(&self) -> String {
        "portmap: forward host ports to containers with nftables".into()
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

    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req).map_err(Error::from)
    }
}

fn table() -> Result<PortmapTable, PluginError> {
    PortmapTable::new(TABLE).map_err(PluginError::kernel("opening the port-mapping table"))
}

/// The elements one attachment needs.
fn elements(conf: &PortmapConf, nets: &[IpNet]) -> Vec<Element> {
    let mut out = Vec::new();
    for net in nets {
        let ip = &net.addr();
        for m in &conf.mappings {
            // A host address of the other family does not apply to this container address;
            // an unspecified one means every address of its family.
            let host_ip = match m.host_ip {
                Some(h) if h.is_ipv4() != ip.is_ipv4() => continue,
                Some(h) if h.is_unspecified() => None,
                other => other,
            };
            let f = Forward {
                proto: m.proto,
                host_ip,
                host_port: m.host_port,
                dest: *ip,
                dest_port: m.container_port,
            };
            let e = Element::Forward(f);
            if !out.contains(&e) {
                out.push(e);
            }
        }
        if conf.snat {
            out.push(Element::Hairpin { subnet: net.trunc(), ip: *ip });
            if ip.is_ipv4() {
                out.push(Element::Localnet(*ip));
            }
        }
    }
    out
}

/// Lets 127.0.0.0/8 be routed through the link that leads to `ip` (the container's host
/// side), so that connections to host ports on 127.0.0.1 reach it; returns the sysctl key
/// when this call switched it on. Only IPv4 has this (IPv6 never routes ::1 off the node).
fn enable_route_localnet(ip: IpAddr) -> Result<Option<String>, PluginError> {
    let nl = Netlink::current().map_err(PluginError::kernel("opening netlink"))?;
    let Some(oif) = nl.route_get(ip).map_err(PluginError::kernel("finding the route to the container"))?
    else {
        return Ok(None);
    };
    let Some(link) =
        nl.link_by_index(oif).map_err(PluginError::kernel("reading the container's host link"))?
    else {
        return Ok(None);
    };
    let key = format!("net/ipv4/conf/{}/route_localnet", link.name);
    let path = sysctl::net_path(&key).map_err(PluginError::kernel("finding route_localnet"))?;
    if sysctl::read_path(&path).map_err(PluginError::kernel("reading route_localnet"))? == "1" {
        return Ok(None);
    }
    sysctl::write_path(&path, "1").map_err(PluginError::kernel("setting route_localnet"))?;
    Ok(Some(key))
}

fn add(req: &Request) -> Result<SuccessResult, PluginError> {
    let conf = PortmapConf::load(req)?;
    crate::nsutil::refuse_own_if_given(req)?;
    let prev = PluginError::require_prev(req, "portmap")?;
    if conf.mappings.is_empty() {
        return Ok(prev);
    }
    let network = req.network_name()?;
    let ips = container_ips(&prev, &req.env.ifname);
    let wanted = elements(&conf, &ips);
    if wanted.iter().all(|e| !matches!(e, Element::Forward(_))) {
        return Ok(prev);
    }
    let tag = tag(network, &req.env.container_id, &req.env.ifname);
    let t = table()?;
    let mut localnet = None;
    if let Some(v4) = ips.iter().find(|ip| ip.addr().is_ipv4()).filter(|_| conf.snat) {
        localnet = enable_route_localnet(v4.addr())?;
    }
    if let Err(e) = t.add(&wanted, &tag) {
        if let Some(key) = &localnet {
            let _ = sysctl::write(key, "0");
        }
        // Another attachment holding one of the host ports is the likely cause: say which.
        let held = t.elements().unwrap_or_default().into_iter().find_map(|Tagged { tag: other, element }| {
            let Element::Forward(f) = element else { return None };
            let clash = wanted.iter().any(|w| matches!(w, Element::Forward(w) if w.same_key(&f)));
            (clash && other != tag).then_some((f, other))
        });
        return Err(match held {
            Some((f, other)) => PluginError::Conflict(format!(
                "host port {}/{}{} is already forwarded to {}:{} (attachment {other:?})",
                f.host_port,
                f.proto.name(),
                f.host_ip.map(|h| format!(" on {h}")).unwrap_or_default(),
                f.dest,
                f.dest_port
            )),
            None => PluginError::kernel("adding the port mappings")(e),
        });
    }
    Ok(prev)
}

fn del(req: &Request) -> Result<(), PluginError> {
    let conf = PortmapConf::load(req)?;
    // Without mappings this attachment added nothing (GC catches anything else).
    if conf.mappings.is_empty() {
        return Ok(());
    }
    let wanted = tag(req.network_name()?, &req.env.container_id, &req.env.ifname);
    table()?.remove_where(|t| t == wanted).map_err(PluginError::kernel("removing the port mappings"))?;
    Ok(())
}

fn check(req: &Request) -> Result<(), PluginError> {
    let conf = PortmapConf::load(req)?;
    crate::nsutil::refuse_own_if_given(req)?;
    let prev = PluginError::require_prev(req, "portmap")?;
    if conf.mappings.is_empty() {
        return Ok(());
    }
    let tag = tag(req.network_name()?, &req.env.container_id, &req.env.ifname);
    let have: Vec<Element> = table()?
        .elements()
        .map_err(PluginError::kernel("listing the port mappings"))?
        .into_iter()
        .filter(|t| t.tag == tag)
        .map(|t| t.element)
        .collect();
    for e in elements(&conf, &container_ips(&prev, &req.env.ifname)) {
        if !have.contains(&e) {
            return Err(PluginError::Check(format!("port-mapping element {e:?} is missing")));
        }
    }
    Ok(())
}

fn gc(req: &Request) -> Result<(), PluginError> {
    PortmapConf::load(req)?;
    let network = req.network_name()?;
    let valid = req.valid_attachments()?.ok_or_else(|| {
        PluginError::config(
            cni_spec::plugin::VALID_ATTACHMENTS_KEY,
            "missing (GC needs the list of valid attachments)",
        )
    })?;
    let keep: Vec<String> =
        valid.iter().map(|a: &Attachment| tag(network, &a.container_id, &a.ifname)).collect();
    table()?
        .remove_where(|t| tag_of_network(t, network) && !keep.iter().any(|k| k == t))
        .map_err(PluginError::kernel("removing stale port mappings"))?;
    Ok(())
}
