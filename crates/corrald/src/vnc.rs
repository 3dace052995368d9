//! The graphical console: a websocket (as noVNC speaks it) proxied to QEMU's VNC server
//! on the VM's `vnc.sock`. QEMU's server takes several shared clients, so unlike the
//! serial console any number of viewers may watch at once; each gets its own connection.

use std::sync::Arc;

use axum::extract::ws::WebSocket;

use crate::vm::{Manager, Running};

/// Pipes one viewer to the VM's VNC socket, with `console` events when the session
/// opens (once the upgrade succeeded) and when it ends.
pub async fn proxy(
    ws: WebSocket,
    mgr: Arc<Manager>,
    running: Arc<Running>,
    vm: String,
    who: String,
) {
    mgr.events.emit(
        Some(&vm),
        "console",
        format!("graphical console opened by {who}"),
    );
    let socket = running.paths.vnc_socket();
    let how = match crate::console::pipe(ws, &socket, &running).await {
        Ok(()) => "closed".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "graphical console session ended with an error");
            format!("ended: {e}")
        }
    };
    mgr.events.emit(
        Some(&vm),
        "console",
        format!("graphical console of {who} {how}"),
    );
}
