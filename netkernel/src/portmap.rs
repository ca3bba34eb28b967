//! Port forwarding from the node to containers (DNAT), with hairpin and localhost SNAT, in
//! one nftables table whose rule count does not grow with the number of containers.
//!
//! ```text
//! table inet <name>
//!   map hostports4/6  proto . port              : container addr . port   (any local address)
//!   map hostip4/6     host addr . proto . port  : container addr . port   (one host address)
//!   set hairpin4/6    subnet . container        (a container reached by a host port from its own
//!                                               subnet: itself, or a neighbour on its bridge)
//!   set localnet4     container                 (reached from 127.0.0.0/8 on the node)
//!   chain prerouting, output (nat, dstnat): fib daddr type local → hostports
//!   chain hostports: dnat through hostip4/6, then hostports4/6
//!   chain postrouting (nat, srcnat): masquerade hairpin and localhost traffic
//!   chain input (filter): drop 127.0.0.0/8 arriving on another link unless it was DNATed
//! ```
//!
//! Every element carries a comment, its tag, so an attachment's elements are found and
//! removed without knowing its addresses (DEL after the netns is gone, GC).

use std::fmt::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::error::Result;
use crate::nft;

/// A transport protocol a port can be forwarded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// The nft name.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    fn from_json(v: &Value) -> Option<Proto> {
        match (v.as_str(), v.as_u64()) {
            (Some("tcp"), _) | (_, Some(6)) => Some(Proto::Tcp),
            (Some("udp"), _) | (_, Some(17)) => Some(Proto::Udp),
            (Some("sctp"), _) | (_, Some(132)) => Some(Proto::Sctp),
            _ => None,
        }
    }
}

/// One forwarded port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forward {
    /// Protocol.
    pub proto: Proto,
    /// The host address it is bound to; `None` for every local address.
    pub host_ip: Option<IpAddr>,
    /// The port on the host.
    pub host_port: u16,
    /// The container address.
    pub dest: IpAddr,
    /// The port in the container.
    pub dest_port: u16,
}

impl Forward {
    fn v4(&self) -> bool {
        self.dest.is_ipv4()
    }

    fn map(&self) -> &'static str {
        match (self.host_ip.is_some(), self.v4()) {
            (false, true) => "hostports4",
            (false, false) => "hostports6",
            (true, true) => "hostip4",
            (true, false) => "hostip6",
        }
    }

    fn key(&self) -> String {
        match self.host_ip {
            Some(h) => format!("{h} . {} . {}", self.proto.name(), self.host_port),
            None => format!("{} . {}", self.proto.name(), self.host_port),
        }
    }

    /// Whether `other` claims the same host port (then only one can have it).
    pub fn same_key(&self, other: &Forward) -> bool {
        self.map() == other.map() && self.key() == other.key()
    }
}

/// One element of the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    /// A forwarded port.
    Forward(Forward),
    /// SNAT for DNATed traffic from the container's own subnet to it: the container itself
    /// (hairpin) or a neighbour whose replies would otherwise bypass the node's conntrack.
    Hairpin {
        /// The container's subnet.
        subnet: IpNet,
        /// The container address.
        ip: IpAddr,
    },
    /// Localhost SNAT for a container address (IPv4 only).
    Localnet(IpAddr),
}

impl Element {
    fn delete(&self, t: &str) -> String {
        match self {
            Element::Forward(f) => format!("delete element inet {t} {} {{ {} }}\n", f.map(), f.key()),
            Element::Hairpin { subnet, ip } => {
                let set = if ip.is_ipv4() { "hairpin4" } else { "hairpin6" };
                format!("delete element inet {t} {set} {{ {subnet} . {ip} }}\n")
            }
            Element::Localnet(ip) => format!("delete element inet {t} localnet4 {{ {ip} }}\n"),
        }
    }

    fn add(&self, t: &str, comment: &str) -> String {
        match self {
            // `create`: a host port another attachment holds (even to the same address) is
            // an error, not silently shared.
            Element::Forward(f) => format!(
                "create element inet {t} {} {{ {} comment {comment} : {} . {} }}\n",
                f.map(),
                f.key(),
                f.dest,
                f.dest_port
            ),
            Element::Hairpin { subnet, ip } => {
                let set = if ip.is_ipv4() { "hairpin4" } else { "hairpin6" };
                format!("add element inet {t} {set} {{ {subnet} . {ip} comment {comment} }}\n")
            }
            Element::Localnet(ip) => format!("add element inet {t} localnet4 {{ {ip} comment {comment} }}\n"),
        }
    }
}

/// An element and the tag it was added with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tagged {
    /// The tag.
    pub tag: String,
    /// The element.
    pub element: Element,
}

/// The port-forwarding table.
#[derive(Debug, Clone)]
pub struct PortmapTable {
    table: String,
}

impl PortmapTable {
    /// The table named `table` in the `inet` family (created on first use).
    pub fn new(table: &str) -> Result<Self> {
        Ok(PortmapTable { table: nft::table_name(table)? })
    }

    /// The shared structure, rebuilt identically by every caller (so concurrent ADDs agree).
    fn structure(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        let _ = writeln!(s, "add table inet {t}");
        for (name, ty) in [
            ("hostports4", "inet_proto . inet_service : ipv4_addr . inet_service"),
            ("hostports6", "inet_proto . inet_service : ipv6_addr . inet_service"),
            ("hostip4", "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service"),
            ("hostip6", "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service"),
        ] {
            let _ = writeln!(s, "add map inet {t} {name} {{ type {ty}; }}");
        }
        let _ = writeln!(s, "add set inet {t} hairpin4 {{ type ipv4_addr . ipv4_addr; flags interval; }}");
        let _ = writeln!(s, "add set inet {t} hairpin6 {{ type ipv6_addr . ipv6_addr; flags interval; }}");
        let _ = writeln!(s, "add set inet {t} localnet4 {{ type ipv4_addr; }}");
        let _ = writeln!(s, "add chain inet {t} hostports");
        let _ = writeln!(s, "flush chain inet {t} hostports");
        // A host-address mapping wins over an any-address one for the same port.
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @hostip4"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta nfproto ipv6 dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} hostports meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6"
        );
        // dstnat is -100; nft 1.0 knows the name only for the prerouting hook.
        for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
            let _ = writeln!(
                s,
                "add chain inet {t} {chain} {{ type nat hook {hook} priority -100; policy accept; }}"
            );
            let _ = writeln!(s, "flush chain inet {t} {chain}");
            let _ = writeln!(s, "add rule inet {t} {chain} fib daddr type local jump hostports");
        }
        let _ = writeln!(
            s,
            "add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} postrouting");
        let _ = writeln!(
            s,
            "add rule inet {t} postrouting ct status dnat ip saddr . ip daddr @hairpin4 masquerade"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} postrouting ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade"
        );
        let _ = writeln!(
            s,
            "add rule inet {t} postrouting ip saddr 127.0.0.0/8 ip daddr @localnet4 ct status dnat masquerade"
        );
        // route_localnet lets 127.0.0.0/8 in on the links it is set on; only what was
        // DNATed (replies to localhost host ports) may come in that way.
        let _ = writeln!(
            s,
            "add chain inet {t} input {{ type filter hook input priority filter; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {t} input");
        let _ = writeln!(
            s,
            "add rule inet {t} input iifname != \"lo\" ip daddr 127.0.0.0/8 ct status ! dnat drop"
        );
        s
    }

    /// Adds `elements` tagged `tag` in one transaction (creating the table when missing).
    /// A host port that another tag holds makes the whole call fail, changing nothing.
    pub fn add(&self, elements: &[Element], tag: &str) -> Result<()> {
        let comment = nft::quote(tag);
        let body: String = elements.iter().map(|e| e.add(&self.table, &comment)).collect();
        if body.is_empty() {
            return Ok(());
        }
        let what = format!("adding port mappings tagged {tag:?}");
        // After the first ADD on a node the structure exists: the elements alone are a much
        // smaller transaction. Only when that fails is the structure (re)built with them.
        if nft::apply(&body, &what).is_ok() {
            return Ok(());
        }
        nft::apply(&(self.structure() + &body), &what)
    }

    /// Every element of the table.
    pub fn elements(&self) -> Result<Vec<Tagged>> {
        let Some(json) = nft::list_json(&["table", "inet", &self.table], "listing port mappings")? else {
            return Ok(Vec::new());
        };
        let mut out = parse(&json);
        out.sort();
        Ok(out)
    }

    /// Removes `elements` (one transaction; fails, changing nothing, if one is missing).
    pub fn remove(&self, elements: &[Element]) -> Result<()> {
        let s: String = elements.iter().map(|e| e.delete(&self.table)).collect();
        if s.is_empty() {
            return Ok(());
        }
        nft::apply(&s, "removing port mappings")
    }

    /// Removes every element whose tag satisfies `matches`; returns how many.
    pub fn remove_where(&self, matches: impl Fn(&str) -> bool) -> Result<usize> {
        let doomed: Vec<Element> =
            self.elements()?.into_iter().filter(|t| matches(&t.tag)).map(|t| t.element).collect();
        if let Err(e) = self.remove(&doomed) {
            // Another caller may have removed some meanwhile: what matters is that they are gone.
            if self.elements()?.iter().any(|t| matches(&t.tag)) {
                return Err(e);
            }
        }
        Ok(doomed.len())
    }
}

fn ip(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

/// `{"prefix": {"addr", "len"}}`, or a plain address for a full-length prefix.
fn prefix(v: &Value) -> Option<IpNet> {
    match v.get("prefix") {
        Some(p) => IpNet::new(ip(&p["addr"])?, u8::try_from(p["len"].as_u64()?).ok()?).ok(),
        None => ip(v).map(IpNet::from),
    }
}

fn port(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|p| u16::try_from(p).ok())
}

/// Elements from `nft -j list table`.
fn parse(json: &Value) -> Vec<Tagged> {
    let mut out = Vec::new();
    for obj in json["nftables"].as_array().into_iter().flatten() {
        if let Some(map) = obj.get("map") {
            let name = map["name"].as_str().unwrap_or_default();
            for pair in map["elem"].as_array().into_iter().flatten() {
                let (key, val) = (&pair[0], &pair[1]);
                let (k, tag) = match key.get("elem") {
                    Some(e) => (&e["val"], e["comment"].as_str().unwrap_or_default()),
                    None => (key, ""),
                };
                let k = k["concat"].as_array().cloned().unwrap_or_default();
                let v = val["concat"].as_array().cloned().unwrap_or_default();
                let (host_ip, proto, host_port) = match (name, k.as_slice()) {
                    ("hostports4" | "hostports6", [p, hp]) => (None, p, hp),
                    ("hostip4" | "hostip6", [h, p, hp]) => (ip(h), p, hp),
                    _ => continue,
                };
                let (Some(proto), Some(host_port), [d, dp]) =
                    (Proto::from_json(proto), port(host_port), v.as_slice())
                else {
                    continue;
                };
                let (Some(dest), Some(dest_port)) = (ip(d), port(dp)) else { continue };
                let f = Forward { proto, host_ip, host_port, dest, dest_port };
                out.push(Tagged { tag: tag.to_string(), element: Element::Forward(f) });
            }
        }
        if let Some(set) = obj.get("set") {
            let name = set["name"].as_str().unwrap_or_default();
            for e in set["elem"].as_array().into_iter().flatten() {
                let (v, tag) = match e.get("elem") {
                    Some(x) => (&x["val"], x["comment"].as_str().unwrap_or_default()),
                    None => (e, ""),
                };
                let element = match name {
                    "hairpin4" | "hairpin6" => {
                        match (v["concat"].get(0).and_then(prefix), v["concat"].get(1).and_then(ip)) {
                            (Some(subnet), Some(ip)) => Some(Element::Hairpin { subnet, ip }),
                            _ => None,
                        }
                    }
                    "localnet4" => ip(v).map(Element::Localnet),
                    _ => None,
                };
                if let Some(element) = element {
                    out.push(Tagged { tag: tag.to_string(), element });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_nft_lists() {
        let json: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},
            {"map":{"family":"inet","name":"hostports4","table":"t","elem":[[{"elem":{"val":{"concat":["tcp",8080]},"comment":"n/c1/eth0"}},{"concat":["10.0.0.2",80]}]]}},
            {"map":{"family":"inet","name":"hostip6","table":"t","elem":[[{"elem":{"val":{"concat":["fd00::1","sctp",9]},"comment":"x"}},{"concat":["fd00::2",9]}]]}},
            {"set":{"family":"inet","name":"hairpin4","table":"t","elem":[{"elem":{"val":{"concat":[{"prefix":{"addr":"10.0.0.0","len":24}},"10.0.0.2"]},"comment":"n/c1/eth0"}}]}},
            {"set":{"family":"inet","name":"localnet4","table":"t","elem":[{"elem":{"val":"10.0.0.2","comment":"n/c1/eth0"}}]}}]}"#,
        )
        .unwrap();
        let got = parse(&json);
        assert_eq!(got.len(), 4);
        let f = Forward {
            proto: Proto::Tcp,
            host_ip: None,
            host_port: 8080,
            dest: "10.0.0.2".parse().unwrap(),
            dest_port: 80,
        };
        assert_eq!(got[0], Tagged { tag: "n/c1/eth0".into(), element: Element::Forward(f.clone()) });
        assert!(
            matches!(&got[1].element, Element::Forward(f) if f.proto == Proto::Sctp && f.host_ip.is_some())
        );
        let hairpin =
            Element::Hairpin { subnet: "10.0.0.0/24".parse().unwrap(), ip: "10.0.0.2".parse().unwrap() };
        assert_eq!(got[2].element, hairpin);
        assert_eq!(got[3].element, Element::Localnet("10.0.0.2".parse().unwrap()));
        assert_eq!(
            Element::Forward(f.clone()).add("t", "\"x\""),
            "create element inet t hostports4 { tcp . 8080 comment \"x\" : 10.0.0.2 . 80 }\n"
        );
        assert_eq!(Element::Forward(f).delete("t"), "delete element inet t hostports4 { tcp . 8080 }\n");
    }
}
