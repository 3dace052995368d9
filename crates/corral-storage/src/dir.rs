//! The `dir` pool: volumes are image files in one directory. Thin (sparse qcow2 or raw),
//! and shareable when the directory is on storage several hosts mount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_api::{DiskFormat, PoolCapabilities, PoolSpec};

use crate::driver::{PoolDriver, Usage};
use crate::{qemu_img, StorageError};

pub struct DirDriver;

fn pool_dir(spec: &PoolSpec) -> PathBuf {
    PathBuf::from(spec.path.as_deref().unwrap_or("/nonexistent"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[async_trait]
impl PoolDriver for DirDriver {
    fn capabilities(&self, spec: &PoolSpec) -> PoolCapabilities {
        PoolCapabilities {
            formats: vec![DiskFormat::Qcow2, DiskFormat::Raw],
            thin: true,
            shared: spec.shared,
            online_grow: true,
            overlays: true,
            block_devices: false,
        }
    }

    async fn create_pool(&self, spec: &PoolSpec) -> Result<(), StorageError> {
        let dir = pool_dir(spec);
        let unusable = |why: String| StorageError::PoolUnusable {
            path: dir.clone(),
            why,
        };
        match std::fs::metadata(&dir) {
            Ok(m) if !m.is_dir() => return Err(unusable("it is not a directory".into())),
            Ok(_) => {}
            // A missing directory is made, but only below an existing parent: a typo
            // should not grow a tree of directories somewhere unexpected.
            Err(_) => {
                let parent = dir.parent().filter(|p| p.is_dir());
                if parent.is_none() {
                    return Err(unusable(
                        "neither it nor its parent directory exists".into(),
                    ));
                }
                std::fs::create_dir(&dir).map_err(|e| unusable(e.to_string()))?;
            }
        }
        let probe = dir.join(".corral-write-test");
        std::fs::write(&probe, b"").map_err(|e| unusable(format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    async fn delete_pool(&self, spec: &PoolSpec) -> Result<(), StorageError> {
        let dir = pool_dir(spec);
        if let Some(first) = self.entries(spec).await?.into_iter().next() {
            return Err(StorageError::NotEmpty {
                storage: format!("pool directory {}", dir.display()),
                first,
            });
        }
        // The directory itself may be the user's (or a mount point): leave it.
        Ok(())
    }

    async fn usage(&self, spec: &PoolSpec) -> Result<Usage, StorageError> {
        let dir = pool_dir(spec);
        let st = nix::sys::statvfs::statvfs(&dir).map_err(|e| io(&dir)(e.into()))?;
        let frag = st.fragment_size() as u64;
        let capacity = st.blocks() as u64 * frag;
        let free = st.blocks_available() as u64 * frag;
        Ok(Usage {
            capacity,
            allocation: capacity.saturating_sub(st.blocks_free() as u64 * frag),
            free,
        })
    }

    fn volume_path(&self, spec: &PoolSpec, name: &str, format: DiskFormat) -> PathBuf {
        pool_dir(spec).join(format!("{name}.{}", format.as_str()))
    }

    async fn create_volume(
        &self,
        spec: &PoolSpec,
        name: &str,
        format: DiskFormat,
        size: u64,
    ) -> Result<PathBuf, StorageError> {
        let path = self.volume_path(spec, name, format);
        match format {
            DiskFormat::Qcow2 => qemu_img::create_qcow2(&path, size).await?,
            DiskFormat::Raw => qemu_img::create_raw(&path, size).await?,
        }
        Ok(path)
    }

    async fn delete_volume(&self, _spec: &PoolSpec, path: &Path) -> Result<(), StorageError> {
        qemu_img::remove_volume(path)
    }

    async fn grow_volume(
        &self,
        _spec: &PoolSpec,
        path: &Path,
        format: DiskFormat,
        size: u64,
    ) -> Result<(), StorageError> {
        qemu_img::grow(path, format, size).await
    }

    async fn allocation(&self, _spec: &PoolSpec, path: &Path) -> Result<u64, StorageError> {
        Ok(std::fs::metadata(path).map_err(io(path))?.blocks() * 512)
    }

    async fn entries(&self, spec: &PoolSpec) -> Result<Vec<PathBuf>, StorageError> {
        let dir = pool_dir(spec);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(path: &Path) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            driver: "dir".into(),
            path: Some(path.display().to_string()),
            volume_group: None,
            thin_pool: None,
            shared: false,
        }
    }

    #[tokio::test]
    async fn volumes_in_a_dir_pool() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&dir.path().join("pool"));
        let d = crate::driver("dir").unwrap();
        d.create_pool(&s).await.unwrap();
        let path = d
            .create_volume(&s, "v1", DiskFormat::Qcow2, 1 << 30)
            .await
            .unwrap();
        assert_eq!(path, dir.path().join("pool/v1.qcow2"));
        assert!(d.allocation(&s, &path).await.unwrap() < 1 << 20, "thin");
        d.grow_volume(&s, &path, DiskFormat::Qcow2, 2 << 30)
            .await
            .unwrap();
        assert_eq!(
            qemu_img::inspect(&path, None).await.unwrap().virtual_size,
            2 << 30
        );
        let raw = d
            .create_volume(&s, "v2", DiskFormat::Raw, 1 << 20)
            .await
            .unwrap();
        assert_eq!(
            d.entries(&s).await.unwrap(),
            vec![path.clone(), raw.clone()]
        );
        assert!(matches!(
            d.delete_pool(&s).await,
            Err(StorageError::NotEmpty { .. })
        ));
        d.delete_volume(&s, &path).await.unwrap();
        d.delete_volume(&s, &raw).await.unwrap();
        d.delete_pool(&s).await.unwrap();
        let u = d.usage(&s).await.unwrap();
        assert!(u.capacity > 0 && u.free <= u.capacity);
    }

    #[tokio::test]
    async fn unusable_places_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::driver("dir").unwrap();
        let deep = spec(&dir.path().join("a/b/c"));
        assert!(matches!(
            d.create_pool(&deep).await,
            Err(StorageError::PoolUnusable { .. })
        ));
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(d.create_pool(&spec(&file)).await.is_err());
        assert!(crate::driver("zfs").is_err());
    }
}
