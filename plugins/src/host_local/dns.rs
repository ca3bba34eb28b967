//! `resolvConf`: a resolv.conf file turned into the result's `dns`, as the reference reads it.

use std::path::Path;

use cni_spec::Dns;

use super::error::HostLocalError;

/// Reads `path` (the `ipam.resolvConf` field).
/// A resolv.conf is a few lines; more than this is not one.
const MAX_LEN: u64 = 1 << 20;

pub fn read(path: &Path) -> Result<Dns, HostLocalError> {
    use std::io::Read;
    let fail =
        |why: String| HostLocalError::config("ipam.resolvConf", format!("reading {}: {why}", path.display()));
    // Checked before opening: a FIFO would block the open, a device never end the read.
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_LEN + 1).read_to_string(&mut text))
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_LEN {
        return Err(fail("larger than 1 MiB".into()));
    }
    Ok(parse(&text))
}

/// `nameserver`, `domain`, `search` and `options` lines; comments (`#`, `;`) and anything
/// else are skipped. A later `domain` wins, the lists accumulate.
pub fn parse(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), Some(first)) = (fields.next(), fields.next()) else { continue };
        let rest = std::iter::once(first).chain(fields).map(String::from);
        match key {
            "nameserver" => dns.nameservers.push(first.to_string()),
            "domain" => dns.domain = Some(first.to_string()),
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_the_reference() {
        let dns = parse(
            "# generated\n; also a comment\nnameserver 192.0.2.3\nnameserver  2001:db8::53 extra\n\
             domain a.example\ndomain b.example\nsearch x.example y.example\nsearch z.example\n\
             options ndots:5 timeout:1\nbogus line\nnameserver\n",
        );
        assert_eq!(dns.nameservers, ["192.0.2.3", "2001:db8::53"]);
        assert_eq!(dns.domain.as_deref(), Some("b.example"));
        assert_eq!(dns.search, ["x.example", "y.example", "z.example"]);
        assert_eq!(dns.options, ["ndots:5", "timeout:1"]);
        assert!(parse("").is_empty());
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let e = read(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string()
                .starts_with("invalid network config: ipam.resolvConf: reading /nonexistent/resolv.conf")
        );
    }
}
