// Shared by the build scripts of the crates whose binaries print `--version`: sets
// FERROCNI_GIT_COMMIT to the source's commit. In a tree without git metadata (a release
// tarball) the packager may set FERROCNI_GIT_COMMIT; otherwise it is `unknown`.
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

pub fn emit() {
    println!("cargo:rerun-if-env-changed=FERROCNI_GIT_COMMIT");
    let commit = match std::env::var("FERROCNI_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => match git(&["rev-parse", "--short=12", "HEAD"]) {
            Some(c) => {
                // Built again when HEAD moves: HEAD itself and the branch it points to.
                for p in [git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--symbolic-full-name", "HEAD"])
                    .and_then(|r| git(&["rev-parse", "--git-path", &r]))]
                .into_iter()
                .flatten()
                {
                    println!("cargo:rerun-if-changed={p}");
                }
                if let Some(p) = git(&["rev-parse", "--git-path", "packed-refs"]) {
                    println!("cargo:rerun-if-changed={p}");
                }
                c
            }
            None => "unknown".into(),
        },
    };
    println!("cargo:rustc-env=FERROCNI_GIT_COMMIT={commit}");
}
