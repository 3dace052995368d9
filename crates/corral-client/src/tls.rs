//! TLS to a corrald whose certificate is trusted by fingerprint alone.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No TCP connection.
    #[error("cannot connect to https://{host}:{port}")]
    Connect {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// The host part is neither a name nor an address.
    #[error("'{0}' is not a host name or address")]
    BadName(String),
    /// The server showed another certificate than the pinned one.
    #[error(
        "https://{host}:{port} showed a different certificate (sha256 {seen}) than the one trusted"
    )]
    Mismatch {
        host: String,
        port: u16,
        seen: String,
    },
    /// The handshake failed for another reason.
    #[error("TLS with https://{host}:{port} failed")]
    Handshake {
        host: String,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    /// rustls refused the configuration (cannot happen with its own defaults).
    #[error("TLS configuration")]
    Config(#[from] rustls::Error),
}

/// Lowercase hex SHA-256 of a certificate (DER).
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Accepts exactly one certificate, by fingerprint; with `None`, accepts any and
/// remembers what it saw (for `remote add` to show the user before trusting it).
#[derive(Debug)]
struct Pinned {
    expected: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(got.clone());
        }
        match &self.expected {
            Some(want) if *want != got => Err(rustls::Error::General(format!(
                "certificate fingerprint {got} is not the trusted {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS connection to `host:port`, and the fingerprint of the certificate it showed.
/// With `expected`, any other certificate is refused.
pub async fn connect(
    host: &str,
    port: u16,
    expected: Option<&str>,
) -> Result<(TlsStream<TcpStream>, String), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        expected: expected.map(str::to_string),
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| TlsError::Connect {
            host: host.to_string(),
            port,
            source,
        })?;
    // Small requests and replies: send them at once.
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| TlsError::BadName(host.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await;
    let seen = verifier
        .seen
        .lock()
        .ok()
        .and_then(|s| s.clone())
        .unwrap_or_default();
    match tls {
        Ok(stream) => Ok((stream, seen)),
        Err(_) if expected.is_some_and(|want| want != seen) && !seen.is_empty() => {
            Err(TlsError::Mismatch {
                host: host.to_string(),
                port,
                seen,
            })
        }
        Err(source) => Err(TlsError::Handshake {
            host: host.to_string(),
            port,
            source,
        }),
    }
}
