//! Passing file descriptors to QEMU: the `SCM_RIGHTS` write, and typed
//! wrappers for the QMP commands that consume passed descriptors.
//!
//! Corral's QEMU runs chrooted as an unprivileged user, so after start-up it
//! cannot open any image by path. The daemon opens the file itself and hands
//! the descriptor over the QMP socket, like libvirt does. QEMU (7.2,
//! `chardev/char-socket.c`) keeps the descriptors that arrived with the most
//! recent read and hands them to the next command that asks for one (`getfd`,
//! `add-fd`); descriptors arriving later replace (and close) unclaimed ones.
//! Hence the descriptor must travel on the same `sendmsg` as the command line
//! that uses it, and no second descriptor-carrying command may be in flight
//! until the first is answered — [`Qmp::execute_with_fds`] guarantees both.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

use super::{Qmp, QmpError};

/// Most descriptors QEMU accepts with one message: its socket channel reads
/// ancillary data into room for 16 (`SOCKET_MAX_FDS`); more would be truncated
/// by the kernel and silently lost.
pub const MAX_FDS_PER_COMMAND: usize = 16;

/// Reply to `add-fd`: where QEMU filed the descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct AddFdInfo {
    /// The fd set the descriptor was added to; open it as `/dev/fdset/<id>`.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u32,
    /// The descriptor's number inside the QEMU process.
    pub fd: i64,
}

/// One fd set, from `query-fdsets`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetInfo {
    /// The set's id (`/dev/fdset/<id>`). QEMU hands out the lowest free id,
    /// so ids stay small.
    #[serde(rename = "fdset-id")]
    pub fdset_id: u32,
    /// The descriptors in the set (not counting QEMU's internal dups of them).
    pub fds: Vec<FdsetFdInfo>,
}

/// One descriptor in an fd set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdsetFdInfo {
    /// The descriptor's number inside the QEMU process.
    pub fd: i64,
    /// The free-form tag given to `add-fd`, if any.
    #[serde(default)]
    pub opaque: Option<String>,
}

impl Qmp {
    /// Execute `command` with `fds` attached to its line as `SCM_RIGHTS`
    /// ancillary data, and return its `return` value.
    ///
    /// The descriptors go out on the same `sendmsg` as the first bytes of the
    /// line (the rest, if the socket takes only part, follows without them),
    /// because QEMU attaches received descriptors to the command being read.
    /// Descriptor-carrying commands are serialized with each other — the next
    /// one is sent only after the previous one is answered or timed out — since
    /// QEMU keeps just one batch of unclaimed descriptors per connection.
    /// Ordinary commands are not held up. The descriptors are duplicated first,
    /// so the caller keeps its own and the write survives cancellation.
    /// With no descriptors this is [`Qmp::execute_raw`].
    pub async fn execute_with_fds(
        &self,
        command: &str,
        arguments: Option<Value>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Value, QmpError> {
        if fds.is_empty() {
            return self.execute_raw(command, arguments).await;
        }
        if fds.len() > MAX_FDS_PER_COMMAND {
            return Err(QmpError::TooManyFds {
                count: fds.len(),
                max: MAX_FDS_PER_COMMAND,
            });
        }
        let owned = fds
            .iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<OwnedFd>>>()?;
        let _one_at_a_time = self.inner.fd_commands.lock().await;
        self.execute_inner(command, arguments, self.timeout_for(command), owned)
            .await
    }

    /// `add-fd`: pass `fd` into fd set `fdset_id` (a new set, with the lowest
    /// free id, when `None`), tagged with `opaque` so it can be found again
    /// with [`Qmp::query_fdsets`] (e.g. after a daemon restart).
    ///
    /// QEMU later opens `/dev/fdset/<id>` by duplicating a descriptor from the
    /// set whose access mode (`O_RDONLY`/`O_RDWR`) equals the mode it asks for.
    pub async fn add_fd(
        &self,
        fd: BorrowedFd<'_>,
        fdset_id: Option<u32>,
        opaque: &str,
    ) -> Result<AddFdInfo, QmpError> {
        let mut args = json!({ "opaque": opaque });
        if let Some(id) = fdset_id {
            args["fdset-id"] = Value::from(id);
        }
        let value = self.execute_with_fds("add-fd", Some(args), &[fd]).await?;
        decode("add-fd", value)
    }

    /// `remove-fd`: remove descriptor `fd` (QEMU's number, from [`AddFdInfo`]),
    /// or with `None` every descriptor, from fd set `fdset_id`. QEMU closes a
    /// descriptor only once nothing it opened from the set still uses it; the
    /// set disappears with its last descriptor.
    pub async fn remove_fd(&self, fdset_id: u32, fd: Option<i64>) -> Result<(), QmpError> {
        let mut args = json!({ "fdset-id": fdset_id });
        if let Some(fd) = fd {
            args["fd"] = Value::from(fd);
        }
        self.execute_raw("remove-fd", Some(args)).await.map(drop)
    }

    /// `query-fdsets`: every fd set and its descriptors.
    pub async fn query_fdsets(&self) -> Result<Vec<FdsetInfo>, QmpError> {
        self.execute("query-fdsets", None).await
    }

    /// `getfd`: pass `fd` to QEMU under `name`, for commands that take a named
    /// descriptor (`netdev_add` with `fd=`, `migrate` to `fd:`, …).
    pub async fn getfd(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QmpError> {
        self.execute_with_fds("getfd", Some(json!({ "fdname": name })), &[fd])
            .await
            .map(drop)
    }

    /// `closefd`: close a descriptor passed with [`Qmp::getfd`] and not consumed.
    pub async fn closefd(&self, name: &str) -> Result<(), QmpError> {
        self.execute_raw("closefd", Some(json!({ "fdname": name })))
            .await
            .map(drop)
    }
}

fn decode<T: serde::de::DeserializeOwned>(command: &str, value: Value) -> Result<T, QmpError> {
    serde_json::from_value(value).map_err(|source| QmpError::Decode {
        command: command.to_owned(),
        source,
    })
}

/// Write all of `data` with `fds` attached to its first bytes.
///
/// The tokio stream is non-blocking, so `sendmsg` runs inside `try_io` after a
/// writability wait. If the kernel takes only part of `data` (a long line, a
/// full socket buffer), the descriptors have gone with that part and the rest
/// is written as ordinary bytes.
pub(super) async fn write_with_fds(
    writer: &mut OwnedWriteHalf,
    data: &[u8],
    fds: &[OwnedFd],
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = {
        let stream: &UnixStream = writer.as_ref();
        loop {
            stream.writable().await?;
            let attempt = stream.try_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(data)];
                let cmsgs = [ControlMessage::ScmRights(&raw)];
                // MSG_NOSIGNAL: a vanished QEMU is an EPIPE error, never a SIGPIPE.
                sendmsg::<()>(
                    stream.as_raw_fd(),
                    &iov,
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match attempt {
                Ok(0) if !data.is_empty() => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "sendmsg on the QMP socket wrote nothing",
                    ))
                }
                Ok(n) => break n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    };
    if let Some(rest) = data.get(sent..).filter(|rest| !rest.is_empty()) {
        writer.write_all(rest).await?;
    }
    writer.flush().await
}
