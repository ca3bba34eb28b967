//! A Node object as the kube subnet manager keeps it: only what leasing needs, read straight
//! from the API's JSON. Status (images, addresses), labels, managed fields and every other
//! annotation are skipped while parsing, so a 5,000-node cache costs a few hundred bytes per
//! node rather than the tens of kilobytes of a full `k8s_openapi` `Node`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};

/// Annotation values larger than this are not kept (their key is, with
/// [`NodeLite::oversized`]): a hostile Node can carry up to 256 KiB of annotations.
pub const MAX_ANNOTATION: usize = 16 * 1024;

/// The last path element of every annotation the manager reads (flannel's, and ours under
/// [`super::annotations::OWN_PREFIX`]). Others are dropped while parsing.
const KEPT_SUFFIXES: &[&str] = &[
    "kube-subnet-manager",
    "backend-type",
    "backend-data",
    "backend-v6-data",
    "public-ip",
    "public-ipv6",
    "public-ip-overwrite",
    "public-ipv6-overwrite",
    "identity",
    "encryption",
    "signature",
];

/// The parts of a Node that leasing uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLite {
    /// Name, UID, resource version and the kept annotations (nothing else is filled in).
    pub metadata: ObjectMeta,
    /// `metadata.creationTimestamp` as the API wrote it (RFC 3339, whole seconds).
    pub created: Option<String>,
    /// `spec.podCIDRs`, or `[spec.podCIDR]` when only that is set.
    pub pod_cidrs: Vec<String>,
    /// The status of the `NetworkUnavailable` condition, when there is one.
    pub network_unavailable: Option<String>,
    /// Kept annotations whose value was larger than [`MAX_ANNOTATION`] (value dropped).
    pub oversized: Vec<(String, usize)>,
}

impl NodeLite {
    /// The node's name.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// Its UID.
    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    /// One kept annotation.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
    }

    /// The kept annotations.
    pub fn annotations(&self) -> impl Iterator<Item = (&String, &String)> {
        self.metadata.annotations.iter().flatten()
    }
}

/// The kept annotations, and the kept names whose value was too large (with its length).
type KeptAnnotations = (BTreeMap<String, String>, Vec<(String, usize)>);

fn kept(key: &str) -> bool {
    KEPT_SUFFIXES.iter().any(|s| key.ends_with(s))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<String>,
    #[serde(default, deserialize_with = "kept_annotations")]
    annotations: KeptAnnotations,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs", default)]
    pod_cidrs: Vec<String>,
}

#[derive(Deserialize)]
struct WireCondition {
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    status: String,
}

#[derive(Deserialize, Default)]
struct WireStatus {
    #[serde(default)]
    conditions: Vec<WireCondition>,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: WireMeta,
    #[serde(default)]
    spec: WireSpec,
    #[serde(default)]
    status: WireStatus,
}

/// Reads an annotation map, keeping ours (values up to [`MAX_ANNOTATION`]) and skipping the
/// rest without allocating for it.
fn kept_annotations<'de, D: Deserializer<'de>>(d: D) -> Result<KeptAnnotations, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = KeptAnnotations;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            let mut big = Vec::new();
            while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                if kept(&k) {
                    let v: String = m.next_value()?;
                    if v.len() > MAX_ANNOTATION {
                        big.push((k.into_owned(), v.len()));
                    } else {
                        out.insert(k.into_owned(), v);
                    }
                } else {
                    m.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok((out, big))
        }
    }
    d.deserialize_any(V)
}

impl<'de> Deserialize<'de> for NodeLite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Wire::deserialize(d)?;
        let (annotations, oversized) = w.metadata.annotations;
        let pod_cidrs = if w.spec.pod_cidrs.is_empty() {
            w.spec.pod_cidr.into_iter().filter(|c| !c.is_empty()).collect()
        } else {
            w.spec.pod_cidrs
        };
        Ok(NodeLite {
            metadata: ObjectMeta {
                name: w.metadata.name,
                uid: w.metadata.uid,
                resource_version: w.metadata.resource_version,
                annotations: (!annotations.is_empty()).then_some(annotations),
                ..Default::default()
            },
            created: w.metadata.creation_timestamp,
            pod_cidrs,
            network_unavailable: w
                .status
                .conditions
                .into_iter()
                .find(|c| c.type_ == "NetworkUnavailable")
                .map(|c| c.status),
            oversized,
        })
    }
}

impl kube::Resource for NodeLite {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_leasing_needs() {
        let big = "x".repeat(MAX_ANNOTATION + 1);
        let json = serde_json::json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {
                "name": "w1", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"kubernetes.io/hostname": "w1"},
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1}",
                    "flannel.alpha.coreos.com/public-ip": "192.0.2.1",
                    "node.alpha.kubernetes.io/ttl": "0",
                    "overlayd.ferrocni.io/encryption": big,
                }
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"], "taints": []},
            "status": {
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "True"}],
                "images": [{"names": ["a"], "sizeBytes": 1}]
            }
        });
        let n: NodeLite = serde_json::from_value(json).unwrap();
        assert_eq!(n.name(), "w1");
        assert_eq!(n.uid(), "u-1");
        assert_eq!(n.metadata.resource_version.as_deref(), Some("42"));
        assert_eq!(n.created.as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(n.pod_cidrs, ["10.244.1.0/24", "fd00::/64"]);
        assert_eq!(n.network_unavailable.as_deref(), Some("True"));
        assert_eq!(n.annotations().count(), 2, "{n:?}");
        assert_eq!(n.annotation("flannel.alpha.coreos.com/public-ip"), Some("192.0.2.1"));
        assert_eq!(n.oversized, [("overlayd.ferrocni.io/encryption".to_string(), MAX_ANNOTATION + 1)]);
    }

    #[test]
    fn a_bare_node_parses() {
        let n: NodeLite = serde_json::from_str(r#"{"metadata":{"name":"x","annotations":null}}"#).unwrap();
        assert_eq!(n.name(), "x");
        assert!(n.pod_cidrs.is_empty() && n.annotations().count() == 0);
        let n: NodeLite =
            serde_json::from_str(r#"{"metadata":{"name":"x"},"spec":{"podCIDR":"10.1.0.0/24"}}"#).unwrap();
        assert_eq!(n.pod_cidrs, ["10.1.0.0/24"]);
    }
}
