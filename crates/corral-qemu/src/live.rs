//! Snapshots of a running, confined QEMU: new overlays under its disks, merges by block
//! job, and the memory/device state saved to and loaded from a file.
//!
//! QEMU runs chrooted as an unprivileged user, so it can neither open an overlay by path
//! nor reopen a backing image read-write. Hence:
//!
//! - **Overlays** are made by the daemon and passed in by fd (as with hot-plug):
//!   `add-fd` → `blockdev-add` over `/dev/fdset/N` with `backing: null` → one
//!   `transaction` of `blockdev-snapshot` actions, so all disks switch at one instant.
//!   The overlay's node is named after its file (`<disk>-<tag>`, see [`overlay_node`]),
//!   which is also its fd set's tag; the header's backing path was written by
//!   `qemu-img create`, so a later QEMU reopens the chain from the files alone.
//! - **Merges** only ever write the disk's *top* image, which QEMU already has open
//!   read-write: `block-stream` into the top down to a base (or to nothing), with the
//!   base's real path as the new backing string. Images below the top are never reopened.
//! - Nodes that fall out of the chain but were added by the monitor (the command-line
//!   node `<disk>` and every overlay node) stay open until `blockdev-del`;
//!   [`release_unused`] deletes those no longer in use and their fd sets.
//! - **Memory**: `migrate` to a passed fd (`fd:` URI) writes RAM and device state into a
//!   file; a new QEMU started with `-incoming defer` reads it back with `migrate-incoming`.
//!   QEMU 7.2 inactivates the block layer when an outgoing migration completes; `cont`
//!   activates it again, so a VM saved while paused is continued and paused again.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::hotplug::{list_block, BlockNode};
use crate::qmp::{Qmp, QmpError};

/// How often a block job or a migration is polled for progress.
const POLL: Duration = Duration::from_millis(100);
/// Longest a memory save or load may take before it is given up.
const MIGRATION_LIMIT: Duration = Duration::from_secs(600);
/// The `getfd` name of the memory state file.
const MEMORY_FD: &str = "corral-memory";

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The daemon could not open an image or the memory file.
    #[error("cannot open {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused a step.
    #[error("QMP `{command}` failed")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    /// No guest device of that disk, or its chain lacks the image asked for.
    #[error("disk {disk}: {what}")]
    NotFound { disk: String, what: String },
    /// A block job or migration ended in failure.
    #[error("{what} failed: {message}")]
    Failed { what: &'static str, message: String },
    /// The caller asked to stop; the job was cancelled (what it copied is harmless).
    #[error("cancelled")]
    Cancelled,
}

fn qmp_err(command: &'static str) -> impl FnOnce(QmpError) -> LiveError {
    move |source| LiveError::Qmp { command, source }
}

/// A new overlay for one disk: an existing, empty qcow2 file whose header already names
/// the disk's current top image as its backing file.
#[derive(Debug, Clone)]
pub struct NewOverlay {
    pub disk: String,
    pub path: PathBuf,
}

/// The node name of overlay `path` of `disk`: `<disk>-<tag>`, the tag being what follows
/// the last `-` of the file's stem (the snapshot engine names overlays
/// `<volume>-<8 hex digits>.qcow2`). Stable, so a restarted daemon finds the node again.
pub fn overlay_node(disk: &str, path: &Path) -> String {
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let tag = stem.rsplit('-').next().unwrap_or(stem);
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("{disk}-{tag}")
}

/// Whether a node name is one Corral gave to `disk` (the command line's `<disk>` or an
/// overlay's `<disk>-<tag>`); others (`#block…`, `<disk>-bk`) are not ours to delete.
pub(crate) fn owned_by(node: &str, disk: &str) -> bool {
    node == disk
        || node
            .strip_prefix(disk)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|tag| tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The node at the top of `disk`'s chain: the one its guest device `<disk>-dev` uses.
pub async fn top_node(qmp: &Qmp, disk: &str) -> Result<String, LiveError> {
    #[derive(Deserialize)]
    struct Info {
        qdev: Option<String>,
        inserted: Option<Inserted>,
    }
    #[derive(Deserialize)]
    struct Inserted {
        #[serde(rename = "node-name")]
        node_name: String,
    }
    let blocks: Vec<Info> = qmp
        .execute("query-block", None)
        .await
        .map_err(qmp_err("query-block"))?;
    let device = format!("{disk}-dev");
    let peripheral = format!("/machine/peripheral/{device}/");
    blocks
        .into_iter()
        .filter(|b| {
            b.qdev
                .as_deref()
                .is_some_and(|q| q == device || q.starts_with(&peripheral))
        })
        .find_map(|b| b.inserted.map(|i| i.node_name))
        .ok_or_else(|| LiveError::NotFound {
            disk: disk.to_string(),
            what: format!("no guest device {device} with a medium"),
        })
}

/// Puts every overlay on top of its disk, all in one `transaction`. On failure the added
/// nodes and fd sets are removed again and the disks are as they were.
pub async fn snapshot(qmp: &Qmp, overlays: &[NewOverlay]) -> Result<(), LiveError> {
    let mut actions = Vec::new();
    let mut added: Vec<(String, u32)> = Vec::new();
    let result = async {
        for o in overlays {
            let top = top_node(qmp, &o.disk).await?;
            let node = overlay_node(&o.disk, &o.path);
            let fdset = add_overlay(qmp, &node, &o.path).await?;
            added.push((node.clone(), fdset));
            actions.push(json!({"type": "blockdev-snapshot",
                "data": {"node": top, "overlay": node}}));
        }
        qmp.execute_raw("transaction", Some(json!({ "actions": actions })))
            .await
            .map_err(qmp_err("transaction"))
    }
    .await;
    if result.is_err() {
        for (node, fdset) in &added {
            let _ = qmp
                .execute_raw("blockdev-del", Some(json!({ "node-name": node })))
                .await;
            let _ = qmp.remove_fd(*fdset, None).await;
        }
    }
    result.map(drop)
}

/// Opens `path` read-write and read-only (a later snapshot reopens it read-only), passes
/// both in as one fd set, and adds a qcow2 node on it with no backing
/// (`blockdev-snapshot` links the backing). Returns the fd set's id.
async fn add_overlay(qmp: &Qmp, node: &str, path: &Path) -> Result<u32, LiveError> {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| LiveError::Open {
                path: path.to_path_buf(),
                source,
            })
    };
    let (rw, ro) = (open(true)?, open(false)?);
    let info = qmp
        .add_fd(rw.as_fd(), None, node)
        .await
        .map_err(qmp_err("add-fd"))?;
    if let Err(e) = qmp.add_fd(ro.as_fd(), Some(info.fdset_id), node).await {
        let _ = qmp.remove_fd(info.fdset_id, None).await;
        return Err(qmp_err("add-fd")(e));
    }
    let add = json!({
        "node-name": node,
        "driver": "qcow2",
        "discard": "unmap",
        "backing": null,
        "read-only": false,
        // Explicit, as on the command line: without it QEMU 7.2, once this overlay has
        // been frozen (reopened read-only), fails the `cont` after a memory save with
        // "Failed to get shared 'write' lock" (tests/live_snapshots.rs takes that path).
        "file": {
            "driver": "file",
            "filename": format!("/dev/fdset/{}", info.fdset_id),
            "read-only": false,
        },
    });
    if let Err(e) = qmp.execute_raw("blockdev-add", Some(add)).await {
        let _ = qmp.remove_fd(info.fdset_id, None).await;
        return Err(qmp_err("blockdev-add")(e));
    }
    Ok(info.fdset_id)
}

/// The node in `disk`'s chain that reads image `path`: an overlay node named after it,
/// or a node QEMU opened by that path (the command line's, or one opened from a header).
async fn node_of(qmp: &Qmp, disk: &str, path: &Path) -> Result<String, LiveError> {
    let nodes = list_block(qmp)
        .await
        .map_err(qmp_err("query-named-block-nodes"))?;
    let by_name = overlay_node(disk, path);
    let is_format = |n: &BlockNode| n.driver == "qcow2" || n.driver == "raw";
    nodes
        .iter()
        .find(|n| n.node_name == by_name)
        .or_else(|| {
            nodes
                .iter()
                .find(|n| is_format(n) && Path::new(&n.file) == path)
        })
        .map(|n| n.node_name.clone())
        .ok_or_else(|| LiveError::NotFound {
            disk: disk.to_string(),
            what: format!("no block node reads {}", path.display()),
        })
}

/// Merges into `disk`'s top image everything of its chain above `base` (all of it when
/// `base` is `None`), and makes `base` the top's backing file. What the guest reads does
/// not change. Reports 0–100 to `progress`; stops early when `cancelled` says so.
pub async fn stream(
    qmp: &Qmp,
    disk: &str,
    base: Option<&Path>,
    progress: &(dyn Fn(f32) + Send + Sync),
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), LiveError> {
    let job = format!("stream-{disk}");
    // A daemon killed mid-merge leaves its job running in QEMU; it merges correctly on
    // its own, and a second one on the same device is refused: let it finish first.
    wait_for_job_gone(qmp, &job, progress, cancelled).await?;
    let top = top_node(qmp, disk).await?;
    let mut args = json!({ "job-id": job, "device": top });
    if let Some(base) = base {
        args["base-node"] = Value::from(node_of(qmp, disk, base).await?);
        // The header gets the real path, not the /dev/fdset name QEMU knows it by.
        args["backing-file"] = Value::from(base.display().to_string());
    }
    let mut events = qmp.events();
    qmp.execute_raw("block-stream", Some(args))
        .await
        .map_err(qmp_err("block-stream"))?;
    let mut cancelling = false;
    loop {
        if cancelled() && !cancelling {
            cancelling = true;
            let _ = qmp
                .execute_raw("block-job-cancel", Some(json!({ "device": job })))
                .await;
        }
        match tokio::time::timeout(POLL, events.recv()).await {
            Ok(Ok(ev)) if ev.data["device"].as_str() == Some(job.as_str()) => {
                if ev.name == "BLOCK_JOB_CANCELLED" {
                    return Err(LiveError::Cancelled);
                }
                if ev.name == "BLOCK_JOB_COMPLETED" {
                    return match ev.data["error"].as_str() {
                        Some(message) => Err(LiveError::Failed {
                            what: "block-stream",
                            message: message.to_string(),
                        }),
                        None => {
                            progress(100.0);
                            Ok(())
                        }
                    };
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                return Err(qmp_err("block-stream")(QmpError::Disconnected))
            }
            _ => report_job(qmp, &job, progress).await,
        }
    }
}

async fn wait_for_job_gone(
    qmp: &Qmp,
    job: &str,
    progress: &(dyn Fn(f32) + Send + Sync),
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), LiveError> {
    loop {
        let jobs = qmp
            .execute_raw("query-block-jobs", None)
            .await
            .map_err(qmp_err("query-block-jobs"))?;
        let running = jobs
            .as_array()
            .into_iter()
            .flatten()
            .any(|j| j["device"].as_str() == Some(job));
        if !running {
            return Ok(());
        }
        if cancelled() {
            return Err(LiveError::Cancelled);
        }
        report_job(qmp, job, progress).await;
        tokio::time::sleep(POLL).await;
    }
}

async fn report_job(qmp: &Qmp, job: &str, progress: &(dyn Fn(f32) + Send + Sync)) {
    let Ok(jobs) = qmp.execute_raw("query-block-jobs", None).await else {
        return;
    };
    let found = jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| j["device"].as_str() == Some(job));
    if let Some(j) = found {
        let (done, len) = (j["offset"].as_u64(), j["len"].as_u64());
        if let (Some(done), Some(len)) = (done, len.filter(|l| *l > 0)) {
            progress(done as f32 / len as f32 * 100.0);
        }
    }
}

/// Deletes `disk`'s monitor-added nodes that nothing uses any more (they fell out of the
/// chain in a merge, or the device went away), then their fd sets, so QEMU lets go of
/// their files. Nodes still in use are refused by QEMU and kept. Returns the node names
/// deleted. Best effort: a failure leaves an open descriptor, not a wrong disk.
pub async fn release_unused(qmp: &Qmp, disk: &str) -> Vec<String> {
    let mut deleted = Vec::new();
    // Deleting a node may free the one below it: repeat until nothing more goes.
    loop {
        let Ok(nodes) = list_block(qmp).await else {
            break;
        };
        let mut progressed = false;
        for n in nodes.iter().filter(|n| owned_by(&n.node_name, disk)) {
            let del = json!({ "node-name": n.node_name });
            if qmp.execute_raw("blockdev-del", Some(del)).await.is_ok() {
                deleted.push(n.node_name.clone());
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    if let Ok(sets) = qmp.query_fdsets().await {
        for set in sets {
            let tagged = |fd: &crate::qmp::FdsetFdInfo| {
                fd.opaque
                    .as_deref()
                    .is_some_and(|o| deleted.iter().any(|d| d == o))
            };
            if set.fds.iter().any(tagged) {
                let _ = qmp.remove_fd(set.fdset_id, None).await;
            }
        }
    }
    deleted
}

/// Writes the paused VM's RAM and device state into `file` (an empty regular file the
/// daemon opened for writing). The VM must be paused, so the state matches the disks
/// as of the same instant. Afterwards QEMU is in `postmigrate` with its block layer
/// inactive: the caller continues it (see the module docs).
pub async fn save_memory(qmp: &Qmp, file: &std::fs::File) -> Result<(), LiveError> {
    // Paused, the guest dirties nothing: no throttling needed to converge.
    qmp.execute_raw(
        "migrate-set-parameters",
        Some(json!({ "max-bandwidth": i64::MAX })),
    )
    .await
    .map_err(qmp_err("migrate-set-parameters"))?;
    qmp.getfd(MEMORY_FD, file.as_fd())
        .await
        .map_err(qmp_err("getfd"))?;
    let uri = format!("fd:{MEMORY_FD}");
    if let Err(e) = qmp
        .execute_raw("migrate", Some(json!({ "uri": uri })))
        .await
    {
        let _ = qmp.closefd(MEMORY_FD).await;
        return Err(qmp_err("migrate")(e));
    }
    wait_migration(qmp, "saving memory").await
}

/// Reads RAM and device state from `file` into a QEMU started with `-incoming defer`.
/// It stays paused afterwards; `cont` runs it.
pub async fn load_memory(qmp: &Qmp, file: &std::fs::File) -> Result<(), LiveError> {
    qmp.getfd(MEMORY_FD, file.as_fd())
        .await
        .map_err(qmp_err("getfd"))?;
    let uri = format!("fd:{MEMORY_FD}");
    qmp.execute_raw("migrate-incoming", Some(json!({ "uri": uri })))
        .await
        .map_err(qmp_err("migrate-incoming"))?;
    wait_migration(qmp, "loading memory").await
}

async fn wait_migration(qmp: &Qmp, what: &'static str) -> Result<(), LiveError> {
    #[derive(Deserialize)]
    struct Status {
        status: Option<String>,
        #[serde(rename = "error-desc")]
        error_desc: Option<String>,
    }
    let deadline = tokio::time::Instant::now() + MIGRATION_LIMIT;
    loop {
        let s: Status = qmp
            .execute("query-migrate", None)
            .await
            .map_err(qmp_err("query-migrate"))?;
        match s.status.as_deref() {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                return Err(LiveError::Failed {
                    what,
                    message: s.error_desc.unwrap_or_else(|| "no reason given".into()),
                })
            }
            _ if tokio::time::Instant::now() > deadline => {
                let _ = qmp.execute_raw("migrate_cancel", None).await;
                return Err(LiveError::Failed {
                    what,
                    message: format!("not done after {} s", MIGRATION_LIMIT.as_secs()),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_nodes_are_named_after_their_file_tag() {
        let p = Path::new("/pool/vm1-disk0-1a2b3c4d.qcow2");
        assert_eq!(overlay_node("disk0", p), "disk0-1a2b3c4d");
        assert!(owned_by("disk0-1a2b3c4d", "disk0"));
        assert!(owned_by("disk0", "disk0"));
        assert!(!owned_by("disk0-bk", "disk0"));
        assert!(!owned_by("disk01-1a2b3c4d", "disk0"));
        assert!(!owned_by("#block123", "disk0"));
    }
}
