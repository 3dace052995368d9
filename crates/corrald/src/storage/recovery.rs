//! Start-up recovery: what a daemon killed in the middle of long work left behind.
//! It runs before the API is served and before VMs are re-attached, so nothing races
//! it. The operations themselves are already marked failed
//! ([`crate::operations::Operations::fail_orphans`]); here their half-done work is
//! either removed (it was never recorded) or brought in line with the store. See the
//! "Crash safety" table in docs/storage.md.

use std::path::Path;
use std::time::Duration;

use corral_api::Operation;
use corral_storage::{chain_repair, import};

use super::snapshots::chain_disks;
use crate::error::ApiResult;
use crate::vm::Manager;

impl Manager {
    /// Cleans up after `interrupted`, the operations a dead daemon was running. A
    /// recovery that fails is logged and told as an event; it does not stop the daemon.
    pub async fn recover_interrupted_work(&self, interrupted: &[Operation]) -> ApiResult<()> {
        if !interrupted.is_empty() {
            // Only long work runs children that write.
            self.wait_for_dying_children().await?;
        }
        self.sweep_interrupted_work()?;
        self.sweep_seeds()?;
        for op in interrupted {
            let outcome = match op.kind.as_str() {
                "snapshot.delete" => self.repair_snapshot_chains(&op.target).await,
                "volume.resize" => self.settle_volume_size(&op.target).await,
                _ => Ok(()),
            };
            if let Err(e) = outcome {
                let message = format!(
                    "cannot recover from the interrupted {} of '{}': {}",
                    op.kind,
                    op.target,
                    e.to_parts().1.error
                );
                tracing::warn!("{message}");
                self.events.emit(None, "recovery", message);
            }
        }
        Ok(())
    }

    /// The dead daemon's `qemu-img` children are killed with it (see
    /// `corral_storage::child`), but not at once: one caught in a flush finishes it
    /// first, and the image locks of a killed one are released only a little after it
    /// exited (while it is a zombie). Until then its image cannot be opened for
    /// writing. Waits until no `qemu-img` works on a file in a pool or is exiting (at
    /// most ten seconds), and gives zombies one second: one whose parent never reaps
    /// it would otherwise hold up every start.
    async fn wait_for_dying_children(&self) -> ApiResult<()> {
        let dirs: Vec<String> = self
            .store
            .list_pools()?
            .into_iter()
            .filter_map(|p| p.path)
            .map(|p| format!("{}/", p.trim_end_matches('/')))
            .collect();
        let started = tokio::time::Instant::now();
        loop {
            let busy = qemu_img_processes_in(&dirs);
            let only_zombies = busy.iter().all(|p| p.zombie);
            if busy.is_empty() || (only_zombies && started.elapsed() > Duration::from_secs(1)) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let pids: Vec<u32> = busy.iter().map(|p| p.pid).collect();
                tracing::warn!(
                    "qemu-img processes {pids:?} still work on pool files; recovery goes on"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Work a previous daemon left half-done (downloads, conversions, OVA unpacking,
    /// clone targets) lives in hidden `.corral-*` files and dirs in the pools; nothing
    /// records them, so they are removed, and said so.
    fn sweep_interrupted_work(&self) -> ApiResult<()> {
        for spec in self.store.list_pools()? {
            let Some(dir) = spec.path.as_deref() else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let hidden = [import::STAGING_PREFIX, import::OVA_WORK_PREFIX];
                if !hidden.iter().any(|prefix| name.starts_with(prefix)) {
                    continue;
                }
                let path = entry.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => self.events.emit(
                        None,
                        "pool",
                        format!(
                            "removed {} left by an interrupted operation",
                            path.display()
                        ),
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot remove {}", path.display()),
                }
            }
        }
        Ok(())
    }

    /// A snapshot delete rebases the images on the snapshot one by one and saves the
    /// new tree after the last: cut short, the tree is the old one while some images
    /// already sit one level lower. They are pointed back, so the files match the tree
    /// again (what they read never changed).
    async fn repair_snapshot_chains(&self, vm: &str) -> ApiResult<()> {
        let Some(record) = self.store.get_vm(vm)? else {
            return Ok(());
        };
        let tree = self.store.snapshot_tree(vm)?;
        // A running VM's tops are QEMU's (a delete merges into them by block job, which
        // QEMU finishes by itself); the snapshot images a delete rebased with qemu-img
        // are ones it no longer reads, and are checked like a stopped VM's.
        let disks = if record.status.state.has_process() {
            Vec::new()
        } else {
            chain_disks(&record)?
        };
        let repair = chain_repair::repair(&tree, &disks).await?;
        for (image, e) in &repair.unreclaimed {
            tracing::warn!(vm, error = %e, "cannot reclaim leaked clusters of {}", image.display());
        }
        for m in repair.mismatches {
            let found = m
                .found
                .map(|f| f.display().to_string())
                .unwrap_or_else(|| "no backing file".into());
            let message = if m.repaired {
                format!(
                    "{} was rebased to {found} by an interrupted snapshot delete; \
                     pointed back to {} as the snapshot tree says",
                    m.image.display(),
                    m.expected.display()
                )
            } else {
                format!(
                    "{} has backing file {found}, but the snapshot tree says {}; left as it is",
                    m.image.display(),
                    m.expected.display()
                )
            };
            tracing::warn!(vm, "{message}");
            self.events.emit(Some(vm), "snapshot", message);
        }
        Ok(())
    }

    /// A volume grows first on disk, then in the store: cut short in between, the file
    /// is larger than its record. Volumes never shrink, so the file is the truth.
    async fn settle_volume_size(&self, name: &str) -> ApiResult<()> {
        let Some(mut volume) = self.store.get_volume(name)? else {
            return Ok(());
        };
        let size = corral_storage::qemu_img::virtual_size(Path::new(&volume.path)).await?;
        if volume.size_bytes != size {
            volume.size_bytes = size;
            self.store.update_volume(&volume)?;
            self.events.emit(
                None,
                "volume",
                format!("volume '{name}' was grown to {size} bytes before corrald restarted"),
            );
        }
        for vm in self.store.vms_using_volume(name)? {
            let Some(mut record) = self.store.get_vm(&vm)? else {
                continue;
            };
            let mut changed = false;
            for d in record
                .spec
                .disks
                .iter_mut()
                .filter(|d| d.volume.as_deref() == Some(name) && d.size_bytes != size)
            {
                d.size_bytes = size;
                changed = true;
            }
            if changed {
                self.store.update_vm_spec(&record.spec)?;
            }
        }
        Ok(())
    }
}

struct QemuImgProcess {
    pid: u32,
    zombie: bool,
}

/// `qemu-img` processes with an argument in one of `dirs`, and exiting ones (whose
/// command line is gone already, so whose files are unknown).
fn qemu_img_processes_in(dirs: &[String]) -> Vec<QemuImgProcess> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state …": comm may hold spaces and parentheses.
            let (head, rest) = stat.rsplit_once(')')?;
            if !head.ends_with("(qemu-img") {
                return None;
            }
            let zombie = rest.trim_start().starts_with(['Z', 'X']);
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = cmdline.is_empty()
                || cmdline
                    .split(|b| *b == 0)
                    .skip(1)
                    .map(String::from_utf8_lossy)
                    .any(|a| dirs.iter().any(|d| a.starts_with(d.as_str())));
            ours.then_some(QemuImgProcess { pid, zombie })
        })
        .collect()
}
