//! An async client for the QEMU Machine Protocol (QMP).
//!
//! One [`Qmp`] handle drives one QMP monitor socket:
//!
//! - a single reader task owns the read half of the socket; replies are matched
//!   to their command by `id`, and events are fanned out to every
//!   [`Qmp::events`] subscriber (unknown events included, with their raw data);
//! - writes are serialized by a mutex on the write half, so any number of tasks
//!   may issue commands concurrently on clones of the same handle;
//! - every command has a timeout ([`timeout_for`]); a timed-out (or cancelled)
//!   command forgets its id, so a late reply is logged and ignored;
//! - when the socket closes (QEMU quit or crashed), every pending command fails
//!   with [`QmpError::Disconnected`], [`Qmp::closed`] resolves, the event
//!   stream ends, and later commands fail at once;
//! - [`Qmp::execute_with_fds`] passes file descriptors with a command
//!   (`SCM_RIGHTS`), for `add-fd`/`getfd`: a confined QEMU cannot open files
//!   itself, see [`crate::hotplug`];
//! - optionally every line sent and received is appended, timestamped, to a
//!   bounded log file ([`QmpOptions::log_path`]), and always to `tracing` at
//!   debug level.
//!
//! Events that QEMU emits *while* a command runs arrive before that command's
//! reply (QEMU 7.2 sends `RESUME` before the `return` of `cont`), so subscribe
//! before issuing a command whose event you want to see.

mod fds;
mod log;
mod proto;

pub use self::fds::{AddFdInfo, FdsetFdInfo, FdsetInfo, MAX_FDS_PER_COMMAND};

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

use self::log::{Direction, TrafficLog, MAX_LOG_BYTES};
use self::proto::{CommandFailure, Message};

/// Timeout for commands that may legitimately take long: block jobs, migration,
/// snapshots, memory dumps, and HMP passthrough (which is how `savevm` is reached).
pub const LONG_TIMEOUT: Duration = Duration::from_secs(120);
/// How many events a slow subscriber may fall behind before it starts missing some.
pub const EVENT_CAPACITY: usize = 256;
/// Longest line accepted from QEMU; a longer one is treated as a broken connection.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// Everything that can go wrong talking to QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Could not connect to the QMP socket.
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why the connection failed.
        source: io::Error,
    },
    /// Reading from or writing to the QMP socket failed.
    #[error("QMP socket I/O error: {0}")]
    Io(#[from] io::Error),
    /// The QMP connection is closed: QEMU quit, crashed, or closed the monitor.
    #[error("QMP connection closed (QEMU went away)")]
    Disconnected,
    /// No reply arrived in time.
    #[error("QMP command `{command}` got no reply within {timeout:?}")]
    Timeout {
        /// The command (or handshake step) that timed out.
        command: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// QEMU answered the command with an error.
    #[error("QMP command `{command}` failed: {desc} ({class})")]
    Command {
        /// The command that failed.
        command: String,
        /// QEMU's error class, e.g. `GenericError`, `CommandNotFound`, `DeviceNotFound`.
        class: String,
        /// QEMU's human-readable description.
        desc: String,
    },
    /// The peer does not speak QMP as expected (bad greeting, overlong line, …).
    #[error("QMP protocol error: {0}")]
    Protocol(String),
    /// A command's `return` value did not have the expected shape.
    #[error("unexpected reply to QMP command `{command}`: {source}")]
    Decode {
        /// The command whose reply could not be decoded.
        command: String,
        /// What did not match.
        source: serde_json::Error,
    },
    /// The QEMU process id cannot be determined from this connection.
    #[error("cannot determine the QEMU process id from the QMP connection")]
    PidUnavailable,
    /// More descriptors than QEMU accepts with one command; nothing was sent.
    #[error(
        "cannot pass {count} file descriptors with one QMP command (QEMU takes at most {max})"
    )]
    TooManyFds {
        /// How many were given.
        count: usize,
        /// The most QEMU reads from one message.
        max: usize,
    },
}

impl QmpError {
    /// True for a QMP error reply of the given class (e.g. `"CommandNotFound"`).
    pub fn is_class(&self, wanted: &str) -> bool {
        matches!(self, QmpError::Command { class, .. } if class == wanted)
    }
}

/// How to run a QMP connection.
#[derive(Debug, Clone)]
pub struct QmpOptions {
    /// Timeout for the handshake and for ordinary commands (queries, `cont`, `stop`, …).
    /// Slow commands get at least [`LONG_TIMEOUT`]; see [`timeout_for`].
    pub default_timeout: Duration,
    /// Append every line sent and received, timestamped, to this file. The file is
    /// truncated when it would grow past 1 MiB. A log that cannot be opened is
    /// reported with `tracing::warn!` and otherwise ignored.
    pub log_path: Option<PathBuf>,
}

impl Default for QmpOptions {
    fn default() -> Self {
        QmpOptions {
            default_timeout: Duration::from_secs(10),
            log_path: None,
        }
    }
}

/// The QEMU version announced in the QMP greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// An asynchronous QMP event. Events this crate does not know are delivered too.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name, e.g. `STOP`, `RESUME`, `SHUTDOWN`.
    pub name: String,
    /// The raw `data` member, or `Value::Null` when QEMU sent none.
    pub data: Value,
    /// QEMU's `(seconds, microseconds)` timestamp, when present.
    pub timestamp: Option<(i64, i64)>,
}

/// Reply to `query-status`. Extra fields (`singlestep`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs are running.
    pub running: bool,
    /// The run state: `prelaunch`, `running`, `paused`, `shutdown`, `inmigrate`, …
    pub status: String,
}

/// The timeout to use for `command`: `default` for ordinary commands, at least
/// [`LONG_TIMEOUT`] for ones that may take a while (block/blockdev/drive
/// operations, migration, snapshots, jobs, memory dumps, HMP passthrough).
pub fn timeout_for(command: &str, default: Duration) -> Duration {
    const SLOW_PREFIXES: &[&str] = &[
        "blockdev-",
        "x-blockdev-",
        "block-",
        "block_",
        "drive-",
        "migrate",
        "snapshot-",
        "job-",
        "dump-guest-memory",
        "human-monitor-command",
        "transaction",
    ];
    if SLOW_PREFIXES.iter().any(|p| command.starts_with(p)) {
        default.max(LONG_TIMEOUT)
    } else {
        default
    }
}

/// A QMP connection. Cheap to clone; all clones share one socket. The
/// connection is closed when the last clone is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Held from sending a descriptor-carrying command until its reply: QEMU
    /// keeps only one batch of unclaimed descriptors per connection, so a second
    /// batch arriving early would make it close the first.
    fd_commands: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    version: QemuVersion,
    default_timeout: Duration,
    peer_pid: Option<u32>,
    log: Option<TrafficLog>,
    reader: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The reader holds only `Shared`, not `Inner`; stop it so the socket closes.
        self.reader.abort();
    }
}

/// State shared between command callers and the reader task.
struct Shared {
    state: Mutex<State>,
    closed: watch::Sender<bool>,
}

struct State {
    pending: HashMap<u64, oneshot::Sender<Result<Value, CommandFailure>>>,
    /// `None` once closed, so subscribers see the stream end.
    events: Option<broadcast::Sender<Event>>,
    closed: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock, and the state stays consistent anyway.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn dispatch(&self, message: Message) {
        match message {
            Message::Reply {
                id: Some(id),
                result,
            } => {
                let waiter = self.state().pending.remove(&id);
                match waiter {
                    // The waiter may have just been cancelled; nothing to do then.
                    Some(tx) => drop(tx.send(result)),
                    None => {
                        tracing::debug!(id, "QMP reply for unknown or timed-out command ignored")
                    }
                }
            }
            Message::Reply { id: None, result } => {
                tracing::warn!(?result, "QMP reply without a usable id ignored");
            }
            Message::Event(event) => {
                tracing::debug!(name = %event.name, "QMP event");
                if let Some(tx) = &self.state().events {
                    // An error only means nobody is subscribed right now.
                    drop(tx.send(event));
                }
            }
            Message::Greeting(_) => tracing::warn!("unexpected second QMP greeting ignored"),
            Message::Other(value) => tracing::warn!(%value, "unrecognized QMP message ignored"),
        }
    }

    /// Mark the connection closed: fail pending commands, end event streams, wake `closed()`.
    fn close(&self) {
        let (pending, events) = {
            let mut st = self.state();
            st.closed = true;
            (std::mem::take(&mut st.pending), st.events.take())
        };
        // Dropping the senders makes every waiter see `Disconnected`.
        drop(pending);
        drop(events);
        self.closed.send_replace(true);
    }
}

/// Removes a command's pending entry however its caller finishes (reply,
/// timeout, or the future being dropped), so late replies are ignored.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.state().pending.remove(&self.id);
    }
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.version)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connect to a QMP unix socket, read the greeting, run `qmp_capabilities`.
    pub async fn connect(path: &Path, opts: QmpOptions) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_owned(),
                source,
            })?;
        Self::from_stream(stream, opts).await
    }

    /// Same as [`Qmp::connect`] over an already-connected stream (for tests and
    /// inherited file descriptors).
    pub async fn from_stream(stream: UnixStream, opts: QmpOptions) -> Result<Qmp, QmpError> {
        let peer_pid = stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|&pid| pid != 0 && pid != std::process::id());

        let log = match &opts.log_path {
            Some(path) => match TrafficLog::open(path, MAX_LOG_BYTES).await {
                Ok(log) => Some(log),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open QMP log; continuing without it");
                    None
                }
            },
            None => None,
        };

        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let handshake = handshake(&mut reader, &mut write, log.as_ref());
        let version = tokio::time::timeout(opts.default_timeout, handshake)
            .await
            .map_err(|_| QmpError::Timeout {
                command: "qmp_capabilities (handshake)".to_owned(),
                timeout: opts.default_timeout,
            })??;

        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                events: Some(events),
                closed: false,
            }),
            closed: watch::Sender::new(false),
        });
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&shared), log.clone()));
        tracing::debug!(%version, ?peer_pid, "QMP connected");
        Ok(Qmp {
            inner: Arc::new(Inner {
                shared,
                writer: tokio::sync::Mutex::new(write),
                fd_commands: tokio::sync::Mutex::new(()),
                next_id: AtomicU64::new(1),
                version,
                default_timeout: opts.default_timeout,
                peer_pid,
                log,
                reader,
            }),
        })
    }

    /// The QEMU version from the greeting.
    pub fn version(&self) -> QemuVersion {
        self.inner.version
    }

    /// The timeout [`Qmp::execute_raw`] uses for `command` on this connection.
    pub fn timeout_for(&self, command: &str) -> Duration {
        timeout_for(command, self.inner.default_timeout)
    }

    /// Execute any command with JSON `arguments` (an object; `None` or `Null`
    /// sends none) and return its `return` value. Uses [`Qmp::timeout_for`].
    pub async fn execute_raw(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_with_timeout(command, arguments, self.timeout_for(command))
            .await
    }

    /// Execute a command and decode its `return` value into `T`.
    pub async fn execute<T: DeserializeOwned>(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute_raw(command, arguments).await?;
        serde_json::from_value(value).map_err(|source| QmpError::Decode {
            command: command.to_owned(),
            source,
        })
    }

    /// [`Qmp::execute_raw`] with an explicit timeout.
    ///
    /// Cancel-safe: dropping the future never leaves a half-written command on
    /// the socket, and its reply, if it comes, is ignored.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, arguments, timeout, Vec::new())
            .await
    }

    /// Send one command, with `fds` (if any) attached to its line, and await its reply.
    async fn execute_inner(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
        fds: Vec<OwnedFd>,
    ) -> Result<Value, QmpError> {
        let shared = &*self.inner.shared;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = serde_json::Map::new();
        msg.insert("execute".to_owned(), Value::from(command));
        match arguments {
            None | Some(Value::Null) => {}
            Some(args) => {
                msg.insert("arguments".to_owned(), args);
            }
        }
        msg.insert("id".to_owned(), Value::from(id));
        let line = Value::Object(msg).to_string();

        let rx = {
            let mut st = shared.state();
            if st.closed {
                return Err(QmpError::Disconnected);
            }
            let (tx, rx) = oneshot::channel();
            st.pending.insert(id, tx);
            rx
        };
        let _guard = PendingGuard { shared, id };

        let exchange = async {
            self.send_line(line, fds).await?;
            rx.await.map_err(|_| QmpError::Disconnected)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => {
                tracing::debug!(command, id, ?timeout, "QMP command timed out");
                Err(QmpError::Timeout {
                    command: command.to_owned(),
                    timeout,
                })
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(CommandFailure { class, desc }))) => Err(QmpError::Command {
                command: command.to_owned(),
                class,
                desc,
            }),
        }
    }

    /// Write one command line, with `fds` (if any) as `SCM_RIGHTS` on its first
    /// bytes. The write runs in its own task, which owns the descriptors, so that
    /// a caller giving up (timeout, cancellation) cannot leave a partial line behind.
    async fn send_line(&self, line: String, fds: Vec<OwnedFd>) -> Result<(), QmpError> {
        let inner = Arc::clone(&self.inner);
        let write = tokio::spawn(async move {
            let mut writer = inner.writer.lock().await;
            tracing::debug!(line = %line, fds = fds.len(), "QMP ->");
            if let Some(log) = &inner.log {
                log.record(Direction::Sent, &line);
            }
            if fds.is_empty() {
                writer.write_all(line.as_bytes()).await?;
                writer.write_all(b"\n").await?;
                writer.flush().await
            } else {
                // One buffer, so the descriptors ride on the command itself.
                let mut data = line.into_bytes();
                data.push(b'\n');
                fds::write_with_fds(&mut writer, &data, &fds).await
            }
        });
        match write.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) if is_disconnect(&e) => Err(QmpError::Disconnected),
            Ok(Err(e)) => Err(QmpError::Io(e)),
            // Only when the runtime is shutting down.
            Err(_) => Err(QmpError::Disconnected),
        }
    }

    async fn execute_unit(&self, command: &str) -> Result<(), QmpError> {
        self.execute_raw(command, None).await.map(drop)
    }

    /// `query-status`: whether the vCPUs run, and the run state.
    pub async fn query_status(&self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }

    /// `cont`: start or resume the vCPUs (emits `RESUME`).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute_unit("cont").await
    }

    /// `stop`: pause the vCPUs (emits `STOP`).
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute_unit("stop").await
    }

    /// `system_powerdown`: press the ACPI power button (the guest decides).
    ///
    /// A guest may power off, and QEMU exit, before the reply is written: a connection
    /// that closes after the command was sent is the command succeeding, as for `quit`.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        if self.is_closed() {
            return Err(QmpError::Disconnected);
        }
        match self.execute_unit("system_powerdown").await {
            Ok(()) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `system_reset`: hard reset the machine (emits `RESET`).
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute_unit("system_reset").await
    }

    /// `quit`: make QEMU exit. The socket closing before the reply arrives
    /// counts as success; an already-closed connection is `Disconnected`.
    /// Await [`Qmp::closed`] to know QEMU has gone.
    pub async fn quit(&self) -> Result<(), QmpError> {
        if self.is_closed() {
            return Err(QmpError::Disconnected);
        }
        match self.execute_raw("quit", None).await {
            Ok(_) | Err(QmpError::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The QEMU process id. QMP has no `query-pid`, so this uses, in order:
    ///
    /// 1. the socket's peer credentials (`SO_PEERCRED`), which name the process
    ///    that created the listening socket; ignored when that is this very
    ///    process (a socket we created and handed to QEMU, or a test mock);
    /// 2. `query-cpus-fast`: the `thread-id` of a vCPU thread, mapped to its
    ///    process through `/proc/<tid>/status` (needs a shared pid namespace).
    pub async fn query_pid(&self) -> Result<u32, QmpError> {
        if let Some(pid) = self.inner.peer_pid {
            return Ok(pid);
        }
        let cpus: Vec<Value> = match self.execute("query-cpus-fast", None).await {
            Ok(cpus) => cpus,
            Err(QmpError::Command { .. } | QmpError::Decode { .. }) => {
                return Err(QmpError::PidUnavailable)
            }
            Err(e) => return Err(e),
        };
        for tid in cpus
            .iter()
            .filter_map(|cpu| cpu.get("thread-id").and_then(Value::as_u64))
        {
            let path = format!("/proc/{tid}/status");
            if let Some(pid) = tokio::fs::read_to_string(&path)
                .await
                .ok()
                .as_deref()
                .and_then(proto::parse_tgid)
            {
                return Ok(pid);
            }
        }
        Err(QmpError::PidUnavailable)
    }

    /// Subscribe to events. Every event received after this call is delivered,
    /// including ones this crate does not know. A subscriber more than
    /// [`EVENT_CAPACITY`] events behind gets `RecvError::Lagged`. The stream
    /// ends (`RecvError::Closed`) once the connection closes.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        match &self.inner.shared.state().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Resolves once the connection is closed (EOF or error): QEMU went away.
    pub async fn closed(&self) {
        let mut rx = self.inner.shared.closed.subscribe();
        // An error means the sender is gone, which also means closed.
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        *self.inner.shared.closed.borrow()
    }

    /// Wait until every QMP line so far is written to the log file (no-op without a log).
    pub async fn flush_log(&self) {
        if let Some(log) = &self.inner.log {
            log.flush().await;
        }
    }
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::UnexpectedEof
    )
}

/// Read one line (up to [`MAX_LINE_BYTES`]) into `buf`. `Ok(false)` at EOF.
async fn read_line(reader: &mut BufReader<OwnedReadHalf>, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let limit = u64::try_from(MAX_LINE_BYTES + 1).unwrap_or(u64::MAX);
    let n = (&mut *reader).take(limit).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(false);
    }
    if buf.len() > MAX_LINE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("QMP line longer than {MAX_LINE_BYTES} bytes"),
        ));
    }
    Ok(true)
}

/// Read and classify one message; `Ok(None)` at EOF. Lines that are not JSON are skipped.
async fn read_message(
    reader: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    log: Option<&TrafficLog>,
) -> io::Result<Option<Message>> {
    loop {
        if !read_line(reader, buf).await? {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(buf);
        let text = text.trim_end_matches(['\r', '\n']);
        tracing::debug!(line = %text, "QMP <-");
        if let Some(log) = log {
            log.record(Direction::Received, text);
        }
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(text) {
            Ok(value) => return Ok(Some(proto::classify(value))),
            Err(e) => tracing::warn!(error = %e, line = %text, "non-JSON line from QMP ignored"),
        }
    }
}

/// Read the greeting and negotiate capabilities (none enabled: no `oob`).
async fn handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    log: Option<&TrafficLog>,
) -> Result<QemuVersion, QmpError> {
    let mut buf = Vec::new();
    let version = match read_message(reader, &mut buf, log).await? {
        None => return Err(QmpError::Disconnected),
        Some(Message::Greeting(body)) => proto::greeting_version(&body).ok_or_else(|| {
            QmpError::Protocol(format!("QMP greeting without a QEMU version: {body}"))
        })?,
        Some(other) => {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {other:?}"
            )))
        }
    };

    let line = r#"{"execute":"qmp_capabilities","id":0}"#;
    tracing::debug!(line, "QMP ->");
    if let Some(log) = log {
        log.record(Direction::Sent, line);
    }
    let written = async {
        writer.write_all(line.as_bytes()).await?;
        writer.write_all(b"\n").await?;
        writer.flush().await
    };
    match written.await {
        Ok(()) => {}
        Err(e) if is_disconnect(&e) => return Err(QmpError::Disconnected),
        Err(e) => return Err(QmpError::Io(e)),
    }

    loop {
        match read_message(reader, &mut buf, log).await? {
            None => return Err(QmpError::Disconnected),
            Some(Message::Reply {
                id: Some(0),
                result,
            }) => {
                return match result {
                    Ok(_) => Ok(version),
                    Err(CommandFailure { class, desc }) => Err(QmpError::Command {
                        command: "qmp_capabilities".to_owned(),
                        class,
                        desc,
                    }),
                }
            }
            Some(other) => {
                tracing::debug!(
                    ?other,
                    "QMP message before capabilities negotiation ignored"
                );
            }
        }
    }
}

/// The reader task: dispatch replies and events until EOF or error, then close.
async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    shared: Arc<Shared>,
    log: Option<TrafficLog>,
) {
    let mut buf = Vec::new();
    loop {
        match read_message(&mut reader, &mut buf, log.as_ref()).await {
            Ok(Some(message)) => shared.dispatch(message),
            Ok(None) => {
                tracing::debug!("QMP socket closed by QEMU");
                break;
            }
            // QEMU 7.2 sometimes resets the connection on `quit` instead of a clean EOF.
            Err(e) if is_disconnect(&e) => {
                tracing::debug!(error = %e, "QMP socket closed by QEMU");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "QMP socket read failed; treating as closed");
                break;
            }
        }
    }
    shutdown_socket(reader.get_ref().as_ref());
    shared.close();
}

/// Shut the socket down in both directions, so that QEMU sees the monitor
/// disconnect (and accepts a new client) even while `Qmp` handles remain, and
/// a write blocked on a full socket buffer fails instead of hanging.
fn shutdown_socket(stream: &UnixStream) {
    // `shutdown(2)` acts on the socket, not the descriptor, so a duplicate will do.
    let result = stream
        .as_fd()
        .try_clone_to_owned()
        .map(std::os::unix::net::UnixStream::from)
        .and_then(|dup| dup.shutdown(std::net::Shutdown::Both));
    if let Err(e) = result {
        if e.kind() != io::ErrorKind::NotConnected {
            tracing::debug!(error = %e, "QMP socket shutdown failed");
        }
    }
}

#[cfg(test)]
mod tests;
