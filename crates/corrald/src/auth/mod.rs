//! Authentication, authorisation and audit for the API (DESIGN.md §8).
//!
//! Callers are identified once per request by [`middleware::guard`]: the Unix socket is
//! root/`corral` group only and acts as admin; over HTTPS a caller shows an API token
//! (`Authorization: Bearer`) or a browser session cookie made by a password login.
//! [`policy::required`] says which role a route needs; every mutating request, console
//! session and refused attempt is written to the audit log.

pub mod middleware;
pub mod policy;
mod ratelimit;
mod secrets;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use corral_api::{
    ApiToken, AuditEntry, CreateTokenRequest, CreateUserRequest, CredentialKind, LoginRequest,
    LoginResponse, Role, UpdateUserRequest, User,
};
use corral_store::Store;

use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use ratelimit::FailureLimiter;

/// The browser session's cookie.
pub const SESSION_COOKIE: &str = "corral_session";
/// The header a cookie-authenticated mutating request must carry: a page on another site
/// cannot add it, so a forged form or fetch is refused (with SameSite=Strict as a second wall).
pub const CSRF_HEADER: &str = "x-corral-csrf";

/// Who sent a request, as the connection tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The local socket; `uid` from SO_PEERCRED.
    Unix {
        uid: Option<u32>,
    },
    Tcp(SocketAddr),
}

impl Peer {
    /// For the audit log and throttling.
    pub fn source(&self) -> String {
        match self {
            Peer::Unix { .. } => "unix".to_string(),
            Peer::Tcp(addr) => addr.ip().to_string(),
        }
    }
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer::Unix {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// What a handler adds to the audit entry of its request, through the response's
/// extensions: the user a login was for (known only from its body), and why it failed.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub actor: Option<String>,
    pub detail: Option<String>,
}

/// A caller whose credentials checked out. Handlers read it from the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub kind: CredentialKind,
    pub role: Role,
    pub expires_at_ms: Option<u64>,
}

pub struct Auth {
    store: Arc<dyn Store>,
    session_ttl: Duration,
    limiter: FailureLimiter,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, session_ttl: Duration) -> Self {
        Auth {
            store,
            session_ttl,
            limiter: FailureLimiter::default(),
        }
    }

    /// The caller's identity: `Ok(None)` when no credentials were given, an error when
    /// the ones given are wrong (401) or the address is throttled (429).
    pub fn identify(&self, peer: &Peer, headers: &HeaderMap) -> ApiResult<Option<Identity>> {
        if let Peer::Unix { uid } = peer {
            return Ok(Some(Identity {
                name: uid.map_or("unix".to_string(), |u| format!("uid:{u}")),
                kind: CredentialKind::Unix,
                role: Role::Admin,
                expires_at_ms: None,
            }));
        }
        if let Some(value) = headers.get(axum::http::header::AUTHORIZATION) {
            let keys = [format!("ip:{}", peer.source())];
            // A valid token always works (tokens are unguessable, and a shared address
            // must not lock out its honest users); wrong ones are counted and, past the
            // limit, answered with 429 instead of 401.
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let found = token.map(|t| self.verify_token(t)).transpose()?.flatten();
            return match found {
                Some(identity) => Ok(Some(identity)),
                None => {
                    self.check_throttle(&keys)?;
                    self.limiter.record_failure(&keys, Instant::now());
                    Err(unauthorized(
                        "the token was refused (unknown, revoked, expired or mistyped)",
                        "make a new one on the host with `corral token create NAME --role ROLE`",
                    ))
                }
            };
        }
        match session_cookie(headers) {
            Some(key) => match self
                .store
                .session(&secrets::sha256_hex(key.as_bytes()), now_ms())?
            {
                Some(s) => Ok(Some(Identity {
                    name: s.user.username,
                    kind: CredentialKind::Session,
                    role: s.user.role,
                    expires_at_ms: Some(s.expires_at_ms),
                })),
                None => Err(unauthorized(
                    "the session has expired or was ended",
                    "log in again",
                )),
            },
            None => Ok(None),
        }
    }

    fn verify_token(&self, token: &str) -> ApiResult<Option<Identity>> {
        let Some((id, secret)) = secrets::parse_token(token) else {
            return Ok(None);
        };
        let Some((info, hash)) = self.store.token_credentials(id)? else {
            return Ok(None);
        };
        let now = now_ms();
        let expired = info.expires_at_ms.is_some_and(|e| e <= now);
        if expired || !secrets::same_hash(&secrets::sha256_hex(secret.as_bytes()), &hash) {
            return Ok(None);
        }
        // One write a minute at most, not one per request.
        let stale = match info.last_used_ms {
            Some(t) => now.saturating_sub(t) > 60_000,
            None => true,
        };
        if stale {
            self.store.touch_token(id, now)?;
        }
        Ok(Some(Identity {
            name: format!("token:{}", info.name),
            kind: CredentialKind::Token,
            role: info.role,
            expires_at_ms: info.expires_at_ms,
        }))
    }

    fn check_throttle(&self, keys: &[String]) -> ApiResult<()> {
        match self.limiter.blocked(keys, Instant::now()) {
            Some(wait) => Err(ApiError::TooManyAttempts {
                retry_after_secs: wait.as_secs().max(1),
            }),
            None => Ok(()),
        }
    }

    /// Checks a password and makes a session; returns the reply and the cookie's value.
    pub async fn login(
        &self,
        peer: &Peer,
        req: LoginRequest,
    ) -> ApiResult<(LoginResponse, String)> {
        let keys = [
            format!("ip:{}", peer.source()),
            format!("user:{}", req.username),
        ];
        self.check_throttle(&keys)?;
        let stored = self.store.user_credentials(&req.username)?;
        let hash = stored.as_ref().map(|(_, h)| h.clone());
        let password = req.password;
        // An unknown user costs the same argon2 run as a known one, so timing does not
        // tell which user names exist.
        let ok = blocking(move || match hash {
            Some(h) => secrets::verify_password(&password, &h),
            None => {
                let _ = secrets::hash_password(&password);
                false
            }
        })
        .await?;
        let user = match (ok, stored) {
            (true, Some((user, _))) => user,
            _ => {
                self.limiter.record_failure(&keys, Instant::now());
                return Err(unauthorized(
                    "wrong username or password",
                    "users are made on the host with `corral user add NAME --role ROLE`",
                ));
            }
        };
        self.limiter.record_success(&keys);
        let key = secrets::random_secret();
        let expires_at_ms = now_ms() + self.session_ttl.as_millis() as u64;
        self.store.insert_session(
            &secrets::sha256_hex(key.as_bytes()),
            &user.username,
            expires_at_ms,
        )?;
        let _ = self.store.purge_sessions(now_ms());
        Ok((
            LoginResponse {
                username: user.username,
                role: user.role,
                expires_at_ms,
            },
            key,
        ))
    }

    pub fn logout(&self, headers: &HeaderMap) -> ApiResult<()> {
        if let Some(key) = session_cookie(headers) {
            self.store
                .delete_session(&secrets::sha256_hex(key.as_bytes()))?;
        }
        Ok(())
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    pub async fn create_user(&self, req: CreateUserRequest) -> ApiResult<User> {
        req.validate()?;
        if self.store.user_credentials(&req.username)?.is_some() {
            return Err(ApiError::conflict(format!(
                "user '{}' already exists",
                req.username
            )));
        }
        let password = req.password;
        let hash = blocking(move || secrets::hash_password(&password)).await?;
        let user = User {
            username: req.username,
            role: req.role,
            created_ms: now_ms(),
        };
        self.store
            .insert_user(&user, &hash.map_err(|e| ApiError::Internal(e.to_string()))?)?;
        Ok(user)
    }

    pub fn users(&self) -> ApiResult<Vec<User>> {
        Ok(self.store.list_users()?)
    }

    pub async fn update_user(&self, username: &str, req: UpdateUserRequest) -> ApiResult<User> {
        req.validate()?;
        let hash = match req.password {
            Some(p) => Some(
                blocking(move || secrets::hash_password(&p))
                    .await?
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        self.store
            .update_user(username, hash.as_deref(), req.role)?;
        self.store
            .user_credentials(username)?
            .map(|(u, _)| u)
            .ok_or_else(|| not_found("user", username))
    }

    pub fn delete_user(&self, username: &str) -> ApiResult<()> {
        Ok(self.store.delete_user(username)?)
    }

    /// Makes a token; the secret is in the reply only.
    pub fn create_token(&self, req: CreateTokenRequest) -> ApiResult<(ApiToken, String)> {
        req.validate()?;
        let now = now_ms();
        let info = ApiToken {
            id: secrets::random_id(),
            name: req.name,
            role: req.role,
            created_ms: now,
            expires_at_ms: req
                .expires_in_secs
                .map(|s| now.saturating_add(s.saturating_mul(1000))),
            last_used_ms: None,
        };
        let secret = secrets::random_secret();
        self.store
            .insert_token(&info, &secrets::sha256_hex(secret.as_bytes()))?;
        let token = secrets::format_token(&info.id, &secret);
        Ok((info, token))
    }

    pub fn tokens(&self) -> ApiResult<Vec<ApiToken>> {
        Ok(self.store.list_tokens()?)
    }

    pub fn revoke_token(&self, id: &str) -> ApiResult<()> {
        Ok(self.store.delete_token(id)?)
    }

    pub fn record(&self, entry: &AuditEntry) {
        if let Err(e) = self.store.append_audit(entry) {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }

    pub fn audit(&self, before_id: Option<u64>, limit: u32) -> ApiResult<Vec<AuditEntry>> {
        Ok(self.store.audit(before_id, limit)?)
    }
}

fn not_found(kind: &'static str, name: &str) -> ApiError {
    ApiError::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn unauthorized(message: &str, hint: &str) -> ApiError {
    ApiError::Unauthorized {
        message: message.to_string(),
        hint: hint.to_string(),
    }
}

/// Password hashing takes tens of milliseconds of CPU: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("password check failed: {e}")))
}

/// The session cookie's value, if the request has one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new session, or (with `None`) one that ends it in the browser.
pub fn session_set_cookie(value: Option<&str>, ttl: Duration) -> String {
    let (value, max_age) = match value {
        Some(v) => (v, ttl.as_secs()),
        None => ("", 0),
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use corral_store::SqliteStore;

    fn auth() -> Auth {
        Auth::new(
            Arc::new(SqliteStore::in_memory().unwrap()),
            Duration::from_secs(60),
        )
    }

    const PEER: Peer = Peer::Tcp(SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        1234,
    )));

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        h
    }

    #[test]
    fn tokens_identify_and_tampered_ones_do_not() {
        let a = auth();
        let (_, token) = a
            .create_token(CreateTokenRequest {
                name: "ci".into(),
                role: Role::Viewer,
                expires_in_secs: None,
            })
            .unwrap();
        let who = a.identify(&PEER, &bearer(&token)).unwrap().unwrap();
        assert_eq!((who.name.as_str(), who.role), ("token:ci", Role::Viewer));
        let mut tampered = token.clone();
        tampered.pop();
        tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
        let err = a.identify(&PEER, &bearer(&tampered)).unwrap_err();
        assert_eq!(err.to_parts().0, axum::http::StatusCode::UNAUTHORIZED);
        assert!(a.identify(&PEER, &HeaderMap::new()).unwrap().is_none());
    }

    #[tokio::test]
    async fn logins_make_sessions_and_failures_are_throttled() {
        let a = auth();
        a.create_user(CreateUserRequest {
            username: "alice".into(),
            password: "a long password".into(),
            role: Role::Operator,
        })
        .await
        .unwrap();
        let login = |p: &str| LoginRequest {
            username: "alice".into(),
            password: p.into(),
        };
        let (reply, key) = a.login(&PEER, login("a long password")).await.unwrap();
        assert_eq!(reply.role, Role::Operator);
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            format!("x=1; {SESSION_COOKIE}={key}").parse().unwrap(),
        );
        assert_eq!(a.identify(&PEER, &h).unwrap().unwrap().name, "alice");
        a.logout(&h).unwrap();
        assert!(a.identify(&PEER, &h).is_err(), "ended sessions are refused");
        for _ in 0..ratelimit::MAX_FAILURES {
            let e = a.login(&PEER, login("wrong password")).await.unwrap_err();
            assert_eq!(e.to_parts().0.as_u16(), 401);
        }
        let e = a.login(&PEER, login("a long password")).await.unwrap_err();
        assert_eq!(
            e.to_parts().0.as_u16(),
            429,
            "even the right password waits"
        );
    }
}
