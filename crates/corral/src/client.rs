//! corrald's REST API over its Unix socket, or over HTTPS to a remote (see
//! [`crate::remote`]): JSON requests, typed replies, friendly errors.
//!
//! One HTTP/1.1 connection per request keeps the client stateless and simple; a CLI run
//! makes a handful of requests at most, so pooling would buy nothing.

use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::WebSocketStream;

use corral_api::ErrorBody;

use crate::error::CliError;

/// Where every API path starts.
pub const API: &str = "/api/v1";

/// Any byte stream to corrald: the Unix socket or a TLS connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

/// A client for one corrald: its socket, or a remote by URL, pinned certificate and token.
pub struct Client {
    target: Target,
}

enum Target {
    Unix(PathBuf),
    Remote {
        name: String,
        host: String,
        port: u16,
        remote: crate::remote::Remote,
    },
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            target: Target::Unix(socket.into()),
        }
    }

    pub fn remote(name: &str, remote: crate::remote::Remote) -> Result<Self> {
        let (host, port) = crate::remote::parse_url(&remote.url)?;
        Ok(Client {
            target: Target::Remote {
                name: name.to_string(),
                host,
                port,
                remote,
            },
        })
    }

    /// `Host` and, for a remote, `Authorization`.
    fn headers(&self) -> Vec<(&'static str, String)> {
        match &self.target {
            Target::Unix(_) => vec![("host", "localhost".to_string())],
            Target::Remote {
                host, port, remote, ..
            } => vec![
                ("host", format!("{host}:{port}")),
                ("authorization", format!("Bearer {}", remote.token)),
            ],
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Unix(socket) => socket.display().to_string(),
            Target::Remote { name, remote, .. } => format!("{} (remote {name})", remote.url),
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.send(Method::GET, path, None).await?;
        decode(&body)
    }

    /// `GET` of a `text/plain` resource, returned byte for byte (serial output need not be UTF-8).
    pub async fn get_text(&self, path: &str) -> Result<Vec<u8>> {
        Ok(self.send(Method::GET, path, None).await?.to_vec())
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = self.send(Method::POST, path, Some(json(body)?)).await?;
        decode(&body)
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let body = self.send(Method::PATCH, path, Some(json(body)?)).await?;
        decode(&body)
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = self.send(Method::PUT, path, Some(json(body)?)).await?;
        decode(&body)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.send(Method::DELETE, path, None).await?;
        decode(&body)
    }

    /// Opens a WebSocket at `path`; an HTTP refusal (VM stopped, unknown VM) becomes the
    /// daemon's own error rather than a bare "handshake failed".
    pub async fn websocket(&self, path: &str) -> Result<WebSocketStream<Stream>> {
        let stream = self.connect().await?;
        let mut request = format!("ws://localhost{path}")
            .into_client_request()
            .context("building the websocket request")?;
        for (name, value) in self.headers() {
            request.headers_mut().insert(
                name,
                value.parse().context("a header value is not valid text")?,
            );
        }
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().unwrap_or_default();
                Err(api_error(response.status(), body).into())
            }
            Err(e) => Err(CliError::new(format!("console connection failed: {e}")).into()),
        }
    }

    /// Sends one request; a 2xx reply gives its body, anything else the daemon's error.
    async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Bytes> {
        let response = self.open(method, path, body).await?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.lost(e))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(api_error(status, &bytes).into())
        }
    }

    /// `GET` of a stream that never ends by itself (server-sent events): each complete
    /// line is handed to `each_line` as it arrives.
    pub async fn follow(
        &self,
        path: &str,
        mut each_line: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let response = self.open(Method::GET, path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let bytes = body.collect().await.map_err(|e| self.lost(e))?.to_bytes();
            return Err(api_error(status, &bytes).into());
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.lost(e))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                each_line(String::from_utf8_lossy(&line).trim_end())?;
            }
        }
        Err(CliError::new(format!("corrald at {} closed the stream", self.describe())).into())
    }

    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let stream = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.lost(e))?;
        // The connection future does the actual I/O; it ends once the reply is read.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in self.headers() {
            request = request.header(name, value);
        }
        let request = request
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        sender.send_request(request).await.map_err(|e| self.lost(e))
    }

    async fn connect(&self) -> Result<Stream> {
        match &self.target {
            Target::Unix(socket) => match UnixStream::connect(socket).await {
                Ok(s) => Ok(Box::new(s)),
                Err(e) => Err(connect_error(socket, &e).into()),
            },
            Target::Remote {
                host, port, remote, ..
            } => {
                let (tls, _) =
                    crate::remote::connect(host, *port, Some(&remote.fingerprint)).await?;
                Ok(Box::new(tls))
            }
        }
    }

    fn lost(&self, e: hyper::Error) -> anyhow::Error {
        CliError::new(format!(
            "lost the connection to corrald at {}: {e}",
            self.describe()
        ))
        .with_hint("check corrald's log; it may have stopped or restarted")
        .into()
    }
}

/// Says plainly why the socket could not be reached, and what to do about it.
pub fn connect_error(socket: &Path, e: &io::Error) -> CliError {
    let path = socket.display();
    let start_hint =
        format!("is corrald running? start it with `corrald --socket {path}`, or pass --socket / set CORRAL_SOCKET");
    match e.kind() {
        io::ErrorKind::NotFound => CliError::new(format!(
            "cannot connect to corrald: socket {path} does not exist"
        ))
        .with_hint(start_hint),
        io::ErrorKind::ConnectionRefused => CliError::new(format!(
            "cannot connect to corrald: nothing is listening on {path}"
        ))
        .with_hint(start_hint),
        io::ErrorKind::PermissionDenied => CliError::new(format!(
            "cannot connect to corrald: permission denied on {path}"
        ))
        .with_hint("run as root or as a member of the corral group"),
        _ => {
            CliError::new(format!("cannot connect to corrald at {path}: {e}")).with_hint(start_hint)
        }
    }
}

/// Turns a non-2xx reply into the daemon's error, or a plain one if the body is not ours.
pub fn api_error(status: StatusCode, body: &[u8]) -> CliError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => CliError::from(parsed),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                CliError::new(format!("corrald answered {status}"))
            } else {
                CliError::new(format!("corrald answered {status}: {text}"))
            }
        }
    }
}

fn json<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body).context("encoding the request body")
}

/// Reads a 2xx body; an empty one reads as JSON `null` (fine for `serde_json::Value`).
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"null".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        CliError::new(format!("cannot read corrald's reply: {e}"))
            .with_hint("corral and corrald may be different versions")
            .into()
    })
}

/// Percent-encodes one path segment or query value, so any name makes a valid URI.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/api/v1/vms/{name}`.
pub fn vm_path(name: &str) -> String {
    format!("{API}/vms/{}", encode(name))
}

/// `/api/v1/pools/{name}`.
pub fn pool_path(name: &str) -> String {
    format!("{API}/pools/{}", encode(name))
}

/// `/api/v1/volumes/{name}`.
pub fn volume_path(name: &str) -> String {
    format!("{API}/volumes/{}", encode(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments() {
        assert_eq!(encode("web-01"), "web-01");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(vm_path("x y"), "/api/v1/vms/x%20y");
        assert_eq!(pool_path("fast"), "/api/v1/pools/fast");
        assert_eq!(volume_path("a/b"), "/api/v1/volumes/a%2Fb");
    }

    #[test]
    fn missing_socket_is_told_plainly() {
        let err = io::Error::from(io::ErrorKind::NotFound);
        let e = connect_error(Path::new("/tmp/none.sock"), &err);
        assert!(e.error.contains("/tmp/none.sock does not exist"));
        let hint = e.hint.unwrap_or_default();
        assert!(hint.contains("is corrald running?"));
        assert!(hint.contains("corrald --socket /tmp/none.sock"));
    }

    #[test]
    fn daemon_errors_keep_field_and_hint() {
        let body = br#"{"error":"vm 'x' not found","hint":"see corral list"}"#;
        let e = api_error(StatusCode::NOT_FOUND, body);
        assert_eq!(e.error, "vm 'x' not found");
        assert_eq!(e.hint.as_deref(), Some("see corral list"));
        let e = api_error(StatusCode::BAD_GATEWAY, b"upstream down");
        assert_eq!(e.error, "corrald answered 502 Bad Gateway: upstream down");
    }

    #[test]
    fn empty_body_decodes_as_null() {
        let v: serde_json::Value = decode(b"").unwrap();
        assert!(v.is_null());
        let v: serde_json::Value = decode(b"{}").unwrap();
        assert!(v.is_object());
    }
}
