//! HTTPS for remote access: the certificate (given, or self-signed on first start and
//! kept in `<state>/tls/`), its fingerprint for clients to pin, and the accept loop that
//! serves the same router as the Unix socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::secrets::sha256_hex;
use super::Peer;

/// A TLS handshake slower than this is dropped (a stalled client must not hold a task).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TlsSetup {
    pub config: Arc<rustls::ServerConfig>,
    /// Lowercase hex SHA-256 of the certificate (DER), as `corral remote add` shows it.
    pub fingerprint: String,
    pub cert_path: PathBuf,
    /// Whether this start made the certificate.
    pub generated: bool,
}

/// Loads `cert`/`key` if given; otherwise the self-signed pair in `dir`, made on first
/// use for `names` (host names and addresses the certificate is valid for).
pub fn load_or_make(
    dir: &Path,
    given: Option<(&Path, &Path)>,
    names: &[String],
) -> anyhow::Result<TlsSetup> {
    let (cert_path, key_path, generated) = match given {
        Some((c, k)) => (c.to_path_buf(), k.to_path_buf(), false),
        None => {
            let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
            let generated = !c.exists();
            if generated {
                make_self_signed(dir, &c, &k, names)?;
            }
            (c, k, generated)
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificate {}", cert_path.display()))?;
    let Some(leaf) = certs.first() else {
        bail!("{} holds no certificate", cert_path.display());
    };
    let fingerprint = sha256_hex(leaf);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading the private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not go together")?;
    // HTTP/1.1 only. Not HTTP/2: Chrome ends every HTTP/2 session when the host's
    // addresses change (ERR_NETWORK_CHANGED), so a browser on the corrald host lost its
    // requests, event streams and consoles each time a network's bridge came up (seen in
    // the storage e2e test). The console keeps to one event stream per tab instead.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsSetup {
        config: Arc::new(config),
        fingerprint,
        cert_path,
        generated,
    })
}

fn make_self_signed(dir: &Path, cert: &Path, key: &Path, names: &[String]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .context("making a self-signed certificate")?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true).mode(0o600);
    let mut f = opts
        .open(key)
        .with_context(|| format!("writing {}", key.display()))?;
    std::io::Write::write_all(&mut f, made.key_pair.serialize_pem().as_bytes())?;
    f.sync_all()?;
    // The certificate goes last: its presence means the pair is complete.
    let tmp = cert.with_extension("crt.tmp");
    std::fs::write(&tmp, made.cert.pem())?;
    std::fs::rename(&tmp, cert)?;
    Ok(())
}

/// Serves `router` over HTTPS on `listener` until `shutdown` fires. Each request carries
/// the client's address as [`Peer::Tcp`].
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an HTTPS connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(serve_connection(
            tcp,
            addr,
            acceptor.clone(),
            router.clone(),
        ));
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
) {
    // Replies go out whole at once: with Nagle on, a small reply waits for the client's
    // delayed ACK (40 ms), which doubled a migration's pre-flight and lengthened its
    // switch-over.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return tracing::debug!(%addr, error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!(%addr, "TLS handshake timed out"),
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(Peer::Tcp(addr)));
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%addr, error = %e, "HTTPS connection ended");
    }
}

/// `aa:bb:…` is how browsers show fingerprints; both forms name the same certificate.
pub fn colon_form(fingerprint: &str) -> String {
    fingerprint
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_made_certificate_is_kept_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_make(dir.path(), None, &names).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 64);
        let again = load_or_make(dir.path(), None, &names).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        let mode = std::fs::metadata(dir.path().join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(colon_form("abcd"), "ab:cd");
    }
}
