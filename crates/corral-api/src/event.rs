//! Events: what happened to what, when. Kept per VM and streamed to clients.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Monotonic id, usable as a cursor.
    pub id: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// The VM it concerns, if any.
    #[serde(default)]
    pub vm: Option<String>,
    /// Short machine-readable kind: `created`, `state`, `qmp`, `deleted`, `operation`, …
    pub kind: String,
    /// What happened, for people.
    pub message: String,
}
