//! The OpenAPI document, generated from the wire types and handler annotations. A copy is
//! checked in at `docs/openapi.json`; a test fails when it is out of date.

use axum::Json;
use utoipa::OpenApi;

use super::{
    __path_cancel_operation, __path_get_operation, __path_host_info, __path_list_events,
    __path_list_operations, __path_stream_events, __path_wait_operation, auth, metrics, migrations,
    networks, storage, vms,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Corral API",
        description = "Corral's REST API: VMs on one host, driven over QMP."
    ),
    paths(
        host_info,
        metrics::host_metrics,
        metrics::vm_metrics,
        metrics::vms_metrics,
        metrics::prometheus,
        auth::login,
        auth::logout,
        auth::whoami,
        auth::list_users,
        auth::create_user,
        auth::update_user,
        auth::delete_user,
        auth::list_tokens,
        auth::create_token,
        auth::revoke_token,
        auth::audit,
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
        vms::vnc,
        vms::add_nic,
        vms::remove_nic,
        migrations::migrate,
        migrations::preflight,
        migrations::prepare,
        migrations::receive_file,
        migrations::start,
        migrations::status,
        migrations::finish,
        migrations::history,
        migrations::abort,
        migrations::probe_certificate,
        list_operations,
        get_operation,
        wait_operation,
        cancel_operation,
        list_events,
        stream_events,
    ),
    components(schemas(corral_api::ErrorBody, corral_api::StopResult)),
    modifiers(&Credentials, &PathParameters),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

/// How callers prove who they are over HTTPS (the Unix socket needs nothing).
struct Credentials;

impl utoipa::Modify for Credentials {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("an API token from `corral token create`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(
                crate::auth::SESSION_COOKIE,
            ))),
        );
    }
}

/// Declares every `{param}` of every path, so clients and fuzzers know what to fill in
/// (the handlers take them as `Path<String>`; names follow `validate_name`).
struct PathParameters;

impl utoipa::Modify for PathParameters {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::Required;
        for (path, item) in doc.paths.paths.iter_mut() {
            let names: Vec<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten() {
                let params = op.parameters.get_or_insert_with(Vec::new);
                for name in &names {
                    if params.iter().any(|p| p.name == *name) {
                        continue;
                    }
                    params.push(
                        ParameterBuilder::new()
                            .name(*name)
                            .parameter_in(ParameterIn::Path)
                            .required(Required::True)
                            .schema(Some(path_parameter_schema(name)))
                            .build(),
                    );
                }
            }
        }
    }
}

fn path_parameter_schema(name: &str) -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let b = ObjectBuilder::new();
    match name {
        "host_port" => b
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(65535)),
        "protocol" => b
            .schema_type(Type::String)
            .enum_values(Some(["tcp", "udp"])),
        "id" => b.schema_type(Type::String).description(Some(
            "an operation's UUID, or an API token's 12-character id",
        )),
        "mac" => b
            .schema_type(Type::String)
            .description(Some("a NIC's MAC address")),
        _ => b
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9-]{0,62}$")),
    }
    .build()
}

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
