//! The network config stored at `<prefix>/config`: flannel's `net-conf.json`, with its
//! defaults and validations, except that `Backend` defaults to vxlan.
//!
//! Parsing is by hand over a JSON object rather than with a derived struct: Go's
//! `encoding/json` matches field names case-insensitively, so existing flannel configs may
//! say `"network"`; and every error has to name the field it is about.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{Map, Value, json};

/// VXLAN network identifiers are 24 bits on the wire.
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Why a network config was rejected; `field` is the JSON name of the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Not JSON at all.
    #[error("network config is not valid JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("network config must be a JSON object")]
    NotObject,
    /// A field has a bad value.
    #[error("{field}: {reason}")]
    Field {
        /// JSON field name (`Backend.VNI` for nested ones).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn field(field: &str, reason: impl Into<String>) -> Self {
        ConfigError::Field { field: field.to_string(), reason: reason.into() }
    }

    /// The field at fault, if the error is about one.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The range of per-node subnets one address family hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetPool {
    /// The cluster network (`Network` / `IPv6Network`).
    pub network: IpNet,
    /// Prefix length of each node's subnet.
    pub subnet_len: u8,
    /// First subnet that may be leased (its network address).
    pub subnet_min: IpAddr,
    /// Last subnet that may be leased.
    pub subnet_max: IpAddr,
}

/// Backend types overlayd knows. flannel's `wireguard` is read as vxlan plus the
/// `Encryption` section (see [`NetworkConfig::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// L3 VXLAN, flannel's default.
    Vxlan(VxlanOptions),
    /// flannel's `host-gw`: a route per peer via its underlay address, no encapsulation;
    /// every node must be on the same L2 network.
    HostGw,
}

/// vxlan options, as flannel names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    /// VXLAN network identifier (`VNI`, default 1).
    pub vni: u32,
    /// UDP port (`Port`, 0 = the kernel's default 8472).
    pub port: u16,
    /// Route directly when peers share the underlay subnet (`DirectRouting`).
    pub direct_routing: bool,
    /// MTU of the VXLAN device (`MTU`, 0 = derived from the underlay).
    pub mtu: u32,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions { vni: 1, port: 0, direct_routing: false, mtu: 0 }
    }
}

impl BackendConfig {
    /// The `Type` string, as stored in leases' `BackendType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::HostGw => "host-gw",
        }
    }
}

/// The `Encryption` section as stored: `Type` plus the other keys untouched (typed and
/// validated by [`crate::encryption::EncryptionSettings`]), so unknown future keys survive
/// a round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionConfig {
    /// `Type`, e.g. `wireguard`.
    pub kind: Option<String>,
    /// Every other key, untouched.
    pub options: Map<String, Value>,
}

/// A validated network config with flannel's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// IPv4 pool, when `EnableIPv4`.
    pub ipv4: Option<SubnetPool>,
    /// IPv6 pool, when `EnableIPv6`.
    pub ipv6: Option<SubnetPool>,
    /// `Backend`.
    pub backend: BackendConfig,
    /// `Encryption`, when present.
    pub encryption: Option<EncryptionConfig>,
    /// `EnableNFTables` (kept for compatibility; masquerading arrives later).
    pub enable_nftables: bool,
    /// `RequireSignedLeases`: a lease must carry a valid signature by its node's identity key
    /// (see docs/security.md); off by default so flannel nodes and older overlayds can join.
    pub require_signed_leases: bool,
}

/// A parsed config plus what was accepted but deserves a log line.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The config.
    pub config: NetworkConfig,
    /// Unknown fields and silently repaired values.
    pub warnings: Vec<String>,
}

const KNOWN: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
    "Encryption",
    "EnableNFTables",
    "RequireSignedLeases",
];

/// Case-insensitive field access, as Go's `encoding/json` does it.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj
            .get(name)
            .or_else(|| self.obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
            .filter(|v| !v.is_null())
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(ConfigError::field(&self.name(name), format!("expected true or false, got {v}"))),
        }
    }

    fn uint(&self, name: &str, max: u64) -> Result<Option<u64>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(x) if x <= max => Ok(Some(x)),
                _ => Err(ConfigError::field(
                    &self.name(name),
                    format!("expected an integer from 0 to {max}, got {n}"),
                )),
            },
            Some(v) => Err(ConfigError::field(&self.name(name), format!("expected an integer, got {v}"))),
        }
    }

    fn str(&self, name: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ConfigError::field(&self.name(name), format!("expected a string, got {v}"))),
        }
    }
}

impl NetworkConfig {
    /// Parses and validates `net-conf.json` text.
    pub fn parse(text: &str) -> Result<Parsed, ConfigError> {
        let v: Value = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        Self::from_value(&v)
    }

    /// Parses and validates a JSON value.
    pub fn from_value(v: &Value) -> Result<Parsed, ConfigError> {
        let obj = v.as_object().ok_or(ConfigError::NotObject)?;
        let f = Fields { obj, prefix: "" };
        let mut warnings = Vec::new();
        for k in obj.keys() {
            if !KNOWN.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                warnings.push(format!("unknown field {k:?} ignored"));
            }
        }
        let enable_v4 = f.bool("EnableIPv4", true)?;
        let enable_v6 = f.bool("EnableIPv6", false)?;
        if !enable_v4 && !enable_v6 {
            return Err(ConfigError::field(
                "EnableIPv4",
                "EnableIPv4 and EnableIPv6 are both false: nothing to lease",
            ));
        }
        let ipv4 = if enable_v4 { Some(pool(&f, Family::V4, &mut warnings)?) } else { None };
        let ipv6 = if enable_v6 { Some(pool(&f, Family::V6, &mut warnings)?) } else { None };
        // flannel's `ipsec` and `wireguard` backends become the vxlan datapath with the
        // encryption they stand for.
        let migrated_ipsec = flannel_ipsec(f.get("Backend"), &mut warnings)?;
        let (backend, from_wireguard) = match migrated_ipsec {
            Some(_) => (BackendConfig::Vxlan(VxlanOptions::default()), None),
            None => backend(f.get("Backend"), &mut warnings)?,
        };
        let mut encryption = match f.get("Encryption") {
            // An explicit Encryption section wins over flannel's ipsec backend (see its warning).
            None if migrated_ipsec.is_some() => migrated_ipsec,
            None => None,
            Some(Value::Object(m)) => {
                let ef = Fields { obj: m, prefix: "Encryption." };
                let kind = ef.str("Type")?.map(str::to_string);
                let options = m
                    .iter()
                    .filter(|(k, _)| !k.eq_ignore_ascii_case("Type"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                Some(EncryptionConfig { kind, options })
            }
            Some(v) => {
                return Err(ConfigError::field("Encryption", format!("expected an object, got {v}")));
            }
        };
        if let Some(mapped) = from_wireguard {
            if encryption.is_some() {
                return Err(ConfigError::field(
                    "Backend.Type",
                    "\"wireguard\" is read as vxlan plus an Encryption section, and this config has an \
                     Encryption section too: keep one (Backend {\"Type\":\"vxlan\"} with Encryption is \
                     what `overlayctl encryption` manages)",
                ));
            }
            encryption = Some(mapped);
        }
        // Validated here so that `overlayctl network set` refuses a bad section up front.
        let (enc, enc_warnings) = crate::encryption::EncryptionSettings::from_config(encryption.as_ref())?;
        warnings.extend(enc_warnings);
        if enc.enabled && backend == BackendConfig::HostGw {
            return Err(ConfigError::field(
                "Backend.Type",
                "host-gw sends pod traffic unencapsulated on the underlay, so it cannot carry the \
                 encryption the Encryption section asks for: use vxlan, or turn encryption off",
            ));
        }
        let enable_nftables = f.bool("EnableNFTables", false)?;
        let require_signed_leases = f.bool("RequireSignedLeases", false)?;
        Ok(Parsed {
            config: NetworkConfig { ipv4, ipv6, backend, encryption, enable_nftables, require_signed_leases },
            warnings,
        })
    }

    /// The typed `Encryption` settings (the section was validated by the parser).
    pub fn encryption_settings(&self) -> crate::encryption::EncryptionSettings {
        crate::encryption::EncryptionSettings::from_config(self.encryption.as_ref())
            .map(|(s, _)| s)
            .unwrap_or_else(|_| crate::encryption::EncryptionSettings::off())
    }

    /// The config as flannel-style JSON, with every default written out.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("EnableIPv4".into(), json!(self.ipv4.is_some()));
        m.insert("EnableIPv6".into(), json!(self.ipv6.is_some()));
        if let Some(p) = &self.ipv4 {
            m.insert("Network".into(), json!(p.network.to_string()));
            m.insert("SubnetLen".into(), json!(p.subnet_len));
            m.insert("SubnetMin".into(), json!(p.subnet_min.to_string()));
            m.insert("SubnetMax".into(), json!(p.subnet_max.to_string()));
        }
        if let Some(p) = &self.ipv6 {
            m.insert("IPv6Network".into(), json!(p.network.to_string()));
            m.insert("IPv6SubnetLen".into(), json!(p.subnet_len));
            m.insert("IPv6SubnetMin".into(), json!(p.subnet_min.to_string()));
            m.insert("IPv6SubnetMax".into(), json!(p.subnet_max.to_string()));
        }
        let backend = match &self.backend {
            BackendConfig::Vxlan(o) => json!({"Type": "vxlan", "VNI": o.vni, "Port": o.port,
                   "DirectRouting": o.direct_routing, "MTU": o.mtu}),
            BackendConfig::HostGw => json!({"Type": "host-gw"}),
        };
        m.insert("Backend".into(), backend);
        if let Some(e) = &self.encryption {
            let mut em = e.options.clone();
            if let Some(k) = &e.kind {
                em.insert("Type".into(), json!(k));
            }
            m.insert("Encryption".into(), Value::Object(em));
        }
        m.insert("EnableNFTables".into(), json!(self.enable_nftables));
        m.insert("RequireSignedLeases".into(), json!(self.require_signed_leases));
        Value::Object(m)
    }
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
    fn field(self, base: &'static str) -> &'static str {
        match (self, base) {
            (Family::V4, b) => b,
            (Family::V6, "Network") => "IPv6Network",
            (Family::V6, "SubnetLen") => "IPv6SubnetLen",
            (Family::V6, "SubnetMin") => "IPv6SubnetMin",
            (Family::V6, "SubnetMax") => "IPv6SubnetMax",
            (Family::V6, b) => b,
        }
    }
}

/// Address as an integer, for either family.
pub(crate) fn addr_to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(crate) fn u128_to_addr(x: u128, v6: bool) -> IpAddr {
    if v6 { IpAddr::V6(Ipv6Addr::from(x)) } else { IpAddr::V4(Ipv4Addr::from(x as u32)) }
}

fn pool(f: &Fields, fam: Family, warnings: &mut Vec<String>) -> Result<SubnetPool, ConfigError> {
    let nf = fam.field("Network");
    let text = f.str(nf)?.ok_or_else(|| {
        ConfigError::field(
            nf,
            format!(
                "required when {} is true",
                match fam {
                    Family::V4 => "EnableIPv4",
                    Family::V6 => "EnableIPv6",
                }
            ),
        )
    })?;
    let given: IpNet = text.parse().map_err(|_| ConfigError::field(nf, format!("{text:?} is not a CIDR")))?;
    let network = match (fam, given) {
        (Family::V4, IpNet::V4(n)) => IpNet::V4(n.trunc()),
        (Family::V6, IpNet::V6(n)) => IpNet::V6(n.trunc()),
        _ => {
            return Err(ConfigError::field(nf, format!("{text} is not an {} network", fam_name(fam))));
        }
    };
    if network != given {
        // Go's net.ParseCIDR masks the host bits, so flannel accepted this; say so.
        warnings.push(format!("{nf}: {given} has host bits set, using {network}"));
    }
    let plen = network.prefix_len();
    let bits = fam.bits();
    let lf = fam.field("SubnetLen");
    let subnet_len = match f.uint(lf, bits as u64)? {
        Some(l) if l > 0 => {
            let l = l as u8;
            let max = bits - 2;
            if l > max {
                return Err(ConfigError::field(lf, format!("/{l} is too small a subnet: at most /{max}")));
            }
            if l < plen + 2 {
                return Err(ConfigError::field(
                    lf,
                    format!(
                        "{nf} {network} must hold at least four /{l} subnets (SubnetLen >= {})",
                        plen + 2
                    ),
                ));
            }
            l
        }
        _ => {
            let (smallest, default, threshold) = match fam {
                Family::V4 => (28, 24, 22),
                Family::V6 => (124, 64, 62),
            };
            if plen > smallest {
                return Err(ConfigError::field(
                    nf,
                    format!("{network} is too small: the smallest useful network is /{smallest}"),
                ));
            }
            if plen <= threshold { default } else { plen + 2 }
        }
    };
    let v6 = matches!(fam, Family::V6);
    let size: u128 = 1u128 << (bits - subnet_len);
    let net_start = addr_to_u128(network.network());
    let net_end = addr_to_u128(network.broadcast());
    let bound = |name: &'static str, default: u128| -> Result<u128, ConfigError> {
        let field = fam.field(name);
        let Some(s) = f.str(field)? else {
            return Ok(default);
        };
        let a: IpAddr =
            s.parse().map_err(|_| ConfigError::field(field, format!("{s:?} is not an IP address")))?;
        if a.is_ipv6() != v6 {
            return Err(ConfigError::field(field, format!("{a} is not an {} address", fam_name(fam))));
        }
        if !network.contains(&a) {
            return Err(ConfigError::field(field, format!("{a} is not inside {nf} {network}")));
        }
        let x = addr_to_u128(a);
        if !(x - net_start).is_multiple_of(size) {
            return Err(ConfigError::field(field, format!("{a} is not on a /{subnet_len} boundary")));
        }
        Ok(x)
    };
    // The first subnet is skipped by default so that no node holds the network address.
    let min = bound("SubnetMin", net_start + size)?;
    let max = bound("SubnetMax", net_end + 1 - size)?;
    if min > max {
        return Err(ConfigError::field(
            fam.field("SubnetMin"),
            format!(
                "{} is above {} {}",
                u128_to_addr(min, v6),
                fam.field("SubnetMax"),
                u128_to_addr(max, v6)
            ),
        ));
    }
    Ok(SubnetPool {
        network,
        subnet_len,
        subnet_min: u128_to_addr(min, v6),
        subnet_max: u128_to_addr(max, v6),
    })
}

fn fam_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// flannel's `"Backend": {"Type": "ipsec", "PSK": …, "UDPEncap": …, "ESPProposal": …}` as
/// this daemon's IPsec mode (an `Encryption` section of type `ipsec` over the vxlan
/// datapath), with a deprecation warning; `None` for any other backend.
fn flannel_ipsec(
    v: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<Option<EncryptionConfig>, ConfigError> {
    let Some(obj) = v.and_then(Value::as_object) else { return Ok(None) };
    let f = Fields { obj, prefix: "Backend." };
    if !f.str("Type")?.is_some_and(|t| t.eq_ignore_ascii_case("ipsec")) {
        return Ok(None);
    }
    let mut options = Map::new();
    if let Some(psk) = f.str("PSK")? {
        options.insert("IPsecPSK".into(), json!(psk));
    }
    if let Some(p) = f.str("ESPProposal")? {
        options
            .insert("ESPProposals".into(), json!([crate::encryption::ipsec::proposals::from_flannel_esp(p)]));
    }
    let _ = f.bool("UDPEncap", false)?;
    warnings.push(
        "Backend.Type \"ipsec\" (flannel's IPsec backend) is deprecated: running the vxlan backend with \
         Encryption.Type \"ipsec\" instead (PSK → Encryption.IPsecPSK, ESPProposal → \
         Encryption.ESPProposals; UDP encapsulation is always available). Write an Encryption section \
         to silence this."
            .into(),
    );
    Ok(Some(EncryptionConfig { kind: Some("ipsec".into()), options }))
}

/// flannel's vxlan options overlayd has no equivalent for: refused when set to anything but
/// flannel's default, so that a config never silently means less than it says.
const VXLAN_UNSUPPORTED: &[(&str, &str)] = &[
    ("GBP", "the group-based policy extension is not supported (leave it false)"),
    (
        "Learning",
        "overlayd programs every peer statically; source learning is not supported (leave it false)",
    ),
    ("MacPrefix", "a Windows-only option: overlayd makes a random locally administered MAC per node"),
];

/// The keys of each backend (besides `Type`); anything else is warned about.
const VXLAN_KEYS: &[&str] = &["VNI", "Port", "GBP", "DirectRouting", "MTU", "Learning", "MacPrefix"];
const WIREGUARD_KEYS: &[&str] =
    &["ListenPort", "ListenPortV6", "PSK", "PersistentKeepaliveInterval", "Mode", "MTU"];

fn unknown_keys(f: &Fields, known: &[&str], warnings: &mut Vec<String>) {
    for k in f.obj.keys() {
        if !k.eq_ignore_ascii_case("Type") && !known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
            warnings.push(format!("unknown field {} ignored", f.name(k)));
        }
    }
}

/// The `Backend` object: the backend, and for flannel's `wireguard` the `Encryption`
/// section it stands for.
fn backend(
    v: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<(BackendConfig, Option<EncryptionConfig>), ConfigError> {
    let Some(v) = v else {
        // flannel's code defaults to udp; vxlan is what every deployment sets.
        return Ok((BackendConfig::Vxlan(VxlanOptions::default()), None));
    };
    let obj =
        v.as_object().ok_or_else(|| ConfigError::field("Backend", format!("expected an object, got {v}")))?;
    let f = Fields { obj, prefix: "Backend." };
    let kind = f.str("Type")?.unwrap_or("vxlan");
    match kind.to_ascii_lowercase().as_str() {
        "vxlan" => {
            unknown_keys(&f, VXLAN_KEYS, warnings);
            let d = VxlanOptions::default();
            let vni = f.uint("VNI", MAX_VNI as u64)?.map_or(d.vni, |x| x as u32);
            let port = f.uint("Port", u16::MAX as u64)?.map_or(d.port, |x| x as u16);
            let mtu = f.uint("MTU", 65535)?.map_or(d.mtu, |x| x as u32);
            if mtu != 0 && mtu < 576 {
                return Err(ConfigError::field(
                    "Backend.MTU",
                    format!("{mtu} is below the IPv4 minimum of 576"),
                ));
            }
            for (name, why) in VXLAN_UNSUPPORTED {
                let set = match f.get(name) {
                    None | Some(Value::Bool(false)) => false,
                    Some(Value::String(s)) => !s.is_empty(),
                    Some(_) => true,
                };
                if set {
                    return Err(ConfigError::field(&f.name(name), *why));
                }
            }
            Ok((
                BackendConfig::Vxlan(VxlanOptions {
                    vni,
                    port,
                    direct_routing: f.bool("DirectRouting", false)?,
                    mtu,
                }),
                None,
            ))
        }
        "host-gw" => {
            // flannel's host-gw has no options.
            unknown_keys(&f, &[], warnings);
            Ok((BackendConfig::HostGw, None))
        }
        "wireguard" => {
            let enc = wireguard(&f, warnings)?;
            Ok((BackendConfig::Vxlan(VxlanOptions::default()), Some(enc)))
        }
        other => Err(ConfigError::field(
            "Backend.Type",
            format!("unsupported backend {other:?} (supported: vxlan, host-gw, wireguard, ipsec)"),
        )),
    }
}

/// flannel's WireGuard backend read as overlayd's: vxlan between nodes inside a WireGuard
/// tunnel (`Encryption`). flannel's WireGuard is fail-closed (pod traffic to a peer without
/// a tunnel is dropped), so the mapping is `Strict`.
fn wireguard(f: &Fields, warnings: &mut Vec<String>) -> Result<EncryptionConfig, ConfigError> {
    unknown_keys(f, WIREGUARD_KEYS, warnings);
    let mut options = Map::new();
    let port = f.uint("ListenPort", u16::MAX as u64)?;
    if port == Some(0) {
        return Err(ConfigError::field("Backend.ListenPort", "0 is not a port"));
    }
    let port = port.unwrap_or(crate::encryption::settings::DEFAULT_PORT as u64);
    options.insert("Port".into(), json!(port));
    options.insert("Strict".into(), json!(true));
    if let Some(v6) = f.uint("ListenPortV6", u16::MAX as u64)? {
        warnings.push(format!(
            "Backend.ListenPortV6 {v6} ignored: one tunnel on port {port} carries both families"
        ));
    }
    if let Some(k) = f.uint("PersistentKeepaliveInterval", u16::MAX as u64)?.filter(|k| *k > 0) {
        options.insert("PersistentKeepalive".into(), json!(k));
    }
    if let Some(psk) = f.str("PSK")? {
        if crate::encryption::settings::decode_key(psk).is_none() {
            // The key itself is never echoed.
            return Err(ConfigError::field(
                "Backend.PSK",
                "not a WireGuard pre-shared key (base64 of 32 bytes, as `wg genpsk` prints)",
            ));
        }
        options.insert("PresharedKey".into(), json!(psk.trim()));
    }
    match f.str("Mode")?.map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some(m @ ("separate" | "auto" | "ipv4" | "ipv6")) => warnings.push(format!(
            "Backend.Mode {m:?} ignored: one tunnel carries both pod families over the underlay \
             family both nodes have"
        )),
        Some(m) => {
            return Err(ConfigError::field(
                "Backend.Mode",
                format!("{m:?} is not one of \"separate\", \"auto\", \"ipv4\", \"ipv6\""),
            ));
        }
    }
    if f.get("MTU").is_some() {
        return Err(ConfigError::field(
            "Backend.MTU",
            "not supported with the wireguard mapping: the pod MTU is derived from the underlay \
             (or set with overlayd --mtu)",
        ));
    }
    warnings.push(format!(
        "Backend.Type \"wireguard\" read as {{\"Type\":\"vxlan\"}} with Encryption \
         {{\"Type\":\"wireguard\",\"Port\":{port},\"Strict\":true{}{}}}: pod traffic between nodes \
         runs in overlayd's WireGuard tunnel",
        options
            .get("PersistentKeepalive")
            .map(|k| format!(",\"PersistentKeepalive\":{k}"))
            .unwrap_or_default(),
        if options.contains_key("PresharedKey") { ",\"PresharedKey\":\"<redacted>\"" } else { "" },
    ));
    Ok(EncryptionConfig { kind: Some("wireguard".into()), options })
}

impl SubnetPool {
    /// Whether this pool is IPv6.
    pub fn is_v6(&self) -> bool {
        matches!(self.network, IpNet::V6(_))
    }

    /// Whether `net` is a subnet this pool could have handed out: inside the network and
    /// of the right length (remote leases may sit outside min..max, e.g. reservations).
    pub fn fits(&self, net: &IpNet) -> bool {
        net.prefix_len() == self.subnet_len && self.network.contains(net) && net.trunc() == *net
    }

    /// Whether `net` fits and lies in SubnetMin..=SubnetMax: what this node may take.
    pub fn allocatable(&self, net: &IpNet) -> bool {
        let x = addr_to_u128(net.network());
        self.fits(net) && x >= addr_to_u128(self.subnet_min) && x <= addr_to_u128(self.subnet_max)
    }

    /// The subnet at integer address `x` (aligned by the caller).
    pub(crate) fn subnet_at(&self, x: u128) -> IpNet {
        IpNet::new(u128_to_addr(x, self.is_v6()), self.subnet_len).expect("valid prefix length")
    }

    /// Number of addresses in one subnet.
    pub(crate) fn step(&self) -> u128 {
        let bits = if self.is_v6() { 128 } else { 32 };
        1u128 << (bits - self.subnet_len)
    }

    /// Walks SubnetMin..=SubnetMax and returns up to `limit` subnets that overlap none of
    /// `occupied` (any lengths). `occupied` need not be sorted.
    pub fn free_subnets(&self, occupied: &[IpNet], limit: usize) -> Vec<IpNet> {
        let v6 = self.is_v6();
        let mut ranges: Vec<(u128, u128)> = occupied
            .iter()
            .filter(|n| n.addr().is_ipv6() == v6)
            .map(|n| (addr_to_u128(n.network()), addr_to_u128(n.broadcast())))
            .collect();
        ranges.sort_unstable();
        let step = self.step();
        let max = addr_to_u128(self.subnet_max);
        let mut x = addr_to_u128(self.subnet_min);
        let mut out = Vec::new();
        let mut i = 0;
        while x <= max && out.len() < limit {
            let end = x + (step - 1);
            // Skip ranges wholly before this candidate.
            while i < ranges.len() && ranges[i].1 < x {
                i += 1;
            }
            // Ranges are sorted by start; any overlapping one starts at or before `end`.
            let overlapping = ranges[i..].iter().take_while(|r| r.0 <= end).any(|r| r.1 >= x);
            if !overlapping {
                out.push(self.subnet_at(x));
            }
            match x.checked_add(step) {
                Some(n) => x = n,
                None => break,
            }
        }
        out
    }

    /// The position of `net` in SubnetMin..=SubnetMax, when it is allocatable.
    pub fn ordinal(&self, net: &IpNet) -> Option<u128> {
        self.allocatable(net)
            .then(|| (addr_to_u128(net.network()) - addr_to_u128(self.subnet_min)) / self.step())
    }

    /// The `i`-th subnet of SubnetMin..=SubnetMax.
    pub fn nth(&self, i: u128) -> Option<IpNet> {
        let x = i.checked_mul(self.step())?.checked_add(addr_to_u128(self.subnet_min))?;
        (x <= addr_to_u128(self.subnet_max)).then(|| self.subnet_at(x))
    }

    /// How many subnets SubnetMin..=SubnetMax holds (saturating).
    pub fn capacity(&self) -> u128 {
        (addr_to_u128(self.subnet_max) - addr_to_u128(self.subnet_min)) / self.step() + 1
    }
}

/// IPv4 pool network, for callers that only deal with IPv4.
impl NetworkConfig {
    /// `Network` as an IPv4 network, when IPv4 is enabled.
    pub fn ipv4_network(&self) -> Option<Ipv4Net> {
        match self.ipv4.as_ref()?.network {
            IpNet::V4(n) => Some(n),
            IpNet::V6(_) => None,
        }
    }

    /// `IPv6Network`, when IPv6 is enabled.
    pub fn ipv6_network(&self) -> Option<Ipv6Net> {
        match self.ipv6.as_ref()?.network {
            IpNet::V6(n) => Some(n),
            IpNet::V4(_) => None,
        }
    }

    /// The VXLAN options (`None` for host-gw).
    pub fn vxlan(&self) -> Option<&VxlanOptions> {
        match &self.backend {
            BackendConfig::Vxlan(o) => Some(o),
            BackendConfig::HostGw => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s).unwrap().config
    }
    fn err(s: &str) -> ConfigError {
        NetworkConfig::parse(s).unwrap_err()
    }

    #[test]
    fn flannels_ipsec_backend_becomes_vxlan_with_ipsec_encryption() {
        let psk = "x".repeat(96);
        let text = format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"ipsec","PSK":"{psk}","UDPEncap":true,"ESPProposal":"aes128gcm16-sha256-prfsha256-ecp256"}}}}"#
        );
        let parsed = NetworkConfig::parse(&text).unwrap();
        assert_eq!(parsed.config.backend, BackendConfig::Vxlan(VxlanOptions::default()));
        assert!(parsed.warnings.iter().any(|w| w.contains("deprecated")), "{:?}", parsed.warnings);
        let s = parsed.config.encryption_settings();
        assert!(s.enabled && s.kind == crate::encryption::settings::Kind::Ipsec);
        assert_eq!(s.ipsec.psk_text.as_deref(), Some(psk.as_str()));
        assert_eq!(s.ipsec.esp(), ["aes128gcm16-ecp256"]);
        // As the API shows it: the PSK is not there.
        let shown = crate::encryption::settings::redact(parsed.config.to_json());
        assert_eq!(shown["Encryption"]["IPsecPSK"], "<redacted>", "{shown}");
        assert!(!shown.to_string().contains(&psk), "{shown}");
        // Stored back in today's form, it parses to the same settings without the warning.
        let again = NetworkConfig::parse(&parsed.config.to_json().to_string()).unwrap();
        assert_eq!(again.config.encryption_settings(), s);
        assert!(!again.warnings.iter().any(|w| w.contains("deprecated")));
        let bad = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"ipsec","ESPProposal":"3des-md5"}}"#;
        assert_eq!(err(bad).field_name(), Some("Encryption.ESPProposals"));
    }

    #[test]
    fn flannel_defaults() {
        let c = ok(r#"{"Network":"10.244.0.0/16"}"#);
        let p = c.ipv4.as_ref().unwrap();
        assert_eq!(p.subnet_len, 24);
        assert_eq!(p.subnet_min.to_string(), "10.244.1.0");
        assert_eq!(p.subnet_max.to_string(), "10.244.255.0");
        assert!(c.ipv6.is_none());
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanOptions::default()));
        assert_eq!(p.capacity(), 255);
    }

    #[test]
    fn small_network_gets_prefix_plus_two() {
        let c = ok(r#"{"Network":"10.0.0.0/26"}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 28);
        let c = ok(r#"{"Network":"10.0.0.0/22"}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 24);
        let c = ok(r#"{"Network":"10.0.0.0/23"}"#);
        assert_eq!(c.ipv4.unwrap().subnet_len, 25);
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            (r#"{}"#, "Network"),
            (r#"{"Network":"10.0.0.0/29"}"#, "Network"),
            (r#"{"Network":"nope"}"#, "Network"),
            (r#"{"Network":"fd00::/64"}"#, "Network"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#, "SubnetLen"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#, "SubnetLen"),
            (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#, "SubnetMin"),
            (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.1"}"#, "SubnetMin"),
            (r#"{"Network":"10.0.0.0/16","SubnetMax":"10.0.255.7"}"#, "SubnetMax"),
            (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#, "SubnetMin"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#, "IPv6Network"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#, "IPv6Network"),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":127}"#,
                "IPv6SubnetLen",
            ),
            (r#"{"EnableIPv4":false}"#, "EnableIPv4"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv4":"yes"}"#, "EnableIPv4"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#, "Backend.Type"),
            (r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#, "Backend"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"VNI":16777216}}"#, "Backend.VNI"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Port":-1}}"#, "Backend.Port"),
            (r#"{"Network":"10.0.0.0/16","Encryption":[]}"#, "Encryption"),
            (r#"{"Network":"10.0.0.0/16","Encryption":{"Type":1}}"#, "Encryption.Type"),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert_eq!(e.field_name(), Some(field), "{text}: {e}");
            assert!(e.to_string().starts_with(field), "{e}");
        }
        assert!(matches!(err("{"), ConfigError::Json(_)));
        assert_eq!(err("[]"), ConfigError::NotObject);
    }

    #[test]
    fn go_style_case_insensitive_fields_and_warnings() {
        let p = NetworkConfig::parse(
            r#"{"network":"10.5.0.1/16","subnetlen":26,"Bogus":1,"backend":{"type":"VXLAN","vni":42}}"#,
        )
        .unwrap();
        let pool = p.config.ipv4.as_ref().unwrap();
        assert_eq!(pool.network.to_string(), "10.5.0.0/16");
        assert_eq!(pool.subnet_len, 26);
        assert_eq!(p.config.vxlan().unwrap().vni, 42);
        assert_eq!(p.warnings.len(), 2, "{:?}", p.warnings);
    }

    #[test]
    fn dual_stack_and_ipv6_only() {
        let c = ok(
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12:13::/48","IPv6SubnetLen":56}"#,
        );
        let p6 = c.ipv6.as_ref().unwrap();
        assert_eq!(p6.subnet_min.to_string(), "fd00:12:13:100::");
        assert_eq!(p6.subnet_max.to_string(), "fd00:12:13:ff00::");
        let c = ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56"}"#);
        assert!(c.ipv4.is_none());
        assert_eq!(c.ipv6.unwrap().subnet_len, 64);
    }

    #[test]
    fn encryption_is_kept_open() {
        let c = ok(
            r#"{"Network":"10.0.0.0/16","Encryption":{"Type":"wireguard","Port":51820,"Future":{"x":1}}}"#,
        );
        let e = c.encryption.as_ref().unwrap();
        assert_eq!(e.kind.as_deref(), Some("wireguard"));
        assert_eq!(e.options["Future"]["x"], 1);
        // Round trip through the effective JSON keeps it.
        let again = NetworkConfig::from_value(&c.to_json()).unwrap().config;
        assert_eq!(again, c);
    }

    #[test]
    fn flannel_example_backends_unchanged() {
        // kube-flannel.yml's net-conf.json.
        let c = ok(r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#);
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanOptions::default()));
        // Documentation/backends.md-style host-gw and vxlan with options.
        let c = ok(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#);
        assert_eq!(c.backend, BackendConfig::HostGw);
        assert_eq!(c.backend.type_name(), "host-gw");
        assert!(c.vxlan().is_none());
        let c = ok(
            r#"{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"GBP":false,"DirectRouting":true,"MTU":1400,"Learning":false}}"#,
        );
        assert_eq!(c.vxlan(), Some(&VxlanOptions { vni: 4096, port: 4789, direct_routing: true, mtu: 1400 }));
        // Effective JSON round-trips, host-gw included.
        for c in [c, ok(r#"{"Network":"10.0.0.0/8","Backend":{"Type":"host-gw"}}"#)] {
            assert_eq!(NetworkConfig::from_value(&c.to_json()).unwrap().config, c);
        }
    }

    #[test]
    fn flannel_wireguard_maps_onto_encryption() {
        let psk = "4qH7oO2WVvnXJtOq/d9RxiZbIF/dBLfS3o9Zr0uQ4hM=";
        let p = NetworkConfig::parse(&format!(
            r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","ListenPort":51830,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"separate","ListenPortV6":51831}}}}"#
        ))
        .unwrap();
        let c = &p.config;
        assert_eq!(c.backend, BackendConfig::Vxlan(VxlanOptions::default()));
        let s = c.encryption_settings();
        assert!(s.enabled && s.strict, "flannel's WireGuard is fail-closed");
        assert_eq!(s.port, 51830);
        assert_eq!(s.persistent_keepalive, Some(25));
        assert!(s.preshared_key.is_some());
        let mapping = p.warnings.iter().find(|w| w.contains("read as")).expect("the mapping is logged");
        assert!(!mapping.contains(psk), "the key reached a log line: {mapping}");
        assert!(p.warnings.iter().any(|w| w.contains("ListenPortV6")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("Backend.Mode")), "{:?}", p.warnings);
        // The bare form, as in flannel's docs.
        let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#);
        assert_eq!(c.encryption_settings().port, crate::encryption::settings::DEFAULT_PORT);
    }

    #[test]
    fn backend_options_without_a_meaning_here_are_refused_by_name() {
        let cases = [
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#, "Backend.GBP"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Learning":true}}"#, "Backend.Learning"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MacPrefix":"0E-2A"}}"#,
                "Backend.MacPrefix",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":1}}"#,
                "Backend.DirectRouting",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PSK":"short"}}"#, "Backend.PSK"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","ListenPort":0}}"#,
                "Backend.ListenPort",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","Mode":"both"}}"#, "Backend.Mode"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","MTU":1420}}"#, "Backend.MTU"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard"},"Encryption":{"Type":"wireguard"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"},"Encryption":{"Type":"wireguard"}}"#,
                "Backend.Type",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"ipip"}}"#, "Backend.Type"),
        ];
        for (text, field) in cases {
            let e = err(text);
            assert_eq!(e.field_name(), Some(field), "{text}: {e}");
        }
        // A PSK in a refused config is never echoed.
        let e = err(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard","PSK":"c2VjcmV0"}}"#);
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        // host-gw with encryption off is fine.
        ok(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"},"Encryption":{"Type":"none"}}"#);
    }

    #[test]
    fn free_subnets_skip_occupied_of_any_length() {
        let c = ok(r#"{"Network":"10.0.0.0/16"}"#);
        let p = c.ipv4.unwrap();
        let occ: Vec<IpNet> = ["10.0.1.0/24", "10.0.2.0/23", "10.0.5.128/25", "192.168.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let free: Vec<String> = p.free_subnets(&occ, 3).iter().map(|n| n.to_string()).collect();
        assert_eq!(free, ["10.0.4.0/24", "10.0.6.0/24", "10.0.7.0/24"]);
        let all = p.free_subnets(&[], 10_000);
        assert_eq!(all.len(), 255);
        assert_eq!(all.last().unwrap().to_string(), "10.0.255.0/24");
        // A /8 covering everything leaves nothing.
        assert!(p.free_subnets(&["10.0.0.0/8".parse().unwrap()], 10).is_empty());
    }

    #[test]
    fn allocatable_respects_min_max() {
        let c = ok(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.10.0","SubnetMax":"10.0.20.0"}"#);
        let p = c.ipv4.unwrap();
        assert!(p.allocatable(&"10.0.10.0/24".parse().unwrap()));
        assert!(!p.allocatable(&"10.0.9.0/24".parse().unwrap()));
        assert!(p.fits(&"10.0.9.0/24".parse().unwrap()));
        let n: IpNet = "10.0.12.0/24".parse().unwrap();
        assert_eq!(p.ordinal(&n), Some(2));
        assert_eq!(p.nth(2), Some(n));
        assert_eq!(p.nth(10).unwrap().to_string(), "10.0.20.0/24");
        assert_eq!(p.nth(11), None);
        assert!(!p.fits(&"10.0.9.0/25".parse().unwrap()));
        assert!(!p.fits(&"10.1.9.0/24".parse().unwrap()));
    }
}
