//! Backing chains of copied disks. A disk whose top image reads through others (its
//! snapshots' frozen images, the volume's base image, the user's `--image` file) keeps
//! that shape at the destination: the images below the top are read-only while the VM
//! runs, so they are sent whole first (skipped where the destination already has the
//! same bytes), and only the top is mirrored. Files in a pool go to the same place in
//! the destination's pool of that name (their qcow2 headers repointed if that pool lies
//! elsewhere); files outside every pool (the user's) must already be there.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use corral_api::{ChainFile, DiskFormat, PoolSpec};
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ApiResult};

/// The files below `top` (oldest first) of disk `disk`, each with the pool it lies in.
pub fn files_below(disk: &str, top: &Path, pools: &[PoolSpec]) -> Vec<ChainFile> {
    let mut files: Vec<ChainFile> = corral_storage::qemu_img::backing_chain(top)
        .into_iter()
        .map(|path| ChainFile {
            disk: disk.to_string(),
            pool: pool_of(&path, pools).map(|p| p.name.clone()),
            size_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            format: format_of(&path),
            path: path.display().to_string(),
            sha256: String::new(),
        })
        .collect();
    files.reverse();
    files
}

/// The pool whose directory holds `path`.
pub fn pool_of<'a>(path: &Path, pools: &'a [PoolSpec]) -> Option<&'a PoolSpec> {
    pools.iter().find(|p| {
        p.path
            .as_deref()
            .is_some_and(|dir| path.starts_with(dir) && path != Path::new(dir))
    })
}

/// Where a source file lies at the destination: the same place relative to the pool of
/// its name there; a file outside pools stays where it is.
pub fn dest_path(
    path: &str,
    pool: Option<&str>,
    source_pools: &[PoolSpec],
    dest_pools: &BTreeMap<String, PoolSpec>,
) -> ApiResult<PathBuf> {
    let Some(pool) = pool else {
        return Ok(PathBuf::from(path));
    };
    let missing = || ApiError::Internal(format!("pool {pool} is not on both hosts"));
    let from = source_pools
        .iter()
        .find(|p| p.name == pool)
        .and_then(|p| p.path.clone())
        .ok_or_else(missing)?;
    let to = dest_pools
        .get(pool)
        .and_then(|p| p.path.clone())
        .ok_or_else(missing)?;
    let rel = Path::new(path)
        .strip_prefix(&from)
        .map_err(|_| ApiError::Internal(format!("{path} is not in pool {pool}")))?;
    Ok(Path::new(&to).join(rel))
}

/// SHA-256 of a file (lowercase hex), read in MiB chunks on a blocking thread.
pub async fn sha256_of(path: PathBuf) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let io = |e: std::io::Error| ApiError::Internal(format!("{}: {e}", path.display()));
        let mut f = std::fs::File::open(&path).map_err(io)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        Ok(hex(&hash.finalize()))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A qcow2 image's format as its header says (raw when it is not qcow2).
pub fn format_of(path: &Path) -> DiskFormat {
    let mut magic = [0u8; 4];
    let qcow2 = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"QFI\xfb";
    if qcow2 {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool(name: &str, path: &str) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            driver: "dir".into(),
            path: Some(path.into()),
            volume_group: None,
            thin_pool: None,
            shared: false,
        }
    }

    #[test]
    fn files_keep_their_place_in_a_pool_of_the_same_name() {
        let source = [pool("default", "/a/pools/default")];
        let dest = BTreeMap::from([("default".to_string(), pool("default", "/b/pool"))]);
        let p = dest_path(
            "/a/pools/default/web-1a2b.qcow2",
            Some("default"),
            &source,
            &dest,
        );
        assert_eq!(p.unwrap(), PathBuf::from("/b/pool/web-1a2b.qcow2"));
        let user = dest_path("/srv/debian.qcow2", None, &source, &dest).unwrap();
        assert_eq!(user, PathBuf::from("/srv/debian.qcow2"));
        assert!(dest_path("/x/y.qcow2", Some("default"), &source, &dest).is_err());
        assert!(dest_path("/a/pools/default/y", Some("fast"), &source, &dest).is_err());
    }

    #[test]
    fn a_pool_holds_what_lies_under_its_directory() {
        let pools = [pool("default", "/a/pools/default"), pool("fast", "/fast")];
        assert_eq!(
            pool_of(Path::new("/fast/x.qcow2"), &pools).map(|p| p.name.as_str()),
            Some("fast")
        );
        assert!(pool_of(Path::new("/srv/x.qcow2"), &pools).is_none());
        assert!(pool_of(Path::new("/fast"), &pools).is_none());
    }

    #[tokio::test]
    async fn chains_are_listed_oldest_first_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let mid = dir.path().join("mid.qcow2");
        let top = dir.path().join("top.qcow2");
        corral_storage::create_qcow2(&base, 1 << 20).await.unwrap();
        corral_storage::qemu_img::create_overlay(&mid, &base, DiskFormat::Qcow2)
            .await
            .unwrap();
        corral_storage::qemu_img::create_overlay(&top, &mid, DiskFormat::Qcow2)
            .await
            .unwrap();
        let pools = [pool("p", &dir.path().display().to_string())];
        let files = files_below("disk0", &top, &pools);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, [base.to_str().unwrap(), mid.to_str().unwrap()]);
        assert!(files
            .iter()
            .all(|f| f.pool.as_deref() == Some("p") && f.size_bytes > 0));
        let h = sha256_of(base.clone()).await.unwrap();
        assert_eq!(h.len(), 64);
        assert_eq!(h, sha256_of(base.clone()).await.unwrap());
        assert_eq!(format_of(&base), DiskFormat::Qcow2);
    }
}
