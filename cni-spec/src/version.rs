//! Spec versions, their feature gates, negotiation and the `VERSION` reply.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Code, Error};

/// A released CNI specification version.
///
/// Ordered by release, so feature gates are plain comparisons:
///
/// ```
/// use cni_spec::Version;
/// let v: Version = "0.4.0".parse().unwrap();
/// assert!(v >= Version::V0_4_0 && v.has_check() && !v.has_gc());
/// assert_eq!(v.to_string(), "0.4.0");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// 0.1.0: the first release; also what a config without `cniVersion` means.
    V0_1_0,
    /// 0.2.0: adds `VERSION`.
    V0_2_0,
    /// 0.3.0: the rich result and chaining.
    V0_3_0,
    /// 0.3.1: fixes `ip` to `ips`.
    V0_3_1,
    /// 0.4.0: adds `CHECK` and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version` and single-plugin configs.
    V1_0_0,
    /// 1.1.0: adds `STATUS`, `GC`, `cniVersions` and new interface and route fields.
    V1_1_0,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 7] = [
        Version::V0_1_0,
        Version::V0_2_0,
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    /// The newest version this library implements.
    pub const CURRENT: Version = Version::V1_1_0;

    /// The version string, e.g. `"1.0.0"`.
    ///
    /// ```
    /// assert_eq!(cni_spec::Version::V0_3_1.as_str(), "0.3.1");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V0_1_0 => "0.1.0",
            Version::V0_2_0 => "0.2.0",
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// Whether results of this version use the 0.1/0.2 shape (`ip4`, `ip6`).
    ///
    /// ```
    /// assert!(cni_spec::Version::V0_2_0.has_legacy_result());
    /// ```
    pub fn has_legacy_result(self) -> bool {
        self <= Version::V0_2_0
    }

    /// Whether `ips[].version` is required (0.3.0 to 0.4.0).
    ///
    /// ```
    /// assert!(cni_spec::Version::V0_4_0.has_ip_version());
    /// assert!(!cni_spec::Version::V1_0_0.has_ip_version());
    /// ```
    pub fn has_ip_version(self) -> bool {
        (Version::V0_3_0..=Version::V0_4_0).contains(&self)
    }

    /// Whether `CHECK` may be called (0.4.0 and later).
    ///
    /// ```
    /// assert!(!cni_spec::Version::V0_3_1.has_check());
    /// ```
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// Whether `STATUS` may be called (1.1.0).
    ///
    /// ```
    /// assert!(cni_spec::Version::V1_1_0.has_status());
    /// ```
    pub fn has_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Whether `GC` may be called (1.1.0).
    ///
    /// ```
    /// assert!(!cni_spec::Version::V1_0_0.has_gc());
    /// ```
    pub fn has_gc(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Whether network config lists (chaining, `prevResult`) exist (0.3.0 and later).
    ///
    /// ```
    /// assert!(cni_spec::Version::V0_3_0.has_chaining());
    /// ```
    pub fn has_chaining(self) -> bool {
        self >= Version::V0_3_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = Error;

    /// Parses a known version; an empty string means 0.1.0, as in libcni.
    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Ok(Version::V0_1_0);
        }
        Version::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            Error::new(Code::IncompatibleVersion, "incompatible CNI versions")
                .with_details(format!("config is {s:?}, plugin supports {}", format_versions(&Version::ALL)))
        })
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|e: Error| serde::de::Error::custom(e.to_string()))
    }
}

/// Renders a version list as the Go plugins do in error details: `["0.1.0" "0.2.0"]`.
pub(crate) fn format_versions(versions: &[Version]) -> String {
    let quoted: Vec<String> = versions.iter().map(|v| format!("{:?}", v.as_str())).collect();
    format!("[{}]", quoted.join(" "))
}

/// Compares two dotted version strings numerically (`"0.10.0" > "0.9.0"`); non-numeric parts sort first.
fn semver_key(s: &str) -> Vec<u64> {
    s.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Chooses the version to use for a config list: the highest of `cniVersion` and
/// `cniVersions` that this library knows, as libcni does (entries newer than
/// [`Version::CURRENT`] or unknown are dropped first).
///
/// ```
/// use cni_spec::version::negotiate;
/// use cni_spec::Version;
/// let v = negotiate(Some("0.4.0"), &["1.0.0".into(), "2.0.0".into()]).unwrap();
/// assert_eq!(v, Version::V1_0_0);
/// ```
pub fn negotiate(cni_version: Option<&str>, cni_versions: &[String]) -> Result<Version, Error> {
    let mut candidates: Vec<&str> = cni_versions.iter().map(String::as_str).collect();
    if let Some(v) = cni_version {
        candidates.push(v);
    }
    if candidates.is_empty() {
        return Ok(Version::V0_1_0);
    }
    let known: Option<Version> = candidates.iter().filter_map(|s| s.parse().ok()).max();
    known.ok_or_else(|| {
        let mut shown = candidates.clone();
        shown.sort_by_key(|s| semver_key(s));
        Error::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(format!(
            "config lists {shown:?}, this runtime supports {}",
            format_versions(&Version::ALL)
        ))
    })
}

/// The reply to `VERSION`: `{"cniVersion": ..., "supportedVersions": [...]}`.
///
/// ```
/// use cni_spec::version::VersionInfo;
/// use cni_spec::Version;
/// let info = VersionInfo::new(Version::V1_0_0, &Version::ALL[..6]);
/// let json = serde_json::to_string(&info).unwrap();
/// assert!(json.starts_with(r#"{"cniVersion":"1.0.0","supportedVersions":["0.1.0""#));
/// assert!(info.supports("0.4.0"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    /// The version the reply is written in (the one the caller asked with).
    pub cni_version: String,
    /// Every version the plugin accepts.
    #[serde(default)]
    pub supported_versions: Vec<String>,
}

impl VersionInfo {
    /// A reply in `version` listing `supported`.
    pub fn new(version: Version, supported: &[Version]) -> Self {
        VersionInfo {
            cni_version: version.to_string(),
            supported_versions: supported.iter().map(|v| v.to_string()).collect(),
        }
    }

    /// Parses a plugin's reply as libcni does: `cniVersion` is required; a 0.2.0 reply without
    /// `supportedVersions` means 0.1.0 and 0.2.0.
    ///
    /// ```
    /// let info = cni_spec::version::VersionInfo::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap();
    /// assert_eq!(info.supported_versions, ["0.1.0", "0.2.0"]);
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            cni_version: Option<String>,
            supported_versions: Option<Vec<String>>,
        }
        let raw: Raw = crate::json::from_slice(bytes)?;
        let cni_version = raw.cni_version.filter(|v| !v.is_empty()).ok_or_else(|| {
            Error::new(Code::DecodingFailure, "decoding version info: missing field cniVersion")
        })?;
        let supported_versions = match raw.supported_versions {
            Some(v) => v,
            None if cni_version == "0.2.0" => vec!["0.1.0".into(), "0.2.0".into()],
            None => {
                return Err(Error::new(
                    Code::DecodingFailure,
                    "decoding version info: missing field supportedVersions",
                ));
            }
        };
        Ok(VersionInfo { cni_version, supported_versions })
    }

    /// Whether `version` is listed as supported.
    pub fn supports(&self, version: &str) -> bool {
        self.supported_versions.iter().any(|v| v == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        for (i, v) in Version::ALL.iter().enumerate() {
            assert_eq!(v.as_str().parse::<Version>().unwrap(), *v);
            if i > 0 {
                assert!(Version::ALL[i - 1] < *v);
            }
        }
        assert_eq!("".parse::<Version>().unwrap(), Version::V0_1_0);
        let err = "0.5.0".parse::<Version>().unwrap_err();
        assert_eq!(err.code, Code::IncompatibleVersion as u32);
        assert!(err.details.unwrap().contains("\"0.5.0\""));
    }

    #[test]
    fn negotiation_picks_highest_known() {
        assert_eq!(negotiate(None, &[]).unwrap(), Version::V0_1_0);
        assert_eq!(negotiate(Some("0.3.1"), &[]).unwrap(), Version::V0_3_1);
        let vs = vec!["1.1.0".to_string(), "0.3.1".into(), "9.9.9".into()];
        assert_eq!(negotiate(Some("1.0.0"), &vs).unwrap(), Version::V1_1_0);
        let err = negotiate(Some("3.0.0"), &["2.0.0".into()]).unwrap_err();
        assert_eq!(err.code, 1);
    }

    #[test]
    fn version_info_rules() {
        assert!(VersionInfo::parse(br#"{"supportedVersions":["1.0.0"]}"#).is_err());
        assert!(VersionInfo::parse(br#"{"cniVersion":"1.0.0"}"#).is_err());
        let i =
            VersionInfo::parse(br#"{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}"#).unwrap();
        assert!(i.supports("0.4.0") && !i.supports("1.1.0"));
    }
}
