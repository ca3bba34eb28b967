//! Picking an address from a range set: the reference's round-robin (`allocator.go`).
//!
//! The walk starts after `last_reserved_ip.<set>` when that address is still in the set
//! (else at the first range's start), crosses into the next range after a range's end,
//! wraps around, skips each range's gateway and stops when back at its start. Unlike the
//! reference, taken addresses are skipped by looking them up in the store's view (one
//! directory read or the index) instead of trying to create each file in turn.

use std::collections::HashMap;
use std::net::IpAddr;

use cni_spec::IpConfig;
use cni_spec::plugin::Attachment;
use ipnet::IpNet;

use super::error::HostLocalError;
use super::range::{RangeSet, from_num, to_num};
use super::store::{Find, Store};

/// What the allocator needs from a lease store (a trait so tests can use a fake one).
pub trait Leases {
    /// The addresses `a` (or, legacy, its container) holds.
    fn held_by(&mut self, a: &Attachment) -> Result<Vec<IpAddr>, HostLocalError>;
    /// Whether `ip` is known to be leased (a hint to skip it; `reserve` decides).
    fn is_taken(&self, ip: IpAddr) -> bool;
    /// The last address reserved from set `set`.
    fn last_reserved(&self, set: usize) -> Option<IpAddr>;
    /// Leases `ip` to `a` if it is free; `Ok(false)` if it is taken.
    fn reserve(&mut self, ip: IpAddr, a: &Attachment, set: usize) -> Result<bool, HostLocalError>;
    /// Re-reads the leases if the view may be out of date; false if it is already exact.
    fn refresh(&mut self) -> Result<bool, HostLocalError>;
    /// Whether `ip` could be reserved now (no lease exists for it).
    fn is_free(&mut self, ip: IpAddr) -> Result<bool, HostLocalError>;
}

impl Leases for Store {
    fn held_by(&mut self, a: &Attachment) -> Result<Vec<IpAddr>, HostLocalError> {
        self.find(a, Find::Any)
    }
    fn is_taken(&self, ip: IpAddr) -> bool {
        // Unknown until a collision made the store build its set: the file system decides.
        self.known_taken(ip).unwrap_or(false)
    }
    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        Store::last_reserved(self, set)
    }
    fn reserve(&mut self, ip: IpAddr, a: &Attachment, set: usize) -> Result<bool, HostLocalError> {
        Store::reserve(self, ip, a, set)
    }
    fn refresh(&mut self) -> Result<bool, HostLocalError> {
        Store::refresh(self)
    }
    fn is_free(&mut self, ip: IpAddr) -> Result<bool, HostLocalError> {
        Store::is_free(self, ip)
    }
}

/// The candidates of a range set in the reference's order, each with its range's index.
#[derive(Debug, Clone)]
pub struct RangeIter<'a> {
    set: &'a RangeSet,
    /// The range `cur` is in.
    range: usize,
    /// The last address returned (or the starting point); `None` before the first.
    cur: Option<u128>,
    /// The first address returned; reaching it again ends the walk.
    first: Option<u128>,
    done: bool,
}

impl<'a> RangeIter<'a> {
    /// A walk that continues after `last_reserved` if the set contains it.
    pub fn new(set: &'a RangeSet, last_reserved: Option<IpAddr>) -> Self {
        let start =
            last_reserved.and_then(|ip| set.ranges.iter().position(|r| r.contains(ip)).map(|i| (i, ip)));
        match start {
            Some((range, ip)) => RangeIter { set, range, cur: Some(to_num(ip)), first: None, done: false },
            None => RangeIter { set, range: 0, cur: None, first: None, done: false },
        }
    }

    /// The address the walk started with (after the first `next`), as in the reference's
    /// `startIP`.
    pub fn first(&self) -> Option<IpAddr> {
        self.first.map(|n| from_num(n, self.set.is_v4()))
    }
}

impl Iterator for RangeIter<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        let v4 = self.set.is_v4();
        while !self.done {
            let r = &self.set.ranges[self.range];
            let cur = match self.cur {
                None => {
                    let start = to_num(r.start);
                    self.first = Some(start);
                    start
                }
                Some(cur) => {
                    let next = if cur == to_num(r.end) {
                        self.range = (self.range + 1) % self.set.ranges.len();
                        to_num(self.set.ranges[self.range].start)
                    } else {
                        cur + 1
                    };
                    match self.first {
                        None => self.first = Some(next),
                        Some(first) if first == next => {
                            self.done = true;
                            return None;
                        }
                        Some(_) => {}
                    }
                    next
                }
            };
            self.cur = Some(cur);
            if cur != to_num(self.set.ranges[self.range].gateway) {
                return Some((self.range, from_num(cur, v4)));
            }
        }
        None
    }
}

/// Leases an address of `set` (index `idx`) to `a`: `requested` if given, else the next
/// free one round-robin. Fails if `a` already holds an address in the set.
pub fn allocate(
    store: &mut impl Leases,
    idx: usize,
    set: &RangeSet,
    a: &Attachment,
    requested: Option<IpAddr>,
) -> Result<IpConfig, HostLocalError> {
    let ip = pick(store, idx, set, a, requested)?;
    if store.reserve(ip, a, idx)? {
        return Ok(config_for(set, ip));
    }
    // Taken between the look and the reservation (by a writer that does not lock).
    if requested.is_some() {
        return Err(HostLocalError::RequestedUnavailable { set: idx, ip, range: set.to_string() });
    }
    for (_, ip) in RangeIter::new(set, Some(ip)) {
        if !store.is_taken(ip) && store.reserve(ip, a, idx)? {
            return Ok(config_for(set, ip));
        }
    }
    Err(HostLocalError::Exhausted { set: idx, range: set.to_string() })
}

/// The result entry for `ip`, leased from `set`.
pub fn config_for(set: &RangeSet, ip: IpAddr) -> IpConfig {
    let range = set.range_for(ip).expect("allocated from the set");
    let address = IpNet::new(ip, range.subnet.prefix_len()).expect("the subnet's prefix fits");
    IpConfig { address, gateway: Some(range.gateway), interface: None }
}

/// Chooses the address [`allocate`] would lease, without leasing it: an ADD picks an
/// address in every range set first, so a set that cannot give one fails the ADD before
/// anything was written.
pub fn pick(
    store: &mut impl Leases,
    idx: usize,
    set: &RangeSet,
    a: &Attachment,
    requested: Option<IpAddr>,
) -> Result<IpAddr, HostLocalError> {
    if let Some(ip) = store.held_by(a)?.into_iter().find(|ip| set.contains(*ip)) {
        return Err(HostLocalError::Duplicate { set: idx, ip, id: a.container_id.clone() });
    }
    match requested {
        Some(ip) => {
            // The config check already refused these; kept so this function stands alone.
            let range = set.range_for(ip).ok_or_else(|| {
                HostLocalError::config("ips", format!("requested IP address {ip} is not in range set {set}"))
            })?;
            if range.gateway == ip {
                return Err(HostLocalError::config("ips", format!("requested ip {ip} is subnet's gateway")));
            }
            if !store.is_free(ip)? {
                return Err(HostLocalError::RequestedUnavailable { set: idx, ip, range: set.to_string() });
            }
            Ok(ip)
        }
        None => match next_free(store, idx, set)? {
            Some(ip) => Ok(ip),
            // A full set seen through the index is re-checked against the directory.
            None if store.refresh()? => next_free(store, idx, set)?
                .ok_or_else(|| HostLocalError::Exhausted { set: idx, range: set.to_string() }),
            None => Err(HostLocalError::Exhausted { set: idx, range: set.to_string() }),
        },
    }
}

fn next_free(store: &mut impl Leases, idx: usize, set: &RangeSet) -> Result<Option<IpAddr>, HostLocalError> {
    for (_, ip) in RangeIter::new(set, store.last_reserved(idx)) {
        if !store.is_taken(ip) && store.is_free(ip)? {
            return Ok(Some(ip));
        }
    }
    Ok(None)
}

/// An in-memory [`Leases`], for tests.
#[derive(Debug, Default, Clone)]
pub struct MemLeases {
    /// address → (container ID, ifname)
    pub leases: HashMap<IpAddr, Attachment>,
    /// set → last reserved address
    pub last: HashMap<usize, IpAddr>,
}

impl MemLeases {
    /// Releases every lease of `a`.
    pub fn release(&mut self, a: &Attachment) {
        self.leases.retain(|_, owner| owner != a);
    }
}

impl Leases for MemLeases {
    fn is_free(&mut self, ip: IpAddr) -> Result<bool, HostLocalError> {
        Ok(!self.leases.contains_key(&ip))
    }
    fn held_by(&mut self, a: &Attachment) -> Result<Vec<IpAddr>, HostLocalError> {
        Ok(self.leases.iter().filter(|(_, o)| *o == a).map(|(ip, _)| *ip).collect())
    }
    fn is_taken(&self, ip: IpAddr) -> bool {
        self.leases.contains_key(&ip)
    }
    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        self.last.get(&set).copied()
    }
    fn reserve(&mut self, ip: IpAddr, a: &Attachment, set: usize) -> Result<bool, HostLocalError> {
        if self.leases.contains_key(&ip) {
            return Ok(false);
        }
        self.leases.insert(ip, a.clone());
        self.last.insert(set, ip);
        Ok(true)
    }
    fn refresh(&mut self) -> Result<bool, HostLocalError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::super::range::{RangeSpec, tests::spec};
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(subnets: &[&str]) -> RangeSet {
        RangeSet::new("s", &subnets.iter().map(|s| spec(s)).collect::<Vec<_>>()).unwrap()
    }

    fn att(id: &str) -> Attachment {
        Attachment::new(id, "eth0")
    }

    fn walk(set: &RangeSet, last: Option<&str>) -> Vec<String> {
        RangeIter::new(set, last.map(ip)).map(|(_, ip)| ip.to_string()).collect()
    }

    #[test]
    fn iter_from_the_beginning() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            walk(&s, None),
            ["192.168.1.2", "192.168.1.3", "192.168.1.4", "192.168.1.5", "192.168.1.6"]
        );
    }

    #[test]
    fn iter_from_the_end() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            walk(&s, Some("192.168.1.6")),
            ["192.168.1.2", "192.168.1.3", "192.168.1.4", "192.168.1.5", "192.168.1.6"]
        );
    }

    #[test]
    fn iter_from_the_middle() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(
            walk(&s, Some("192.168.1.3")),
            ["192.168.1.4", "192.168.1.5", "192.168.1.6", "192.168.1.2", "192.168.1.3"]
        );
    }

    #[test]
    fn iter_ignores_a_last_reserved_outside_the_set() {
        let s = set(&["192.168.1.0/29"]);
        assert_eq!(walk(&s, Some("10.0.0.128")), walk(&s, None));
        assert_eq!(walk(&s, Some("2001:db8::1")), walk(&s, None));
    }

    #[test]
    fn iter_skips_a_gateway_in_the_middle() {
        let r = RangeSpec { gateway: Some("192.168.1.4".into()), ..spec("192.168.1.0/29") };
        let s = RangeSet::new("s", &[r]).unwrap();
        assert_eq!(
            walk(&s, None),
            ["192.168.1.1", "192.168.1.2", "192.168.1.3", "192.168.1.5", "192.168.1.6"]
        );
        // A walk whose first candidate is the gateway still covers everything else once.
        assert_eq!(
            walk(&s, Some("192.168.1.3")),
            ["192.168.1.5", "192.168.1.6", "192.168.1.1", "192.168.1.2", "192.168.1.3"]
        );
    }

    #[test]
    fn last_reserved_at_the_end_of_a_range_moves_to_the_next_range() {
        let bounds = |subnet: &str, start: &str, end: &str| RangeSpec {
            range_start: Some(start.into()),
            range_end: Some(end.into()),
            ..spec(subnet)
        };
        let s = RangeSet::new(
            "s",
            &[
                bounds("192.168.1.0/29", "192.168.1.1", "192.168.1.3"),
                bounds("192.168.2.0/29", "192.168.2.1", "192.168.2.3"),
            ],
        )
        .unwrap();
        let mut it = RangeIter::new(&s, Some(ip("192.168.1.3")));
        // 192.168.2.1 is that range's gateway: the walk starts there and skips it.
        assert_eq!(it.next(), Some((1, ip("192.168.2.2"))));
        assert_eq!(it.first(), Some(ip("192.168.2.1")));
        // Without a last reserved address the walk starts at the first range.
        let mut it = RangeIter::new(&s, None);
        assert!(it.next().is_some());
        assert_eq!(it.first(), Some(ip("192.168.1.1")));
        assert_eq!(walk(&s, None), ["192.168.1.2", "192.168.1.3", "192.168.2.2", "192.168.2.3"]);
    }

    fn run(subnets: &[&str], taken: &[&str], last: Option<&str>) -> Result<IpConfig, HostLocalError> {
        let s = set(subnets);
        let mut m = MemLeases::default();
        for t in taken {
            m.leases.insert(ip(t), att("id"));
        }
        if let Some(l) = last {
            m.last.insert(0, ip(l));
        }
        allocate(&mut m, 0, &s, &att("ID"), None)
    }

    /// subnets, taken addresses, last reserved, expected.
    type Case<'a> = (&'a [&'a str], &'a [&'a str], Option<&'a str>, &'a str);

    #[test]
    fn round_robin_table() {
        let cases: &[Case] = &[
            (&["10.0.0.0/29"], &[], None, "10.0.0.2"),
            (&["2001:db8:1::0/64"], &[], None, "2001:db8:1::2"),
            (&["10.0.0.0/30"], &[], None, "10.0.0.2"),
            (&["10.0.0.0/29"], &["10.0.0.2"], None, "10.0.0.3"),
            (&["10.0.0.0/29"], &[], Some("10.0.0.5"), "10.0.0.6"),
            (&["10.0.0.0/29"], &["10.0.0.4", "10.0.0.5"], Some("10.0.0.3"), "10.0.0.6"),
            (&["10.0.0.0/29"], &["10.0.0.6"], Some("10.0.0.5"), "10.0.0.2"),
            (&["10.0.0.0/29"], &["10.0.0.2"], Some("10.0.0.128"), "10.0.0.3"),
            (
                &["10.0.0.0/29"],
                &["10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"],
                Some("10.0.0.3"),
                "10.0.0.3",
            ),
            (&["10.0.0.0/30", "10.0.1.0/30"], &[], None, "10.0.0.2"),
            (&["10.0.0.0/30", "10.0.1.0/30"], &[], Some("10.0.0.2"), "10.0.1.2"),
            (&["10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"], &[], Some("10.0.2.2"), "10.0.0.2"),
        ];
        for (subnets, taken, last, expected) in cases {
            let got = run(subnets, taken, *last).unwrap();
            assert_eq!(got.address.addr().to_string(), *expected, "{subnets:?} {taken:?} {last:?}");
            assert_eq!(
                got.address.prefix_len(),
                set(subnets).range_for(got.address.addr()).unwrap().subnet.prefix_len()
            );
        }
    }

    #[test]
    fn never_the_broadcast_address() {
        let s = set(&["192.168.1.0/29"]);
        let mut m = MemLeases::default();
        for i in 2..7 {
            let got = allocate(&mut m, 0, &s, &att(&format!("ID{i}")), None).unwrap();
            assert_eq!(got.address.to_string(), format!("192.168.1.{i}/29"));
            assert_eq!(got.gateway, Some(ip("192.168.1.1")));
        }
        let e = allocate(&mut m, 0, &s, &att("ID8"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate for range 0: no IP addresses available in range set: 192.168.1.1-192.168.1.6"
        );
    }

    #[test]
    fn round_robin_after_release() {
        let s = set(&["192.168.1.0/29"]);
        let mut m = MemLeases::default();
        assert_eq!(allocate(&mut m, 0, &s, &att("ID"), None).unwrap().address.to_string(), "192.168.1.2/29");
        m.release(&att("ID"));
        assert_eq!(allocate(&mut m, 0, &s, &att("ID"), None).unwrap().address.to_string(), "192.168.1.3/29");
    }

    #[test]
    fn duplicate_allocation_is_refused() {
        let s = set(&["192.168.1.0/29"]);
        let mut m = MemLeases::default();
        allocate(&mut m, 0, &s, &att("ID"), None).unwrap();
        let e = allocate(&mut m, 0, &s, &att("ID"), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate for range 0: 192.168.1.2 has been allocated to ID, duplicate allocation is not allowed"
        );
        // Another interface of the same container is another attachment.
        allocate(&mut m, 0, &s, &Attachment::new("ID", "eth1"), None).unwrap();
        // A lease in another set does not count.
        allocate(&mut m, 1, &set(&["10.0.0.0/24"]), &att("ID"), None).unwrap();
    }

    #[test]
    fn requested_ip() {
        let s = set(&["192.168.1.0/29"]);
        let mut m = MemLeases::default();
        let got = allocate(&mut m, 0, &s, &att("ID"), Some(ip("192.168.1.5"))).unwrap();
        assert_eq!(got.address.to_string(), "192.168.1.5/29");
        assert_eq!(m.last[&0], ip("192.168.1.5"));
        let e = allocate(&mut m, 0, &s, &att("ID2"), Some(ip("192.168.1.5"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate for range 0: requested IP address 192.168.1.5 is not available in range set 192.168.1.1-192.168.1.6"
        );
        assert_eq!(e.code(), super::super::error::code::REQUESTED_IP_UNAVAILABLE);

        let bounded = RangeSet::new(
            "s",
            &[RangeSpec {
                range_start: Some("192.168.1.3".into()),
                range_end: Some("192.168.1.4".into()),
                ..spec("192.168.1.0/29")
            }],
        )
        .unwrap();
        for wanted in ["192.168.1.2", "192.168.1.5"] {
            let e =
                allocate(&mut MemLeases::default(), 0, &bounded, &att("ID"), Some(ip(wanted))).unwrap_err();
            assert!(e.to_string().contains("is not in range set 192.168.1.3-192.168.1.4"), "{e}");
        }
        let e = allocate(&mut MemLeases::default(), 0, &s, &att("ID"), Some(ip("192.168.1.1"))).unwrap_err();
        assert!(e.to_string().contains("is subnet's gateway"));
    }

    #[test]
    fn out_of_addresses_is_a_meaningful_error() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["10.0.0.0/30"], &["10.0.0.2"]),
            (&["10.0.0.0/29"], &["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]),
            (&["10.0.0.0/30", "10.0.1.0/30"], &["10.0.0.2", "10.0.1.2"]),
        ];
        for (subnets, taken) in cases {
            let e = run(subnets, taken, None).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("failed to allocate for range 0: no IP addresses available in range set"),
                "{e}"
            );
            assert_eq!(e.code(), super::super::error::code::RANGE_EXHAUSTED);
        }
    }

    /// A range set of 1–3 small IPv4 subnets, possibly with explicit bounds and gateway.
    fn arb_set() -> impl Strategy<Value = RangeSet> {
        let range = (0u8..4, 27u8..=30, any::<u8>(), any::<u8>(), any::<u8>());
        prop::collection::vec(range, 1..=3).prop_map(|specs| {
            let mut out: Vec<RangeSpec> = Vec::new();
            for (k, (third, prefix, a, b, g)) in specs.into_iter().enumerate() {
                let size = 1u32 << (32 - prefix);
                let base = (10 << 24) | (u32::from(third) << 8) | ((k as u32) << 16);
                let host = |x: u8| base + 1 + u32::from(x) % (size - 2);
                let (lo, hi) = (host(a).min(host(b)), host(a).max(host(b)));
                out.push(RangeSpec {
                    path: format!("s[{k}]"),
                    subnet: Some(format!("{}/{prefix}", std::net::Ipv4Addr::from(base))),
                    range_start: Some(std::net::Ipv4Addr::from(lo).to_string()),
                    range_end: Some(std::net::Ipv4Addr::from(hi).to_string()),
                    gateway: (g % 2 == 0).then(|| std::net::Ipv4Addr::from(host(g)).to_string()),
                });
            }
            RangeSet::new("s", &out).unwrap()
        })
    }

    proptest! {
        #[test]
        fn allocations_never_duplicate_and_stay_in_range(
            set in arb_set(),
            ops in prop::collection::vec((any::<bool>(), 0u8..40), 1..120),
        ) {
            let mut m = MemLeases::default();
            let capacity: u128 = set.ranges.iter().map(|r| r.capacity()).sum();
            for (add, who) in ops {
                let a = att(&format!("c{who}"));
                if add {
                    let before = m.leases.len();
                    match allocate(&mut m, 0, &set, &a, None) {
                        Ok(got) => {
                            let ip = got.address.addr();
                            let range = set.range_for(ip).expect("in a range");
                            prop_assert_ne!(ip, range.gateway);
                            prop_assert_eq!(got.gateway, Some(range.gateway));
                            prop_assert_eq!(m.leases.len(), before + 1);
                        }
                        Err(HostLocalError::Duplicate { .. }) => {
                            prop_assert!(m.leases.values().any(|o| *o == a));
                        }
                        Err(HostLocalError::Exhausted { .. }) => {
                            prop_assert_eq!(before as u128, capacity);
                        }
                        Err(e) => prop_assert!(false, "unexpected {}", e),
                    }
                } else {
                    m.release(&a);
                }
                // One lease per attachment, every lease in the set and not a gateway
                // (the map's keys are the addresses, so none is leased twice).
                let mut owners: Vec<_> = m.leases.values().collect();
                owners.sort_by(|x, y| x.container_id.cmp(&y.container_id));
                owners.dedup();
                prop_assert_eq!(owners.len(), m.leases.len());
                for ip in m.leases.keys() {
                    prop_assert!(set.range_for(*ip).is_some_and(|r| r.gateway != *ip));
                }
            }
        }

        #[test]
        fn the_walk_visits_every_address_once(set in arb_set(), last in any::<u32>()) {
            let v4 = |n: u32| IpAddr::V4(std::net::Ipv4Addr::from(n));
            let all: Vec<IpAddr> = set
                .ranges
                .iter()
                .flat_map(|r| (to_num(r.start) as u32..=to_num(r.end) as u32).map(v4).filter(move |ip| *ip != r.gateway))
                .collect();
            let pick = all.get(last as usize % (all.len() + 1)).copied();
            let mut seen: Vec<IpAddr> = RangeIter::new(&set, pick).map(|(_, ip)| ip).collect();
            if let Some(p) = pick {
                // It ends with the last reserved address itself.
                prop_assert_eq!(seen.last().copied(), Some(p));
            }
            seen.sort();
            let mut expected = all.clone();
            expected.sort();
            prop_assert_eq!(seen, expected);
        }
    }
}
