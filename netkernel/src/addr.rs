//! Addresses on links.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

use crate::error::Result;
use crate::netlink::{Netlink, nl_err};

impl Netlink {
    /// Adds `addr` (address and prefix length) to link `index`. EEXIST is an error here;
    /// [`Netlink::ensure_address`] tolerates it.
    pub fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let req = self.handle().address().add(index, addr.addr(), addr.prefix_len());
        self.block_on(req.execute()).map_err(nl_err(format!("adding {addr} to link {index}")))
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
        let req = self.handle().address().get().set_link_index_filter(index).execute();
        let msgs: Vec<AddressMessage> =
            self.block_on(req.try_collect()).map_err(nl_err(format!("listing addresses of link {index}")))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let ip = address_of(m)?;
                IpNet::new(ip, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Removes `addr` from link `index`; an address that is not there is not an error.
    pub fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let req = self.handle().address().get().set_link_index_filter(index).execute();
        let msgs: Vec<AddressMessage> =
            self.block_on(req.try_collect()).map_err(nl_err(format!("listing addresses of link {index}")))?;
        for m in msgs {
            if m.header.index == index
                && address_of(&m) == Some(addr.addr())
                && m.header.prefix_len == addr.prefix_len()
            {
                self.block_on(self.handle().address().del(m).execute())
                    .map_err(nl_err(format!("removing {addr} from link {index}")))?;
            }
        }
        Ok(())
    }
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
