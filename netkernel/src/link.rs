//! Links: read them, and create or change bridges, veth pairs and their ports.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as Rtm;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeVlanInfo, BridgeVlanInfoFlags, InfoBridge, InfoBridgePort, InfoData, InfoKind,
    InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, State,
};

use crate::error::{KernelError, Result};
use crate::netlink::{Netlink, NetlinkError, Request, flags, nl_err};
use crate::netns::NetNs;

/// A MAC address.
pub type Mac = [u8; 6];

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
///
/// ```
/// assert_eq!(netkernel::link::format_mac(&[0x0e, 0, 0xab, 1, 2, 3]), "0e:00:ab:01:02:03");
/// ```
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
///
/// ```
/// assert_eq!(netkernel::link::parse_mac("0E-00-ab-01-02-03"), Some([0x0e, 0, 0xab, 1, 2, 3]));
/// assert_eq!(netkernel::link::parse_mac("0e:00"), None);
/// ```
pub fn parse_mac(s: &str) -> Option<Mac> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// What the kernel says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind (`bridge`, `veth`, `vxlan`, …), if it has one.
    pub kind: Option<String>,
    /// Hardware address.
    pub mac: Option<Mac>,
    /// MTU.
    pub mtu: u32,
    /// Index of the bridge (or other controller) it is a port of.
    pub master: Option<u32>,
    /// Administratively up.
    pub up: bool,
    /// Operationally up.
    pub oper_up: bool,
    /// Promiscuous mode requested on the link itself.
    pub promisc: bool,
    /// All-multicast mode requested on the link itself.
    pub allmulti: bool,
    /// Transmit queue length.
    pub txqlen: u32,
    /// For a veth, the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    /// For a veth whose peer is in another namespace, that namespace's id.
    pub peer_netns_id: Option<i32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Link {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            oper_up: false,
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            allmulti: m.header.flags.contains(LinkFlags::Allmulti),
            txqlen: 0,
            peer_index: None,
            peer_netns_id: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
                LinkAttribute::TxQueueLen(q) => link.txqlen = *q,
                LinkAttribute::Controller(c) => link.master = Some(*c),
                LinkAttribute::OperState(s) => link.oper_up = matches!(s, State::Up | State::Unknown),
                LinkAttribute::Link(l) => link.peer_index = Some(*l),
                LinkAttribute::LinkNetNsId(id) => link.peer_netns_id = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind_name(kind));
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// Whether it is of `kind`.
    pub fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Tun => "tun".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What a bridge should look like when it is created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Name.
    pub name: String,
    /// MTU at creation.
    pub mtu: Option<u32>,
    /// Enable VLAN filtering.
    pub vlan_filtering: bool,
}

impl Netlink {
    /// The link named `name`, if it exists.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let m = self.get_link(get_by_name_request(name)).map_err(nl_err(format!("reading link {name:?}")));
        Ok(not_found_is_none(m)?.as_ref().map(Link::from_message))
    }

    /// The link named `name`, or [`KernelError::NoSuchLink`].
    pub fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| KernelError::NoSuchLink(name.to_string()))
    }

    /// The link with `index`, if it exists.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let m = self.get_link(get_by_index_request(index)).map_err(nl_err(format!("reading link {index}")));
        Ok(not_found_is_none(m)?.as_ref().map(Link::from_message))
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>> {
        let msgs = self.dump(dump_request()).map_err(nl_err("listing links"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                Rtm::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// One link's message (`RTM_GETLINK` without a dump).
    pub(crate) fn get_link(&self, req: Request) -> std::result::Result<LinkMessage, NetlinkError> {
        match self.get(req)? {
            Rtm::NewLink(m) => Ok(m),
            other => Err(NetlinkError::Protocol(format!("RTM_GETLINK answered with {other:?}"))),
        }
    }

    /// Makes sure a bridge named `spec.name` exists and is up; creating it when missing.
    /// Safe against concurrent callers: EEXIST from a racing creator is fine, as long as
    /// what exists is a bridge.
    pub fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<Link> {
        if let Err(e) = self.ack(bridge_request(spec)) {
            let e = nl_err(format!("creating bridge {:?}", spec.name))(e);
            if !e.is_exists() {
                return Err(e);
            }
        }
        let link = self.require_link(&spec.name)?;
        if !link.is("bridge") {
            return Err(KernelError::WrongKind {
                name: spec.name.clone(),
                wanted: "bridge",
                found: link.kind.unwrap_or_else(|| "link without a kind".into()),
            });
        }
        if !link.up {
            self.set_up(link.index)?;
        }
        self.require_link(&spec.name)
    }

    /// Creates a veth pair: `name` here, and `peer_name` in `peer_ns` (or here when `None`).
    /// The peer is born in its namespace, so its name never clashes with ours.
    pub fn add_veth(
        &self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&NetNs>,
        opts: &VethOptions,
    ) -> Result<()> {
        let fd = peer_ns.map(|ns| ns.as_fd().as_raw_fd());
        self.ack(veth_request(name, peer_name, fd, opts))
            .map_err(nl_err(format!("creating veth {name:?} with peer {peer_name:?}")))
    }

    fn set(&self, what: String, msg: LinkMessage) -> Result<()> {
        self.ack(set_request(msg)).map_err(nl_err(what))
    }

    /// Brings a link up.
    pub fn set_up(&self, index: u32) -> Result<()> {
        self.set(format!("setting link {index} up"), with_flag(index, LinkFlags::Up, true))
    }

    /// Brings a link down.
    pub fn set_down(&self, index: u32) -> Result<()> {
        self.set(format!("setting link {index} down"), with_flag(index, LinkFlags::Up, false))
    }

    /// Makes a link a port of `master`.
    pub fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.set(
            format!("attaching link {index} to {master}"),
            with_attribute(index, LinkAttribute::Controller(master)),
        )
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(format!("setting the MTU of link {index}"), with_attribute(index, LinkAttribute::Mtu(mtu)))
    }

    /// Sets the hardware address.
    pub fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        self.set(
            format!("setting the MAC of link {index}"),
            with_attribute(index, LinkAttribute::Address(mac.to_vec())),
        )
    }

    /// Turns promiscuous mode on or off.
    pub fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        self.set(
            format!("setting promiscuous mode of link {index}"),
            with_flag(index, LinkFlags::Promisc, on),
        )
    }

    /// Turns all-multicast mode on or off.
    pub fn set_allmulti(&self, index: u32, on: bool) -> Result<()> {
        self.set(
            format!("setting all-multicast mode of link {index}"),
            with_flag(index, LinkFlags::Allmulti, on),
        )
    }

    /// Sets the transmit queue length.
    pub fn set_txqlen(&self, index: u32, len: u32) -> Result<()> {
        self.set(
            format!("setting the transmit queue length of link {index}"),
            with_attribute(index, LinkAttribute::TxQueueLen(len)),
        )
    }

    /// Sets bridge-port options of a link that is a bridge port.
    pub fn set_bridge_port(&self, index: u32, port: &BridgePortOptions) -> Result<()> {
        let Some(req) = bridge_port_request(index, port) else {
            return Ok(());
        };
        self.ack(req).map_err(nl_err(format!("setting bridge-port options of link {index}")))
    }

    /// Moves a link into another namespace.
    pub fn move_to(&self, index: u32, ns: &NetNs) -> Result<()> {
        let msg = with_attribute(index, LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        self.set(format!("moving link {index} to {}", ns.path().display()), msg)
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub fn delete_link(&self, index: u32) -> Result<()> {
        match self.ack(delete_request(index)) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("deleting link {index}"))(e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }
}

/// A "does not exist" answer to a read is `None`.
fn not_found_is_none<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// `RTM_GETLINK` for the link named `name`.
pub(crate) fn get_by_name_request(name: &str) -> Request {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    Request::new(flags::GET, Rtm::GetLink(m))
}

/// `RTM_GETLINK` for the link with `index`.
pub(crate) fn get_by_index_request(index: u32) -> Request {
    Request::new(flags::GET, Rtm::GetLink(by_index(index)))
}

/// `RTM_GETLINK` dump of every link.
pub(crate) fn dump_request() -> Request {
    Request::new(flags::DUMP, Rtm::GetLink(LinkMessage::default()))
}

fn by_index(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

/// An `RTM_SETLINK` of link `index` that sets (or clears) one `IFF_*` flag.
pub(crate) fn with_flag(index: u32, flag: LinkFlags, on: bool) -> LinkMessage {
    let mut m = by_index(index);
    m.header.flags.set(flag, on);
    m.header.change_mask |= flag;
    m
}

/// An `RTM_SETLINK` of link `index` that sets one attribute.
pub(crate) fn with_attribute(index: u32, attr: LinkAttribute) -> LinkMessage {
    let mut m = by_index(index);
    m.attributes.push(attr);
    m
}

/// `RTM_SETLINK` with the flags rtnetlink gave it.
pub(crate) fn set_request(msg: LinkMessage) -> Request {
    Request::new(flags::SET, Rtm::SetLink(msg))
}

/// `RTM_DELLINK` of link `index`.
pub(crate) fn delete_request(index: u32) -> Request {
    Request::new(flags::ACK, Rtm::DelLink(by_index(index)))
}

/// `RTM_NEWLINK` of a new link: administratively up when `up`, with `attrs` then its kind
/// and kind-specific data (the order `ip link add` uses too).
pub(crate) fn new_link(
    up: bool,
    attrs: Vec<LinkAttribute>,
    kind: InfoKind,
    data: Option<InfoData>,
) -> LinkMessage {
    let mut m = LinkMessage::default();
    if up {
        m.header.flags |= LinkFlags::Up;
        m.header.change_mask |= LinkFlags::Up;
    }
    m.attributes = attrs;
    let mut info = vec![LinkInfo::Kind(kind)];
    info.extend(data.map(LinkInfo::Data));
    m.attributes.push(LinkAttribute::LinkInfo(info));
    m
}

/// Creating a bridge, up from the start.
pub(crate) fn bridge_request(spec: &BridgeSpec) -> Request {
    let mut attrs = vec![LinkAttribute::IfName(spec.name.clone())];
    attrs.extend(spec.mtu.map(LinkAttribute::Mtu));
    let data = spec.vlan_filtering.then(|| InfoData::Bridge(vec![InfoBridge::VlanFiltering(true)]));
    Request::new(flags::ADD, Rtm::NewLink(new_link(true, attrs, InfoKind::Bridge, data)))
}

/// Creating a veth pair; `peer_ns` is an open namespace file for the peer's namespace.
pub(crate) fn veth_request(
    name: &str,
    peer_name: &str,
    peer_ns: Option<RawFd>,
    opts: &VethOptions,
) -> Request {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(peer_name.to_string()));
    peer.attributes.extend(peer_ns.map(LinkAttribute::NetNsFd));
    peer.attributes.extend(opts.mtu.map(LinkAttribute::Mtu));
    peer.attributes.extend(opts.peer_mac.map(|m| LinkAttribute::Address(m.to_vec())));
    let mut attrs = vec![LinkAttribute::IfName(name.to_string())];
    attrs.extend(opts.mtu.map(LinkAttribute::Mtu));
    attrs.extend(opts.mac.map(|m| LinkAttribute::Address(m.to_vec())));
    let data = InfoData::Veth(InfoVeth::Peer(peer));
    Request::new(flags::ADD, Rtm::NewLink(new_link(false, attrs, InfoKind::Veth, Some(data))))
}

/// Bridge-port options, as `ip link set … type bridge_slave`: `RTM_NEWLINK` (not SETLINK)
/// with the port kind, without the create flags. `None` when there is nothing to set.
pub(crate) fn bridge_port_request(index: u32, port: &BridgePortOptions) -> Option<Request> {
    let mut opts = Vec::new();
    opts.extend(port.hairpin.map(InfoBridgePort::HairpinMode));
    opts.extend(port.isolated.map(InfoBridgePort::Isolated));
    if opts.is_empty() {
        return None;
    }
    let info =
        vec![LinkInfo::PortKind(InfoPortKind::Bridge), LinkInfo::PortData(InfoPortData::BridgePort(opts))];
    Some(Request::new(flags::ACK, Rtm::NewLink(with_attribute(index, LinkAttribute::LinkInfo(info)))))
}

/// Options of a new veth pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VethOptions {
    /// MTU of both ends.
    pub mtu: Option<u32>,
    /// MAC of the local end.
    pub mac: Option<Mac>,
    /// MAC of the peer.
    pub peer_mac: Option<Mac>,
}

/// Bridge-port options; `None` leaves one as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgePortOptions {
    /// Hairpin mode (reflect frames back out of the port they came in).
    pub hairpin: Option<bool>,
    /// Port isolation.
    pub isolated: Option<bool>,
}

/// A VLAN on a bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortVlan {
    /// The port's access VLAN: PVID and untagged.
    Access(u16),
    /// Tagged VLANs `first..=last`.
    Trunk(u16, u16),
}

impl Netlink {
    /// Adds a VLAN (or a range) to a bridge port (`bridge vlan add`).
    pub fn bridge_vlan_add(&self, port: u32, vlan: PortVlan) -> Result<()> {
        self.ack(set_request(vlan_message(port, vlan)))
            .map_err(nl_err(format!("adding VLAN {vlan:?} to port {port}")))
    }

    /// Removes a VLAN from a bridge port (`bridge vlan del`); absent is not an error.
    pub fn bridge_vlan_del(&self, port: u32, vid: u16) -> Result<()> {
        match self.ack(vlan_del_request(port, vid)) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("removing VLAN {vid} from port {port}"))(e) {
                e if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Ok(()),
                e => Err(e),
            },
        }
    }
}

/// An AF_BRIDGE link message of `port` with VLAN entries (`IFLA_AF_SPEC`), as `bridge vlan`
/// sends it: a range is a begin and an end entry.
pub(crate) fn vlan_message(port: u32, vlan: PortVlan) -> LinkMessage {
    use BridgeVlanInfoFlags as F;
    let entries = match vlan {
        PortVlan::Access(vid) => vec![(vid, F::Pvid | F::Untagged)],
        PortVlan::Trunk(a, b) if a == b => vec![(a, F::empty())],
        PortVlan::Trunk(a, b) => vec![(a, F::RangeBegin), (b, F::RangeEnd)],
    };
    let mut m = by_index(port);
    m.header.interface_family = AddressFamily::Bridge;
    let spec = entries
        .into_iter()
        .map(|(vid, flags)| AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }))
        .collect();
    m.attributes.push(LinkAttribute::AfSpecBridge(spec));
    m
}

/// Removing VLAN `vid` from `port`: `RTM_DELLINK` of the AF_BRIDGE message.
pub(crate) fn vlan_del_request(port: u32, vid: u16) -> Request {
    Request::new(flags::ACK, Rtm::DelLink(vlan_message(port, PortVlan::Trunk(vid, vid))))
}
