//! Directories made by a run, so a failed run can remove exactly what it made.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Creates `dir` and its missing parents with `mode`; returns the ones this call created,
/// outermost first. On failure, what it created is removed again.
pub fn create_dirs(dir: &Path, mode: u32) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        match fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => missing.push(p.to_path_buf()),
            Err(e) => return Err(e),
        }
        at = p.parent();
    }
    missing.reverse();
    let mut created = Vec::new();
    for p in missing {
        match fs::DirBuilder::new().mode(mode).create(&p) {
            Ok(()) => created.push(p),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(e);
            }
        }
    }
    Ok(created)
}

/// Removes directories (innermost first) if they are empty; a non-empty one stays.
pub fn remove_dirs(dirs: &[PathBuf]) {
    for d in dirs.iter().rev() {
        let _ = fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_removes_only_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let made = create_dirs(&tmp.path().join("a/b/c"), 0o755).unwrap();
        assert_eq!(made.len(), 3);
        assert!(create_dirs(&tmp.path().join("a/b/c"), 0o755).unwrap().is_empty());
        remove_dirs(&made);
        assert!(!tmp.path().join("a").exists() && tmp.path().exists());
    }
}
