//! A small HTTP/1.1 client for the daemon's unix socket (overlayctl and tests).

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot connect (daemon not running, no permission).
    #[error("connecting to {path}: {source}")]
    Connect {
        /// Socket path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// HTTP failure.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// Bad request construction.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request over the socket at `path`.
pub async fn request(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let work = async {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "overlayd")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = send.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        Ok(Reply { status, body })
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ClientError::Timeout(timeout))?
}

/// [`request`] from synchronous code (tests, scripts): runs its own small runtime.
pub fn request_blocking(
    path: &Path,
    method: &str,
    uri: &str,
    body: Option<Vec<u8>>,
) -> Result<Reply, ClientError> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
    rt.block_on(request(path, method, uri, body, Duration::from_secs(30)))
}
