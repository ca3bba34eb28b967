//! The local HTTP API. On the root-only unix socket: reads and `POST /v1/leave` (the network
//! config is the operator's and is written to the store by `overlayctl`, never through a
//! daemon). On the optional TCP address: only `/healthz`, `/readyz` and
//! `/metrics`, since anything else there would be reachable by every local user.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};

use crate::identity::PublicKey;
use crate::lease::{KeeperCommand, OwnLease};
use crate::node::Node;
use crate::peer::Peer;
use crate::validate::Verdict;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json_reply(status: StatusCode, v: &Value) -> Reply {
    let mut body = serde_json::to_vec_pretty(v).expect("json values serialize");
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Reply {
    json_reply(status, &json!({ "error": msg.to_string() }))
}

/// A peer as the API shows it.
pub fn peer_json(p: &Peer) -> Value {
    json!({
        "key": p.key.to_string(),
        "subnet": p.key.ipv4.map(|n| n.to_string()),
        "ipv6_subnet": p.key.ipv6.map(|n| n.to_string()),
        "public_ip": p.attrs.public_ip,
        "public_ipv6": p.attrs.public_ipv6,
        "node_id": p.attrs.node_id,
        "backend_type": p.attrs.backend_type,
        "backend_data": p.attrs.backend_data,
    })
}

fn lease_json(l: &OwnLease, shared: &Node) -> Value {
    let k = shared.keeper.borrow();
    json!({
        "node_id": shared.id,
        "key": l.key.to_string(),
        "subnet": l.key.ipv4.map(|n| n.to_string()),
        "ipv6_subnet": l.key.ipv6.map(|n| n.to_string()),
        "public_ip": l.attrs.public_ip,
        "public_ipv6": l.attrs.public_ipv6,
        "backend_type": l.attrs.backend_type,
        "backend_data": l.attrs.backend_data,
        "mod_revision": l.mod_revision,
        "store_lease": format!("{:x}", l.store_lease),
        "renewals": k.renewals,
        "last_renewal": k.last_renewal.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        "store_ok": k.store_ok,
        "subnet_changes": k.subnet_changes,
    })
}

async fn handle(req: Request<Incoming>, shared: Arc<Node>, full: bool) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let ready = shared.is_ready();
    let r = match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => {
            // A family that fails does not make the node unready while another works; it is
            // named here, one line each.
            let mut body = if ready { "ready\n" } else { "not ready\n" }.to_string();
            for p in shared.datapath.borrow().problems() {
                body.push_str(&format!("degraded {p}\n"));
            }
            let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            reply(code, "text/plain", body)
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            shared.metrics.render(&shared.gauges(), &shared.encryption.borrow()),
        ),
        _ if !full => error(StatusCode::NOT_FOUND, "only /healthz, /readyz and /metrics here"),
        (&Method::GET, "/v1/status") => status(&shared),
        (&Method::GET, "/v1/cni") => cni(&shared),
        (&Method::GET, "/v1/lease") => {
            let lease = shared.keeper.borrow().lease.clone();
            match lease {
                Some(l) => json_reply(StatusCode::OK, &lease_json(&l, &shared)),
                None => error(StatusCode::SERVICE_UNAVAILABLE, "no lease yet"),
            }
        }
        (&Method::GET, "/v1/network") => match shared.config() {
            Some(c) => json_reply(
                StatusCode::OK,
                &json!({
                    "network": c.ipv4_network().map(|n| n.to_string()),
                    "ipv6_network": c.ipv6_network().map(|n| n.to_string()),
                    "mtu": *shared.mtu.borrow(),
                    "backend_type": c.backend.type_name(),
                    "config": crate::encryption::settings::redact(c.to_json()),
                }),
            ),
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no network config yet"),
        },
        (&Method::GET, "/v1/peers") => {
            let peers: Vec<Value> = shared.peers.borrow().values().map(|p| peer_json(p)).collect();
            json_reply(StatusCode::OK, &Value::Array(peers))
        }
        (&Method::GET, "/v1/leases") => leases(&shared).await,
        (&Method::GET, "/v1/store") => {
            let h = shared.store.health().await;
            let k = shared.keeper.borrow().clone();
            json_reply(
                StatusCode::OK,
                &json!({
                    "store": shared.store.describe(),
                    "health": h,
                    "daemon_store_ok": k.store_ok,
                    "last_error": k.last_error,
                    "requests": shared.store.ops(),
                }),
            )
        }
        // The stored text, pre-shared key redacted (the API never returns it).
        (&Method::GET, "/v1/config") => match shared.store.get(&shared.layout.config()).await {
            Ok(Some(kv)) => match serde_json::from_slice::<Value>(&kv.value) {
                Ok(v) => json_reply(StatusCode::OK, &crate::encryption::settings::redact(v)),
                Err(_) => error(StatusCode::UNPROCESSABLE_ENTITY, "the stored network config is not JSON"),
            },
            Ok(None) => error(StatusCode::NOT_FOUND, "no network config in the store"),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
        (&Method::GET, "/v1/encryption") => {
            let v = shared.encryption.borrow().clone();
            json_reply(StatusCode::OK, &v)
        }
        (&Method::POST, "/v1/leave") => leave(&shared).await,
        (&Method::GET, "/v1/identity") => identity(&shared),
        (&Method::DELETE, p) if p.starts_with("/v1/pins/") => forget_pin(&shared, &p["/v1/pins/".len()..]),
        (&Method::PUT, p) if p.starts_with("/v1/pins/") => {
            let node = p["/v1/pins/".len()..].to_string();
            set_pin(&shared, &node, req).await
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route for {method} {path}")),
    };
    Ok(r)
}

/// Everything the `vxlan` CNI plugin needs, in one answer.
fn cni(shared: &Node) -> Reply {
    let lease = shared.keeper.borrow().lease.clone();
    let config = shared.config();
    json_reply(
        StatusCode::OK,
        &json!({
            "ready": shared.is_ready(),
            "subnet": lease.as_ref().and_then(|l| l.key.ipv4).map(|n| n.to_string()),
            "ipv6_subnet": lease.as_ref().and_then(|l| l.key.ipv6).map(|n| n.to_string()),
            "network": config.as_ref().and_then(|c| c.ipv4_network()).map(|n| n.to_string()),
            "ipv6_network": config.as_ref().and_then(|c| c.ipv6_network()).map(|n| n.to_string()),
            "mtu": *shared.mtu.borrow(),
            "ip_masq": shared.ip_masq,
        }),
    )
}

fn status(shared: &Node) -> Reply {
    let k = shared.keeper.borrow().clone();
    json_reply(
        StatusCode::OK,
        &json!({
            "ready": shared.is_ready(),
            "node_id": shared.id,
            "key": k.lease.as_ref().map(|l| l.key.to_string()),
            "subnet": k.lease.as_ref().and_then(|l| l.key.ipv4).map(|n| n.to_string()),
            "ipv6_subnet": k.lease.as_ref().and_then(|l| l.key.ipv6).map(|n| n.to_string()),
            "peers": shared.peers.borrow().len(),
            "readiness": *shared.readiness.borrow(),
            "datapath": {
                "listing_applied": shared.datapath.borrow().listing_applied,
                "failing_batches": shared.datapath.borrow().failing,
                "last_error": shared.datapath.borrow().last_error,
                "families": shared.datapath.borrow().families,
            },
            "store": shared.store.describe(),
            "store_ok": k.store_ok,
            "last_error": k.last_error,
            "renewals": k.renewals,
            "subnet_changes": k.subnet_changes,
            "peer_events": shared.metrics.peer_events(),
            "underlay": {
                "iface": shared.underlay.iface,
                "public_ip": shared.underlay.public_ip,
                "public_ipv6": shared.underlay.public_ipv6,
                "mtu": shared.underlay.mtu,
            },
            "subnet_file": shared.subnet_file,
            "uptime_secs": shared.started.elapsed().as_secs(),
        }),
    )
}

/// Every key under `subnets/`, straight from the store, with the verdict this node
/// gives it: the place to see hostile or broken entries.
async fn leases(shared: &Node) -> Reply {
    let listing = match shared.store.list(&shared.layout.subnets()).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let own = shared.keeper.borrow().lease.as_ref().map(|l| l.key);
    let validator = shared.validator();
    let rows: Vec<Value> = listing
        .kvs
        .iter()
        .map(|kv| {
            let value: Value = serde_json::from_slice(&kv.value).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&kv.value).chars().take(512).collect())
            });
            let verdict = match (&validator, shared.layout.parse_lease(&kv.key)) {
                (_, Err(e)) => Err(e.to_string()),
                (None, Ok(_)) => Err("no network config".to_string()),
                (Some(v), Ok(key)) => v.check_stored(&key, kv, own.as_ref()).map_err(|e| e.to_string()),
            };
            json!({
                "key": kv.key.strip_prefix(&shared.layout.subnets()).unwrap_or(&kv.key),
                "value": value,
                "own": matches!(verdict, Ok(Verdict::Own(_))),
                "valid": verdict.is_ok(),
                "reason": verdict.err(),
                "mod_revision": kv.mod_revision,
                "store_lease": format!("{:x}", kv.lease),
            })
        })
        .collect();
    json_reply(StatusCode::OK, &json!({ "revision": listing.revision, "leases": rows }))
}

/// This node's identity and the identities it has pinned other nodes to.
fn identity(shared: &Node) -> Reply {
    let pins = shared.pins.read().unwrap_or_else(|p| p.into_inner());
    let pinned: serde_json::Map<String, Value> =
        pins.all().map(|(n, k)| (n.clone(), json!(k.to_string()))).collect();
    json_reply(
        StatusCode::OK,
        &json!({ "node_id": shared.id, "identity": shared.identity.to_string(), "pins": pinned }),
    )
}

/// `overlayctl identity forget NODE`: the next validly signed lease of NODE pins its key
/// anew (a node reinstalled with a new key but its old node ID).
fn forget_pin(shared: &Node, node: &str) -> Reply {
    let forgotten = shared.pins.write().unwrap_or_else(|p| p.into_inner()).forget(node);
    if forgotten {
        tracing::warn!(node = %crate::logsafe::printable(node), "operator forgot a node's pinned identity");
        json_reply(StatusCode::OK, &json!({ "forgotten": node }))
    } else {
        error(StatusCode::NOT_FOUND, format!("no identity pinned for node {:?}", node))
    }
}

/// `overlayctl identity pin NODE KEY`: NODE is known by KEY from now on (the key as the
/// reinstalled node's `overlayctl identity show` prints it).
async fn set_pin(shared: &Node, node: &str, req: Request<Incoming>) -> Reply {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), 256).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let Some(key) = std::str::from_utf8(&body).ok().and_then(|t| PublicKey::parse(t.trim())) else {
        return error(StatusCode::BAD_REQUEST, "the body must be an identity key (base64 of 32 bytes)");
    };
    shared.pins.write().unwrap_or_else(|p| p.into_inner()).replace(node, key);
    tracing::warn!(node = %crate::logsafe::printable(node), identity = %key, "operator pinned a node's identity");
    json_reply(StatusCode::OK, &json!({ "node": node, "identity": key.to_string() }))
}

async fn leave(shared: &Node) -> Reply {
    let (tx, rx) = oneshot::channel();
    if shared.commands.send(KeeperCommand::Leave(tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "the lease keeper is not running");
    }
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(()))) => json_reply(StatusCode::OK, &json!({ "left": true })),
        Ok(Ok(Err(e))) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "no answer from the lease keeper"),
    }
}

/// At most this many connections per listener; more are closed at once (300 idle clients
/// must not grow the daemon without bound).
pub const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send a request's headers (also between keep-alive requests).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Read buffer bound per connection (headers included).
const MAX_BUF: usize = 64 * 1024;

async fn serve_conn<S>(io: S, shared: Arc<Node>, full: bool, _permit: OwnedSemaphorePermit)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, shared.clone(), full));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "api connection");
    }
}

/// Accepts on `accept` until shutdown, each connection served while a permit is free.
async fn serve<S, F>(
    what: &'static str,
    mut accept: impl FnMut() -> F,
    shared: Arc<Node>,
    full: bool,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = std::io::Result<S>>,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            a = accept() => match a {
                Ok(s) => match permits.clone().try_acquire_owned() {
                    Ok(p) => { tokio::spawn(serve_conn(s, shared.clone(), full, p)); }
                    // Dropped: closed at once.
                    Err(_) => tracing::debug!(listener = what, "connection limit reached; closing a new connection"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "api accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves the full API on the unix socket until shutdown.
pub async fn serve_unix(l: tokio::net::UnixListener, shared: Arc<Node>, shutdown: watch::Receiver<bool>) {
    serve("unix", || async { l.accept().await.map(|(s, _)| s) }, shared, true, shutdown).await
}

/// Serves health and metrics on TCP until shutdown.
pub async fn serve_tcp(l: tokio::net::TcpListener, shared: Arc<Node>, shutdown: watch::Receiver<bool>) {
    serve("tcp", || async { l.accept().await.map(|(s, _)| s) }, shared, false, shutdown).await
}
