//! The web console: the single-page app from web/dist, embedded at build time by
//! build.rs. Unknown non-API paths get index.html so the app's client-side routes
//! work on reload; `/api/...` unknown paths stay JSON 404s. The files are public (the
//! login page must load before anyone is logged in); every API call they make is gated.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

const NOT_BUILT: &str = "<!doctype html><meta charset=utf-8><title>Corral</title>\
<p>The web console is not built into this corrald: run <code>scripts/build-web.sh</code> \
and rebuild corrald, or install with <code>scripts/install.sh</code>, which does both.</p>";

fn asset(path: &str) -> Option<&'static [u8]> {
    WEB_ASSETS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, bytes)| *bytes)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

fn respond(body: &'static [u8], ctype: &'static str, cache: &'static str) -> Response {
    let mut resp = Response::new(Body::from(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// The router's fallback: API 404s as JSON, otherwise the web console.
pub async fn fallback(uri: Uri) -> Response {
    let path = uri.path();
    if path.starts_with("/api/") || path == "/api" || path == "/metrics" {
        return ApiError::NotFound {
            kind: "path",
            name: "requested".into(),
        }
        .into_response();
    }
    let rel = path.trim_start_matches('/');
    if let Some(bytes) = asset(rel).filter(|_| !rel.is_empty()) {
        // Vite names assets by content hash: they never change under one name.
        let cache = if rel.starts_with("assets/") {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        };
        return respond(bytes, content_type(rel), cache);
    }
    if rel.starts_with("assets/") {
        return (StatusCode::NOT_FOUND, "no such asset").into_response();
    }
    match asset("index.html") {
        Some(index) => respond(index, "text/html; charset=utf-8", "no-cache"),
        None => respond(NOT_BUILT.as_bytes(), "text/html; charset=utf-8", "no-cache"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn api_paths_stay_json_404() {
        let r = fallback(Uri::from_static("/api/v1/nope")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let ct = r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(ct.starts_with("application/json"), "{ct}");
    }

    #[tokio::test]
    async fn client_routes_get_html() {
        let r = fallback(Uri::from_static("/vms/web1")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
}
