//! `/api/v1/networks/...` handlers, and a VM's firewall rules.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_api::{
    AddForwardRequest, CreateNetworkRequest, FirewallRules, Network, Protocol, ValidationError, Vm,
};

use super::body::JsonBody;
use super::{checked_name, AppState};
use crate::error::ApiResult;

#[utoipa::path(get, path = "/api/v1/networks", responses((status = 200, body = [Network])))]
pub async fn list(State(mgr): State<AppState>) -> ApiResult<Json<Vec<Network>>> {
    Ok(Json(mgr.list_networks().await?))
}

#[utoipa::path(get, path = "/api/v1/networks/{name}", responses((status = 200, body = Network), (status = 404, body = corral_api::ErrorBody)))]
pub async fn show(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Network>> {
    Ok(Json(mgr.network(checked_name(&name)?).await?))
}

#[utoipa::path(post, path = "/api/v1/networks", request_body = CreateNetworkRequest,
    responses((status = 201, body = Network), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn create(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateNetworkRequest>,
) -> ApiResult<Response> {
    Ok((StatusCode::CREATED, Json(mgr.create_network(req).await?)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}", responses((status = 200, description = "deleted"), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.delete_network(checked_name(&name)?).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/v1/networks/{name}/forwards", request_body = AddForwardRequest,
    responses((status = 201, body = Network), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn add_forward(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<AddForwardRequest>,
) -> ApiResult<Response> {
    let net = mgr.add_forward(checked_name(&name)?, req).await?;
    Ok((StatusCode::CREATED, Json(net)).into_response())
}

#[utoipa::path(delete, path = "/api/v1/networks/{name}/forwards/{protocol}/{host_port}",
    responses((status = 200, body = Network), (status = 404, body = corral_api::ErrorBody)))]
pub async fn remove_forward(
    State(mgr): State<AppState>,
    Path((name, protocol, host_port)): Path<(String, String, u16)>,
) -> ApiResult<Json<Network>> {
    let protocol = match protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return Err(
                ValidationError::new("protocol", format!("{other:?} is not tcp or udp"))
                    .hint("tcp or udp")
                    .into(),
            )
        }
    };
    Ok(Json(
        mgr.remove_forward(checked_name(&name)?, protocol, host_port)
            .await?,
    ))
}

#[utoipa::path(put, path = "/api/v1/vms/{name}/firewall", request_body = FirewallRules,
    responses((status = 200, body = Vm), (status = 400, body = corral_api::ErrorBody), (status = 409, body = corral_api::ErrorBody)))]
pub async fn set_firewall(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<FirewallRules>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(
        mgr.set_firewall(checked_name(&name)?, req.rules).await?,
    ))
}
