//! Addresses on links.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as Rtm};

use crate::error::Result;
use crate::netlink::{Netlink, Request, flags, nl_err};

/// How an address is added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrOptions {
    /// `IFA_F_NODAD`: an IPv6 address usable at once, without duplicate address detection
    /// (it stays `tentative` for a second or more otherwise). The kernel ignores it for IPv4.
    pub no_dad: bool,
}

impl Netlink {
    /// Adds `addr` (address and prefix length) to link `index`. EEXIST is an error here;
    /// [`Netlink::ensure_address`] tolerates it.
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        self.add_address_with(index, addr, AddrOptions::default())
    }

    /// [`Netlink::add_address`] with `options` (see [`AddrOptions`]).
    pub fn add_address_with(&self, index: u32, addr: IpNet, options: AddrOptions) -> Result<()> {
        self.ack(add_request_with(index, addr, options))
            .map_err(nl_err(format!("adding {addr} to link {index}")))
    }

    /// Adds `addr` unless that exact address is already there (concurrent callers race
    /// safely: EEXIST counts as done).
    pub fn ensure_address(&self, index: u32, addr: IpNet) -> Result<()> {
        match self.add_address(index, addr) {
            Err(e) if e.is_exists() => Ok(()),
            other => other,
        }
    }

    /// The addresses on link `index`, with their prefix lengths.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        Ok(self
            .address_messages(index)?
            .iter()
            .filter_map(|m| {
                let ip = address_of(m)?;
                IpNet::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Removes `addr` from link `index`; an address that is not there is not an error.
    pub fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
        for m in self.address_messages(index)? {
            if address_of(&m) == Some(addr.addr()) && m.header.prefix_len == addr.prefix_len() {
                // The kernel's own description of the address identifies it exactly.
                self.ack(Request::new(flags::ACK, Rtm::DelAddress(m)))
                    .map_err(nl_err(format!("removing {addr} from link {index}")))?;
            }
        }
        Ok(())
    }

    /// Every address of link `index` (the kernel dumps all links' addresses; the filter is
    /// here, as it was with rtnetlink).
    fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        let msgs = self.dump(dump_request()).map_err(nl_err(format!("listing addresses of link {index}")))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                Rtm::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .collect())
    }
}

/// `RTM_NEWADDR`, as `ip addr add` builds it: the address as both IFA_LOCAL and
/// IFA_ADDRESS, and an IPv4 broadcast address below /31.
#[cfg(test)]
pub(crate) fn add_request(index: u32, addr: IpNet) -> Request {
    add_request_with(index, addr, AddrOptions::default())
}

/// [`add_request`] with `options`: the flags in the header byte and in IFA_FLAGS, as
/// `ip addr add ... nodad` sends them.
pub(crate) fn add_request_with(index: u32, addr: IpNet, options: AddrOptions) -> Request {
    let mut m = AddressMessage::default();
    if options.no_dad {
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    m.header.index = index;
    m.header.prefix_len = addr.prefix_len();
    match addr.addr() {
        IpAddr::V4(ip) => {
            m.header.family = AddressFamily::Inet;
            if !ip.is_multicast() {
                m.attributes.push(AddressAttribute::Address(ip.into()));
                m.attributes.push(AddressAttribute::Local(ip.into()));
                if addr.prefix_len() < 31 {
                    let brd = u32::from(ip) | (u32::MAX >> addr.prefix_len());
                    m.attributes.push(AddressAttribute::Broadcast(brd.into()));
                }
            }
        }
        IpAddr::V6(ip) => {
            m.header.family = AddressFamily::Inet6;
            if ip.is_multicast() {
                m.attributes.push(AddressAttribute::Multicast(ip));
            } else {
                m.attributes.push(AddressAttribute::Address(ip.into()));
                m.attributes.push(AddressAttribute::Local(ip.into()));
            }
        }
    }
    Request::new(flags::ADD, Rtm::NewAddress(m))
}

/// `RTM_GETADDR` dump of every family.
pub(crate) fn dump_request() -> Request {
    Request::new(flags::DUMP, Rtm::GetAddress(AddressMessage::default()))
}

/// IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on point-to-point links).
fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => return Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    address
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(options: AddrOptions) -> Vec<u8> {
        let mut buf = Vec::new();
        add_request_with(7, "fd00::1/64".parse().unwrap(), options).encode(0, &mut buf);
        buf
    }

    #[test]
    fn no_dad_sets_the_header_flag_and_ifa_flags() {
        // nlmsghdr is 16 bytes; ifaddrmsg's third byte is ifa_flags.
        let (plain, nodad) = (encoded(AddrOptions::default()), encoded(AddrOptions { no_dad: true }));
        assert_eq!(plain[18], 0);
        assert_eq!(nodad[18], 0x02, "IFA_F_NODAD in the header");
        // IFA_FLAGS (type 8) holding 0x02, as a u32 attribute of 8 bytes.
        let attr = [8u8, 0, 8, 0, 2, 0, 0, 0];
        assert!(nodad.windows(8).any(|w| w == attr), "{nodad:02x?}");
        assert!(!plain.windows(8).any(|w| w == attr));
    }
}
