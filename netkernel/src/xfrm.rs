//! The kernel's IPsec (XFRM): whether it can do ESP itself. A kernel built with XFRM but
//! without `INET_ESP` (or with the esp4 module missing) refuses an ESP state; IPsec then runs
//! in userspace (strongSwan's kernel-libipsec).

use std::process::{Command, Stdio};

/// An SPI no IKE daemon hands out for two documentation addresses (RFC 5737).
const PROBE_SPI: &str = "0xfe0cf00d";
const PROBE_SRC: &str = "192.0.2.254";
const PROBE_DST: &str = "192.0.2.253";

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this network namespace's kernel does ESP: adds an ESP state with an AES-GCM key
/// and removes it again.
pub fn esp_available() -> bool {
    let key = format!("0x{}", "11".repeat(36));
    let added = ip(&[
        "xfrm",
        "state",
        "add",
        "src",
        PROBE_SRC,
        "dst",
        PROBE_DST,
        "proto",
        "esp",
        "spi",
        PROBE_SPI,
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        &key,
        "128",
    ]);
    if added {
        ip(&[
            "xfrm", "state", "delete", "src", PROBE_SRC, "dst", PROBE_DST, "proto", "esp", "spi", PROBE_SPI,
        ]);
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_leaves_no_state_behind() {
        if !nix::unistd::geteuid().is_root() {
            // Under CI=true a test that cannot run fails (as test-netns's `skip`).
            assert!(std::env::var("CI").map_or(true, |v| v != "true"), "needs root (CI=true)");
            eprintln!("SKIPPED: needs root (ip xfrm)");
            return;
        }
        // In a fresh namespace of its own (the `ip` children inherit this thread's).
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let esp = esp_available();
            let out = Command::new("ip").args(["xfrm", "state", "list"]).output().unwrap();
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty(), "probe state left (esp {esp})");
        })
        .join()
        .unwrap();
    }
}
