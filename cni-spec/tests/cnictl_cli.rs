//! `cnictl completions` and `cnictl man`: what shells and `man` read, generated from the
//! command line itself (no network config or namespace needed).

use std::process::Command;

const CNICTL: &str = env!("CARGO_BIN_EXE_cnictl");

fn run(args: &[&str]) -> String {
    let out = Command::new(CNICTL).args(args).output().unwrap();
    assert!(out.status.success(), "cnictl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_page() {
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("_cnictl()") && bash.contains("--conf-dir") && bash.contains(" gc "), "{bash}");
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef cnictl") && zsh.contains("--cni-path"), "{zsh}");
    let fish = run(&["completions", "fish"]);
    assert!(fish.contains("complete -c cnictl"), "{fish}");
    let man = run(&["man"]);
    assert!(
        man.contains(".TH cnictl 1") && man.contains("conf\\-dir") && man.contains("NETCONFPATH"),
        "{man}"
    );
    let bad = Command::new(CNICTL).args(["completions", "cmd.exe"]).output().unwrap();
    assert!(!bad.status.success() && bad.stdout.is_empty());
}
