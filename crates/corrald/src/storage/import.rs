//! `volume import`: a disk image or an OVA, from a host path or an http(s) URL, turned
//! into new volumes as one cancellable operation. Downloads and conversions write to
//! hidden temporary files that appear under their real names only when complete, so a
//! failed or cancelled import leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api::{
    DiskFormat, ImportResult, ImportVolumeRequest, Operation, OvaSpec, ValidationError, Volume,
    DEFAULT_POOL,
};
use corral_storage::import::{self, Progress, Scaled};

use super::{pool_driver, volume_key};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::vm::Manager;

impl Manager {
    pub async fn import_volume(self: &Arc<Self>, req: ImportVolumeRequest) -> ApiResult<Operation> {
        corral_api::validate_name("name", &req.name)?;
        let pool = req.pool.clone().unwrap_or_else(|| DEFAULT_POOL.to_string());
        let spec = self.pool_spec(&pool).map_err(|_| {
            ValidationError::new("pool", format!("pool '{pool}' does not exist"))
                .hint("`corral pool list` shows the pools")
        })?;
        check_import_pool(&pool, &spec, req.format)?;
        if self.store.get_volume(&req.name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("volume '{}' already exists", req.name),
                hint: Some("choose another name".into()),
            });
        }
        if !import::is_remote(&req.source) {
            check_source_file(&req.source)?;
        } else if url_is_bad(&req.source) {
            return Err(ValidationError::new(
                "source",
                format!("'{}' is not a valid URL", req.source),
            )
            .into());
        }
        let dir = PathBuf::from(spec.path.clone().unwrap_or_default());
        let (op, handle) = self.ops.begin("volume.import", &req.name, true)?;
        let mgr = self.clone();
        tokio::spawn(async move {
            match mgr.run_import(&req, &pool, &dir, &handle).await {
                Err(ApiError::Cancelled) => handle.cancelled_done(),
                result => {
                    handle.finish_with(result.map(|r| serde_json::to_value(r).unwrap_or_default()))
                }
            }
        });
        Ok(op)
    }

    async fn run_import(
        &self,
        req: &ImportVolumeRequest,
        pool: &str,
        dir: &Path,
        progress: &OpHandle,
    ) -> ApiResult<ImportResult> {
        let _lock = self.lock(&volume_key(&req.name)).await;
        // The download (if any) takes the first half of the bar.
        let (download, local) = if import::is_remote(&req.source) {
            let d =
                import::fetch_to_file(&req.source, dir, &Scaled::new(progress, 0.0, 50.0)).await?;
            let p = d.path().to_path_buf();
            (Some(d), p)
        } else {
            (None, PathBuf::from(&req.source))
        };
        let base = if download.is_some() { 50.0 } else { 0.0 };
        let result = if is_ova(&local) {
            self.import_ova(
                req,
                pool,
                dir,
                &local,
                &Scaled::new(progress, base, 100.0 - base),
            )
            .await
        } else {
            let step = Scaled::new(progress, base, 100.0 - base);
            let staged = self
                .stage_one(&req.name, req.format, pool, &local, &step)
                .await?;
            let made = self.commit_staged(vec![staged], &req.source)?;
            Ok(ImportResult {
                volumes: made.into_iter().map(|v| v.name).collect(),
                ova: None,
            })
        };
        drop(download);
        result
    }

    async fn import_ova(
        &self,
        req: &ImportVolumeRequest,
        pool: &str,
        dir: &Path,
        ova: &Path,
        progress: &dyn Progress,
    ) -> ApiResult<ImportResult> {
        let work = tempfile::Builder::new()
            .prefix(import::OVA_WORK_PREFIX)
            .tempdir_in(dir)
            .map_err(|e| ApiError::Internal(format!("{}: {e}", dir.display())))?;
        // Reading, hashing and syncing gigabytes: off the async workers' hands, or one
        // import stalls the daemon's HTTP and QMP work on a two-core host.
        let contents = tokio::task::block_in_place(|| {
            import::unpack_ova_blocking(ova, work.path(), &Scaled::new(progress, 0.0, 30.0))
        })?;
        let mut staged: Vec<Staged> = Vec::new();
        let n = contents.disks.len().max(1) as f32;
        for (i, disk) in contents.disks.iter().enumerate() {
            let name = if i == 0 {
                req.name.clone()
            } else {
                format!("{}-disk{i}", req.name)
            };
            let step = Scaled::new(progress, 30.0 + 70.0 * i as f32 / n, 70.0 / n);
            match self
                .stage_one(&name, req.format, pool, &disk.file, &step)
                .await
            {
                Ok(s) => staged.push(s),
                Err(e) => {
                    // All or nothing: the earlier disks' copies go too.
                    for s in &staged {
                        let _ = std::fs::remove_file(&s.staging);
                    }
                    return Err(e);
                }
            }
        }
        let made = self.commit_staged(staged, &req.source)?;
        Ok(ImportResult {
            volumes: made.into_iter().map(|v| v.name).collect(),
            ova: Some(OvaSpec {
                name: contents.name,
                vcpus: contents.vcpus,
                memory_mib: contents.memory_mib,
            }),
        })
    }

    /// Probes one image and converts it into a new volume's file, under a hidden
    /// staging name until [`Manager::commit_staged`].
    async fn stage_one(
        &self,
        name: &str,
        format: Option<DiskFormat>,
        pool: &str,
        source: &Path,
        progress: &dyn Progress,
    ) -> ApiResult<Staged> {
        if self.store.get_volume(name)?.is_some() {
            return Err(ApiError::conflict(format!(
                "volume '{name}' already exists"
            )));
        }
        let spec = self.pool_spec(pool)?;
        let driver = pool_driver(&spec)?;
        let format = format.unwrap_or(DiskFormat::Qcow2);
        let info = import::probe(source).await?;
        let dest = driver.volume_path(&spec, name, format);
        if dest.exists() {
            return Err(import::ImportError::Exists(dest).into());
        }
        let staging = import::staging_path(&dest);
        let size = import::convert(source, info.format, &staging, format, progress).await?;
        let volume = Volume {
            name: name.to_string(),
            pool: pool.to_string(),
            format,
            size_bytes: size,
            path: dest.display().to_string(),
            owner: None,
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: None,
            base_snapshot: None,
            base_file: None,
        };
        Ok(Staged { volume, staging })
    }

    /// Every staged file under its volume's name and recorded, all or none: until
    /// here a crash leaves only hidden files, which the next start sweeps away.
    fn commit_staged(&self, staged: Vec<Staged>, source: &str) -> ApiResult<Vec<Volume>> {
        let mut done: Vec<Volume> = Vec::new();
        let mut failure = None;
        for s in &staged {
            let placed = import::rename_no_replace(&s.staging, Path::new(&s.volume.path))
                .map_err(ApiError::from);
            let recorded = placed.and_then(|()| {
                self.store.insert_volume(&s.volume).map_err(|e| {
                    let _ = std::fs::remove_file(&s.volume.path);
                    ApiError::from(e)
                })
            });
            match recorded {
                Ok(()) => done.push(s.volume.clone()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            for v in &done {
                let _ = self.store.delete_volume(&v.name);
                let _ = std::fs::remove_file(&v.path);
            }
            for s in &staged {
                let _ = std::fs::remove_file(&s.staging);
            }
            return Err(e);
        }
        for v in &done {
            self.events.emit(
                None,
                "volume",
                format!("volume '{}' imported from {source}", v.name),
            );
        }
        Ok(done)
    }
}

/// A converted image waiting, under a hidden name, to become volume `volume`.
struct Staged {
    volume: Volume,
    staging: PathBuf,
}

/// Imports write new image files into the pool's directory: the pool must be one of
/// files, and hold the format asked for.
fn check_import_pool(
    pool: &str,
    spec: &corral_api::PoolSpec,
    format: Option<DiskFormat>,
) -> ApiResult<()> {
    let caps = pool_driver(spec)?.capabilities(spec);
    if caps.block_devices {
        return Err(ValidationError::new(
            "pool",
            format!(
                "pool '{pool}' ({}) holds block devices; imports are written as image files",
                spec.driver
            ),
        )
        .hint("import into a dir pool (the default pool is one)")
        .into());
    }
    let format = format.unwrap_or(DiskFormat::Qcow2);
    if !caps.formats.contains(&format) {
        return Err(ValidationError::new(
            "format",
            format!("pool '{pool}' cannot hold {} volumes", format.as_str()),
        )
        .into());
    }
    Ok(())
}

/// An OVA is a tar archive: "ustar" at offset 257.
fn is_ova(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 262];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map(|_| &header[257..262] == b"ustar")
        .unwrap_or(false)
}

fn check_source_file(source: &str) -> ApiResult<()> {
    let p = Path::new(source);
    if !p.is_absolute() {
        return Err(ValidationError::new(
            "source",
            format!("'{source}' is not an absolute path or an http(s) URL"),
        )
        .hint("give the full path of the image on the host, or a URL")
        .into());
    }
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ValidationError::new("source", format!("'{source}' is not a file")).into()),
        Err(e) => Err(
            ValidationError::new("source", format!("cannot use '{source}': {e}"))
                .hint("check the path exists and is readable")
                .into(),
        ),
    }
}

fn url_is_bad(source: &str) -> bool {
    let rest = source.split_once("://").map(|(_, r)| r).unwrap_or("");
    rest.is_empty() || rest.starts_with('/')
}
