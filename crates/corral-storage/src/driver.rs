//! The pool driver interface. Each driver says what it can do in a [`PoolCapabilities`]
//! and is found by name in [`driver`], so callers ask "can you grow online?" rather than
//! "are you lvm?".

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use corral_api::{DiskFormat, PoolCapabilities, PoolSpec};

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

    /// Grows a volume no running VM has open.
    async fn grow_volume(
        &self,
        spec: &PoolSpec,
        path: &Path,
        format: DiskFormat,
        size: u64,
    ) -> Result<(), StorageError>;

    /// Bytes the volume takes on the storage now.
    fn allocation(&self, path: &Path) -> Result<u64, StorageError>;

    /// Every volume-like entry in the pool, to find files no volume accounts for.
    fn entries(&self, spec: &PoolSpec) -> Result<Vec<PathBuf>, StorageError>;
}

/// The driver registered under `name`.
pub fn driver(name: &str) -> Result<&'static dyn PoolDriver, StorageError> {
    static DIR: DirDriver = DirDriver;
    match name {
        "dir" => Ok(&DIR),
        "lvm-thin" => Err(StorageError::DriverUnavailable {
            driver: name.to_string(),
            why: "not implemented yet in this build".to_string(),
        }),
        other => Err(StorageError::DriverUnavailable {
            driver: other.to_string(),
            why: "no such driver (use dir)".to_string(),
        }),
    }
}
