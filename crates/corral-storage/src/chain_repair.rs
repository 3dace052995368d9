//! Putting a VM's image files back in line with its snapshot tree after a crash.
//!
//! Deleting snapshot `s` rebases, one by one, every image that sits on `s`'s image onto
//! the image below it, and the new tree is recorded only after the last one. A daemon
//! killed in between leaves the old tree in the store while some of those images
//! already name the image below `s` as their backing file. Each still reads exactly
//! what it read (a safe rebase first copies in every cluster where the two backings
//! differ), but the files no longer match the tree: a later delete of the node below
//! `s`, which rebases only what the tree says sits on it, would then remove an image
//! they still read through.
//!
//! [`repair`] points each such image back at the image the tree says it sits on. That
//! rewrites only the image's header (`qemu-img rebase -u`) and no data: every cluster
//! where the two backings differ was copied into the image by the safe rebase, so
//! wherever it has no data of its own, both backings read the same.

use std::path::{Path, PathBuf};

use corral_api::{DiskFormat, SnapshotTree};

use crate::snapshot::ChainDisk;
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

/// Checks every image that sits on a snapshot's image (its children's images, and the
/// disk's active image when the VM is on that snapshot) and repoints those that an
/// interrupted delete left one or more levels further down. The VM must be stopped.
pub async fn repair(
    tree: &SnapshotTree,
    disks: &[ChainDisk],
) -> Result<Vec<Mismatch>, StorageError> {
    let mut out = Vec::new();
    for snap in &tree.snapshots {
        for frozen in &snap.disks {
            let expected = PathBuf::from(&frozen.file);
            let children = tree
                .snapshots
                .iter()
                .filter(|c| c.parent.as_deref() == Some(snap.name.as_str()))
                .flat_map(|c| c.disks.iter().filter(|f| f.disk == frozen.disk))
                .map(|f| PathBuf::from(&f.file));
            let active = disks
                .iter()
                .filter(|d| d.id == frozen.disk && tree.current.as_deref() == Some(&snap.name))
                .map(|d| d.active.clone());
            for image in children.chain(active) {
                let found = qemu_img::backing_of(&image).await?.map(|(p, _)| p);
                if found.as_deref().is_some_and(|f| same_file(f, &expected)) {
                    continue;
                }
                let repaired = if below(&expected, found.as_deref()).await? {
                    repoint_when_unlocked(&image, &expected, frozen.format).await?;
                    true
                } else {
                    false
                };
                out.push(Mismatch {
                    image,
                    found,
                    expected: expected.clone(),
                    repaired,
                });
            }
        }
    }
    Ok(out)
}

/// Whether `candidate` (None: no backing at all) is somewhere in `top`'s backing chain
/// below `top`, which is where a safe rebase that was about to remove `top` from the
/// chain points an image.
async fn below(top: &Path, candidate: Option<&Path>) -> Result<bool, StorageError> {
    let Some(candidate) = candidate else {
        return Ok(true);
    };
    let mut seen = vec![top.to_path_buf()];
    let mut next = qemu_img::backing_of(top).await?;
    while let Some((file, _)) = next {
        if same_file(&file, candidate) {
            return Ok(true);
        }
        if seen.iter().any(|s| same_file(s, &file)) {
            return Ok(false);
        }
        seen.push(file.clone());
        next = qemu_img::backing_of(&file).await?;
    }
    Ok(false)
}

/// Repoints `image`, waiting up to five seconds for its lock: the killed `qemu-img`
/// that was rebasing it lets go of it only some time after it died.
async fn repoint_when_unlocked(
    image: &Path,
    backing: &Path,
    format: DiskFormat,
) -> Result<(), StorageError> {
    let mut tries = 0;
    loop {
        match qemu_img::repoint(image, backing, format).await {
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
