//! A JSON body extractor whose errors name the field at fault, as 400s in Corral's
//! error envelope (axum's own `Json` answers 422 in plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadBody(format!("cannot read the request body: {e}")))?;
        parse(&bytes).map(JsonBody)
    }
}

/// An empty body means "all defaults" for action endpoints (`{}` would do the same).
pub struct OptionalJsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::BadBody(format!("cannot read the request body: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        parse(&bytes).map(OptionalJsonBody)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut field = (path != ".").then_some(path);
        // An unknown top-level field is reported at the root path; name the field itself.
        let msg = inner.to_string();
        if field.is_none() {
            field = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_string);
        }
        let message = msg.split(" at line ").next().unwrap_or(&msg).to_string();
        match field {
            Some(field) => corral_api::ValidationError::new(field, message)
                .hint("see /api/openapi.json for the request schema")
                .into(),
            None => ApiError::BadBody(format!("invalid JSON body: {message}")),
        }
    })
}
