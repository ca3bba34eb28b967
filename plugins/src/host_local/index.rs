//! Lease owners, and the owner index: a cache of every lease file's owner kept inside the
//! store's `lock` file.
//!
//! Why: the reference reads every lease file on every ADD (to refuse a second address for
//! the same attachment), so its ADD slows down linearly with the leases (≈0.4 s with
//! 60,000 here). The index lets a run read one file instead. The reference never reads or
//! writes the `lock` file's content (it only `flock`s it), so the on-disk format stays its
//! own and both plugins can share a directory.
//!
//! The index is a cache, trusted only while the directory is exactly as we left it: its
//! header records the directory's device, inode, mtime and ctime after our last change,
//! and any create, unlink or rename in the directory (by the reference plugin, an older
//! version, a run killed half-way or a person) changes them, so the next run reads the
//! directory instead. Since Linux 6.13 a directory's timestamps are fine-grained once they
//! have been read, so two changes within one clock tick still differ; on older kernels a
//! change by another plugin within the same tick as ours can go unseen. That costs little:
//! a lease is created only if its file does not exist (the file system decides, never the
//! index), a run that finds a lease the index missed stops trusting it, and an owner the
//! index reports is confirmed by reading that lease file before it is acted on.
//!
//! Layout: a fixed-size header line, then records, oldest first: `+<ip> <id> <ifname>`
//! (a lease), `+<ip> <id>` (a legacy id-only lease), `+<ip>` (a lease with no readable
//! owner) and `-<ip>` (released). A run appends its records and rewrites the header; the
//! log is compacted when released records dominate.

use std::collections::HashMap;
use std::fs::Metadata;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use cni_spec::plugin::Attachment;

/// The owner recorded in a lease file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// `<containerID>\r\n<ifname>`, the current format.
    Attachment { id: String, ifname: String },
    /// `<containerID>` alone, written by old versions of the reference.
    Legacy { id: String },
    /// Empty (the reference killed between creating and writing the file) or unreadable
    /// content: nobody's, so GC frees it.
    Unowned,
}

/// How a lease's owner relates to an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// Same container ID and interface.
    Full,
    /// A legacy lease of the same container ID (the interface is not recorded).
    Legacy,
    /// Someone else's.
    No,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && !s.contains(char::is_whitespace)
}

impl Owner {
    /// Reads a lease file's content. Whitespace around the content and around each line
    /// is ignored; lines after the interface name are ignored.
    pub fn parse(content: &[u8]) -> Owner {
        let Ok(text) = std::str::from_utf8(content) else { return Owner::Unowned };
        let mut lines = text.trim().split('\n').map(str::trim);
        let id = lines.next().unwrap_or_default();
        if !is_token(id) {
            return Owner::Unowned;
        }
        match lines.next() {
            None => Owner::Legacy { id: id.into() },
            Some(ifname) if is_token(ifname) => Owner::Attachment { id: id.into(), ifname: ifname.into() },
            Some(_) => Owner::Unowned,
        }
    }

    /// The content of a lease file for `a`, exactly as the reference writes it.
    pub fn content_for(a: &Attachment) -> String {
        format!("{}\r\n{}", a.container_id.trim(), a.ifname)
    }

    /// The owner of a file written for `a`.
    pub fn of(a: &Attachment) -> Owner {
        Owner::Attachment { id: a.container_id.trim().into(), ifname: a.ifname.clone() }
    }

    /// How this owner relates to `a`.
    pub fn matches(&self, a: &Attachment) -> Match {
        let cid = a.container_id.trim();
        match self {
            Owner::Attachment { id, ifname } if id == cid && *ifname == a.ifname => Match::Full,
            Owner::Legacy { id } if id == cid => Match::Legacy,
            _ => Match::No,
        }
    }

    /// Appends the index record of a lease of `ip` owned by `self`.
    pub fn record(&self, ip: IpAddr, out: &mut String) {
        use std::fmt::Write;
        let _ = match self {
            Owner::Attachment { id, ifname } => writeln!(out, "+{ip} {id} {ifname}"),
            Owner::Legacy { id } => writeln!(out, "+{ip} {id}"),
            Owner::Unowned => writeln!(out, "+{ip}"),
        };
    }
}

/// The record of a released lease.
pub fn removal(ip: IpAddr, out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(out, "-{ip}");
}

/// One index record, borrowed from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record<'a> {
    /// A lease of `ip` (its text) with the owner's fields, if readable.
    Add { ip: &'a str, id: Option<&'a str>, ifname: Option<&'a str> },
    /// `ip` was released.
    Remove { ip: &'a str },
}

impl Record<'_> {
    fn parse(line: &str) -> Option<Record<'_>> {
        if let Some(ip) = line.strip_prefix('-') {
            return (!ip.is_empty() && !ip.contains(' ')).then_some(Record::Remove { ip });
        }
        let mut fields = line.strip_prefix('+')?.split(' ');
        let ip = fields.next().filter(|ip| !ip.is_empty())?;
        let (id, ifname) = (fields.next(), fields.next());
        if fields.next().is_some() || id == Some("") || ifname == Some("") {
            return None;
        }
        Some(Record::Add { ip, id, ifname })
    }
}

/// The records of a log; `Err` at the first malformed one.
pub fn records(log: &str) -> impl Iterator<Item = Result<Record<'_>, Corrupt>> {
    log.lines().map(|line| Record::parse(line).ok_or(Corrupt))
}

/// A log that does not parse (someone edited the `lock` file): read the directory instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

/// The leases of `a`'s container according to `log` (any interface: a lease rewritten in
/// place to the legacy id-only form changes no directory stamp, so callers confirm these
/// by reading the files), with their recorded owners.
pub fn find<'a>(log: &'a str, a: &Attachment) -> Result<Vec<(&'a str, Owner)>, Corrupt> {
    let cid = a.container_id.trim();
    let mut hits: HashMap<&str, Owner> = HashMap::new();
    for rec in records(log) {
        match rec? {
            Record::Add { ip, id: Some(id), ifname } if id == cid => {
                let owner = match ifname {
                    Some(ifname) => Owner::Attachment { id: id.into(), ifname: ifname.into() },
                    None => Owner::Legacy { id: id.into() },
                };
                hits.insert(ip, owner);
            }
            Record::Add { ip, .. } | Record::Remove { ip } => {
                if !hits.is_empty() {
                    hits.remove(ip);
                }
            }
        }
    }
    Ok(hits.into_iter().collect())
}

/// Every lease the log describes.
pub fn replay(log: &str) -> Result<HashMap<IpAddr, Owner>, Corrupt> {
    let mut leases = HashMap::new();
    for rec in records(log) {
        match rec? {
            Record::Add { ip, id, ifname } => {
                let owner = match (id, ifname) {
                    (Some(id), Some(ifname)) => Owner::Attachment { id: id.into(), ifname: ifname.into() },
                    (Some(id), None) => Owner::Legacy { id: id.into() },
                    _ => Owner::Unowned,
                };
                leases.insert(ip.parse().map_err(|_| Corrupt)?, owner);
            }
            Record::Remove { ip } => {
                leases.remove(&ip.parse().map_err(|_| Corrupt)?);
            }
        }
    }
    Ok(leases)
}

/// What identifies the state of the store directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of a directory's metadata.
    pub fn of(m: &Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether the file system keeps sub-second timestamps. With whole seconds (old ext4
    /// with 128-byte inodes, some network file systems) a change within the second would
    /// go unseen, so the index is not used there.
    pub fn is_fine(&self) -> bool {
        self.mtime.1 != 0 || self.ctime.1 != 0
    }
}

/// The header's size: fixed, so it can be rewritten in place as the last step of a write.
pub const HEADER_LEN: usize = 192;
const MAGIC: &str = "host-local-owner-index-v1";

/// The header's content besides the directory stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Bytes of records after the header.
    pub len: usize,
    /// Number of records.
    pub records: u64,
    /// Number of leases they describe.
    pub live: u64,
}

/// A header that never validates, written first so that a run killed mid-write leaves an
/// index that is ignored rather than half-trusted.
pub fn invalid_header() -> [u8; HEADER_LEN] {
    let mut h = [b' '; HEADER_LEN];
    h[HEADER_LEN - 1] = b'\n';
    h
}

/// The header line for `h` describing the directory at `stamp`.
pub fn header(stamp: &Stamp, h: &Header) -> [u8; HEADER_LEN] {
    let text = format!(
        "{MAGIC} dev={} ino={} mtime={}.{} ctime={}.{} len={} records={} live={}",
        stamp.dev,
        stamp.ino,
        stamp.mtime.0,
        stamp.mtime.1,
        stamp.ctime.0,
        stamp.ctime.1,
        h.len,
        h.records,
        h.live
    );
    let mut out = invalid_header();
    out[..text.len()].copy_from_slice(text.as_bytes());
    out
}

/// The log in `content` (a `lock` file) and its header, if it is a complete index
/// written for the directory as it is now (`stamp`).
pub fn decode<'a>(content: &'a [u8], stamp: &Stamp) -> Option<(&'a str, Header)> {
    if content.len() < HEADER_LEN || !stamp.is_fine() {
        return None;
    }
    let (head, log) = content.split_at(HEADER_LEN);
    let text = std::str::from_utf8(head).ok()?;
    let mut h = Header { len: log.len(), ..Default::default() };
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("records=") {
            h.records = v.parse().ok()?;
        } else if let Some(v) = field.strip_prefix("live=") {
            h.live = v.parse().ok()?;
        }
    }
    if head != header(stamp, &h) {
        return None;
    }
    let log = std::str::from_utf8(log).ok()?;
    (log.is_empty() || log.ends_with('\n')).then_some((log, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(id: &str, ifname: &str) -> Attachment {
        Attachment::new(id, ifname)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn owners_ignore_surrounding_whitespace() {
        let full = Owner::Attachment { id: "dummy".into(), ifname: "eth0".into() };
        for content in [
            "dummy\r\neth0",
            "  dummy\r\neth0\n",
            "dummy \r\n eth0\r\n",
            "\tdummy\neth0",
            "dummy\r\neth0\r\nextra",
        ] {
            assert_eq!(Owner::parse(content.as_bytes()), full, "{content:?}");
        }
        assert_eq!(Owner::parse(b" dummy\n\n"), Owner::Legacy { id: "dummy".into() });
        for content in ["", "  \r\n ", "a b\r\neth0", "dummy\r\n\r\neth0", "dummy\r\nif 0"] {
            assert_eq!(Owner::parse(content.as_bytes()), Owner::Unowned, "{content:?}");
        }
        assert_eq!(Owner::parse(&[0xff, 0xfe]), Owner::Unowned);
    }

    #[test]
    fn matching() {
        let a = att("c1", "eth0");
        assert_eq!(Owner::content_for(&a), "c1\r\neth0");
        assert_eq!(Owner::of(&a).matches(&a), Match::Full);
        assert_eq!(Owner::parse(b"c1\r\neth1").matches(&a), Match::No);
        assert_eq!(Owner::parse(b"c1").matches(&a), Match::Legacy);
        assert_eq!(Owner::parse(b"c2").matches(&a), Match::No);
        assert_eq!(Owner::Unowned.matches(&a), Match::No);
    }

    fn log(entries: &[(&str, Owner)], removed: &[&str]) -> String {
        let mut out = String::new();
        for (i, o) in entries {
            o.record(ip(i), &mut out);
        }
        for r in removed {
            removal(ip(r), &mut out);
        }
        out
    }

    #[test]
    fn log_replay_and_find() {
        let a = att("c1", "eth0");
        let mut text = log(
            &[
                ("10.0.0.2", Owner::of(&a)),
                ("10.0.0.3", Owner::of(&att("c2", "eth0"))),
                ("2001:db8::2", Owner::Legacy { id: "c1".into() }),
                ("10.0.0.4", Owner::Unowned),
                ("10.0.0.5", Owner::of(&a)),
            ],
            &["10.0.0.5"],
        );
        // Released, then leased again to someone else.
        Owner::of(&att("c3", "eth0")).record(ip("10.0.0.5"), &mut text);
        Owner::of(&att("c1", "eth1")).record(ip("10.0.0.6"), &mut text);
        let mut found = find(&text, &a).unwrap();
        found.sort_by_key(|(ip, _)| *ip);
        assert_eq!(
            found,
            [
                ("10.0.0.2", Owner::of(&a)),
                ("10.0.0.6", Owner::of(&att("c1", "eth1"))),
                ("2001:db8::2", Owner::Legacy { id: "c1".into() })
            ]
        );
        let all = replay(&text).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(all[&ip("10.0.0.4")], Owner::Unowned);
        assert_eq!(all[&ip("10.0.0.5")], Owner::of(&att("c3", "eth0")));
        assert_eq!(find("+10.0.0.2 c1 eth0\n+bad line with spaces\n", &a), Err(Corrupt));
        assert_eq!(replay("+nonsense c1 eth0\n"), Err(Corrupt));
        assert_eq!(replay("junk\n"), Err(Corrupt));
    }

    #[test]
    fn headers_validate_only_the_directory_they_were_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let stamp = Stamp::of(&std::fs::metadata(dir.path()).unwrap());
        let body = log(&[("10.0.0.2", Owner::of(&att("c1", "eth0")))], &[]);
        let h = Header { len: body.len(), records: 1, live: 1 };
        let mut content = header(&stamp, &h).to_vec();
        content.extend_from_slice(body.as_bytes());
        assert_eq!(decode(&content, &stamp), Some((body.as_str(), h)));

        std::fs::write(dir.path().join("x"), "").unwrap();
        let later = Stamp::of(&std::fs::metadata(dir.path()).unwrap());
        assert_ne!(later, stamp);
        assert_eq!(decode(&content, &later), None);
        // Truncated, extended, or with the header still invalidated: not trusted.
        assert_eq!(decode(&content[..content.len() - 3], &stamp), None);
        let mut extra = content.clone();
        extra.extend_from_slice(b"+10.0.0.9 c9 eth0\n");
        assert_eq!(decode(&extra, &stamp), None);
        let mut torn = invalid_header().to_vec();
        torn.extend_from_slice(body.as_bytes());
        assert_eq!(decode(&torn, &stamp), None);
        assert_eq!(decode(b"", &stamp), None);
        let empty = header(&stamp, &Header::default());
        assert_eq!(decode(&empty, &stamp), Some(("", Header::default())));
        // Whole-second timestamps cannot reveal every change: never trusted.
        let coarse = Stamp { mtime: (stamp.mtime.0, 0), ctime: (stamp.ctime.0, 0), ..stamp };
        assert!(!coarse.is_fine());
        assert_eq!(decode(&header(&coarse, &Header::default()), &coarse), None);
    }
}
