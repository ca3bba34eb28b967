//! The local HTTP API. On the root-only unix socket: everything (reads, `PUT /v1/config`,
//! `POST /v1/leave`). On the optional TCP address: only `/healthz`, `/readyz` and
//! `/metrics`, since anything else there would be reachable by every local user.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

use crate::config::NetworkConfig;
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
            if ready {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            format!(
                "{}{}",
                shared.metrics.render(&shared.gauges()),
                crate::encryption::metrics(&shared.encryption.borrow())
            ),
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
        (&Method::GET, "/v1/config") => match shared.store.get(&shared.layout.config()).await {
            Ok(Some(kv)) => reply(StatusCode::OK, "application/json", kv.value),
            Ok(None) => error(StatusCode::NOT_FOUND, "no network config in the store"),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        },
        (&Method::PUT, "/v1/config") => put_config(req, &shared).await,
        (&Method::GET, "/v1/encryption") => {
            let v = shared.encryption.borrow().clone();
            json_reply(StatusCode::OK, &v)
        }
        (&Method::POST, "/v1/encryption") => post_encryption(req, &shared).await,
        (&Method::POST, "/v1/leave") => leave(&shared).await,
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

async fn put_config(req: Request<Incoming>, shared: &Node) -> Reply {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let parsed = match NetworkConfig::parse(&String::from_utf8_lossy(&body)) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match shared.store.put(&shared.layout.config(), &body).await {
        Ok(rev) => {
            let running = shared.config();
            let restart = running.is_some_and(|c| c != parsed.config);
            json_reply(
                StatusCode::OK,
                &json!({
                    "revision": rev,
                    "warnings": parsed.warnings,
                    "config": crate::encryption::settings::redact(parsed.config.to_json()),
                    // Like flannel, a running daemon applies a new config on restart.
                    "restart_needed": restart,
                }),
            )
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `overlayctl encryption …`: rewrites the stored config's `Encryption` section with a
/// compare-and-swap (a concurrent writer makes us re-read, never lose its change).
async fn post_encryption(req: Request<Incoming>, shared: &Node) -> Reply {
    use crate::encryption::admin;
    let body = match Limited::new(req.into_body(), 4 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
    };
    let request: admin::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad request: {e}")),
    };
    let key = shared.layout.config();
    for _ in 0..5 {
        let kv = match shared.store.get(&key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return error(StatusCode::NOT_FOUND, "no network config in the store"),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        };
        let (text, settings) = match admin::apply(&String::from_utf8_lossy(&kv.value), &request) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        match shared.store.update(&key, text.as_bytes(), kv.lease, kv.mod_revision).await {
            Ok(crate::store::Cas::Done(rev)) => {
                tracing::info!(action = ?request.action, settings = ?settings, "encryption settings stored");
                return json_reply(
                    StatusCode::OK,
                    &json!({
                        "revision": rev,
                        "enabled": settings.enabled,
                        "type": settings.kind.name(),
                        "strict": settings.strict,
                        "port": settings.port,
                        "key_generation": settings.key_generation,
                        "preshared_key": settings.preshared_key.is_some(),
                    }),
                );
            }
            Ok(crate::store::Cas::Conflict(_)) => continue,
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
        }
    }
    error(StatusCode::CONFLICT, "the network config kept changing; try again")
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

async fn serve_conn<S>(io: S, shared: Arc<Node>, full: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| handle(req, shared.clone(), full));
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "api connection");
    }
}

/// Serves the full API on the unix socket until shutdown.
pub async fn serve_unix(l: tokio::net::UnixListener, shared: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            a = l.accept() => match a {
                Ok((s, _)) => { tokio::spawn(serve_conn(s, shared.clone(), true)); }
                Err(e) => {
                    tracing::warn!(error = %e, "api accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves health and metrics on TCP until shutdown.
pub async fn serve_tcp(l: tokio::net::TcpListener, shared: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            a = l.accept() => match a {
                Ok((s, _)) => { tokio::spawn(serve_conn(s, shared.clone(), false)); }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
