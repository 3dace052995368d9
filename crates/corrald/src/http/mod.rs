//! The REST API. Handlers only parse and check the request, then call the VM manager
//! (STYLE.md: no logic in handlers). Paths follow DESIGN.md's REST conventions.

mod auth;
mod body;
pub mod metrics;
mod migrations;
mod networks;
pub mod openapi;
mod storage;
mod vms;
mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use corral_api::{Event, HostInfo, Operation, VmState};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::vm::Manager;

pub type AppState = Arc<Manager>;

pub fn router(mgr: Arc<Manager>) -> Router {
    Router::new()
        .route("/api/openapi.json", get(openapi::serve))
        .route("/api/v1/host", get(host_info))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/whoami", get(auth::whoami))
        .route(
            "/api/v1/users",
            get(auth::list_users).post(auth::create_user),
        )
        .route(
            "/api/v1/users/{username}",
            axum::routing::patch(auth::update_user).delete(auth::delete_user),
        )
        .route(
            "/api/v1/tokens",
            get(auth::list_tokens).post(auth::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(auth::revoke_token))
        .route("/api/v1/audit", get(auth::audit))
        .route("/api/v1/vms", get(vms::list).post(vms::create))
        .route(
            "/api/v1/vms/{name}",
            get(vms::show).patch(vms::update).delete(vms::delete),
        )
        .route("/api/v1/vms/{name}/start", post(vms::start))
        .route("/api/v1/vms/{name}/migrate", post(migrations::migrate))
        // An arriving VM brings its events, console log and UEFI variables along.
        .route(
            "/api/v1/migrations/preflight",
            post(migrations::preflight).layer(migrations::body_limit()),
        )
        .route(
            "/api/v1/host/probe-certificate",
            post(migrations::probe_certificate),
        )
        .route(
            "/api/v1/migrations/incoming",
            post(migrations::prepare).layer(migrations::body_limit()),
        )
        .route("/api/v1/migrations/{id}", get(migrations::status))
        .route(
            "/api/v1/migrations/{id}/files/{index}",
            put(migrations::receive_file),
        )
        .route("/api/v1/migrations/{id}/start", post(migrations::start))
        .route(
            "/api/v1/migrations/{id}/finish",
            post(migrations::finish).layer(migrations::body_limit()),
        )
        .route(
            "/api/v1/migrations/{id}/history",
            post(migrations::history).layer(migrations::body_limit()),
        )
        .route("/api/v1/migrations/{id}/abort", post(migrations::abort))
        .route("/api/v1/vms/{name}/clone", post(vms::clone))
        .route("/api/v1/vms/{name}/stop", post(vms::stop))
        .route("/api/v1/vms/{name}/restart", post(vms::restart))
        .route("/api/v1/vms/{name}/pause", post(vms::pause))
        .route("/api/v1/vms/{name}/resume", post(vms::resume))
        .route("/api/v1/vms/{name}/console", get(vms::console))
        .route("/api/v1/vms/{name}/console/log", get(vms::console_log))
        .route("/api/v1/vms/{name}/vnc", get(vms::vnc))
        .route("/api/v1/vms/{name}/nics", post(vms::add_nic))
        .route("/api/v1/vms/{name}/nics/{mac}", delete(vms::remove_nic))
        .route(
            "/api/v1/vms/{name}/snapshots",
            get(vms::list_snapshots).post(vms::create_snapshot),
        )
        .route(
            "/api/v1/vms/{name}/snapshots/{snapshot}",
            delete(vms::delete_snapshot),
        )
        .route(
            "/api/v1/vms/{name}/snapshots/{snapshot}/revert",
            post(vms::revert_snapshot),
        )
        .route(
            "/api/v1/pools",
            get(storage::list_pools).post(storage::create_pool),
        )
        .route(
            "/api/v1/pools/{name}",
            get(storage::show_pool).delete(storage::delete_pool),
        )
        .route(
            "/api/v1/volumes",
            get(storage::list_volumes).post(storage::create_volume),
        )
        .route("/api/v1/volumes/import", post(storage::import_volume))
        .route(
            "/api/v1/volumes/{name}",
            get(storage::show_volume).delete(storage::delete_volume),
        )
        .route(
            "/api/v1/volumes/{name}/resize",
            post(storage::resize_volume),
        )
        .route(
            "/api/v1/volumes/{name}/attach",
            post(storage::attach_volume),
        )
        .route(
            "/api/v1/volumes/{name}/detach",
            post(storage::detach_volume),
        )
        .route(
            "/api/v1/images",
            get(storage::list_images).post(storage::create_image),
        )
        .route(
            "/api/v1/images/{name}",
            get(storage::show_image).delete(storage::delete_image),
        )
        .route(
            "/api/v1/networks",
            get(networks::list).post(networks::create),
        )
        .route(
            "/api/v1/networks/{name}",
            get(networks::show).delete(networks::delete),
        )
        .route(
            "/api/v1/networks/{name}/forwards",
            post(networks::add_forward),
        )
        .route(
            "/api/v1/networks/{name}/forwards/{protocol}/{host_port}",
            delete(networks::remove_forward),
        )
        .route(
            "/api/v1/vms/{name}/firewall",
            axum::routing::put(networks::set_firewall),
        )
        .route("/api/v1/operations", get(list_operations))
        .route(
            "/api/v1/operations/{id}",
            get(get_operation).delete(cancel_operation),
        )
        .route("/api/v1/operations/{id}/wait", get(wait_operation))
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/events/stream", get(stream_events))
        // Live metrics (metrics.rs).
        .route("/api/v1/host/metrics", get(metrics::host_metrics))
        .route("/api/v1/vms/{name}/metrics", get(metrics::vm_metrics))
        .route("/api/v1/metrics/vms", get(metrics::vms_metrics))
        .route("/metrics", get(metrics::prometheus))
        .fallback(web::fallback)
        // Every route and the fallback pass the gate: identity, role, audit.
        .layer(axum::middleware::from_fn_with_state(
            mgr.clone(),
            crate::auth::middleware::guard,
        ))
        .with_state(mgr)
}

#[utoipa::path(get, path = "/api/v1/host", responses((status = 200, body = HostInfo)))]
pub async fn host_info(State(mgr): State<AppState>) -> ApiResult<Json<HostInfo>> {
    let vms = mgr.list()?;
    let h = &mgr.host;
    Ok(Json(HostInfo {
        hostname: h.hostname.clone(),
        cpus: h.cpus,
        memory_bytes: h.memory_bytes,
        qemu_binary: mgr.cfg.qemu_binary.display().to_string(),
        qemu_version: h.qemu_version.clone(),
        accel: h.accel.clone(),
        corral_version: env!("CARGO_PKG_VERSION").to_string(),
        state_dir: mgr.cfg.state_dir.display().to_string(),
        confinement: h.confinement_text.clone(),
        vms_total: vms.len() as u32,
        vms_running: vms
            .iter()
            .filter(|v| v.status.state == VmState::Running)
            .count() as u32,
        storage_drivers: crate::storage::storage_drivers(),
        network_drivers: crate::network::network_drivers(),
        listen: mgr
            .cfg
            .listen
            .iter()
            .map(|a| format!("https://{a}"))
            .collect(),
        tls_fingerprint: mgr.cfg.tls_fingerprint.clone(),
        qemu_img_version: h.qemu_img_version.clone(),
        problems: h.problems.clone(),
    }))
}

#[utoipa::path(get, path = "/api/v1/operations", responses((status = 200, body = [Operation])))]
pub async fn list_operations(State(mgr): State<AppState>) -> ApiResult<Json<Vec<Operation>>> {
    Ok(Json(mgr.ops.list()?))
}

#[utoipa::path(get, path = "/api/v1/operations/{id}", responses((status = 200, body = Operation)))]
pub async fn get_operation(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(mgr.ops.get(parse_id(&id)?)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Longest wait in seconds (default 30, at most 600).
    timeout_secs: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/operations/{id}/wait", params(WaitQuery),
    responses((status = 200, body = Operation, description = "final, or still running after the timeout")))]
pub async fn wait_operation(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Json<Operation>> {
    let timeout = Duration::from_secs(q.timeout_secs.unwrap_or(30).min(600));
    Ok(Json(mgr.ops.wait(parse_id(&id)?, timeout).await?))
}

#[utoipa::path(delete, path = "/api/v1/operations/{id}", responses((status = 200, body = Operation)))]
pub async fn cancel_operation(
    State(mgr): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Operation>> {
    Ok(Json(mgr.ops.cancel(parse_id(&id)?)?))
}

/// Names in paths are checked like names in bodies, so `..` or `a/b` never reach a path.
fn checked_name(name: &str) -> ApiResult<&str> {
    corral_api::validate_name("name", name)?;
    Ok(name)
}

fn parse_id(id: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| {
        corral_api::ValidationError::new("id", format!("'{id}' is not an operation id"))
            .hint("operation ids are UUIDs, as returned by the request that started them")
            .into()
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct EventsQuery {
    /// Only events of this VM.
    vm: Option<String>,
    /// Only events with a larger id.
    since: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/events", params(EventsQuery), responses((status = 200, body = [Event])))]
pub async fn list_events(
    State(mgr): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Vec<Event>>> {
    let limit = q.limit.unwrap_or(100).min(1000);
    Ok(Json(mgr.store.events(
        q.vm.as_deref(),
        q.since.unwrap_or(0),
        limit,
    )?))
}

/// `GET /api/v1/events/stream`: server-sent events, one JSON [`Event`] per message, from
/// now on (use `/api/v1/events?since=` to catch up first).
#[utoipa::path(get, path = "/api/v1/events/stream",
    responses((status = 200, content_type = "text/event-stream", description = "one JSON Event per message")))]
pub async fn stream_events(
    State(mgr): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = mgr.events.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let data = serde_json::to_string(&ev).unwrap_or_default();
                    // Unnamed messages: a browser's EventSource hands only those to
                    // `onmessage` and cannot listen for "any name"; the kind is in the JSON.
                    return Some((Ok(SseEvent::default().data(data)), rx));
                }
                // A slow reader skips what it missed rather than stalling everyone.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
