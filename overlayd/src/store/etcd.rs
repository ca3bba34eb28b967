//! etcd v3 through `etcd-client`.
//!
//! Every unary request is retried for a few seconds on transient errors (no leader,
//! leader changed, connection refused) so that a leader election is invisible to callers;
//! longer outages surface as [`StoreError::Unavailable`] and the callers keep their state.
//! Writes that may have been applied before their answer was lost are recognised on the
//! retry by the store lease they carry (lease IDs are unique).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Cas, Create, EndpointHealth, KeyValue, LeaseId, Listing, OpCounters, OpCounts, Revision, Store,
    StoreError, StoreHealth, Watch, WatchEvent, WatchMessage, ttl_secs,
};

/// Keys per range request: bounded messages whatever the cluster size.
const PAGE: i64 = 1000;
/// The largest response this client decodes (set on purpose rather than left at the gRPC
/// default of 4 MiB): well above etcd's largest request (1.5 MiB by default), so any single
/// key fits, while a listing page of many large values is split (see `list_once`).
const DECODE_LIMIT: usize = 16 * 1024 * 1024;
/// How tonic reports a response over the decode limit.
const TOO_LARGE: &str = "message length too large";

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// Client URLs (`http://10.0.0.1:2379`, `https://…`).
    pub endpoints: Vec<String>,
    /// CA bundle to verify the servers (required for `https`).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// Client key.
    pub key_file: Option<PathBuf>,
    /// User name for etcd authentication.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Per-request timeout (default 5 s).
    pub request_timeout: Option<Duration>,
    /// How long one call keeps retrying transient errors (default 6 s: longer than an
    /// etcd election with default settings).
    pub retry_for: Option<Duration>,
}

/// An etcd v3 store.
pub struct EtcdStore {
    client: Client,
    opts: EtcdOptions,
    ops: Arc<OpCounters>,
    timeout: Duration,
    retry_for: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({})", self.describe())
    }
}

fn connect_options(o: &EtcdOptions) -> Result<ConnectOptions, StoreError> {
    let timeout = o.request_timeout.unwrap_or(Duration::from_secs(5));
    let mut c = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(timeout)
        // HTTP/2 pings find dead connections (a killed member) so watches move on.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
        // A member cut off from the leader must not serve stale watches.
        .with_require_leader(true);
    match (&o.username, &o.password) {
        (Some(u), Some(p)) => c = c.with_user(u.clone(), p.clone()).with_auto_token_refresh(true),
        (None, None) => {}
        _ => {
            return Err(StoreError::Rejected("etcd username and password go together".into()));
        }
    }
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|e| StoreError::Rejected(format!("reading {}: {e}", p.display())))
    };
    let tls = match (&o.ca_file, &o.cert_file, &o.key_file) {
        (None, None, None) => None,
        (ca, cert, key) => {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = ca {
                t = t.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            match (cert, key) {
                (Some(c), Some(k)) => {
                    t = t.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Rejected("etcd certificate and key files go together".into()));
                }
            }
            Some(t)
        }
    };
    if let Some(t) = tls {
        if o.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(StoreError::Rejected("TLS files given but an etcd endpoint is http://".into()));
        }
        c = c.with_tls(t);
    }
    Ok(c)
}

/// Maps a client error to transient or not.
fn classify(e: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Unknown
            | Code::Internal => StoreError::Unavailable(s.message().to_string()),
            _ => StoreError::Rejected(format!("{:?}: {}", s.code(), s.message())),
        },
        E::TransportError(e) => StoreError::Unavailable(format!("transport: {e}")),
        E::IoError(e) => StoreError::Unavailable(format!("io: {e}")),
        E::WatchError(e) => StoreError::Unavailable(format!("watch: {e}")),
        E::LeaseKeepAliveError(e) => StoreError::Unavailable(format!("keep-alive: {e}")),
        E::InvalidArgs(e) | E::EndpointError(e) => StoreError::Rejected(e),
        E::InvalidUri(e) => StoreError::Rejected(format!("invalid uri: {e}")),
        other => StoreError::Internal(other.to_string()),
    }
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}

fn header_rev(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| h.revision())
}

/// The first key after every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn first_get(resps: Vec<TxnOpResponse>) -> Option<KeyValue> {
    resps.into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => g.kvs().first().map(kv_of),
        _ => None,
    })
}

impl EtcdStore {
    /// Connects (lazily: an unreachable cluster is not an error here unless authentication
    /// is configured, which needs a round trip).
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Rejected("no etcd endpoints".into()));
        }
        let copts = connect_options(&opts)?;
        let client = Client::connect(&opts.endpoints, Some(copts)).await.map_err(classify)?;
        Ok(EtcdStore {
            client,
            timeout: opts.request_timeout.unwrap_or(Duration::from_secs(5)),
            retry_for: opts.retry_for.unwrap_or(Duration::from_secs(6)),
            opts,
            ops: Arc::new(OpCounters::default()),
        })
    }

    /// Runs `f` until it succeeds, fails for good, or the retry window closes. `counter`
    /// is bumped once per attempt.
    /// One transaction: put `key` (attached to `lease`, 0 = none) if `cmp` holds, else read
    /// it back (the caller tells a lost answer to its own write from a conflict).
    async fn put_if(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        cmp: Compare,
    ) -> Result<etcd_client::TxnResponse, StoreError> {
        self.retry(
            |c| &c.txn,
            |mut c| {
                let (k, v, cmp) = (key.to_string(), value.to_vec(), cmp.clone());
                async move {
                    let put = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                    let txn = Txn::new()
                        .when([cmp])
                        .and_then([TxnOp::put(k.clone(), v, put)])
                        .or_else([TxnOp::get(k, None)]);
                    c.txn(txn).await
                }
            },
        )
        .await
    }

    async fn retry<T, F, Fut>(
        &self,
        counter: fn(&OpCounters) -> &std::sync::atomic::AtomicU64,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut delay = Duration::from_millis(100);
        loop {
            OpCounters::bump(counter(&self.ops));
            let attempt = tokio::time::timeout(self.timeout, f(self.client.clone())).await;
            let err = match attempt {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => classify(e),
                Err(_) => StoreError::Unavailable(format!("no answer within {:?}", self.timeout)),
            };
            OpCounters::bump(&self.ops.errors);
            if !err.is_transient() || Instant::now() + delay > deadline {
                return Err(err);
            }
            tracing::debug!(error = %err, "etcd request failed, retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }

    async fn list_once(&self, prefix: &str) -> Result<Listing, StoreError> {
        let end = prefix_end(prefix);
        let mut start = prefix.as_bytes().to_vec();
        let mut kvs = Vec::new();
        let mut revision = 0;
        // Pages shrink when one does not fit the decode limit (a few huge values) and grow
        // back after; a single key that does not fit is skipped, named in the log.
        let mut page = PAGE;
        loop {
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                o = o.with_revision(revision);
            }
            let key = start.clone();
            let resp = self
                .retry(
                    |c| &c.list,
                    |c| {
                        let (k, o) = (key.clone(), o.clone());
                        async move { c.kv_client().max_decoding_message_size(DECODE_LIMIT).get(k, Some(o)).await }
                    },
                )
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(StoreError::Rejected(m)) if m.contains(TOO_LARGE) => {
                    if page > 1 {
                        page = (page / 8).max(1);
                        continue;
                    }
                    start = self.skip_oversized(&start, &end, revision).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = header_rev(resp.header());
            }
            self.ops.listed_keys.fetch_add(resp.kvs().len() as u64, std::sync::atomic::Ordering::Relaxed);
            kvs.extend(resp.kvs().iter().map(kv_of));
            page = (page * 2).min(PAGE);
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { kvs, revision })
    }

    /// The key at `start` is too large to read: logs it and returns the key after it.
    async fn skip_oversized(
        &self,
        start: &[u8],
        end: &[u8],
        revision: Revision,
    ) -> Result<Vec<u8>, StoreError> {
        let mut o = GetOptions::new().with_range(end.to_vec()).with_limit(1).with_keys_only();
        if revision > 0 {
            o = o.with_revision(revision);
        }
        let key = start.to_vec();
        let resp = self
            .retry(
                |c| &c.list,
                |mut c| {
                    let (k, o) = (key.clone(), o.clone());
                    async move { c.get(k, Some(o)).await }
                },
            )
            .await?;
        let Some(kv) = resp.kvs().first() else { return Ok(end.to_vec()) };
        tracing::warn!(
            key = %crate::logsafe::excerpt(kv.key()),
            limit = DECODE_LIMIT,
            "skipping a key whose value does not fit the listing's size limit"
        );
        let mut next = kv.key().to_vec();
        next.push(0);
        Ok(next)
    }

    fn single_endpoint(&self, endpoint: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![endpoint.to_string()],
            request_timeout: Some(Duration::from_secs(2)),
            ..self.opts.clone()
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn describe(&self) -> String {
        format!("etcd {}", self.opts.endpoints.join(","))
    }

    fn ops(&self) -> OpCounts {
        self.ops.snapshot()
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl_secs(ttl);
        let r = self.retry(|c| &c.grant, |mut c| async move { c.lease_grant(secs, None).await }).await?;
        Ok(r.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Option<Duration>, StoreError> {
        let r = self
            .retry(
                |c| &c.keep_alive,
                |mut c| async move {
                    match c.lease_keep_alive(lease).await {
                        // The client already read the first answer and checked its TTL; dropping
                        // the keeper closes the stream.
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => {
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                },
            )
            .await?;
        if !r {
            return Ok(None);
        }
        // The keep-alive answer carried the TTL but the client keeps it; TimeToLive would
        // cost one more request, and callers only need "alive".
        Ok(Some(Duration::ZERO))
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let r = self.retry(|c| &c.revoke, |mut c| async move { c.lease_revoke(lease).await }).await;
        match r {
            Ok(_) => Ok(()),
            Err(StoreError::Rejected(m)) if m.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .retry(
                |c| &c.get,
                |mut c| {
                    let k = key.to_string();
                    async move { c.get(k, None).await }
                },
            )
            .await?;
        Ok(r.kvs().first().map(kv_of))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        // A page can miss its revision if a compaction runs in between: start again.
        let mut last = None;
        for _ in 0..3 {
            match self.list_once(prefix).await {
                Err(StoreError::Rejected(m)) if m.contains("compacted") => last = Some(m),
                r => return r,
            }
        }
        Err(StoreError::Unavailable(last.unwrap_or_default()))
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        let r = self
            .retry(
                |c| &c.put,
                |mut c| {
                    let (k, v) = (key.to_string(), value.to_vec());
                    async move { c.put(k, v, None).await }
                },
            )
            .await?;
        Ok(header_rev(r.header()))
    }

    async fn create(&self, key: &str, value: &[u8], lease: LeaseId) -> Result<Create, StoreError> {
        let r = self.put_if(key, value, lease, Compare::create_revision(key, CompareOp::Equal, 0)).await?;
        if r.succeeded() {
            return Ok(Create::Created(header_rev(r.header())));
        }
        match first_get(r.op_responses()) {
            // Our own write whose answer was lost, seen on the retry.
            Some(kv) if lease != 0 && kv.lease == lease && kv.value == value => {
                Ok(Create::Created(kv.mod_revision))
            }
            Some(kv) => Ok(Create::Exists(kv)),
            None => Err(StoreError::Internal(format!("create of {key} failed but the key is absent"))),
        }
    }

    async fn update(
        &self,
        key: &str,
        value: &[u8],
        lease: LeaseId,
        expect: Revision,
    ) -> Result<Cas, StoreError> {
        let r = self.put_if(key, value, lease, Compare::mod_revision(key, CompareOp::Equal, expect)).await?;
        if r.succeeded() {
            return Ok(Cas::Done(header_rev(r.header())));
        }
        match first_get(r.op_responses()) {
            Some(kv) if lease != 0 && kv.lease == lease && kv.value == value && kv.mod_revision > expect => {
                Ok(Cas::Done(kv.mod_revision))
            }
            other => Ok(Cas::Conflict(other)),
        }
    }

    async fn delete(&self, key: &str, expect: Revision) -> Result<Cas, StoreError> {
        let r = self
            .retry(
                |c| &c.txn,
                |mut c| {
                    let k = key.to_string();
                    async move {
                        let txn = Txn::new()
                            .when([Compare::mod_revision(k.clone(), CompareOp::Equal, expect)])
                            .and_then([TxnOp::delete(k.clone(), None)])
                            .or_else([TxnOp::get(k, None)]);
                        c.txn(txn).await
                    }
                },
            )
            .await?;
        if r.succeeded() {
            Ok(Cas::Done(header_rev(r.header())))
        } else {
            Ok(Cas::Conflict(first_get(r.op_responses())))
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        OpCounters::bump(&self.ops.watch);
        let client = self.client.clone();
        let opts = WatchOptions::new().with_range(prefix_end(prefix)).with_start_revision(from.max(1));
        let stream = tokio::time::timeout(
            self.timeout,
            client.watch_client().max_decoding_message_size(DECODE_LIMIT).watch(prefix, Some(opts)),
        )
        .await
        .map_err(|_| StoreError::Unavailable("watch: no answer".into()))?
        .map_err(classify)?;
        let (tx, rx) = mpsc::channel(64);
        let ops = self.ops.clone();
        let task = tokio::spawn(async move {
            let (_sender, mut stream) = stream.split();
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let out = match msg {
                    Err(e) => Err(classify(e)),
                    Ok(None) => Err(StoreError::Unavailable("watch stream closed".into())),
                    Ok(Some(resp)) => {
                        // Checked on every message: etcd 3.4 first confirms the watch, then
                        // cancels it with the compact revision.
                        if resp.compact_revision() > 0 {
                            let _ = tx.send(Ok(WatchMessage::Compacted(resp.compact_revision()))).await;
                            return;
                        }
                        if resp.canceled() {
                            Err(StoreError::Unavailable(format!(
                                "watch canceled by etcd: {}",
                                resp.cancel_reason()
                            )))
                        } else if resp.events().is_empty() {
                            if resp.created() {
                                // The creation answer's header revision runs ahead of
                                // history still to be sent: never resume from it.
                                continue;
                            }
                            Ok(WatchMessage::Progress(header_rev(resp.header())))
                        } else {
                            ops.watch_events
                                .fetch_add(resp.events().len() as u64, std::sync::atomic::Ordering::Relaxed);
                            let evs = resp
                                .events()
                                .iter()
                                .filter_map(|e| {
                                    let kv = e.kv()?;
                                    Some(match e.event_type() {
                                        etcd_client::EventType::Put => WatchEvent::Put(kv_of(kv)),
                                        etcd_client::EventType::Delete => WatchEvent::Delete {
                                            key: String::from_utf8_lossy(kv.key()).into_owned(),
                                            mod_revision: kv.mod_revision(),
                                        },
                                    })
                                })
                                .collect();
                            Ok(WatchMessage::Events(evs))
                        }
                    }
                };
                let end = out.is_err();
                if tx.send(out).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Watch::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let r = self.retry(|c| &c.other, |mut c| async move { c.compact(revision, None).await }).await;
        match r {
            Ok(_) => Ok(()),
            Err(StoreError::Rejected(m)) if m.contains("compacted") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> StoreHealth {
        OpCounters::bump(&self.ops.other);
        let mut client = self.client.clone();
        let quorum = tokio::time::timeout(
            Duration::from_secs(3),
            client.get("health", Some(GetOptions::new().with_count_only())),
        )
        .await;
        let (healthy, revision) = match quorum {
            Ok(Ok(r)) => (true, Some(header_rev(r.header()))),
            // etcd checks permissions after the quorum read: a refusal still proves one
            // (a user restricted to the prefix may not read "health").
            Ok(Err(etcd_client::Error::GRpcStatus(s))) if s.code() == tonic::Code::PermissionDenied => {
                (true, None)
            }
            _ => (false, None),
        };
        let checks = self.opts.endpoints.iter().map(|ep| {
            let o = self.single_endpoint(ep);
            let ep = ep.clone();
            async move {
                let res = async {
                    let mut c =
                        Client::connect(&o.endpoints, Some(connect_options(&o).map_err(|e| e.to_string())?))
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::time::timeout(Duration::from_secs(2), c.status())
                        .await
                        .map_err(|_| "no answer".to_string())?
                        .map_err(|e| e.to_string())
                }
                .await;
                match res {
                    Ok(s) => {
                        let member = s.header().map(|h| h.member_id());
                        EndpointHealth {
                            endpoint: ep,
                            healthy: true,
                            version: Some(s.version().to_string()),
                            is_leader: member.is_some_and(|m| m == s.leader()),
                            member_id: member,
                            error: None,
                        }
                    }
                    Err(e) => EndpointHealth {
                        endpoint: ep,
                        healthy: false,
                        version: None,
                        is_leader: false,
                        member_id: None,
                        error: Some(e),
                    },
                }
            }
        });
        let endpoints = futures_util::future::join_all(checks).await;
        StoreHealth { kind: "etcd".into(), healthy, revision, endpoints }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/subnets/"), b"/a/subnets0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn tls_needs_https() {
        let o = EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            ca_file: Some("/etc/hostname".into()),
            ..Default::default()
        };
        let e = connect_options(&o).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        let o = EtcdOptions { username: Some("u".into()), ..Default::default() };
        assert!(connect_options(&o).is_err());
    }
}
