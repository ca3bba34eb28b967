//! nftables through netfilter netlink, without the `nft` binary: transactions
//! ([`Batch`], applied whole or not at all by [`apply`]) of tables, chains, sets, maps,
//! elements and rules, and dumps of set elements and rules to read state back (tags are
//! kept as comments, in the same user data `nft` writes, so `nft list` shows them).
//!
//! Like everything here it acts in the network namespace of the calling thread. The
//! messages are written here (the C libraries that usually do it are GPL); tests compare
//! what the kernel holds afterwards with what `nft` makes of the equivalent script.

mod batch;
pub mod expr;
mod sock;
#[cfg(test)]
mod tests;
mod wire;

pub use batch::{BaseChain, Batch, Element, Family, Hook, KeyType, MapData, SetSpec, interval, set_flags};
pub use expr::{Data, Expr, Verdict};

use self::sock::NfSock;
use self::wire::{Attrs, attr, msg};
use crate::error::{KernelError, Result};
use crate::netlink::NetlinkError;

thread_local! {
    /// The socket of this thread, and the namespace (inode) it was opened in. Kept rather
    /// than closed after each call: releasing an nfnetlink socket waits for the kernel to
    /// free what the last transaction deleted (an RCU grace period, ~10-15 ms here), so the
    /// release is better left to when the thread (or process) ends, after its other work.
    static SOCK: std::cell::RefCell<Option<(u64, NfSock)>> = const { std::cell::RefCell::new(None) };
}

/// The calling thread's network namespace, as the inode of its nsfs file.
fn current_netns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| m.ino())
}

/// Runs `f` on this thread's socket for its current namespace (opened when needed).
fn with_sock<T>(what: &str, f: impl FnOnce(&mut NfSock) -> T) -> Result<T> {
    let ns = current_netns();
    SOCK.with(|cell| {
        let mut slot = cell.borrow_mut();
        let reuse = matches!((&*slot, ns), (Some((ino, _)), Some(cur)) if *ino == cur);
        if !reuse {
            let sock = NfSock::open()
                .map_err(KernelError::io(format!("{what}: opening a netfilter netlink socket")))?;
            // Without a namespace identity the socket is not kept.
            let Some(cur) = ns else {
                let mut sock = sock;
                return Ok(f(&mut sock));
            };
            *slot = Some((cur, sock));
        }
        let (_, sock) = slot.as_mut().expect("set above");
        Ok(f(sock))
    })
}

fn netlink_error(what: String, source: NetlinkError) -> KernelError {
    KernelError::Netlink { what, errno: source.errno(), source }
}

/// Applies `batch` as one transaction; an error names `what` and the object that failed.
pub fn apply(batch: &Batch, what: &str) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    with_sock(what, |sock| sock.apply(batch))?.map_err(|(index, e)| {
        let object = index.and_then(|i| batch.msgs.get(i)).map(|m| m.what.as_str());
        netlink_error(format!("{what}: {}", object.unwrap_or("nftables transaction")), e)
    })
}

/// The elements of a set or map; `None` when it (or its table) does not exist.
pub fn set_elements(family: Family, table: &str, set: &str, what: &str) -> Result<Option<Vec<Element>>> {
    let mut a = Attrs::new();
    a.str(attr::elem_list::TABLE, table).str(attr::elem_list::SET, set);
    let objects = match with_sock(what, |s| s.dump(msg::GETSETELEM, family as u8, &a.buf))? {
        Ok(o) => o,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(netlink_error(format!("{what}: listing {} {table} {set}", family.name()), e)),
    };
    let mut out = Vec::new();
    for o in &objects {
        let Some(list) = wire::find(o, attr::elem_list::ELEMENTS) else { continue };
        out.extend(
            wire::parse(list).filter(|(k, _)| *k == attr::LIST_ELEM).filter_map(|(_, e)| parse_element(e)),
        );
    }
    Ok(Some(out))
}

fn parse_element(e: &[u8]) -> Option<Element> {
    let key = wire::find(wire::find(e, attr::elem::KEY)?, attr::data::VALUE)?.to_vec();
    let key_end =
        wire::find(e, attr::elem::KEY_END).and_then(|k| wire::find(k, attr::data::VALUE)).map(<[u8]>::to_vec);
    let end = wire::find(e, attr::elem::FLAGS).and_then(wire::be_u32).is_some_and(|f| f & 1 != 0);
    let data = wire::find(e, attr::elem::DATA).and_then(|d| {
        if let Some(v) = wire::find(d, attr::data::VALUE) {
            return Some(Data::Value(v.to_vec()));
        }
        let v = wire::find(d, attr::data::VERDICT)?;
        let code = wire::find(v, attr::verdict::CODE).and_then(wire::be_u32)? as i32;
        let chain = wire::find(v, attr::verdict::CHAIN).map(wire::string);
        Verdict::from_code(code, chain).map(Data::Verdict)
    });
    let comment = wire::find(e, attr::elem::USERDATA).and_then(wire::udata::find_comment);
    Some(Element { key, key_end, end, data, comment })
}

/// A rule as listed: its handle and comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub handle: u64,
    pub comment: Option<String>,
}

/// The rules of a chain, in order; `None` when it (or its table) does not exist.
pub fn rules(family: Family, table: &str, chain: &str, what: &str) -> Result<Option<Vec<RuleInfo>>> {
    let mut a = Attrs::new();
    a.str(attr::rule::TABLE, table).str(attr::rule::CHAIN, chain);
    let objects = match with_sock(what, |s| s.dump(msg::GETRULE, family as u8, &a.buf))? {
        Ok(o) => o,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(netlink_error(format!("{what}: listing {} {table} {chain}", family.name()), e)),
    };
    Ok(Some(
        objects
            .iter()
            .filter_map(|o| {
                let handle = wire::find(o, attr::rule::HANDLE).and_then(wire::be_u64)?;
                let comment = wire::find(o, attr::rule::USERDATA).and_then(wire::udata::find_comment);
                Some(RuleInfo { handle, comment })
            })
            .collect(),
    ))
}

/// Whether the table exists.
pub fn table_exists(family: Family, table: &str, what: &str) -> Result<bool> {
    let mut a = Attrs::new();
    a.str(attr::table::NAME, table);
    match with_sock(what, |s| s.dump(msg::GETTABLE, family as u8, &a.buf))? {
        // A dump of tables ignores the name: look for it.
        Ok(objects) => Ok(objects
            .iter()
            .any(|o| wire::find(o, attr::table::NAME).map(wire::string).as_deref() == Some(table))),
        Err(e) => Err(netlink_error(format!("{what}: listing tables"), e)),
    }
}

/// A comment as `nft` would store it from a quoted string ([`crate::nft::quote`]'s
/// characters), refused when longer than `nft` allows.
pub fn comment(text: &str) -> Result<String> {
    let clean: String =
        text.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ').collect();
    if clean.len() > 128 {
        return Err(KernelError::InvalidName {
            name: text.into(),
            why: "longer than an nft comment (128 bytes)",
        });
    }
    Ok(clean)
}

/// The networks an interval set of addresses holds, as prefixes: each start element with
/// the end element after it (none: up to the last address), split into the prefixes that
/// cover exactly that range.
pub fn interval_prefixes(elems: &[Element]) -> Vec<ipnet::IpNet> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let to_u128 = |k: &[u8]| -> Option<(bool, u128)> {
        match k.len() {
            4 => Some((false, u128::from(u32::from_be_bytes(k.try_into().ok()?)))),
            16 => Some((true, u128::from_be_bytes(k.try_into().ok()?))),
            _ => None,
        }
    };
    let mut keyed: Vec<(bool, u128, bool)> =
        elems.iter().filter_map(|e| to_u128(&e.key).map(|(v6, k)| (v6, k, e.end))).collect();
    keyed.sort();
    let mut out = Vec::new();
    for (i, &(v6, start, end)) in keyed.iter().enumerate() {
        if end {
            continue;
        }
        let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let last = keyed[i + 1..]
            .iter()
            .find(|(f, k, e)| *f == v6 && *e && *k > start)
            .map_or(max, |(_, k, _)| k - 1);
        if v6 {
            let (a, b) = (Ipv6Addr::from(start), Ipv6Addr::from(last));
            out.extend(ipnet::Ipv6Subnets::new(a, b, 0).map(ipnet::IpNet::V6));
        } else {
            let (a, b) = (Ipv4Addr::from(start as u32), Ipv4Addr::from(last as u32));
            out.extend(ipnet::Ipv4Subnets::new(a, b, 0).map(ipnet::IpNet::V4));
        }
    }
    out
}
