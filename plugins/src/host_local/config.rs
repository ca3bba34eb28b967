//! host-local's configuration: the `ipam` section plus `runtimeConfig.ipRanges`,
//! `runtimeConfig.ips`, `args.cni.ips` and `CNI_ARGS` `IP=`, merged and validated as the
//! reference's `LoadIPAMConfig` does, before anything touches the disk.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_spec::config::Object;
use cni_spec::{CniArgs, NetConf, Route, Version};
use serde_json::Value;

use super::error::HostLocalError;
use super::range::{RangeSet, RangeSpec};

/// host-local's keys in `ipam`.
const IPAM_KEYS: &[&str] =
    &["type", "subnet", "rangeStart", "rangeEnd", "gateway", "ranges", "routes", "dataDir", "resolvConf"];
/// The keys of a range.
const RANGE_KEYS: &[&str] = &["subnet", "rangeStart", "rangeEnd", "gateway"];

/// Where leases live when `ipam.dataDir` is not set.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The network name: the store directory's name under `data_dir`.
    pub network: String,
    /// `ipam.dataDir`.
    pub data_dir: PathBuf,
    /// Range sets in allocation order: `runtimeConfig.ipRanges`, the legacy top-level
    /// range, then `ipam.ranges`. Set `i` records its last lease in `last_reserved_ip.i`.
    pub sets: Vec<RangeSet>,
    /// `ipam.routes`, copied into the result.
    pub routes: Vec<Route>,
    /// `ipam.resolvConf`.
    pub resolv_conf: Option<PathBuf>,
}

impl Config {
    /// Reads and validates the config of a request of spec `version`.
    pub fn load(conf: &NetConf, version: Version) -> Result<Config, HostLocalError> {
        let network = conf.name.clone().ok_or_else(|| HostLocalError::config("name", "missing"))?;
        let ipam = conf.ipam.as_ref().ok_or_else(|| {
            HostLocalError::config("ipam", "missing (host-local needs an \"ipam\" section)")
        })?;
        let obj = &ipam.extra;
        cni_spec::input::refuse_case_variants(obj, IPAM_KEYS, "ipam")?;

        // The network's store is a directory named after it.
        cni_spec::parse::file_name(&network).map_err(|e| HostLocalError::config("name", e))?;
        let path = |field: &str, s: Option<String>| -> Result<Option<PathBuf>, HostLocalError> {
            match s.filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => {
                    cni_spec::parse::abs_path(&s).map(Some).map_err(|e| HostLocalError::config(field, e))
                }
            }
        };
        let data_dir = path("ipam.dataDir", string(obj, "dataDir", "ipam.dataDir")?)?;
        let resolv_conf = path("ipam.resolvConf", string(obj, "resolvConf", "ipam.resolvConf")?)?;
        if let Some(d) = &data_dir
            && d.join(&network).as_os_str().len() + 1 + "last_reserved_ip.0.spare".len()
                >= cni_spec::parse::PATH_MAX
        {
            return Err(HostLocalError::config(
                "ipam.dataDir",
                "too long for the network's files to fit in a path",
            ));
        }
        let routes = routes(obj)?;

        // The reference's order: runtime ranges first, then the legacy range, then `ranges`.
        let mut specs: Vec<(String, Vec<RangeSpec>)> = Vec::new();
        if let Some(sets) = conf.runtime_config.as_ref().and_then(|rc| rc.ip_ranges.as_ref()) {
            for (i, set) in sets.iter().enumerate() {
                let path = format!("runtimeConfig.ipRanges[{i}]");
                let ranges = set
                    .iter()
                    .enumerate()
                    .map(|(j, r)| RangeSpec {
                        path: format!("{path}[{j}]"),
                        subnet: Some(r.subnet.clone()),
                        range_start: r.range_start.clone(),
                        range_end: r.range_end.clone(),
                        gateway: r.gateway.clone(),
                    })
                    .collect();
                specs.push((path, ranges));
            }
        }
        if let Some(subnet) = string(obj, "subnet", "ipam.subnet")? {
            // rangeStart/rangeEnd/gateway without a subnet are ignored, as by the reference.
            let legacy = RangeSpec {
                path: "ipam".into(),
                subnet: Some(subnet),
                range_start: string(obj, "rangeStart", "ipam.rangeStart")?,
                range_end: string(obj, "rangeEnd", "ipam.rangeEnd")?,
                gateway: string(obj, "gateway", "ipam.gateway")?,
            };
            specs.push(("ipam".into(), vec![legacy]));
        }
        specs.extend(ranges(obj)?);
        if specs.is_empty() {
            return Err(HostLocalError::config("ipam.ranges", "no IP ranges specified"));
        }

        let sets =
            specs.iter().map(|(path, ranges)| RangeSet::new(path, ranges)).collect::<Result<Vec<_>, _>>()?;

        // Spec 0.1.0 and 0.2.0 results carry one address per family.
        if !version.has_chaining() {
            let v4 = sets.iter().filter(|s| s.is_v4()).count();
            if v4 > 1 || sets.len() - v4 > 1 {
                return Err(HostLocalError::config(
                    "ipam.ranges",
                    format!("CNI version {version} does not support more than 1 address per family"),
                ));
            }
        }
        // Ranges within a set are disjoint already: an overlap is between two sets.
        let all: Vec<(usize, &super::range::Range)> =
            sets.iter().enumerate().flat_map(|(i, s)| s.ranges.iter().map(move |r| (i, r))).collect();
        let spans =
            all.iter().map(|(_, r)| (r.is_v4(), super::range::to_num(r.start), super::range::to_num(r.end)));
        if let Some((a, b)) = super::range::first_overlap(spans) {
            let (i, j) = (all[a].0.min(all[b].0), all[a].0.max(all[b].0));
            return Err(HostLocalError::config(
                &sets[j].path,
                format!("range set {j} overlaps with range set {i} ({})", sets[i].path),
            ));
        }

        Ok(Config {
            network,
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            sets,
            routes,
            resolv_conf,
        })
    }

    /// The store directory: `<dataDir>/<network>`.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.join(&self.network)
    }

    /// The requested address of each range set (ADD only): `CNI_ARGS` `IP=`, then
    /// `args.cni.ips`, then `runtimeConfig.ips`. Each must lie in a range set, at most one per
    /// set, and not be the gateway; a violation fails the ADD before anything is allocated,
    /// naming where the address came from.
    pub fn requested(
        &self,
        conf: &NetConf,
        env_args: &CniArgs,
    ) -> Result<Vec<Option<IpAddr>>, HostLocalError> {
        let env_err = |why: String| HostLocalError::Env { var: "CNI_ARGS", why };
        let mut wanted: Vec<(String, IpAddr)> = Vec::new();
        if !env_args.pairs.is_empty() {
            // As Go's LoadArgs: unknown keys fail unless IgnoreUnknown is set.
            env_args
                .check_known(&["IP"])
                .map_err(|e| env_err(e.msg.trim_start_matches("CNI_ARGS: ").into()))?;
            if let Some(v) = env_args.get("IP") {
                let ip =
                    parse_requested(v).ok_or_else(|| env_err(format!("IP: invalid IP address {v:?}")))?;
                wanted.push(("CNI_ARGS IP".into(), ip));
            }
        }
        let lists = [
            ("args.cni.ips", conf.args.as_ref().and_then(|a| a.cni.as_ref()).and_then(|c| c.ips.as_ref())),
            ("runtimeConfig.ips", conf.runtime_config.as_ref().and_then(|rc| rc.ips.as_ref())),
        ];
        for (name, list) in lists {
            for (i, v) in list.into_iter().flatten().enumerate() {
                let field = format!("{name}[{i}]");
                let ip = parse_requested(v)
                    .ok_or_else(|| HostLocalError::config(&field, format!("invalid IP address {v:?}")))?;
                wanted.push((field, ip));
            }
        }

        let mut per_set: Vec<Option<IpAddr>> = vec![None; self.sets.len()];
        for (source, ip) in wanted {
            let fail = |why: String| {
                if source.starts_with("CNI_ARGS") {
                    env_err(format!("IP: {why}"))
                } else {
                    HostLocalError::config(&source, why)
                }
            };
            let Some(i) = self.sets.iter().position(|s| s.contains(ip)) else {
                return Err(fail(format!(
                    "failed to allocate all requested IPs: {ip} is not in any range set"
                )));
            };
            match per_set[i] {
                Some(other) if other == ip => continue, // the same address asked twice
                Some(other) => {
                    return Err(fail(format!(
                        "failed to allocate all requested IPs: {ip} (range set {i} already has requested IP {other}; one address per range set)"
                    )));
                }
                None => {}
            }
            let range = self.sets[i].range_for(ip).expect("the set contains it");
            if range.gateway == ip {
                return Err(fail(format!("requested ip {ip} is subnet's gateway")));
            }
            per_set[i] = Some(ip);
        }
        Ok(per_set)
    }
}

/// A requested address: a plain address, or one with a prefix length (as the `ips`
/// capability allows).
fn parse_requested(s: &str) -> Option<IpAddr> {
    let ip = cni_spec::parse::ip(s).ok().or_else(|| cni_spec::parse::prefix(s).ok().map(|n| n.addr()))?;
    Some(ip.to_canonical())
}

/// An optional string field; `null` counts as absent.
fn string(obj: &Object, key: &str, field: &str) -> Result<Option<String>, HostLocalError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(HostLocalError::config(field, format!("must be a string, got {other}"))),
    }
}

fn routes(obj: &Object) -> Result<Vec<Route>, HostLocalError> {
    match obj.get("routes") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("ipam.routes[{i}]");
                let route: Route = cni_spec::input::from_value_at(r.clone(), &field)?;
                if let Some(gw) = route.gw
                    && gw.is_ipv4() != route.dst.addr().is_ipv4()
                {
                    return Err(HostLocalError::config(
                        format!("{field}.gw"),
                        format!("{gw} is not of the family of {}", route.dst),
                    ));
                }
                Ok(route)
            })
            .collect(),
        Some(other) => Err(HostLocalError::config("ipam.routes", format!("must be a list, got {other}"))),
    }
}

/// `ipam.ranges`: a list of range sets, each a list of range objects.
fn ranges(obj: &Object) -> Result<Vec<(String, Vec<RangeSpec>)>, HostLocalError> {
    let sets = match obj.get("ranges") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(sets)) => sets,
        Some(other) => {
            return Err(HostLocalError::config(
                "ipam.ranges",
                format!("must be a list of range sets, got {other}"),
            ));
        }
    };
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        let path = format!("ipam.ranges[{i}]");
        let Value::Array(list) = set else {
            return Err(HostLocalError::config(&path, format!("must be a list of ranges, got {set}")));
        };
        let mut specs = Vec::with_capacity(list.len());
        for (j, r) in list.iter().enumerate() {
            let rpath = format!("{path}[{j}]");
            let Value::Object(r) = r else {
                return Err(HostLocalError::config(&rpath, format!("must be an object, got {r}")));
            };
            cni_spec::input::refuse_case_variants(r, RANGE_KEYS, &rpath)?;
            specs.push(RangeSpec {
                subnet: string(r, "subnet", &format!("{rpath}.subnet"))?,
                range_start: string(r, "rangeStart", &format!("{rpath}.rangeStart"))?,
                range_end: string(r, "rangeEnd", &format!("{rpath}.rangeEnd"))?,
                gateway: string(r, "gateway", &format!("{rpath}.gateway"))?,
                path: rpath,
            });
        }
        out.push((path, specs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<Config, HostLocalError> {
        let conf = NetConf::parse(json.as_bytes()).unwrap();
        Config::load(&conf, conf.version().unwrap())
    }

    fn load_err(json: &str) -> String {
        let e = load(json).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    fn net(version: &str, ipam: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"mynet","type":"ipvlan","master":"foo0","ipam":{ipam}}}"#
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn old_style() {
        let c = load(&net(
            "0.3.1",
            r#"{"type":"host-local","subnet":"10.1.2.0/24","rangeStart":"10.1.2.9","rangeEnd":"10.1.2.20","gateway":"10.1.2.30"}"#,
        ))
        .unwrap();
        assert_eq!(c.network, "mynet");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.dir(), PathBuf::from("/var/lib/cni/networks/mynet"));
        assert_eq!(c.sets.len(), 1);
        let r = &c.sets[0].ranges[0];
        assert_eq!((r.start, r.end, r.gateway), (ip("10.1.2.9"), ip("10.1.2.20"), ip("10.1.2.30")));
        assert_eq!(c.sets[0].path, "ipam");
    }

    #[test]
    fn new_style_and_mixed_with_runtime_ranges() {
        let c = load(
            r#"{"cniVersion":"0.3.1","name":"mynet","type":"ipvlan",
                "runtimeConfig":{"ipRanges":[[{"subnet":"192.168.0.0/24"}]]},
                "ipam":{"type":"host-local","subnet":"10.1.2.0/24","dataDir":"/tmp/x","resolvConf":"/etc/r",
                  "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.2.1"}],
                  "ranges":[[{"subnet":"11.1.2.0/24","rangeStart":"11.1.2.9","rangeEnd":"11.1.2.20","gateway":"11.1.2.30"},
                             {"subnet":"12.1.2.0/24"}],
                            [{"subnet":"2001:db8:1::/64"}]]}}"#,
        )
        .unwrap();
        let paths: Vec<_> = c.sets.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["runtimeConfig.ipRanges[0]", "ipam", "ipam.ranges[0]", "ipam.ranges[1]"]);
        assert_eq!(c.sets[2].ranges.len(), 2);
        assert_eq!(c.sets[2].ranges[0].gateway, ip("11.1.2.30"));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(ip("10.1.2.1")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/r")));
    }

    #[test]
    fn every_error_names_its_field() {
        let cases = [
            (r#"{"type":"host-local"}"#, "ipam.ranges: no IP ranges specified"),
            (r#"{"type":"host-local","ranges":[]}"#, "ipam.ranges: no IP ranges specified"),
            (r#"{"type":"host-local","ranges":{}}"#, "ipam.ranges: must be a list"),
            (r#"{"type":"host-local","ranges":[{}]}"#, "ipam.ranges[0]: must be a list of ranges"),
            (r#"{"type":"host-local","ranges":[[]]}"#, "ipam.ranges[0]: empty range set"),
            (r#"{"type":"host-local","ranges":[[1]]}"#, "ipam.ranges[0][0]: must be an object"),
            (r#"{"type":"host-local","ranges":[[{}]]}"#, "ipam.ranges[0][0].subnet: missing"),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":5}]]}"#,
                "ipam.ranges[0][0].subnet: must be a string",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.9.0.0/31"}]]}"#,
                "ipam.ranges[0][1].subnet: Network 10.9.0.0/31 too small to allocate from",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.5/24"}]]}"#,
                "ipam.ranges[0][0].subnet: Network has host bits set",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}]]}"#,
                "ipam.ranges[0][0].rangeStart: 10.0.1.5 not in network 10.0.0.0/24",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.1.5"}]]}"#,
                "ipam.ranges[0][0].rangeEnd: 10.0.1.5 not in network",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}]]}"#,
                "ipam.ranges[0][0].gateway: gateway 10.0.1.1 not in network",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"2001:db8::/64"}]]}"#,
                "ipam.ranges[0][1]: mixed address families",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24","rangeEnd":"10.1.2.128"},{"subnet":"10.1.2.0/24","rangeStart":"10.1.2.15"}]]}"#,
                "ipam.ranges[0][1]: subnets 10.1.2.1-10.1.2.128 and 10.1.2.15-10.1.2.254 overlap",
            ),
            (
                r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"10.1.0.0/16"}]]}"#,
                "ipam.ranges[1]: range set 1 overlaps with range set 0 (ipam.ranges[0])",
            ),
            (
                r#"{"type":"host-local","subnet":"10.1.2.0/24","ranges":[[{"subnet":"10.1.2.0/24"}]]}"#,
                "ipam.ranges[0]: range set 1 overlaps with range set 0 (ipam)",
            ),
            (r#"{"type":"host-local","subnet":"10.1.2.0"}"#, "ipam.subnet: invalid CIDR address"),
            (
                r#"{"type":"host-local","subnet":"10.1.2.0/24","gateway":"10.1.3.1"}"#,
                "ipam.gateway: gateway 10.1.3.1",
            ),
            (r#"{"type":"host-local","subnet":"10.1.2.0/24","dataDir":7}"#, "ipam.dataDir: must be a string"),
            (r#"{"type":"host-local","subnet":"10.1.2.0/24","routes":{}}"#, "ipam.routes: must be a list"),
            (
                r#"{"type":"host-local","subnet":"10.1.2.0/24","routes":[{"dst":"x"}]}"#,
                "ipam.routes[0].dst: ",
            ),
            (
                r#"{"type":"host-local","subnet":"10.1.2.0/24","routes":[["0.0.0.0/0"]]}"#,
                "ipam.routes[0]: invalid type",
            ),
            (
                r#"{"type":"host-local","subnet":"10.1.2.0/24","routes":[{"dst":"0.0.0.0/0","gw":"2001:db8::1"}]}"#,
                "ipam.routes[0].gw: 2001:db8::1 is not of the family",
            ),
            (r#"{"type":"host-local","subnet":"10.88.200.0/24\n"}"#, "ipam.subnet: invalid CIDR"),
            (r#"{"type":"host-local","subnet":"010.088.200.000/24"}"#, "ipam.subnet: invalid CIDR"),
            (r#"{"type":"host-local","subnet":"10.1.2.0/24","dataDir":"relative/dir"}"#, "ipam.dataDir: "),
            (r#"{"type":"host-local","subnet":"10.1.2.0/24","resolvConf":"/a/../b"}"#, "ipam.resolvConf: "),
        ];
        for (ipam, expected) in cases {
            let e = load_err(&net("1.0.0", ipam));
            let expected = format!("invalid network config: {expected}");
            assert!(e.starts_with(&expected), "{ipam}\n got: {e}\nwant: {expected}");
        }
        assert_eq!(
            load_err(r#"{"cniVersion":"1.0.0","name":"n","type":"x"}"#),
            "invalid network config: ipam: missing (host-local needs an \"ipam\" section)"
        );
        assert_eq!(
            load_err(r#"{"cniVersion":"1.0.0","type":"x","ipam":{"subnet":"10.0.0.0/24"}}"#),
            "invalid network config: name: missing"
        );
        let e = load_err(
            r#"{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{"ipRanges":[[{"subnet":"10.0.0.0/31"}]]},"ipam":{}}"#,
        );
        assert!(
            e.starts_with("invalid network config: runtimeConfig.ipRanges[0][0].subnet: Network 10.0.0.0/31"),
            "{e}"
        );
    }

    #[test]
    fn one_address_per_family_below_0_3_0() {
        let two_v4 =
            r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"11.1.2.0/24"}]]}"#;
        for v in ["0.1.0", "0.2.0"] {
            assert_eq!(
                load_err(&net(v, two_v4)),
                format!(
                    "invalid network config: ipam.ranges: CNI version {v} does not support more than 1 address per family"
                )
            );
        }
        assert!(load(&net("0.3.0", two_v4)).is_ok());
        let dual =
            r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"2001:db8:1::/64"}]]}"#;
        assert!(load(&net("0.2.0", dual)).is_ok());
        // Several subnets in one set are still one address.
        let pool = r#"{"type":"host-local","ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"10.1.3.0/24"}]]}"#;
        assert!(load(&net("0.1.0", pool)).is_ok());
    }

    fn requested(json: &str, cni_args: &str) -> Result<Vec<Option<IpAddr>>, HostLocalError> {
        let conf = NetConf::parse(json.as_bytes()).unwrap();
        let c = Config::load(&conf, conf.version().unwrap())?;
        c.requested(&conf, &CniArgs::parse(cni_args).unwrap())
    }

    const THREE_SETS: &str = r#""ipam":{"type":"host-local","ranges":[
        [{"subnet":"10.1.2.0/24","rangeStart":"10.1.2.9","rangeEnd":"10.1.2.20","gateway":"10.1.2.30"}],
        [{"subnet":"11.1.2.0/24","rangeStart":"11.1.2.9","rangeEnd":"11.1.2.20","gateway":"11.1.2.30"}],
        [{"subnet":"2001:db8:1::/64"}]]}"#;

    #[test]
    fn requested_ips_from_every_source() {
        let json = format!(
            r#"{{"cniVersion":"0.3.1","name":"n","type":"x","args":{{"cni":{{"ips":["11.1.2.11","2001:db8:1::11/64"]}}}},{THREE_SETS}}}"#
        );
        let got = requested(&json, "IP=10.1.2.10").unwrap();
        assert_eq!(got, [Some(ip("10.1.2.10")), Some(ip("11.1.2.11")), Some(ip("2001:db8:1::11"))]);
        assert_eq!(requested(&json, "").unwrap()[0], None);

        let json = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"x","runtimeConfig":{{"ips":["10.1.2.12/24"]}},{THREE_SETS}}}"#
        );
        assert_eq!(requested(&json, "IgnoreUnknown=1;K8S_POD_NAME=p").unwrap()[0], Some(ip("10.1.2.12")));
        // The same address from two sources is one request.
        assert_eq!(requested(&json, "IP=10.1.2.12").unwrap()[0], Some(ip("10.1.2.12")));
    }

    #[test]
    fn requested_ip_errors_name_their_source() {
        let base =
            |extra: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"x",{extra}{THREE_SETS}}}"#);
        let e = requested(&base(""), "K8S_POD_NAME=p").unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().starts_with("CNI_ARGS: unknown key \"K8S_POD_NAME\""), "{e}");
        let e = requested(&base(""), "IP=nope").unwrap_err();
        assert_eq!((e.code(), e.to_string()), (4, "CNI_ARGS: IP: invalid IP address \"nope\"".into()));
        let e = requested(&base(""), "IP=2001:db8:1::1").unwrap_err();
        assert_eq!(e.to_string(), "CNI_ARGS: IP: requested ip 2001:db8:1::1 is subnet's gateway");
        // A gateway outside rangeStart..rangeEnd is simply not in the set.
        let e = requested(&base(""), "IP=10.1.2.30").unwrap_err();
        assert!(e.to_string().contains("10.1.2.30 is not in any range set"), "{e}");
        let e = requested(&base(""), "IP=10.1.2.21").unwrap_err();
        assert!(e.to_string().contains("10.1.2.21 is not in any range set"), "{e}");

        let e = requested(&base(r#""args":{"cni":{"ips":["10.1.2.10","10.9.9.9"]}},"#), "").unwrap_err();
        assert_eq!(e.code(), 7);
        assert_eq!(
            e.to_string(),
            "invalid network config: args.cni.ips[1]: failed to allocate all requested IPs: 10.9.9.9 is not in any range set"
        );
        let e = requested(&base(r#""args":{"cni":{"ips":["10.1.2.10","10.1.2.11"]}},"#), "").unwrap_err();
        assert!(e.to_string().starts_with("invalid network config: args.cni.ips[1]: failed to allocate all requested IPs: 10.1.2.11 (range set 0 already has requested IP 10.1.2.10"), "{e}");
        let e = requested(&base(r#""runtimeConfig":{"ips":["x"]},"#), "").unwrap_err();
        assert_eq!(e.to_string(), "invalid network config: runtimeConfig.ips[0]: invalid IP address \"x\"");
        let e = requested(&base(r#""runtimeConfig":{"ips":["2001:db8:1::1/64"]},"#), "").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid network config: runtimeConfig.ips[0]: requested ip 2001:db8:1::1 is subnet's gateway"
        );
    }
}
