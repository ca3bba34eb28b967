//! The API client: `kube`'s, configured from `--kubeconfig-file`, the pod's service account
//! (in-cluster), or `--kube-api-url`, with a layer that counts requests and bytes by kind
//! (the benchmark's unit of cost, and `overlayctl health`).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use base64::Engine;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::{Body, ClientBuilder};
use serde::Serialize;

/// Where the service account's files are in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `--kube-api-url`: overrides the server of the kubeconfig or of the in-cluster config.
    pub api_url: Option<String>,
    /// `--kubeconfig-file`.
    pub kubeconfig: Option<PathBuf>,
    /// The service account's token and CA (in-cluster).
    pub service_account_dir: PathBuf,
}

/// Requests sent to the API server and bytes moved, by kind.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// LIST requests (`GET` of a collection).
    pub list: AtomicU64,
    /// WATCH requests (`GET …?watch=true`).
    pub watch: AtomicU64,
    /// `GET` of one object (or of `/version`).
    pub get: AtomicU64,
    /// `PATCH` (our annotations, the NetworkUnavailable condition, Event series).
    pub patch: AtomicU64,
    /// `POST` (Events).
    pub post: AtomicU64,
    /// Anything else.
    pub other: AtomicU64,
    /// Response bytes received (bodies, after decompression if any).
    pub bytes_in: AtomicU64,
    /// Request body bytes sent.
    pub bytes_out: AtomicU64,
    /// Objects received in lists.
    pub listed: AtomicU64,
    /// Watch events received (bookmarks excluded).
    pub events: AtomicU64,
    /// Requests that failed: no answer, or refused (401, 403, 429, 5xx). Answers the
    /// client acts on (404, 409, 410) are not failures.
    pub errors: AtomicU64,
}

/// A snapshot of [`ApiCounters`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ApiCounts {
    /// LIST requests.
    pub list: u64,
    /// WATCH requests.
    pub watch: u64,
    /// Single-object GETs.
    pub get: u64,
    /// PATCHes.
    pub patch: u64,
    /// POSTs.
    pub post: u64,
    /// Other requests.
    pub other: u64,
    /// Response bytes.
    pub bytes_in: u64,
    /// Request bytes.
    pub bytes_out: u64,
    /// Objects listed.
    pub listed: u64,
    /// Watch events.
    pub events: u64,
    /// Failed requests.
    pub errors: u64,
}

impl ApiCounts {
    /// Requests of every kind.
    pub fn requests(&self) -> u64 {
        self.list + self.watch + self.get + self.patch + self.post + self.other
    }

    /// Field-wise `self - before`.
    pub fn since(&self, b: &ApiCounts) -> ApiCounts {
        ApiCounts {
            list: self.list - b.list,
            watch: self.watch - b.watch,
            get: self.get - b.get,
            patch: self.patch - b.patch,
            post: self.post - b.post,
            other: self.other - b.other,
            bytes_in: self.bytes_in - b.bytes_in,
            bytes_out: self.bytes_out - b.bytes_out,
            listed: self.listed - b.listed,
            events: self.events - b.events,
            errors: self.errors - b.errors,
        }
    }
}

impl ApiCounters {
    /// A snapshot.
    pub fn snapshot(&self) -> ApiCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiCounts {
            list: l(&self.list),
            watch: l(&self.watch),
            get: l(&self.get),
            patch: l(&self.patch),
            post: l(&self.post),
            other: l(&self.other),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            listed: l(&self.listed),
            events: l(&self.events),
            errors: l(&self.errors),
        }
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The certificates of a PEM bundle, as DER.
pub fn pem_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            let b = body.take().ok_or("END without BEGIN")?;
            out.push(
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| format!("a certificate is not base64: {e}"))?,
            );
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    if out.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(out)
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))
}

/// The client configuration: the kubeconfig when one is given; else the service account in
/// `service_account_dir` with `KUBERNETES_SERVICE_HOST`/`_PORT` (or `--kube-api-url`) as a
/// pod has them; else `--kube-api-url` without credentials.
pub async fn config(o: &ClientOptions) -> Result<kube::Config, String> {
    let url = |s: &str| s.parse::<http::Uri>().map_err(|e| format!("--kube-api-url {s:?}: {e}"));
    if let Some(path) = &o.kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(path)
            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
        let mut c = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
        if let Some(u) = &o.api_url {
            c.cluster_url = url(u)?;
        }
        return Ok(c);
    }
    let dir = &o.service_account_dir;
    let token = dir.join("token");
    let env_url = match (std::env::var("KUBERNETES_SERVICE_HOST"), std::env::var("KUBERNETES_SERVICE_PORT")) {
        (Ok(h), Ok(p)) => {
            let host = if h.contains(':') { format!("[{h}]") } else { h };
            Some(format!("https://{host}:{p}"))
        }
        _ => None,
    };
    let Some(server) = o.api_url.clone().or(env_url) else {
        return Err(format!(
            "kube mode needs --kubeconfig-file, --kube-api-url, or a pod's environment \
             (KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT and a service account in {})",
            dir.display()
        ));
    };
    let mut c = kube::Config::new(url(&server)?);
    if token.exists() {
        c.auth_info.token_file = Some(token.display().to_string());
    }
    let ca = dir.join("ca.crt");
    if ca.exists() {
        c.root_cert = Some(pem_certificates(&read(&ca)?).map_err(|e| format!("{}: {e}", ca.display()))?);
        c.root_cert_file = Some(ca);
    }
    if let Ok(ns) = std::fs::read_to_string(dir.join("namespace")) {
        c.default_namespace = ns.trim().to_string();
    }
    Ok(c)
}

/// A client counting into `counters`.
pub fn client(c: kube::Config, counters: Arc<ApiCounters>) -> Result<kube::Client, String> {
    let b = ClientBuilder::try_from(c).map_err(|e| format!("building the API client: {e}"))?;
    Ok(b.with_layer(&CountLayer(counters)).build())
}

#[derive(Clone)]
struct CountLayer(Arc<ApiCounters>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, counters: self.0.clone() }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    counters: Arc<ApiCounters>,
}

impl<S, B> tower::Service<Request<Body>> for Counted<S>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Response = Response<CountingBody<B>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let c = &self.counters;
        let watch = req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"));
        let collection = req.uri().path().ends_with("/nodes") || req.uri().path().ends_with("/events");
        let kind = match *req.method() {
            Method::GET if watch => &c.watch,
            Method::GET if collection => &c.list,
            Method::GET => &c.get,
            Method::PATCH => &c.patch,
            Method::POST => &c.post,
            _ => &c.other,
        };
        ApiCounters::add(kind, 1);
        if let Some(n) = http_body::Body::size_hint(req.body()).exact() {
            ApiCounters::add(&c.bytes_out, n);
        }
        let counters = c.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await.inspect_err(|_| ApiCounters::add(&counters.errors, 1))?;
            let s = resp.status();
            let refused = s.is_server_error()
                || [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN, StatusCode::TOO_MANY_REQUESTS]
                    .contains(&s);
            if refused {
                ApiCounters::add(&counters.errors, 1);
            }
            Ok(resp.map(|body| CountingBody { body, counters }))
        })
    }
}

/// A response body that counts its bytes.
pub struct CountingBody<B> {
    body: B,
    counters: Arc<ApiCounters>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for CountingBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let p = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &p
            && let Some(d) = f.data_ref()
        {
            ApiCounters::add(&self.counters.bytes_in, d.len() as u64);
        }
        p
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n\
                   junk\n-----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_certificates(pem).unwrap(), vec![vec![0, 1, 2, 3], vec![4, 5]]);
        assert!(pem_certificates("nothing").is_err());
    }

    #[tokio::test]
    async fn in_cluster_needs_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let o = ClientOptions { service_account_dir: dir.path().into(), ..Default::default() };
        // Only meaningful outside a pod (no KUBERNETES_SERVICE_HOST).
        if std::env::var("KUBERNETES_SERVICE_HOST").is_err() {
            let e = config(&o).await.unwrap_err();
            assert!(e.contains("--kubeconfig-file"), "{e}");
        }
        std::fs::write(dir.path().join("token"), "t").unwrap();
        std::fs::write(dir.path().join("namespace"), "kube-system\n").unwrap();
        let o = ClientOptions { api_url: Some("https://10.96.0.1:443".into()), ..o };
        let c = config(&o).await.unwrap();
        assert_eq!(c.cluster_url.to_string(), "https://10.96.0.1:443/");
        assert_eq!(c.default_namespace, "kube-system");
        assert!(c.auth_info.token_file.is_some());
    }
}
