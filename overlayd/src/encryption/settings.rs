//! The network config's `Encryption` section, typed:
//!
//! ```json
//! "Encryption": {"Type": "wireguard", "Port": 51820, "Strict": false,
//!                "PersistentKeepalive": 0, "RotationPeriod": 0, "KeyGeneration": 0,
//!                "PresharedKey": "<base64 of 32 bytes>"}
//! "Encryption": {"Type": "ipsec", "Strict": false, "RotationPeriod": 0, "KeyGeneration": 0,
//!                "IKEProposals": ["aes256gcm16-prfsha384-x25519"], "ESPProposals": ["aes256gcm16"]}
//! ```
//!
//! Only `Type` is required (`wireguard` or `ipsec`); `"Type": "none"` (or no section) means off. `KeyGeneration` is
//! bumped by `overlayctl encryption rotate`: every node makes a new key when it sees a
//! higher one. `RotationPeriod` (seconds, 0 = never) rotates each node's key on a timer.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::config::{ConfigError, EncryptionConfig};

/// WireGuard's well-known port (also flannel's `ListenPort`).
pub const DEFAULT_PORT: u16 = 51820;
/// Rotation more often than this would spend more time handshaking than it buys.
pub const MIN_ROTATION: Duration = Duration::from_secs(60);

/// Which engine encrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// WireGuard in userspace (the `ferro-wg` tunnel).
    #[default]
    WireGuard,
    /// IPsec: IKEv2 by strongSwan's charon, driven over VICI; ESP in the kernel or in charon.
    Ipsec,
}

impl Kind {
    /// The `Type` string.
    pub fn name(self) -> &'static str {
        match self {
            Kind::WireGuard => "wireguard",
            Kind::Ipsec => "ipsec",
        }
    }
}

/// The IPsec mode's own options.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct IpsecOptions {
    /// IKE proposals (`IKEProposals`); `None` = [`super::ipsec::proposals::DEFAULT_IKE`].
    pub ike_proposals: Option<Vec<String>>,
    /// ESP proposals (`ESPProposals`); `None` = [`super::ipsec::proposals::DEFAULT_ESP`].
    pub esp_proposals: Option<Vec<String>>,
    /// A pre-shared key given as text (`IPsecPSK`: flannel's `Backend.PSK`, migrated); used
    /// instead of `PresharedKey` for peers that authenticate with a PSK.
    pub psk_text: Option<String>,
}

impl IpsecOptions {
    /// The IKE proposals in effect.
    pub fn ike(&self) -> Vec<String> {
        self.ike_proposals
            .clone()
            .unwrap_or_else(|| super::ipsec::proposals::DEFAULT_IKE.iter().map(|s| s.to_string()).collect())
    }

    /// The ESP proposals in effect.
    pub fn esp(&self) -> Vec<String> {
        self.esp_proposals
            .clone()
            .unwrap_or_else(|| super::ipsec::proposals::DEFAULT_ESP.iter().map(|s| s.to_string()).collect())
    }
}

/// The encryption settings of the cluster.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct EncryptionSettings {
    /// Encrypt pod traffic between nodes.
    pub enabled: bool,
    /// With which engine.
    pub kind: Kind,
    /// IPsec's options (kept while WireGuard is in use, so a switch back finds them).
    pub ipsec: IpsecOptions,
    /// UDP port of every node's tunnel.
    pub port: u16,
    /// Drop pod traffic between nodes that is not encrypted.
    pub strict: bool,
    /// Keepalive interval (seconds) for peers behind NAT; `None` = off.
    pub persistent_keepalive: Option<u16>,
    /// Each node makes a new key this often.
    pub rotation_period: Option<Duration>,
    /// Raised by `overlayctl encryption rotate`.
    pub key_generation: u64,
    /// Mixed into every handshake (post-quantum hedge), handed out through the store.
    pub preshared_key: Option<[u8; 32]>,
}

// Hand-written so the pre-shared key never reaches a log line.
impl std::fmt::Debug for EncryptionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionSettings")
            .field("enabled", &self.enabled)
            .field("kind", &self.kind)
            .field("ike_proposals", &self.ipsec.ike_proposals)
            .field("esp_proposals", &self.ipsec.esp_proposals)
            .field("ipsec_psk", &self.ipsec.psk_text.as_ref().map(|_| "<redacted>"))
            .field("port", &self.port)
            .field("strict", &self.strict)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("rotation_period", &self.rotation_period)
            .field("key_generation", &self.key_generation)
            .field("preshared_key", &self.preshared_key.map(|_| "<redacted>"))
            .finish()
    }
}

const KNOWN: &[&str] = &[
    "Port",
    "Strict",
    "PersistentKeepalive",
    "RotationPeriod",
    "KeyGeneration",
    "PresharedKey",
    "IKEProposals",
    "ESPProposals",
    "IPsecPSK",
];

/// Secret fields: never logged, never shown by the API.
const SECRETS: &[&str] = &["PresharedKey", "IPsecPSK"];

fn proposals(
    m: &Map<String, Value>,
    name: &str,
    kind: super::ipsec::proposals::Kind,
) -> Result<Option<Vec<String>>, ConfigError> {
    let list: Vec<String> = match get(m, name) {
        None => return Ok(None),
        Some(Value::String(s)) => s.split(',').map(|p| p.trim().to_ascii_lowercase()).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(|s| s.trim().to_ascii_lowercase()))
            .collect::<Option<_>>()
            .ok_or_else(|| field_err(name, "expected a list of strings"))?,
        Some(v) => return Err(field_err(name, format!("expected a list of strings, got {}", kind_of(v)))),
    };
    if list.is_empty() || list.len() > 8 {
        return Err(field_err(name, "expected 1 to 8 proposals"));
    }
    for p in &list {
        super::ipsec::proposals::check(kind, p).map_err(|e| field_err(name, e))?;
    }
    Ok(Some(list))
}

fn get<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    m.get(name)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

fn field_err(name: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field { field: format!("Encryption.{name}"), reason: reason.into() }
}

fn uint(m: &Map<String, Value>, name: &str, max: u64) -> Result<Option<u64>, ConfigError> {
    match get(m, name) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(x) if x <= max => Ok(Some(x)),
            _ => Err(field_err(name, format!("expected an integer from 0 to {max}, got {v}"))),
        },
    }
}

/// Decodes a WireGuard key (base64 of 32 bytes), as `wg` writes them.
pub fn decode_key(text: &str) -> Option<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

/// Encodes a key as `wg` does.
pub fn encode_key(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

impl EncryptionSettings {
    /// Off.
    pub fn off() -> Self {
        EncryptionSettings { port: DEFAULT_PORT, ..Default::default() }
    }

    /// The typed settings of a config's section (`None` = off), with warnings for unknown keys.
    pub fn from_config(section: Option<&EncryptionConfig>) -> Result<(Self, Vec<String>), ConfigError> {
        let Some(section) = section else { return Ok((Self::off(), Vec::new())) };
        let (enabled, kind) = match section.kind.as_deref() {
            Some(k) if k.eq_ignore_ascii_case("wireguard") => (true, Kind::WireGuard),
            Some(k) if k.eq_ignore_ascii_case("ipsec") => (true, Kind::Ipsec),
            Some(k) if k.eq_ignore_ascii_case("none") => (false, Kind::WireGuard),
            Some(k) => {
                let k: String = k.chars().take(40).collect();
                return Err(field_err(
                    "Type",
                    format!("{k:?} is not one of \"wireguard\", \"ipsec\", \"none\""),
                ));
            }
            None => return Err(field_err("Type", "required: \"wireguard\", \"ipsec\" or \"none\"")),
        };
        let m = &section.options;
        let warnings = m
            .keys()
            .filter(|k| !KNOWN.iter().any(|n| n.eq_ignore_ascii_case(k)))
            .map(|k| format!("Encryption: unknown field {k:?} ignored"))
            .collect();
        let port = match uint(m, "Port", u16::MAX as u64)? {
            None => DEFAULT_PORT,
            Some(0) => return Err(field_err("Port", "0 is not a port")),
            Some(p) => p as u16,
        };
        let strict = match get(m, "Strict") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(field_err("Strict", format!("expected true or false, got {v}"))),
        };
        let persistent_keepalive =
            uint(m, "PersistentKeepalive", u16::MAX as u64)?.filter(|s| *s > 0).map(|s| s as u16);
        let rotation_period = match uint(m, "RotationPeriod", u32::MAX as u64)? {
            None | Some(0) => None,
            Some(s) if Duration::from_secs(s) < MIN_ROTATION => {
                return Err(field_err(
                    "RotationPeriod",
                    format!("{s} s is too short: at least {} s (0 = never)", MIN_ROTATION.as_secs()),
                ));
            }
            Some(s) => Some(Duration::from_secs(s)),
        };
        let key_generation = uint(m, "KeyGeneration", i64::MAX as u64)?.unwrap_or(0);
        let preshared_key = match get(m, "PresharedKey") {
            None => None,
            Some(Value::String(s)) => Some(
                decode_key(s)
                    .ok_or_else(|| field_err("PresharedKey", "not a WireGuard key (base64 of 32 bytes)"))?,
            ),
            Some(v) => {
                return Err(field_err("PresharedKey", format!("expected a string, got {}", kind_of(v))));
            }
        };
        use super::ipsec::proposals::Kind as P;
        let psk_text = match get(m, "IPsecPSK") {
            None => None,
            Some(Value::String(s)) if (20..=1024).contains(&s.len()) => Some(s.clone()),
            Some(Value::String(_)) => return Err(field_err("IPsecPSK", "expected 20 to 1024 characters")),
            Some(v) => return Err(field_err("IPsecPSK", format!("expected a string, got {}", kind_of(v)))),
        };
        let ipsec = IpsecOptions {
            ike_proposals: proposals(m, "IKEProposals", P::Ike)?,
            esp_proposals: proposals(m, "ESPProposals", P::Esp)?,
            psk_text,
        };
        let s = EncryptionSettings {
            enabled,
            kind,
            ipsec,
            port,
            strict: enabled && strict,
            persistent_keepalive,
            rotation_period,
            key_generation,
            preshared_key,
        };
        Ok((s, warnings))
    }

    /// The section as stored (`overlayctl encryption …` writes it back this way).
    pub fn to_section(&self) -> Value {
        let mut v = json!({
            "Type": if self.enabled { self.kind.name() } else { "none" },
            "Port": self.port,
            "Strict": self.strict,
            "PersistentKeepalive": self.persistent_keepalive.unwrap_or(0),
            "RotationPeriod": self.rotation_period.map(|d| d.as_secs()).unwrap_or(0),
            "KeyGeneration": self.key_generation,
        });
        if let Some(k) = &self.preshared_key {
            v["PresharedKey"] = json!(encode_key(k));
        }
        if let Some(p) = &self.ipsec.ike_proposals {
            v["IKEProposals"] = json!(p);
        }
        if let Some(p) = &self.ipsec.esp_proposals {
            v["ESPProposals"] = json!(p);
        }
        if let Some(k) = &self.ipsec.psk_text {
            v["IPsecPSK"] = json!(k);
        }
        v
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A copy of a config's JSON with the pre-shared key replaced, for logs and the API.
pub fn redact(mut config: Value) -> Value {
    if let Some(e) = config.get_mut("Encryption").and_then(Value::as_object_mut) {
        for (k, v) in e.iter_mut() {
            if SECRETS.iter().any(|s| k.eq_ignore_ascii_case(s)) && !v.is_null() {
                *v = json!("<redacted>");
            }
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    fn settings(section: &str) -> Result<EncryptionSettings, ConfigError> {
        let text = format!(r#"{{"Network":"10.0.0.0/16","Encryption":{section}}}"#);
        let c = NetworkConfig::parse(&text)?.config;
        EncryptionSettings::from_config(c.encryption.as_ref()).map(|(s, _)| s)
    }

    #[test]
    fn defaults_and_every_field() {
        let s = settings(r#"{"Type":"wireguard"}"#).unwrap();
        assert!(s.enabled && !s.strict);
        assert_eq!(s.port, DEFAULT_PORT);
        assert_eq!((s.persistent_keepalive, s.rotation_period, s.key_generation), (None, None, 0));
        let psk = encode_key(&[7; 32]);
        let s = settings(&format!(
            r#"{{"type":"WireGuard","port":4000,"strict":true,"PersistentKeepalive":25,"RotationPeriod":3600,"KeyGeneration":3,"PresharedKey":"{psk}"}}"#
        ))
        .unwrap();
        assert_eq!(s.port, 4000);
        assert!(s.strict);
        assert_eq!(s.persistent_keepalive, Some(25));
        assert_eq!(s.rotation_period, Some(Duration::from_secs(3600)));
        assert_eq!(s.key_generation, 3);
        assert_eq!(s.preshared_key, Some([7; 32]));
        // Round trip through the stored form.
        let again = EncryptionSettings::from_config(Some(&EncryptionConfig {
            kind: Some("wireguard".into()),
            options: s.to_section().as_object().unwrap().clone(),
        }))
        .unwrap()
        .0;
        assert_eq!(again, s);
        assert!(!format!("{s:?}").contains(&psk), "the PSK must not reach logs");
    }

    #[test]
    fn ipsec_with_its_proposals_round_trips_and_hides_its_psk() {
        let s = settings(
            r#"{"Type":"IPsec","Strict":true,"IKEProposals":"aes128gcm16-prfsha256-ecp256","ESPProposals":["chacha20poly1305"],"IPsecPSK":"a flannel psk of some length"}"#,
        )
        .unwrap();
        assert!(s.enabled && s.strict && s.kind == Kind::Ipsec);
        assert_eq!(s.ipsec.ike(), ["aes128gcm16-prfsha256-ecp256"]);
        assert_eq!(s.ipsec.esp(), ["chacha20poly1305"]);
        assert!(!format!("{s:?}").contains("flannel psk"));
        let again = EncryptionSettings::from_config(Some(&EncryptionConfig {
            kind: Some("ipsec".into()),
            options: s.to_section().as_object().unwrap().clone(),
        }))
        .unwrap()
        .0;
        assert_eq!(again, s);
        let d = settings(r#"{"Type":"ipsec"}"#).unwrap();
        assert_eq!(d.ipsec.ike(), super::super::ipsec::proposals::DEFAULT_IKE);
        let r = redact(json!({"Encryption":{"Type":"ipsec","IPsecPSK":"secret secret secret"}}));
        assert_eq!(r["Encryption"]["IPsecPSK"], "<redacted>");
    }

    #[test]
    fn off_forms() {
        assert!(!EncryptionSettings::from_config(None).unwrap().0.enabled);
        let s = settings(r#"{"Type":"none","Strict":true}"#).unwrap();
        assert!(!s.enabled && !s.strict, "strict means nothing without encryption");
    }

    #[test]
    fn bad_values_name_their_field_and_are_rejected_by_the_config_parser() {
        for (section, field) in [
            (r#"{}"#, "Encryption.Type"),
            (r#"{"Type":"ipsek"}"#, "Encryption.Type"),
            (r#"{"Type":"ipsec","IKEProposals":["3des-sha1-modp1024"]}"#, "Encryption.IKEProposals"),
            (r#"{"Type":"ipsec","ESPProposals":"aes256gcm16-null"}"#, "Encryption.ESPProposals"),
            (r#"{"Type":"ipsec","ESPProposals":[]}"#, "Encryption.ESPProposals"),
            (r#"{"Type":"ipsec","ESPProposals":[7]}"#, "Encryption.ESPProposals"),
            (r#"{"Type":"ipsec","IPsecPSK":"short"}"#, "Encryption.IPsecPSK"),
            (r#"{"Type":"wireguard","Port":0}"#, "Encryption.Port"),
            (r#"{"Type":"wireguard","Port":70000}"#, "Encryption.Port"),
            (r#"{"Type":"wireguard","Strict":"yes"}"#, "Encryption.Strict"),
            (r#"{"Type":"wireguard","PersistentKeepalive":-1}"#, "Encryption.PersistentKeepalive"),
            (r#"{"Type":"wireguard","RotationPeriod":5}"#, "Encryption.RotationPeriod"),
            (r#"{"Type":"wireguard","KeyGeneration":"1"}"#, "Encryption.KeyGeneration"),
            (r#"{"Type":"wireguard","PresharedKey":"c2hvcnQ="}"#, "Encryption.PresharedKey"),
            (r#"{"Type":"wireguard","PresharedKey":7}"#, "Encryption.PresharedKey"),
        ] {
            let e = settings(section).unwrap_err();
            assert_eq!(e.field_name(), Some(field), "{section}: {e}");
        }
    }

    proptest::proptest! {
        /// Any section gets an answer (never a panic); an accepted one survives its round trip.
        #[test]
        fn any_section_is_answered(
            kind in proptest::option::of("(wireguard|none|WireGuard|x)"),
            port in proptest::option::of(proptest::prelude::any::<i64>()),
            strict in proptest::option::of(proptest::prelude::any::<bool>()),
            period in proptest::option::of(0u64..100_000),
            psk in proptest::option::of("[A-Za-z0-9+/=]{0,50}"),
        ) {
            let mut options = Map::new();
            if let Some(p) = port { options.insert("Port".into(), json!(p)); }
            if let Some(b) = strict { options.insert("Strict".into(), json!(b)); }
            if let Some(r) = period { options.insert("RotationPeriod".into(), json!(r)); }
            if let Some(k) = psk { options.insert("PresharedKey".into(), json!(k)); }
            let section = EncryptionConfig { kind, options };
            if let Ok((s, _)) = EncryptionSettings::from_config(Some(&section)) {
                proptest::prop_assert!(s.port > 0);
                let again = EncryptionConfig {
                    kind: Some(if s.enabled { "wireguard".into() } else { "none".into() }),
                    options: s.to_section().as_object().unwrap().clone(),
                };
                proptest::prop_assert_eq!(EncryptionSettings::from_config(Some(&again)).unwrap().0, s);
            }
        }
    }

    #[test]
    fn redaction_hides_only_the_key() {
        let v = json!({"Network":"10.0.0.0/16","Encryption":{"Type":"wireguard","presharedkey":"c2VjcmV0"}});
        let r = redact(v);
        assert_eq!(r["Encryption"]["presharedkey"], "<redacted>");
        assert_eq!(r["Encryption"]["Type"], "wireguard");
    }
}
