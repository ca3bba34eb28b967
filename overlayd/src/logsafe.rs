//! What may go into a log line from the store, the API or the network: values any node can
//! write are cut short and made printable, so a hostile lease can neither flood the log nor
//! inject terminal escapes into it.

/// Most characters of a foreign value in one log line.
pub const EXCERPT_CHARS: usize = 200;

/// A printable excerpt of `bytes`: at most [`EXCERPT_CHARS`] characters, control characters
/// escaped, the length said when cut.
pub fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(EXCERPT_CHARS).flat_map(char::escape_default).collect();
    let total = text.chars().count();
    if total > EXCERPT_CHARS {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

/// `s` with control characters escaped (for text shown on a terminal).
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_and_hostile_values_are_cut_and_escaped() {
        let big = vec![b'a'; 1_500_000];
        let e = excerpt(&big);
        assert!(e.len() < 260 && e.ends_with("(1500000 bytes)"), "{e}");
        assert_eq!(excerpt(b"\x1b[2Jhi\n"), "\\u{1b}[2Jhi\\n");
        assert_eq!(printable("node\x1b]0;x\x07"), "node\\u{1b}]0;x\\u{7}");
        assert_eq!(printable("plain"), "plain");
    }
}
