//! The event log: every event is stored (for `show` and `events`) and broadcast to live
//! listeners (the event stream).

use std::sync::Arc;

use corral_api::Event;
use corral_store::Store;
use tokio::sync::broadcast;

use crate::clock::now_ms;

#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (tx, _) = broadcast::channel(1024);
        EventLog { store, tx }
    }

    /// Records an event. A failure to store it is logged, never fatal: an event is a
    /// report of a change that has already happened.
    pub fn emit(&self, vm: Option<&str>, kind: &str, message: impl AsRef<str>) {
        let message = message.as_ref();
        tracing::info!(vm = vm.unwrap_or("-"), kind, "{message}");
        match self.store.append_event(vm, kind, message, now_ms()) {
            Ok(event) => {
                let _ = self.tx.send(event);
            }
            Err(e) => tracing::warn!(error = %e, "cannot store event"),
        }
    }

    /// Sends an event to live listeners only (id 0: it is no cursor), for frequent
    /// transient news such as an operation's progress.
    pub fn stream_only(&self, vm: Option<&str>, kind: &str, message: impl Into<String>) {
        let _ = self.tx.send(Event {
            id: 0,
            time_ms: now_ms(),
            vm: vm.map(str::to_string),
            kind: kind.to_string(),
            message: message.into(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
