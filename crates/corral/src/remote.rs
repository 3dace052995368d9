//! Remotes: other hosts' corrald over HTTPS (`corrald --listen`), like `incus remote`.
//!
//! Each remote is a URL, the SHA-256 fingerprint of the certificate the user accepted
//! (pinned: nothing else is trusted, no CA involved) and an API token. They live in
//! `remotes.yaml` (mode 0600: it holds tokens) in `$CORRAL_CONFIG_DIR`, else
//! `$XDG_CONFIG_HOME/corral`, else `~/.config/corral`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::CliError;

/// The name of the Unix socket "remote", which always exists.
pub const LOCAL: &str = "local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// `https://host:port`.
    pub url: String,
    /// Lowercase hex SHA-256 of the server's certificate (DER).
    pub fingerprint: String,
    pub token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteConfig {
    /// The remote commands go to without `--remote`; `local` (or none) is the socket.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub remotes: BTreeMap<String, Remote>,
}

pub fn config_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORRAL_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("corral");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".config/corral")
}

impl RemoteConfig {
    fn path() -> PathBuf {
        config_dir().join("remotes.yaml")
    }

    pub fn load() -> Result<Self> {
        let path = Self::path();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written to a temporary file (0600) and renamed: never half-written, never readable
    /// by others.
    pub fn save(&self) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path();
        let dir = config_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(".remotes.yaml.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(serde_yaml::to_string(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The remote a command goes to: `--remote`/`CORRAL_REMOTE`, else the default.
    /// `None` means the local socket.
    pub fn pick(&self, asked: Option<&str>) -> Result<Option<(String, Remote)>> {
        let name = match asked.or(self.default.as_deref()) {
            None | Some(LOCAL) => return Ok(None),
            Some(name) => name,
        };
        match self.remotes.get(name) {
            Some(r) => Ok(Some((name.to_string(), r.clone()))),
            None => Err(CliError::new(format!("no remote named '{name}'"))
                .with_hint("`corral remote list` shows them; `corral remote add` makes one")
                .into()),
        }
    }
}

/// `https://host:port` → (host, port); the port defaults to 8443.
pub fn parse_url(url: &str) -> Result<(String, u16)> {
    corral_client::parse_url(url).map_err(|e| {
        let hint = match e {
            corral_client::UrlError::NotHttps(_) => {
                Some("remotes are reached over HTTPS, e.g. https://host:8443")
            }
            _ => None,
        };
        let err = CliError::new(e.to_string());
        match hint {
            Some(h) => err.with_hint(h).into(),
            None => err.into(),
        }
    })
}

/// A TLS connection to `host:port`, and the fingerprint of the certificate it showed.
/// With `expected`, any other certificate is refused.
pub async fn connect(
    host: &str,
    port: u16,
    expected: Option<&str>,
) -> Result<(TlsStream<TcpStream>, String)> {
    use corral_client::TlsError;
    corral_client::connect(host, port, expected)
        .await
        .map_err(|e| {
            let err = CliError::new(corral_client::peer_chain(&e));
            match e {
                TlsError::Connect { .. } => err
                    .with_hint("is corrald started there with --listen, and is the port open?")
                    .into(),
                TlsError::Mismatch { .. } => err
                    .with_hint(
                        "if the server's certificate really changed, check the new fingerprint on the host \
                         (`corral host info`), then `corral remote remove NAME` and `corral remote add` again",
                    )
                    .into(),
                _ => err.into(),
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_url_that_is_not_https_says_what_remotes_are() {
        let err = parse_url("http://h:1").unwrap_err();
        let cli = err.downcast_ref::<CliError>().unwrap();
        assert!(cli.error.contains("not an https:// URL"), "{}", cli.error);
        assert!(cli
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("https://host:8443"));
        assert_eq!(parse_url("https://h/").unwrap(), ("h".into(), 8443));
    }

    #[test]
    fn picking_a_remote() {
        let mut c = RemoteConfig::default();
        assert!(c.pick(None).unwrap().is_none());
        c.remotes.insert(
            "lab".into(),
            Remote {
                url: "https://h:1".into(),
                fingerprint: "ab".into(),
                token: "t".into(),
            },
        );
        c.default = Some("lab".into());
        assert_eq!(c.pick(None).unwrap().unwrap().0, "lab");
        assert!(c.pick(Some("local")).unwrap().is_none());
        assert!(c.pick(Some("nope")).is_err());
    }
}
