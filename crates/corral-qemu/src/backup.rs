//! Point-in-time copies of a running VM's disks (for clones of running VMs): one QMP
//! `transaction` starts a `blockdev-backup` (sync=full) job per disk at the same instant,
//! so the copies are crash-consistent with each other while the guest keeps running.
//! The targets are image files the daemon made and opened; their descriptors reach the
//! chrooted, unprivileged QEMU through fd sets, as with hot-plug.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::qmp::{Qmp, QmpError};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A target image could not be opened.
    #[error("cannot open backup target {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused a step.
    #[error("QMP {command} failed")]
    Qmp {
        command: &'static str,
        #[source]
        source: QmpError,
    },
    /// A backup job ended with an error.
    #[error("backup of {node} failed: {message}")]
    Job { node: String, message: String },
    /// The disk's guest device was not found.
    #[error("backup source")]
    Source(#[from] crate::live::LiveError),
    /// The caller asked to stop; the jobs were cancelled and the targets detached.
    #[error("backup cancelled")]
    Cancelled,
}

/// One disk to copy: its node in QEMU, and an existing, empty qcow2 image of the same
/// virtual size to copy into.
#[derive(Debug, Clone)]
pub struct BackupTarget {
    pub node: String,
    pub target: PathBuf,
}

/// Names of what a backup adds to QEMU: `<disk>-bk` target nodes (and the opaque tag of
/// their fd sets), `backup-<disk>` jobs.
const TARGET_SUFFIX: &str = "-bk";
const JOB_PREFIX: &str = "backup-";

fn target_node(node: &str) -> String {
    format!("{node}{TARGET_SUFFIX}")
}

fn job_id(node: &str) -> String {
    format!("{JOB_PREFIX}{node}")
}

/// Copies every `targets[i].node` into `targets[i].target`, as of one instant. Calls
/// `progress` with 0–100 and stops when `cancelled` returns true. The targets are always
/// detached from QEMU before returning.
pub async fn backup_full(
    qmp: &Qmp,
    targets: &[BackupTarget],
    progress: &(dyn Fn(f32) + Send + Sync),
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), BackupError> {
    let mut attached: Vec<(String, u32)> = Vec::new();
    let result = async {
        for t in targets {
            let fdset = attach_target(qmp, t).await?;
            attached.push((target_node(&t.node), fdset));
        }
        let mut actions: Vec<Value> = Vec::new();
        for t in targets {
            // The disk's current state is its top node (an overlay after live snapshots).
            let top = crate::live::top_node(qmp, &t.node).await?;
            actions.push(json!({"type": "blockdev-backup", "data": {
                "device": top, "target": target_node(&t.node), "sync": "full", "job-id": job_id(&t.node)}}));
        }
        let mut events = qmp.events();
        qmp.execute_raw("transaction", Some(json!({ "actions": actions })))
            .await
            .map_err(|source| BackupError::Qmp { command: "transaction", source })?;
        wait_jobs(qmp, targets, &mut events, progress, cancelled).await
    }
    .await;
    for (node, fdset) in attached {
        let _ = qmp
            .execute_raw("blockdev-del", Some(json!({ "node-name": node })))
            .await;
        let _ = qmp.remove_fd(fdset, None).await;
    }
    result
}

/// After a daemon restart: the backups a dead daemon had QEMU run are of no use (their
/// targets were staging files, swept at start-up) and their names would collide with
/// the next clone's. Cancels the jobs still running, deletes the target nodes and
/// closes their fd sets. Returns how many jobs were cancelled.
pub async fn clear_leftovers(qmp: &Qmp) -> Result<usize, BackupError> {
    let leftovers: Vec<String> = backup_jobs(qmp).await?;
    for job in &leftovers {
        let _ = qmp
            .execute_raw(
                "block-job-cancel",
                Some(json!({ "device": job, "force": true })),
            )
            .await;
    }
    // A cancelled job lets go of its target only once it is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !leftovers.is_empty()
        && tokio::time::Instant::now() < deadline
        && backup_jobs(qmp)
            .await?
            .iter()
            .any(|j| leftovers.contains(j))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let nodes = qmp
        .execute_raw("query-named-block-nodes", Some(json!({ "flat": true })))
        .await
        .map_err(|source| BackupError::Qmp {
            command: "query-named-block-nodes",
            source,
        })?;
    for node in nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.ends_with(TARGET_SUFFIX))
    {
        let _ = qmp
            .execute_raw("blockdev-del", Some(json!({ "node-name": node })))
            .await;
    }
    let fdsets = qmp
        .query_fdsets()
        .await
        .map_err(|source| BackupError::Qmp {
            command: "query-fdsets",
            source,
        })?;
    for set in fdsets {
        let opaque = |fd: &crate::qmp::FdsetFdInfo| fd.opaque.clone().unwrap_or_default();
        if set.fds.iter().any(|fd| opaque(fd).ends_with(TARGET_SUFFIX)) {
            let _ = qmp.remove_fd(set.fdset_id, None).await;
        }
    }
    Ok(leftovers.len())
}

/// The ids of the backup jobs QEMU is running.
async fn backup_jobs(qmp: &Qmp) -> Result<Vec<String>, BackupError> {
    let jobs = qmp
        .execute_raw("query-block-jobs", None)
        .await
        .map_err(|source| BackupError::Qmp {
            command: "query-block-jobs",
            source,
        })?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["device"].as_str())
        .filter(|id| id.starts_with(JOB_PREFIX))
        .map(str::to_string)
        .collect())
}

async fn attach_target(qmp: &Qmp, t: &BackupTarget) -> Result<u32, BackupError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&t.target)
        .map_err(|source| BackupError::Open {
            path: t.target.clone(),
            source,
        })?;
    let node = target_node(&t.node);
    let info = qmp
        .add_fd(file.as_fd(), None, &node)
        .await
        .map_err(|source| BackupError::Qmp {
            command: "add-fd",
            source,
        })?;
    let add = json!({
        "driver": "qcow2",
        "node-name": node,
        "file": {"driver": "file", "filename": format!("/dev/fdset/{}", info.fdset_id)},
    });
    if let Err(source) = qmp.execute_raw("blockdev-add", Some(add)).await {
        let _ = qmp.remove_fd(info.fdset_id, None).await;
        return Err(BackupError::Qmp {
            command: "blockdev-add",
            source,
        });
    }
    Ok(info.fdset_id)
}

/// Follows the jobs until all have completed, reporting the bytes copied over the total.
async fn wait_jobs(
    qmp: &Qmp,
    targets: &[BackupTarget],
    events: &mut tokio::sync::broadcast::Receiver<crate::qmp::Event>,
    progress: &(dyn Fn(f32) + Send + Sync),
    cancelled: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), BackupError> {
    let mut pending: Vec<String> = targets.iter().map(|t| job_id(&t.node)).collect();
    let mut failure: Option<BackupError> = None;
    let mut cancelling = false;
    while !pending.is_empty() {
        if cancelled() && !cancelling {
            cancelling = true;
            for job in &pending {
                let _ = qmp
                    .execute_raw("block-job-cancel", Some(json!({ "device": job })))
                    .await;
            }
        }
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Ok(ev)) if ev.name == "BLOCK_JOB_COMPLETED" || ev.name == "BLOCK_JOB_CANCELLED" => {
                let job = ev.data["device"].as_str().unwrap_or_default().to_string();
                if let Some(msg) = ev.data["error"].as_str() {
                    failure.get_or_insert(BackupError::Job {
                        node: job.clone(),
                        message: msg.to_string(),
                    });
                }
                pending.retain(|j| *j != job);
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {
                return Err(BackupError::Qmp {
                    command: "block job",
                    source: QmpError::Disconnected,
                });
            }
            _ => report(qmp, progress).await,
        }
    }
    match (failure, cancelling) {
        (Some(e), _) => Err(e),
        (None, true) => Err(BackupError::Cancelled),
        (None, false) => {
            progress(100.0);
            Ok(())
        }
    }
}

async fn report(qmp: &Qmp, progress: &(dyn Fn(f32) + Send + Sync)) {
    let Ok(jobs) = qmp.execute_raw("query-block-jobs", None).await else {
        return;
    };
    let (done, total) = jobs
        .as_array()
        .into_iter()
        .flatten()
        .fold((0u64, 0u64), |(d, t), j| {
            (
                d + j["offset"].as_u64().unwrap_or(0),
                t + j["len"].as_u64().unwrap_or(0),
            )
        });
    if total > 0 {
        progress(done as f32 / total as f32 * 100.0);
    }
}
