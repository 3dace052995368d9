//! The error envelope every failed request returns, and field-level validation errors.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every non-2xx reply: what was wrong, which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A plain sentence saying what went wrong.
    pub error: String,
    /// The request field at fault, dotted for nested fields (`disks[1].path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What the user can do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A request that is wrong in one field. Becomes a 400 with an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl From<&ValidationError> for ErrorBody {
    fn from(e: &ValidationError) -> Self {
        ErrorBody {
            error: e.message.clone(),
            field: Some(e.field.clone()),
            hint: e.hint.clone(),
        }
    }
}
