//! Delegate configs saved per attachment: `<dataDir>/<network>/<containerID>:<ifname>`
//! (0600, written atomically), so DEL needs neither the daemon nor an unchanged config.

use std::fs;
use std::path::PathBuf;

use super::error::VxlanError;

fn io(what: &'static str, path: &std::path::Path) -> impl Fn(std::io::Error) -> VxlanError {
    let path = path.to_path_buf();
    move |source| VxlanError::Io { what, path: path.clone(), source }
}

pub struct SavedConfigs {
    dir: PathBuf,
}

impl SavedConfigs {
    pub fn new(dir: PathBuf) -> Self {
        SavedConfigs { dir }
    }

    fn path(&self, net: &str, cid: &str, ifname: &str) -> PathBuf {
        // ':' appears in neither a container ID nor an interface name.
        self.dir.join(net).join(format!("{cid}:{ifname}"))
    }

    /// The file name of an attachment's config.
    pub fn file_name(cid: &str, ifname: &str) -> String {
        format!("{cid}:{ifname}")
    }

    /// Saves `conf`; returns the directories this made (for [`SavedConfigs::forget`]).
    pub fn store(&self, net: &str, cid: &str, ifname: &str, conf: &[u8]) -> Result<Vec<PathBuf>, VxlanError> {
        let path = self.path(net, cid, ifname);
        let dir = path.parent().expect("a file in a directory");
        let created = crate::fsutil::create_dirs(dir, 0o700).map_err(io("creating", dir))?;
        cni_spec::fs::write_atomic(&path, conf, 0o600).map_err(|e| {
            crate::fsutil::remove_dirs(&created);
            io("saving", &path)(e)
        })?;
        Ok(created)
    }

    /// Undoes a [`SavedConfigs::store`] of a failed ADD: the file, and the directories the
    /// store made.
    pub fn forget(&self, net: &str, cid: &str, ifname: &str, created: &[PathBuf]) {
        let _ = fs::remove_file(self.path(net, cid, ifname));
        crate::fsutil::remove_dirs(created);
    }

    pub fn load(&self, net: &str, cid: &str, ifname: &str) -> Result<Option<Vec<u8>>, VxlanError> {
        let path = self.path(net, cid, ifname);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            // Nothing can have been saved where no file can be.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENAMETOOLONG)) => Ok(None),
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    pub fn remove(&self, net: &str, cid: &str, ifname: &str) -> Result<(), VxlanError> {
        let path = self.path(net, cid, ifname);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Every saved attachment of `net`: (container ID, ifname).
    pub fn attachments(&self, net: &str) -> Result<Vec<(String, String)>, VxlanError> {
        let dir = self.dir.join(net);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let mut out: Vec<(String, String)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    return None;
                }
                let (cid, ifname) = name.split_once(':')?;
                Some((cid.to_string(), ifname.to_string()))
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The delegate configs flannel's CNI plugin saved: `<dataDir>/<containerID>` (one file per
/// container, whatever the interface), read for DEL of pods it attached.
pub struct FlannelSaved {
    dir: PathBuf,
}

impl FlannelSaved {
    pub fn new(dir: PathBuf) -> Self {
        FlannelSaved { dir }
    }

    pub fn path(&self, cid: &str) -> PathBuf {
        self.dir.join(cid)
    }

    pub fn load(&self, cid: &str) -> Result<Option<Vec<u8>>, VxlanError> {
        // A container ID that is not a plain file name cannot name one of flannel's files.
        if cid.is_empty() || cid.contains('/') || cid == "." || cid == ".." {
            return Ok(None);
        }
        let path = self.path(cid);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENAMETOOLONG | libc::EISDIR)) => {
                Ok(None)
            }
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    pub fn remove(&self, cid: &str) -> Result<(), VxlanError> {
        let path = self.path(cid);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("removing", &path)(e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_load_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = SavedConfigs::new(dir.path().to_path_buf());
        let made = s.store("net", "c-1.x", "eth0", b"{}").unwrap();
        assert_eq!(made, [dir.path().join("net")]);
        s.store("net", "c2", "net1", b"{\"a\":1}").unwrap();
        assert_eq!(s.load("net", "c2", "net1").unwrap().unwrap(), b"{\"a\":1}");
        assert_eq!(
            s.attachments("net").unwrap(),
            vec![("c-1.x".into(), "eth0".into()), ("c2".into(), "net1".into())]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join("net/c2:net1")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        s.remove("net", "c2", "net1").unwrap();
        s.remove("net", "c2", "net1").unwrap();
        assert_eq!(s.load("net", "c2", "net1").unwrap(), None);
        assert!(s.attachments("other").unwrap().is_empty());
    }

    #[test]
    fn flannel_saved_reads_only_plain_container_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = FlannelSaved::new(dir.path().join("flannel"));
        // No directory at all (a node that never ran flannel): nothing, no error.
        assert_eq!(f.load("abc").unwrap(), None);
        fs::create_dir(dir.path().join("flannel")).unwrap();
        fs::write(dir.path().join("flannel/abc"), b"{}").unwrap();
        fs::write(dir.path().join("secret"), b"no").unwrap();
        fs::create_dir(dir.path().join("flannel/sub")).unwrap();
        assert_eq!(f.load("abc").unwrap().unwrap(), b"{}");
        for cid in ["", ".", "..", "../secret", "sub", "abc/x"] {
            assert_eq!(f.load(cid).unwrap(), None, "{cid:?}");
        }
        f.remove("abc").unwrap();
        f.remove("abc").unwrap();
        assert_eq!(f.load("abc").unwrap(), None);
    }
}
