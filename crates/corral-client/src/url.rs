//! `https://host:port` URLs of corrald's HTTPS listener.

/// A URL that is not `https://HOST[:PORT]`.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not HTTPS at all.
    #[error("'{0}' is not an https:// URL")]
    NotHttps(String),
    /// A path or nothing after the scheme.
    #[error("'{0}' should be just https://HOST:PORT")]
    NotJustHost(String),
    /// The port is not a number.
    #[error("bad port in '{0}'")]
    BadPort(String),
}

/// `https://host:port` → (host, port); the port defaults to 8443. IPv6 hosts come in
/// brackets (`https://[::1]:8443`) and go out without them.
pub fn parse_url(url: &str) -> Result<(String, u16), UrlError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| UrlError::NotHttps(url.to_string()))?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.is_empty() {
        return Err(UrlError::NotJustHost(url.to_string()));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p.parse().map_err(|_| UrlError::BadPort(url.to_string()))?;
            (h, port)
        }
        _ => (authority, 8443),
    };
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(parse_url("https://h:9443").unwrap(), ("h".into(), 9443));
        assert_eq!(parse_url("https://h/").unwrap(), ("h".into(), 8443));
        assert_eq!(
            parse_url("https://[::1]:8443").unwrap(),
            ("::1".into(), 8443)
        );
        assert!(matches!(
            parse_url("http://h:1"),
            Err(UrlError::NotHttps(_))
        ));
        assert!(matches!(
            parse_url("https://h:1/api"),
            Err(UrlError::NotJustHost(_))
        ));
        assert!(matches!(
            parse_url("https://h:x"),
            Err(UrlError::BadPort(_))
        ));
    }
}
