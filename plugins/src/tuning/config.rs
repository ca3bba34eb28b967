//! The tuning plugin's options: the reference's JSON keys, where each may come from, and
//! their validation (all before anything is changed).

use std::path::PathBuf;

use cni_spec::{Request, parse};
use netkernel::link::Mac;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::PluginError;

/// Where the original values are saved by default (the reference's place).
pub const DEFAULT_DATA_DIR: &str = "/run/cni/tuning";

/// The sysctl allowlist: when the file exists, every sysctl key must match one of its
/// regular expressions (one per line).
pub const ALLOWLIST: &str = "/etc/cni/tuning/allowlist.conf";

/// The tuning plugin's own keys.
const KEYS: &[&str] = &["dataDir", "sysctl", "mac", "promisc", "mtu", "allmulti", "txQLen"];

/// The raw options, as in the reference's `TuningConf`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    data_dir: Option<String>,
    #[serde(default)]
    sysctl: Option<Map<String, Value>>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    promisc: Option<bool>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default)]
    allmulti: Option<bool>,
    #[serde(default, rename = "txQLen")]
    tx_q_len: Option<i64>,
}

/// Validated options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuningConf {
    /// Where the original values are kept between ADD and DEL.
    pub data_dir: PathBuf,
    /// Sysctls to set, in config order: (key as written, value).
    pub sysctl: Vec<(String, String)>,
    /// MAC for the container interface.
    pub mac: Option<Mac>,
    /// Promiscuous mode (only `true` changes anything, as in the reference).
    pub promisc: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// All-multicast mode.
    pub allmulti: Option<bool>,
    /// Transmit queue length.
    pub txqlen: Option<u32>,
}

impl TuningConf {
    /// Whether any link attribute is to be changed.
    pub fn changes_link(&self) -> bool {
        self.mac.is_some()
            || self.promisc
            || self.mtu.is_some()
            || self.allmulti.is_some()
            || self.txqlen.is_some()
    }

    /// Parses and validates the request's options: the config's keys, overridden by
    /// `args.cni` (and the MAC by `CNI_ARGS MAC` and `runtimeConfig.mac` too).
    pub fn load(req: &Request) -> Result<Self, PluginError> {
        let raw: Raw = req.parse_config()?;
        cni_spec::input::refuse_case_variants(&req.config.extra, KEYS, "")?;
        req.env.args.check_known(&["MAC"])?;
        let data_dir = match raw.data_dir.as_deref() {
            None | Some("") => PathBuf::from(DEFAULT_DATA_DIR),
            Some(d) => parse::abs_path(d).map_err(|e| PluginError::config("dataDir", e))?,
        };
        let mut sysctl = sysctls(raw.sysctl.as_ref(), "sysctl")?;
        let mut mac = raw.mac.map(|m| ("mac", m));
        if let Some(m) = req.env.args.get("MAC") {
            mac = Some(("CNI_ARGS MAC", m.to_string()));
        }
        if let Some(m) = req.config.runtime_config.as_ref().and_then(|r| r.mac.clone()) {
            mac = Some(("runtimeConfig.mac", m));
        }
        let mut promisc = raw.promisc.unwrap_or(false);
        let mut mtu = raw.mtu.map(|m| ("mtu", m));
        let mut allmulti = raw.allmulti;
        let mut txqlen = raw.tx_q_len.map(|q| ("txQLen", q));
        if let Some(cni) = req.config.args.as_ref().and_then(|a| a.cni.as_ref()) {
            if let Some(m) = &cni.mac {
                mac = Some(("args.cni.mac", m.clone()));
            }
            let extra = &cni.extra;
            if let Some(v) = extra.get("sysctl").filter(|v| !v.is_null()) {
                let map = v
                    .as_object()
                    .ok_or_else(|| PluginError::config("args.cni.sysctl", "must be an object of strings"))?;
                for (k, v) in sysctls(Some(map), "args.cni.sysctl")? {
                    sysctl.retain(|(old, _)| *old != k);
                    sysctl.push((k, v));
                }
            }
            if let Some(v) = extra.get("promisc").filter(|v| !v.is_null()) {
                promisc = v
                    .as_bool()
                    .ok_or_else(|| PluginError::config("args.cni.promisc", "must be a boolean"))?;
            }
            if let Some(v) = extra.get("mtu").filter(|v| !v.is_null()) {
                mtu = Some((
                    "args.cni.mtu",
                    v.as_i64().ok_or_else(|| PluginError::config("args.cni.mtu", "must be an integer"))?,
                ));
            }
            if let Some(v) = extra.get("allmulti").filter(|v| !v.is_null()) {
                allmulti = Some(
                    v.as_bool()
                        .ok_or_else(|| PluginError::config("args.cni.allmulti", "must be a boolean"))?,
                );
            }
            if let Some(v) = extra.get("txQLen").filter(|v| !v.is_null()) {
                txqlen = Some((
                    "args.cni.txQLen",
                    v.as_i64().ok_or_else(|| PluginError::config("args.cni.txQLen", "must be an integer"))?,
                ));
            }
        }
        let mac = match mac {
            None => None,
            Some(("mac", m)) if m.is_empty() => None,
            Some(("CNI_ARGS MAC", m)) => {
                Some(parse::unicast_mac(&m).map_err(|e| PluginError::env("CNI_ARGS", format!("MAC: {e}")))?)
            }
            Some((field, m)) => Some(parse::unicast_mac(&m).map_err(|e| PluginError::config(field, e))?),
        };
        let mtu = match mtu {
            None | Some((_, 0)) => None,
            Some((_, m)) if (68..=65535).contains(&m) => Some(m as u32),
            Some((field, m)) => return Err(PluginError::config(field, format!("{m} is outside 68..65535"))),
        };
        let txqlen = match txqlen {
            None => None,
            Some((_, q)) if (0..=i64::from(u32::MAX)).contains(&q) => Some(q as u32),
            Some((field, q)) => return Err(PluginError::config(field, format!("{q} is not a queue length"))),
        };
        if !sysctl.is_empty() {
            allowlisted(&sysctl, std::fs::read_to_string(ALLOWLIST).ok().as_deref())?;
        }
        Ok(TuningConf { data_dir, sysctl, mac, promisc, mtu, allmulti, txqlen })
    }
}

/// The sysctls of one map: keys that look like network sysctls, string values that can be
/// written to a sysctl file. Whether the key exists is known only inside the container.
fn sysctls(map: Option<&Map<String, Value>>, field: &str) -> Result<Vec<(String, String)>, PluginError> {
    let mut out = Vec::new();
    for (k, v) in map.into_iter().flatten() {
        let at = format!("{field}[{k:?}]");
        let Some(v) = v.as_str() else {
            return Err(PluginError::config(at, "the value must be a string"));
        };
        if v.is_empty() || v.len() > 4096 || v.chars().any(|c| c.is_control() && c != '\t') {
            return Err(PluginError::config(at, "the value must be 1 to 4096 printable characters"));
        }
        check_key(k).map_err(|why| PluginError::config(at, why))?;
        out.push((k.clone(), v.to_string()));
    }
    Ok(out)
}

/// A key as written: `net.*` (or `net/…`), with `IFNAME` standing for the interface; the
/// same rules as the kernel layer applies to the final key, checked before anything runs.
pub fn check_key(key: &str) -> Result<(), String> {
    let parts: Vec<&str> =
        if key.contains('/') { key.split('/').collect() } else { key.split('.').collect() };
    if key.len() > 256
        || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@' | '+'))
    {
        return Err(format!("{key:?} is not a sysctl key"));
    }
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return Err(format!("{key:?} has an empty, . or .. component"));
    }
    if parts[0] != "net" || parts.len() < 2 {
        return Err(format!("{key:?} is not a network sysctl: only net.* can be set"));
    }
    Ok(())
}

/// The key with `IFNAME` (a whole component) replaced by the interface name, in the slash
/// form (interface names may contain dots).
pub fn resolve_key(key: &str, ifname: &str) -> String {
    let parts: Vec<&str> =
        if key.contains('/') { key.split('/').collect() } else { key.split('.').collect() };
    let mut done = false;
    parts
        .into_iter()
        .map(|p| {
            if p == "IFNAME" && !done {
                done = true;
                ifname
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// With an allowlist, every key must match one of its expressions (code 7 naming the key).
pub fn allowlisted(sysctl: &[(String, String)], allowlist: Option<&str>) -> Result<(), PluginError> {
    let Some(text) = allowlist else { return Ok(()) };
    let mut patterns = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let re = regex::Regex::new(line).map_err(|e| {
            PluginError::Conflict(format!("{ALLOWLIST}: {line:?} is not a regular expression: {e}"))
        })?;
        patterns.push(re);
    }
    for (k, _) in sysctl {
        if !patterns.iter().any(|re| re.is_match(k)) {
            return Err(PluginError::config(format!("sysctl[{k:?}]"), format!("not allowed by {ALLOWLIST}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_spec::Environment;

    fn load(extra: &str, args: &str) -> Result<TuningConf, cni_spec::Error> {
        let env = Environment::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_NETNS" => Some("/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .unwrap();
        let conf = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"tuning"{extra}}}"#);
        let req = Request::new(env, conf.into_bytes())?;
        TuningConf::load(&req).map_err(cni_spec::Error::from)
    }

    #[test]
    fn defaults_and_precedence() {
        let c = load("", "").unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(!c.changes_link() && c.sysctl.is_empty());
        let c = load(
            r#","mac":"0a:00:00:00:00:01","sysctl":{"net.core.somaxconn":"500","net.ipv4.conf.IFNAME.forwarding":"1"},
                "runtimeConfig":{"mac":"0a:00:00:00:00:03"},
                "args":{"cni":{"mtu":1400,"sysctl":{"net.core.somaxconn":"600"},"allmulti":true}}"#,
            "MAC=0a:00:00:00:00:02",
        )
        .unwrap();
        assert_eq!(c.mac.unwrap()[5], 3);
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.allmulti, Some(true));
        assert_eq!(
            c.sysctl,
            vec![
                ("net.ipv4.conf.IFNAME.forwarding".to_string(), "1".to_string()),
                ("net.core.somaxconn".to_string(), "600".to_string())
            ]
        );
        assert_eq!(
            load(r#","mac":"0a:00:00:00:00:01""#, "MAC=0a:00:00:00:00:02").unwrap().mac.unwrap()[5],
            2
        );
    }

    #[test]
    fn rejections_name_the_field() {
        for (extra, code, field) in [
            (r#","sysctl":{"kernel.hostname":"x"}"#, 7, "sysctl[\"kernel.hostname\"]"),
            (r#","sysctl":{"net/../kernel/hostname":"x"}"#, 7, "sysctl["),
            (r#","sysctl":{"net.ipv4..ip_forward":"1"}"#, 7, "sysctl["),
            (r#","sysctl":{"net":"1"}"#, 7, "sysctl["),
            (r#","sysctl":{"/net/ipv4/ip_forward":"1"}"#, 7, "sysctl["),
            (r#","sysctl":{"net.ipv4.ip_forward":1}"#, 7, "sysctl["),
            (r#","sysctl":{"net.ipv4.ip_forward":"1\n0"}"#, 7, "sysctl["),
            (r#","sysctl":{"net.ipv4.ip_forward":""}"#, 7, "sysctl["),
            (r#","sysctl":{"net.ipv4 .ip_forward":"1"}"#, 7, "sysctl["),
            (r#","sysctl":[]"#, 7, "sysctl"),
            (r#","mac":"01:00:5e:00:00:01""#, 7, "mac"),
            (r#","mtu":20"#, 7, "mtu"),
            (r#","mtu":"1400""#, 7, "mtu"),
            (r#","txQLen":-1"#, 7, "txQLen"),
            (r#","promisc":"yes""#, 7, "promisc"),
            (r#","dataDir":"relative""#, 7, "dataDir"),
            (r#","Mtu":1400"#, 7, "Mtu"),
            (r#","args":{"cni":{"mtu":"x"}}"#, 7, "args.cni.mtu"),
            (r#","args":{"cni":{"sysctl":{"vm.swappiness":"1"}}}"#, 7, "args.cni.sysctl"),
            (r#","runtimeConfig":{"mac":"zz"}"#, 7, "runtimeConfig.mac"),
        ] {
            let e = load(extra, "").unwrap_err();
            assert_eq!(e.code, code, "{extra}: {e}");
            assert!(e.msg.contains(field), "{extra}: {e}");
        }
        let e = load("", "MAC=nope").unwrap_err();
        assert!(e.code == 4 && e.msg.contains("CNI_ARGS"), "{e}");
    }

    #[test]
    fn keys_resolve_and_allowlist() {
        assert_eq!(resolve_key("net.ipv4.conf.IFNAME.forwarding", "eth0"), "net/ipv4/conf/eth0/forwarding");
        assert_eq!(resolve_key("net/ipv4/conf/IFNAME/forwarding", "e.1"), "net/ipv4/conf/e.1/forwarding");
        let s = vec![("net.core.somaxconn".to_string(), "1".to_string())];
        assert!(allowlisted(&s, None).is_ok());
        assert!(allowlisted(&s, Some("^net\\.core\\.somaxconn$\n")).is_ok());
        let e = cni_spec::Error::from(allowlisted(&s, Some("^net\\.ipv4\\..*\n\n")).unwrap_err());
        assert_eq!(e.code, 7);
        assert!(allowlisted(&s, Some("(")).is_err());
    }
}
