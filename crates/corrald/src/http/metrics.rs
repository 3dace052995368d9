//! Live metrics routes: JSON history for the host and one VM, Prometheus exposition.

use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use corral_api::{HostMetrics, VmMetrics, VmsMetrics};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use crate::error::ApiResult;

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct SinceQuery {
    /// Only samples newer than this (Unix milliseconds); 0 or absent: the whole history.
    #[serde(default)]
    pub since_ms: u64,
}

#[utoipa::path(get, path = "/api/v1/host/metrics", params(SinceQuery),
    responses((status = 200, body = HostMetrics)))]
pub async fn host_metrics(
    State(mgr): State<AppState>,
    Query(q): Query<SinceQuery>,
) -> Json<HostMetrics> {
    Json(mgr.metrics.host(q.since_ms))
}

/// `GET /api/v1/metrics/vms`: the newest sample of every running VM, by name.
#[utoipa::path(get, path = "/api/v1/metrics/vms",
    responses((status = 200, body = VmsMetrics)))]
pub async fn vms_metrics(State(mgr): State<AppState>) -> Json<VmsMetrics> {
    Json(mgr.metrics.latest())
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/metrics",
    params(("name" = String, Path, description = "VM name"), SinceQuery),
    responses((status = 200, body = VmMetrics), (status = 404, body = corral_api::ErrorBody)))]
pub async fn vm_metrics(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<SinceQuery>,
) -> ApiResult<Json<VmMetrics>> {
    // 404 for a VM that does not exist, not an empty history.
    mgr.record(&name)?;
    Ok(Json(mgr.metrics.vm(&name, q.since_ms)))
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn prometheus(State(mgr): State<AppState>) -> impl IntoResponse {
    let body = crate::metrics::prometheus::render(&mgr.metrics.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
