//! The pool driver interface. Each driver says what it can do in a [`PoolCapabilities`]
//! and is found by name in [`driver`], so callers ask "can you grow online?" rather than
//! "are you lvm?".

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_api::{DiskFormat, PoolCapabilities, PoolSpec};

use crate::lvm::{LvmThinDriver, Unavailable};
use crate::{DirDriver, StorageError};

/// Space on a pool's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub capacity: u64,
    pub allocation: u64,
    pub free: u64,
}

#[async_trait]
pub trait PoolDriver: Send + Sync {
    fn capabilities(&self, spec: &PoolSpec) -> PoolCapabilities;

    /// Whether this host can use the driver at all (kernel features, tools).
    fn availability(&self) -> Result<(), Unavailable> {
        Ok(())
    }

    /// Checks the pool's storage is usable and prepares it (nothing is made on failure).
    async fn create_pool(&self, spec: &PoolSpec) -> Result<(), StorageError>;

    /// Releases the pool's storage; refuses while it holds anything.
    async fn delete_pool(&self, spec: &PoolSpec) -> Result<(), StorageError>;

    async fn usage(&self, spec: &PoolSpec) -> Result<Usage, StorageError>;

    /// Where a volume of this name lives (a pure function of pool and name).
    fn volume_path(&self, spec: &PoolSpec, name: &str, format: DiskFormat) -> PathBuf;

    /// Makes a new, empty volume; refuses to overwrite anything.
    async fn create_volume(
        &self,
        spec: &PoolSpec,
        name: &str,
        format: DiskFormat,
        size: u64,
    ) -> Result<PathBuf, StorageError>;

    async fn delete_volume(&self, spec: &PoolSpec, path: &Path) -> Result<(), StorageError>;

    /// Grows a volume. On pools whose volumes are files, only while no running VM has
    /// it open (QEMU grows open files itself); on `block_devices` pools also under a
    /// running VM, before QEMU is told (it cannot grow a device).
    async fn grow_volume(
        &self,
        spec: &PoolSpec,
        path: &Path,
        format: DiskFormat,
        size: u64,
    ) -> Result<(), StorageError>;

    /// Bytes the volume takes on the storage now.
    async fn allocation(&self, spec: &PoolSpec, path: &Path) -> Result<u64, StorageError>;

    /// Every volume-like entry in the pool, to find files no volume accounts for.
    async fn entries(&self, spec: &PoolSpec) -> Result<Vec<PathBuf>, StorageError>;
}

/// Every driver's name, in the order `corral host info` lists them.
pub const DRIVERS: [&str; 2] = ["dir", "lvm-thin"];

/// The driver registered under `name`. A driver this host cannot use is still
/// returned: it says why through [`PoolDriver::availability`] and its errors.
pub fn driver(name: &str) -> Result<&'static dyn PoolDriver, StorageError> {
    static DIR: DirDriver = DirDriver;
    static LVM_THIN: LvmThinDriver = LvmThinDriver;
    match name {
        "dir" => Ok(&DIR),
        "lvm-thin" => Ok(&LVM_THIN),
        other => Err(StorageError::DriverUnavailable {
            driver: other.to_string(),
            why: "no such driver".to_string(),
            hint: format!("use one of {}", DRIVERS.join(", ")),
        }),
    }
}
