//! A store for one machine: one SQLite file in WAL mode, shared by every daemon on the
//! host (each in its own network namespace), with etcd's semantics: a global revision
//! bumped by every change, leases with a TTL that own keys, create-if-absent and
//! compare-and-swap in `BEGIN IMMEDIATE` transactions, and a history table that watches
//! poll. Expired leases are removed by whichever process touches the store next (reads
//! and watch polls included), so expiry needs no dedicated process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::mpsc;

use super::{
    Cas, Create, EndpointHealth, KeyValue, LeaseId, Listing, OpCounters, OpCounts, Revision, Store,
    StoreError, StoreHealth, Watch, WatchEvent, WatchMessage, ttl_secs,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 1), ('compact_revision', 0), ('next_lease', 1);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL, lease INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY, ttl_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS history (revision INTEGER PRIMARY KEY, key TEXT NOT NULL,
    deleted INTEGER NOT NULL, value BLOB, create_revision INTEGER, lease INTEGER);
";

/// Settings of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// The database file.
    pub path: PathBuf,
    /// How often watches look for new revisions.
    pub poll: Duration,
    /// Revisions of history kept for watches that fall behind (older ones are compacted).
    pub history: i64,
}

impl EmbeddedOptions {
    /// Defaults for `path`: 100 ms polls, 10 000 revisions of history.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EmbeddedOptions { path: path.into(), poll: Duration::from_millis(100), history: 10_000 }
    }
}

/// The SQLite store.
pub struct EmbeddedStore {
    opts: EmbeddedOptions,
    conn: Arc<Mutex<Connection>>,
    ops: Arc<OpCounters>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedStore({})", self.opts.path.display())
    }
}

fn db_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("database busy: {e}"))
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn prefix_end(prefix: &str) -> String {
    // Keys are text; U+10FFFF sorts after every other character in SQLite's BINARY
    // collation of UTF-8, so `prefix || U+10FFFF` bounds the range.
    format!("{prefix}\u{10FFFF}")
}

fn meta(tx: &Connection, name: &str) -> rusqlite::Result<i64> {
    tx.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
}

fn next_revision(tx: &Transaction) -> rusqlite::Result<Revision> {
    tx.query_row("UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value", [], |r| {
        r.get(0)
    })
}

fn row_kv(r: &rusqlite::Row) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        lease: r.get(4)?,
    })
}

fn get_kv(tx: &Connection, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    tx.query_row(
        "SELECT key, value, create_revision, mod_revision, lease FROM kv WHERE key = ?1",
        [key],
        row_kv,
    )
    .optional()
}

/// The largest value stored, as etcd's default request limit: a listing then holds every
/// lease at this size at worst, and no writer can make one key arbitrarily large.
pub const MAX_VALUE_BYTES: usize = 1536 * 1024;

fn check_size(value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::Rejected(format!(
            "value of {} bytes, more than {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

fn write_kv(tx: &Transaction, key: &str, value: &[u8], lease: LeaseId) -> rusqlite::Result<Revision> {
    let rev = next_revision(tx)?;
    let create: Revision = get_kv(tx, key)?.map_or(rev, |kv| kv.create_revision);
    tx.execute(
        "INSERT INTO kv VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(key) DO UPDATE SET
         value = excluded.value, mod_revision = excluded.mod_revision, lease = excluded.lease",
        params![key, value, create, rev, lease],
    )?;
    tx.execute(
        "INSERT INTO history VALUES (?1, ?2, 0, ?3, ?4, ?5)",
        params![rev, key, value, create, lease],
    )?;
    Ok(rev)
}

fn delete_kv(tx: &Transaction, key: &str) -> rusqlite::Result<Revision> {
    let rev = next_revision(tx)?;
    tx.execute("DELETE FROM kv WHERE key = ?1", [key])?;
    tx.execute("INSERT INTO history VALUES (?1, ?2, 1, NULL, NULL, NULL)", params![rev, key])?;
    Ok(rev)
}

fn lease_exists(tx: &Connection, lease: LeaseId) -> rusqlite::Result<bool> {
    if lease == 0 {
        return Ok(true);
    }
    tx.query_row("SELECT EXISTS(SELECT 1 FROM leases WHERE id = ?1)", [lease], |r| r.get(0))
}

/// Deletes a lease and the keys it owns (each deletion is a revision, seen by watches).
fn drop_lease(tx: &Transaction, lease: LeaseId) -> rusqlite::Result<()> {
    let keys: Vec<String> = tx
        .prepare("SELECT key FROM kv WHERE lease = ?1 ORDER BY key")?
        .query_map([lease], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for k in keys {
        delete_kv(tx, &k)?;
    }
    tx.execute("DELETE FROM leases WHERE id = ?1", [lease])?;
    Ok(())
}

fn expire_due(tx: &Transaction) -> rusqlite::Result<()> {
    let due: Vec<LeaseId> = tx
        .prepare("SELECT id FROM leases WHERE expires_ms <= ?1")?
        .query_map([now_ms()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in due {
        drop_lease(tx, id)?;
    }
    Ok(())
}

fn anything_due(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row("SELECT EXISTS(SELECT 1 FROM leases WHERE expires_ms <= ?1)", [now_ms()], |r| r.get(0))
}

impl EmbeddedStore {
    /// Opens (creating) the database: the file is made mode 0600 since leases and the
    /// network config are root's business.
    pub fn open(opts: EmbeddedOptions) -> Result<Self, StoreError> {
        let conn = Self::connect(&opts.path)?;
        Ok(EmbeddedStore { opts, conn: Arc::new(Mutex::new(conn)), ops: Arc::new(OpCounters::default()) })
    }

    fn connect(path: &Path) -> Result<Connection, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path).map_err(db_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Internal(format!("chmod {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db_err)?;
        // WAL lets readers (watch polls of other daemons) run beside the one writer.
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Internal(format!(
                "{}: cannot use WAL mode (got {mode})",
                path.display()
            )));
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;").map_err(db_err)?;
        let mut conn = conn;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        tx.execute_batch(SCHEMA).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(conn)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("store task: {e}")))?
        .map_err(db_err)
    }

    /// Runs `f` in a write transaction after expiring due leases; trims history.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let keep = self.opts.history;
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            expire_due(&tx)?;
            let out = f(&tx)?;
            let rev = meta(&tx, "revision")?;
            let compacted = meta(&tx, "compact_revision")?;
            // Trim in steps so that the cost is amortised over many writes.
            if rev - keep > compacted + keep / 10 {
                compact_to(&tx, rev - keep)?;
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Read access, after expiring due leases so that expired keys are never returned.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.blocking(move |c| {
            if anything_due(c)? {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                expire_due(&tx)?;
                tx.commit()?;
            }
            let tx = c.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

fn compact_to(tx: &Transaction, rev: Revision) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM history WHERE revision < ?1", [rev])?;
    tx.execute("UPDATE meta SET value = MAX(value, ?1) WHERE name = 'compact_revision'", [rev])?;
    Ok(())
}

/// One poll of a watch: what happened under the prefix from `from`.
fn poll_history(
    c: &mut Connection,
    prefix: &str,
    end: &str,
    from: Revision,
) -> rusqlite::Result<WatchMessage> {
    if anything_due(c)? {
        let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
        expire_due(&tx)?;
        tx.commit()?;
    }
    let tx = c.transaction()?;
    let compacted = meta(&tx, "compact_revision")?;
    if from < compacted {
        return Ok(WatchMessage::Compacted(compacted));
    }
    let rev = meta(&tx, "revision")?;
    let evs: Vec<WatchEvent> = tx
        .prepare(
            "SELECT revision, key, deleted, value, create_revision, lease FROM history
             WHERE revision >= ?1 AND key >= ?2 AND key < ?3 ORDER BY revision LIMIT 1000",
        )?
        .query_map(params![from, prefix, end], |r| {
            let rev: Revision = r.get(0)?;
            let key: String = r.get(1)?;
            Ok(if r.get::<_, i64>(2)? != 0 {
                WatchEvent::Delete { key, mod_revision: rev }
            } else {
                WatchEvent::Put(KeyValue {
                    key,
                    value: r.get(3)?,
                    create_revision: r.get(4)?,
                    mod_revision: rev,
                    lease: r.get(5)?,
                })
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    tx.commit()?;
    Ok(if evs.is_empty() { WatchMessage::Progress(rev) } else { WatchMessage::Events(evs) })
}

#[async_trait]
impl Store for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn describe(&self) -> String {
        format!("embedded {}", self.opts.path.display())
    }

    fn ops(&self) -> OpCounts {
        self.ops.snapshot()
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        OpCounters::bump(&self.ops.grant);
        let ttl_ms = ttl_secs(ttl) * 1000;
        self.write(move |tx| {
            let id: LeaseId = tx.query_row(
                "UPDATE meta SET value = value + 1 WHERE name = 'next_lease' RETURNING value - 1",
                [],
                |r| r.get(0),
            )?;
            tx.execute("INSERT INTO leases VALUES (?1, ?2, ?3)", params![id, ttl_ms, now_ms() + ttl_ms])?;
            Ok(id)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        OpCounters::bump(&self.ops.keep_alive);
        self.write(move |tx| {
            let ttl: Option<i64> =
                tx.query_row("SELECT ttl_ms FROM leases WHERE id = ?1", [lease], |r| r.get(0)).optional()?;
            let Some(ttl) = ttl else { return Ok(None) };
            tx.execute("UPDATE leases SET expires_ms = ?2 WHERE id = ?1", params![lease, now_ms() + ttl])?;
            Ok(Some(Duration::from_millis(ttl as u64)))
        })
        .await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        OpCounters::bump(&self.ops.revoke);
        self.write(move |tx| drop_lease(tx, lease)).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        OpCounters::bump(&self.ops.get);
        let key = key.to_string();
        self.read(move |tx| get_kv(tx, &key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        OpCounters::bump(&self.ops.list);
        let (prefix, end) = (prefix.to_string(), prefix_end(prefix));
        let l = self
            .read(move |tx| {
                let kvs = tx
                    .prepare(
                        "SELECT key, value, create_revision, mod_revision, lease FROM kv
                         WHERE key >= ?1 AND key < ?2 ORDER BY key",
                    )?
                    .query_map([&prefix, &end], row_kv)?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(Listing { kvs, revision: meta(tx, "revision")? })
            })
            .await?;
        self.ops.listed_keys.fetch_add(l.kvs.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(l)
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        check_size(value)?;
        OpCounters::bump(&self.ops.put);
        let (key, value) = (key.to_string(), value.to_vec());
        self.write(move |tx| write_kv(tx, &key, &value, 0)).await
    }

    async fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Create, StoreError> {
        check_size(value)?;
        OpCounters::bump(&self.ops.txn);
        let (key, value) = (key.to_string(), value.to_vec());
        let r = self
            .write(move |tx| {
                if let Some(kv) = get_kv(tx, &key)? {
                    return Ok(Ok(Create::Exists(kv)));
                }
                if !lease_exists(tx, lease)? {
                    return Ok(Err(lease));
                }
                Ok(Ok(Create::Created(write_kv(tx, &key, &value, lease)?)))
            })
            .await?;
        r.map_err(|l| StoreError::Rejected(format!("lease {l} not found")))
    }

    async fn update(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        expect: Revision,
    ) -> Result<Cas, StoreError> {
        check_size(value)?;
        OpCounters::bump(&self.ops.txn);
        let (key, value) = (key.to_string(), value.to_vec());
        let r = self
            .write(move |tx| {
                let cur = get_kv(tx, &key)?;
                if cur.as_ref().map(|kv| kv.mod_revision) != Some(expect) {
                    return Ok(Ok(Cas::Conflict(cur)));
                }
                if !lease_exists(tx, lease)? {
                    return Ok(Err(lease));
                }
                Ok(Ok(Cas::Done(write_kv(tx, &key, &value, lease)?)))
            })
            .await?;
        r.map_err(|l| StoreError::Rejected(format!("lease {l} not found")))
    }

    async fn delete(&self, key: &str, expect: Revision) -> Result<Cas, StoreError> {
        OpCounters::bump(&self.ops.txn);
        let key = key.to_string();
        self.write(move |tx| {
            let cur = get_kv(tx, &key)?;
            if cur.as_ref().map(|kv| kv.mod_revision) != Some(expect) {
                return Ok(Cas::Conflict(cur));
            }
            Ok(Cas::Done(delete_kv(tx, &key)?))
        })
        .await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        OpCounters::bump(&self.ops.watch);
        let (tx, rx) = mpsc::channel(64);
        let (prefix, end) = (prefix.to_string(), prefix_end(prefix));
        let conn = self.conn.clone();
        let poll = self.opts.poll;
        let ops = self.ops.clone();
        let task = tokio::spawn(async move {
            let mut from = from.max(1);
            loop {
                let (c, p, e) = (conn.clone(), prefix.clone(), end.clone());
                let res = tokio::task::spawn_blocking(move || {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    poll_history(&mut c, &p, &e, from)
                })
                .await;
                let msg = match res {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(db_err(e))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Internal(e.to_string()))).await;
                        return;
                    }
                };
                let send = match &msg {
                    WatchMessage::Events(evs) => {
                        ops.watch_events.fetch_add(evs.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        from = evs.last().map_or(from, |e| e.revision() + 1);
                        true
                    }
                    WatchMessage::Progress(rev) => {
                        // Only worth a message when the revision moved.
                        let moved = *rev >= from;
                        from = from.max(rev + 1);
                        moved
                    }
                    WatchMessage::Compacted(_) => {
                        let _ = tx.send(Ok(msg)).await;
                        return;
                    }
                };
                if send && tx.send(Ok(msg.clone())).await.is_err() {
                    return;
                }
                // Drain a backlog without sleeping; otherwise wait for the next poll.
                if !matches!(&msg, WatchMessage::Events(e) if e.len() >= 1000) {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        OpCounters::bump(&self.ops.other);
        self.write(move |tx| compact_to(tx, revision)).await
    }

    async fn health(&self) -> StoreHealth {
        OpCounters::bump(&self.ops.other);
        let r = self.read(|tx| meta(tx, "revision")).await;
        let path = self.opts.path.display().to_string();
        StoreHealth {
            kind: "embedded".into(),
            healthy: r.is_ok(),
            revision: r.as_ref().ok().copied(),
            endpoints: vec![EndpointHealth {
                endpoint: path,
                healthy: r.is_ok(),
                version: Some(format!("sqlite {}", rusqlite::version())),
                is_leader: r.is_ok(),
                member_id: None,
                error: r.err().map(|e| e.to_string()),
            }],
        }
    }
}
