//! The `lvm-thin` pool: volumes are thin LVs in a thin pool the user made in their
//! volume group (`--volume-group VG --thin-pool POOL`). Corral never creates or removes
//! the volume group or the thin pool: their size, RAID level and metadata size are the
//! host administrator's choice, as in Proxmox's `lvmthin` storage. It makes and removes
//! only thin LVs, each tagged `corral`, so thin LVs of others in the same pool are
//! neither counted as orphans nor ever touched.
//!
//! Volumes are raw block devices (`/dev/VG/NAME`): no qcow2 overlays, so no snapshots
//! or linked clones on this pool (the capability struct says so), and they grow with
//! `lvextend`, online too (QEMU then sees the larger device through `block_resize`).
//!
//! Needs the kernel's device-mapper with the thin-pool target and the `lvm` tool; on
//! hosts without them every operation fails with [`StorageError::DriverUnavailable`].

mod command;
mod report;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_api::{format_size, DiskFormat, PoolCapabilities, PoolSpec};

pub use command::{LvmError, Unavailable};
use report::Lv;

use crate::driver::{PoolDriver, Usage};
use crate::StorageError;

pub struct LvmThinDriver;

/// The volume group and thin pool of a pool spec (checked by `PoolSpec::validate`).
struct Target<'a> {
    vg: &'a str,
    pool: &'a str,
}

fn target(spec: &PoolSpec) -> Result<Target<'_>, StorageError> {
    match (spec.volume_group.as_deref(), spec.thin_pool.as_deref()) {
        (Some(vg), Some(pool)) => Ok(Target { vg, pool }),
        _ => Err(StorageError::Invalid {
            field: "thin_pool",
            message: format!("pool '{}' names no volume group and thin pool", spec.name),
            hint: "give --volume-group VG --thin-pool POOL".into(),
        }),
    }
}

fn lvm() -> Result<PathBuf, StorageError> {
    command::check_host().map_err(|u| StorageError::DriverUnavailable {
        driver: "lvm-thin".into(),
        why: u.reason,
        hint: u.hint,
    })
}

async fn lvs(lvm: &Path, args: &[String]) -> Result<Vec<Lv>, StorageError> {
    let out = command::run(lvm, args).await?;
    report::parse_lvs(&out).map_err(|reason| {
        LvmError::BadReport {
            command: args.join(" "),
            reason,
        }
        .into()
    })
}

/// The volume group's extent size: LVs are sized in whole extents.
async fn extent_size(lvm: &Path, vg: &str) -> Result<u64, StorageError> {
    let args = command::vgs(vg);
    let out = command::run(lvm, &args).await?;
    let vg = report::parse_vg(&out, vg).map_err(|reason| LvmError::BadReport {
        command: args.join(" "),
        reason,
    })?;
    Ok(vg.extent_size)
}

/// Sizes that are not whole extents would be rounded up by LVM, and the volume would
/// no longer be the size Corral records; refused instead.
fn check_extents(size: u64, extent: u64) -> Result<(), StorageError> {
    if extent == 0 || size.is_multiple_of(extent) {
        return Ok(());
    }
    let up = size.div_ceil(extent) * extent;
    Err(StorageError::Invalid {
        field: "size_bytes",
        message: format!(
            "{} is not a whole number of the volume group's {} extents",
            format_size(size),
            format_size(extent)
        ),
        hint: format!(
            "give a multiple of {}, e.g. {}",
            format_size(extent),
            format_size(up)
        ),
    })
}

/// The thin pool, which must be active to hold or report volumes.
async fn active_thin_pool(lvm: &Path, t: &Target<'_>) -> Result<Lv, StorageError> {
    let pool = lvs(lvm, &command::lvs_lv(t.vg, t.pool))
        .await?
        .into_iter()
        .find(|l| l.name == t.pool && l.segtype == "thin-pool")
        .ok_or_else(|| LvmError::BadReport {
            command: format!("lvs {}/{}", t.vg, t.pool),
            reason: "no thin pool of that name in the report".into(),
        })?;
    if !pool.active() {
        return Err(LvmError::Inactive {
            vg: t.vg.into(),
            pool: t.pool.into(),
        }
        .into());
    }
    Ok(pool)
}

/// The LV named `name` in the volume group, if there is one.
async fn find_lv(lvm: &Path, vg: &str, name: &str) -> Result<Option<Lv>, StorageError> {
    // The whole group is listed: `lvs VG/NAME` fails alike for "no such LV" and for
    // real trouble, and only the first may be taken as "not there".
    Ok(lvs(lvm, &command::lvs_vg(vg))
        .await?
        .into_iter()
        .find(|l| l.name == name))
}

/// The LV a volume path names; only `/dev/VG/NAME` of this pool's group qualifies.
fn lv_name<'p>(t: &Target<'_>, path: &'p Path) -> Result<&'p str, StorageError> {
    let dir = Path::new("/dev").join(t.vg);
    path.parent()
        .filter(|p| *p == dir)
        .and_then(|_| path.file_name())
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            LvmError::Foreign {
                lv: path.display().to_string(),
            }
            .into()
        })
}

/// A thin LV of this pool that Corral made, or an error: Corral touches nothing else.
async fn corral_lv(lvm: &Path, t: &Target<'_>, path: &Path) -> Result<Option<Lv>, StorageError> {
    let name = lv_name(t, path)?;
    match find_lv(lvm, t.vg, name).await? {
        Some(lv) if lv.is_corral_volume_in(t.pool) => Ok(Some(lv)),
        Some(_) => Err(LvmError::Foreign {
            lv: format!("{}/{name}", t.vg),
        }
        .into()),
        None => Ok(None),
    }
}

fn invalid(field: &'static str, message: String, hint: &str) -> StorageError {
    StorageError::Invalid {
        field,
        message,
        hint: hint.to_string(),
    }
}

const THIN_POOL_HINT: &str =
    "make one with `lvcreate --type thin-pool -L 100G -n POOL VG`, then name it with --thin-pool";

#[async_trait]
impl PoolDriver for LvmThinDriver {
    fn capabilities(&self, _spec: &PoolSpec) -> PoolCapabilities {
        PoolCapabilities {
            formats: vec![DiskFormat::Raw],
            thin: true,
            shared: false,
            online_grow: true,
            overlays: false,
            block_devices: true,
        }
    }

    fn availability(&self) -> Result<(), Unavailable> {
        command::check_host().map(|_| ())
    }

    /// Checks the volume group and its thin pool exist and the pool is active; makes
    /// nothing (the thin pool is the administrator's).
    async fn create_pool(&self, spec: &PoolSpec) -> Result<(), StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        if let Err(e) = extent_size(&lvm, t.vg).await {
            return Err(invalid(
                "volume_group",
                format!("volume group '{}' cannot be used: {}", t.vg, chain(&e)),
                "`vgs` lists the volume groups; make one with `vgcreate VG DEVICE`",
            ));
        }
        let Some(pool) = find_lv(&lvm, t.vg, t.pool).await? else {
            return Err(invalid(
                "thin_pool",
                format!("volume group '{}' has no LV '{}'", t.vg, t.pool),
                THIN_POOL_HINT,
            ));
        };
        if pool.segtype != "thin-pool" {
            return Err(invalid(
                "thin_pool",
                format!(
                    "{}/{} is a {} LV, not a thin pool",
                    t.vg, t.pool, pool.segtype
                ),
                THIN_POOL_HINT,
            ));
        }
        if !pool.active() {
            return Err(invalid(
                "thin_pool",
                format!("thin pool {}/{} is not active", t.vg, t.pool),
                &format!("activate it: `lvchange -ay {}/{}`", t.vg, t.pool),
            ));
        }
        Ok(())
    }

    /// Refuses while Corral's thin LVs remain; the thin pool itself stays.
    async fn delete_pool(&self, spec: &PoolSpec) -> Result<(), StorageError> {
        let t = target(spec)?;
        if let Some(first) = self.entries(spec).await?.into_iter().next() {
            return Err(StorageError::NotEmpty {
                storage: format!("thin pool {}/{}", t.vg, t.pool),
                first,
            });
        }
        Ok(())
    }

    /// The thin pool's size and how much of it holds data (`data_percent`).
    async fn usage(&self, spec: &PoolSpec) -> Result<Usage, StorageError> {
        let lvm = lvm()?;
        let pool = active_thin_pool(&lvm, &target(spec)?).await?;
        let allocation = pool.used_bytes().unwrap_or(0).min(pool.size);
        Ok(Usage {
            capacity: pool.size,
            allocation,
            free: pool.size - allocation,
        })
    }

    fn volume_path(&self, spec: &PoolSpec, name: &str, _format: DiskFormat) -> PathBuf {
        let vg = spec.volume_group.as_deref().unwrap_or_default();
        Path::new("/dev").join(vg).join(name)
    }

    async fn create_volume(
        &self,
        spec: &PoolSpec,
        name: &str,
        format: DiskFormat,
        size: u64,
    ) -> Result<PathBuf, StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        if format != DiskFormat::Raw {
            return Err(invalid(
                "format",
                format!("lvm-thin pool '{}' holds raw volumes only", spec.name),
                "use --format raw (or a dir pool for qcow2)",
            ));
        }
        check_extents(size, extent_size(&lvm, t.vg).await?)?;
        let path = self.volume_path(spec, name, format);
        if find_lv(&lvm, t.vg, name).await?.is_some() {
            return Err(StorageError::Exists(path));
        }
        command::run(&lvm, &command::lvcreate_thin(t.vg, t.pool, name, size)).await?;
        Ok(path)
    }

    async fn delete_volume(&self, spec: &PoolSpec, path: &Path) -> Result<(), StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        // Already gone is done: a delete that failed half-way can be repeated.
        if let Some(lv) = corral_lv(&lvm, &t, path).await? {
            command::run(&lvm, &command::lvremove(t.vg, &lv.name)).await?;
        }
        Ok(())
    }

    /// Grows the thin LV. Also called while a running VM has it open: the device must
    /// be larger before QEMU's `block_resize` can show the guest the new size.
    async fn grow_volume(
        &self,
        spec: &PoolSpec,
        path: &Path,
        _format: DiskFormat,
        size: u64,
    ) -> Result<(), StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        check_extents(size, extent_size(&lvm, t.vg).await?)?;
        let lv = corral_lv(&lvm, &t, path)
            .await?
            .ok_or_else(|| LvmError::Missing {
                lv: path.display().to_string(),
            })?;
        // lvextend refuses a size the LV already has; a repeated grow is not an error.
        if lv.size < size {
            command::run(&lvm, &command::lvextend(t.vg, &lv.name, size)).await?;
        }
        Ok(())
    }

    async fn allocation(&self, spec: &PoolSpec, path: &Path) -> Result<u64, StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        let lv = corral_lv(&lvm, &t, path).await?;
        Ok(lv.and_then(|l| l.used_bytes()).unwrap_or(0))
    }

    /// Every thin LV Corral made in this thin pool, as `/dev/VG/NAME`.
    async fn entries(&self, spec: &PoolSpec) -> Result<Vec<PathBuf>, StorageError> {
        let lvm = lvm()?;
        let t = target(spec)?;
        let mut out: Vec<PathBuf> = lvs(&lvm, &command::lvs_vg(t.vg))
            .await?
            .iter()
            .filter(|l| l.is_corral_volume_in(t.pool))
            .map(|l| self.volume_path(spec, &l.name, DiskFormat::Raw))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// An error and its sources as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PoolSpec {
        PoolSpec {
            name: "thin".into(),
            driver: "lvm-thin".into(),
            path: None,
            volume_group: Some("vg0".into()),
            thin_pool: Some("pool0".into()),
            shared: false,
        }
    }

    #[test]
    fn volumes_are_raw_block_devices_without_overlays() {
        let caps = LvmThinDriver.capabilities(&spec());
        assert_eq!(caps.formats, [DiskFormat::Raw]);
        assert!(caps.thin && caps.online_grow && caps.block_devices);
        assert!(!caps.overlays && !caps.shared);
        assert_eq!(
            LvmThinDriver.volume_path(&spec(), "data", DiskFormat::Raw),
            Path::new("/dev/vg0/data")
        );
    }

    #[test]
    fn only_paths_in_the_pools_volume_group_name_an_lv() {
        let s = spec();
        let t = target(&s).unwrap();
        assert_eq!(lv_name(&t, Path::new("/dev/vg0/data")).unwrap(), "data");
        for other in ["/dev/vg1/data", "/dev/vg0", "/tmp/vg0/data", "/dev/vg0/a/b"] {
            assert!(
                matches!(
                    lv_name(&t, Path::new(other)),
                    Err(StorageError::Lvm(LvmError::Foreign { .. }))
                ),
                "{other}"
            );
        }
    }

    #[test]
    fn sizes_are_whole_extents() {
        assert!(check_extents(8 << 20, 4 << 20).is_ok());
        match check_extents(10 << 20, 4 << 20) {
            Err(StorageError::Invalid {
                field,
                message,
                hint,
            }) => {
                assert_eq!(field, "size_bytes");
                assert!(message.contains("4 MiB extents"), "{message}");
                assert!(hint.contains("12 MiB"), "{hint}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// On a host without device-mapper (these test hosts) every operation says so,
    /// and none runs an LVM command.
    #[tokio::test]
    async fn without_device_mapper_nothing_is_attempted() {
        if command::device_mapper_present() {
            return;
        }
        let d = LvmThinDriver;
        let unavailable = |r: Result<(), StorageError>| match r {
            Err(StorageError::DriverUnavailable { why, .. }) => {
                assert!(why.contains("device-mapper"), "{why}")
            }
            other => panic!("{other:?}"),
        };
        unavailable(d.create_pool(&spec()).await);
        unavailable(d.usage(&spec()).await.map(|_| ()));
        unavailable(
            d.create_volume(&spec(), "v", DiskFormat::Raw, 8 << 20)
                .await
                .map(|_| ()),
        );
        unavailable(d.delete_volume(&spec(), Path::new("/dev/vg0/v")).await);
        assert!(d.availability().is_err());
    }
}
