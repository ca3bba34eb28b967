//! Strict encryption: one nft table that drops pod traffic entering or leaving a node
//! through the plaintext overlay devices (the VXLAN ones), so that only the tunnel carries
//! pod traffic between nodes. Replaced in one transaction; removed by deleting the table.

use std::fmt::Write;

use crate::error::Result;
use crate::nft;

/// The rule set for `devices` (e.g. `flannel.1`, `flannel-v6.1`) in `inet <table>`.
pub fn script(table: &str, devices: &[String]) -> String {
    let set = devices.iter().map(|d| nft::quote(d)).collect::<Vec<_>>().join(", ");
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {table}");
    // Before the node's accept rules (priority filter) so nothing else can let it through.
    for (chain, hook) in [("input", "input"), ("forward", "forward"), ("output", "output")] {
        let _ = writeln!(
            s,
            "add chain inet {table} {chain} {{ type filter hook {hook} priority filter - 10; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain inet {table} {chain}");
    }
    if !devices.is_empty() {
        let comment = nft::quote("ferrocni strict: unencrypted overlay traffic");
        let _ = writeln!(s, "add rule inet {table} input iifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} forward iifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} forward oifname {{ {set} }} counter drop comment {comment}");
        let _ =
            writeln!(s, "add rule inet {table} output oifname {{ {set} }} counter drop comment {comment}");
    }
    s
}

/// Installs (or replaces) the strict rules.
pub fn ensure(table: &str, devices: &[String]) -> Result<()> {
    nft::apply(&script(table, devices), "installing the strict encryption rules")
}

/// Whether the table exists.
pub fn present(table: &str) -> Result<bool> {
    Ok(nft::list_json(&["table", "inet", table], "reading the strict encryption rules")?.is_some())
}

/// Removes the rules (nothing to do when absent).
pub fn remove(table: &str) -> Result<()> {
    if present(table)? {
        nft::apply(&format!("delete table inet {table}\n"), "removing the strict encryption rules")?;
    }
    Ok(())
}
