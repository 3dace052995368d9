//! Reaching a corrald over HTTPS: the certificate is pinned by its SHA-256 fingerprint
//! (no CA is involved), requests carry an API token. The CLI uses it for its remotes;
//! corrald uses [`Peer`] to talk to another corrald (a migration's destination).

pub mod peer;
pub mod tls;
pub mod url;

pub use peer::{Peer, PeerError};
pub use tls::{connect, fingerprint, TlsError};
pub use url::{parse_url, UrlError};

/// An error and its sources, joined: "a: b: c".
pub fn peer_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
