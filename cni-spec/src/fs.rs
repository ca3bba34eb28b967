//! Durable, atomic file replacement: what a runtime's result cache, a plugin's saved
//! state and a daemon's state files need so that a crash or `kill -9` at any instant leaves
//! either the old or the new content, never a torn file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Replaces `path` with `data`, file mode `mode` (whatever the umask): written to a hidden
/// temporary file beside it, flushed to disk, renamed over `path`, and the directory flushed
/// so the rename itself survives a power loss. On failure the temporary file is removed and
/// `path` is unchanged. The directory must exist.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("state.json");
/// cni_spec::fs::write_atomic(&path, b"{\"a\":1}", 0o600).unwrap();
/// cni_spec::fs::write_atomic(&path, b"{\"a\":2}", 0o600).unwrap();
/// assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":2}");
/// ```
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    // A name unique per process and call: two threads (or two plugin processes) replacing
    // the same file must not share a temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display()))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        // The creation mode was masked by the umask; the caller asked for exactly `mode`.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The data is safe either way; a directory that cannot be flushed only weakens the
    // guarantee against power loss, so it is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_whole_with_the_exact_mode_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old", 0o644).unwrap();
        write_atomic(&path, b"new content", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_content_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"old", 0o600).unwrap();
        // Renaming a file over a non-empty directory fails after the temporary file exists.
        let blocker = dir.path().join("d");
        std::fs::create_dir(&blocker).unwrap();
        std::fs::write(blocker.join("x"), b"").unwrap();
        assert!(write_atomic(&blocker, b"new", 0o600).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("d"), std::ffi::OsString::from("f")]);
    }

    #[test]
    fn concurrent_writers_of_one_file_never_clash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, &[i; 64], 0o600).unwrap();
                    }
                });
            }
        });
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len(), 64);
        assert!(content.iter().all(|b| *b == content[0]), "a torn file: {content:?}");
    }
}
