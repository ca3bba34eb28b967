//! The bandwidth plugin's options: the reference's JSON keys (rates in bits per second,
//! bursts in bits), from the config or from `runtimeConfig.bandwidth` (capability
//! `bandwidth`), validated before anything is changed.

use cni_spec::Request;
use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::error::PluginError;

/// The keys of one bandwidth entry.
const KEYS: &[&str] =
    &["ingressRate", "ingressBurst", "egressRate", "egressBurst", "unshapedSubnets", "shapedSubnets"];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    runtime_config: Option<RawRuntime>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRuntime {
    #[serde(default)]
    bandwidth: Option<Value>,
}

/// One direction's limit: rate in bits per second, burst in bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Bits per second.
    pub rate: u64,
    /// Bits.
    pub burst: u64,
}

/// Which of the container's peers are shaped (`shapedSubnets` / `unshapedSubnets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnets {
    /// IPv4 and IPv6 subnets, in the config's order.
    pub nets: Vec<IpNet>,
    /// `true` for `shapedSubnets` (only these are shaped), `false` for `unshapedSubnets`
    /// (these are exempt).
    pub shaped: bool,
}

/// Validated options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BandwidthConf {
    /// Traffic to the container (shaped on the host end of its veth).
    pub ingress: Option<Limit>,
    /// Traffic from the container (redirected to an ifb device and shaped there).
    pub egress: Option<Limit>,
    /// Shaping by the peer's subnet; `None`: all traffic is shaped.
    pub subnets: Option<Subnets>,
}

impl BandwidthConf {
    /// Whether there is nothing to shape.
    pub fn is_empty(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    /// Parses and validates the request's entry. As in the reference, an entry in the
    /// config itself (any of its keys present) wins over `runtimeConfig.bandwidth`.
    pub fn load(req: &Request) -> Result<Self, PluginError> {
        let raw: Raw = req.parse_config()?;
        cni_spec::input::refuse_case_variants(&req.config.extra, KEYS, "")?;
        let top = &req.config.extra;
        if KEYS.iter().any(|k| top.get(*k).is_some_and(|v| !v.is_null())) {
            return entry(|k| top.get(k), "");
        }
        match raw.runtime_config.and_then(|r| r.bandwidth) {
            None | Some(Value::Null) => Ok(BandwidthConf::default()),
            Some(Value::Object(o)) => {
                cni_spec::input::refuse_case_variants(&o, KEYS, "runtimeConfig.bandwidth.")?;
                entry(|k| o.get(k), "runtimeConfig.bandwidth.")
            }
            Some(other) => {
                Err(PluginError::config("runtimeConfig.bandwidth", format!("{other} is not an object")))
            }
        }
    }
}

fn number(v: Option<&Value>, field: &str) -> Result<u64, PluginError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(v) => v.as_u64().ok_or_else(|| {
            PluginError::config(field, format!("{v} is not a whole number of bits (0 or more)"))
        }),
    }
}

fn limit(rate: u64, burst: u64, prefix: &str, dir: &str) -> Result<Option<Limit>, PluginError> {
    let (rf, bf) = (format!("{prefix}{dir}Rate"), format!("{prefix}{dir}Burst"));
    match (rate, burst) {
        (0, 0) => Ok(None),
        (_, 0) => Err(PluginError::config(bf, format!("must be set when {rf} is"))),
        (0, _) => Err(PluginError::config(rf, format!("must be set when {bf} is"))),
        // Under a byte: the kernel's bucket counts bytes.
        (r, _) if r < 8 => Err(PluginError::config(rf, format!("{r} bits per second is less than a byte"))),
        (_, b) if b < 8 => Err(PluginError::config(bf, format!("{b} bits is less than a byte"))),
        (_, b) if b / 8 >= u32::MAX as u64 => Err(PluginError::config(bf, "cannot be more than 4GB")),
        (rate, burst) => Ok(Some(Limit { rate, burst })),
    }
}

/// A list of subnets; empty when absent.
fn subnet_list(v: Option<&Value>, field: &str) -> Result<Vec<IpNet>, PluginError> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let f = format!("{field}[{i}]");
                let s = s.as_str().ok_or_else(|| PluginError::config(&f, format!("{s} is not a string")))?;
                s.trim().parse::<IpNet>().map_err(|_| {
                    PluginError::config(&f, format!("{s:?} is not a subnet (address/prefix, IPv4 or IPv6)"))
                })
            })
            .collect(),
        Some(v) => Err(PluginError::config(field, format!("{v} is not a list of subnets"))),
    }
}

fn entry<'a>(get: impl Fn(&str) -> Option<&'a Value>, prefix: &str) -> Result<BandwidthConf, PluginError> {
    let (uf, sf) = (format!("{prefix}unshapedSubnets"), format!("{prefix}shapedSubnets"));
    let unshaped = subnet_list(get("unshapedSubnets"), &uf)?;
    let shaped = subnet_list(get("shapedSubnets"), &sf)?;
    let subnets = match (unshaped.is_empty(), shaped.is_empty()) {
        (true, true) => None,
        (false, true) => Some(Subnets { nets: unshaped, shaped: false }),
        (true, false) => Some(Subnets { nets: shaped, shaped: true }),
        (false, false) => {
            return Err(PluginError::config(
                format!("{uf}, {sf}"),
                "only one of the two can be set: the other is everything else",
            ));
        }
    };
    let n = |k: &str| number(get(k), &format!("{prefix}{k}"));
    Ok(BandwidthConf {
        ingress: limit(n("ingressRate")?, n("ingressBurst")?, prefix, "ingress")?,
        egress: limit(n("egressRate")?, n("egressBurst")?, prefix, "egress")?,
        subnets,
    })
}

#[cfg(test)]
mod tests {
    use cni_spec::{Command, Environment};

    use super::*;

    fn load(extra: &str) -> Result<BandwidthConf, cni_spec::Error> {
        let env = Environment::new(Command::Add).container("c1", None, "eth0");
        let raw = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"bandwidth"{extra}}}"#);
        let req = Request::new(env, raw.into_bytes())?;
        BandwidthConf::load(&req).map_err(Into::into)
    }

    #[test]
    fn sources_and_precedence() {
        let c = load(r#","ingressRate":8000,"ingressBurst":800"#).unwrap();
        assert_eq!(c.ingress, Some(Limit { rate: 8000, burst: 800 }));
        assert_eq!(c.egress, None);
        let c =
            load(r#","runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":2000000}}"#).unwrap();
        assert_eq!(c.egress, Some(Limit { rate: 1_000_000, burst: 2_000_000 }));
        // The config's own entry wins, as in the reference.
        let c = load(r#","ingressRate":8000,"ingressBurst":800,"runtimeConfig":{"bandwidth":{"egressRate":1000000,"egressBurst":2000000}}"#).unwrap();
        assert_eq!((c.ingress.is_some(), c.egress), (true, None));
        assert!(load("").unwrap().is_empty());
        assert!(load(r#","runtimeConfig":{"bandwidth":{}}"#).unwrap().is_empty());
        assert!(load(r#","shapedSubnets":[]"#).unwrap().is_empty());
        let c = load(r#","ingressRate":8000,"ingressBurst":800,"unshapedSubnets":["10.0.0.5/8","fd00::/8"]"#)
            .unwrap();
        let s = c.subnets.unwrap();
        assert!(!s.shaped);
        assert_eq!(s.nets, vec!["10.0.0.5/8".parse::<IpNet>().unwrap(), "fd00::/8".parse().unwrap()]);
        let c = load(r#","runtimeConfig":{"bandwidth":{"egressRate":8000,"egressBurst":800,"shapedSubnets":["192.168.0.0/16"],"unshapedSubnets":[]}}"#).unwrap();
        assert!(c.subnets.unwrap().shaped);
    }

    #[test]
    fn bad_entries_name_the_field() {
        for (extra, code, field) in [
            (r#","ingressRate":8000"#, 7, "ingressBurst"),
            (r#","egressBurst":8000"#, 7, "egressRate"),
            (r#","ingressRate":-1,"ingressBurst":8"#, 7, "ingressRate"),
            (r#","ingressRate":1.5,"ingressBurst":8"#, 7, "ingressRate"),
            (r#","ingressRate":"8000","ingressBurst":8"#, 7, "ingressRate"),
            (r#","ingressRate":7,"ingressBurst":8000"#, 7, "ingressRate"),
            (r#","egressRate":8000,"egressBurst":4"#, 7, "egressBurst"),
            (r#","egressRate":8000,"egressBurst":34359738360"#, 7, "egressBurst"),
            (
                r#","runtimeConfig":{"bandwidth":{"ingressRate":8000}}"#,
                7,
                "runtimeConfig.bandwidth.ingressBurst",
            ),
            (r#","runtimeConfig":{"bandwidth":[1]}"#, 7, "runtimeConfig.bandwidth"),
            (
                r#","unshapedSubnets":["10.0.0.0/8"],"shapedSubnets":["fd00::/8"]"#,
                7,
                "unshapedSubnets, shapedSubnets",
            ),
            (r#","unshapedSubnets":["10.0.0.0/8","10.0.0.0"]"#, 7, "unshapedSubnets[1]"),
            (r#","unshapedSubnets":["10.0.0.0/33"]"#, 7, "unshapedSubnets[0]"),
            (r#","unshapedSubnets":[8]"#, 7, "unshapedSubnets[0]"),
            (
                r#","runtimeConfig":{"bandwidth":{"shapedSubnets":["fd00::/129"]}}"#,
                7,
                "runtimeConfig.bandwidth.shapedSubnets[0]",
            ),
            (r#","shapedSubnets":"10.0.0.0/8""#, 7, "shapedSubnets"),
            (r#","IngressRate":8000"#, 7, "IngressRate"),
        ] {
            let e = load(extra).unwrap_err();
            assert_eq!(e.code, code, "{extra}: {e:?}");
            assert!(e.msg.contains(field), "{extra}: {}", e.msg);
        }
    }
}
