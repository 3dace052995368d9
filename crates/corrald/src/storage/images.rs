//! Images: read-only bases copied from a volume, from which VMs are made as linked
//! clones (a qcow2 overlay per VM, instant whatever the image's size). An image is never
//! removed while a volume reads through it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use corral_api::{
    CreateImageRequest, DiskFormat, Image, Operation, ValidationError, Volume, DEFAULT_POOL,
};
use corral_storage::import::{self, SourceFormat};

use super::{pool_driver, volume_key};
use crate::clock::now_secs;
use crate::error::{ApiError, ApiResult};
use crate::operations::OpHandle;
use crate::vm::Manager;

impl Manager {
    pub fn image(&self, name: &str) -> ApiResult<Image> {
        let mut image = self
            .store
            .get_image(name)?
            .ok_or_else(|| image_not_found(name))?;
        image.used_by = self.store.volumes_based_on(name)?;
        Ok(image)
    }

    pub fn list_images(&self) -> ApiResult<Vec<Image>> {
        let mut all = self.store.list_images()?;
        for image in &mut all {
            image.used_by = self.store.volumes_based_on(&image.name)?;
        }
        Ok(all)
    }

    /// Copies a volume into a new read-only image, as an operation (the copy takes time).
    pub async fn create_image(self: &Arc<Self>, req: CreateImageRequest) -> ApiResult<Operation> {
        corral_api::validate_name("name", &req.name)?;
        corral_api::validate_name("from_volume", &req.from_volume)?;
        if self.store.get_image(&req.name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("image '{}' already exists", req.name),
                hint: Some("choose another name".into()),
            });
        }
        let volume = self.store.get_volume(&req.from_volume)?.ok_or_else(|| {
            ValidationError::new(
                "from_volume",
                format!("volume '{}' does not exist", req.from_volume),
            )
            .hint("`corral volume list` shows the volumes")
        })?;
        self.check_quiet(&volume)?;
        let pool = req.pool.clone().unwrap_or_else(|| volume.pool.clone());
        let spec = self.pool_spec(&pool)?;
        // An image is a qcow2 file that VMs' overlays read through.
        if !super::pool_driver(&spec)?.capabilities(&spec).overlays {
            return Err(ValidationError::new(
                "pool",
                format!(
                    "pool '{pool}' ({}) cannot hold images: they are qcow2 bases for overlays",
                    spec.driver
                ),
            )
            .hint("put the image in a dir pool: add --pool default")
            .into());
        }
        let dir = PathBuf::from(spec.path.as_deref().unwrap_or_default());
        let dest = dir.join(format!("{}.image.qcow2", req.name));
        let (op, handle) = self.ops.begin("image.create", &req.name, true)?;
        let mgr = self.clone();
        tokio::spawn(async move {
            let result = mgr
                .copy_into_image(&req, &volume, &pool, &dest, &handle)
                .await;
            match result {
                Err(ApiError::Cancelled) => handle.cancelled_done(),
                other => handle.finish(other),
            }
        });
        Ok(op)
    }

    /// A running VM writing the volume would make the copy inconsistent.
    fn check_quiet(&self, volume: &Volume) -> ApiResult<()> {
        for vm in self.store.vms_using_volume(&volume.name)? {
            if self.running(&vm).is_some() {
                return Err(ApiError::Conflict {
                    message: format!("volume '{}' is in use by running VM '{vm}'", volume.name),
                    hint: Some("stop the VM first".into()),
                });
            }
        }
        Ok(())
    }

    async fn copy_into_image(
        &self,
        req: &CreateImageRequest,
        volume: &Volume,
        pool: &str,
        dest: &Path,
        handle: &OpHandle,
    ) -> ApiResult<()> {
        let _lock = self.lock(&volume_key(&volume.name)).await;
        let source_format = SourceFormat::from(volume.format);
        let size = import::convert(
            Path::new(&volume.path),
            source_format,
            dest,
            DiskFormat::Qcow2,
            handle,
        )
        .await?;
        // Read-only on disk too: a base is never written once VMs read through it.
        let _ = std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o444));
        let image = Image {
            name: req.name.clone(),
            pool: pool.to_string(),
            path: dest.display().to_string(),
            format: DiskFormat::Qcow2,
            size_bytes: size,
            source: Some(volume.name.clone()),
            created_at: now_secs(),
            used_by: Vec::new(),
        };
        if let Err(e) = self.store.insert_image(&image) {
            let _ = std::fs::remove_file(dest);
            return Err(e.into());
        }
        self.events.emit(
            None,
            "image",
            format!("image '{}' created from volume '{}'", req.name, volume.name),
        );
        Ok(())
    }

    /// Deletes an image no volume reads through (checked in the store's transaction).
    pub async fn delete_image(&self, name: &str) -> ApiResult<()> {
        let image = self
            .store
            .get_image(name)?
            .ok_or_else(|| image_not_found(name))?;
        self.store.delete_image(name).map_err(|e| match e {
            corral_store::StoreError::InUse { by, .. } => ApiError::Conflict {
                message: format!("image '{name}' is the base of volume(s) {by}"),
                hint: Some("delete the VMs or volumes made from it first".into()),
            },
            other => other.into(),
        })?;
        if let Err(e) = corral_storage::remove_volume(Path::new(&image.path)) {
            tracing::warn!(error = %e, "cannot remove image file {}", image.path);
        }
        self.events
            .emit(None, "image", format!("image '{name}' deleted"));
        Ok(())
    }

    /// A new volume that is a linked clone of `image`: an empty overlay reading through
    /// it, in the image's pool.
    pub(crate) async fn make_linked_volume(
        &self,
        name: &str,
        image: &str,
        owner: &str,
    ) -> ApiResult<Volume> {
        let image = self.store.get_image(image)?.ok_or_else(|| {
            ValidationError::new("image", format!("image '{image}' does not exist"))
                .hint("`corral image list` shows the images")
        })?;
        let _lock = self.lock(&volume_key(name)).await;
        if self.store.get_volume(name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("volume '{name}' already exists"),
                hint: Some("rename or delete that volume, or pick another VM name".into()),
            });
        }
        self.require_overlays(
            &image.pool,
            &format!("cannot make a linked clone of image '{}'", image.name),
        )?;
        let spec = self.pool_spec(&image.pool)?;
        let path = pool_driver(&spec)?.volume_path(&spec, name, DiskFormat::Qcow2);
        corral_storage::qemu_img::create_overlay(&path, Path::new(&image.path), image.format)
            .await?;
        let volume = Volume {
            name: name.to_string(),
            pool: image.pool.clone(),
            format: DiskFormat::Qcow2,
            size_bytes: image.size_bytes,
            path: path.display().to_string(),
            owner: Some(owner.to_string()),
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: Some(image.name.clone()),
            base_snapshot: None,
            base_file: None,
        };
        if let Err(e) = self.store.insert_volume(&volume) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(volume)
    }
}

/// A user's image file that a new VM's first disk is an overlay on (`create --image
/// PATH`), as checked by [`Manager::check_base_file`].
#[derive(Debug, Clone)]
pub(crate) struct BaseFile {
    pub path: String,
    pub format: DiskFormat,
    pub size_bytes: u64,
}

impl Manager {
    /// Checks a file given as `image`: a regular file outside Corral's pools, holding a
    /// self-contained qcow2 or raw image. Nothing is made.
    pub(crate) async fn check_base_file(&self, path: &str) -> ApiResult<BaseFile> {
        let invalid = |message: String, hint: &str| {
            ApiError::from(ValidationError::new("image", message).hint(hint))
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            invalid(
                format!("cannot use '{path}': {e}"),
                "give the path of an existing qcow2 or raw image file, or an image's name",
            )
        })?;
        if !meta.is_file() {
            return Err(invalid(
                format!("'{path}' is not a regular file"),
                "give an image file; a block device can be attached with --disk path=",
            ));
        }
        if let Err(e) = std::fs::File::open(path) {
            return Err(invalid(
                format!("cannot read '{path}': {e}"),
                "check the file's permissions",
            ));
        }
        self.refuse_pool_file(path)?;
        let info = import::probe(Path::new(path)).await.map_err(|e| {
            if e.is_bad_source() {
                invalid(
                    crate::error::chain(&e),
                    e.hint().unwrap_or("give a qcow2 or raw image"),
                )
            } else {
                e.into()
            }
        })?;
        let format = match info.format {
            SourceFormat::Qcow2 => DiskFormat::Qcow2,
            SourceFormat::Raw => DiskFormat::Raw,
            other => {
                return Err(invalid(
                    format!(
                        "'{path}' is a {} image; a base must be qcow2 or raw",
                        other.as_str()
                    ),
                    "convert it first: qemu-img convert -O qcow2 IN OUT.qcow2, or import it \
                     with `corral volume import`",
                ))
            }
        };
        Ok(BaseFile {
            path: path.to_string(),
            format,
            size_bytes: info.virtual_size,
        })
    }

    /// A file in one of Corral's pools is Corral's own (a volume, an image, a snapshot's
    /// image) and changes under its rules: no user overlay may read through it.
    fn refuse_pool_file(&self, path: &str) -> ApiResult<()> {
        let Ok(file) = Path::new(path).canonicalize() else {
            return Ok(());
        };
        for pool in self.store.list_pools()? {
            let Some(dir) = pool.path.as_deref() else {
                continue;
            };
            if Path::new(dir)
                .canonicalize()
                .is_ok_and(|dir| file.starts_with(dir))
            {
                return Err(ValidationError::new(
                    "image",
                    format!("'{path}' is in Corral's pool '{}'", pool.name),
                )
                .hint(
                    "use a registered image by name (`corral image list`), or clone the VM \
                     that owns it (`corral clone`)",
                )
                .into());
            }
        }
        Ok(())
    }

    /// A new volume owned by `owner` in the default pool: an empty qcow2 overlay on the
    /// user's `base` file, which is opened only to be read.
    pub(crate) async fn make_volume_on_file(
        &self,
        name: &str,
        base: &BaseFile,
        owner: &str,
    ) -> ApiResult<Volume> {
        let _lock = self.lock(&volume_key(name)).await;
        if self.store.get_volume(name)?.is_some() {
            return Err(ApiError::Conflict {
                message: format!("volume '{name}' already exists"),
                hint: Some("rename or delete that volume, or pick another VM name".into()),
            });
        }
        self.require_overlays(DEFAULT_POOL, "cannot make an overlay on an image file")?;
        let spec = self.pool_spec(DEFAULT_POOL)?;
        let path = pool_driver(&spec)?.volume_path(&spec, name, DiskFormat::Qcow2);
        corral_storage::qemu_img::create_overlay(&path, Path::new(&base.path), base.format).await?;
        let volume = Volume {
            name: name.to_string(),
            pool: DEFAULT_POOL.to_string(),
            format: DiskFormat::Qcow2,
            size_bytes: base.size_bytes,
            path: path.display().to_string(),
            owner: Some(owner.to_string()),
            created_at: now_secs(),
            used_by: Vec::new(),
            allocation_bytes: None,
            base_image: None,
            base_snapshot: None,
            base_file: Some(base.path.clone()),
        };
        if let Err(e) = self.store.insert_volume(&volume) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(volume)
    }
}

impl import::Progress for OpHandle {
    fn report(&self, percent: f32) {
        self.progress(percent);
    }
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }
}

fn image_not_found(name: &str) -> ApiError {
    ApiError::NotFound {
        kind: "image",
        name: name.to_string(),
    }
}
