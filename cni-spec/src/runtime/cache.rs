//! The result cache, in libcni's on-disk format, so a node can switch between this runtime
//! and libcni without losing track of its attachments.
//!
//! One file per attachment: `<cache_dir>/results/<network>-<containerID>-<ifname>`
//! (directory 0700, file 0600), JSON with `kind: "cniCacheV1"`.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::config::Object;
use crate::error::Error;
use crate::result::SuccessResult;
use crate::version::Version;

/// The `kind` libcni writes.
pub const CACHE_KIND: &str = "cniCacheV1";

/// One cached attachment (libcni's `cachedInfo`).
///
/// ```
/// let c = cni_spec::runtime::CachedAttachment {
///     container_id: "c1".into(), if_name: "eth0".into(), network_name: "net".into(),
///     config: b"{}".to_vec(), ..Default::default()
/// };
/// let v = serde_json::to_value(&c).unwrap();
/// assert_eq!((v["kind"].as_str(), v["config"].as_str()), (Some("cniCacheV1"), Some("e30=")));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedAttachment {
    /// Always [`CACHE_KIND`].
    pub kind: String,
    /// The container ID.
    pub container_id: String,
    /// The config list's bytes (base64 in the file, as Go encodes `[]byte`).
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64", default)]
    pub config: Vec<u8>,
    /// The interface name.
    pub if_name: String,
    /// The network name.
    pub network_name: String,
    /// The netns path.
    #[serde(rename = "netns", default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `CNI_ARGS` pairs.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub cni_args: Vec<[String; 2]>,
    /// The capability arguments given on ADD.
    #[serde(
        default,
        skip_serializing_if = "Object::is_empty",
        deserialize_with = "crate::config::null_default"
    )]
    pub capability_args: Object,
    /// The final ADD result, in the list's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl Default for CachedAttachment {
    fn default() -> Self {
        CachedAttachment {
            kind: CACHE_KIND.to_string(),
            container_id: String::new(),
            config: Vec::new(),
            if_name: String::new(),
            network_name: String::new(),
            netns: None,
            cni_args: Vec::new(),
            capability_args: Object::new(),
            result: None,
        }
    }
}

impl CachedAttachment {
    /// The cached result converted to `version`, as libcni does on DEL and CHECK.
    pub fn result_as(&self, version: Version) -> Result<Option<SuccessResult>, Error> {
        match &self.result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => {
                let r = SuccessResult::from_value(v.clone(), version)?;
                r.converted(version).map(Some)
            }
        }
    }
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&STANDARD.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = Option::<String>::deserialize(d)?.unwrap_or_default();
    STANDARD.decode(s).map_err(serde::de::Error::custom)
}

/// The cache directory (libcni's default is `/var/lib/cni`).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    /// A cache rooted at `dir` (results go to `dir/results`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ResultCache { dir: dir.into() }
    }

    fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir().join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes an entry atomically (temporary file, then rename), mode 0600.
    pub fn store(&self, entry: &CachedAttachment) -> Result<(), Error> {
        let dir = self.results_dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), &e))?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let bytes = serde_json::to_vec(entry).expect("cache entries serialize");
        crate::fs::write_atomic(&path, &bytes, 0o600)
            .map_err(|e| Error::io(format!("writing {}", path.display()), &e))
    }

    /// Reads one entry; `None` when there is none.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CachedAttachment>, Error> {
        read_entry(&self.path(network, container_id, ifname))
    }

    /// Removes one entry; a missing one is not an error.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<(), Error> {
        let path = self.path(network, container_id, ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()), &e))
            }
            _ => Ok(()),
        }
    }

    /// Every readable entry of `network` (unreadable files are skipped, as libcni does).
    pub fn attachments(&self, network: &str) -> Result<Vec<CachedAttachment>, Error> {
        let dir = self.results_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), &e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            // Skip the temporary files of `store` (a write in progress, or left by a crash).
            if entry.file_name().as_encoded_bytes().starts_with(b".") {
                continue;
            }
            if let Ok(Some(a)) = read_entry(&entry.path())
                && a.network_name == network
                && a.kind == CACHE_KIND
            {
                out.push(a);
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.if_name).cmp(&(&b.container_id, &b.if_name)));
        Ok(out)
    }
}

fn read_entry(path: &Path) -> Result<Option<CachedAttachment>, Error> {
    match fs::read(path) {
        Ok(bytes) => crate::json::from_slice(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), &e)),
    }
}
