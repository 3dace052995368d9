//! fetch_to_file against a scripted HTTP server on 127.0.0.1 that misbehaves on demand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_api::DiskFormat;
use corral_storage::import::{
    convert, fetch_to_file, fetch_to_file_with, probe_format, FetchError, FetchOptions,
    ImportError, NoProgress, ProbeError, SourceFormat,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::util::*;

/// Serves a few paths, each with its own (mis)behaviour; returns the base URL.
async fn serve(image: Arc<Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        // Bounded: no test makes more than a handful of requests.
        for _ in 0..64 {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(answer(sock, image.clone()));
        }
    });
    base
}

async fn answer(mut sock: TcpStream, image: Arc<Vec<u8>>) {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let ok = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    let _ = match path.as_str() {
        "/good.qcow2" => {
            let _ = sock.write_all(ok(image.len()).as_bytes()).await;
            sock.write_all(&image).await
        }
        "/redirect" => {
            sock.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: /good.qcow2\r\nContent-Length: 0\r\n\r\n",
            )
            .await
        }
        "/loop" => {
            sock.write_all(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
                .await
        }
        "/garbage" => {
            let body = "<!DOCTYPE html>\n<html><body>Welcome to our downloads page</body></html>\n";
            let _ = sock.write_all(ok(body.len()).as_bytes()).await;
            sock.write_all(body.as_bytes()).await
        }
        "/unsized" => {
            // No Content-Length: the body ends when the connection closes.
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                .await;
            sock.write_all(&image).await
        }
        "/truncated" => {
            let _ = sock.write_all(ok(image.len()).as_bytes()).await;
            sock.write_all(&image[..image.len() / 3]).await
        }
        "/stall-body" => {
            let _ = sock.write_all(ok(image.len()).as_bytes()).await;
            let _ = sock.write_all(&image[..4096]).await;
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
        "/stall-head" => {
            tokio::time::sleep(Duration::from_secs(120)).await;
            Ok(())
        }
        _ => {
            sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .await
        }
    };
    let _ = sock.shutdown().await;
}

/// A real 16 MiB qcow2 image's bytes.
fn qcow2_bytes(dir: &std::path::Path) -> Arc<Vec<u8>> {
    let raw = pattern_raw(dir);
    let q = dir.join("src.qcow2");
    image_from(&raw, "qcow2", None, &q);
    Arc::new(std::fs::read(q).unwrap())
}

fn quick(stall: u64) -> FetchOptions {
    FetchOptions {
        stall_timeout: Duration::from_secs(stall),
        ..FetchOptions::default()
    }
}

#[tokio::test]
async fn good_download_then_probe_and_convert() {
    let src = tempfile::tempdir().unwrap();
    let image = qcow2_bytes(src.path());
    let base = serve(image.clone()).await;
    let dir = tempfile::tempdir().unwrap();

    let rec = Recorder::default();
    let dl = fetch_to_file(&format!("{base}/good.qcow2"), dir.path(), &rec)
        .await
        .unwrap();
    rec.assert_complete();
    assert_eq!(dl.size(), image.len() as u64);
    assert_eq!(std::fs::read(dl.path()).unwrap(), *image);
    assert!(dl.path().starts_with(dir.path()));
    assert_eq!(probe_format(dl.path()).await.unwrap(), SourceFormat::Qcow2);
    let dest = dir.path().join("vol.qcow2");
    convert(
        dl.path(),
        SourceFormat::Qcow2,
        &dest,
        DiskFormat::Qcow2,
        &NoProgress,
    )
    .await
    .unwrap();
    assert!(same_contents(
        &src.path().join("pattern.raw"),
        "raw",
        &dest,
        "qcow2"
    ));
    drop(dl);
    assert_eq!(
        listing(dir.path()),
        vec!["vol.qcow2"],
        "the download is removed on drop"
    );

    // Redirects are followed, and the final URL is told.
    let dl = fetch_to_file(&format!("{base}/redirect"), dir.path(), &NoProgress)
        .await
        .unwrap();
    assert!(dl.url().ends_with("/good.qcow2"));
    let kept = dir.path().join("kept.qcow2");
    dl.persist(&kept).unwrap();
    assert_eq!(std::fs::read(&kept).unwrap(), *image);

    // Without Content-Length: bytes are told instead of percent, and 100 at the end.
    let rec = Recorder::default();
    let dl = fetch_to_file(&format!("{base}/unsized"), dir.path(), &rec)
        .await
        .unwrap();
    assert_eq!(dl.size(), image.len() as u64);
    rec.assert_complete();
}

#[tokio::test]
async fn http_errors_are_told_plainly_and_leave_nothing() {
    let src = tempfile::tempdir().unwrap();
    let base = serve(qcow2_bytes(src.path())).await;
    let dir = tempfile::tempdir().unwrap();

    let url = format!("{base}/x.qcow2");
    let err = fetch_to_file(&url, dir.path(), &NoProgress)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), format!("GET {url} returned 404 Not Found"));
    assert!(err.is_bad_source());

    let err = fetch_to_file(&format!("{base}/loop"), dir.path(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Fetch(FetchError::Redirects { .. })),
        "{err}"
    );

    let err = fetch_to_file(&format!("{base}/truncated"), dir.path(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Fetch(FetchError::Truncated { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("cut short"), "{err}");

    let small = FetchOptions {
        max_bytes: Some(64 * 1024),
        ..FetchOptions::default()
    };
    for path in ["/good.qcow2", "/unsized"] {
        let err = fetch_to_file_with(&format!("{base}{path}"), dir.path(), &small, &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImportError::Fetch(FetchError::TooLarge { .. })),
            "{path}: {err}"
        );
    }

    // Nothing listens on port 9 of loopback: a connection error, not a hang.
    let err = fetch_to_file("http://127.0.0.1:9/x", dir.path(), &NoProgress)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImportError::Fetch(FetchError::Request { .. })),
        "{err}"
    );

    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}

#[tokio::test]
async fn garbage_downloads_but_fails_probe_clearly() {
    let src = tempfile::tempdir().unwrap();
    let base = serve(qcow2_bytes(src.path())).await;
    let dir = tempfile::tempdir().unwrap();
    let dl = fetch_to_file(&format!("{base}/garbage"), dir.path(), &NoProgress)
        .await
        .unwrap();
    let err = probe_format(dl.path()).await.unwrap_err();
    assert!(
        matches!(err, ImportError::Probe(ProbeError::NotADiskImage { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("HTML"), "{err}");
}

#[tokio::test]
async fn stalls_time_out_and_cancels_are_quick() {
    let src = tempfile::tempdir().unwrap();
    let base = serve(qcow2_bytes(src.path())).await;
    let dir = tempfile::tempdir().unwrap();

    for path in ["/stall-body", "/stall-head"] {
        let started = Instant::now();
        let err = fetch_to_file_with(&format!("{base}{path}"), dir.path(), &quick(1), &NoProgress)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ImportError::Fetch(FetchError::Stalled { .. })),
            "{path}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    // A cancel does not wait for the stall timeout.
    let rec = Recorder::default();
    let started = Instant::now();
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rec.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (url, opts) = (format!("{base}/stall-body"), quick(60));
    let fetch = fetch_to_file_with(&url, dir.path(), &opts, &rec);
    let (res, ()) = tokio::join!(fetch, cancel);
    assert!(matches!(res, Err(ImportError::Cancelled)));
    assert!(started.elapsed() < Duration::from_secs(5));

    assert!(listing(dir.path()).is_empty(), "{:?}", listing(dir.path()));
}
