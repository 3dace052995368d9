//! One corrald calling another over HTTPS: JSON in, JSON out, the token in
//! `Authorization`, the certificate pinned, every request bounded in time (a cut link
//! must fail a call, not hang it).

use std::time::Duration;

use corral_api::ErrorBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::{self, TlsError};
use crate::url::{parse_url, UrlError};

/// How long one request may take unless the caller says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection broke mid-request.
    #[error("lost the connection to {url}")]
    Lost {
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{url} did not answer within {} s", .after.as_secs())]
    Timeout { url: String, after: Duration },
    /// The other corrald answered with an error.
    #[error("{url} refused: {}", .body.error)]
    Api {
        url: String,
        status: u16,
        body: ErrorBody,
    },
    /// Its reply was not what this corrald expects (another version?).
    #[error("cannot read the reply of {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be built (a header value that is not text).
    #[error("cannot build a request to {url}: {message}")]
    Request { url: String, message: String },
}

impl PeerError {
    /// The HTTP status the other corrald answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PeerError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the other side never gave an answer (unreachable, cut, timed out): what
    /// it did with the request is unknown.
    pub fn is_unanswered(&self) -> bool {
        matches!(
            self,
            PeerError::Tls(TlsError::Connect { .. })
                | PeerError::Tls(TlsError::Handshake { .. })
                | PeerError::Lost { .. }
                | PeerError::Timeout { .. }
        )
    }
}

/// Another corrald: its HTTPS URL, the fingerprint of its certificate, a token.
#[derive(Debug, Clone)]
pub struct Peer {
    url: String,
    host: String,
    port: u16,
    fingerprint: String,
    token: String,
    timeout: Duration,
}

impl Peer {
    pub fn new(url: &str, fingerprint: &str, token: &str) -> Result<Peer, UrlError> {
        let (host, port) = parse_url(url)?;
        Ok(Peer {
            url: url.trim_end_matches('/').to_string(),
            host,
            port,
            fingerprint: fingerprint.to_string(),
            token: token.to_string(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The same peer with another per-request time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Peer {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host part of the URL: where this peer's other services (QEMU's migration
    /// and NBD listeners) are reached too.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, PeerError> {
        let body = self.send(Method::GET, path, None).await?;
        self.decode(&body)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, PeerError> {
        let json = serde_json::to_vec(body).map_err(|e| PeerError::Request {
            url: self.url.clone(),
            message: e.to_string(),
        })?;
        let reply = self.send(Method::POST, path, Some(json)).await?;
        self.decode(&reply)
    }

    /// `PUT` of a whole file as the request body, streamed (never all in memory). The
    /// time limit grows with the file: at least the peer's, plus a second per 16 MiB.
    pub async fn put_file<T: DeserializeOwned>(
        &self,
        path: &str,
        file: &std::path::Path,
    ) -> Result<T, PeerError> {
        let io = |e: std::io::Error| PeerError::Request {
            url: self.url.clone(),
            message: format!("{}: {e}", file.display()),
        };
        let f = tokio::fs::File::open(file).await.map_err(io)?;
        let size = f.metadata().await.map_err(io)?.len();
        let limit = self.timeout + Duration::from_secs(size / (16 << 20));
        let body = file_body(f);
        let exchange = self.exchange_body(Method::PUT, path, body, "application/octet-stream");
        let reply = match tokio::time::timeout(limit, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(PeerError::Timeout {
                    url: self.url.clone(),
                    after: limit,
                })
            }
        };
        self.decode(&reply)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, PeerError> {
        match tokio::time::timeout(self.timeout, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                url: self.url.clone(),
                after: self.timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, PeerError> {
        let body = Full::new(Bytes::from(body.unwrap_or_default()))
            .map_err(|never| match never {})
            .boxed();
        self.exchange_body(method, path, body, "application/json")
            .await
    }

    async fn exchange_body(
        &self,
        method: Method,
        path: &str,
        body: BoxBody,
        content_type: &str,
    ) -> Result<Bytes, PeerError> {
        let (stream, _) = tls::connect(&self.host, self.port, Some(&self.fingerprint)).await?;
        let lost = |source| PeerError::Lost {
            url: self.url.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(lost)?;
        // The connection future does the I/O; it ends once the reply is read.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, format!("{}:{}", self.host, self.port))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| PeerError::Request {
                url: self.url.clone(),
                message: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(lost)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(lost)?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| ErrorBody {
            error: format!(
                "answered {status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ),
            field: None,
            hint: None,
        });
        Err(PeerError::Api {
            url: self.url.clone(),
            status: status.as_u16(),
            body,
        })
    }

    fn decode<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, PeerError> {
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            b"null".as_slice()
        } else {
            body
        };
        serde_json::from_slice(body).map_err(|source| PeerError::Decode {
            url: self.url.clone(),
            source,
        })
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// A file as a request body, read a MiB at a time.
fn file_body(file: tokio::fs::File) -> BoxBody {
    use tokio::io::AsyncReadExt;
    let chunks = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    StreamBody::new(chunks).boxed()
}
