//! The `bridge` plugin: a drop-in for the reference, on the shared kernel layer.
//!
//! ADD validates everything it can before it touches the kernel (the config, the
//! environment, the netns, a link in the way of the bridge name, the IPAM plugin's
//! presence), then asks IPAM (so IPAM's errors, the most common ones, come before any
//! link exists), checks what IPAM's answer makes checkable (routes' gateways, the bridge's
//! addresses), and only then changes the kernel: bridge, veth (the container end born in
//! the container namespace), addresses and routes, the gateway address on the bridge, the
//! MAC spoof rule, masquerade, forwarding last. Each change is recorded and undone if a
//! later step fails, the bridge included when this ADD created it; the kernel part runs
//! under a per-bridge lock, so an undo never races another ADD on the same bridge.

pub mod config;
pub mod error;
mod lock;
pub mod masq;
pub mod spoof;

use std::net::IpAddr;
use std::path::Path;

use cni_spec::delegate::Delegate;
use cni_spec::{Error, Interface, Plugin, Request, SuccessResult};
use ipnet::IpNet;
use netkernel::addr::AddrOptions;
use netkernel::link::{BridgeSpec, Link, PortVlan, VethOptions, format_mac};
use netkernel::route::Route as KRoute;
use netkernel::{KernelError, NetNs, Netlink, sysctl};

use self::config::BridgeConf;
use self::error::BridgeError;
use self::lock::BridgeLock;

/// The plugin.
pub struct Bridge;

impl Plugin for Bridge {
    fn about(&self) -> String {
        "bridge: attach containers to a Linux bridge with a veth pair".into()
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

    fn status(&self, req: &Request) -> Result<(), Error> {
        status(req).map_err(Error::from)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req).map_err(Error::from)
    }
}

fn status(req: &Request) -> Result<(), BridgeError> {
    match BridgeConf::load(req)?.ipam_type {
        Some(t) => Ok(Delegate::for_request(req, &t).status(&req.raw)?),
        None => Ok(()),
    }
}

fn gc(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::load(req)?;
    let network = req.network_name()?;
    let mut errors = Vec::new();
    if let Some(t) = &conf.ipam_type
        && let Err(e) = Delegate::for_request(req, t).gc(&req.raw)
    {
        errors.push(e.to_string());
    }
    // No list is not "nothing is valid": GC would reclaim every attachment.
    let valid = req.valid_attachments()?.ok_or_else(|| {
        BridgeError::config(
            cni_spec::plugin::VALID_ATTACHMENTS_KEY,
            "missing (GC needs the list of valid attachments)",
        )
    })?;
    // Entries exist only if masquerading was ever on; listing is cheap enough for GC.
    if let Err(e) = masq::gc(network, &valid) {
        errors.push(e.to_string());
    }
    if let Err(e) = spoof::gc(network, &valid) {
        errors.push(e.to_string());
    }
    if errors.is_empty() { Ok(()) } else { Err(BridgeError::Many(errors)) }
}

/// What an ADD did to the bridge, to put it back as it was.
#[derive(Debug, Default)]
struct BridgeChanges {
    index: u32,
    /// This ADD created it (then undoing is deleting it).
    created: bool,
    /// It was down and this ADD brought it up.
    brought_up: bool,
    /// This ADD made it promiscuous.
    made_promisc: bool,
    /// Addresses this ADD put on it, and the ones it replaced (`forceAddress`).
    added: Vec<IpNet>,
    removed: Vec<IpNet>,
}

/// What an ADD did in the container besides its interface (which goes with the veth).
#[derive(Debug, Default)]
struct ContainerChanges {
    /// `lo` was down and this ADD brought it up, with the addresses it had then (the
    /// kernel gives it 127.0.0.1 when it first comes up).
    lo_up: Option<(u32, Vec<IpNet>)>,
    /// `net.ipv6.conf.lo.disable_ipv6` before this ADD changed it.
    lo_disable_ipv6: Option<String>,
}

/// Undoes the kernel work of a failed ADD when dropped (IPAM has its own guard), in the
/// reverse order of the steps. Dropped while the bridge lock is held.
struct Undo<'a> {
    host: &'a Netlink,
    cont: &'a Netlink,
    ns: &'a NetNs,
    bridge: Option<BridgeChanges>,
    veth: Option<u32>,
    container: ContainerChanges,
    masq: Option<(&'a str, &'a str, &'a str)>,
    spoof: Option<(&'a str, &'a str, &'a str)>,
    armed: bool,
}

impl<'a> Undo<'a> {
    fn new(host: &'a Netlink, cont: &'a Netlink, ns: &'a NetNs) -> Self {
        Undo {
            host,
            cont,
            ns,
            bridge: None,
            veth: None,
            container: ContainerChanges::default(),
            masq: None,
            spoof: None,
            armed: true,
        }
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
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
        if let Some((lo, before)) = self.container.lo_up.take() {
            let _ = self.cont.set_down(lo);
            for a in self.cont.addresses(lo).unwrap_or_default() {
                if !before.contains(&a) {
                    let _ = self.cont.del_address(lo, a);
                }
            }
        }
        if let Some(old) = self.container.lo_disable_ipv6.take() {
            let _ = self.ns.run(move || sysctl::write("net/ipv6/conf/lo/disable_ipv6", &old));
        }
        if let Some(br) = &self.bridge {
            if br.created {
                // Created under the lock we still hold: no other attachment can be using it.
                let _ = self.host.delete_link(br.index);
                return;
            }
            for a in &br.added {
                let _ = self.host.del_address(br.index, *a);
            }
            for a in &br.removed {
                let _ = self.host.ensure_address(br.index, *a);
            }
            if br.made_promisc {
                let _ = self.host.set_promisc(br.index, false);
            }
            if br.brought_up {
                let _ = self.host.set_down(br.index);
            }
        }
    }
}

/// Opens a namespace path, refusing without opening anything that is not a regular file
/// (namespace files are): opening a FIFO would block.
fn open_netns_path(path: &Path) -> Result<NetNs, KernelError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| KernelError::Io { what: format!("opening netns {}", path.display()), source: e })?;
    if !meta.is_file() {
        return Err(KernelError::NotNetns(path.to_path_buf()));
    }
    NetNs::open(path)
}

fn open_netns(req: &Request) -> Result<NetNs, BridgeError> {
    let path = req.env.netns.as_deref().ok_or_else(|| BridgeError::env("CNI_NETNS", "missing"))?;
    let ns = open_netns_path(path).map_err(|e| BridgeError::env("CNI_NETNS", e))?;
    refuse_own_netns(&ns)?;
    Ok(ns)
}

/// The container's namespace must not be the plugin's own: ADD would attach the host to
/// itself, DEL would delete a host interface.
fn refuse_own_netns(ns: &NetNs) -> Result<(), BridgeError> {
    let here = NetNs::current().map_err(BridgeError::kernel("opening the plugin's own netns"))?;
    if ns.same_as(&here) {
        return Err(BridgeError::env(
            "CNI_NETNS",
            format!("{} is the plugin's own network namespace, not a container's", ns.path().display()),
        ));
    }
    Ok(())
}

fn add(req: &Request) -> Result<SuccessResult, BridgeError> {
    // Everything that can be refused without touching the kernel is refused first.
    let conf = BridgeConf::load(req)?;
    let network = req.network_name()?;
    let ifname = req.env.ifname.as_str();
    let ns = open_netns(req)?;
    let host = Netlink::current().map_err(BridgeError::kernel("opening netlink"))?;
    let cont = Netlink::in_netns(&ns).map_err(BridgeError::kernel("opening netlink in the container"))?;
    if cont.link(ifname).map_err(BridgeError::kernel("reading the container's links"))?.is_some() {
        return Err(BridgeError::env("CNI_IFNAME", format!("{ifname:?} already exists in the container")));
    }
    let existing = host.link(&conf.bridge).map_err(BridgeError::kernel("reading the bridge"))?;
    if let Some(l) = &existing
        && !l.is("bridge")
    {
        return Err(BridgeError::config(
            "bridge",
            format!(
                "{:?} already exists but is a {}, not a bridge",
                conf.bridge,
                l.kind.as_deref().unwrap_or("link")
            ),
        ));
    }

    // An MTU below IPv6's minimum would take IPv6 off an existing bridge the moment the
    // veth joins it (the bridge follows its smallest port), losing its addresses.
    if let (Some(br), Some(mtu)) = (&existing, conf.mtu)
        && mtu < IPV6_MIN_MTU
        && host
            .addresses(br.index)
            .map_err(BridgeError::kernel("reading the bridge addresses"))?
            .iter()
            .any(|a| a.addr().is_ipv6())
    {
        return Err(mtu_too_small(mtu, "the bridge has IPv6 addresses"));
    }
    // host-local's config is known here: what IPAM's answer will make checkable is checked
    // now, so that a refusal does not even touch IPAM's store.
    if conf.ipam_type.as_deref() == Some("host-local") {
        let plan = crate::host_local::config::Config::load(&req.config, req.version).map_err(Error::from)?;
        preflight_host_local(&plan, &host, existing.as_ref(), &conf)?;
    }

    // VLANs need a kernel with bridge VLAN filtering, which only trying tells: the bridge
    // is set up now, before IPAM (or, when it exists, a scratch bridge tried and removed),
    // so that a kernel without it refuses (code 2) before anything is allocated.
    let mut lock = None;
    let mut undo = Undo::new(&host, &cont, &ns);
    let mut br = None;
    if conf.vlan_filtering() {
        lock = Some(BridgeLock::acquire(&conf.bridge, lock::WAIT)?);
        if existing.is_some() {
            probe_vlan_filtering(&host, &conf)?;
        } else {
            br = Some(setup_bridge(&host, &conf, &mut undo)?);
        }
    }

    // IPAM before any link (but a VLAN bridge): its errors leave the kernel untouched.
    let ipam = conf.ipam_type.as_deref().map(|t| Delegate::for_request(req, t));
    if let Some(ipam) = &ipam {
        ipam.locate("ipam.type")?;
    }
    let added = match &ipam {
        Some(ipam) => Some(ipam.add_guarded(&req.raw)?),
        None => None,
    };
    let mut result = SuccessResult::default();
    if let Some(added) = &added {
        let ipam_result = added.result().clone();
        if ipam_result.ips.is_empty() {
            return Err(BridgeError::Conflict("IPAM plugin returned missing IP config".into()));
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
        check_routes(&result)?;
        if let Some(mtu) = conf.mtu.filter(|m| *m < IPV6_MIN_MTU)
            && result.ips.iter().any(|ip| !ip.is_v4())
        {
            return Err(mtu_too_small(mtu, "the container gets an IPv6 address"));
        }
        if conf.is_gateway
            && let Some(br) = &existing
        {
            check_bridge_addresses(&host, br, &conf, &result)?;
        }
    }

    // The kernel, from here on: every change is undone if a later step fails.
    if lock.is_none() {
        lock = Some(BridgeLock::acquire(&conf.bridge, lock::WAIT)?);
    }
    let br = match br {
        Some(br) => br,
        None => setup_bridge(&host, &conf, &mut undo)?,
    };
    let host_veth = create_veth(&host, &ns, &conf, ifname)?;
    undo.veth = Some(host_veth.index);
    setup_host_port(&host, &conf, &host_veth, &br)?;
    let cont_link =
        cont.require_link(ifname).map_err(BridgeError::kernel("reading the container interface"))?;

    if added.is_some() {
        configure_container(&ns, &cont, &cont_link, &conf, &result, &mut undo.container)?;
        if conf.is_gateway {
            setup_gateway(&host, &br, &conf, &result, undo.bridge.as_mut().expect("set up above"))?;
        }
    } else if !conf.disable_container_interface {
        cont.set_up(cont_link.index).map_err(BridgeError::kernel("bringing the container interface up"))?;
    }
    if conf.macspoofchk {
        let mac = cont_link
            .mac
            .ok_or_else(|| BridgeError::Conflict("the container interface has no MAC".into()))?;
        undo.spoof = Some((network, &req.env.container_id, ifname));
        spoof::add(network, &req.env.container_id, ifname, &host_veth.name, mac)?;
    }
    if conf.ip_masq && added.is_some() {
        let ips: Vec<IpNet> = result.ips.iter().map(|ip| ip.address).collect();
        undo.masq = Some((network, &req.env.container_id, ifname));
        masq::add(network, &req.env.container_id, ifname, &ips)?;
    }

    // Read back what the kernel settled on (MACs can change when ports join).
    let br = host.require_link(&conf.bridge).map_err(BridgeError::kernel("reading the bridge"))?;
    let host_veth = host
        .link_by_index(host_veth.index)
        .map_err(BridgeError::kernel("reading the host veth"))?
        .unwrap_or(host_veth);
    let sandbox = req.env.netns.as_deref().map(Path::to_string_lossy).unwrap_or_default();
    result.interfaces =
        vec![iface(&br, None), iface(&host_veth, None), iface(&cont_link, Some(sandbox.into_owned()))];
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    // Last, the host-wide switch: nothing fails after it, so it never needs undoing.
    if conf.is_gateway && added.is_some() {
        enable_forwarding(&result)?;
    }
    undo.disarm();
    if let Some(added) = added {
        added.keep();
    }
    drop(lock);
    if existing.is_some() {
        // A bridge that existed gets what the reference gives every bridge it ensures.
        let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    }
    Ok(result)
}

/// IPv6 needs links of at least this MTU.
const IPV6_MIN_MTU: u32 = 1280;

fn mtu_too_small(mtu: u32, why: &str) -> BridgeError {
    BridgeError::config("mtu", format!("{mtu} is below 1280, the minimum for IPv6, and {why}"))
}

/// The checks of [`check_routes`] and [`check_bridge_addresses`], made from host-local's
/// config before it runs: each route's gateway in one of the subnets the container will get
/// an address of; the gateway addresses of single-range sets free to go on the bridge.
fn preflight_host_local(
    plan: &crate::host_local::config::Config,
    host: &Netlink,
    existing: Option<&Link>,
    conf: &BridgeConf,
) -> Result<(), BridgeError> {
    if let Some(mtu) = conf.mtu.filter(|m| *m < IPV6_MIN_MTU)
        && plan.sets.iter().any(|s| !s.is_v4())
    {
        return Err(mtu_too_small(mtu, "the container gets an IPv6 address"));
    }
    let subnets: Vec<IpNet> = plan.sets.iter().flat_map(|s| s.ranges.iter().map(|r| r.subnet)).collect();
    for (i, r) in plan.routes.iter().enumerate() {
        if let Some(gw) = r.gw
            && !subnets.iter().any(|n| n.contains(&gw))
        {
            return Err(BridgeError::config(
                format!("ipam.routes[{i}].gw"),
                format!("{gw} is not in any subnet the container gets an address of"),
            ));
        }
    }
    let Some(br) = existing.filter(|_| conf.is_gateway && !conf.force_address) else { return Ok(()) };
    let mut present =
        host.addresses(br.index).map_err(BridgeError::kernel("reading the bridge addresses"))?;
    for set in plan.sets.iter().filter(|s| s.ranges.len() == 1) {
        let r = &set.ranges[0];
        let want = IpNet::new(r.gateway, r.subnet.prefix_len()).expect("prefix from a valid subnet");
        if present.contains(&want) {
            continue;
        }
        if let Some(old) = present.iter().find(|a| conflicts(a, &want)) {
            return Err(address_conflict(conf, want, old));
        }
        present.push(want);
    }
    Ok(())
}

/// A route's gateway must be reachable on the container's interface: inside the subnet of
/// one of its addresses (the kernel refuses it otherwise, after IPAM has allocated).
fn check_routes(result: &SuccessResult) -> Result<(), BridgeError> {
    for r in &result.routes {
        let Some(gw) = r.gw else { continue };
        if gw.is_ipv4() != r.dst.addr().is_ipv4() {
            return Err(BridgeError::config(
                "ipam.routes",
                format!("route to {}: gateway {gw} is of another family", r.dst),
            ));
        }
        if !result.ips.iter().any(|ip| ip.address.trunc().contains(&gw)) {
            return Err(BridgeError::config(
                "ipam.routes",
                format!(
                    "route to {}: gateway {gw} is not in the subnet of any of the container's addresses",
                    r.dst
                ),
            ));
        }
    }
    Ok(())
}

/// Without `forceAddress`, the bridge must not have another address in the way of the
/// gateway addresses (the reference finds this out after everything else is set up).
fn check_bridge_addresses(
    host: &Netlink,
    br: &Link,
    conf: &BridgeConf,
    result: &SuccessResult,
) -> Result<(), BridgeError> {
    if conf.force_address {
        return Ok(());
    }
    let mut present =
        host.addresses(br.index).map_err(BridgeError::kernel("reading the bridge addresses"))?;
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len()).expect("prefix from a valid address");
        if present.contains(&want) {
            continue;
        }
        if let Some(old) = present.iter().find(|a| conflicts(a, &want)) {
            return Err(address_conflict(conf, want, old));
        }
        present.push(want);
    }
    Ok(())
}

fn address_conflict(conf: &BridgeConf, want: IpNet, old: &IpNet) -> BridgeError {
    BridgeError::Conflict(format!(
        "{:?} already has an IP address different from {want}: {old} (set forceAddress to replace it)",
        conf.bridge
    ))
}

/// `ip_forward` (and IPv6 forwarding) on for the families the container has addresses
/// of; written only when not on already.
fn enable_forwarding(result: &SuccessResult) -> Result<(), BridgeError> {
    for v4 in [true, false] {
        if !result.ips.iter().any(|ip| ip.gateway.is_some() && ip.is_v4() == v4) {
            continue;
        }
        let key = if v4 { "net/ipv4/ip_forward" } else { "net/ipv6/conf/all/forwarding" };
        if sysctl::read(key).ok().as_deref() != Some("1") {
            sysctl::write(key, "1").map_err(BridgeError::kernel("enabling forwarding"))?;
        }
    }
    Ok(())
}

fn iface(link: &Link, sandbox: Option<String>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| format_mac(&m)),
        sandbox,
        ..Default::default()
    }
}

/// The error of a kernel without bridge VLAN filtering, naming the field that asked for it.
fn vlan_unsupported(conf: &BridgeConf) -> BridgeError {
    let (field, value) = if conf.vlan != 0 {
        ("vlan", conf.vlan.to_string())
    } else {
        ("vlanTrunk", format!("{:?}", conf.vlan_trunk))
    };
    BridgeError::Unsupported {
        field,
        why: format!("{value} is not supported here: this kernel has no bridge VLAN filtering"),
    }
}

/// Tries a scratch bridge with VLAN filtering (created and deleted at once).
fn probe_vlan_filtering(host: &Netlink, conf: &BridgeConf) -> Result<(), BridgeError> {
    let name = format!("cnivlan{:08x}", random_u32());
    let spec = BridgeSpec { name: name.clone(), mtu: None, vlan_filtering: true };
    match host.ensure_bridge(&spec) {
        Ok(probe) => {
            host.delete_link(probe.index).map_err(BridgeError::kernel("removing the VLAN probe bridge"))?;
            Ok(())
        }
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Err(vlan_unsupported(conf)),
        Err(e) => {
            if let Ok(Some(l)) = host.link(&name) {
                let _ = host.delete_link(l.index);
            }
            Err(BridgeError::kernel("probing bridge VLAN filtering")(e))
        }
    }
}

/// Creates the bridge, or brings an existing one up; records what it changed in `undo`.
fn setup_bridge(host: &Netlink, conf: &BridgeConf, undo: &mut Undo) -> Result<Link, BridgeError> {
    let before = host.link(&conf.bridge).map_err(BridgeError::kernel("reading the bridge"))?;
    let spec = BridgeSpec { name: conf.bridge.clone(), mtu: conf.mtu, vlan_filtering: conf.vlan_filtering() };
    let br = host.ensure_bridge(&spec).map_err(|e| match e {
        KernelError::WrongKind { .. } => BridgeError::config("bridge", e),
        // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING refuse the attribute.
        e if spec.vlan_filtering && e.errno() == Some(libc::EOPNOTSUPP) => vlan_unsupported(conf),
        e => BridgeError::kernel("setting up the bridge")(e),
    })?;
    let changes = undo.bridge.insert(BridgeChanges {
        index: br.index,
        created: before.is_none(),
        brought_up: before.as_ref().is_some_and(|b| !b.up),
        ..Default::default()
    });
    if changes.created {
        // The bridge must not autoconfigure itself from router advertisements on pod networks.
        let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", conf.bridge), "0");
    }
    if conf.promisc_mode && !br.promisc {
        host.set_promisc(br.index, true).map_err(BridgeError::kernel("making the bridge promiscuous"))?;
        changes.made_promisc = true;
    }
    Ok(br)
}

/// Creates the veth pair: a random `vethXXXXXXXX` here, `ifname` in the container.
fn create_veth(host: &Netlink, ns: &NetNs, conf: &BridgeConf, ifname: &str) -> Result<Link, BridgeError> {
    let opts = VethOptions { mtu: conf.mtu, mac: None, peer_mac: conf.mac };
    let mut last = None;
    for _ in 0..10 {
        let name = format!("veth{:08x}", random_u32());
        match host.add_veth(&name, ifname, Some(ns), &opts) {
            Ok(()) => return host.require_link(&name).map_err(BridgeError::kernel("reading the new veth")),
            // A clash of the random host name: try another.
            Err(e) if e.is_exists() && host.link(&name).ok().flatten().is_some() => last = Some(e),
            Err(e) if e.is_exists() => {
                return Err(BridgeError::env(
                    "CNI_IFNAME",
                    format!("{ifname:?} already exists in the container"),
                ));
            }
            Err(e) => return Err(BridgeError::kernel("creating the veth pair")(e)),
        }
    }
    Err(BridgeError::kernel("creating the veth pair")(last.expect("ten clashes")))
}

fn setup_host_port(host: &Netlink, conf: &BridgeConf, veth: &Link, br: &Link) -> Result<(), BridgeError> {
    let _ = sysctl::write(&format!("net/ipv6/conf/{}/accept_ra", veth.name), "0");
    host.set_master(veth.index, br.index).map_err(BridgeError::kernel("attaching the veth to the bridge"))?;
    host.set_up(veth.index).map_err(BridgeError::kernel("bringing the host veth up"))?;
    let port = netkernel::link::BridgePortOptions {
        hairpin: conf.hairpin_mode.then_some(true),
        isolated: conf.port_isolation.then_some(true),
    };
    host.set_bridge_port(veth.index, &port).map_err(BridgeError::kernel("setting bridge-port options"))?;
    if conf.vlan != 0 {
        host.bridge_vlan_add(veth.index, PortVlan::Access(conf.vlan))
            .map_err(BridgeError::kernel("setting the VLAN"))?;
    }
    for trunk in &conf.vlan_trunk {
        host.bridge_vlan_add(veth.index, *trunk).map_err(BridgeError::kernel("setting the VLAN trunk"))?;
    }
    if conf.vlan != 0 && !conf.preserve_default_vlan {
        host.bridge_vlan_del(veth.index, 1).map_err(BridgeError::kernel("removing the default VLAN"))?;
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
    changes: &mut ContainerChanges,
) -> Result<(), BridgeError> {
    let has_v6 = result.ips.iter().any(|ip| !ip.is_v4());
    let name = link.name.clone();
    let enabledad = conf.enabledad;
    // The interface's own sysctls go with it; `lo`'s are recorded to be put back.
    changes.lo_disable_ipv6 = ns
        .run(move || {
            let _ = sysctl::write(&format!("net/ipv4/conf/{name}/arp_notify"), "1");
            if !has_v6 {
                return None;
            }
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/disable_ipv6"), "0");
            let lo = "net/ipv6/conf/lo/disable_ipv6";
            let before = sysctl::read(lo).ok().filter(|v| v != "0");
            if before.is_some() && sysctl::write(lo, "0").is_err() {
                return None;
            }
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/keep_addr_on_down"), "1");
            // DAD costs seconds per pod (plugins#680); off unless asked for.
            let (dad, enhanced) = if enabledad { ("1", "1") } else { ("0", "0") };
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/accept_dad"), dad);
            let _ = sysctl::write(&format!("net/ipv6/conf/{name}/enhanced_dad"), enhanced);
            before
        })
        .map_err(BridgeError::kernel("setting container sysctls"))?;
    for ip in &result.ips {
        cont.ensure_address(link.index, ip.address)
            .map_err(BridgeError::kernel(format!("adding {} in the container", ip.address)))?;
    }
    cont.set_up(link.index).map_err(BridgeError::kernel("bringing the container interface up"))?;
    if let Some(lo) = cont.link("lo").ok().flatten().filter(|l| !l.up) {
        let before = cont.addresses(lo.index).unwrap_or_default();
        if cont.set_up(lo.index).is_ok() {
            changes.lo_up = Some((lo.index, before));
        }
    }
    for r in &result.routes {
        let v4 = r.dst.addr().is_ipv4();
        let gw = r.gw.or_else(|| result.ips.iter().find(|ip| ip.is_v4() == v4).and_then(|ip| ip.gateway));
        let mut kr = KRoute::new(r.dst.trunc(), gw, Some(link.index));
        kr.mtu = r.mtu;
        kr.advmss = r.advmss;
        kr.priority = r.priority;
        kr.table = r.table;
        kr.scope = r.scope;
        cont.replace_route(&kr)
            .map_err(BridgeError::kernel(format!("adding the route to {} in the container", r.dst)))?;
    }
    Ok(())
}

/// Puts each gateway address on the bridge (the reference's `ensureAddr`) and pins the
/// bridge MAC; records the addresses it added and replaced.
fn setup_gateway(
    host: &Netlink,
    br: &Link,
    conf: &BridgeConf,
    result: &SuccessResult,
    changes: &mut BridgeChanges,
) -> Result<(), BridgeError> {
    for ip in &result.ips {
        let Some(gw) = ip.gateway else { continue };
        let want = IpNet::new(gw, ip.address.prefix_len()).expect("prefix from a valid address");
        let existing =
            host.addresses(br.index).map_err(BridgeError::kernel("reading the bridge addresses"))?;
        if existing.contains(&want) {
            continue;
        }
        for old in existing.iter().filter(|a| conflicts(a, &want)) {
            if !conf.force_address {
                return Err(address_conflict(conf, want, old));
            }
            host.del_address(br.index, *old)
                .map_err(BridgeError::kernel("removing the old bridge address"))?;
            changes.removed.push(*old);
        }
        // No duplicate address detection: the host owns the gateway (a pod holding it is
        // misconfigured), and DAD would leave it tentative, unreachable, for the first pod.
        match host.add_address_with(br.index, want, AddrOptions { no_dad: true }) {
            Ok(()) => changes.added.push(want),
            // A concurrent ADD of another bridge user put it there (it holds no lock on us).
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(BridgeError::kernel("adding the gateway address to the bridge")(e)),
        }
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

fn del(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::load(req)?;
    let network = req.network_name()?;
    // Masquerade entries go before the address is released, so they can be removed by
    // address without racing a new owner of it; and before the veth is deleted, so the
    // kernel frees them (an RCU grace period, which closing the nftables socket waits for)
    // while it deletes the veth.
    if conf.ip_masq {
        let known: Vec<IpAddr> = req
            .prev_result()
            .ok()
            .flatten()
            .map(|r| r.ips.iter().map(|ip| ip.address.addr()).collect())
            .unwrap_or_default();
        masq::remove(network, &req.env.container_id, &req.env.ifname, &known)?;
    }
    if let Some(path) = &req.env.netns {
        match open_netns_path(path) {
            Ok(ns) => {
                refuse_own_netns(&ns)?;
                let cont = Netlink::in_netns(&ns)
                    .map_err(BridgeError::kernel("opening netlink in the container"))?;
                // Only a veth is ours to delete: anything else of that name is not.
                if let Some(link) = cont
                    .link(&req.env.ifname)
                    .map_err(BridgeError::kernel("reading the container interface"))?
                    .filter(|l| l.is("veth"))
                {
                    cont.delete_link(link.index)
                        .map_err(BridgeError::kernel("deleting the container interface"))?;
                }
            }
            // The namespace's name is gone. The namespace itself may live on (anything that
            // holds it, e.g. orphaned TCP sockets, keeps it for minutes) with its eth0 still on
            // the bridge holding the address IPAM is about to release: unplug it.
            Err(e) if e.is_not_found() || matches!(e, KernelError::NotNetns(_)) => {
                unplug_orphan(req, &conf)?;
            }
            Err(e) => return Err(BridgeError::env("CNI_NETNS", e)),
        }
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
fn unplug_orphan(req: &Request, conf: &BridgeConf) -> Result<(), BridgeError> {
    let Some(prev) = req.prev_result().ok().flatten() else { return Ok(()) };
    let host = Netlink::current().map_err(BridgeError::kernel("opening netlink"))?;
    let Some(br) = host.link(&conf.bridge).map_err(BridgeError::kernel("reading the bridge"))? else {
        return Ok(());
    };
    for i in prev.interfaces.iter().filter(|i| i.sandbox.is_none() && i.name != conf.bridge) {
        let Some(link) = host.link(&i.name).map_err(BridgeError::kernel("reading the host veth"))? else {
            continue;
        };
        let same_mac = i.mac.is_some() && i.mac == link.mac.map(|m| format_mac(&m));
        if link.is("veth") && link.master == Some(br.index) && same_mac {
            match host.delete_link(link.index) {
                Ok(()) => {}
                // Gone meanwhile (the namespace died): what we wanted.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(BridgeError::kernel("deleting the host veth")(e)),
            }
        }
    }
    Ok(())
}

fn check(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::load(req)?;
    if let Some(t) = &conf.ipam_type {
        Delegate::for_request(req, t).check(&req.raw)?;
    }
    let prev =
        req.prev_result()?.ok_or_else(|| BridgeError::config("prevResult", "missing: CHECK needs it"))?;
    let mismatch = BridgeError::Check;
    let ifname = &req.env.ifname;
    let netns_path = req.env.netns.as_deref().map(Path::to_string_lossy).unwrap_or_default();

    let host = Netlink::current().map_err(BridgeError::kernel("opening netlink"))?;
    let br = host.link(&conf.bridge).map_err(BridgeError::kernel("reading the bridge"))?;
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
    let cont = Netlink::in_netns(&ns).map_err(BridgeError::kernel("opening netlink in the container"))?;
    let link = cont
        .link(ifname)
        .map_err(BridgeError::kernel("reading the container interface"))?
        .filter(|l| l.is("veth"))
        .ok_or_else(|| mismatch(format!("veth {ifname:?} is missing in the container")))?;
    if want.mac.is_some() && want.mac != link.mac.map(|m| format_mac(&m)) {
        return Err(mismatch(format!("{ifname:?} has another MAC than the result says")));
    }
    let peer = host
        .links()
        .map_err(BridgeError::kernel("listing host links"))?
        .into_iter()
        .find(|l| l.is("veth") && Some(l.index) == link.peer_index && l.master == Some(br.index));
    if peer.is_none() {
        return Err(mismatch(format!("no host veth on {:?} is the peer of {ifname:?}", br.name)));
    }

    let addrs = cont.addresses(link.index).map_err(BridgeError::kernel("reading container addresses"))?;
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none_or(|i| i == want_if)) {
        if !addrs.contains(&ip.address) {
            return Err(mismatch(format!("address {} is missing on {ifname:?}", ip.address)));
        }
    }
    for r in &prev.routes {
        let routes = cont
            .routes(!r.dst.addr().is_ipv4(), r.table)
            .map_err(BridgeError::kernel("reading container routes"))?;
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
