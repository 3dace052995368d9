//! Downloads over HTTP(S) into a temporary file next to where the image will live.

use std::path::Path;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::{redirect, StatusCode, Url};
use tokio::io::AsyncWriteExt;

use super::{check_cancel, ImportError, Monotonic, Progress, TempFile};

/// How often a waiting download wakes to look for a cancel and a stall.
const TICK: Duration = Duration::from_millis(200);

/// Limits of one download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Refuse bodies larger than this (checked against Content-Length up front and
    /// against the bytes as they come).
    pub max_bytes: Option<u64>,
    /// Give up when the server sends nothing for this long (headers or body).
    pub stall_timeout: Duration,
    /// Give up when the TCP/TLS connection is not up after this long.
    pub connect_timeout: Duration,
    /// Redirects followed before giving up.
    pub max_redirects: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_bytes: None,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            max_redirects: 10,
        }
    }
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Only http:// and https:// are downloaded; local files are read in place.
    #[error("'{url}' is not an http:// or https:// URL")]
    UnsupportedScheme { url: String },
    /// The URL does not parse.
    #[error("'{url}' is not a valid URL")]
    BadUrl {
        url: String,
        #[source]
        source: url::ParseError,
    },
    /// The server answered with an error status.
    #[error("GET {url} returned {status}")]
    Status { url: String, status: StatusCode },
    /// The server kept redirecting, or redirected somewhere Corral will not follow.
    #[error("GET {url}: too many or unsafe redirects (at most {max}, never from https to http)")]
    Redirects { url: String, max: usize },
    /// No connection could be made, or it broke before the reply.
    #[error("GET {url} failed: {reason}")]
    Request { url: String, reason: String },
    /// The server went silent.
    #[error("GET {url} stalled: nothing received for {secs} s")]
    Stalled { url: String, secs: u64 },
    /// The body broke off before its announced length.
    #[error("GET {url} was cut short: got {got} of {expected} bytes")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    /// The body broke off (length unknown).
    #[error("GET {url} broke off after {got} bytes: {reason}")]
    Body {
        url: String,
        got: u64,
        reason: String,
    },
    /// The body is bigger than allowed.
    #[error("GET {url} is larger than the limit of {max} bytes")]
    TooLarge { url: String, max: u64 },
}

impl FetchError {
    pub(crate) fn is_bad_source(&self) -> bool {
        true
    }

    pub(crate) fn hint(&self) -> Option<&'static str> {
        Some(match self {
            FetchError::UnsupportedScheme { .. } | FetchError::BadUrl { .. } => {
                "give an http:// or https:// URL, or an absolute path on the host"
            }
            FetchError::Status { .. } => "check the URL in a browser or with curl -I",
            FetchError::Stalled { .. } | FetchError::Truncated { .. } | FetchError::Body { .. } => {
                "the server or the network dropped the transfer; try again"
            }
            FetchError::TooLarge { .. } => "the image is larger than this import allows",
            FetchError::Redirects { .. } | FetchError::Request { .. } => return None,
        })
    }
}

/// `true` for sources to download; everything else (`file://`, plain paths) is local.
pub fn is_remote(source: &str) -> bool {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// A finished download: a temporary file removed on drop unless persisted or kept.
#[derive(Debug)]
pub struct TempDownload {
    file: TempFile,
    size: u64,
    url: String,
}

impl TempDownload {
    pub fn path(&self) -> &Path {
        self.file.path()
    }
    /// Bytes received.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The URL the body finally came from (after redirects).
    pub fn url(&self) -> &str {
        &self.url
    }
    /// Renames the download to `dest` (same file system), never overwriting.
    pub fn persist(self, dest: &Path) -> Result<(), ImportError> {
        self.file.persist(dest)
    }
}

/// Downloads `url` into a temporary file in `dest_dir` with default limits.
pub async fn fetch_to_file(
    url: &str,
    dest_dir: &Path,
    progress: &dyn Progress,
) -> Result<TempDownload, ImportError> {
    fetch_to_file_with(url, dest_dir, &FetchOptions::default(), progress).await
}

/// Downloads `url` into a temporary file in `dest_dir`, following redirects, reporting
/// progress from Content-Length, and removing the file on any failure or cancel.
pub async fn fetch_to_file_with(
    url: &str,
    dest_dir: &Path,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<TempDownload, ImportError> {
    if !is_remote(url) {
        return Err(FetchError::UnsupportedScheme {
            url: url.to_string(),
        }
        .into());
    }
    let parsed = Url::parse(url).map_err(|source| FetchError::BadUrl {
        url: url.to_string(),
        source,
    })?;
    check_cancel(progress)?;
    let client = client(opts).map_err(|e| FetchError::Request {
        url: url.to_string(),
        reason: root_cause(&e),
    })?;

    let stall = opts.stall_timeout;
    let stalled = || FetchError::Stalled {
        url: url.to_string(),
        secs: stall.as_secs(),
    };
    let mut send = pin!(client.get(parsed).send());
    let started = Instant::now();
    let response = loop {
        tokio::select! {
            r = &mut send => break r,
            _ = tokio::time::sleep(TICK) => {
                check_cancel(progress)?;
                if started.elapsed() >= stall {
                    return Err(stalled().into());
                }
            }
        }
    };
    let response = response.map_err(|source| {
        if source.is_redirect() {
            FetchError::Redirects {
                url: url.to_string(),
                max: opts.max_redirects,
            }
        } else {
            FetchError::Request {
                url: url.to_string(),
                reason: root_cause(&source),
            }
        }
    })?;
    let final_url = response.url().to_string();
    if !response.status().is_success() {
        return Err(FetchError::Status {
            url: final_url,
            status: response.status(),
        }
        .into());
    }
    let expected = response.content_length();
    let too_large = |max| FetchError::TooLarge {
        url: final_url.clone(),
        max,
    };
    if let (Some(max), Some(len)) = (opts.max_bytes, expected) {
        if len > max {
            return Err(too_large(max).into());
        }
    }

    let (temp, file) = TempFile::create_in(dest_dir, "download")?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(file));
    let temp_path = temp.path().to_path_buf();
    let write_err = |source| ImportError::Io {
        action: "write",
        path: temp_path.clone(),
        source,
    };
    let mut body = response.bytes_stream();
    let mut got: u64 = 0;
    let mut last_data = Instant::now();
    let mut last_note = Instant::now();
    let mut bar = Monotonic::new(progress);
    bar.report(0.0, 0.0);
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tokio::time::sleep(TICK) => {
                check_cancel(progress)?;
                if last_data.elapsed() >= stall {
                    return Err(stalled().into());
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|source| match expected {
            Some(expected) => FetchError::Truncated {
                url: final_url.clone(),
                got,
                expected,
            },
            None => FetchError::Body {
                url: final_url.clone(),
                got,
                reason: root_cause(&source),
            },
        })?;
        check_cancel(progress)?;
        last_data = Instant::now();
        got += chunk.len() as u64;
        if let Some(max) = opts.max_bytes.filter(|&max| got > max) {
            return Err(too_large(max).into());
        }
        out.write_all(&chunk).await.map_err(write_err)?;
        match expected {
            // Short of the end: 100 is only said once the file is complete.
            Some(total) if total > 0 => bar.report((got as f64 * 99.0 / total as f64) as f32, 0.5),
            _ => {
                if last_note.elapsed() >= Duration::from_secs(1) {
                    last_note = Instant::now();
                    progress.indeterminate(got);
                }
            }
        }
    }
    if let Some(expected) = expected.filter(|&e| e != got) {
        return Err(FetchError::Truncated {
            url: final_url,
            got,
            expected,
        }
        .into());
    }
    out.flush().await.map_err(write_err)?;
    out.into_inner().sync_all().await.map_err(write_err)?;
    bar.report(100.0, 0.0);
    Ok(TempDownload {
        file: temp,
        size: got,
        url: final_url,
    })
}

/// The innermost error's message: reqwest's own ("error sending request") says less
/// than the cause under it ("Connection refused", a TLS certificate problem).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn client(opts: &FetchOptions) -> Result<reqwest::Client, reqwest::Error> {
    let max = opts.max_redirects;
    // Downgrading https to http would let anyone on the path swap the image.
    let policy = redirect::Policy::custom(move |attempt| {
        let downgrade = attempt
            .previous()
            .last()
            .is_some_and(|p| p.scheme() == "https")
            && attempt.url().scheme() != "https";
        let bad_scheme = !matches!(attempt.url().scheme(), "http" | "https");
        if attempt.previous().len() > max || downgrade || bad_scheme {
            attempt.error("redirect refused")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .connect_timeout(opts.connect_timeout)
        .user_agent(concat!("corral/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_or_local() {
        assert!(is_remote("http://x/y"));
        assert!(is_remote("HTTPS://x/y"));
        assert!(!is_remote("file:///tmp/x"));
        assert!(!is_remote("/var/lib/x.qcow2"));
        assert!(!is_remote("ht"));
    }

    #[tokio::test]
    async fn local_sources_are_not_fetched() {
        let dir = tempfile::tempdir().unwrap();
        let err = fetch_to_file(
            "file:///etc/hostname",
            dir.path(),
            &super::super::NoProgress,
        )
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            ImportError::Fetch(FetchError::UnsupportedScheme { .. })
        ));
        let err = fetch_to_file("http://[bad", dir.path(), &super::super::NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not a valid URL"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
