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
//!
//! A running VM has its disks' chains open. The engine then asks it, through
//! [`LiveChain`], to switch onto new overlays (all disks at one instant) and to merge
//! into its top image whatever of the chain is being deleted; everything it touches with
//! `qemu-img` is an image the VM does not have open.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_api::{DiskFormat, Snapshot, SnapshotDisk, SnapshotTree};

use crate::import::Progress;
use crate::{qemu_img, StorageError};

/// A running VM's side of a snapshot operation (implemented by the daemon over QMP).
#[async_trait]
pub trait LiveChain: Send + Sync {
    /// Puts each new overlay `(disk id, file)` on top of its disk, all at one instant;
    /// the files already name the disks' current tops as their backing.
    async fn snapshot(&self, overlays: &[(String, PathBuf)]) -> Result<(), SnapshotError>;

    /// Merges into disk `disk`'s top image all of its chain above `base` (the whole chain
    /// when `None`), so the top is based on `base`, and lets go of the images that fell
    /// out of the chain. What the guest reads does not change.
    async fn stream(
        &self,
        disk: &str,
        base: Option<&Path>,
        work: &dyn Progress,
    ) -> Result<(), SnapshotError>;
}

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
    /// The running VM refused a step; what was done before it has been undone, or (for
    /// merges) left in a state that reads the same.
    #[error("running VM")]
    Live(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The caller could not record an intermediate state ([`Journal`]); nothing was
    /// changed after it.
    #[error("recording the snapshot tree")]
    Record(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The caller asked to stop. A merge cut short leaves every image reading the same.
    #[error("cancelled")]
    Cancelled,
    /// A safety check found an image still reading through one about to be removed.
    #[error("{} still reads through {}; it is kept", dependent.display(), image.display())]
    StillNeeded { image: PathBuf, dependent: PathBuf },
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
        // Made without opening the backing image, which a running VM holds locked.
        let size = match fmt {
            DiskFormat::Qcow2 => qemu_img::qcow2_virtual_size(&backing),
            DiskFormat::Raw => qemu_img::virtual_size(&backing).await,
        };
        let made_one = match size {
            Ok(size) => qemu_img::create_overlay_sized(&path, &backing, fmt, size).await,
            Err(e) => Err(e),
        };
        if let Err(e) = made_one {
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
    create_on(tree, disks, name, description, now, None, &|_, _| Ok(())).await
}

/// Takes snapshot `name` of the disks, of a running VM when `live` is given: the new
/// overlays are put under it in one transaction, crash-consistent across disks.
///
/// For a running VM the new tree and disks are recorded through `journal` *before* the
/// VM switches, so that a daemon dying in between never leaves a VM writing into an
/// overlay no record knows (a restart would open the old top and miss those writes).
/// Recorded first, the worst case is the reverse: the record names the new, empty
/// overlay while the VM still writes below it, which reads the same data; the daemon
/// finishes the switch when it re-attaches. If the VM refuses, the old state is recorded
/// again and the overlays removed.
pub async fn create_on(
    tree: &mut SnapshotTree,
    disks: &mut [ChainDisk],
    name: &str,
    description: Option<String>,
    now: u64,
    live: Option<&dyn LiveChain>,
    journal: Journal<'_>,
) -> Result<(), SnapshotError> {
    if tree.snapshots.iter().any(|s| s.name == name) {
        return Err(SnapshotError::Exists(name.to_string()));
    }
    let made = overlays_on(disks, |d| Some((d.active.clone(), d.format))).await?;
    let (old_tree, old_disks) = (tree.clone(), disks.to_vec());
    let mut pairs: Vec<(String, PathBuf)> = Vec::new();
    let mut frozen = Vec::new();
    for (d, new) in disks.iter_mut().zip(made) {
        let Some(new) = new else { continue };
        frozen.push(SnapshotDisk {
            disk: d.id.clone(),
            file: d.active.display().to_string(),
            format: d.format,
        });
        pairs.push((d.id.clone(), new.clone()));
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
        memory: None,
        quiesced: false,
    });
    tree.current = Some(name.to_string());
    let Some(live) = live else {
        return Ok(());
    };
    let undo = |tree: &mut SnapshotTree, disks: &mut [ChainDisk]| {
        *tree = old_tree.clone();
        disks.clone_from_slice(&old_disks);
    };
    let remove_overlays = || {
        for (_, file) in &pairs {
            let _ = std::fs::remove_file(file);
        }
    };
    if let Err(e) = journal(tree, disks) {
        undo(tree, disks);
        remove_overlays();
        return Err(e);
    }
    if let Err(e) = live.snapshot(&pairs).await {
        undo(tree, disks);
        // Only once no record names them may the overlays go.
        if journal(tree, disks).is_ok() {
            remove_overlays();
        }
        return Err(e);
    }
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
    disks: &mut [ChainDisk],
    name: &str,
    progress: &(dyn Fn(f32) + Send + Sync),
) -> Result<Vec<PathBuf>, SnapshotError> {
    struct Report<'a>(&'a (dyn Fn(f32) + Send + Sync));
    impl Progress for Report<'_> {
        fn report(&self, percent: f32) {
            (self.0)(percent)
        }
        fn cancelled(&self) -> bool {
            false
        }
    }
    delete_on(tree, disks, name, None, &Report(progress), &|_, _| Ok(())).await
}

/// Records an intermediate state of a delete (the tree and disks as they then are) before
/// the engine goes on; see [`delete_on`].
pub type Journal<'a> =
    &'a (dyn Fn(&SnapshotTree, &[ChainDisk]) -> Result<(), SnapshotError> + Send + Sync);

/// [`delete`] for a stopped VM (`live` is `None`) or a running one, cancellable.
///
/// For each disk of the snapshot, with `S` its image and `B` the image below `S`:
/// if the running VM reads through `S`, it merges everything above `B` into its top
/// image first ([`LiveChain::stream`]); then every image still based directly on `S`
/// (children's images, a stopped VM's top) is rebased onto `B` with `qemu-img` in safe
/// mode. Both keep what each image reads, so stopping in the middle (cancel, crash)
/// leaves a consistent tree, and repeating the delete finishes it.
///
/// One shortcut, for a stopped VM that sits on `S` with nothing else reading `S`
/// (deleting the only snapshot after trying something): when the VM's top image holds
/// less data than `S`, the top is committed into `S` instead and `S`'s file becomes the
/// top, which copies the small image rather than the large one. The tree without `S` is
/// first recorded through `journal`, because the commit changes `S`'s content: from then
/// on only the top reads `S`, and it reads the same before, during and after.
pub async fn delete_on(
    tree: &mut SnapshotTree,
    disks: &mut [ChainDisk],
    name: &str,
    live: Option<&dyn LiveChain>,
    work: &dyn Progress,
    journal: Journal<'_>,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let snap = tree
        .snapshots
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| SnapshotError::NotFound(name.to_string()))?
        .clone();
    if live.is_none() && commit_is_cheaper(tree, disks, &snap).await? {
        return commit_top_into(tree, disks, &snap, work, journal).await;
    }
    let steps = snap.disks.len().max(1);
    let mut garbage = Vec::new();
    for (i, frozen) in snap.disks.iter().enumerate() {
        let step = Step {
            work,
            index: i,
            steps,
        };
        let file = PathBuf::from(&frozen.file);
        let below = qemu_img::backing_of(&file).await?;
        let active = disks.iter().find(|d| d.id == frozen.disk);
        if let (Some(live), Some(active)) = (live, active) {
            if qemu_img::chain(&active.active).await?.contains(&file) {
                let base = below.as_ref().map(|(p, _)| p.as_path());
                live.stream(&frozen.disk, base, &step).await?;
            }
        }
        // Everything that may read through this image: children's images of the same
        // disk, and the disk's top (a running VM's no longer does, after the stream).
        let mut candidates = children_images(tree, name, &frozen.disk);
        candidates.extend(active.map(|d| d.active.clone()));
        for dep in candidates {
            if step.cancelled() {
                return Err(SnapshotError::Cancelled);
            }
            if !reads_directly(&dep, &file).await? {
                continue;
            }
            let new_backing = below.as_ref().map(|(p, f)| (p.as_path(), *f));
            // Not cut short: a rebase killed after it rewrote the header but before it
            // flushed its tables loses what it copied. Cancelling stops between images.
            qemu_img::rebase(&dep, new_backing).await?;
            if reads_directly(&dep, &file).await? {
                return Err(SnapshotError::StillNeeded {
                    image: file,
                    dependent: dep,
                });
            }
        }
        garbage.push(file);
        step.report(100.0);
    }
    tree_without(tree, &snap);
    Ok(garbage)
}

/// Whether `snap` is the shortcut's case (see [`delete_on`]): no child snapshots, the
/// VM on it, each of its disks' tops based directly on it and smaller than its image.
async fn commit_is_cheaper(
    tree: &SnapshotTree,
    disks: &[ChainDisk],
    snap: &Snapshot,
) -> Result<bool, SnapshotError> {
    let has_children = tree
        .snapshots
        .iter()
        .any(|s| s.parent.as_deref() == Some(snap.name.as_str()));
    if has_children || tree.current.as_deref() != Some(snap.name.as_str()) {
        return Ok(false);
    }
    for frozen in &snap.disks {
        let file = Path::new(&frozen.file);
        let Some(top) = disks.iter().find(|d| d.id == frozen.disk) else {
            return Ok(false);
        };
        if top.format != DiskFormat::Qcow2 || !reads_directly(&top.active, file).await? {
            return Ok(false);
        }
        if allocated(&top.active) >= allocated(file) {
            return Ok(false);
        }
    }
    Ok(!snap.disks.is_empty())
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(u64::MAX)
}

/// The shortcut: record the tree without `snap`, then commit each disk's top into the
/// snapshot's image, which becomes the top. Returns the old tops, garbage once the
/// caller has saved the disks. Not cancellable: once recorded, the snapshot is gone, and
/// the commit is the small copy.
async fn commit_top_into(
    tree: &mut SnapshotTree,
    disks: &mut [ChainDisk],
    snap: &Snapshot,
    work: &dyn Progress,
    journal: Journal<'_>,
) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut without = tree.clone();
    tree_without(&mut without, snap);
    journal(&without, disks)?;
    *tree = without;
    let mut garbage = Vec::new();
    for (i, frozen) in snap.disks.iter().enumerate() {
        let Some(top) = disks.iter_mut().find(|d| d.id == frozen.disk) else {
            continue;
        };
        qemu_img::commit(&top.active).await?;
        garbage.push(std::mem::replace(
            &mut top.active,
            PathBuf::from(&frozen.file),
        ));
        top.format = frozen.format;
        work.report((i + 1) as f32 / snap.disks.len() as f32 * 100.0);
    }
    Ok(garbage)
}

/// The images of disk `disk` in the snapshots whose parent is `parent`.
pub(crate) fn children_images(tree: &SnapshotTree, parent: &str, disk: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for child in tree
        .snapshots
        .iter()
        .filter(|s| s.parent.as_deref() == Some(parent))
    {
        for f in child.disks.iter().filter(|f| f.disk == disk) {
            out.push(PathBuf::from(&f.file));
        }
    }
    out
}

/// Whether `image`'s backing file is `base`.
async fn reads_directly(image: &Path, base: &Path) -> Result<bool, StorageError> {
    Ok(qemu_img::qcow2_backing(image)?.is_some_and(|b| b == base))
}

/// Removes `snap` from the tree: its children move up to its parent, and so does the
/// VM's position if it was on it.
fn tree_without(tree: &mut SnapshotTree, snap: &Snapshot) {
    for s in tree
        .snapshots
        .iter_mut()
        .filter(|s| s.parent.as_deref() == Some(snap.name.as_str()))
    {
        s.parent = snap.parent.clone();
    }
    tree.snapshots.retain(|s| s.name != snap.name);
    if tree.current.as_deref() == Some(snap.name.as_str()) {
        tree.current = snap.parent.clone();
    }
}

/// Progress of one disk's step within a delete of several.
struct Step<'a> {
    work: &'a dyn Progress,
    index: usize,
    steps: usize,
}

impl Progress for Step<'_> {
    fn report(&self, percent: f32) {
        let done = self.index as f32 + percent.clamp(0.0, 100.0) / 100.0;
        self.work.report(done / self.steps as f32 * 100.0);
    }
    fn cancelled(&self) -> bool {
        self.work.cancelled()
    }
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
