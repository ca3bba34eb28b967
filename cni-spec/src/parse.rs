//! Strict parsers for the values CNI configs and environments carry: addresses, prefixes,
//! MACs, interface names, paths. One module, shared by this library and every plugin.
//!
//! "Strict" means the text must be exactly the value: no surrounding whitespace, no
//! trailing newline, no leading zeros, no `+` sign, no NUL, no alternative spellings that
//! only some parsers accept. Each parser returns a [`Invalid`] that says why, so callers can
//! name the field (`Error::invalid_config(field, why)`).
//!
//! ```
//! use cni_spec::parse;
//! assert!(parse::prefix("10.88.200.0/24").is_ok());
//! assert!(parse::prefix("10.88.200.0/24\n").is_err());
//! assert!(parse::prefix("010.088.200.000/24").is_err());
//! assert!(parse::ifname("..").is_err());
//! assert_eq!(parse::mac("0a:58:0a:f4:00:09").unwrap(), [0x0a, 0x58, 0x0a, 0xf4, 0, 9]);
//! ```

use std::fmt;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Why a value was refused (a sentence fragment meant to follow the field's name).
///
/// ```
/// let e = cni_spec::parse::ip("1.2.3").unwrap_err();
/// assert_eq!(e.to_string(), "\"1.2.3\" is not an IP address");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn invalid(s: impl Into<String>) -> Invalid {
    Invalid(s.into())
}

/// The longest file name Linux file systems take (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// The longest path the kernel takes, NUL included (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// The longest interface name (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// An IPv4 or IPv6 address, exactly: dotted quad without leading zeros, or RFC 4291 text.
///
/// ```
/// assert!(cni_spec::parse::ip("2001:db8::1").is_ok());
/// assert!(cni_spec::parse::ip(" 10.0.0.1").is_err());
/// assert!(cni_spec::parse::ip("10.0.0.01").is_err());
/// ```
pub fn ip(s: &str) -> Result<IpAddr, Invalid> {
    // std refuses leading zeros in IPv4 octets, zone ids, whitespace.
    s.parse::<IpAddr>().map_err(|_| invalid(format!("{s:?} is not an IP address")))
}

/// An address with a prefix length (`10.0.0.5/24`, `2001:db8::/64`); the length is plain
/// decimal (no sign, no leading zero) and at most 32 or 128.
///
/// ```
/// assert_eq!(cni_spec::parse::prefix("10.0.0.5/24").unwrap().to_string(), "10.0.0.5/24");
/// assert!(cni_spec::parse::prefix("10.0.0.0/024").is_err());
/// assert!(cni_spec::parse::prefix("10.0.0.0/+24").is_err());
/// assert!(cni_spec::parse::prefix("10.0.0.0/33").is_err());
/// assert!(cni_spec::parse::prefix("10.0.0.0").is_err());
/// ```
pub fn prefix(s: &str) -> Result<IpNet, Invalid> {
    let bad = || invalid(format!("{s:?} is not an address with a prefix length (CIDR)"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr = ip(addr).map_err(|_| bad())?;
    let digits_ok = !len.is_empty()
        && len.len() <= 3
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    if !digits_ok {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    IpNet::new(addr, len).map_err(|_| bad())
}

/// A MAC address: six two-digit hex groups separated by `:` or by `-` (one separator
/// throughout). Case does not matter.
///
/// ```
/// assert!(cni_spec::parse::mac("0A-58-0A-F4-00-09").is_ok());
/// assert!(cni_spec::parse::mac("0a:58-0a:f4:00:09").is_err());
/// assert!(cni_spec::parse::mac("0a:58:0a:f4:00:9").is_err());
/// ```
pub fn mac(s: &str) -> Result<[u8; 6], Invalid> {
    let bad = || invalid(format!("{s:?} is not a MAC address"));
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut out = [0u8; 6];
    for (b, p) in out.iter_mut().zip(parts) {
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A MAC that can be an interface's own address: not multicast (which includes broadcast)
/// and not all zeros.
///
/// ```
/// assert!(cni_spec::parse::unicast_mac("0a:00:00:00:00:01").is_ok());
/// assert!(cni_spec::parse::unicast_mac("01:00:5e:00:00:01").is_err());
/// assert!(cni_spec::parse::unicast_mac("00:00:00:00:00:00").is_err());
/// ```
pub fn unicast_mac(s: &str) -> Result<[u8; 6], Invalid> {
    let m = mac(s)?;
    if m[0] & 1 == 1 {
        return Err(invalid(format!("{s:?} is a multicast address")));
    }
    if m == [0; 6] {
        return Err(invalid(format!("{s:?} is the all-zero address")));
    }
    Ok(m)
}

/// An interface name the kernel takes as it is: 1 to 15 bytes of printable ASCII, not `.`
/// or `..`, without `/`, `:`, `%` (the kernel would treat `%d` as a template and pick
/// another name) or whitespace.
///
/// ```
/// assert!(cni_spec::parse::ifname("eth0").is_ok());
/// assert!(cni_spec::parse::ifname("br\0x").is_err());
/// assert!(cni_spec::parse::ifname("eth%d").is_err());
/// assert!(cni_spec::parse::ifname("ethé").is_err());
/// assert!(cni_spec::parse::ifname("a-very-long-name0").is_err());
/// ```
pub fn ifname(s: &str) -> Result<(), Invalid> {
    let why = if s.is_empty() {
        "is empty"
    } else if s.len() > IFNAME_MAX {
        "is longer than 15 bytes"
    } else if s == "." || s == ".." {
        "must not be . or .."
    } else if s.chars().any(|c| !c.is_ascii_graphic()) {
        "must be printable ASCII without whitespace"
    } else if s.contains(['/', ':', '%']) {
        "must not contain '/', ':' or '%'"
    } else {
        return Ok(());
    };
    Err(invalid(format!("{s:?} {why}")))
}

/// A plugin's binary name (a config's `type`, `ipam.type`): a file name, printable ASCII,
/// not `.` or `..`.
///
/// ```
/// assert!(cni_spec::parse::plugin_name("host-local").is_ok());
/// assert!(cni_spec::parse::plugin_name("../bin/x").is_err());
/// ```
pub fn plugin_name(s: &str) -> Result<(), Invalid> {
    file_name(s)?;
    if s.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!("{s:?} must be printable ASCII without whitespace")));
    }
    Ok(())
}

/// One path component (a directory or file name): not empty, not `.` or `..`, no `/` or
/// NUL, at most 255 bytes.
///
/// ```
/// assert!(cni_spec::parse::file_name("mynet").is_ok());
/// assert!(cni_spec::parse::file_name(&"n".repeat(256)).is_err());
/// ```
pub fn file_name(s: &str) -> Result<(), Invalid> {
    let why = if s.is_empty() {
        "is empty"
    } else if s == "." || s == ".." {
        "must not be . or .."
    } else if s.contains(['/', '\0']) {
        "must not contain '/' or NUL"
    } else if s.len() > NAME_MAX {
        "is longer than a file name may be (255 bytes)"
    } else {
        return Ok(());
    };
    Err(invalid(format!("{} {why}", shorten(s))))
}

/// An absolute path: starts with `/`, no NUL, no `..` component, every component at most
/// 255 bytes and the whole shorter than 4096 bytes.
///
/// ```
/// assert!(cni_spec::parse::abs_path("/var/lib/cni/networks").is_ok());
/// assert!(cni_spec::parse::abs_path("var/lib").is_err());
/// assert!(cni_spec::parse::abs_path("/var/../etc").is_err());
/// ```
pub fn abs_path(s: &str) -> Result<PathBuf, Invalid> {
    let why = if s.is_empty() {
        "is empty"
    } else if !s.starts_with('/') {
        "must be an absolute path"
    } else if s.contains('\0') {
        "must not contain NUL"
    } else if s.len() >= PATH_MAX {
        "is longer than a path may be (4095 bytes)"
    } else if Path::new(s).components().any(|c| c == Component::ParentDir) {
        "must not contain '..'"
    } else if s.split('/').any(|c| c.len() > NAME_MAX) {
        "has a component longer than a file name may be (255 bytes)"
    } else {
        return Ok(PathBuf::from(s));
    };
    Err(invalid(format!("{} {why}", shorten(s))))
}

/// A long value, cut for an error message.
fn shorten(s: &str) -> String {
    if s.len() <= 80 {
        return format!("{s:?}");
    }
    let mut end = 60;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}

/// serde helpers that use the strict parsers: `#[serde(deserialize_with = "...")]`.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct R {
///     #[serde(deserialize_with = "cni_spec::parse::serde_strict::prefix")]
///     dst: ipnet::IpNet,
/// }
/// assert!(serde_json::from_str::<R>(r#"{"dst":"10.0.0.0/8"}"#).is_ok());
/// assert!(serde_json::from_str::<R>(r#"{"dst":"10.0.0.0/08"}"#).is_err());
/// ```
pub mod serde_strict {
    use super::*;

    /// A strict [`prefix`].
    pub fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        super::prefix(&s).map_err(serde::de::Error::custom)
    }

    /// A strict [`ip`].
    pub fn ip<'de, D: Deserializer<'de>>(d: D) -> Result<IpAddr, D::Error> {
        let s = String::deserialize(d)?;
        super::ip(&s).map_err(serde::de::Error::custom)
    }

    /// An optional strict [`ip`] (`null` is absent).
    pub fn opt_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => super::ip(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        for good in ["10.0.0.0/0", "10.0.0.0/32", "2001:db8::/128", "::/0", "10.88.200.0/24"] {
            assert!(prefix(good).is_ok(), "{good}");
        }
        for bad in [
            "10.88.200.0/24\n",
            " 10.88.200.0/24",
            "010.088.200.000/24",
            "10.0.0.0/00",
            "10.0.0.0/-1",
            "10.0.0.0/",
            "/24",
            "10.0.0.0/24/1",
            "2001:db8::/129",
            "10.0.0.0/1000",
            "fe80::1%eth0/64",
        ] {
            assert!(prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_paths() {
        for bad in
            ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "x\u{200b}", "br\0x", "e%d", "0123456789abcdef"]
        {
            assert!(ifname(bad).is_err(), "{bad:?}");
        }
        assert!(ifname("0123456789abcde").is_ok());
        assert!(abs_path("/").is_ok());
        assert!(abs_path(&format!("/{}", "a".repeat(256))).is_err());
        assert!(abs_path(&format!("/{}", "a/".repeat(2100))).is_err());
        assert!(abs_path("/a\0b").is_err());
        assert!(file_name("a\0").is_err());
        assert!(plugin_name("host local").is_err());
    }
}
