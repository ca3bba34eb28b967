//! The `bridge` plugin: a drop-in for the reference, on the shared kernel layer.
//!
//! ADD follows the reference's order: bridge, veth (the container end born in the container
//! namespace), IPAM through delegation, addresses and routes, the gateway address on the
//! bridge, forwarding, masquerade. Anything that fails after a step undoes what was done.

pub mod config;
pub mod masq;
pub mod spoof;

use std::net::IpAddr;
use std::path::Path;

use cni_spec::delegate::Delegate;
use cni_spec::{Code, Error, Interface, Plugin, Request, SuccessResult};
use ipnet::IpNet;
use netkernel::link::{BridgeSpec, Link, PortVlan, VethOptions, format_mac};
use netkernel::route::Route as KRoute;
use netkernel::{KernelError, NetNs, Netlink, sysctl};

use self::config::BridgeConf;
use crate::kernel_error;

/// The plugin.
pub struct Bridge;

impl Plugin for Bridge {
    fn about(&self) -> String {
        "bridge: attach containers to a Linux bridge with a veth pair".into()
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        add(req)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req)
    }

    fn status(&self, req: &Request) -> Result<(), Error> {
        match BridgeConf::load(req)?.ipam_type {
            Some(t) => Delegate::for_request(req, &t).status(&req.raw),
            None => Ok(()),
        }
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        let conf = BridgeConf::load(req)?;
        let mut errors = Vec::new();
        if let Some(t) = &conf.ipam_type
            && let Err(e) = Delegate::for_request(req, t).gc(&req.raw)
        {
            errors.push(e.to_string());
        }
        let valid = req.valid_attachments()?.unwrap_or_default();
        // Entries exist only if masquerading was ever on; listing is cheap enough for GC.
        if let Err(e) = masq::gc(req.network_name()?, &valid) {
            errors.push(e.to_string());
        }
        if let Err(e) = spoof::gc(req.network_name()?, &valid) {
            errors.push(e.to_string());
        }
        if errors.is_empty() { Ok(()) } else { Err(Error::internal(errors.join("; "))) }
    }
}

/// Undoes the kernel work of a failed ADD when dropped (IPAM has its own guard).
struct Undo<'a> {
    host: &'a Netlink,
    veth: Option<u32>,
    masq: Option<(&'a str, &'a str, &'a str)>,
    spoof: Option<(&'a str, &'a str, &'a str)>,
}

impl Undo<'_> {
    fn disarm(mut self) {
        self.veth = None;
        self.masq = None;
        self.spoof = None;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if let Some((net, cid, ifname)) = self.masq {
            let _ = masq::remove(net, cid, ifname, &[]);
        }
        if let Some((net, cid, ifname)) = self.spoof {
            let _ = spoof::remove(net, cid, ifname);
        }
        if let Some(index) = self.veth {
            // Deleting the host end deletes the container end with it.
            let _ = self.host.delete_link(index);
        }
    }
}

fn open_netns(req: &Request) -> Result<NetNs, Error> {
    let path = req.env.netns.as_deref().ok_or_else(|| Error::invalid_env("CNI_NETNS", "missing"))?;
    NetNs::open(path).map_err(|e| Error::invalid_env("CNI_NETNS", e))
}

fn add(req: &Request) -> Result<SuccessResult, Error> {
    let conf = BridgeConf::load(req)?;
    let network = req.network_name()?;
    let ifname = req.env.ifname.as_str();
    let ns = open_netns(req)?;
    let host = Netlink::current().map_err(kernel_error("opening netlink"))?;
    let cont = Netlink::in_netns(&ns).map_err(kernel_error("opening netlink in the container"))?;
    if cont.link(ifname).map_err(kernel_error("reading the container's links"))?.is_some() {
        return Err(Error::invalid_env("CNI_IFNAME", format!("{ifname:?} already exists in the container")));
    }

    let br = setup_bridge(&host, &conf)?;
    let mut undo = Undo { host: &host, veth: None, masq: None, spoof: None };
    let host_veth = create_veth(&host, &ns, &conf, ifname)?;
    undo.veth = Some(host_veth.index);
    setup_host_port(&host, &conf, &host_veth, &br)?;
    let cont_link = cont.require_link(ifname).map_err(kernel_error("reading the container interface"))?;
    if conf.macspoofchk {
        let mac = cont_link.mac.ok_or_else(|| Error::internal("the container interface has no MAC"))?;
        undo.spoof = Some((network, &req.env.container_id, ifname));
        spoof::add(network, &req.env.container_id, ifname, &host_veth.name, mac)?;
    }

    let mut result = SuccessResult::default();
    let ipam = conf.ipam_type.as_deref().map(|t| Delegate::for_request(req, t));
    let added = match &ipam {
        Some(ipam) => Some(ipam.add_guarded(&req.raw)?),
        None => None,
    };
    if let Some(added) = &added {
        let ipam_result = added.result().clone();
        if ipam_result.ips.is_empty() {
            return Err(Error::internal("IPAM plugin returned missing IP config"));
        }
        result.ips = ipam_result.ips;
        result.routes = ipam_result.routes;
        result.dns = ipam_result.dns;
        for ip in &mut result.ips {
            ip.interface = Some(2);
            if ip.gateway.is_none() && conf.is_gateway {
                ip.gateway = first_host(&ip.address);
            }
        }
        if conf.is_default_gateway {
            add_default_routes(&mut result);
        }
        configure_container(&ns, &cont, &cont_link, &conf, &result)?;
        if conf.is_gateway {
            setup_gateway(&host, &br, &conf, &result)?;
        }
        if conf.ip_masq {
            let ips: Vec<IpNet> = result.ips.iter().map(|ip| ip.address).collect();
            undo.masq = Some((network, &req.env.container_id, ifname));
            masq::add(network, &req.env.container_id, ifname, &ips)?;
        }
    } else if !conf.disable_container_interface {
        cont.set_up(cont_link.index).map_err(kernel_error("bringing the container interface up"))?;
    }

    // Read back what the kernel settled on (MACs can change when ports join).
    let br = host.require_link(&conf.bridge).map_err(kernel_error("reading the bridge"))?;
    let host_veth = host
        .link_by_index(host_veth.index)
        .map_err(kernel_error("reading the host veth"))?
        .unwrap_or(host_veth);
    let sandbox = req.env.netns.as_deref().map(Path::to_string_lossy).unwrap_or_default();
    result.interfaces =
        vec![iface(&br, None), iface(&host_veth, None), iface(&cont_link, Some(sandbox.into_owned()))];
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    undo.disarm();
    if let Some(added) = added {
        added.keep();
    }
    Ok(result)
}

fn iface(link: &Link, sandbox: Option<String>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| format_mac(&m)),
        sandbox,
        ..Default::default()
    }
}

fn setup_bridge(host: &Netlink, conf: &BridgeConf) -> Result<Link, Error> {
    let spec = BridgeSpec { name: conf.bridge.clone(), mtu: conf.mtu, vlan_filtering: conf.vlan_filtering() };
    let br = host.ensure_bridge(&spec).map_err(|e| match e {
        KernelError::WrongKind { .. } => Error::invalid_config("bridge", e),
        // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute.
        e if spec.vlan_filtering && e.errno() == Some(libc::EOPNOTSUPP) => {
            let (field, value) = if conf.vlan != 0 {
                ("vlan", conf.vlan.to_string())
            } else {
                ("vlanTrunk", format!("{:?}", conf.vlan_trunk))
            };
            Error::new(
                Code::UnsupportedField,
                format!("{field}: {value} is not supported here: this kernel has no bridge VLAN filtering"),
            )
        }
        e => kernel_error("setting up the bridge")(e),
    })?;
    if conf.promisc_mode && !br.promisc {
        host.set_promisc(br.index, true).map_err(kernel_error("making the bridge promiscuous"))?;
    }
    // The bridge must not autoconfigure itself from router advertisements on pod networks.
    let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    Ok(br)
}

/// Creates the veth pair: a random `vethXXXXXXXX` here, `ifname` in the container.
fn create_veth(host: &Netlink, ns: &NetNs, conf: &BridgeConf, ifname: &str) -> Result<Link, Error> {
    let opts = VethOptions { mtu: conf.mtu, mac: None, peer_mac: conf.mac };
    let mut last = None;
    for _ in 0..10 {
        let name = format!("veth{:08x}", random_u32());
        match host.add_veth(&name, ifname, Some(ns), &opts) {
            Ok(()) => return host.require_link(&name).map_err(kernel_error("reading the new veth")),
            // A clash of the random host name: try another.
            Err(e) if e.is_exists() && host.link(&name).ok().flatten().is_some() => last = Some(e),
            Err(e) if e.is_exists() => {
                return Err(Error::invalid_env(
                    "CNI_IFNAME",
                    format!("{ifname:?} already exists in the container"),
                ));
            }
            Err(e) => return Err(kernel_error("creating the veth pair")(e)),
        }
    }
    Err(kernel_error("creating the veth pair")(last.expect("ten clashes")))
}

fn setup_host_port(host: &Netlink, conf: &BridgeConf, veth: &Link, br: &Link) -> Result<(), Error> {
    let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", veth.name), "0");
    host.set_master(veth.index, br.index).map_err(kernel_error("attaching the veth to the bridge"))?;
    host.set_up(veth.index).map_err(kernel_error("bringing the host veth up"))?;
    let port = netkernel::link::BridgePortOptions {
        hairpin: conf.hairpin_mode.then_some(true),
        isolated: conf.port_isolation.then_some(true),
    };
    host.set_bridge_port(veth.index, &port).map_err(kernel_error("setting bridge-port options"))?;
    if conf.vlan != 0 {
        host.bridge_vlan_add(veth.index, PortVlan::Access(conf.vlan))
            .map_err(kernel_error("setting the VLAN"))?;
    }
    for trunk in &conf.vlan_trunk {
        host.bridge_vlan_add(veth.index, *trunk).map_err(kernel_error("setting the VLAN trunk"))?;
    }
    if conf.vlan != 0 && !conf.preserve_default_vlan {
        host.bridge_vlan_del(veth.index, 1).map_err(kernel_error("removing the default VLAN"))?;
    }
    Ok(())
}

/// The subnet's first address: the reference's default gateway.
fn first_host(net: &IpNet) -> Option<IpAddr> {
    match net.trunc() {
        IpNet::V4(n) => Some(IpAddr::V4((u32::from(n.network()) + 1).into())),
        IpNet::V6(n) => Some(IpAddr::V6((u128::from(n.network()) + 1).into())),
    }
}

/// `isDefaultGateway`: a default route per family via its gateway, unless IPAM gave one.
fn add_default_routes(result: &mut SuccessResult) {
    for v4 in [true, false] {
        let has_default =
            result.routes.iter().any(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() == v4);
        let gw = result.ips.iter().find(|ip| ip.is_v4() == v4).and_then(|ip| ip.gateway);
        if let (false, Some(gw)) = (has_default, gw) {
            let dst: IpNet = if v4 { "0.0.0.0/0".parse().unwrap() } else { "::/0".parse().unwrap() };
            result.routes.push(cni_spec::Route::new(dst, Some(gw)));
        }
    }
}

fn configure_container(
    ns: &NetNs,
    cont: &Netlink,
    link: &Link,
    conf: &BridgeConf,
    result: &SuccessResult,
) -> Result<(), Error> {
    let has_v6 = result.ips.iter().any(|ip| !ip.is_v4());
    let name = link.name.clone();
    let enabledad = conf.enabledad;
    ns.run(move || {
        let _ = sysctl::write(&format!("net/ipv4/conf/{name}/arp_notify"), "1");
        if has_v6 {
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0");
            let _ = sysctl::write("net/ipv6/conf/lo/disable_ipv6", "0");
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/keep_addr_on_down"), "1");
            // DAD costs seconds per pod (plugins#680); off unless asked for.
            let (dad, enhanced) = if enabledad { ("1", "1") } else { ("0", "0") };
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/accept_dad"), dad);
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/enhanced_dad"), enhanced);
        }
    })
    .map_err(kernel_error("setting container sysctls"))?;
    for ip in &result.ips {
        cont.ensure_address(link.index, ip.address)
            .map_err(kernel_error(format!("adding {} in the container", ip.address)))?;
    }
    cont.set_up(link.index).map_err(kernel_error("bringing the container interface up"))?;
    if let Some(lo) = cont.link("lo").ok().flatten().filter(|l| !l.up) {
        let _ = cont.set_up(lo.index);
    }
    for r in &result.routes {
        let v4 = r.dst.addr().is_ipv4();
        let gw = r.gw.or_else(|| result.ips.iter().find(|ip| ip.is_v4() == v4).and_then(|ip| ip.gateway));
        let mut kr = KRoute::new(r.dst, gw, Some(link.index));
        kr.mtu = r.mtu;
        kr.advmss = r.advmss;
        kr.priority = r.priority;
        kr.table = r.table;
        kr.scope = r.scope;
        cont.replace_route(&kr)
            .map_err(kernel_error(format!("adding the route to {} in the container", r.dst)))?;
    }
    Ok(())
}

/// Puts each gateway address on the bridge (the reference's `ensureAddr`), pins the bridge
/// MAC, and turns forwarding on.
fn setup_gateway(host: &Netlink, br: &Link, conf: &BridgeConf, result: &SuccessResult) -> Result<(), Error> {
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len()).expect("prefix from a valid address");
        let existing = host.addresses(br.index).map_err(kernel_error("reading the bridge addresses"))?;
        if existing.contains(&want) {
            continue;
        }
        for old in existing.iter().filter(|a| conflicts(a, &want)) {
            if !conf.force_address {
                return Err(Error::internal(format!(
                    "{:?} already has an IP address different from {want}: {old} (set forceAddress to replace it)",
                    conf.bridge
                )));
            }
            host.del_address(br.index, *old).map_err(kernel_error("removing the old bridge address"))?;
        }
        host.ensure_address(br.index, want)
            .map_err(kernel_error("adding the gateway address to the bridge"))?;
        let key = if want.addr().is_ipv4() { "net/ipv4/ip_forward" } else { "net/ipv6/conf/all/forwarding" };
        sysctl::write(key, "1").map_err(kernel_error("enabling forwarding"))?;
    }
    if let Some(mac) = br.mac {
        // A bridge takes the lowest port MAC unless set explicitly: pin it so it stays.
        let _ = host.set_mac(br.index, mac);
    }
    Ok(())
}

/// Whether an existing bridge address is in the way of `want`, as the reference decides:
/// any other IPv4 address; an IPv6 address in an overlapping subnet.
fn conflicts(old: &IpNet, want: &IpNet) -> bool {
    match (old, want) {
        (IpNet::V4(_), IpNet::V4(_)) => old != want,
        (IpNet::V6(o), IpNet::V6(w)) => {
            o != w
                && !o.addr().is_unicast_link_local()
                && (o.contains(&w.network()) || w.contains(&o.network()))
        }
        _ => false,
    }
}

fn del(req: &Request) -> Result<(), Error> {
    let conf = BridgeConf::load(req)?;
    let network = req.network_name()?;
    if let Some(path) = &req.env.netns {
        match NetNs::open(path) {
            Ok(ns) => {
                let cont =
                    Netlink::in_netns(&ns).map_err(kernel_error("opening netlink in the container"))?;
                if let Some(link) =
                    cont.link(&req.env.ifname).map_err(kernel_error("reading the container interface"))?
                {
                    cont.delete_link(link.index).map_err(kernel_error("deleting the container interface"))?;
                }
            }
            // The namespace's name is gone. The namespace itself may live on (anything that
            // holds it, e.g. orphaned TCP sockets, keeps it for minutes) with its eth0 still on
            // the bridge holding the address IPAM is about to release: unplug it.
            Err(e) if e.is_not_found() || matches!(e, KernelError::NotNetns(_)) => {
                unplug_orphan(req, &conf)?;
            }
            Err(e) => return Err(Error::invalid_env("CNI_NETNS", e)),
        }
    }
    // Masquerade entries go before the address is released, so they can be removed by
    // address without racing a new owner of it.
    if conf.ip_masq {
        let known: Vec<IpAddr> = req
            .prev_result()
            .ok()
            .flatten()
            .map(|r| r.ips.iter().map(|ip| ip.address.addr()).collect())
            .unwrap_or_default();
        masq::remove(network, &req.env.container_id, &req.env.ifname, &known)?;
    }
    if let Some(t) = &conf.ipam_type {
        Delegate::for_request(req, t).del(&req.raw)?;
    }
    if conf.macspoofchk {
        spoof::remove(network, &req.env.container_id, &req.env.ifname)?;
    }
    Ok(())
}

/// DEL after the container's namespace was deleted: deletes the host end of its veth (the
/// pair goes with it, also from a namespace that lingers) when prevResult names it. The
/// link must be a veth on our bridge with the name and MAC the result recorded, so that a
/// veth of another pod that took the name since is never touched. Without a prevResult
/// there is nothing to go by; the kernel removes the pair when the namespace dies.
fn unplug_orphan(req: &Request, conf: &BridgeConf) -> Result<(), Error> {
    let Some(prev) = req.prev_result().ok().flatten() else { return Ok(()) };
    let host = Netlink::current().map_err(kernel_error("opening netlink"))?;
    let Some(br) = host.link(&conf.bridge).map_err(kernel_error("reading the bridge"))? else {
        return Ok(());
    };
    for i in prev.interfaces.iter().filter(|i| i.sandbox.is_none() && i.name != conf.bridge) {
        let Some(link) = host.link(&i.name).map_err(kernel_error("reading the host veth"))? else { continue };
        let same_mac = i.mac.is_some() && i.mac == link.mac.map(|m| format_mac(&m));
        if link.is("veth") && link.master == Some(br.index) && same_mac {
            match host.delete_link(link.index) {
                Ok(()) => {}
                // Gone meanwhile (the namespace died): what we wanted.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(kernel_error("deleting the host veth")(e)),
            }
        }
    }
    Ok(())
}

fn check(req: &Request) -> Result<(), Error> {
    let conf = BridgeConf::load(req)?;
    if let Some(t) = &conf.ipam_type {
        Delegate::for_request(req, t).check(&req.raw)?;
    }
    let prev =
        req.prev_result()?.ok_or_else(|| Error::invalid_config("prevResult", "missing: CHECK needs it"))?;
    let mismatch = |what: String| Error::with_code(Code::Internal as u32, format!("CHECK: {what}"));
    let ifname = &req.env.ifname;
    let netns_path = req.env.netns.as_deref().map(Path::to_string_lossy).unwrap_or_default();

    let host = Netlink::current().map_err(kernel_error("opening netlink"))?;
    let br = host.link(&conf.bridge).map_err(kernel_error("reading the bridge"))?;
    let br = br
        .filter(|l| l.is("bridge"))
        .ok_or_else(|| mismatch(format!("bridge {:?} is missing", conf.bridge)))?;
    if let Some(want) = prev.interfaces.iter().find(|i| i.name == conf.bridge && i.sandbox.is_none())
        && want.mac.is_some()
        && want.mac != br.mac.map(|m| format_mac(&m))
    {
        return Err(mismatch(format!(
            "bridge {:?} has MAC {:?}, the result says {:?}",
            br.name,
            br.mac.map(|m| format_mac(&m)),
            want.mac
        )));
    }
    if conf.promisc_mode && !br.promisc {
        return Err(mismatch(format!("bridge {:?} is not promiscuous", br.name)));
    }

    let want_if = prev
        .interfaces
        .iter()
        .position(|i| &i.name == ifname && i.sandbox.is_some())
        .ok_or_else(|| mismatch(format!("the result has no container interface {ifname:?}")))?;
    let want = &prev.interfaces[want_if];
    if want.sandbox.as_deref() != Some(netns_path.as_ref()) {
        return Err(mismatch(format!("interface {ifname:?} is in {:?}, not {netns_path:?}", want.sandbox)));
    }
    let ns = open_netns(req)?;
    let cont = Netlink::in_netns(&ns).map_err(kernel_error("opening netlink in the container"))?;
    let link = cont
        .link(ifname)
        .map_err(kernel_error("reading the container interface"))?
        .filter(|l| l.is("veth"))
        .ok_or_else(|| mismatch(format!("veth {ifname:?} is missing in the container")))?;
    if want.mac.is_some() && want.mac != link.mac.map(|m| format_mac(&m)) {
        return Err(mismatch(format!("{ifname:?} has another MAC than the result says")));
    }
    let peer = host
        .links()
        .map_err(kernel_error("listing host links"))?
        .into_iter()
        .find(|l| l.is("veth") && Some(l.index) == link.peer_index && l.master == Some(br.index));
    if peer.is_none() {
        return Err(mismatch(format!("no host veth on {:?} is the peer of {ifname:?}", br.name)));
    }

    let addrs = cont.addresses(link.index).map_err(kernel_error("reading container addresses"))?;
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none_or(|i| i == want_if)) {
        if !addrs.contains(&ip.address) {
            return Err(mismatch(format!("address {} is missing on {ifname:?}", ip.address)));
        }
    }
    for r in &prev.routes {
        let routes = cont
            .routes(!r.dst.addr().is_ipv4(), r.table)
            .map_err(kernel_error("reading container routes"))?;
        let found = routes.iter().any(|k| k.dst == r.dst.trunc() && (r.gw.is_none() || k.gateway == r.gw));
        if !found {
            return Err(mismatch(format!("route to {} is missing", r.dst)));
        }
    }
    if conf.macspoofchk && !spoof::present(req.network_name()?, &req.env.container_id, ifname)? {
        return Err(mismatch(format!("the MAC spoof rule for {ifname:?} is missing")));
    }
    if conf.ip_masq {
        let entries = masq::entries_of(req.network_name()?, &req.env.container_id, ifname)?;
        for ip in &prev.ips {
            if !entries.iter().any(|e| e.ip == ip.address.addr()) {
                return Err(mismatch(format!("masquerade entry for {} is missing", ip.address.addr())));
            }
        }
    }
    Ok(())
}

fn random_u32() -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).is_err() {
        // No urandom: time and pid still differ between concurrent plugins.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}
