//! Address ranges and range sets: the reference's defaults (`range.go`) and validations,
//! with every error naming the config field it comes from.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::error::HostLocalError;

/// An address as a number, for arithmetic and ordering within one family.
pub fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of family `v4` with value `n` (`n` must fit the family).
pub fn from_num(n: u128, v4: bool) -> IpAddr {
    if v4 { IpAddr::V4(Ipv4Addr::from(n as u32)) } else { IpAddr::V6(Ipv6Addr::from(n)) }
}

/// One range as written in the config: every field still a string, plus where it came from
/// (e.g. `ipam.ranges[0][1]`, or `ipam` for the legacy top-level fields).
#[derive(Debug, Clone, Default)]
pub struct RangeSpec {
    pub path: String,
    pub subnet: Option<String>,
    pub range_start: Option<String>,
    pub range_end: Option<String>,
    pub gateway: Option<String>,
}

/// A validated range with the reference's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The network (host bits clear).
    pub subnet: IpNet,
    /// First address to lease (inclusive).
    pub start: IpAddr,
    /// Last address to lease (inclusive).
    pub end: IpAddr,
    /// The gateway, never leased.
    pub gateway: IpAddr,
}

/// Parses an address; an IPv4-mapped IPv6 address counts as IPv4, as Go's `To4` does.
fn parse_ip(s: &str, field: &str) -> Result<IpAddr, HostLocalError> {
    cni_spec::parse::ip(s)
        .map(|ip| ip.to_canonical())
        .map_err(|_| HostLocalError::config(field, format!("invalid IP address {s:?}")))
}

impl Range {
    /// Validates a range and fills in the defaults: the gateway is the network address plus
    /// one, so is the start (the iterator skips the gateway), and the end is the broadcast
    /// address minus one (IPv4) or the last address (IPv6).
    pub fn new(spec: &RangeSpec) -> Result<Range, HostLocalError> {
        let field = |name: &str| format!("{}.{name}", spec.path);
        let text =
            spec.subnet.as_deref().ok_or_else(|| HostLocalError::config(field("subnet"), "missing"))?;
        let subnet: IpNet = cni_spec::parse::prefix(text)
            .map_err(|_| HostLocalError::config(field("subnet"), format!("invalid CIDR address {text:?}")))?;
        if let IpNet::V6(n) = subnet
            && n.addr().to_ipv4_mapped().is_some()
        {
            // Go turns such a subnet into IPv4 with a 128-bit mask and then rejects it.
            return Err(HostLocalError::config(
                field("subnet"),
                format!("{subnet}: IPv4-mapped IPv6 subnets are not supported"),
            ));
        }
        if subnet.addr() != subnet.network() {
            return Err(HostLocalError::config(
                field("subnet"),
                format!(
                    "Network has host bits set. For a subnet mask of length {} the network address is {}",
                    subnet.prefix_len(),
                    subnet.network()
                ),
            ));
        }
        if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
            return Err(HostLocalError::config(
                field("subnet"),
                format!("Network {subnet} too small to allocate from"),
            ));
        }

        let v4 = subnet.addr().is_ipv4();
        let network = to_num(subnet.network());
        let broadcast = to_num(subnet.broadcast());
        let in_subnet = |ip: IpAddr| ip.is_ipv4() == v4 && subnet.contains(&ip);
        // An IPv4 network or broadcast address is never a usable host address.
        let usable = |ip: IpAddr| !v4 || (to_num(ip) != network && to_num(ip) != broadcast);

        let gateway = match spec.gateway.as_deref() {
            None => from_num(network + 1, v4),
            Some(s) => {
                let gw = parse_ip(s, &field("gateway"))?;
                if !in_subnet(gw) {
                    return Err(HostLocalError::config(
                        field("gateway"),
                        format!("gateway {gw} not in network {subnet}"),
                    ));
                }
                gw
            }
        };

        let bound = |name: &str, value: Option<&str>, default: u128| -> Result<IpAddr, HostLocalError> {
            let Some(s) = value else { return Ok(from_num(default, v4)) };
            let ip = parse_ip(s, &field(name))?;
            if !in_subnet(ip) {
                return Err(HostLocalError::config(field(name), format!("{ip} not in network {subnet}")));
            }
            if !usable(ip) {
                return Err(HostLocalError::config(
                    field(name),
                    format!("{ip} is the network or broadcast address of {subnet}"),
                ));
            }
            Ok(ip)
        };
        let start = bound("rangeStart", spec.range_start.as_deref(), network + 1)?;
        let end = bound("rangeEnd", spec.range_end.as_deref(), if v4 { broadcast - 1 } else { broadcast })?;
        if to_num(start) > to_num(end) {
            let name = if spec.range_end.is_some() { "rangeEnd" } else { "rangeStart" };
            return Err(HostLocalError::config(
                field(name),
                format!("range start {start} is after range end {end}"),
            ));
        }
        Ok(Range { subnet, start, end, gateway })
    }

    /// Whether this is an IPv4 range.
    pub fn is_v4(&self) -> bool {
        self.subnet.addr().is_ipv4()
    }

    /// Whether `ip` may be leased from this range: same family, between start and end
    /// (the gateway included, as in the reference's `Contains`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_v4() && (to_num(self.start)..=to_num(self.end)).contains(&to_num(ip))
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Range) -> bool {
        self.is_v4() == other.is_v4()
            && to_num(self.start).max(to_num(other.start)) <= to_num(self.end).min(to_num(other.end))
    }

    /// How many addresses this range can lease (saturating for huge IPv6 ranges).
    pub fn capacity(&self) -> u128 {
        let n = (to_num(self.end) - to_num(self.start)).saturating_add(1);
        if self.contains(self.gateway) { n - 1 } else { n }
    }
}

impl fmt::Display for Range {
    /// `start-end`, as the reference prints ranges in its errors.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Two of `ranges` (family, first, last) that share an address, as (earlier, later) by
/// position; `None` if they are disjoint. A sort and one sweep: configs with many ranges
/// are checked in n log n, not n².
pub fn first_overlap(ranges: impl Iterator<Item = (bool, u128, u128)>) -> Option<(usize, usize)> {
    let mut items: Vec<(bool, u128, u128, usize)> =
        ranges.enumerate().map(|(i, (v4, a, b))| (v4, a, b, i)).collect();
    items.sort_unstable();
    let mut widest: Option<(bool, u128, usize)> = None;
    for (v4, start, end, i) in items {
        match widest {
            Some((fam, reach, j)) if fam == v4 && start <= reach => return Some((i.min(j), i.max(j))),
            // Sorted by start: a range that starts past the reach also reaches further.
            _ => widest = Some((v4, end, i)),
        }
    }
    None
}

/// A range set: disjoint ranges of one family; each set gives an attachment one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// The ranges, in config order (the iterator walks them in this order).
    pub ranges: Vec<Range>,
    /// Where the set came from in the config, for error messages.
    pub path: String,
}

impl RangeSet {
    /// Validates a set: not empty, every range valid, one family, no overlaps.
    pub fn new(path: &str, specs: &[RangeSpec]) -> Result<RangeSet, HostLocalError> {
        if specs.is_empty() {
            return Err(HostLocalError::config(path, "empty range set"));
        }
        let mut ranges: Vec<Range> = Vec::with_capacity(specs.len());
        for spec in specs {
            let r = Range::new(spec)?;
            if let Some(first) = ranges.first()
                && first.is_v4() != r.is_v4()
            {
                return Err(HostLocalError::config(
                    &spec.path,
                    format!("mixed address families in one range set: {} and {}", first.subnet, r.subnet),
                ));
            }
            ranges.push(r);
        }
        if let Some((i, j)) =
            first_overlap(ranges.iter().map(|r| (r.is_v4(), to_num(r.start), to_num(r.end))))
        {
            return Err(HostLocalError::config(
                &specs[j].path,
                format!("subnets {} and {} overlap", ranges[i], ranges[j]),
            ));
        }
        Ok(RangeSet { ranges, path: path.to_string() })
    }

    /// Whether the set is IPv4.
    pub fn is_v4(&self) -> bool {
        self.ranges[0].is_v4()
    }

    /// The range `ip` may be leased from, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// Whether some range of the set contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// Whether any range of the two sets overlap.
    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges.iter().any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    /// How many addresses of the set are free, given every leased address.
    pub fn free(&self, leased: &HashSet<IpAddr>) -> u128 {
        let capacity = self.ranges.iter().fold(0u128, |n, r| n.saturating_add(r.capacity()));
        let used = leased.iter().filter(|ip| self.range_for(**ip).is_some_and(|r| r.gateway != **ip)).count()
            as u128;
        capacity.saturating_sub(used)
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn spec(subnet: &str) -> RangeSpec {
        RangeSpec { path: "r".into(), subnet: Some(subnet.into()), ..Default::default() }
    }

    pub fn range(subnet: &str) -> Range {
        Range::new(&spec(subnet)).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn err(spec: RangeSpec) -> String {
        Range::new(&spec).unwrap_err().to_string()
    }

    #[test]
    fn defaults_ipv4_24() {
        let r = range("192.0.2.0/24");
        assert_eq!((r.start, r.end, r.gateway), (ip("192.0.2.1"), ip("192.0.2.254"), ip("192.0.2.1")));
        assert_eq!(r.to_string(), "192.0.2.1-192.0.2.254");
        assert_eq!(r.capacity(), 253);
    }

    #[test]
    fn defaults_ipv4_25() {
        let r = range("192.0.2.0/25");
        assert_eq!((r.start, r.end, r.gateway), (ip("192.0.2.1"), ip("192.0.2.126"), ip("192.0.2.1")));
    }

    #[test]
    fn defaults_ipv6() {
        let r = range("2001:DB8:1::/64");
        assert_eq!(r.subnet.to_string(), "2001:db8:1::/64");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("2001:db8:1::1"), ip("2001:db8:1::ffff:ffff:ffff:ffff"), ip("2001:db8:1::1"))
        );
    }

    #[test]
    fn all_fields_parsed() {
        let r = Range::new(&RangeSpec {
            range_start: Some("192.0.2.40".into()),
            range_end: Some("192.0.2.50".into()),
            gateway: Some("192.0.2.254".into()),
            ..spec("192.0.2.0/24")
        })
        .unwrap();
        assert_eq!((r.start, r.end, r.gateway), (ip("192.0.2.40"), ip("192.0.2.50"), ip("192.0.2.254")));
        assert!(!r.contains(ip("192.0.3.0")));
        assert!(!r.contains(ip("192.0.2.39")));
        assert!(r.contains(ip("192.0.2.40")) && r.contains(ip("192.0.2.50")));
        assert!(!r.contains(ip("192.0.2.51")));
        assert!(!r.contains(ip("::1")));
        // An IPv4-mapped IPv6 address is IPv4 here, as in Go.
        let r =
            Range::new(&RangeSpec { range_start: Some("::ffff:192.0.2.9".into()), ..spec("192.0.2.0/24") })
                .unwrap();
        assert_eq!(r.start, ip("192.0.2.9"));
    }

    #[test]
    fn v6_contains() {
        let r = Range::new(&RangeSpec {
            range_start: Some("2001:db8:1::40".into()),
            range_end: Some("2001:db8:1::50".into()),
            ..spec("2001:DB8:1::/64")
        })
        .unwrap();
        assert!(!r.contains(ip("2001:db8:2::")));
        assert!(!r.contains(ip("2001:db8:1::39")));
        assert!(r.contains(ip("2001:db8:1::40")) && r.contains(ip("2001:db8:1::50")));
        assert!(!r.contains(ip("2001:db8:1::51")));
    }

    #[test]
    fn rejections_name_the_field() {
        assert_eq!(
            err(spec("192.0.2.12/24")),
            "invalid network config: r.subnet: Network has host bits set. For a subnet mask of length 24 the network address is 192.0.2.0"
        );
        assert!(
            err(spec("2001:DB8:1::24:19ff:fee1:c44a/64")).ends_with("the network address is 2001:db8:1::")
        );
        assert!(err(spec("2001:DB8:24:19ff::/63")).ends_with("the network address is 2001:db8:24:19fe::"));
        assert!(err(spec("192.168.127.0/23")).ends_with("the network address is 192.168.126.0"));
        assert_eq!(
            err(spec("192.0.2.0/31")),
            "invalid network config: r.subnet: Network 192.0.2.0/31 too small to allocate from"
        );
        assert!(err(spec("2001:db8::/127")).contains("too small"));
        assert!(err(spec("10.0.0.0")).starts_with("invalid network config: r.subnet: invalid CIDR"));
        assert!(err(spec("::ffff:10.0.0.0/120")).contains("IPv4-mapped"));
        assert_eq!(
            err(RangeSpec { path: "r".into(), ..Default::default() }),
            "invalid network config: r.subnet: missing"
        );

        let with = |f: fn(&mut RangeSpec), subnet: &str| {
            let mut s = spec(subnet);
            f(&mut s);
            err(s)
        };
        assert_eq!(
            with(|s| s.gateway = Some("192.168.1.1".into()), "10.0.0.0/24"),
            "invalid network config: r.gateway: gateway 192.168.1.1 not in network 10.0.0.0/24"
        );
        assert!(with(|s| s.gateway = Some("2001:db8::1".into()), "10.0.0.0/24").contains("not in network"));
        assert!(
            with(|s| s.gateway = Some("nope".into()), "10.0.0.0/24")
                .contains("r.gateway: invalid IP address")
        );
        assert_eq!(
            with(|s| s.range_start = Some("192.0.3.0".into()), "192.0.2.0/24"),
            "invalid network config: r.rangeStart: 192.0.3.0 not in network 192.0.2.0/24"
        );
        assert_eq!(
            with(|s| s.range_end = Some("192.0.4.0".into()), "192.0.2.0/24"),
            "invalid network config: r.rangeEnd: 192.0.4.0 not in network 192.0.2.0/24"
        );
        assert!(
            with(
                |s| {
                    s.range_start = Some("192.0.2.50".into());
                    s.range_end = Some("192.0.2.40".into());
                },
                "192.0.2.0/24"
            )
            .starts_with(
                "invalid network config: r.rangeEnd: range start 192.0.2.50 is after range end 192.0.2.40"
            )
        );
        assert!(with(|s| s.range_end = Some("192.0.2.255".into()), "192.0.2.0/24").contains("broadcast"));
        assert!(
            with(|s| s.range_start = Some("192.0.2.0".into()), "192.0.2.0/24")
                .contains("network or broadcast")
        );
    }

    #[test]
    fn many_ranges_are_checked_quickly() {
        let specs: Vec<RangeSpec> = (0..20_000u32)
            .map(|i| spec(&format!("{}/30", std::net::Ipv4Addr::from((10 << 24) + i * 4))))
            .collect();
        let t = std::time::Instant::now();
        assert!(RangeSet::new("s", &specs).is_ok());
        let mut overlapping = specs.clone();
        overlapping.push(spec("10.0.1.0/24"));
        let e = RangeSet::new("s", &overlapping).unwrap_err().to_string();
        assert!(e.contains("10.0.0.253-10.0.0.254 and 10.0.1.1-10.0.1.254") || e.contains("overlap"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(
            first_overlap([(true, 5, 9), (false, 5, 9), (true, 1, 4), (true, 9, 12)].into_iter()),
            Some((0, 3))
        );
        assert_eq!(first_overlap([(true, 5, 9), (true, 10, 12), (true, 1, 4)].into_iter()), None);
    }

    #[test]
    fn overlap_table() {
        let with_bounds = |subnet: &str, start: Option<&str>, end: Option<&str>| {
            Range::new(&RangeSpec {
                range_start: start.map(Into::into),
                range_end: end.map(Into::into),
                ..spec(subnet)
            })
            .unwrap()
        };
        let cases = [
            (range("10.0.0.0/24"), range("10.0.1.0/24"), false),
            (range("0.0.0.0/24"), range("::/24"), false),
            (range("10.0.0.0/24"), range("10.0.0.0/24"), true),
            (range("10.0.0.0/20"), range("10.0.1.0/24"), true),
            (
                with_bounds("10.0.0.0/24", None, Some("10.0.0.127")),
                with_bounds("10.0.0.0/24", Some("10.0.0.128"), None),
                false,
            ),
            (
                with_bounds("10.0.0.0/24", None, Some("10.0.0.127")),
                with_bounds("10.0.0.0/24", Some("10.0.0.127"), None),
                true,
            ),
        ];
        for (a, b, expected) in cases {
            assert_eq!(a.overlaps(&b), expected, "{a} vs {b}");
            assert_eq!(b.overlaps(&a), expected, "{b} vs {a}");
        }
    }

    #[test]
    fn sets() {
        let set = RangeSet::new("s", &[spec("10.0.0.0/30"), spec("10.0.1.0/30")]).unwrap();
        assert_eq!(set.to_string(), "10.0.0.1-10.0.0.2,10.0.1.1-10.0.1.2");
        assert!(set.contains(ip("10.0.1.2")) && !set.contains(ip("10.0.1.3")));
        assert_eq!(set.free(&HashSet::new()), 2);
        assert_eq!(set.free(&[ip("10.0.0.2"), ip("10.9.9.9")].into()), 1);

        let e = RangeSet::new("s", &[]).unwrap_err().to_string();
        assert_eq!(e, "invalid network config: s: empty range set");
        let mut v6 = spec("2001:db8::/64");
        v6.path = "s[1]".into();
        let e = RangeSet::new("s", &[spec("10.0.0.0/24"), v6]).unwrap_err().to_string();
        assert!(e.starts_with("invalid network config: s[1]: mixed address families"), "{e}");
        let mut dup = spec("10.0.0.0/25");
        dup.path = "s[1]".into();
        let e = RangeSet::new("s", &[spec("10.0.0.0/24"), dup]).unwrap_err().to_string();
        assert!(
            e.starts_with(
                "invalid network config: s[1]: subnets 10.0.0.1-10.0.0.254 and 10.0.0.1-10.0.0.126 overlap"
            ),
            "{e}"
        );
    }

    #[test]
    fn huge_v6_capacity_saturates() {
        let r = Range::new(&RangeSpec { range_start: Some("::".into()), ..spec("::/0") }).unwrap();
        assert_eq!(r.capacity(), u128::MAX - 1);
    }
}
