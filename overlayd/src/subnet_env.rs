//! `subnet.env`, as flannel writes it, so that flannel's CNI plugin and
//! scripts written for it keep working.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::NetworkConfig;
use crate::subnet::SubnetKey;

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Option<Ipv4Net>,
    /// `FLANNEL_SUBNET`: the first address of our subnet with the subnet's prefix.
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// `FLANNEL_MTU`.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`.
    pub ipmasq: bool,
}

fn first_host(n: IpNet) -> IpNet {
    let a = match n.network() {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) + 1).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) + 1).into()),
    };
    IpNet::new(a, n.prefix_len()).expect("same prefix length")
}

impl SubnetEnv {
    /// For our lease under `config`.
    pub fn new(config: &NetworkConfig, key: &SubnetKey, mtu: u32, ipmasq: bool) -> Self {
        let v4 = |n: IpNet| match n {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        };
        let v6 = |n: IpNet| match n {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        };
        SubnetEnv {
            network: config.ipv4_network(),
            subnet: key.ipv4.and_then(|n| v4(first_host(n.into()))),
            ipv6_network: config.ipv6_network(),
            ipv6_subnet: key.ipv6.and_then(|n| v6(first_host(n.into()))),
            mtu,
            ipmasq,
        }
    }

    /// The text, in flannel's key order.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.network {
            s += &format!("FLANNEL_NETWORK={n}\n");
        }
        if let Some(n) = self.subnet {
            s += &format!("FLANNEL_SUBNET={n}\n");
        }
        if let Some(n) = self.ipv6_network {
            s += &format!("FLANNEL_IPV6_NETWORK={n}\n");
        }
        if let Some(n) = self.ipv6_subnet {
            s += &format!("FLANNEL_IPV6_SUBNET={n}\n");
        }
        s += &format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq);
        s
    }

    /// The subnets recorded in an existing file (to find the previous subnet at start).
    pub fn previous_key(text: &str) -> Option<SubnetKey> {
        let mut key = SubnetKey { ipv4: None, ipv6: None };
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            match k {
                "FLANNEL_SUBNET" => key.ipv4 = v.parse::<Ipv4Net>().ok().map(|n| n.trunc()),
                "FLANNEL_IPV6_SUBNET" => key.ipv6 = v.parse::<Ipv6Net>().ok().map(|n| n.trunc()),
                _ => {}
            }
        }
        (key.ipv4.is_some() || key.ipv6.is_some()).then_some(key)
    }

    /// Writes the file atomically (mode 0644: CNI plugins read it), unless it already has
    /// this content; returns whether it wrote.
    pub fn write(&self, path: &Path) -> io::Result<bool> {
        let text = self.render();
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::state::ensure_dir(dir, 0o755)?;
        }
        cni_spec::fs::write_atomic(path, text.as_bytes(), 0o644)?;
        Ok(true)
    }

    /// Reads the previous subnet from `path`, if the file exists and names one.
    pub fn read_previous(path: &Path) -> Option<SubnetKey> {
        Self::previous_key(&std::fs::read_to_string(path).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flannel_format() {
        let c = NetworkConfig::parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap().config;
        let k = SubnetKey::parse("10.244.1.0-24").unwrap();
        let e = SubnetEnv::new(&c, &k, 1450, true);
        assert_eq!(
            e.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        assert_eq!(SubnetEnv::previous_key(&e.render()), Some(k));
    }

    #[test]
    fn dual_stack_keys() {
        let c = NetworkConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12:13::/48","IPv6SubnetLen":56}"#,
        )
        .unwrap()
        .config;
        let k = SubnetKey::parse("10.244.1.0-24&fd00:12:13:100::-56").unwrap();
        let text = SubnetEnv::new(&c, &k, 1400, false).render();
        assert!(text.contains("FLANNEL_IPV6_NETWORK=fd00:12:13::/48\n"), "{text}");
        assert!(text.contains("FLANNEL_IPV6_SUBNET=fd00:12:13:100::1/56\n"), "{text}");
        assert_eq!(SubnetEnv::previous_key(&text), Some(k));
    }

    #[test]
    fn write_is_atomic_and_skips_same_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("run/flannel/subnet.env");
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16"}"#).unwrap().config;
        let e = SubnetEnv::new(&c, &SubnetKey::parse("10.1.7.0-24").unwrap(), 1450, false);
        assert!(e.write(&p).unwrap());
        assert!(!e.write(&p).unwrap());
        assert_eq!(SubnetEnv::read_previous(&p), Some(SubnetKey::parse("10.1.7.0-24").unwrap()));
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
