//! The binaries' own command lines: `--version` names the git commit, `overlayctl
//! completions` and `overlayctl man` print what shells and `man` read (no daemon needed).

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("{bin}: {e}"));
    assert!(out.status.success(), "{bin} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let expected = match (std::env::var("FERROCNI_GIT_COMMIT"), head) {
        (Ok(c), _) if !c.is_empty() => c,
        (_, Some(h)) => h,
        _ => "unknown".into(),
    };
    for (bin, name) in
        [(env!("CARGO_BIN_EXE_overlayd"), "overlayd"), (env!("CARGO_BIN_EXE_overlayctl"), "overlayctl")]
    {
        let v = run(bin, &["--version"]);
        assert_eq!(v.trim(), format!("{name} {} (commit {expected})", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn completions_and_man_pages() {
    let ctl = env!("CARGO_BIN_EXE_overlayctl");
    let bash = run(ctl, &["completions", "bash"]);
    assert!(bash.contains("_overlayctl()") && bash.contains("encryption"), "{bash}");
    let zsh = run(ctl, &["completions", "zsh", "--program", "overlayd"]);
    assert!(zsh.starts_with("#compdef overlayd") && zsh.contains("--etcd-endpoints"), "{zsh}");
    let man = run(ctl, &["man"]);
    assert!(man.contains(".TH overlayctl 1") && man.contains("encryption"), "{man}");
    let man = run(ctl, &["man", "--program", "overlayd"]);
    assert!(man.contains(".TH overlayd 1") && man.contains("etcd\\-endpoints"), "{man}");
    let bad = Command::new(ctl).args(["completions", "cmd.exe"]).output().unwrap();
    assert!(!bad.status.success() && bad.stdout.is_empty());
}
