//! `overlayctl encryption enable|disable|rotate`: the change to the stored network config
//! that every daemon then follows. A pure function of the stored JSON, so the API handler
//! only adds the compare-and-swap around it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::settings::EncryptionSettings;
use crate::config::{ConfigError, EncryptionConfig, NetworkConfig};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Turn encryption on (or change its options).
    Enable,
    /// Turn it off.
    Disable,
    /// New keys on every node.
    Rotate,
}

/// A request, as `POST /v1/encryption` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The action.
    pub action: Action,
    /// The engine: `wireguard` or `ipsec` (enable only; default: the current one, else
    /// WireGuard).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Drop unencrypted pod traffic between nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Tunnel port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `true`: generate a new pre-shared key; `false`: remove it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<bool>,
    /// Seconds; 0 = never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<u64>,
    /// Seconds; 0 = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_keepalive: Option<u16>,
}

/// Why a request cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The stored config is not usable.
    #[error("the stored network config: {0}")]
    Stored(ConfigError),
    /// The result would be invalid.
    #[error(transparent)]
    Invalid(ConfigError),
    /// An engine that does not exist.
    #[error("encryption type {0:?}: expected \"wireguard\" or \"ipsec\"")]
    Kind(String),
    /// Rotating needs encryption on.
    #[error("encryption is not enabled; nothing to rotate")]
    NotEnabled,
    /// No random source.
    #[error("making a pre-shared key: {0}")]
    Random(std::io::Error),
}

/// The new stored config text for `req` applied to `stored`, and the resulting settings.
/// Everything outside the `Encryption` section is kept byte for byte in meaning (keys and
/// values untouched).
pub fn apply(stored: &str, req: &Request) -> Result<(String, EncryptionSettings), AdminError> {
    let parsed = NetworkConfig::parse(stored).map_err(AdminError::Stored)?.config;
    let mut s = parsed.encryption_settings();
    if let Some(k) = &req.kind {
        if req.action != Action::Enable {
            return Err(AdminError::Kind(format!("{k} (a type goes with enable only)")));
        }
        s.kind = match k.to_ascii_lowercase().as_str() {
            "wireguard" => super::settings::Kind::WireGuard,
            "ipsec" => super::settings::Kind::Ipsec,
            _ => return Err(AdminError::Kind(k.chars().take(40).collect())),
        };
    }
    match req.action {
        Action::Enable => s.enabled = true,
        Action::Disable => s.enabled = false,
        Action::Rotate => {
            if !s.enabled {
                return Err(AdminError::NotEnabled);
            }
            s.key_generation += 1;
        }
    }
    if let Some(strict) = req.strict {
        s.strict = strict;
    }
    if req.action == Action::Disable {
        s.strict = false;
    }
    if let Some(p) = req.port {
        s.port = p;
    }
    match req.preshared_key {
        Some(true) => s.preshared_key = Some(super::keys::random_key().map_err(AdminError::Random)?),
        Some(false) => s.preshared_key = None,
        None => {}
    }
    if let Some(r) = req.rotation_period {
        s.rotation_period = (r > 0).then(|| std::time::Duration::from_secs(r));
    }
    if let Some(k) = req.persistent_keepalive {
        s.persistent_keepalive = (k > 0).then_some(k);
    }
    let section = s.to_section();
    // Validate the result exactly as the daemons will read it.
    let options: Map<String, Value> = section
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "Type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kind = section["Type"].as_str().map(str::to_string);
    let (checked, _) = EncryptionSettings::from_config(Some(&EncryptionConfig { kind, options }))
        .map_err(AdminError::Invalid)?;
    let mut obj: Map<String, Value> =
        serde_json::from_str(stored).map_err(|e| AdminError::Stored(ConfigError::Json(e.to_string())))?;
    obj.retain(|k, _| !k.eq_ignore_ascii_case("Encryption"));
    obj.insert("Encryption".into(), section);
    // flannel's `"Backend": {"Type": "wireguard"}` stood for vxlan plus an Encryption section:
    // from the first `overlayctl encryption` change on, the section says it all.
    if let Some(key) = obj.keys().find(|k| k.eq_ignore_ascii_case("Backend")).cloned() {
        let wg = obj[&key]
            .as_object()
            .and_then(|b| b.iter().find(|(k, _)| k.eq_ignore_ascii_case("Type")))
            .and_then(|(_, t)| t.as_str())
            .is_some_and(|t| t.eq_ignore_ascii_case("wireguard"));
        if wg {
            obj.insert(key, serde_json::json!({"Type": "vxlan"}));
        }
    }
    let text = serde_json::to_string(&Value::Object(obj)).expect("json serializes");
    NetworkConfig::parse(&text).map_err(AdminError::Invalid)?;
    Ok((text, checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(action: Action) -> Request {
        Request {
            action,
            kind: None,
            strict: None,
            port: None,
            preshared_key: None,
            rotation_period: None,
            persistent_keepalive: None,
        }
    }

    #[test]
    fn enable_rotate_disable_keep_the_rest() {
        let stored = r#"{"Network":"10.9.0.0/16","backend":{"Type":"vxlan","VNI":7},"Custom":1}"#;
        let (t, s) =
            apply(stored, &Request { strict: Some(true), preshared_key: Some(true), ..req(Action::Enable) })
                .unwrap();
        assert!(s.enabled && s.strict && s.preshared_key.is_some());
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["backend"]["VNI"], 7);
        assert_eq!(v["Custom"], 1);
        let (t2, s2) = apply(&t, &req(Action::Rotate)).unwrap();
        assert_eq!(s2.key_generation, s.key_generation + 1);
        assert_eq!(s2.preshared_key, s.preshared_key, "rotation keeps the PSK");
        let (t3, s3) = apply(&t2, &req(Action::Disable)).unwrap();
        assert!(!s3.enabled && !s3.strict);
        assert_eq!(s3.key_generation, s2.key_generation, "the generation survives a disable");
        assert!(matches!(apply(&t3, &req(Action::Rotate)), Err(AdminError::NotEnabled)));
    }

    #[test]
    fn the_type_switches_engines_and_rotation_keeps_it() {
        let stored = r#"{"Network":"10.9.0.0/16"}"#;
        let ipsec = Request { kind: Some("ipsec".into()), ..req(Action::Enable) };
        let (t, s) = apply(stored, &ipsec).unwrap();
        assert!(s.enabled && s.kind == super::super::settings::Kind::Ipsec);
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["Encryption"]["Type"], "ipsec");
        let (t, s) = apply(&t, &req(Action::Rotate)).unwrap();
        assert_eq!((s.kind, s.key_generation), (super::super::settings::Kind::Ipsec, 1));
        let (t, s) = apply(&t, &req(Action::Enable)).unwrap();
        assert_eq!(s.kind, super::super::settings::Kind::Ipsec, "enable without a type keeps it");
        let (_, s) = apply(&t, &Request { kind: Some("WireGuard".into()), ..req(Action::Enable) }).unwrap();
        assert_eq!(s.kind, super::super::settings::Kind::WireGuard);
        assert!(matches!(
            apply(stored, &Request { kind: Some("gre".into()), ..req(Action::Enable) }),
            Err(AdminError::Kind(_))
        ));
        assert!(matches!(
            apply(&t, &Request { kind: Some("ipsec".into()), ..req(Action::Rotate) }),
            Err(AdminError::Kind(_))
        ));
    }

    #[test]
    fn a_flannel_wireguard_backend_becomes_vxlan_with_the_section() {
        let stored = r#"{"Network":"10.9.0.0/16","Backend":{"Type":"wireguard","ListenPort":51830}}"#;
        let (t, s) = apply(stored, &req(Action::Disable)).unwrap();
        assert!(!s.enabled);
        let v: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["Backend"]["Type"], "vxlan", "{t}");
        assert_eq!(v["Encryption"]["Port"], 51830, "the mapped port is kept: {t}");
        assert!(!NetworkConfig::parse(&t).unwrap().config.encryption_settings().enabled);
    }

    #[test]
    fn replaces_a_differently_cased_section_and_refuses_bad_values() {
        let stored = r#"{"Network":"10.9.0.0/16","encryption":{"Type":"none"}}"#;
        let (t, _) = apply(stored, &req(Action::Enable)).unwrap();
        let v: Value = serde_json::from_str(&t).unwrap();
        assert!(v.get("encryption").is_none());
        assert_eq!(v["Encryption"]["Type"], "wireguard");
        assert!(matches!(
            apply(&t, &Request { port: Some(0), ..req(Action::Enable) }),
            Err(AdminError::Invalid(e)) if e.field_name() == Some("Encryption.Port")
        ));
        assert!(matches!(
            apply(&t, &Request { rotation_period: Some(5), ..req(Action::Enable) }),
            Err(AdminError::Invalid(e)) if e.field_name() == Some("Encryption.RotationPeriod")
        ));
        assert!(matches!(apply("{", &req(Action::Enable)), Err(AdminError::Stored(_))));
    }
}
