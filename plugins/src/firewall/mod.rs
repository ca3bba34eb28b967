//! The `firewall` plugin: the nftables equivalent of the reference's iptables backend.
//! Forwarding from the container's addresses, and replies to them, are accepted (after the
//! operator's `admin` chain); with `ingressPolicy: same-bridge`, traffic between the
//! container's bridge and other isolated bridges is dropped. The firewalld backend is not
//! provided.

use cni_spec::{Error, Plugin, Request, SuccessResult};
use netkernel::Netlink;
use netkernel::firewall::FirewallTable;
use serde::Deserialize;

use crate::bridge::masq::{tag, tag_of_network};
use crate::error::PluginError;

/// The nft table the firewall plugin owns.
pub const TABLE: &str = "ferrocni_firewall";

const KEYS: &[&str] = &["backend", "iptablesAdminChainName", "firewalldZone", "ingressPolicy"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    iptables_admin_chain_name: Option<String>,
    #[serde(default)]
    firewalld_zone: Option<String>,
    #[serde(default)]
    ingress_policy: Option<String>,
}

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallConf {
    /// `ingressPolicy: same-bridge`.
    pub same_bridge: bool,
}

impl FirewallConf {
    /// Parses and validates the options.
    pub fn load(req: &Request) -> Result<Self, PluginError> {
        let raw: Raw = req.parse_config()?;
        cni_spec::input::refuse_case_variants(&req.config.extra, KEYS, "")?;
        match raw.backend.as_deref() {
            None | Some("") | Some("iptables") | Some("nftables") => {}
            Some("firewalld") => {
                return Err(PluginError::unsupported(
                    "backend",
                    "the firewalld backend is not provided; use \"iptables\" (nftables here)",
                ));
            }
            Some(other) => return Err(PluginError::config("backend", format!("{other:?} is not a backend"))),
        }
        if let Some(c) = &raw.iptables_admin_chain_name
            && (c.len() > 64 || !c.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(PluginError::config("iptablesAdminChainName", format!("{c:?} is not a chain name")));
        }
        if let Some(z) = &raw.firewalld_zone
            && (z.len() > 64 || z.chars().any(|c| c.is_control()))
        {
            return Err(PluginError::config("firewalldZone", "not a zone name"));
        }
        let same_bridge = match raw.ingress_policy.as_deref() {
            None | Some("") | Some("open") => false,
            Some("same-bridge") => true,
            Some(other) => {
                return Err(PluginError::config(
                    "ingressPolicy",
                    format!("{other:?} is not a policy (\"open\" or \"same-bridge\")"),
                ));
            }
        };
        Ok(FirewallConf { same_bridge })
    }
}

/// The plugin.
pub struct Firewall;

impl Plugin for Firewall {
    fn about(&self) -> String {
        "firewall: allow forwarding for containers, isolate bridges, with nftables".into()
    }

    fn add(&self, req: &Request) -> Result<SuccessResult, Error> {
        add(req).map_err(Error::from)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        del(req).map_err(Error::from)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        check(req).map_err(Error::from)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        gc(req).map_err(Error::from)
    }
}

fn table() -> Result<FirewallTable, PluginError> {
    FirewallTable::new(TABLE).map_err(PluginError::kernel("opening the firewall table"))
}

/// The bridge the container hangs off: a host-side interface of `prevResult` that is a
/// bridge on this node.
fn bridge_of(prev: &SuccessResult) -> Result<String, PluginError> {
    let nl = Netlink::current().map_err(PluginError::kernel("opening netlink"))?;
    for i in prev.interfaces.iter().filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty)) {
        if cni_spec::parse::ifname(&i.name).is_err() {
            continue;
        }
        if nl
            .link(&i.name)
            .map_err(PluginError::kernel("reading the host interfaces"))?
            .is_some_and(|l| l.is("bridge"))
        {
            return Ok(i.name.clone());
        }
    }
    Err(PluginError::config("ingressPolicy", "same-bridge needs a bridge among prevResult's host interfaces"))
}

fn add(req: &Request) -> Result<SuccessResult, PluginError> {
    let conf = FirewallConf::load(req)?;
    crate::nsutil::refuse_own_if_given(req)?;
    let prev = PluginError::require_prev(req, "firewall")?;
    let ips: Vec<_> = prev.ips.iter().map(|ip| ip.address.addr()).collect();
    let bridge = if conf.same_bridge { Some(bridge_of(&prev)?) } else { None };
    if ips.is_empty() && bridge.is_none() {
        return Ok(prev);
    }
    let tag = tag(req.network_name()?, &req.env.container_id, &req.env.ifname);
    table()?.add(&ips, &tag, bridge.as_deref()).map_err(PluginError::kernel("adding firewall entries"))?;
    Ok(prev)
}

fn del(req: &Request) -> Result<(), PluginError> {
    FirewallConf::load(req)?;
    let wanted = tag(req.network_name()?, &req.env.container_id, &req.env.ifname);
    table()?.remove_where(|t| t == wanted).map_err(PluginError::kernel("removing firewall entries"))?;
    Ok(())
}

fn check(req: &Request) -> Result<(), PluginError> {
    let conf = FirewallConf::load(req)?;
    crate::nsutil::refuse_own_if_given(req)?;
    let prev = PluginError::require_prev(req, "firewall")?;
    let t = table()?;
    let tag = tag(req.network_name()?, &req.env.container_id, &req.env.ifname);
    let have = t.allowed().map_err(PluginError::kernel("listing firewall entries"))?;
    for ip in &prev.ips {
        if !have.iter().any(|a| a.ip == ip.address.addr() && a.tag == tag) {
            return Err(PluginError::Check(format!("no forwarding entry for {}", ip.address.addr())));
        }
    }
    if conf.same_bridge {
        let br = bridge_of(&prev)?;
        if !t.isolated().map_err(PluginError::kernel("listing isolated bridges"))?.contains(&br) {
            return Err(PluginError::Check(format!("bridge {br:?} is not isolated")));
        }
    }
    Ok(())
}

fn gc(req: &Request) -> Result<(), PluginError> {
    FirewallConf::load(req)?;
    let network = req.network_name()?;
    let valid = req.valid_attachments()?.ok_or_else(|| {
        PluginError::config(
            cni_spec::plugin::VALID_ATTACHMENTS_KEY,
            "missing (GC needs the list of valid attachments)",
        )
    })?;
    let keep: Vec<String> = valid.iter().map(|a| tag(network, &a.container_id, &a.ifname)).collect();
    table()?
        .remove_where(|t| tag_of_network(t, network) && !keep.iter().any(|k| k == t))
        .map_err(PluginError::kernel("removing stale firewall entries"))?;
    Ok(())
}
