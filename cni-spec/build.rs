//! Puts the git commit into `cnictl --version`. (Self-contained: this crate is published.)
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Asks cargo to run this script again when HEAD moves: HEAD itself, the branch it points
/// to, and packed-refs. Only paths that exist are named: cargo takes a missing
/// `rerun-if-changed` path as changed on every build, which rebuilt every crate depending
/// on this one on every `cargo` invocation. A branch ref that is not a loose file (packed)
/// is watched through its directory, where the loose file appears when the branch moves.
fn watch_head() {
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"])
        .and_then(|r| git(&["rev-parse", "--git-path", &r]));
    let paths = [git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])];
    for p in paths.into_iter().flatten() {
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = branch.map(std::path::PathBuf::from) {
        let existing =
            if branch.exists() { Some(branch.as_path()) } else { branch.parent().filter(|d| d.is_dir()) };
        if let Some(p) = existing {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
}

fn emit() {
    println!("cargo:rerun-if-env-changed=FERROCNI_GIT_COMMIT");
    let commit = match std::env::var("FERROCNI_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(c) => {
                watch_head();
                c
            }
            None => "unknown".into(),
        },
    };
    println!("cargo:rustc-env=FERROCNI_GIT_COMMIT={commit}");
}

fn main() {
    emit();
}
