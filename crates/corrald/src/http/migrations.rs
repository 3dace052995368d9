//! Live migration: `POST /api/v1/vms/{name}/migrate` on the source, and the
//! `/api/v1/migrations/...` routes one corrald calls on another (the destination).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_api::{
    FinishIncoming, IncomingPreflight, IncomingPrepared, IncomingReady, IncomingStatus, IncomingVm,
    MigrateRequest, Operation, PreflightReport, ProbeCertificate, ProbedCertificate,
};
use uuid::Uuid;

use super::body::{JsonBody, OptionalJsonBody};
use super::{checked_name, AppState};
use crate::error::{ApiError, ApiResult};
use crate::migration::Migration;

#[utoipa::path(post, path = "/api/v1/vms/{name}/migrate", request_body = MigrateRequest,
    responses((status = 202, body = Operation, description = "the migration; result: destination, downtime_ms, total_ms, ram_bytes, disk_bytes"),
              (status = 200, body = PreflightReport, description = "dry_run: the pre-flight's findings"),
              (status = 400, body = corral_api::ErrorBody, description = "a pre-flight check failed: its field and a hint"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn migrate(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<MigrateRequest>,
) -> ApiResult<Response> {
    Ok(match mgr.migrate(checked_name(&name)?, req).await? {
        Migration::Report(report) => (StatusCode::OK, Json(report)).into_response(),
        Migration::Started(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
    })
}

#[utoipa::path(post, path = "/api/v1/migrations/preflight", request_body = IncomingVm,
    responses((status = 200, body = IncomingPreflight, description = "this host's checks of an arriving VM")))]
pub async fn preflight(
    State(mgr): State<AppState>,
    JsonBody(vm): JsonBody<IncomingVm>,
) -> ApiResult<Json<IncomingPreflight>> {
    corral_api::validate_name("spec.name", &vm.spec.name)?;
    Ok(Json(mgr.incoming_preflight(&vm).await?))
}

#[utoipa::path(post, path = "/api/v1/migrations/incoming", request_body = IncomingVm,
    responses((status = 201, body = IncomingPrepared), (status = 400, body = corral_api::ErrorBody)))]
pub async fn prepare(
    State(mgr): State<AppState>,
    JsonBody(vm): JsonBody<IncomingVm>,
) -> ApiResult<Response> {
    corral_api::validate_name("spec.name", &vm.spec.name)?;
    let prepared = mgr.incoming_prepare(vm).await?;
    Ok((StatusCode::CREATED, Json(prepared)).into_response())
}

#[utoipa::path(put, path = "/api/v1/migrations/{id}/files/{index}",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "the chain file arrived whole and is in place"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn receive_file(
    State(mgr): State<AppState>,
    Path((id, index)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult<Json<serde_json::Value>> {
    let index: usize = index.parse().map_err(|_| {
        ApiError::from(corral_api::ValidationError::new(
            "index",
            format!("'{index}' is not a chain file's index"),
        ))
    })?;
    mgr.receive_chain_file(migration_id(&id)?, index, body)
        .await?;
    Ok(Json(serde_json::json!({ "received": index })))
}

#[utoipa::path(post, path = "/api/v1/migrations/{id}/start",
    responses((status = 200, body = IncomingReady), (status = 409, body = corral_api::ErrorBody)))]
pub async fn start(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(_): OptionalJsonBody<serde_json::Value>,
) -> ApiResult<Json<IncomingReady>> {
    Ok(Json(mgr.incoming_start(migration_id(&id)?).await?))
}

#[utoipa::path(get, path = "/api/v1/migrations/{id}",
    responses((status = 200, body = IncomingStatus), (status = 404, body = corral_api::ErrorBody)))]
pub async fn status(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<IncomingStatus>> {
    Ok(Json(mgr.incoming_status(migration_id(&id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/migrations/{id}/finish", request_body = FinishIncoming,
    responses((status = 200, body = IncomingStatus), (status = 409, body = corral_api::ErrorBody)))]
pub async fn finish(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<FinishIncoming>,
) -> ApiResult<Json<IncomingStatus>> {
    Ok(Json(mgr.incoming_finish(migration_id(&id)?, req).await?))
}

#[utoipa::path(post, path = "/api/v1/migrations/{id}/history", request_body = FinishIncoming,
    responses((status = 200, description = "the console's history is kept"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn history(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<FinishIncoming>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.incoming_history(migration_id(&id)?, req).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/v1/migrations/{id}/abort",
    responses((status = 200, body = IncomingStatus), (status = 409, body = corral_api::ErrorBody)))]
pub async fn abort(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
    OptionalJsonBody(_): OptionalJsonBody<serde_json::Value>,
) -> ApiResult<Json<IncomingStatus>> {
    Ok(Json(mgr.incoming_abort(migration_id(&id)?).await?))
}

fn migration_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| {
        ApiError::from(
            corral_api::ValidationError::new("id", format!("'{id}' is not a migration id"))
                .hint("migration ids are UUIDs, chosen by the source"),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/host/probe-certificate", request_body = ProbeCertificate,
    responses((status = 200, body = ProbedCertificate), (status = 400, body = corral_api::ErrorBody),
              (status = 502, body = corral_api::ErrorBody)))]
pub async fn probe_certificate(
    JsonBody(req): JsonBody<ProbeCertificate>,
) -> ApiResult<Json<ProbedCertificate>> {
    let (host, port) = corral_client::parse_url(&req.url).map_err(|e| {
        ApiError::from(
            corral_api::ValidationError::new("url", e.to_string())
                .hint("the other host's corrald --listen address, e.g. https://host:8443"),
        )
    })?;
    let connect = corral_client::connect(&host, port, None);
    let (_, fingerprint) = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| ApiError::Conflict {
            message: format!("{} did not answer within 10 s", req.url),
            hint: Some("is corrald running there with --listen?".into()),
        })?
        .map_err(|e| ApiError::Peer(e.into()))?;
    Ok(Json(ProbedCertificate {
        url: req.url,
        fingerprint,
    }))
}

/// What one corrald may send another in one JSON body: a VM's events, its console log
/// (up to `--console-log-limit`) and UEFI variables, base64; far more than the 2 MiB
/// other requests may carry.
pub fn body_limit() -> axum::extract::DefaultBodyLimit {
    axum::extract::DefaultBodyLimit::max(64 << 20)
}
