//! Links: read them, and create or change bridges, veth pairs and their ports.

use std::os::fd::{AsFd, AsRawFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage, State,
};
use rtnetlink::{LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use crate::error::{KernelError, Result};
use crate::netlink::{Netlink, nl_err};
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
            peer_index: None,
            peer_netns_id: None,
        };
        for attr in &m.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => link.mac = a.as_slice().try_into().ok(),
                LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
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
        let mut req = std::pin::pin!(self.handle().link().get().match_name(name.to_string()).execute());
        match self.block_on(req.try_next()) {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) => match nl_err(format!("reading link {name:?}"))(e) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The link named `name`, or [`KernelError::NoSuchLink`].
    pub fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)?.ok_or_else(|| KernelError::NoSuchLink(name.to_string()))
    }

    /// The link with `index`, if it exists.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut req = std::pin::pin!(self.handle().link().get().match_index(index).execute());
        match self.block_on(req.try_next()) {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(e) => match nl_err(format!("reading link {index}"))(e) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Every link.
    pub fn links(&self) -> Result<Vec<Link>> {
        let req = self.handle().link().get().execute();
        let msgs: Vec<LinkMessage> = self.block_on(req.try_collect()).map_err(nl_err("listing links"))?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Makes sure a bridge named `spec.name` exists and is up; creating it when missing.
    /// Safe against concurrent callers: EEXIST from a racing creator is fine, as long as
    /// what exists is a bridge.
    pub fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<Link> {
        let mut b = LinkBridge::new(&spec.name);
        if let Some(mtu) = spec.mtu {
            b = b.mtu(mtu);
        }
        if spec.vlan_filtering {
            b = b.vlan_filtering(true);
        }
        match self.block_on(self.handle().link().add(b.build()).execute()) {
            Ok(()) => {}
            Err(e) => {
                let e = nl_err(format!("creating bridge {:?}", spec.name))(e);
                if !e.is_exists() {
                    return Err(e);
                }
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
        let mut peer = LinkUnspec::new_with_name(peer_name);
        if let Some(ns) = peer_ns {
            peer = peer.setns_by_fd(ns.as_fd().as_raw_fd());
        }
        if let Some(mtu) = opts.mtu {
            peer = peer.mtu(mtu);
        }
        if let Some(mac) = opts.peer_mac {
            peer = peer.address(mac.to_vec());
        }
        let mut msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
        if let Some(mtu) = opts.mtu {
            msg = msg.mtu(mtu);
        }
        if let Some(mac) = opts.mac {
            msg = msg.address(mac.to_vec());
        }
        self.block_on(self.handle().link().add(msg.build()).execute())
            .map_err(nl_err(format!("creating veth {name:?} with peer {peer_name:?}")))
    }

    fn set(&self, what: String, msg: LinkMessage) -> Result<()> {
        self.block_on(self.handle().link().set(msg).execute()).map_err(nl_err(what))
    }

    /// Brings a link up.
    pub fn set_up(&self, index: u32) -> Result<()> {
        self.set(format!("setting link {index} up"), LinkUnspec::new_with_index(index).up().build())
    }

    /// Brings a link down.
    pub fn set_down(&self, index: u32) -> Result<()> {
        self.set(format!("setting link {index} down"), LinkUnspec::new_with_index(index).down().build())
    }

    /// Makes a link a port of `master`.
    pub fn set_master(&self, index: u32, master: u32) -> Result<()> {
        self.set(
            format!("attaching link {index} to {master}"),
            LinkUnspec::new_with_index(index).controller(master).build(),
        )
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.set(
            format!("setting the MTU of link {index}"),
            LinkUnspec::new_with_index(index).mtu(mtu).build(),
        )
    }

    /// Sets the hardware address.
    pub fn set_mac(&self, index: u32, mac: Mac) -> Result<()> {
        self.set(
            format!("setting the MAC of link {index}"),
            LinkUnspec::new_with_index(index).address(mac.to_vec()).build(),
        )
    }

    /// Turns promiscuous mode on or off.
    pub fn set_promisc(&self, index: u32, on: bool) -> Result<()> {
        self.set(
            format!("setting promiscuous mode of link {index}"),
            LinkUnspec::new_with_index(index).promiscuous(on).build(),
        )
    }

    /// Sets bridge-port options of a link that is a bridge port.
    pub fn set_bridge_port(&self, index: u32, port: &BridgePortOptions) -> Result<()> {
        let mut opts = Vec::new();
        if let Some(h) = port.hairpin {
            opts.push(InfoBridgePort::HairpinMode(h));
        }
        if let Some(i) = port.isolated {
            opts.push(InfoBridgePort::Isolated(i));
        }
        if opts.is_empty() {
            return Ok(());
        }
        // As `ip link set … type bridge_slave`: RTM_NEWLINK (not SETLINK) with the port kind.
        let msg = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(opts))
            .build();
        self.block_on(self.handle().link().change(msg).execute())
            .map_err(nl_err(format!("setting bridge-port options of link {index}")))
    }

    /// Moves a link into another namespace.
    pub fn move_to(&self, index: u32, ns: &NetNs) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(ns.as_fd().as_raw_fd()).build();
        self.set(format!("moving link {index} to {}", ns.path().display()), msg)
    }

    /// Deletes a link; a link that is already gone is not an error.
    pub fn delete_link(&self, index: u32) -> Result<()> {
        match self.block_on(self.handle().link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("deleting link {index}"))(e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }
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
        use rtnetlink::LinkBridgeVlan;
        use rtnetlink::packet_route::link::BridgeVlanInfoFlags as F;
        let msg = match vlan {
            PortVlan::Access(vid) => LinkBridgeVlan::new(port).vlan(vid, F::Pvid | F::Untagged),
            PortVlan::Trunk(a, b) if a == b => LinkBridgeVlan::new(port).vlan(a, F::empty()),
            PortVlan::Trunk(a, b) => {
                LinkBridgeVlan::new(port).vlan_range_start(a, F::empty()).vlan_range_end(b, F::empty())
            }
        };
        self.block_on(self.handle().link().set(msg.build()).execute())
            .map_err(nl_err(format!("adding VLAN {vlan:?} to port {port}")))
    }

    /// Removes a VLAN from a bridge port (`bridge vlan del`); absent is not an error.
    pub fn bridge_vlan_del(&self, port: u32, vid: u16) -> Result<()> {
        use rtnetlink::LinkBridgeVlan;
        use rtnetlink::packet_route::link::BridgeVlanInfoFlags as F;
        let msg = LinkBridgeVlan::new(port).vlan(vid, F::empty()).build();
        match self.block_on(self.handle().link().del_with_message(msg).execute()) {
            Ok(()) => Ok(()),
            Err(e) => match nl_err(format!("removing VLAN {vid} from port {port}"))(e) {
                e if e.is_not_found() || e.errno() == Some(libc::EINVAL) => Ok(()),
                e => Err(e),
            },
        }
    }
}
