//! The snapshot engine's view of a running VM: its QEMU, reached over QMP
//! (`corral_qemu::live`), and the memory state files of memory snapshots.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_qemu::live::{self, LiveError, NewOverlay};
use corral_qemu::qmp::Qmp;
use corral_storage::import::Progress;
use corral_storage::snapshot::{LiveChain, SnapshotError};

use super::quiesce::Quiesce;
use crate::error::{ApiError, ApiResult};

/// A running VM's disk chains, as QEMU has them open.
pub struct QemuChain<'a> {
    pub qmp: &'a Qmp,
    /// Freeze the guest's file systems around a snapshot's switch.
    pub quiesce: Option<&'a Quiesce<'a>>,
}

fn live_error(e: LiveError) -> SnapshotError {
    match e {
        LiveError::Cancelled => SnapshotError::Cancelled,
        other => SnapshotError::Live(Box::new(other)),
    }
}

#[async_trait]
impl LiveChain for QemuChain<'_> {
    async fn snapshot(&self, overlays: &[(String, PathBuf)]) -> Result<(), SnapshotError> {
        let overlays: Vec<NewOverlay> = overlays
            .iter()
            .map(|(disk, path)| NewOverlay {
                disk: disk.clone(),
                path: path.clone(),
            })
            .collect();
        let switch = async {
            live::snapshot(self.qmp, &overlays)
                .await
                .map_err(live_error)
        };
        match self.quiesce {
            Some(q) => q.around(switch).await,
            None => switch.await,
        }
    }

    async fn stream(
        &self,
        disk: &str,
        base: Option<&Path>,
        work: &dyn Progress,
    ) -> Result<(), SnapshotError> {
        let report = |p: f32| work.report(p);
        let cancelled = || work.cancelled();
        let result = live::stream(self.qmp, disk, base, &report, &cancelled).await;
        // Whatever fell out of the chain (also after a cancel) is let go of.
        let released = live::release_unused(self.qmp, disk).await;
        if !released.is_empty() {
            tracing::debug!(disk, ?released, "released block nodes after a merge");
        }
        result.map_err(live_error)
    }
}

/// Where memory snapshot `snapshot` of VM `vm` keeps its state.
pub fn memory_file(state_dir: &Path, vm: &str, snapshot: &str) -> PathBuf {
    state_dir
        .join("memory")
        .join(format!("{vm}@{snapshot}.mem"))
}

/// Saves a paused VM's RAM and device state into a new file, lets the guest go on
/// (see [`reactivate`]) and only then makes the file durable, so the guest is not kept
/// paused through the fsync; returns the file's size. On failure the file is removed.
pub async fn save_memory(qmp: &Qmp, file: &Path, was_running: bool) -> ApiResult<u64> {
    let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", file.display()));
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(io)?;
    let saved = live::save_memory(qmp, &out)
        .await
        .map_err(|e| ApiError::Internal(crate::error::chain(&e)));
    // Whether or not the save worked, the guest goes on as it was.
    let resumed = reactivate(qmp, was_running).await;
    let durable = saved.and_then(|()| {
        out.sync_all().map_err(io)?;
        out.metadata().map(|m| m.len()).map_err(io)
    });
    if durable.is_err() || resumed.is_err() {
        let _ = std::fs::remove_file(file);
    }
    resumed?;
    durable
}

/// After a memory save QEMU's block layer is inactive until `cont`. A VM that was
/// running just continues; one that was paused is continued and paused again at once.
pub async fn reactivate(qmp: &Qmp, was_running: bool) -> ApiResult<()> {
    qmp.cont().await?;
    if !was_running {
        qmp.stop().await?;
    }
    Ok(())
}

/// The files a process has open (`/proc/PID/fd`, resolved from the daemon's root, so a
/// chrooted QEMU's files show with their real paths). `None` if they cannot be read.
fn open_files(pid: u32) -> Option<std::collections::HashSet<PathBuf>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect(),
    )
}

/// Disks whose live snapshot was recorded but not yet switched when the daemon died
/// (see `snapshot::create_on`): QEMU does not have the recorded top image open, but does
/// have that image's backing file open. Returns the overlays to put on top.
pub fn unswitched_overlays(pid: u32, spec: &corral_api::VmSpec) -> Vec<NewOverlay> {
    let Some(open) = open_files(pid) else {
        return Vec::new();
    };
    spec.disks
        .iter()
        .filter(|d| !d.read_only && d.volume.is_some())
        .filter_map(|d| {
            let top = PathBuf::from(&d.path);
            if open.contains(&top) {
                return None;
            }
            let backing = corral_storage::qemu_img::qcow2_backing(&top).ok()??;
            open.contains(&backing).then(|| NewOverlay {
                disk: d.id.clone(),
                path: top,
            })
        })
        .collect()
}
