//! The daemon's error type and the one place that maps errors to HTTP status
//! (DESIGN.md §10): 400 bad input, 404 missing, 409 wrong state or conflict, 500 bugs.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use corral_api::{ErrorBody, ValidationError};
use corral_qemu::launch::LaunchError;
use corral_qemu::qmp::QmpError;
use corral_storage::StorageError;
use corral_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong in one field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The request body could not be parsed.
    #[error("{0}")]
    BadBody(String),
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    /// A field of the request names something that does not exist.
    #[error("{message}")]
    UnknownIn {
        field: &'static str,
        message: String,
        hint: String,
    },
    /// The object is not in a state that allows this, or collides with another.
    #[error("{message}")]
    Conflict {
        message: String,
        hint: Option<String>,
    },
    /// QEMU refused to start the VM (its message says why).
    #[error("VM did not start")]
    Launch(#[from] LaunchError),
    /// The VM's monitor failed.
    #[error("QEMU monitor")]
    Qmp(#[from] QmpError),
    #[error("storage")]
    Storage(#[from] StorageError),
    /// An import or copy failed.
    #[error("import")]
    Import(#[source] corral_storage::import::ImportError),
    /// The client cancelled the operation; what it had made is gone.
    #[error("cancelled")]
    Cancelled,
    /// Hot-plugging into a running VM failed (nothing was left half-attached).
    #[error("hot-plug failed")]
    Hotplug(#[from] corral_qemu::hotplug::HotplugError),
    /// Plugging a NIC into (or out of) a running VM failed; its NICs are unchanged.
    #[error("NIC hot-plug")]
    NicHotplug(#[from] corral_qemu::nic::NicHotplugError),
    #[error("state store")]
    Store(StoreError),
    /// The host's network side refused or failed.
    #[error("network")]
    Net(#[source] corral_net::NetError),
    /// No credentials, or wrong ones.
    #[error("{message}")]
    Unauthorized { message: String, hint: String },
    /// The caller's role is too small, or the request lacks what a browser must send.
    #[error("{message}")]
    Forbidden { message: String, hint: String },
    /// Too many failed attempts from this address or for this user.
    #[error("too many failed attempts")]
    TooManyAttempts { retry_after_secs: u64 },
    /// QEMU refused a step of a live migration (the VM runs on where it was).
    #[error("migration")]
    Migrate(#[from] corral_qemu::migrate::MigrateError),
    /// Another corrald (a migration's destination) refused, or could not be reached.
    #[error(transparent)]
    Peer(#[from] corral_client::PeerError),
    /// Anything else that should not happen.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists { kind, name } => ApiError::Conflict {
                message: format!("{kind} '{name}' already exists"),
                hint: Some("choose another name".into()),
            },
            StoreError::NotFound { kind, name } => ApiError::NotFound { kind, name },
            StoreError::InUse { kind, name, by } => ApiError::Conflict {
                message: format!("{kind} '{name}' is in use by {by}"),
                hint: None,
            },
            other => ApiError::Store(other),
        }
    }
}

impl From<corral_storage::import::ImportError> for ApiError {
    fn from(e: corral_storage::import::ImportError) -> Self {
        match e {
            corral_storage::import::ImportError::Cancelled => ApiError::Cancelled,
            other => ApiError::Import(other),
        }
    }
}

impl ApiError {
    pub fn conflict(message: impl Into<String>) -> Self {
        ApiError::Conflict {
            message: message.into(),
            hint: None,
        }
    }

    pub fn vm_not_found(name: &str) -> Self {
        ApiError::NotFound {
            kind: "vm",
            name: name.to_string(),
        }
    }

    /// The status and body for this error. The only place statuses are chosen.
    pub fn to_parts(&self) -> (StatusCode, ErrorBody) {
        let body = |error: String, hint: Option<&str>| ErrorBody {
            error,
            field: None,
            hint: hint.map(str::to_string),
        };
        match self {
            ApiError::Invalid(v) => (StatusCode::BAD_REQUEST, ErrorBody::from(v)),
            ApiError::BadBody(msg) => (
                StatusCode::BAD_REQUEST,
                body(
                    msg.clone(),
                    Some("see /api/openapi.json for the request schema"),
                ),
            ),
            ApiError::NotFound { kind, name } => (
                StatusCode::NOT_FOUND,
                body(format!("{kind} '{name}' not found"), Some(list_hint(kind))),
            ),
            ApiError::UnknownIn {
                field,
                message,
                hint,
            } => (
                StatusCode::NOT_FOUND,
                ErrorBody {
                    error: message.clone(),
                    field: Some(field.to_string()),
                    hint: Some(hint.clone()),
                },
            ),
            ApiError::Unauthorized { message, hint } => {
                (StatusCode::UNAUTHORIZED, body(message.clone(), Some(hint)))
            }
            ApiError::Forbidden { message, hint } => {
                (StatusCode::FORBIDDEN, body(message.clone(), Some(hint)))
            }
            ApiError::TooManyAttempts { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                body(
                    format!("too many failed attempts; try again in {retry_after_secs} s"),
                    Some("check the user name and password, or the token"),
                ),
            ),
            ApiError::Conflict { message, hint } => {
                (StatusCode::CONFLICT, body(message.clone(), hint.as_deref()))
            }
            ApiError::Launch(LaunchError::EarlyExit { log }) => (
                StatusCode::CONFLICT,
                body(format!("QEMU refused to start the VM: {log}"), None),
            ),
            ApiError::Import(e) if e.is_bad_source() => {
                (StatusCode::BAD_REQUEST, body(chain(e), e.hint()))
            }
            ApiError::Cancelled => (
                StatusCode::CONFLICT,
                body("the operation was cancelled".into(), None),
            ),
            ApiError::Hotplug(e) => (
                StatusCode::CONFLICT,
                body(
                    chain(e),
                    Some("the VM's disks are unchanged; check the guest and try again"),
                ),
            ),
            ApiError::NicHotplug(e) => {
                let hint = match e {
                    corral_qemu::nic::NicHotplugError::UnplugTimeout { .. } => {
                        "the guest has not let go of the NIC yet; try again, or stop the VM and remove it then"
                    }
                    _ => "the VM's NICs are unchanged; check the daemon's log and try again",
                };
                (StatusCode::CONFLICT, body(chain(e), Some(hint)))
            }
            ApiError::Storage(StorageError::Invalid {
                field,
                message,
                hint,
            })
            | ApiError::Net(corral_net::NetError::Invalid {
                field,
                message,
                hint,
            }) => (
                StatusCode::BAD_REQUEST,
                ErrorBody {
                    error: message.clone(),
                    field: Some(field.to_string()),
                    hint: Some(hint.clone()),
                },
            ),
            ApiError::Storage(StorageError::DriverUnavailable { why, hint, .. }) => {
                (StatusCode::CONFLICT, body(why.clone(), Some(hint)))
            }
            // The host's storage refused (a full thin pool, an inactive one, an LV
            // someone else made): a conflict with the host, told in LVM's own words.
            ApiError::Storage(e @ StorageError::Lvm(_)) => (
                StatusCode::CONFLICT,
                body(
                    chain(e),
                    Some("`lvs` and `vgs` show the state of the volume group and thin pool"),
                ),
            ),
            ApiError::Storage(e @ StorageError::Exists(_)) => (
                StatusCode::CONFLICT,
                body(
                    e.to_string(),
                    Some("Corral never overwrites a file; remove or rename it"),
                ),
            ),
            ApiError::Net(corral_net::NetError::Unsupported { message, hint }) => {
                (StatusCode::CONFLICT, body(message.clone(), Some(hint)))
            }
            ApiError::Migrate(e) => (
                StatusCode::CONFLICT,
                body(
                    chain(e),
                    Some("the VM runs on where it was; `corral show VM` and the daemon's log say more"),
                ),
            ),
            // The other corrald's own refusal, passed on with its field and hint.
            ApiError::Peer(corral_client::PeerError::Api { url, status, body: theirs }) => (
                StatusCode::from_u16(*status)
                    .ok()
                    .filter(|s| s.is_client_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY),
                ErrorBody {
                    error: format!("{url}: {}", theirs.error),
                    field: theirs.field.clone(),
                    hint: theirs.hint.clone(),
                },
            ),
            ApiError::Peer(e) => (
                StatusCode::BAD_GATEWAY,
                body(
                    corral_client::peer_chain(e),
                    Some("is corrald running there with --listen, reachable from this host, and is the token an admin's?"),
                ),
            ),
            // qemu-img missing (or not runnable) is the host's state, not a bug; `host
            // info` and the daemon's log at start say the same with the exact package.
            other if chain(other).contains("cannot run qemu-img") => (
                StatusCode::CONFLICT,
                body(
                    format!("this host cannot run qemu-img: {}", chain(other)),
                    Some("install Debian's qemu-utils of QEMU's version (`corral host info` shows the command), or run scripts/setup.sh"),
                ),
            ),
            // A full file system under a pool: the host's state, not a bug, and the
            // step that hit it has removed what it wrote.
            other if chain(other).contains("No space left on device") => (
                StatusCode::INSUFFICIENT_STORAGE,
                body(
                    format!("the pool is full: {}", chain(other)),
                    Some("free space in the pool (`corral pool show`), or use another pool"),
                ),
            ),
            other => (StatusCode::INTERNAL_SERVER_ERROR, body(chain(other), None)),
        }
    }
}

/// Where to look up what exists, for a 404.
fn list_hint(kind: &str) -> &'static str {
    match kind {
        "snapshot" => "`corral snapshot list VM` shows a VM's snapshots",
        "volume" => "`corral volume list` shows the volumes",
        "pool" => "`corral pool list` shows the pools",
        "image" => "`corral image list` shows the images",
        "operation" => "`corral operation list` shows the operations",
        "path" => "see /api/openapi.json for the API's paths",
        _ => "`corral list` shows the VMs",
    }
}

/// The error and its sources, joined: "a: b: c".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.to_parts();
        if status.is_server_error() {
            tracing::error!(error = %body.error, "request failed");
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::Unauthorized { .. } => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"corral\""),
                );
            }
            ApiError::TooManyAttempts { retry_after_secs } => {
                headers.insert(axum::http::header::RETRY_AFTER, (*retry_after_secs).into());
            }
            _ => {}
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
