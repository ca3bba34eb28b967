//! The lease store, in the reference's on-disk format (`backend/disk`):
//! `<dataDir>/<network>/` holds one file per leased address, named by the address and
//! holding `<containerID>\r\n<ifname>`, plus `last_reserved_ip.<set>` and `lock`.
//!
//! A [`Store`] holds the `flock` on `lock` from [`Store::open`] until it is dropped, so a
//! whole ADD, DEL or GC is one critical section. Crash safety (a `kill -9` at any point):
//! - a lease is created complete: its content is written to a temporary file that is then
//!   hard-linked under the address's name; `link` fails if the name exists, exactly like
//!   the reference's `O_EXCL` create, so no address is ever handed out twice and no lease
//!   file is ever empty or half-written because of us;
//! - `last_reserved_ip.<set>` is never torn: rewritten in place only when the length is
//!   unchanged (one small write), else replaced by rename;
//! - leftovers (the temporary lease file) are harmless, replaced by the next run and
//!   removed by GC; an empty lease file (the reference killed after its `O_EXCL` create)
//!   is taken for ADD and freed by GC;
//! - the owner index in `lock` ([`super::index`]) is written so that a torn write is never
//!   trusted.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cni_spec::plugin::Attachment;

use super::error::HostLocalError;
use super::index::{self, Corrupt, Header, Match, Owner, Stamp};

const LOCK: &str = "lock";
const LAST_RESERVED: &str = "last_reserved_ip.";
/// Where a lease's content is written before it is linked under the address's name.
const LEASE_TMP: &str = ".lease.tmp";
/// Lease files are a few dozen bytes; anything longer is read only this far.
const MAX_LEASE_LEN: usize = 4096;

/// The address a lease file name stands for: only names the reference would write (the
/// canonical text of an address) count.
pub fn lease_name(name: &str) -> Option<IpAddr> {
    let ip: IpAddr = name.parse().ok()?;
    (ip.to_string() == name).then_some(ip)
}

/// `last_reserved_ip.<set>.spare` (reused scratch file) or `.next` (its next inode).
fn spare_name(path: &Path, kind: &str) -> PathBuf {
    let mut name = path.file_name().expect("a file name").to_os_string();
    name.push(".");
    name.push(kind);
    path.with_file_name(name)
}

/// Our temporary files that GC removes when a killed run left them behind. The
/// `last_reserved_ip.*` names (spares included) are left alone; a leftover `.next` is
/// removed by the next write.
fn is_our_temp(name: &str) -> bool {
    name == LEASE_TMP
}

/// One `read` (not `read_to_end`'s two): a scan reads every lease file, so a system call
/// per file matters.
fn read_owner(path: &Path) -> std::io::Result<Owner> {
    let mut buf = [0u8; MAX_LEASE_LEN];
    let n = File::open(path)?.read(&mut buf)?;
    Ok(Owner::parse(&buf[..n]))
}

/// Which leases of an attachment to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Find {
    /// Leases of the attachment and legacy leases of its container (ADD's duplicate
    /// check, CHECK).
    Any,
    /// The attachment's leases, or if it has none its container's legacy leases (DEL, as
    /// the reference releases).
    ForRelease,
}

/// Compact the index when it holds this many more records than twice its leases.
const COMPACT_SLACK: u64 = 1024;

/// The locked lease directory of one network.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    lock: File,
    /// The index's records as loaded, or as rebuilt by reading the directory.
    log: String,
    /// Records this run appended (not yet written).
    pending: String,
    /// The loaded index's header (records and leases before `pending`).
    header: Header,
    /// Records and lease count change of `pending`.
    pending_records: u64,
    pending_live: i64,
    /// The view came from the index, not from reading the directory in this run.
    from_index: bool,
    /// `log` is new (a scan): the whole index must be written.
    rewrite: bool,
    /// Every leased address, built on first need (the common ADD never needs it).
    taken: Option<HashSet<IpAddr>>,
    /// Something contradicted the index: do not write one; the next run reads the
    /// directory.
    stale: bool,
    /// The content now in [`LEASE_TMP`], if we wrote it.
    lease_tmp: Option<String>,
    /// Directories this run created, outermost first (removed again by `abandon`).
    created: Vec<PathBuf>,
    /// This run released a lease: the index is compacted so it forgets the owner.
    released: bool,
    /// `last_reserved_ip.<set>` values to write when the run commits ([`Store::close`]).
    last_pending: Vec<(usize, IpAddr)>,
    /// The `lock` file as this run found it (what a rollback puts back).
    original: Vec<u8>,
}

/// Where a successful ADD leaves the note with which a rollback DEL right after it puts
/// the store back exactly (see [`Store::commit_add`] and [`Store::rollback_add`]): outside
/// the data directory, so the store holds nothing but the reference's files; one note per
/// store (the next ADD replaces it, a release removes it).
const NOTES_DIR: &str = "/run/ferrocni/host-local";

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The note of the store in `dir`.
fn note_path(dir: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    Path::new(NOTES_DIR).join(format!("{:016x}", fnv(dir.as_os_str().as_bytes())))
}

/// A rollback comes within seconds of its ADD: notes older than this serve nothing.
const NOTE_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Now and then (one ADD in 64), removes notes nobody will use: those of stores that were
/// deleted, or whose last ADD is long past.
fn prune_notes() {
    let now = std::time::SystemTime::now();
    let tick = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    if !(tick ^ std::process::id()).is_multiple_of(64) {
        return;
    }
    let Ok(entries) = fs::read_dir(NOTES_DIR) else { return };
    for e in entries.flatten() {
        let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok());
        if old.is_some_and(|age| age > NOTE_TTL) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// An attachment as the note names it: a hash, so the note never names a container.
fn owner_hash(a: &Attachment) -> String {
    format!("{:016x}", fnv(Owner::content_for(a).as_bytes()))
}

fn hex(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "-".into(),
        Some(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
    }
}

fn unhex(s: &str) -> Option<Option<Vec<u8>>> {
    if s == "-" {
        return Some(None);
    }
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Some)
}

fn read_opt(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok()
}

fn restore(path: &Path, content: &Option<Vec<u8>>) {
    match content {
        Some(c) => {
            let _ = fs::write(path, c);
        }
        None => {
            let _ = fs::remove_file(path);
        }
    }
}

fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, HostLocalError> {
    crate::fsutil::create_dirs(dir, 0o755).map_err(|e| HostLocalError::io("creating", dir, e))
}

use crate::fsutil::remove_dirs;

impl Store {
    /// Locks the store of `dir` and loads its index. With `create`, the directory is made
    /// (mode 0755, with any missing parents) if missing; without, a missing directory gives
    /// `None` and nothing is created. A store this call created is removed again by
    /// [`Store::abandon`].
    pub fn open(dir: &Path, create: bool) -> Result<Option<Store>, HostLocalError> {
        let path = dir.join(LOCK);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false) // the index lives here
                .mode(0o600)
                .open(&path)
        };
        let mut created = Vec::new();
        // A run that abandons a store it created removes `lock` while holding it: a run that
        // opened the old file meanwhile sees it unlinked once it has the lock, and starts over.
        for _ in 0..100 {
            // Opening `lock` first tells whether the directory exists (one system call less
            // on every run than checking first).
            let lock = match open() {
                Err(e) if e.kind() == ErrorKind::NotFound && !create => return Ok(None),
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    created.extend(create_dirs(dir)?);
                    open()
                }
                other => other,
            }
            .map_err(|e| HostLocalError::io("opening", &path, e))?;
            lock.lock().map_err(|e| HostLocalError::io("locking", &path, e))?;
            let linked = match (lock.metadata(), fs::symlink_metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !linked {
                continue;
            }
            let mut store = Store {
                dir: dir.to_path_buf(),
                lock,
                log: String::new(),
                pending: String::new(),
                header: Header::default(),
                pending_records: 0,
                pending_live: 0,
                from_index: false,
                rewrite: false,
                taken: None,
                stale: false,
                lease_tmp: None,
                created,
                released: false,
                last_pending: Vec::new(),
                original: Vec::new(),
            };
            store.load()?;
            return Ok(Some(store));
        }
        Err(HostLocalError::io("locking", &path, std::io::Error::other("the store keeps being removed")))
    }

    /// The directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn load(&mut self) -> Result<(), HostLocalError> {
        let meta = fs::metadata(&self.dir).map_err(|e| HostLocalError::io("reading", &self.dir, e))?;
        let stamp = Stamp::of(&meta);
        let mut content = Vec::new();
        (&self.lock)
            .read_to_end(&mut content)
            .map_err(|e| HostLocalError::io("reading", self.dir.join(LOCK), e))?;
        self.original = content.clone();
        match index::decode(&content, &stamp) {
            Some((log, header)) => {
                let start = content.len() - log.len();
                content.drain(..start);
                self.log = String::from_utf8(content).expect("decode checked UTF-8");
                self.header = header;
                self.from_index = true;
                Ok(())
            }
            None => self.scan(),
        }
    }

    /// Reads every lease file of the directory (what the reference does on every call)
    /// and rebuilds the index from them.
    pub fn scan(&mut self) -> Result<(), HostLocalError> {
        let io = |e| HostLocalError::io("reading", &self.dir, e);
        let mut log = String::new();
        let mut count = 0u64;
        let mut taken = HashSet::new();
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(lease_name) else { continue };
            if !entry.file_type().map_err(io)?.is_file() {
                continue;
            }
            let path = entry.path();
            match read_owner(&path) {
                Ok(owner) => {
                    owner.record(ip, &mut log);
                    taken.insert(ip);
                    count += 1;
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(HostLocalError::io("reading", path, e)),
            }
        }
        self.log = log;
        self.header = Header { len: self.log.len(), records: count, live: count };
        self.pending.clear();
        (self.pending_records, self.pending_live) = (0, 0);
        self.taken = Some(taken);
        self.from_index = false;
        self.rewrite = true;
        // The view is now exact, whatever contradicted the index before.
        self.stale = false;
        Ok(())
    }

    /// Runs `f` on the records; if the index turns out to be corrupt, reads the directory
    /// and runs it again.
    fn with_log<T>(&mut self, f: impl Fn(&str) -> Result<T, Corrupt>) -> Result<T, HostLocalError> {
        let result =
            if self.pending.is_empty() { f(&self.log) } else { f(&format!("{}{}", self.log, self.pending)) };
        match result {
            Ok(v) => Ok(v),
            Err(Corrupt) => {
                self.scan()?;
                Ok(f(&self.log).expect("a scan writes well-formed records"))
            }
        }
    }

    /// Every lease: address → owner.
    pub fn leases(&mut self) -> Result<HashMap<IpAddr, Owner>, HostLocalError> {
        self.with_log(index::replay)
    }

    /// Whether `ip` is known to be leased, without building the set of leases (`None`:
    /// not known yet, ask the file system).
    pub fn known_taken(&self, ip: IpAddr) -> Option<bool> {
        self.taken.as_ref().map(|t| t.contains(&ip))
    }

    fn taken(&mut self) -> Result<&mut HashSet<IpAddr>, HostLocalError> {
        if self.taken.is_none() {
            let leases = self.leases()?;
            self.taken = Some(leases.into_keys().collect());
        }
        Ok(self.taken.as_mut().expect("built above"))
    }

    /// The leases of `a`. What the index says is confirmed by reading those files, so a
    /// stale index never makes us report or release someone else's lease.
    pub fn find(&mut self, a: &Attachment, which: Find) -> Result<Vec<IpAddr>, HostLocalError> {
        let hits = self.with_log(|log| {
            index::find(log, a)?
                .into_iter()
                .map(|(ip, owner)| ip.parse::<IpAddr>().map(|ip| (ip, owner)).map_err(|_| Corrupt))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut full = Vec::new();
        let mut legacy = Vec::new();
        for (ip, owner) in hits {
            let m = if self.from_index { self.confirm(ip, &owner)?.matches(a) } else { owner.matches(a) };
            match m {
                Match::Full => full.push(ip),
                Match::Legacy => legacy.push(ip),
                Match::No => {}
            }
        }
        if which == Find::Any || full.is_empty() {
            full.append(&mut legacy);
        }
        full.sort();
        Ok(full)
    }

    /// The owner of `ip`'s lease file now (`Unowned` if it is gone); if it is not the one
    /// the index recorded, the index is stale.
    fn confirm(&mut self, ip: IpAddr, recorded: &Owner) -> Result<Owner, HostLocalError> {
        let path = self.dir.join(ip.to_string());
        let owner = match read_owner(&path) {
            Ok(owner) => owner,
            Err(e) if e.kind() == ErrorKind::NotFound => Owner::Unowned,
            Err(e) => return Err(HostLocalError::io("reading", path, e)),
        };
        if owner != *recorded {
            self.stale = true;
        }
        Ok(owner)
    }

    /// Reads the directory again if the view came from the index; false if it was
    /// already read from the directory in this run.
    pub fn refresh(&mut self) -> Result<bool, HostLocalError> {
        if !self.from_index {
            return Ok(false);
        }
        self.scan()?;
        Ok(true)
    }

    /// `last_reserved_ip.<set>`, if it holds an address.
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        if let Some((_, ip)) = self.last_pending.iter().rev().find(|(s, _)| *s == set) {
            return Some(*ip);
        }
        // One read: the file holds one address.
        let mut buf = [0u8; 128];
        let n = File::open(self.dir.join(format!("{LAST_RESERVED}{set}"))).ok()?.read(&mut buf).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        text.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
    }

    /// Leases `ip` to `a` unless a file for it exists (then `Ok(false)`), and records it as
    /// the last address reserved from `set`.
    pub fn reserve(&mut self, ip: IpAddr, a: &Attachment, set: usize) -> Result<bool, HostLocalError> {
        let content = Owner::content_for(a);
        let tmp = self.dir.join(LEASE_TMP);
        if self.lease_tmp.as_deref() != Some(content.as_str()) {
            // Never truncate a leftover: a killed run may have left the temporary name linked
            // to a lease. Unlink it and create a new file instead.
            let create = || OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp);
            let mut f = match create() {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&tmp);
                    create()
                }
                other => other,
            }
            .map_err(|e| HostLocalError::io("creating", &tmp, e))?;
            std::io::Write::write_all(&mut f, content.as_bytes())
                .map_err(|e| HostLocalError::io("writing", &tmp, e))?;
            self.lease_tmp = Some(content);
        }
        let path = self.dir.join(ip.to_string());
        match fs::hard_link(&tmp, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                if self.taken()?.insert(ip) {
                    // The index missed a lease (someone changed the directory without us
                    // seeing it): stop trusting it.
                    self.stale = true;
                }
                return Ok(false);
            }
            Err(e) => return Err(HostLocalError::io("creating", path, e)),
        }
        // The temporary name now points at the lease: drop it so the lease has one name.
        let _ = fs::remove_file(&tmp);
        self.lease_tmp = None;
        Owner::of(a).record(ip, &mut self.pending);
        self.pending_records += 1;
        self.pending_live += 1;
        if let Some(t) = self.taken.as_mut() {
            t.insert(ip);
        }
        self.last_pending.push((set, ip));
        Ok(true)
    }

    /// Replaces `last_reserved_ip.<set>` atomically (never torn, even by `kill -9`).
    /// Best effort, as it only steers round-robin: a failure is logged, not fatal.
    fn write_last_reserved(&self, set: usize, ip: IpAddr) {
        let path = self.dir.join(format!("{LAST_RESERVED}{set}"));
        if let Err(e) = self.replace_last_reserved(&path, &ip.to_string()) {
            eprintln!("host-local: recording {} in {}: {e}", ip, path.display());
        }
    }

    /// Write a spare file, then rename it over the target. Why a spare that is reused:
    /// renaming a freshly written file over another makes ext4 (`auto_da_alloc`) start
    /// writing the new file out, which costs ~0.1 ms or more per ADD; a spare whose block
    /// is already allocated avoids that. The old target becomes the next spare through a
    /// second name taken before the rename. Killed at any step, the target is complete and
    /// the next run starts over with whatever spare names are left.
    fn replace_last_reserved(&self, path: &Path, content: &str) -> std::io::Result<()> {
        // Same length (most round-robin steps): overwrite in place. A write of a few bytes
        // within one page is all or nothing even under `kill -9`, and the length does not
        // change, so readers see the old or the new address, never a mix.
        if let Ok(f) = OpenOptions::new().write(true).open(path)
            && f.metadata()?.len() == content.len() as u64
        {
            return f.write_all_at(content.as_bytes(), 0);
        }
        let spare = spare_name(path, "spare");
        let next = spare_name(path, "next");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&spare)?;
        f.write_all_at(content.as_bytes(), 0)?;
        f.set_len(content.len() as u64)?;
        drop(f);
        let _ = fs::remove_file(&next);
        let keep_old = fs::hard_link(path, &next).is_ok();
        fs::rename(&spare, path)?;
        if keep_old {
            fs::rename(&next, &spare)?;
        }
        Ok(())
    }

    /// Removes the lease of `ip` (already gone is fine).
    pub fn release(&mut self, ip: IpAddr) -> Result<(), HostLocalError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(HostLocalError::io("removing", path, e)),
        }
        index::removal(ip, &mut self.pending);
        self.pending_records += 1;
        self.pending_live -= 1;
        self.released = true;
        if let Some(t) = self.taken.as_mut() {
            t.remove(&ip);
        }
        Ok(())
    }

    /// Removes the temporary files a killed run may have left (GC).
    pub fn remove_temp_files(&mut self) -> Result<(), HostLocalError> {
        let io = |e| HostLocalError::io("reading", &self.dir, e);
        for entry in fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if name.to_str().is_some_and(is_our_temp) {
                let path = self.dir.join(&name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(HostLocalError::io("removing", path, e)),
                }
            }
        }
        self.lease_tmp = None;
        Ok(())
    }

    /// Writes the index if this run changed or rebuilt it, then unlocks. Failing to write
    /// the cache is not an error of the command: the next run reads the directory.
    ///
    /// This is the commit: `last_reserved_ip.<set>` files are written here, and only here.
    /// A run that changed nothing writes nothing (not even a rebuilt index).
    pub fn close(mut self) {
        if self.lease_tmp.take().is_some() {
            let _ = fs::remove_file(self.dir.join(LEASE_TMP));
        }
        if self.released {
            // The last ADD can no longer be rolled back exactly, and its note may hold an
            // index that names the owner of what was just released.
            let _ = fs::remove_file(note_path(&self.dir));
        }
        for (set, ip) in std::mem::take(&mut self.last_pending) {
            self.write_last_reserved(set, ip);
        }
        let result = if self.stale {
            self.lock.set_len(0)
        } else if !self.pending.is_empty() {
            self.write_index()
        } else {
            Ok(())
        };
        if let Err(e) = result {
            eprintln!("host-local: updating the lease index in {}: {e}", self.dir.join(LOCK).display());
            let _ = self.lock.set_len(0);
        }
    }

    /// Commits a successful ADD of `a` (as [`Store::close`]) and first leaves a note from
    /// which [`Store::rollback_add`] can put everything back exactly: the round-robin
    /// files as they were, the `lock` file as it was, the directories this run created. The
    /// note names the attachment by a hash only.
    pub fn commit_add(self, a: &Attachment) {
        let mut note = format!("owner {}\ncreated {}\n", owner_hash(a), self.created.len());
        for (set, _) in &self.last_pending {
            let target = self.dir.join(format!("{LAST_RESERVED}{set}"));
            let spare = spare_name(&target, "spare");
            note += &format!(
                "set {set} {} {}\n",
                hex(read_opt(&target).as_deref()),
                hex(read_opt(&spare).as_deref())
            );
        }
        // When the index is only appended to (the usual ADD), its old length and header
        // are enough to put it back; a rewritten index needs its whole old content.
        let records = self.header.records + self.pending_records;
        let live = (self.header.live as i64 + self.pending_live).max(0) as u64;
        let append = !self.stale && !self.rewrite && records <= 2 * live + COMPACT_SLACK;
        if append {
            let head = &self.original[..self.original.len().min(index::HEADER_LEN)];
            note += &format!("lockhead {} {}\n", self.original.len(), hex(Some(head)));
        } else {
            note += &format!("lock {}\n", hex(Some(&self.original)));
        }
        let path = note_path(&self.dir);
        self.close();
        let written = fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(NOTES_DIR)
            .and_then(|()| fs::write(&path, note));
        if written.is_err() {
            // Without a note a rollback is a plain DEL.
            let _ = fs::remove_file(&path);
        }
        prune_notes();
    }

    /// Undoes the ADD of `a` that was the last change of this store (its note is there and
    /// the index says nothing changed since): the leases go, the round-robin files and the
    /// `lock` file get their old content back, and a directory the ADD created is removed.
    /// Returns false, with nothing changed, when that cannot be done exactly: the caller
    /// then releases as usual. After true the store must be dropped, not closed.
    pub fn rollback_add(&mut self, a: &Attachment) -> bool {
        let note_path = note_path(&self.dir);
        let Some(note) = fs::read_to_string(&note_path).ok().filter(|_| self.from_index) else {
            return false;
        };
        let mut owner = None;
        let mut created = 0usize;
        let mut sets = Vec::new();
        let mut lock = None;
        for line in note.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["owner", h] => owner = Some(h.to_string()),
                ["created", n] => created = n.parse().unwrap_or(0),
                ["set", i, t, sp] => match (i.parse::<usize>(), unhex(t), unhex(sp)) {
                    (Ok(i), Some(t), Some(sp)) => sets.push((i, t, sp)),
                    _ => return false,
                },
                ["lock", l] => lock = unhex(l).flatten().map(|b| (None, b)),
                ["lockhead", n, h] => match (n.parse::<u64>(), unhex(h)) {
                    (Ok(n), Some(Some(h))) => lock = Some((Some(n), h)),
                    _ => return false,
                },
                _ => return false,
            }
        }
        let (Some(owner), Some((keep, lock))) = (owner, lock) else { return false };
        if owner != owner_hash(a) {
            return false;
        }
        let Ok(leases) = self.find(a, Find::ForRelease) else { return false };
        for ip in leases {
            let _ = fs::remove_file(self.dir.join(ip.to_string()));
        }
        for (set, target, spare) in &sets {
            let path = self.dir.join(format!("{LAST_RESERVED}{set}"));
            restore(&spare_name(&path, "spare"), spare);
            restore(&path, target);
        }
        let _ = fs::remove_file(&note_path);
        let _ = self.lock.set_len(keep.unwrap_or(0));
        let _ = self.lock.write_all_at(&lock, 0);
        if created > 0 {
            let only_lock = fs::read_dir(&self.dir)
                .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK))
                .unwrap_or(false);
            if only_lock {
                let _ = fs::remove_file(self.dir.join(LOCK));
                let dirs: Vec<PathBuf> = self.dir.ancestors().take(created).map(Path::to_path_buf).collect();
                for d in &dirs {
                    let _ = fs::remove_dir(d);
                }
            }
        }
        true
    }

    /// Gives up a run after its caller undid its changes (released what it reserved):
    /// nothing is written, `last_reserved_ip.<set>` stays as it was, and a directory this
    /// run created is removed again, so a failed ADD leaves no trace.
    pub fn abandon(mut self) {
        if self.lease_tmp.take().is_some() {
            let _ = fs::remove_file(self.dir.join(LEASE_TMP));
        }
        if self.created.is_empty() {
            return;
        }
        // Only if nothing but our lock is left (a run that got in first may have leased).
        let only_lock = fs::read_dir(&self.dir)
            .map(|entries| entries.flatten().all(|e| e.file_name() == LOCK))
            .unwrap_or(false);
        if only_lock {
            let _ = fs::remove_file(self.dir.join(LOCK));
            remove_dirs(&self.created);
        }
    }

    /// Whether no lease file exists for `ip` (within a run that holds the lock, the
    /// address can then be reserved).
    pub fn is_free(&mut self, ip: IpAddr) -> Result<bool, HostLocalError> {
        if let Some(known) = self.known_taken(ip) {
            return Ok(!known);
        }
        let path = self.dir.join(ip.to_string());
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(false),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) => Err(HostLocalError::io("reading", path, e)),
        }
    }

    /// Usually only this run's records are appended, then the header is rewritten (the
    /// commit: one write within a page, which a kill cannot tear); killed in between, the
    /// file is longer than the old header says, so it is ignored. After a scan, or to
    /// compact when released records dominate, the log is rewritten whole: invalidate the
    /// header, write, trim, validate.
    fn write_index(&mut self) -> std::io::Result<()> {
        let records = self.header.records + self.pending_records;
        let live = (self.header.live as i64 + self.pending_live).max(0) as u64;
        // A release compacts: after DEL, nothing in `lock` names the container any more.
        let compact = self.released || records > 2 * live + COMPACT_SLACK;
        let append = !self.rewrite && !compact;
        let (offset, bytes, header) = if !append {
            let mut log = if compact {
                let leases = self.leases().map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut out = String::with_capacity(leases.len() * 32);
                for (ip, owner) in &leases {
                    owner.record(*ip, &mut out);
                }
                out
            } else {
                std::mem::take(&mut self.log)
            };
            if !compact {
                log.push_str(&self.pending);
            }
            let n = log.lines().count() as u64;
            let h = Header { len: log.len(), records: n, live: if compact { n } else { live } };
            (0, log, h)
        } else {
            let h = Header { len: self.log.len() + self.pending.len(), records, live };
            (self.log.len(), std::mem::take(&mut self.pending), h)
        };
        let stamp = Stamp::of(&fs::metadata(&self.dir)?);
        if !stamp.is_fine() {
            // It would never be trusted (see `Stamp::is_fine`).
            return self.lock.set_len(0);
        }
        if !append {
            self.lock.write_all_at(&index::invalid_header(), 0)?;
        }
        self.lock.write_all_at(bytes.as_bytes(), (index::HEADER_LEN + offset) as u64)?;
        if !append {
            self.lock.set_len((index::HEADER_LEN + header.len) as u64)?;
        }
        self.lock.write_all_at(&index::header(&stamp, &header), 0)
    }
}

/// The addresses leased in `dir`, from the file names alone, without locking (STATUS).
pub fn leased_addresses(dir: &Path) -> Result<HashSet<IpAddr>, HostLocalError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(HostLocalError::io("reading", dir, e)),
    };
    let mut out = HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostLocalError::io("reading", dir, e))?;
        if let Some(ip) = entry.file_name().to_str().and_then(lease_name) {
            out.insert(ip);
        }
    }
    Ok(out)
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

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn lease_names_are_canonical_addresses() {
        assert_eq!(lease_name("10.0.0.2"), Some(ip("10.0.0.2")));
        assert_eq!(lease_name("2001:db8::2"), Some(ip("2001:db8::2")));
        assert_eq!(lease_name("2001:DB8::2"), None);
        assert_eq!(lease_name("2001:db8:0::2"), None);
        assert_eq!(lease_name("lock"), None);
        assert_eq!(lease_name("last_reserved_ip.0"), None);
        assert!(is_our_temp(".lease.tmp"));
        assert!(
            !is_our_temp("last_reserved_ip.0")
                && !is_our_temp("last_reserved_ip.0.spare")
                && !is_our_temp("lock")
        );
    }

    #[test]
    fn missing_directory_is_not_created_without_create() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        assert!(Store::open(&dir, false).unwrap().is_none());
        assert!(!dir.exists());
        assert!(leased_addresses(&dir).unwrap().is_empty());
    }

    #[test]
    fn reserve_release_and_format() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        let a = att("c1", "eth0");
        assert!(s.reserve(ip("10.0.0.2"), &a, 0).unwrap());
        assert!(!s.reserve(ip("10.0.0.2"), &att("c2", "eth0"), 0).unwrap());
        assert!(s.reserve(ip("2001:db8::2"), &a, 1).unwrap());
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "c1\r\neth0");
        assert_eq!(s.last_reserved(1), Some(ip("2001:db8::2")));
        // The round-robin position is written when the run commits.
        assert!(!dir.join("last_reserved_ip.0").exists());
        assert_eq!(s.find(&a, Find::Any).unwrap(), [ip("10.0.0.2"), ip("2001:db8::2")]);
        s.close();
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.2");
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.1")).unwrap(), "2001:db8::2");
        assert_eq!(
            names(&dir),
            ["10.0.0.2", "2001:db8::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
        );

        // The next run trusts the index, and still sees the leases.
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.from_index);
        assert_eq!(s.known_taken(ip("10.0.0.2")), None);
        assert_eq!(s.find(&a, Find::ForRelease).unwrap().len(), 2);
        s.release(ip("10.0.0.2")).unwrap();
        s.close();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.from_index);
        assert_eq!(s.leases().unwrap().len(), 1);
        // A release compacts the index: the released lease's owner is forgotten.
        assert_eq!(s.header.records, 1);
        s.close();
        assert!(!String::from_utf8_lossy(&fs::read(dir.join(LOCK)).unwrap()).contains("10.0.0.2 "));
    }

    fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        if let Ok(entries) = fs::read_dir(root) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.push((p.display().to_string(), Vec::new()));
                    out.extend(tree(&p));
                } else {
                    out.push((p.display().to_string(), fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_rollback_puts_the_store_back_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/net");
        let (c1, c2) = (att("c1", "eth0"), att("c2", "eth0"));
        // A new store: the rollback removes it with the directories it made.
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.2"), &c1, 0).unwrap());
        s.commit_add(&c1);
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.rollback_add(&c1));
        drop(s);
        assert!(!tmp.path().join("a").exists());
        // An existing store, appended to or rewritten: byte for byte as before.
        for rewrite in [false, true] {
            let mut s = Store::open(&dir, true).unwrap().unwrap();
            assert!(s.reserve(ip("10.0.0.2"), &c1, 0).unwrap());
            s.commit_add(&c1);
            if rewrite {
                fs::write(dir.join("10.0.0.9"), "other\r\neth0").unwrap();
            }
            let before = tree(tmp.path());
            let mut s = Store::open(&dir, false).unwrap().unwrap();
            assert!(s.reserve(ip("10.0.0.100"), &c2, 0).unwrap());
            s.commit_add(&c2);
            // Someone else's rollback does not apply; ours does.
            let mut s = Store::open(&dir, false).unwrap().unwrap();
            assert!(!s.rollback_add(&c1));
            s.close();
            let mut s = Store::open(&dir, false).unwrap().unwrap();
            assert!(s.rollback_add(&c2));
            drop(s);
            assert_eq!(tree(tmp.path()), before, "rewrite {rewrite}");
            // A normal DEL: the note goes, and nothing names the container.
            let mut s = Store::open(&dir, false).unwrap().unwrap();
            for ip in s.find(&c1, Find::ForRelease).unwrap() {
                s.release(ip).unwrap();
            }
            let _ = fs::remove_file(dir.join("10.0.0.9"));
            s.close();
            assert!(!note_path(&dir).exists());
        }
        // Anything after the ADD (here a DEL of another lease) makes the rollback a plain DEL.
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.3"), &c1, 0).unwrap());
        s.commit_add(&c1);
        fs::write(dir.join("10.0.0.4"), "c3").unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(!s.rollback_add(&c1));
    }

    #[test]
    fn an_abandoned_run_leaves_no_trace() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/net");
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.2"), &att("c1", "eth0"), 0).unwrap());
        s.release(ip("10.0.0.2")).unwrap();
        s.abandon();
        assert!(!tmp.path().join("a").exists());
        // In an existing store: the lock file and the round-robin position stay as they were.
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.2"), &att("c1", "eth0"), 0).unwrap());
        s.close();
        let before = fs::read(dir.join(LOCK)).unwrap();
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.3"), &att("c2", "eth0"), 0).unwrap());
        s.release(ip("10.0.0.3")).unwrap();
        s.abandon();
        assert_eq!(fs::read(dir.join(LOCK)).unwrap(), before);
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.2");
        assert_eq!(names(&dir), ["10.0.0.2", "last_reserved_ip.0", "lock"]);
    }

    #[test]
    fn foreign_changes_invalidate_the_index() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.2"), &att("c1", "eth0"), 0).unwrap());
        s.close();
        // The reference (or anyone) adds and removes leases behind our back.
        fs::write(dir.join("10.0.0.3"), "c2\r\neth0").unwrap();
        fs::write(dir.join("10.0.0.4"), "").unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(!s.from_index);
        let leases = s.leases().unwrap();
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[&ip("10.0.0.4")], Owner::Unowned);
        s.close();
        fs::remove_file(dir.join("10.0.0.2")).unwrap();
        let s = Store::open(&dir, false).unwrap().unwrap();
        assert!(!s.from_index);
        assert_eq!(s.known_taken(ip("10.0.0.2")), Some(false));
    }

    #[test]
    fn an_index_missing_a_lease_never_double_allocates() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let s = Store::open(&dir, true).unwrap().unwrap();
        s.close();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        // Simulate a change the directory stamp did not reveal.
        fs::write(dir.join("10.0.0.2"), "other\r\neth0").unwrap();
        assert!(!s.reserve(ip("10.0.0.2"), &att("c1", "eth0"), 0).unwrap());
        assert!(s.stale);
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "other\r\neth0");
        s.close();
        assert_eq!(fs::metadata(dir.join(LOCK)).unwrap().len(), 0);
    }

    #[test]
    fn find_confirms_what_the_index_says() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        let a = att("c1", "eth0");
        assert!(s.reserve(ip("10.0.0.2"), &a, 0).unwrap());
        s.close();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        // Rewritten in place (no directory change): the index is wrong about the owner.
        fs::write(dir.join("10.0.0.2"), "someone-else\r\neth0").unwrap();
        assert!(s.find(&a, Find::Any).unwrap().is_empty());
        assert!(s.stale);
        s.close();
    }

    #[test]
    fn a_corrupt_index_is_replaced_by_a_scan() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let mut s = Store::open(&dir, true).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.2"), &att("c1", "eth0"), 0).unwrap());
        s.close();
        // Garbage: ignored.
        fs::write(dir.join(LOCK), "garbage").unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(!s.from_index);
        assert_eq!(s.find(&att("c1", "eth0"), Find::Any).unwrap(), [ip("10.0.0.2")]);
        s.close();
        // A header that matches the directory over records that do not parse: read the
        // directory when the records are first needed.
        let body = "+10.0.0.2 c1 eth0\nbogus\n";
        let stamp = Stamp::of(&fs::metadata(&dir).unwrap());
        let mut content = index::header(&stamp, &Header { len: body.len(), records: 2, live: 2 }).to_vec();
        content.extend_from_slice(body.as_bytes());
        fs::write(dir.join(LOCK), content).unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.from_index);
        assert_eq!(s.find(&att("c1", "eth0"), Find::Any).unwrap(), [ip("10.0.0.2")]);
        assert!(!s.from_index && s.rewrite);
        s.close();
        let s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.from_index);
    }

    #[test]
    fn the_index_is_compacted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let a = att("c1", "eth0");
        for i in 0..3000u32 {
            let mut s = Store::open(&dir, true).unwrap().unwrap();
            let addr = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            assert!(s.reserve(addr, &a, 0).unwrap());
            s.close();
            let mut s = Store::open(&dir, false).unwrap().unwrap();
            assert!(s.from_index, "run {i}");
            assert_eq!(s.find(&a, Find::ForRelease).unwrap(), [addr]);
            s.release(addr).unwrap();
            s.close();
        }
        let s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.from_index);
        assert!(s.header.records <= COMPACT_SLACK + 2, "{:?}", s.header);
        assert_eq!(s.header.live, 0);
        assert!(fs::metadata(dir.join(LOCK)).unwrap().len() < 64 * 1024);
    }

    #[test]
    fn legacy_leases_are_released_only_without_full_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("10.0.0.2"), "c1").unwrap();
        fs::write(dir.join("10.0.0.3"), "c1\r\neth1").unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert_eq!(s.find(&att("c1", "eth1"), Find::ForRelease).unwrap(), [ip("10.0.0.3")]);
        assert_eq!(s.find(&att("c1", "eth0"), Find::ForRelease).unwrap(), [ip("10.0.0.2")]);
        assert_eq!(s.find(&att("c1", "eth1"), Find::Any).unwrap(), [ip("10.0.0.2"), ip("10.0.0.3")]);
        s.close();
    }

    #[test]
    fn leftovers_of_a_killed_run_are_harmless() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        fs::create_dir_all(&dir).unwrap();
        // Killed after linking, before unlinking the temporary name.
        fs::write(dir.join("10.0.0.2"), "c1\r\neth0").unwrap();
        fs::hard_link(dir.join("10.0.0.2"), dir.join(LEASE_TMP)).unwrap();
        // (A different length, so the write goes through the spare and meets the leftover.)
        fs::write(dir.join("last_reserved_ip.0"), "10.0.0.22").unwrap();
        fs::write(dir.join("last_reserved_ip.0.next"), "10.0.0.1").unwrap();
        let mut s = Store::open(&dir, false).unwrap().unwrap();
        assert!(s.reserve(ip("10.0.0.3"), &att("c2", "eth0"), 0).unwrap());
        assert_eq!(fs::read_to_string(dir.join("10.0.0.2")).unwrap(), "c1\r\neth0");
        s.remove_temp_files().unwrap();
        s.close();
        assert_eq!(
            names(&dir),
            ["10.0.0.2", "10.0.0.3", "last_reserved_ip.0", "last_reserved_ip.0.spare", "lock"]
        );
        assert_eq!(fs::read_to_string(dir.join("last_reserved_ip.0")).unwrap(), "10.0.0.3");
    }

    #[test]
    fn last_reserved_is_replaced_through_a_reused_spare() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net");
        let s = Store::open(&dir, true).unwrap().unwrap();
        let target = dir.join("last_reserved_ip.0");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        for (i, ip) in
            ["10.0.0.2", "10.0.0.100", "10.0.0.9", "2001:db8::ffff:1", "10.0.0.7"].iter().enumerate()
        {
            // (Each of these changes the length, so each goes through the spare.)
            s.write_last_reserved(0, ip.parse().unwrap());
            assert_eq!(fs::read_to_string(&target).unwrap(), *ip);
            assert_eq!(s.last_reserved(0), Some(ip.parse().unwrap()));
            if i > 0 {
                // From the second write on there is a spare, never the target itself.
                assert_ne!(ino(&target), ino(&dir.join("last_reserved_ip.0.spare")));
            }
            assert!(!dir.join("last_reserved_ip.0.next").exists());
        }
        // A new length goes through the spare: the inodes alternate.
        let (a, b) = (ino(&target), ino(&dir.join("last_reserved_ip.0.spare")));
        s.write_last_reserved(0, "10.0.0.10".parse().unwrap());
        assert_eq!((ino(&target), ino(&dir.join("last_reserved_ip.0.spare"))), (b, a));
        // The same length is written in place.
        s.write_last_reserved(0, "10.0.0.11".parse().unwrap());
        assert_eq!((ino(&target), ino(&dir.join("last_reserved_ip.0.spare"))), (b, a));
        assert_eq!(fs::read_to_string(&target).unwrap(), "10.0.0.11");
        s.close();
    }
}
