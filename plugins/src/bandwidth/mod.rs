//! The `bandwidth` plugin: limits what a container receives with a token bucket (`tbf`) on
//! the host end of its veth, and what it sends by redirecting everything arriving on that
//! end to an `ifb` device with its own token bucket, all over rtnetlink. Chained after an
//! interface plugin (`bridge`, `ptp`): it passes `prevResult` on, adding the ifb device.

pub mod config;

use cni_spec::{Error, Interface, Plugin, Request, SuccessResult, Version};
use netkernel::link::{Link, format_mac};
use netkernel::tc::htb::{Field, SubnetShaping};
use netkernel::tc::{self, Tbf};
use netkernel::{NetNs, Netlink};
use sha2::{Digest, Sha512};

use self::config::{BandwidthConf, Limit, Subnets};
use crate::error::PluginError;
use crate::nsutil;

/// The plugin.
pub struct Bandwidth;

/// The versions the reference accepts: chaining is needed.
const VERSIONS: [Version; 5] =
    [Version::V0_3_0, Version::V0_3_1, Version::V0_4_0, Version::V1_0_0, Version::V1_1_0];

/// The ifb device's transmit queue is at least this long (a shorter one drops bursts).
const MIN_IFB_TXQLEN: u32 = 1000;

impl Plugin for Bandwidth {
    fn supported_versions(&self) -> &[Version] {
        &VERSIONS
    }

    fn about(&self) -> String {
        "bandwidth: limit a container's ingress and egress rate with tc".into()
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

/// The ifb device of an attachment: the reference's name (`bwp` and 12 hex digits of the
/// SHA-512 of the network name and container ID), so either plugin's DEL finds the other's.
pub fn ifb_name(network: &str, container_id: &str) -> String {
    let digest = Sha512::digest(format!("{network}{container_id}").as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("bwp{hex}")
}

fn bucket(l: Limit) -> Result<Tbf, PluginError> {
    // The config's validation already refused what cannot be a bucket.
    Tbf::for_bits(l.rate, l.burst, tc::ticks_per_usec())
        .ok_or_else(|| PluginError::config("bandwidth", "rate and burst must be at least a byte"))
}

/// How one direction is shaped: one token bucket for everything, or (with
/// `shapedSubnets` / `unshapedSubnets`) an `htb` whose filters pick by the peer's subnet.
enum Shaper {
    Tbf(Tbf),
    Htb(SubnetShaping),
}

/// `field` is where the peer's address is: the source of what the host veth sends to the
/// container, the destination of what the container sends (on the ifb device).
fn shaper(l: Limit, subnets: Option<&Subnets>, field: Field) -> Result<Shaper, PluginError> {
    let bucket = bucket(l)?;
    Ok(match subnets {
        None => Shaper::Tbf(bucket),
        Some(s) => {
            Shaper::Htb(SubnetShaping { bucket, subnets: s.nets.clone(), subnets_shaped: s.shaped, field })
        }
    })
}

impl Shaper {
    fn install(&self, nl: &Netlink, index: u32) -> netkernel::error::Result<()> {
        match self {
            Shaper::Tbf(t) => nl.add_root_tbf(index, t),
            Shaper::Htb(h) => nl.add_root_htb(index, h),
        }
    }

    fn check(&self, nl: &Netlink, link: &Link) -> Result<(), PluginError> {
        match self {
            Shaper::Tbf(t) => check_bucket(nl, link, t),
            Shaper::Htb(h) => check_htb(nl, link, h),
        }
    }
}

/// Removes the root qdisc this plugin puts on a link (a `tbf` or an `htb`, handle `1:`).
fn remove_root(nl: &Netlink, index: u32) -> netkernel::error::Result<()> {
    nl.delete_root_tbf(index)?;
    nl.delete_root_htb(index)
}

fn host_nl() -> Result<Netlink, PluginError> {
    Netlink::current().map_err(PluginError::kernel("opening netlink"))
}

/// The host end of the container interface's veth, which must be one of `prev`'s host
/// interfaces (as in the reference).
fn host_interface(nl: &Netlink, ns: &NetNs, prev: &SuccessResult, ifname: &str) -> Result<Link, PluginError> {
    if prev.interfaces.is_empty() {
        return Err(PluginError::config("prevResult", "no interfaces: bandwidth needs the container's veth"));
    }
    let cnl = Netlink::in_netns(ns).map_err(PluginError::kernel("opening netlink in the container"))?;
    let inner =
        cnl.link(ifname).map_err(PluginError::kernel("reading the container interface"))?.ok_or_else(
            || PluginError::env("CNI_IFNAME", format!("{ifname:?} does not exist in the container")),
        )?;
    let peer = match (inner.is("veth"), inner.peer_index) {
        (true, Some(p)) if p > 0 => p,
        _ => {
            return Err(PluginError::Conflict(format!("container interface {ifname} has no veth peer")));
        }
    };
    let host =
        nl.link_by_index(peer).map_err(PluginError::kernel("reading the host end of the veth"))?.ok_or_else(
            || PluginError::Conflict(format!("veth peer with index {peer} is not in the host namespace")),
        )?;
    let listed =
        prev.interfaces.iter().any(|i| i.sandbox.as_deref().is_none_or(str::is_empty) && i.name == host.name);
    if !listed {
        return Err(PluginError::Conflict(format!(
            "the veth peer of {ifname} ({}) is not among prevResult's host interfaces",
            host.name
        )));
    }
    Ok(host)
}

/// What a failed ADD undoes: only what it made itself.
#[derive(Default)]
struct Made {
    root: Option<u32>,
    ingress: Option<u32>,
    ifb: Option<u32>,
}

impl Made {
    fn undo(&self, nl: &Netlink) {
        if let Some(i) = self.ingress {
            let _ = nl.delete_ingress_qdisc(i);
        }
        if let Some(i) = self.ifb {
            let _ = nl.delete_link(i);
        }
        if let Some(i) = self.root {
            let _ = remove_root(nl, i);
        }
    }
}

fn add(req: &Request) -> Result<SuccessResult, PluginError> {
    let conf = BandwidthConf::load(req)?;
    let mut result = PluginError::require_prev(req, "bandwidth")?;
    if conf.is_empty() {
        return Ok(result);
    }
    let subnets = conf.subnets.as_ref();
    let ingress = conf.ingress.map(|l| shaper(l, subnets, Field::Source)).transpose()?;
    let egress = conf.egress.map(|l| shaper(l, subnets, Field::Destination)).transpose()?;
    let ns = nsutil::open(req)?;
    let nl = host_nl()?;
    let host = host_interface(&nl, &ns, &result, &req.env.ifname)?;
    let mut made = Made::default();
    let mut shape = || -> Result<(), PluginError> {
        if let Some(t) = &ingress {
            t.install(&nl, host.index).map_err(PluginError::kernel("shaping ingress on the host veth"))?;
            made.root = Some(host.index);
        }
        if let Some(t) = &egress {
            let name = ifb_name(req.network_name()?, &req.env.container_id);
            nl.add_ifb(&name, host.mtu, host.txqlen.max(MIN_IFB_TXQLEN))
                .map_err(PluginError::kernel(format!("creating the ifb device {name}")))?;
            let ifb = nl.require_link(&name).map_err(PluginError::kernel("reading the ifb device"))?;
            made.ifb = Some(ifb.index);
            nl.add_ingress_qdisc(host.index).map_err(PluginError::kernel("adding the ingress qdisc"))?;
            made.ingress = Some(host.index);
            nl.add_ingress_redirect(host.index, ifb.index)
                .map_err(PluginError::kernel("redirecting the container's traffic to the ifb device"))?;
            t.install(&nl, ifb.index).map_err(PluginError::kernel("shaping egress on the ifb device"))?;
            let mut iface = Interface::new(name);
            iface.mac = ifb.mac.map(|m| format_mac(&m));
            result.interfaces.push(iface);
        }
        Ok(())
    };
    if let Err(e) = shape() {
        made.undo(&nl);
        return Err(e);
    }
    Ok(result)
}

/// Removes the ifb device (the reference's DEL) and, when the host veth is still there,
/// its qdiscs: a redirect to a deleted ifb would drop everything the container sends.
fn del(req: &Request) -> Result<(), PluginError> {
    let conf = BandwidthConf::load(req)?;
    let nl = host_nl()?;
    let mut errors = Vec::new();
    let prev = req.prev_result().ok().flatten();
    if let (Some(prev), Some(ns)) = (prev, nsutil::open_if_present(req).ok().flatten())
        && let Ok(host) = host_interface(&nl, &ns, &prev, &req.env.ifname)
    {
        if conf.egress.is_some()
            && let Err(e) = nl.delete_ingress_qdisc(host.index)
        {
            errors.push(format!("removing the ingress qdisc of {}: {e}", host.name));
        }
        if conf.ingress.is_some()
            && let Err(e) = remove_root(&nl, host.index)
        {
            errors.push(format!("removing the root qdisc of {}: {e}", host.name));
        }
    }
    let name = ifb_name(req.network_name()?, &req.env.container_id);
    match nl.link(&name) {
        Ok(Some(l)) if l.is("ifb") => {
            if let Err(e) = nl.delete_link(l.index) {
                errors.push(format!("deleting the ifb device {name}: {e}"));
            }
        }
        Ok(_) => {}
        Err(e) => errors.push(format!("reading the ifb device {name}: {e}")),
    }
    if errors.is_empty() { Ok(()) } else { Err(PluginError::Many(errors)) }
}

/// The root `tbf` of `link` must be `want`.
fn check_bucket(nl: &Netlink, link: &Link, want: &Tbf) -> Result<(), PluginError> {
    let qdiscs =
        nl.qdiscs(link.index).map_err(PluginError::kernel(format!("listing the qdiscs of {}", link.name)))?;
    let Some(have) =
        qdiscs.iter().find(|q| q.kind == "tbf" && q.handle == tc::TBF_HANDLE).and_then(|q| q.tbf)
    else {
        return Err(PluginError::Check(format!("{} has no tbf qdisc", link.name)));
    };
    for (what, h, w) in [
        ("rate (bytes/s)", have.rate, want.rate),
        ("limit (bytes)", have.limit as u64, want.limit as u64),
        ("buffer (ticks)", have.buffer as u64, want.buffer as u64),
    ] {
        if h != w {
            return Err(PluginError::Check(format!(
                "the tbf qdisc of {} has {what} {h}, the config gives {w}",
                link.name
            )));
        }
    }
    Ok(())
}

/// The `htb` root of `link` must hold what `want` makes: the default class, both classes'
/// rates and buckets, and one filter per subnet.
fn check_htb(nl: &Netlink, link: &Link, want: &SubnetShaping) -> Result<(), PluginError> {
    let have = nl
        .root_htb(link.index)
        .map_err(PluginError::kernel(format!("reading the htb qdisc of {}", link.name)))?
        .ok_or_else(|| PluginError::Check(format!("{} has no htb qdisc", link.name)))?;
    let want = want.expected();
    let differs = |what: &str, h: String, w: String| {
        PluginError::Check(format!("the htb qdisc of {} has {what} {h}, the config gives {w}", link.name))
    };
    if have.default_minor != want.default_minor {
        return Err(differs(
            "default class",
            format!("1:{:x}", have.default_minor),
            format!("1:{:x}", want.default_minor),
        ));
    }
    if have.classes != want.classes {
        return Err(differs("classes", format!("{:?}", have.classes), format!("{:?}", want.classes)));
    }
    if have.filters != want.filters {
        return Err(differs("subnet filters", format!("{:?}", have.filters), format!("{:?}", want.filters)));
    }
    Ok(())
}

fn check(req: &Request) -> Result<(), PluginError> {
    let conf = BandwidthConf::load(req)?;
    let prev = PluginError::require_prev(req, "bandwidth")?;
    if conf.is_empty() {
        return Ok(());
    }
    let ns = nsutil::open(req)?;
    let nl = host_nl()?;
    let host = host_interface(&nl, &ns, &prev, &req.env.ifname)?;
    let subnets = conf.subnets.as_ref();
    if let Some(l) = conf.ingress {
        shaper(l, subnets, Field::Source)?.check(&nl, &host)?;
    }
    if let Some(l) = conf.egress {
        let name = ifb_name(req.network_name()?, &req.env.container_id);
        let ifb = nl
            .link(&name)
            .map_err(PluginError::kernel("reading the ifb device"))?
            .filter(|l| l.is("ifb"))
            .ok_or_else(|| PluginError::Check(format!("the ifb device {name} is missing")))?;
        shaper(l, subnets, Field::Destination)?.check(&nl, &ifb)?;
        let to =
            nl.ingress_redirects(host.index).map_err(PluginError::kernel("listing the ingress filters"))?;
        if !to.contains(&ifb.index) {
            return Err(PluginError::Check(format!("{} does not redirect its traffic to {name}", host.name)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifb_name_is_the_references() {
        // The reference names the device after the SHA-512 of network name + container ID.
        let n = ifb_name("mynet", "c1");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("bwp"));
        let d = Sha512::digest(b"mynetc1");
        assert_eq!(&n[3..5], format!("{:02x}", d[0]));
        assert_ne!(ifb_name("mynet", "c2"), n);
    }
}
