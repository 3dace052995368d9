//! The snapshot engine: one on-disk layout for every snapshot of every disk.
//!
//! Each disk is a chain of qcow2 images. A snapshot freezes the disk's current top
//! image (it becomes read-only, named in the snapshot) and puts a new, empty overlay on
//! top for the VM to write to. Reverting puts a fresh overlay on the snapshot's frozen
//! image, so any node can be reverted to and branched from. Deleting a node merges its
//! data into every image that sits directly on it (`qemu-img rebase` in safe mode keeps
//! what each of them reads unchanged) and only then removes its image: no other
//! snapshot, and not the current state, ever loses data, and no image is removed while
//! anything still reads through it. See docs/storage.md.

use std::path::{Path, PathBuf};

use corral_api::{DiskFormat, Snapshot, SnapshotDisk, SnapshotTree};

use crate::{qemu_img, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A snapshot of that name exists.
    #[error("snapshot '{0}' already exists")]
    Exists(String),
    /// No snapshot of that name.
    #[error("snapshot '{0}' not found")]
    NotFound(String),
    /// An image operation failed; nothing was changed.
    #[error("snapshot storage")]
    Storage(#[from] StorageError),
}

/// A VM disk as the engine sees it: its current top image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDisk {
    pub id: String,
    pub active: PathBuf,
    pub format: DiskFormat,
    /// File name prefix for the overlays made for it (its volume's name).
    pub prefix: String,
}

/// A new overlay's path next to `active`: `<prefix>-<random>.qcow2`.
fn overlay_path(disk: &ChainDisk) -> PathBuf {
    let dir = disk.active.parent().unwrap_or(Path::new("/"));
    let tag: u32 = rand_u32();
    dir.join(format!("{}-{tag:08x}.qcow2", disk.prefix))
}

fn rand_u32() -> u32 {
    // Uniqueness, not secrecy: the clock's nanoseconds mixed with the pid.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    nanos.wrapping_mul(2_654_435_761) ^ std::process::id()
}

/// Makes one new overlay per disk on `base(disk)`; all or none.
async fn overlays_on(
    disks: &[ChainDisk],
    base: impl Fn(&ChainDisk) -> Option<(PathBuf, DiskFormat)>,
) -> Result<Vec<Option<PathBuf>>, SnapshotError> {
    let mut made: Vec<Option<PathBuf>> = Vec::new();
    for d in disks {
        let Some((backing, fmt)) = base(d) else {
            made.push(None);
            continue;
        };
        let mut path = overlay_path(d);
        while path.exists() {
            path = overlay_path(d);
        }
        if let Err(e) = qemu_img::create_overlay(&path, &backing, fmt).await {
            for p in made.iter().flatten() {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
        made.push(Some(path));
    }
    Ok(made)
}

/// Takes snapshot `name` of a stopped VM's disks.
pub async fn create(
    tree: &mut SnapshotTree,
    disks: &mut [ChainDisk],
    name: &str,
    description: Option<String>,
    now: u64,
) -> Result<(), SnapshotError> {
    if tree.snapshots.iter().any(|s| s.name == name) {
        return Err(SnapshotError::Exists(name.to_string()));
    }
    let made = overlays_on(disks, |d| Some((d.active.clone(), d.format))).await?;
    let mut frozen = Vec::new();
    for (d, new) in disks.iter_mut().zip(made) {
        let Some(new) = new else { continue };
        frozen.push(SnapshotDisk {
            disk: d.id.clone(),
            file: d.active.display().to_string(),
            format: d.format,
        });
        d.active = new;
        d.format = DiskFormat::Qcow2;
    }
    tree.snapshots.push(Snapshot {
        name: name.to_string(),
        parent: tree.current.clone(),
        created_at: now,
        description,
        disks: frozen,
        nvram: None,
    });
    tree.current = Some(name.to_string());
    Ok(())
}

/// Returns a stopped VM's disks to snapshot `name`. The state since the current
/// snapshot is discarded (as with `virsh snapshot-revert`); every snapshot is kept.
/// Disks that are not in the snapshot (attached later) are left as they are.
///
/// Returns the files that are garbage once the caller has saved the new tree and disks:
/// removing them only then means a crash in between leaves orphans, never a record
/// pointing at a missing file.
pub async fn revert(
    tree: &mut SnapshotTree,
    disks: &mut [ChainDisk],
    name: &str,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let snap = tree
        .snapshots
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SnapshotError::NotFound(name.to_string()))?
        .clone();
    let frozen_of = |d: &ChainDisk| {
        snap.disks
            .iter()
            .find(|f| f.disk == d.id)
            .map(|f| (PathBuf::from(&f.file), f.format))
    };
    let made = overlays_on(disks, frozen_of).await?;
    let mut garbage = Vec::new();
    for (d, new) in disks.iter_mut().zip(made) {
        let Some(new) = new else { continue };
        // The old top is never a snapshot's image (those are frozen below it).
        if !is_frozen(tree, &d.active) {
            garbage.push(d.active.clone());
        }
        d.active = new;
        d.format = DiskFormat::Qcow2;
    }
    tree.current = Some(name.to_string());
    Ok(garbage)
}

fn is_frozen(tree: &SnapshotTree, path: &Path) -> bool {
    tree.snapshots
        .iter()
        .flat_map(|s| &s.disks)
        .any(|f| Path::new(&f.file) == path)
}

/// Deletes snapshot `name` from a stopped VM's tree, merging its data into whatever sits
/// on it. `progress` is told the percentage done. Returns the snapshot's images, garbage
/// once the caller has saved the new tree (see [`revert`]); until then they are still
/// valid backing files, since every merge kept what its image reads.
pub async fn delete(
    tree: &mut SnapshotTree,
    disks: &[ChainDisk],
    name: &str,
    progress: &(dyn Fn(f32) + Send + Sync),
) -> Result<Vec<PathBuf>, SnapshotError> {
    let snap = tree
        .snapshots
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SnapshotError::NotFound(name.to_string()))?
        .clone();
    let children: Vec<&Snapshot> = tree
        .snapshots
        .iter()
        .filter(|s| s.parent.as_deref() == Some(name))
        .collect();
    let is_current = tree.current.as_deref() == Some(name);
    let steps = snap.disks.len().max(1) as f32;
    let mut garbage = Vec::new();
    for (i, frozen) in snap.disks.iter().enumerate() {
        let file = PathBuf::from(&frozen.file);
        // Everything that reads through this image: children's images of the same disk,
        // and the disk's top if the VM sits on this snapshot.
        let mut dependents: Vec<PathBuf> = children
            .iter()
            .flat_map(|c| c.disks.iter().filter(|f| f.disk == frozen.disk))
            .map(|f| PathBuf::from(&f.file))
            .collect();
        if is_current {
            dependents.extend(
                disks
                    .iter()
                    .filter(|d| d.id == frozen.disk)
                    .map(|d| d.active.clone()),
            );
        }
        let below = qemu_img::backing_of(&file).await?;
        for dep in &dependents {
            qemu_img::rebase(dep, below.as_ref().map(|(p, f)| (p.as_path(), *f))).await?;
        }
        // Now nothing reads through it.
        garbage.push(file);
        progress((i + 1) as f32 / steps * 100.0);
    }
    let parent = snap.parent.clone();
    for s in tree
        .snapshots
        .iter_mut()
        .filter(|s| s.parent.as_deref() == Some(name))
    {
        s.parent = parent.clone();
    }
    tree.snapshots.retain(|s| s.name != name);
    if is_current {
        tree.current = parent;
    }
    Ok(garbage)
}

/// Removes files returned by [`revert`] or [`delete`] after the new state was saved.
/// Returns the ones that could not be removed (they become orphans `pool show` reports).
pub fn remove_garbage(files: &[PathBuf]) -> Vec<(PathBuf, StorageError)> {
    files
        .iter()
        .filter_map(|f| qemu_img::remove_volume(f).err().map(|e| (f.clone(), e)))
        .collect()
}

/// Every image file the tree and the disks use (for orphan accounting and clean-up).
pub fn files(tree: &SnapshotTree, disks: &[ChainDisk]) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = tree
        .snapshots
        .iter()
        .flat_map(|s| &s.disks)
        .map(|f| PathBuf::from(&f.file))
        .chain(disks.iter().map(|d| d.active.clone()))
        .collect();
    all.sort();
    all.dedup();
    all
}
