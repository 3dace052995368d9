//! The OpenAPI document, generated from the wire types and handler annotations. A copy is
//! checked in at `docs/openapi.json`; a test fails when it is out of date.

use axum::Json;
use utoipa::OpenApi;

use super::{
    __path_cancel_operation, __path_get_operation, __path_host_info, __path_list_events,
    __path_list_operations, __path_stream_events, __path_wait_operation, networks, storage, vms,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Corral API",
        description = "Corral's REST API: VMs on one host, driven over QMP."
    ),
    paths(
        host_info,
        vms::list,
        vms::create,
        vms::show,
        vms::update,
        vms::delete,
        vms::start,
        vms::stop,
        vms::restart,
        vms::pause,
        vms::resume,
        vms::console,
        vms::clone,
        vms::list_snapshots,
        vms::create_snapshot,
        vms::revert_snapshot,
        vms::delete_snapshot,
        storage::list_pools,
        networks::list,
        networks::show,
        networks::create,
        networks::delete,
        networks::add_forward,
        networks::remove_forward,
        networks::set_firewall,
        storage::import_volume,
        storage::list_images,
        storage::show_image,
        storage::create_image,
        storage::delete_image,
        storage::show_pool,
        storage::create_pool,
        storage::delete_pool,
        storage::list_volumes,
        storage::show_volume,
        storage::create_volume,
        storage::delete_volume,
        storage::resize_volume,
        storage::attach_volume,
        storage::detach_volume,
        vms::console_log,
        list_operations,
        get_operation,
        wait_operation,
        cancel_operation,
        list_events,
        stream_events,
    ),
    components(schemas(corral_api::ErrorBody, corral_api::StopResult))
)]
pub struct ApiDoc;

pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

pub async fn serve() -> Json<serde_json::Value> {
    Json(serde_json::to_value(ApiDoc::openapi()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn checked_in_document_is_current() {
        let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let current = super::document() + "\n";
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&file, &current).unwrap();
            return;
        }
        let checked_in = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            checked_in == current,
            "docs/openapi.json is stale: run `UPDATE_GOLDEN=1 cargo test -p corrald openapi`"
        );
    }
}
