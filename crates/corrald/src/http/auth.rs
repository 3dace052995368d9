//! `/api/v1/auth/...`, `/api/v1/users`, `/api/v1/tokens`, `/api/v1/audit`. Who may call
//! them is decided in `auth::policy`; these only parse and call [`crate::auth::Auth`].

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use corral_api::{
    ApiToken, AuditEntry, CreateTokenRequest, CreateUserRequest, CreatedToken, LoginRequest,
    LoginResponse, UpdateUserRequest, User, WhoAmI,
};
use serde::Deserialize;

use super::body::JsonBody;
use super::{checked_name, AppState};
use crate::auth::{session_set_cookie, AuditNote, Identity, Peer};
use crate::error::{ApiError, ApiResult};

#[utoipa::path(post, path = "/api/v1/auth/login", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse, description = "logged in; the session is in the corral_session cookie"),
        (status = 401, body = corral_api::ErrorBody), (status = 429, body = corral_api::ErrorBody)))]
pub async fn login(
    State(mgr): State<AppState>,
    peer: Option<Extension<ConnectInfo<Peer>>>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> ApiResult<Response> {
    let peer = peer.map_or(Peer::Unix { uid: None }, |p| p.0 .0);
    let username: String = req.username.chars().take(64).collect();
    // Failures are replies too: the audit entry then names the user that was tried.
    let (mut response, detail) = match mgr.auth.login(&peer, req).await {
        Ok((reply, key)) => {
            let cookie = session_set_cookie(Some(&key), mgr.auth.session_ttl());
            (
                ([(header::SET_COOKIE, cookie)], Json(reply)).into_response(),
                None,
            )
        }
        Err(e) => {
            let detail = e.to_string();
            (e.into_response(), Some(detail))
        }
    };
    response.extensions_mut().insert(AuditNote {
        actor: Some(username),
        detail,
    });
    Ok(response)
}

#[utoipa::path(post, path = "/api/v1/auth/logout", responses((status = 204, description = "the session is ended")))]
pub async fn logout(State(mgr): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    mgr.auth.logout(&headers)?;
    let cookie = session_set_cookie(None, mgr.auth.session_ttl());
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response())
}

#[utoipa::path(get, path = "/api/v1/auth/whoami", responses((status = 200, body = WhoAmI), (status = 401, body = corral_api::ErrorBody)))]
pub async fn whoami(identity: Option<Extension<Identity>>) -> ApiResult<Json<WhoAmI>> {
    let Some(Extension(id)) = identity else {
        return Err(ApiError::Unauthorized {
            message: "not logged in".into(),
            hint: "log in, or send a token".into(),
        });
    };
    Ok(Json(WhoAmI {
        name: id.name,
        kind: id.kind,
        role: id.role,
        expires_at_ms: id.expires_at_ms,
    }))
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = [User])))]
pub async fn list_users(State(mgr): State<AppState>) -> ApiResult<Json<Vec<User>>> {
    Ok(Json(mgr.auth.users()?))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUserRequest,
    responses((status = 201, body = User), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn create_user(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateUserRequest>,
) -> ApiResult<Response> {
    let user = mgr.auth.create_user(req).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[utoipa::path(patch, path = "/api/v1/users/{username}", request_body = UpdateUserRequest,
    responses((status = 200, body = User), (status = 400, body = corral_api::ErrorBody), (status = 404, body = corral_api::ErrorBody)))]
pub async fn update_user(
    State(mgr): State<AppState>,
    Path(username): Path<String>,
    JsonBody(req): JsonBody<UpdateUserRequest>,
) -> ApiResult<Json<User>> {
    Ok(Json(
        mgr.auth.update_user(checked_name(&username)?, req).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/users/{username}",
    responses((status = 200, description = "deleted; the user's sessions end"), (status = 404, body = corral_api::ErrorBody)))]
pub async fn delete_user(
    State(mgr): State<AppState>,
    Path(username): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.auth.delete_user(checked_name(&username)?)?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = [ApiToken])))]
pub async fn list_tokens(State(mgr): State<AppState>) -> ApiResult<Json<Vec<ApiToken>>> {
    Ok(Json(mgr.auth.tokens()?))
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateTokenRequest,
    responses((status = 201, body = CreatedToken, description = "the token, shown this once"), (status = 400, body = corral_api::ErrorBody)))]
pub async fn create_token(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateTokenRequest>,
) -> ApiResult<Response> {
    let (info, token) = mgr.auth.create_token(req)?;
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })).into_response())
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}",
    responses((status = 200, description = "revoked"), (status = 404, body = corral_api::ErrorBody)))]
pub async fn revoke_token(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.auth.revoke_token(&id)?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only entries older than this id (the last page's smallest), for paging back.
    before_id: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = [AuditEntry], description = "newest first")))]
pub async fn audit(
    State(mgr): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(mgr.auth.audit(q.before_id, limit)?))
}
