//! Long work as an operation: an id to follow, progress, cancel, and a final result.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ErrorBody;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OperationState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn is_final(self) -> bool {
        self != OperationState::Running
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Operation {
    pub id: Uuid,
    /// What kind of work: `vm.stop`, `vm.restart`, …
    pub kind: String,
    /// The object it works on (a VM name, a volume, …).
    pub target: String,
    pub state: OperationState,
    /// 0 to 100.
    pub progress: f32,
    /// Unix milliseconds.
    pub created_ms: u64,
    pub updated_ms: u64,
    #[serde(default)]
    pub cancellable: bool,
    /// Set when the operation failed.
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// What the operation made, when it succeeded (e.g. an import's volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What is happening now, when the work says more than a percentage (a migration's
    /// phase, memory sent and remaining, dirty rate, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}
