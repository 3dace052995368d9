//! The one gate every request passes: who is calling, may they do this, and the audit
//! log of what they did (or were refused).

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use corral_api::{AuditEntry, CredentialKind, Role};

use super::policy::{self, Access};
use super::{AuditNote, Identity, Peer, CSRF_HEADER};
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::http::AppState;

/// Identifies the caller, checks the route's [`Access`], puts the [`Identity`] in the
/// request's extensions for handlers, and audits.
pub async fn guard(State(mgr): State<AppState>, mut req: Request, next: Next) -> Response {
    // No connection info means a request that did not come through either listener:
    // treat it as an anonymous remote caller, never as the trusted socket.
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0)
        .unwrap_or(Peer::Tcp(std::net::SocketAddr::from(([0, 0, 0, 0], 0))));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let method = req.method().clone();
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let access = policy::required(&method, &route);
    let identity = mgr.auth.identify(&peer, req.headers());
    let audit = Audit {
        peer,
        method: method.clone(),
        path: req.uri().path().to_string(),
        route: route.clone(),
        identity: identity.as_ref().ok().and_then(|i| i.clone()),
    };
    let decision = match (access, identity) {
        (Access::Public, found) => Ok(found.ok().flatten()),
        (_, Err(e)) => Err(e),
        (_, Ok(None)) => Err(ApiError::Unauthorized {
            message: "this needs credentials".into(),
            hint: "log in, or send `Authorization: Bearer TOKEN` (`corral token create`)".into(),
        }),
        (Access::Authenticated, Ok(Some(id))) => Ok(Some(id)),
        (Access::Role(needed), Ok(Some(id))) => {
            allowed(&id, needed, &method, &req).map(|()| Some(id))
        }
    };
    match decision {
        Ok(id) => {
            if let Some(id) = id {
                req.extensions_mut().insert(id);
            }
            let mut response = if method == Method::GET || method == Method::HEAD {
                next.run(req).await
            } else {
                run_to_completion(next, req).await
            };
            let note = response.extensions_mut().remove::<AuditNote>();
            if should_audit(&method, &route, response.status()) {
                let mut entry = audit.entry(response.status(), None);
                if let Some(note) = note {
                    entry.actor = note.actor.unwrap_or(entry.actor);
                    entry.detail = note.detail;
                }
                mgr.auth.record(&entry);
            }
            close_if_body_unread(response, has_body)
        }
        Err(e) => {
            let (status, body) = e.to_parts();
            mgr.auth.record(&audit.entry(status, Some(body.error)));
            close_if_body_unread(e.into_response(), has_body)
        }
    }
}

/// Runs a change in a task of its own. Hyper drops a request's future when its client
/// hangs up, and a change dropped halfway leaves half-made things (a bridge up with its
/// address but no network recorded); a task runs on whatever the connection does.
async fn run_to_completion(next: Next, req: Request) -> Response {
    match tokio::spawn(next.run(req)).await {
        Ok(response) => response,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only when the runtime shuts down.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// A request refused before its body was read (by this gate, or a 404 of the fallback)
/// leaves that body on the connection, which cannot then carry another request: say so
/// (`Connection: close`), or a client that reuses the connection sees it cut under its
/// next request. Unauthenticated bodies are not drained: that would let anyone make the
/// daemon read gigabytes.
fn close_if_body_unread(mut response: Response, has_body: bool) -> Response {
    if has_body && response.status().as_u16() >= 400 {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Whether this identity may make this request of a route that needs `needed`.
fn allowed(id: &Identity, needed: Role, method: &Method, req: &Request) -> Result<(), ApiError> {
    if id.role < needed {
        return Err(ApiError::Forbidden {
            message: format!("the {} role cannot do this; it needs {needed}", id.role),
            hint: "ask an admin for a token or user with a larger role".into(),
        });
    }
    if id.kind == CredentialKind::Session {
        let mutating = *method != Method::GET && *method != Method::HEAD;
        if mutating && !req.headers().contains_key(CSRF_HEADER) {
            return Err(ApiError::Forbidden {
                message: format!(
                    "a browser request that changes something must carry the {CSRF_HEADER} header"
                ),
                hint: "the web console sends it; scripts should use a token instead of a session"
                    .into(),
            });
        }
        if !same_origin(req) {
            return Err(ApiError::Forbidden {
                message: "the request came from another site (Origin does not match Host)".into(),
                hint: "open the web console from corrald's own address".into(),
            });
        }
    }
    Ok(())
}

/// A browser names the page's origin on websockets and mutating requests; it must be
/// this daemon's own address.
fn same_origin(req: &Request) -> bool {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    else {
        return true;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Changes, console sessions, and every refusal are audited; plain reads are not.
fn should_audit(method: &Method, route: &str, status: StatusCode) -> bool {
    let read = *method == Method::GET || *method == Method::HEAD;
    !read
        || (policy::is_console(route) && status == StatusCode::SWITCHING_PROTOCOLS)
        || matches!(status.as_u16(), 401 | 403 | 429)
}

struct Audit {
    peer: Peer,
    method: Method,
    path: String,
    route: String,
    identity: Option<Identity>,
}

impl Audit {
    fn entry(&self, status: StatusCode, detail: Option<String>) -> AuditEntry {
        let id = self.identity.as_ref();
        AuditEntry {
            id: 0,
            time_ms: now_ms(),
            actor: id.map_or("-".to_string(), |i| i.name.clone()),
            actor_kind: id.map_or("none", |i| i.kind.as_str()).to_string(),
            role: id.map(|i| i.role),
            source: self.peer.source(),
            method: self.method.to_string(),
            path: self.path.clone(),
            action: self.route.clone(),
            status: status.as_u16(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(origin: Option<&str>, host: &str) -> Request {
        let mut b = axum::http::Request::builder()
            .uri("/api/v1/vms")
            .header("host", host);
        if let Some(o) = origin {
            b = b.header("origin", o);
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn origins_must_match_the_host() {
        assert!(same_origin(&request(None, "h:8443")));
        assert!(same_origin(&request(Some("https://h:8443"), "h:8443")));
        assert!(!same_origin(&request(
            Some("https://evil.example"),
            "h:8443"
        )));
    }

    #[test]
    fn reads_are_not_audited_but_refusals_and_consoles_are() {
        let ok = StatusCode::OK;
        assert!(!should_audit(&Method::GET, "/api/v1/vms", ok));
        assert!(should_audit(
            &Method::GET,
            "/api/v1/vms",
            StatusCode::UNAUTHORIZED
        ));
        assert!(should_audit(&Method::POST, "/api/v1/vms/{name}/stop", ok));
        assert!(should_audit(
            &Method::GET,
            "/api/v1/vms/{name}/console",
            StatusCode::SWITCHING_PROTOCOLS
        ));
    }
}
