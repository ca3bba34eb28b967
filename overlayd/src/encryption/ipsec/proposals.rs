//! IKE and ESP proposals: modern defaults, operator overrides validated against an allowed
//! set (AEAD ciphers only, SHA-2 PRFs, elliptic-curve or large MODP groups), in strongSwan's
//! syntax (`aes256gcm16-prfsha384-x25519`).

/// IKE proposals used when the config names none: AES-GCM-256 or ChaCha20-Poly1305, with
/// X25519 or ECP-256.
pub const DEFAULT_IKE: &[&str] = &["aes256gcm16-chacha20poly1305-prfsha384-prfsha256-x25519-ecp256"];
/// ESP proposals used when the config names none (the DH groups give rekeyed CHILD_SAs
/// forward secrecy).
pub const DEFAULT_ESP: &[&str] = &["aes256gcm16-chacha20poly1305-x25519-ecp256"];

const CIPHERS: &[&str] = &["aes128gcm16", "aes192gcm16", "aes256gcm16", "chacha20poly1305"];
const PRFS: &[&str] = &["prfsha256", "prfsha384", "prfsha512"];
const GROUPS: &[&str] = &["x25519", "x448", "ecp256", "ecp384", "ecp521", "modp3072", "modp4096"];

/// IKE or ESP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// IKE SA.
    Ike,
    /// CHILD SA (ESP).
    Esp,
}

/// Checks one proposal; the error says which token and what is allowed.
pub fn check(kind: Kind, proposal: &str) -> Result<(), String> {
    let p = proposal.trim().to_ascii_lowercase();
    if p.is_empty() {
        return Err("an empty proposal".into());
    }
    let (mut cipher, mut prf, mut group) = (0, 0, 0);
    for t in p.split('-') {
        if CIPHERS.contains(&t) {
            cipher += 1;
        } else if PRFS.contains(&t) && kind == Kind::Ike {
            prf += 1;
        } else if GROUPS.contains(&t) {
            group += 1;
        } else if t == "esn" || t == "noesn" {
            if kind == Kind::Ike {
                return Err(format!("{t:?} is for ESP proposals only"));
            }
        } else {
            let short: String = t.chars().take(40).collect();
            return Err(format!(
                "{short:?} is not allowed (ciphers: {}; PRFs (IKE): {}; groups: {})",
                CIPHERS.join(", "),
                PRFS.join(", "),
                GROUPS.join(", ")
            ));
        }
    }
    if cipher == 0 {
        return Err(format!("{p:?} names no cipher (one of {})", CIPHERS.join(", ")));
    }
    if kind == Kind::Ike && (prf == 0 || group == 0) {
        return Err(format!("{p:?}: an IKE proposal needs a PRF and a DH group"));
    }
    Ok(())
}

/// flannel's `ESPProposal` (e.g. `aes128gcm16-sha256-prfsha256-ecp256`) as an ESP proposal:
/// integrity and PRF tokens, which mean nothing with an AEAD cipher in ESP, are dropped.
pub fn from_flannel_esp(p: &str) -> String {
    p.trim()
        .to_ascii_lowercase()
        .split('-')
        .filter(|t| !(t.starts_with("sha") || t.starts_with("prf")))
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_weak_or_unknown_tokens_do_not() {
        for p in DEFAULT_IKE {
            check(Kind::Ike, p).unwrap();
        }
        for p in DEFAULT_ESP {
            check(Kind::Esp, p).unwrap();
        }
        check(Kind::Esp, "aes128gcm16").unwrap();
        check(Kind::Ike, "chacha20poly1305-prfsha256-ecp384").unwrap();
        for (k, p) in [
            (Kind::Ike, "aes256gcm16-x25519"),
            (Kind::Ike, "aes256gcm16-prfsha256"),
            (Kind::Ike, "3des-sha1-modp1024"),
            (Kind::Esp, "aes256-sha256"),
            (Kind::Esp, "null"),
            (Kind::Esp, "prfsha256-aes256gcm16"),
            (Kind::Esp, ""),
            (Kind::Esp, "x25519"),
            (Kind::Ike, "aes256gcm16-prfsha256-x25519-esn"),
        ] {
            assert!(check(k, p).is_err(), "{p}");
        }
        assert_eq!(from_flannel_esp("aes128gcm16-sha256-prfsha256-ecp256"), "aes128gcm16-ecp256");
        check(Kind::Esp, &from_flannel_esp("aes128gcm16-sha256-prfsha256-ecp256")).unwrap();
    }
}
