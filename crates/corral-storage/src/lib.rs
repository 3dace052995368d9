//! Corral's storage: pool drivers behind one trait, picked by name from a registry, and
//! images handled through `qemu-img`.

pub mod chain_repair;
pub mod child;
mod dir;
mod driver;
pub mod import;
pub mod lvm;
pub mod qemu_img;
pub mod snapshot;

pub use dir::DirDriver;
pub use driver::{driver, PoolDriver, Usage, DRIVERS};
pub use lvm::{LvmError, LvmThinDriver, Unavailable};
pub use qemu_img::{create_qcow2, inspect, remove_volume, ImageInfo};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// qemu-img could not be run.
    #[error("cannot run qemu-img")]
    Spawn(#[source] std::io::Error),
    /// qemu-img ran and refused.
    #[error("qemu-img {action} {path} failed: {message}")]
    QemuImg {
        action: &'static str,
        path: PathBuf,
        message: String,
    },
    /// A volume file is already there; Corral never overwrites one.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The image is in a format VMs cannot use as a plain disk.
    #[error("{path} is a {format} image; only qcow2 and raw can be attached")]
    UnsupportedFormat { path: PathBuf, format: String },
    /// The image's data lives in a backing file, which Corral cannot vouch for yet.
    #[error("{path} has a backing file ({backing}); attach a standalone image")]
    HasBacking { path: PathBuf, backing: String },
    /// The pool's driver is not available here.
    #[error("pool driver '{driver}' is not available: {why}")]
    DriverUnavailable {
        driver: String,
        why: String,
        hint: String,
    },
    /// A setting of the request cannot work with this pool's storage.
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
        hint: String,
    },
    /// An LVM tool failed or reported something unusable.
    #[error(transparent)]
    Lvm(#[from] LvmError),
    /// The pool's storage cannot be used.
    #[error("pool storage {path} cannot be used: {why}")]
    PoolUnusable { path: PathBuf, why: String },
    /// The pool's storage still holds volumes no Corral volume accounts for.
    #[error("{storage} still holds {}", first.display())]
    NotEmpty { storage: String, first: PathBuf },
    /// File system error.
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
