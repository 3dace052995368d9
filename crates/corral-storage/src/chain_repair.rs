//! Putting a VM's image files back in line with its snapshot tree after a crash.
//!
//! Deleting snapshot `s` rebases, one by one, every image that sits on `s`'s image onto
//! the image below it, and the new tree is recorded only after the last one. A daemon
//! killed in between leaves the old tree in the store while some of those images
//! already name the image below `s` as their backing file. Worse, `qemu-img rebase`
//! rewrites the header before it flushes its cluster tables: killed in that instant, an
//! image names the lower backing file but has lost the table entries of data it copied
//! in, and reads zeros there. Left so, the files do not match the tree, and a later
//! delete of the node below `s`, which rebases only what the tree says sits on it,
//! would remove an image they still read through.
//!
//! [`repair`] points each such image back at the image the tree says it sits on. That
//! rewrites only the header (`qemu-img rebase -u`) and restores exactly what the image
//! read before the delete began: every cluster it has of its own is either its own
//! data from before, or a copy the safe rebase made of what `s`'s chain reads there;
//! everything else reads through `s`'s chain again. It then reclaims the clusters a
//! killed rebase leaked (`qemu-img check -r leaks`).

use std::path::{Path, PathBuf};

use corral_api::{DiskFormat, SnapshotTree};

use crate::snapshot::{self, ChainDisk};
use crate::{qemu_img, StorageError};

/// One image whose backing file did not match the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub image: PathBuf,
    /// The backing file the image named.
    pub found: Option<PathBuf>,
    /// The backing file the tree says it sits on.
    pub expected: PathBuf,
    /// Whether it now names `expected`. Only images whose backing is further down the
    /// expected chain (what an interrupted delete leaves) are repointed; anything else
    /// is not understood and left as it is.
    pub repaired: bool,
}

/// What [`repair`] found and did.
#[derive(Debug, Default)]
pub struct Repair {
    /// Images whose backing file did not match the tree.
    pub mismatches: Vec<Mismatch>,
    /// Images whose leaked clusters could not be reclaimed (they keep wasting space;
    /// an error here may also mean `qemu-img check` found worse).
    pub unreclaimed: Vec<(PathBuf, StorageError)>,
}

/// Checks every image that sits on a snapshot's image (its children's images, and the
/// disk's active image when the VM is on that snapshot), repoints those that an
/// interrupted delete left one or more levels further down, then reclaims leaked
/// clusters. The VM must be stopped.
pub async fn repair(tree: &SnapshotTree, disks: &[ChainDisk]) -> Result<Repair, StorageError> {
    let mut out = Repair::default();
    let images = dependents(tree, disks);
    for (image, expected, format) in &images {
        let found = qemu_img::qcow2_backing(image)?;
        if found.as_deref().is_some_and(|f| same_file(f, expected)) {
            continue;
        }
        let repaired = below(expected, found.as_deref());
        if repaired {
            when_unlocked(|| qemu_img::repoint(image, expected, *format)).await?;
        }
        out.mismatches.push(Mismatch {
            image: image.clone(),
            found,
            expected: expected.clone(),
            repaired,
        });
    }
    for (image, _, _) in images {
        if let Err(e) = when_unlocked(|| qemu_img::reclaim_leaks(&image)).await {
            out.unreclaimed.push((image, e));
        }
    }
    Ok(out)
}

/// Every image that sits directly on a snapshot's image, with that image and its
/// format.
fn dependents(tree: &SnapshotTree, disks: &[ChainDisk]) -> Vec<(PathBuf, PathBuf, DiskFormat)> {
    let mut out = Vec::new();
    for snap in &tree.snapshots {
        for frozen in &snap.disks {
            let mut images = snapshot::children_images(tree, &snap.name, &frozen.disk);
            if tree.current.as_deref() == Some(&snap.name) {
                images.extend(
                    disks
                        .iter()
                        .filter(|d| d.id == frozen.disk)
                        .map(|d| d.active.clone()),
                );
            }
            for image in images {
                out.push((image, PathBuf::from(&frozen.file), frozen.format));
            }
        }
    }
    out
}

/// Whether `candidate` (None: no backing at all) is somewhere in `top`'s backing chain
/// below `top`, which is where a safe rebase that was about to remove `top` from the
/// chain points an image.
fn below(top: &Path, candidate: Option<&Path>) -> bool {
    let Some(candidate) = candidate else {
        return true;
    };
    qemu_img::backing_chain(top)
        .iter()
        .any(|file| same_file(file, candidate))
}

/// Runs a write to an image, waiting up to five seconds for its lock: the killed
/// `qemu-img` that was rebasing it lets go of it only some time after it died.
async fn when_unlocked<F, Fut>(write: F) -> Result<(), StorageError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StorageError>>,
{
    let mut tries = 0;
    loop {
        match write().await {
            Err(StorageError::QemuImg { message, .. })
                if message.contains("Failed to get") && tries < 50 =>
            {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (a.canonicalize(), b.canonicalize()),
            (Ok(x), Ok(y)) if x == y
        )
}
