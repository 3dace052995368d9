//! Storage pools and volumes: where disks live, what a pool can do, and who uses a volume.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;
use crate::vm::{validate_name, DiskFormat};

/// The pool every host has, in the state dir.
pub const DEFAULT_POOL: &str = "default";

/// `POST /api/v1/pools`, and the stored definition of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique on the host.
    pub name: String,
    /// Driver name: `dir` or `lvm-thin`.
    pub driver: String,
    /// `dir`: the directory holding the volumes (absolute).
    #[serde(default)]
    pub path: Option<String>,
    /// `lvm-thin`: the volume group.
    #[serde(default)]
    pub volume_group: Option<String>,
    /// `lvm-thin`: the thin pool LV inside the volume group.
    #[serde(default)]
    pub thin_pool: Option<String>,
    /// The directory is shared by several hosts (e.g. NFS): volumes on it can be used by
    /// any of them (migration, HA).
    #[serde(default)]
    pub shared: bool,
}

impl PoolSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        match self.driver.as_str() {
            "dir" if self.volume_group.is_some() || self.thin_pool.is_some() => {
                let field = if self.volume_group.is_some() {
                    "volume_group"
                } else {
                    "thin_pool"
                };
                Err(
                    ValidationError::new(field, "a dir pool has no volume group or thin pool")
                        .hint("use --driver lvm-thin for LVM, or drop the LVM flags"),
                )
            }
            "dir" => match &self.path {
                Some(p) if p.starts_with('/') && !p.split('/').any(|c| c == "..") => Ok(()),
                Some(p) => Err(ValidationError::new(
                    "path",
                    format!("'{p}' is not a clean absolute path"),
                )
                .hint("give the pool's directory as an absolute path without '..'")),
                None => Err(ValidationError::new("path", "a dir pool needs a path")
                    .hint("add --path /srv/pool")),
            },
            "lvm-thin" => {
                let Some(vg) = self.volume_group.as_deref() else {
                    return Err(ValidationError::new(
                        "volume_group",
                        "an lvm-thin pool needs a volume group",
                    )
                    .hint("add --volume-group VG (`vgs` lists them)"));
                };
                validate_lvm_name("volume_group", vg)?;
                let Some(pool) = self.thin_pool.as_deref() else {
                    return Err(ValidationError::new(
                        "thin_pool",
                        "an lvm-thin pool needs the thin pool LV to put volumes in",
                    )
                    .hint("add --thin-pool LV; make one with `lvcreate --type thin-pool -L 100G -n pool0 VG`"));
                };
                validate_lvm_name("thin_pool", pool)?;
                if self.path.is_some() {
                    return Err(
                        ValidationError::new("path", "an lvm-thin pool has no directory")
                            .hint("drop --path; volumes live in the volume group"),
                    );
                }
                if self.shared {
                    return Err(ValidationError::new(
                        "shared",
                        "lvm-thin pools are local to one host",
                    )
                    .hint("use a dir pool on shared storage instead"));
                }
                Ok(())
            }
            other => Err(
                ValidationError::new("driver", format!("unknown pool driver '{other}'"))
                    .hint("use dir or lvm-thin"),
            ),
        }
    }
}

/// Volume group and LV names as LVM allows them (`man lvm`, VALID NAMES): letters,
/// digits and `+_.-`, not starting with `-` (it would read as an option) and not `.` or
/// `..` (they would be paths).
fn validate_lvm_name(field: &str, name: &str) -> Result<(), ValidationError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "+_.-".contains(c);
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name.chars().all(allowed);
    if ok {
        return Ok(());
    }
    Err(
        ValidationError::new(field, format!("'{name}' is not a valid LVM name"))
            .hint("use letters, digits and + _ . - (not starting with -), as `vgs`/`lvs` show it"),
    )
}

/// What a pool's driver can do, so callers ask "can you" instead of matching on names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCapabilities {
    /// Volume formats the pool stores.
    pub formats: Vec<DiskFormat>,
    /// Volumes take space only as they are written.
    pub thin: bool,
    /// Several hosts may use the pool's volumes.
    pub shared: bool,
    /// Volumes can grow while attached to a running VM.
    pub online_grow: bool,
    /// qcow2 overlays (linked clones, external snapshots) can be made on it.
    pub overlays: bool,
    /// Volumes are block devices the driver makes (thin LVs), not files: QEMU opens them
    /// as host devices, a running VM's disk grows by growing the device first, and
    /// Corral cannot write new image files (imports, clones, images) into the pool.
    #[serde(default)]
    pub block_devices: bool,
}

/// `GET /api/v1/pools/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub spec: PoolSpec,
    pub capabilities: PoolCapabilities,
    /// Bytes the pool's storage holds in all.
    pub capacity_bytes: u64,
    /// Bytes in use on that storage (by anything).
    pub allocation_bytes: u64,
    /// Bytes still free.
    pub free_bytes: u64,
    /// Volumes Corral knows in this pool.
    pub volumes: u32,
    /// Files in the pool no volume accounts for (left by a crash or by hand), and volumes
    /// whose file is missing. Reported, never removed automatically.
    #[serde(default)]
    pub orphans: Vec<String>,
    #[serde(default)]
    pub missing: Vec<String>,
    /// Set when the pool's storage could not be read (e.g. an unmounted share); the
    /// numbers above are then zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /api/v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// `[a-z0-9][a-z0-9-]{0,62}`, unique on the host.
    pub name: String,
    /// Defaults to the `default` pool.
    #[serde(default)]
    pub pool: Option<String>,
    pub size_bytes: u64,
    /// Defaults to the pool's first format (qcow2 on dir pools).
    #[serde(default)]
    pub format: Option<DiskFormat>,
}

impl CreateVolumeRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name("name", &self.name)?;
        if let Some(p) = &self.pool {
            validate_name("pool", p)?;
        }
        validate_volume_size("size_bytes", self.size_bytes)
    }
}

/// Smallest and largest volume: QEMU's qcow2 limit is 64 TiB per image by default cluster.
pub const MIN_VOLUME_BYTES: u64 = 1 << 20;
pub const MAX_VOLUME_BYTES: u64 = 64 << 40;

pub fn validate_volume_size(field: &str, size: u64) -> Result<(), ValidationError> {
    if !(MIN_VOLUME_BYTES..=MAX_VOLUME_BYTES).contains(&size) {
        return Err(
            ValidationError::new(field, format!("size {size} bytes is out of range"))
                .hint("give a size from 1M to 64T, e.g. 10G"),
        );
    }
    Ok(())
}

/// `POST /api/v1/volumes/{name}/resize`. Volumes only grow: shrinking loses data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolumeRequest {
    pub size_bytes: u64,
}

/// `POST /api/v1/volumes/{name}/attach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachVolumeRequest {
    pub vm: String,
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /api/v1/volumes/{name}/detach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DetachVolumeRequest {
    pub vm: String,
}

/// A volume as stored and shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub format: DiskFormat,
    /// Virtual size: what the guest sees.
    pub size_bytes: u64,
    /// The file or block device holding it.
    pub path: String,
    /// The VM that owns it (made with `create --disk size=`; deleted with the VM).
    #[serde(default)]
    pub owner: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// VMs whose disks use it (filled in on read).
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Bytes the volume takes on its storage now (filled in on read).
    #[serde(default)]
    pub allocation_bytes: Option<u64>,
    /// The image this volume is a linked clone of: its data reads through that image,
    /// which therefore cannot be deleted while the volume exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    /// The snapshot this volume is a linked clone of (`corral clone --linked`): its data
    /// reads through that snapshot's frozen image, so neither the snapshot nor its VM can
    /// be deleted while the volume exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_snapshot: Option<SnapshotRef>,
    /// The user's image file this volume is an overlay on (`corral create --image PATH`):
    /// its data reads through that file, which Corral never writes, moves or deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_file: Option<String>,
}

/// A snapshot of a VM, named from outside its tree (e.g. by a linked clone's volume).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRef {
    pub vm: String,
    pub snapshot: String,
}

/// A read-only base image that VMs are made from as linked clones (`create --image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    pub name: String,
    pub pool: String,
    pub path: String,
    pub format: DiskFormat,
    pub size_bytes: u64,
    /// The volume it was made from.
    #[serde(default)]
    pub source: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Volumes that are linked clones of it (filled in on read).
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// `POST /api/v1/images`: copy a volume into a new read-only image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateImageRequest {
    pub name: String,
    pub from_volume: String,
    /// Defaults to the volume's pool.
    #[serde(default)]
    pub pool: Option<String>,
}

/// A node of a VM's snapshot tree: the state of its disks at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub name: String,
    /// The snapshot this one was taken on top of; `None` for a root.
    #[serde(default)]
    pub parent: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    #[serde(default)]
    pub description: Option<String>,
    /// One frozen image per disk that was part of the snapshot.
    pub disks: Vec<SnapshotDisk>,
    /// UEFI VMs: a copy of the NVRAM (firmware variables) as they were; revert puts it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram: Option<String>,
    /// Taken with `--memory`: the guest's RAM and device state too; reverting resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SnapshotMemory>,
    /// The guest's file systems were frozen through its agent while the disks switched,
    /// so they are consistent on disk (not only crash-consistent).
    #[serde(default)]
    pub quiesced: bool,
}

/// The saved RAM and device state of a memory snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotMemory {
    /// The state file (QEMU's migration stream).
    pub file: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// The guest was paused when the snapshot was taken (so it is restored paused).
    pub paused: bool,
    /// The VM's definition when the snapshot was taken: the state only fits the same
    /// machine, so reverting puts memory, CPUs, machine type and NICs back as they were.
    pub spec: Box<crate::VmSpec>,
}

/// A disk's frozen image in a snapshot. It is read-only from then on: later states of
/// the disk are overlays on top of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotDisk {
    /// The VM disk's id (`disk0`, …).
    pub disk: String,
    pub file: String,
    pub format: DiskFormat,
}

/// `POST /api/v1/vms/{name}/snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Also save the running guest's RAM and device state (it is paused while that is
    /// written), so that reverting resumes it exactly where it was.
    #[serde(default)]
    pub memory: bool,
    /// Freeze the guest's file systems through its guest agent while the disks switch.
    /// Absent: when a guest agent is connected to the running VM, else not; `true`: a
    /// freeze that cannot be done is an error (nothing is made); `false`: never.
    #[serde(default)]
    pub quiesce: Option<bool>,
}

/// `GET /api/v1/vms/{name}/snapshots`: the tree, and where the VM is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotTree {
    /// Oldest first.
    pub snapshots: Vec<Snapshot>,
    /// The snapshot the VM's current state descends from.
    #[serde(default)]
    pub current: Option<String>,
}

/// `POST /api/v1/volumes/import`: a disk image (qcow2, raw, vmdk, vhdx, vdi) or an OVA,
/// from a local file or an http(s) URL, converted into new volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportVolumeRequest {
    /// Name of the new volume; an OVA's further disks get `-disk1`, `-disk2`, ….
    pub name: String,
    /// An absolute path on the host, or an `http://` / `https://` URL.
    pub source: String,
    #[serde(default)]
    pub pool: Option<String>,
    /// Format of the new volume (default qcow2).
    #[serde(default)]
    pub format: Option<DiskFormat>,
}

/// The `result` of an import operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    /// The volumes made, in disk order.
    pub volumes: Vec<String>,
    /// For an OVA: what its descriptor says the VM should be.
    #[serde(default)]
    pub ova: Option<OvaSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OvaSpec {
    pub name: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lvm(vg: Option<&str>, pool: Option<&str>) -> PoolSpec {
        PoolSpec {
            name: "thin".into(),
            driver: "lvm-thin".into(),
            path: None,
            volume_group: vg.map(str::to_string),
            thin_pool: pool.map(str::to_string),
            shared: false,
        }
    }

    fn field(spec: &PoolSpec) -> String {
        spec.validate()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.field)
    }

    #[test]
    fn lvm_thin_pool_needs_a_volume_group_and_a_thin_pool() {
        assert!(lvm(Some("vg0"), Some("pool0")).validate().is_ok());
        assert!(lvm(Some("vg_data.1+x"), Some("thin-pool"))
            .validate()
            .is_ok());
        assert_eq!(field(&lvm(None, Some("pool0"))), "volume_group");
        assert_eq!(field(&lvm(Some("vg0"), None)), "thin_pool");
    }

    #[test]
    fn lvm_names_that_would_be_options_or_paths_are_refused() {
        for bad in ["", "-y", "--force", ".", "..", "a/b", "vg 0", "vg\n", "é"] {
            assert_eq!(field(&lvm(Some(bad), Some("p"))), "volume_group", "{bad:?}");
            assert_eq!(field(&lvm(Some("vg"), Some(bad))), "thin_pool", "{bad:?}");
        }
        assert_eq!(
            field(&lvm(Some(&"v".repeat(128)), Some("p"))),
            "volume_group"
        );
    }

    #[test]
    fn flags_of_the_other_driver_are_refused_not_ignored() {
        let mut spec = lvm(Some("vg0"), Some("pool0"));
        spec.path = Some("/srv".into());
        assert_eq!(field(&spec), "path");
        spec.path = None;
        spec.shared = true;
        assert_eq!(field(&spec), "shared");
        let dir = PoolSpec {
            driver: "dir".into(),
            path: Some("/srv".into()),
            thin_pool: Some("pool0".into()),
            ..lvm(None, None)
        };
        assert_eq!(field(&dir), "thin_pool");
    }

    #[test]
    fn capabilities_without_block_devices_still_parse() {
        let old = r#"{"formats":["qcow2"],"thin":true,"shared":false,"online_grow":true,"overlays":true}"#;
        let caps: PoolCapabilities = serde_json::from_str(old).unwrap();
        assert!(!caps.block_devices);
    }
}
