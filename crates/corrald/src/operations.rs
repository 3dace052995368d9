//! Long work as operations (DESIGN.md §9): an id the client can follow, progress,
//! cancellation, and a final result. Live operations are kept in memory with a watch
//! channel for waiters; every change is written through to the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_api::{ErrorBody, Operation, OperationState};
use corral_store::Store;
use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::now_ms;
use crate::error::{ApiError, ApiResult};
use crate::events::EventLog;

struct Live {
    tx: watch::Sender<Operation>,
    cancel: watch::Sender<bool>,
    /// When progress was last streamed (Unix ms), so followers get at most two a second.
    progress_streamed_ms: u64,
}

/// Streamed progress of one operation is throttled to one event per this many ms.
const PROGRESS_EVERY_MS: u64 = 500;

#[derive(Clone)]
pub struct Operations {
    store: Arc<dyn Store>,
    events: EventLog,
    live: Arc<Mutex<HashMap<Uuid, Live>>>,
}

/// The worker's side of one operation.
pub struct OpHandle {
    ops: Operations,
    id: Uuid,
    cancel: watch::Receiver<bool>,
}

impl Operations {
    pub fn new(store: Arc<dyn Store>, events: EventLog) -> Self {
        Operations {
            store,
            events,
            live: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Operations still marked running in the store belong to a previous daemon that
    /// died; they can no longer finish. Returns them, so their half-done work can be
    /// recovered.
    pub fn fail_orphans(&self) -> ApiResult<Vec<Operation>> {
        let mut failed = Vec::new();
        for mut op in self.store.list_operations()? {
            if op.state == OperationState::Running {
                op.state = OperationState::Failed;
                op.updated_ms = now_ms();
                op.error = Some(ErrorBody {
                    error: "corrald restarted while this operation ran".into(),
                    field: None,
                    hint: Some(
                        "check the object's state and run the request again if needed".into(),
                    ),
                });
                self.store.put_operation(&op)?;
                failed.push(op);
            }
        }
        Ok(failed)
    }

    /// Registers a new running operation.
    pub fn begin(
        &self,
        kind: &str,
        target: &str,
        cancellable: bool,
    ) -> ApiResult<(Operation, OpHandle)> {
        let now = now_ms();
        let op = Operation {
            id: Uuid::new_v4(),
            kind: kind.to_string(),
            target: target.to_string(),
            state: OperationState::Running,
            progress: 0.0,
            created_ms: now,
            updated_ms: now,
            cancellable,
            error: None,
            result: None,
            detail: None,
        };
        self.store.put_operation(&op)?;
        let (tx, _) = watch::channel(op.clone());
        let (cancel, cancel_rx) = watch::channel(false);
        self.lock().insert(
            op.id,
            Live {
                tx,
                cancel,
                progress_streamed_ms: 0,
            },
        );
        self.stream_progress(&op);
        let handle = OpHandle {
            ops: self.clone(),
            id: op.id,
            cancel: cancel_rx,
        };
        Ok((op, handle))
    }

    pub fn get(&self, id: Uuid) -> ApiResult<Operation> {
        if let Some(live) = self.lock().get(&id) {
            return Ok(live.tx.borrow().clone());
        }
        self.store.get_operation(id)?.ok_or(ApiError::NotFound {
            kind: "operation",
            name: id.to_string(),
        })
    }

    pub fn list(&self) -> ApiResult<Vec<Operation>> {
        Ok(self.store.list_operations()?)
    }

    /// Waits until the operation is final or `timeout` passes; returns it either way.
    pub async fn wait(&self, id: Uuid, timeout: Duration) -> ApiResult<Operation> {
        let rx = self.lock().get(&id).map(|l| l.tx.subscribe());
        let Some(mut rx) = rx else {
            return self.get(id);
        };
        let _ = tokio::time::timeout(timeout, rx.wait_for(|op| op.state.is_final())).await;
        let op = rx.borrow().clone();
        Ok(op)
    }

    pub fn cancel(&self, id: Uuid) -> ApiResult<Operation> {
        let op = self.get(id)?;
        if op.state.is_final() {
            return Err(ApiError::conflict(format!(
                "operation {id} has already ended ({:?})",
                op.state
            )));
        }
        if !op.cancellable {
            return Err(ApiError::Conflict {
                message: format!("operation {id} ({}) cannot be cancelled", op.kind),
                hint: Some("wait for it to finish".into()),
            });
        }
        let live = self.lock();
        if let Some(live) = live.get(&id) {
            // Checked again under the lock a worker's commit point takes: once the work
            // is past undoing, a cancel is refused rather than silently ignored.
            if !live.tx.borrow().cancellable {
                return Err(ApiError::Conflict {
                    message: format!(
                        "operation {id} ({}) is past the point of cancelling",
                        op.kind
                    ),
                    hint: Some("wait for it to finish".into()),
                });
            }
            let _ = live.cancel.send(true);
        }
        Ok(op)
    }

    fn update(&self, id: Uuid, f: impl FnOnce(&mut Operation)) {
        let (op, stream) = {
            let mut live = self.lock();
            let Some(l) = live.get_mut(&id) else { return };
            l.tx.send_modify(|op| {
                f(op);
                op.updated_ms = now_ms();
            });
            let op = l.tx.borrow().clone();
            let stream = !op.state.is_final()
                && op.updated_ms.saturating_sub(l.progress_streamed_ms) >= PROGRESS_EVERY_MS;
            if stream {
                l.progress_streamed_ms = op.updated_ms;
            }
            (op, stream)
        };
        if stream {
            self.stream_progress(&op);
        }
        if let Err(e) = self.store.put_operation(&op) {
            tracing::warn!(error = %e, "cannot store operation {id}");
        }
        if op.state.is_final() {
            self.lock().remove(&id);
            let outcome = match op.state {
                OperationState::Succeeded => "succeeded".to_string(),
                OperationState::Cancelled => "was cancelled".to_string(),
                _ => format!(
                    "failed: {}",
                    op.error.as_ref().map(|e| e.error.as_str()).unwrap_or("")
                ),
            };
            self.events.emit(
                Some(&op.target),
                "operation",
                format!("{} {outcome}", op.kind),
            );
        }
    }

    /// A `progress` event for followers of the event stream (the web console, `corral
    /// monitor`): not stored — an operation's history is the operation itself.
    fn stream_progress(&self, op: &Operation) {
        let message = serde_json::json!({
            "id": op.id, "kind": op.kind, "target": op.target,
            "progress": op.progress, "state": op.state, "detail": op.detail,
            "cancellable": op.cancellable,
        });
        self.events
            .stream_only(Some(&op.target), "progress", message.to_string());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl OpHandle {
    pub fn progress(&self, percent: f32) {
        self.ops
            .update(self.id, |op| op.progress = percent.clamp(0.0, 100.0));
    }

    /// Progress with details of what is happening (shown by `corral operation show` and
    /// streamed to followers).
    pub fn detail(&self, percent: f32, detail: serde_json::Value) {
        self.ops.update(self.id, |op| {
            op.progress = percent.clamp(0.0, 100.0);
            op.detail = Some(detail);
        });
    }

    /// The point past which the work can no longer be undone: true, and from now on the
    /// operation refuses cancels, unless a cancel came first (then false, and the work
    /// must undo itself).
    pub fn commit_point(&self) -> bool {
        {
            let live = self.ops.lock();
            let Some(l) = live.get(&self.id) else {
                return false;
            };
            if *l.cancel.borrow() {
                return false;
            }
            // Under the lock a cancel checks: from here on it is refused.
            l.tx.send_modify(|op| op.cancellable = false);
        }
        // Stored and told to followers like any change.
        self.ops.update(self.id, |_| {});
        true
    }

    /// Whether a client has asked to cancel (for synchronous checks in long loops).
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when a client asks to cancel.
    pub async fn cancelled(&mut self) {
        let _ = self.cancel.wait_for(|c| *c).await;
    }

    pub fn finish(self, result: ApiResult<()>) {
        self.finish_with(result.map(|()| serde_json::Value::Null));
    }

    /// Ends the operation; a non-null value is its `result` for the client (what the
    /// operation made).
    pub fn finish_with(self, result: ApiResult<serde_json::Value>) {
        self.ops.update(self.id, |op| match result {
            Ok(value) => {
                op.state = OperationState::Succeeded;
                op.progress = 100.0;
                op.result = (!value.is_null()).then_some(value);
            }
            Err(e) => {
                op.state = OperationState::Failed;
                op.error = Some(e.to_parts().1);
            }
        });
    }

    pub fn cancelled_done(self) {
        self.ops
            .update(self.id, |op| op.state = OperationState::Cancelled);
    }
}
