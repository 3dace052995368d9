//! Serial consoles: the bounded per-VM log QEMU writes, and the interactive proxy between
//! a websocket client and QEMU's console socket.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::vm::{Manager, Running};

/// Keeps each running VM's console log under the limit: past it, the log is moved to
/// `console.log.1` (replacing the older one) and emptied. QEMU writes with O_APPEND, so
/// its next write lands at the start of the emptied file.
pub async fn rotate_logs_forever(mgr: Arc<Manager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(vms) = mgr.list() else { continue };
        for vm in vms.iter().filter(|v| v.status.state.has_process()) {
            let log = mgr.vm_paths(&vm.spec).console_log();
            if let Err(e) = rotate_if_big(&log, mgr.cfg.console_log_limit) {
                tracing::warn!(error = %e, "cannot rotate {}", log.display());
            }
        }
    }
}

pub fn rotate_if_big(log: &Path, limit: u64) -> std::io::Result<()> {
    let len = match fs::metadata(log) {
        Ok(m) => m.len(),
        Err(_) => return Ok(()),
    };
    if len <= limit {
        return Ok(());
    }
    // Keep only the newest `limit` bytes of what is rotated out.
    let mut f = fs::File::open(log)?;
    f.seek(SeekFrom::Start(len - limit))?;
    let mut tail = Vec::with_capacity(limit as usize);
    f.take(limit).read_to_end(&mut tail)?;
    fs::write(log.with_extension("log.1"), tail)?;
    fs::OpenOptions::new().write(true).open(log)?.set_len(0)
}

/// The last `limit` bytes of console output: the rotated file, then the current one.
pub fn read_log(rotated: &Path, current: &Path, limit: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for p in [rotated, current] {
        if let Ok(mut f) = fs::File::open(p) {
            let _ = f.read_to_end(&mut out);
        }
    }
    let excess = out.len().saturating_sub(limit as usize);
    out.drain(..excess);
    out
}

/// Pipes a websocket client to the VM's console socket until either side closes.
pub async fn proxy(ws: WebSocket, running: Arc<Running>) {
    if let Err(e) = pipe(ws, &running.paths.console_socket(), &running).await {
        tracing::warn!(error = %e, "console session ended with an error");
    }
    running.console_busy.store(false, Ordering::SeqCst);
}

/// Copies bytes both ways between a websocket (binary messages) and a fresh connection
/// to one of the VM's Unix sockets, until either side closes or QEMU goes away. Shared by
/// the serial console and the graphical (VNC) console.
pub async fn pipe(ws: WebSocket, socket: &Path, running: &Running) -> std::io::Result<()> {
    let stream = UnixStream::connect(socket).await?;
    let (mut from_vm, mut to_vm) = stream.into_split();
    let (mut ws_tx, mut ws_rx) = ws.split();
    let outbound = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_vm.read(&mut buf).await?;
            if n == 0
                || ws_tx
                    .send(Message::Binary(buf[..n].to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = ws_tx.close().await;
        Ok::<_, std::io::Error>(())
    };
    let inbound = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            match msg {
                Message::Binary(b) => to_vm.write_all(&b).await?,
                Message::Text(t) => to_vm.write_all(t.as_bytes()).await?,
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        r = outbound => r,
        r = inbound => r,
        _ = running.qmp.closed() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_newest_bytes_within_twice_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let rotated = dir.path().join("console.log.1");
        fs::write(&log, b"0123456789abcdef").unwrap();
        rotate_if_big(&log, 32).unwrap();
        assert!(!rotated.exists(), "under the limit: untouched");
        fs::write(&log, (0..100u8).collect::<Vec<_>>()).unwrap();
        rotate_if_big(&log, 32).unwrap();
        assert_eq!(fs::read(&rotated).unwrap(), (68..100u8).collect::<Vec<_>>());
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        fs::write(&log, b"new").unwrap();
        let all = read_log(&rotated, &log, 1 << 20);
        assert_eq!(&all[all.len() - 3..], b"new");
        assert_eq!(all.len(), 35);
        assert_eq!(read_log(&rotated, &log, 4), b"\x63new".to_vec());
    }
}
