//! `corral console`: the VM's serial port over a WebSocket, like `virsh console`.
//!
//! On a terminal, stdin goes raw (every key, Ctrl-C included, reaches the guest) and is
//! restored by a guard on every way out. Ctrl-] (0x1d) detaches. With piped stdin there
//! is no raw mode and end of input detaches, after a short drain so that
//! `echo cmd | corral console vm` still prints the guest's answer.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::client::{vm_path, Client};
use crate::error::CliError;
use crate::output::print_out;

/// Ctrl-], as in telnet and virsh.
const DETACH: u8 = 0x1d;
/// After stdin ends, keep printing until the guest is quiet this long…
const DRAIN_IDLE: Duration = Duration::from_millis(500);
/// …but never longer than this, even if the guest keeps talking.
const DRAIN_MAX: Duration = Duration::from_secs(5);

/// How long to wait for the daemon to acknowledge our close.
const HANG_UP_MAX: Duration = Duration::from_secs(1);

type Socket = WebSocketStream<crate::client::Stream>;

/// `corral console NAME --log`: the serial output so far, byte for byte.
pub async fn print_log(client: &Client, name: &str) -> Result<()> {
    let log = client
        .get_text(&format!("{}/console/log", vm_path(name)))
        .await?;
    print_out(&log)
}

/// Why the session ended.
enum End {
    Detached,
    InputClosed,
    ClosedByDaemon,
}

/// `corral console NAME`: interactive until Ctrl-], end of input, or the VM going away.
pub async fn attach(client: &Client, name: &str) -> Result<()> {
    let mut ws = client
        .websocket(&format!("{}/console", vm_path(name)))
        .await?;
    let interactive = std::io::stdin().is_terminal();
    eprintln!("Connected to {name}'s console. Detach with Ctrl-]");
    let end = {
        let _raw = if interactive {
            Some(RawMode::enable()?)
        } else {
            None
        };
        pump(&mut ws, spawn_stdin_reader()).await
    }?;
    match end {
        End::Detached => {
            hang_up(&mut ws).await;
            eprintln!("\nDetached from {name}'s console.");
        }
        End::InputClosed => {
            drain(&mut ws).await?;
            hang_up(&mut ws).await;
        }
        End::ClosedByDaemon => eprintln!("\nConsole closed by corrald (the VM may have stopped)."),
    }
    Ok(())
}

/// Closes the WebSocket properly (our Close, then the daemon's), so the daemon sees a
/// clean detach rather than a reset; whatever the guest says meanwhile is dropped.
async fn hang_up(ws: &mut Socket) {
    let _ = ws.close(None).await;
    let _ = timeout(HANG_UP_MAX, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Copies stdin to the guest and the guest to stdout until one side ends.
async fn pump(ws: &mut Socket, mut input: mpsc::Receiver<Vec<u8>>) -> Result<End> {
    loop {
        tokio::select! {
            chunk = input.recv() => {
                let Some(chunk) = chunk else { return Ok(End::InputClosed) };
                let (keys, detach) = split_at_detach(&chunk);
                if !keys.is_empty() {
                    ws.send(Message::binary(keys.to_vec())).await.map_err(lost)?;
                }
                if detach {
                    return Ok(End::Detached);
                }
            }
            message = ws.next() => {
                if !write_message(message)? {
                    return Ok(End::ClosedByDaemon);
                }
            }
        }
    }
}

/// Prints what the guest says after our input ended, until it goes quiet.
async fn drain(ws: &mut Socket) -> Result<()> {
    let deadline = Instant::now() + DRAIN_MAX;
    while Instant::now() < deadline {
        let Ok(message) = timeout(DRAIN_IDLE, ws.next()).await else {
            break;
        };
        if !write_message(message)? {
            break;
        }
    }
    Ok(())
}

/// Writes one message's bytes to stdout; `false` when the connection has ended.
fn write_message(
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<bool> {
    match message {
        Some(Ok(Message::Binary(bytes))) => write_stdout(&bytes)?,
        Some(Ok(Message::Text(text))) => write_stdout(text.as_bytes())?,
        Some(Ok(Message::Close(_))) | None => return Ok(false),
        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
        Some(Err(e)) => return Err(lost(e)),
    }
    Ok(true)
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing to stdout")
}

fn lost(e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    CliError::new(format!("lost the console connection: {e}")).into()
}

/// The bytes before a Ctrl-], and whether there was one.
fn split_at_detach(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|&b| b == DETACH) {
        Some(at) => (&chunk[..at], true),
        None => (chunk, false),
    }
}

/// Reads stdin on a plain thread: a blocking read cannot be cancelled, and a tokio
/// blocking task would hold up runtime shutdown until the next keypress. The channel
/// closes at end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 4096];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

/// The terminal in raw mode for as long as this lives; the original settings come back
/// on drop, so errors and panics leave the user's shell usable.
struct RawMode {
    original: Termios,
}

impl RawMode {
    fn enable() -> Result<Self> {
        let stdin = std::io::stdin();
        let original = tcgetattr(&stdin).context("reading the terminal settings")?;
        let mut raw = original.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("switching the terminal to raw mode")?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.original);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_byte_splits_input() {
        assert_eq!(split_at_detach(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_at_detach(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_detach(b"\x1d"), (&b""[..], true));
    }
}
