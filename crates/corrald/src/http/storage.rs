//! `/api/v1/pools/...` and `/api/v1/volumes/...` handlers.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_api::{
    validate_name, AttachVolumeRequest, CreateImageRequest, CreateVolumeRequest,
    DetachVolumeRequest, Image, ImportVolumeRequest, Operation, Pool, PoolSpec,
    ResizeVolumeRequest, Vm, Volume,
};
use serde::Deserialize;

use super::body::JsonBody;
use super::{checked_name, AppState};
use crate::error::ApiResult;

#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = [Pool])))]
pub async fn list_pools(State(mgr): State<AppState>) -> ApiResult<Json<Vec<Pool>>> {
    Ok(Json(mgr.list_pools().await?))
}

#[utoipa::path(get, path = "/api/v1/pools/{name}", responses((status = 200, body = Pool), (status = 404, body = corral_api::ErrorBody)))]
pub async fn show_pool(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Pool>> {
    Ok(Json(mgr.pool(checked_name(&name)?).await?))
}

#[utoipa::path(post, path = "/api/v1/pools", request_body = PoolSpec,
    responses((status = 201, body = Pool), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn create_pool(
    State(mgr): State<AppState>,
    JsonBody(spec): JsonBody<PoolSpec>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(mgr.create_pool(spec).await?)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/pools/{name}", responses((status = 200, description = "deleted"), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete_pool(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.delete_pool(checked_name(&name)?).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct VolumesQuery {
    /// Only volumes in this pool.
    pool: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/volumes", params(VolumesQuery), responses((status = 200, body = [Volume])))]
pub async fn list_volumes(
    State(mgr): State<AppState>,
    Query(q): Query<VolumesQuery>,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(mgr.list_volumes(q.pool.as_deref()).await?))
}

#[utoipa::path(get, path = "/api/v1/volumes/{name}", responses((status = 200, body = Volume), (status = 404, body = corral_api::ErrorBody)))]
pub async fn show_volume(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(mgr.volume(checked_name(&name)?).await?))
}

#[utoipa::path(post, path = "/api/v1/volumes", request_body = CreateVolumeRequest,
    responses((status = 201, body = Volume), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn create_volume(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateVolumeRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(mgr.create_volume(req).await?)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/volumes/{name}", responses((status = 200, description = "deleted"), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete_volume(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.delete_volume(checked_name(&name)?).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/resize", request_body = ResizeVolumeRequest,
    responses((status = 202, body = Operation), (status = 400, body = corral_api::ErrorBody)))]
pub async fn resize_volume(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ResizeVolumeRequest>,
) -> ApiResult<Response> {
    let op = mgr
        .resize_volume(checked_name(&name)?, req.size_bytes)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/attach", request_body = AttachVolumeRequest,
    responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn attach_volume(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<AttachVolumeRequest>,
) -> ApiResult<Json<Vm>> {
    validate_name("vm", &req.vm)?;
    Ok(Json(mgr.attach_volume(checked_name(&name)?, req).await?))
}

#[utoipa::path(post, path = "/api/v1/volumes/{name}/detach", request_body = DetachVolumeRequest,
    responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn detach_volume(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<DetachVolumeRequest>,
) -> ApiResult<Json<Vm>> {
    validate_name("vm", &req.vm)?;
    Ok(Json(mgr.detach_volume(checked_name(&name)?, req).await?))
}

#[utoipa::path(get, path = "/api/v1/images", responses((status = 200, body = [Image])))]
pub async fn list_images(State(mgr): State<AppState>) -> ApiResult<Json<Vec<Image>>> {
    Ok(Json(mgr.list_images()?))
}

#[utoipa::path(get, path = "/api/v1/images/{name}", responses((status = 200, body = Image), (status = 404, body = corral_api::ErrorBody)))]
pub async fn show_image(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(mgr.image(checked_name(&name)?)?))
}

#[utoipa::path(post, path = "/api/v1/images", request_body = CreateImageRequest,
    responses((status = 202, body = Operation), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn create_image(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateImageRequest>,
) -> ApiResult<Response> {
    let op = mgr.create_image(req).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/images/{name}", responses((status = 200, description = "deleted"), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete_image(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.delete_image(checked_name(&name)?).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/v1/volumes/import", request_body = ImportVolumeRequest,
    responses((status = 202, body = Operation, description = "result: ImportResult"),
              (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn import_volume(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<ImportVolumeRequest>,
) -> ApiResult<Response> {
    let op = mgr.import_volume(req).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}
