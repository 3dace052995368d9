//! `/api/v1/vms/...` handlers.

use std::sync::atomic::Ordering;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use corral_api::{
    validate_name, CloneRequest, CreateSnapshotRequest, CreateVmRequest, Nic, NicRequest,
    Operation, SnapshotTree, StartRequest, StopRequest, UpdateVmRequest, Vm, VmAction,
};
use serde::Deserialize;

use super::body::{JsonBody, OptionalJsonBody};
use super::{checked_name, AppState};
use crate::auth::Identity;
use crate::error::{ApiError, ApiResult};

/// Most console output `console/log` returns.
const CONSOLE_LOG_MAX: u64 = 4 << 20;

#[utoipa::path(get, path = "/api/v1/vms", responses((status = 200, body = [Vm])))]
pub async fn list(State(mgr): State<AppState>) -> ApiResult<Json<Vec<Vm>>> {
    Ok(Json(mgr.list()?))
}

#[utoipa::path(post, path = "/api/v1/vms", request_body = CreateVmRequest,
    responses((status = 201, body = Vm), (status = 400, body = corral_api::ErrorBody),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn create(
    State(mgr): State<AppState>,
    JsonBody(req): JsonBody<CreateVmRequest>,
) -> ApiResult<Response> {
    let vm = mgr.create(req).await?;
    Ok((StatusCode::CREATED, Json(vm)).into_response())
}

#[utoipa::path(get, path = "/api/v1/vms/{name}", responses((status = 200, body = Vm), (status = 404, body = corral_api::ErrorBody)))]
pub async fn show(State(mgr): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(mgr.get(checked_name(&name)?)?))
}

#[utoipa::path(patch, path = "/api/v1/vms/{name}", request_body = UpdateVmRequest,
    responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn update(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<UpdateVmRequest>,
) -> ApiResult<Json<Vm>> {
    req.validate()?;
    Ok(Json(mgr.update(checked_name(&name)?, req).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct DeleteQuery {
    /// Power the VM off first if it is running.
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}", params(DeleteQuery),
    responses((status = 200, description = "deleted"), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    mgr.delete(checked_name(&name)?, q.force).await?;
    Ok(Json(serde_json::json!({})))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/start", request_body = StartRequest,
    responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn start(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<StartRequest>,
) -> ApiResult<Json<Vm>> {
    Ok(Json(mgr.start(checked_name(&name)?, req.paused).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/stop", request_body = StopRequest,
    responses((status = 202, body = Operation, description = "result: StopResult"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn stop(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<StopRequest>,
) -> ApiResult<Response> {
    let op = mgr.stop(checked_name(&name)?, req).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/restart", request_body = StopRequest,
    responses((status = 202, body = Operation, description = "result: StopResult"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn restart(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    OptionalJsonBody(req): OptionalJsonBody<StopRequest>,
) -> ApiResult<Response> {
    let op = mgr.restart(checked_name(&name)?, req).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/pause", responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn pause(State(mgr): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(mgr.pause(checked_name(&name)?).await?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/resume", responses((status = 200, body = Vm), (status = 409, body = corral_api::ErrorBody)))]
pub async fn resume(State(mgr): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Vm>> {
    Ok(Json(mgr.resume(checked_name(&name)?).await?))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/console/log",
    responses((status = 200, content_type = "text/plain", description = "serial console output, bounded")))]
pub async fn console_log(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let (rotated, current) = mgr.console_log_files(checked_name(&name)?)?;
    let bytes = crate::console::read_log(&rotated, &current, CONSOLE_LOG_MAX);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

/// A running VM whose consoles may be opened (serial or graphical).
fn console_target(mgr: &AppState, name: &str) -> ApiResult<std::sync::Arc<crate::vm::Running>> {
    let record = mgr.record(name)?;
    crate::vm::check_allowed(&record, VmAction::Console)?;
    mgr.running(name)
        .ok_or_else(|| ApiError::conflict(format!("VM '{name}' is not running")))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/console",
    responses((status = 101, description = "websocket: binary frames carry serial bytes both ways"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn console(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let name = checked_name(&name)?;
    let running = console_target(&mgr, name)?;
    if running.console_busy.swap(true, Ordering::SeqCst) {
        return Err(ApiError::Conflict {
            message: format!("another console is attached to VM '{name}'"),
            hint: Some("detach the other session first (Ctrl-] in `corral console`)".into()),
        });
    }
    mgr.events.emit(Some(name), "console", "console attached");
    Ok(ws.on_upgrade(move |socket| crate::console::proxy(socket, running)))
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/vnc",
    responses((status = 101, description = "websocket (subprotocol `binary`, as noVNC asks): binary frames carry the RFB stream of the VM's VNC server both ways"),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn vnc(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    who: Option<Extension<Identity>>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let name = checked_name(&name)?;
    let running = console_target(&mgr, name)?;
    if !running.paths.vnc_socket().exists() {
        // Started by an older daemon, before every VM had a display.
        return Err(ApiError::Conflict {
            message: format!("VM '{name}' has no graphical console"),
            hint: Some("restart the VM to give it one".into()),
        });
    }
    let who = who.map_or_else(|| "local".to_string(), |Extension(id)| id.name);
    let vm = name.to_string();
    Ok(ws
        .protocols(["binary"])
        .on_upgrade(move |socket| crate::vnc::proxy(socket, mgr, running, vm, who)))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/nics", request_body = NicRequest,
    responses((status = 201, body = Nic), (status = 400, body = corral_api::ErrorBody),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn add_nic(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<NicRequest>,
) -> ApiResult<(StatusCode, Json<Nic>)> {
    let nic = mgr.add_nic(checked_name(&name)?, req).await?;
    Ok((StatusCode::CREATED, Json(nic)))
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}/nics/{mac}",
    responses((status = 204), (status = 404, body = corral_api::ErrorBody),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn remove_nic(
    State(mgr): State<AppState>,
    Path((name, mac)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    mgr.remove_nic(checked_name(&name)?, &mac).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/vms/{name}/snapshots", responses((status = 200, body = SnapshotTree)))]
pub async fn list_snapshots(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<SnapshotTree>> {
    Ok(Json(mgr.snapshot_tree(checked_name(&name)?)?))
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots", request_body = CreateSnapshotRequest,
    responses((status = 201, body = SnapshotTree), (status = 400, body = corral_api::ErrorBody),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn create_snapshot(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshotRequest>,
) -> ApiResult<Response> {
    let tree = mgr.create_snapshot(checked_name(&name)?, req).await?;
    Ok((StatusCode::CREATED, Json(tree)).into_response())
}

#[utoipa::path(post, path = "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
    responses((status = 200, body = SnapshotTree), (status = 409, body = corral_api::ErrorBody)))]
pub async fn revert_snapshot(
    State(mgr): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<Json<SnapshotTree>> {
    validate_name("snapshot", &snapshot)?;
    Ok(Json(
        mgr.revert_snapshot(checked_name(&name)?, &snapshot).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/vms/{name}/snapshots/{snapshot}",
    responses((status = 202, body = Operation), (status = 409, body = corral_api::ErrorBody)))]
pub async fn delete_snapshot(
    State(mgr): State<AppState>,
    Path((name, snapshot)): Path<(String, String)>,
) -> ApiResult<Response> {
    validate_name("snapshot", &snapshot)?;
    let op = mgr.delete_snapshot(checked_name(&name)?, &snapshot).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// A full clone is long work (202, an operation); a linked clone is instant (201, the VM).
#[utoipa::path(post, path = "/api/v1/vms/{name}/clone", request_body = CloneRequest,
    responses((status = 201, description = "linked clone made", body = Vm),
              (status = 202, description = "full clone started", body = Operation),
              (status = 400, body = corral_api::ErrorBody),
              (status = 404, body = corral_api::ErrorBody),
              (status = 409, body = corral_api::ErrorBody)))]
pub async fn clone(
    State(mgr): State<AppState>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<CloneRequest>,
) -> ApiResult<Response> {
    let source = checked_name(&name)?;
    req.validate()?;
    if req.linked {
        let vm = mgr.linked_clone(source, &req).await?;
        return Ok((StatusCode::CREATED, Json(vm)).into_response());
    }
    let op = mgr.clone_vm(source, &req.name).await?;
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}
