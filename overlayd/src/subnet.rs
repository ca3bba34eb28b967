//! Lease keys: flannel's `10.5.34.0-24` and `10.5.34.0-24&fd00:12:13::-56`, plus an
//! IPv6-only form `fd00:12:13::-56` (flannel has none; it cannot lease IPv6 alone).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The subnets one lease holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// IPv4 subnet.
    pub ipv4: Option<Ipv4Net>,
    /// IPv6 subnet.
    pub ipv6: Option<Ipv6Net>,
}

/// A key that is not a lease key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{key:?} is not a subnet key ({why})")]
pub struct KeyError {
    key: String,
    why: &'static str,
}

impl SubnetKey {
    /// Parses the last path element of a lease key. Strict: the address must be the
    /// subnet's network address, as flannel writes it.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let bad = |why| KeyError { key: s.chars().take(200).collect(), why };
        let (first, second) = match s.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let (ip, len) = first.rsplit_once('-').ok_or(bad("no '-'"))?;
        let len: u8 = parse_len(len).ok_or(bad("bad prefix length"))?;
        let mut key = SubnetKey { ipv4: None, ipv6: None };
        if let Ok(a) = ip.parse::<Ipv4Addr>() {
            let n = Ipv4Net::new(a, len).map_err(|_| bad("bad prefix length"))?;
            if n.trunc() != n {
                return Err(bad("host bits set"));
            }
            key.ipv4 = Some(n);
        } else if second.is_none() {
            key.ipv6 = Some(parse_v6(ip, len).map_err(bad)?);
            return Ok(key);
        } else {
            return Err(bad("bad IPv4 address"));
        }
        if let Some(second) = second {
            let (ip, len) = second.rsplit_once('-').ok_or(bad("no '-' in IPv6 part"))?;
            let len = parse_len(len).ok_or(bad("bad IPv6 prefix length"))?;
            key.ipv6 = Some(parse_v6(ip, len).map_err(bad)?);
        }
        Ok(key)
    }

    /// Whether any subnet of `self` overlaps one of `other`.
    pub fn overlaps(&self, other: &SubnetKey) -> bool {
        let v4 = match (self.ipv4, other.ipv4) {
            (Some(a), Some(b)) => a.contains(&b.network()) || b.contains(&a.network()),
            _ => false,
        };
        let v6 = match (self.ipv6, other.ipv6) {
            (Some(a), Some(b)) => a.contains(&b.network()) || b.contains(&a.network()),
            _ => false,
        };
        v4 || v6
    }

    /// The subnets as generic networks.
    pub fn nets(&self) -> impl Iterator<Item = IpNet> {
        self.ipv4.map(IpNet::V4).into_iter().chain(self.ipv6.map(IpNet::V6))
    }
}

fn parse_len(s: &str) -> Option<u8> {
    // No signs, no leading zeros beyond "0": the key must be canonical.
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v6(ip: &str, len: u8) -> Result<Ipv6Net, &'static str> {
    let a: Ipv6Addr = ip.parse().map_err(|_| "bad IPv6 address")?;
    let n = Ipv6Net::new(a, len).map_err(|_| "bad IPv6 prefix length")?;
    if n.trunc() != n {
        return Err("IPv6 host bits set");
    }
    Ok(n)
}

/// Serialized as its key form (`10.5.3.0-24`), as the API shows it.
impl serde::Serialize for SubnetKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for SubnetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ipv4, self.ipv6) {
            (Some(a), Some(b)) => {
                write!(f, "{}-{}&{}-{}", a.addr(), a.prefix_len(), b.addr(), b.prefix_len())
            }
            (Some(a), None) => write!(f, "{}-{}", a.addr(), a.prefix_len()),
            (None, Some(b)) => write!(f, "{}-{}", b.addr(), b.prefix_len()),
            (None, None) => f.write_str("(empty)"),
        }
    }
}

/// Where things live under the prefix.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// `prefix` like `/coreos.com/network` (a trailing `/` is dropped).
    pub fn new(prefix: &str) -> Self {
        KeyLayout { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// `<prefix>/config`.
    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    /// `<prefix>/subnets/` (with the slash, so `<prefix>/subnetsX` is not included).
    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// The key of one lease.
    pub fn lease(&self, k: &SubnetKey) -> String {
        format!("{}{k}", self.subnets())
    }

    /// The subnet key of a full store key, if it is under `subnets/` and well formed.
    pub fn parse_lease(&self, key: &str) -> Result<SubnetKey, KeyError> {
        let rest = key
            .strip_prefix(&self.subnets())
            .ok_or(KeyError { key: key.chars().take(200).collect(), why: "not under the subnets prefix" })?;
        let parsed = SubnetKey::parse(rest)?;
        // One subnet, one key: `10.5.3.0-024` or a longer spelling of an IPv6 address would
        // be a second key for the same subnet.
        if parsed.to_string() != rest {
            return Err(KeyError { key: key.chars().take(200).collect(), why: "not in canonical form" });
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_test_vectors_round_trip() {
        // pkg/subnet/subnet_test.go
        for s in ["10.5.34.0-24", "10.5.34.0-24&fd00:12:13::-56", "fd00:12:13::-56"] {
            let k = SubnetKey::parse(s).unwrap();
            assert_eq!(k.to_string(), s);
        }
        let k = SubnetKey::parse("10.5.34.0-24&fd00:12:13::-56").unwrap();
        assert_eq!(k.ipv4.unwrap().to_string(), "10.5.34.0/24");
        assert_eq!(k.ipv6.unwrap().to_string(), "fd00:12:13::/56");
    }

    #[test]
    fn rejects_malformed_keys() {
        for s in [
            "",
            "10.5.34.0",
            "10.5.34.1-24",
            "10.5.34.0-33",
            "10.5.34.0-+24",
            "10.5.34.0-024x",
            "10.5.34-24",
            "10.5.34.0-24&",
            "10.5.34.0-24&fd00::1-56",
            "fd00::-129",
            "../../etc-24",
            "10.5.34.0-24&10.6.0.0-16",
        ] {
            assert!(SubnetKey::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn a_lease_key_is_canonical_or_refused() {
        let l = KeyLayout::new("/p");
        assert!(l.parse_lease("/p/subnets/10.5.34.0-24").is_ok());
        assert!(l.parse_lease("/p/subnets/10.5.34.0-24&fd00:12:13::-56").is_ok());
        for other_spelling in [
            "/p/subnets/10.5.34.0-024",
            "/p/subnets/10.5.34.0-24&fd00:12:13:0::-56",
            "/p/subnets/fd00:0::-64",
        ] {
            let e = l.parse_lease(other_spelling).unwrap_err();
            assert!(e.to_string().contains("canonical"), "{other_spelling}: {e}");
        }
    }

    #[test]
    fn overlap() {
        let a = SubnetKey::parse("10.5.34.0-24").unwrap();
        let b = SubnetKey::parse("10.5.34.0-23").unwrap();
        let c = SubnetKey::parse("10.5.35.0-24").unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(b.overlaps(&c));
    }

    #[test]
    fn layout() {
        let l = KeyLayout::new("/coreos.com/network/");
        assert_eq!(l.config(), "/coreos.com/network/config");
        let k = SubnetKey::parse("10.1.2.0-24").unwrap();
        assert_eq!(l.lease(&k), "/coreos.com/network/subnets/10.1.2.0-24");
        assert_eq!(l.parse_lease(&l.lease(&k)).unwrap(), k);
        assert!(l.parse_lease("/coreos.com/network/config").is_err());
    }
}
